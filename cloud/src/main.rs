//! `cloud`: parses flags, sets up logging, and calls the library.

use std::process::ExitCode;

use clap::Parser;
use cloud::cli::{Cli, Command};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

// glibc's allocator spent a fifth of the cloud's CPU under load, mostly
// consolidating and unlinking free chunks; mimalloc a tenth (BENCHMARKS.md).
// The bridge keeps glibc's: mimalloc doubled its idle memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs at info by default; CLI commands only warn (stdout is their output).
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let outcome = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Devices(args) => cloud::cli::devices(args).await,
        Command::Rpc(args) => cloud::cli::rpc(args).await,
        Command::Jobs(args) => cloud::cli::fleet::jobs(args).await,
        Command::Calls(args) => cloud::cli::fleet::calls(args).await,
        Command::Audit(args) => cloud::cli::audit(args).await,
        Command::Tokens(args) => cloud::cli::tokens(args).await,
        Command::Operators(args) => cloud::cli::operators(args).await,
        Command::Healthcheck(args) => cloud::cli::healthcheck::run(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: cloud::ServeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    cloud::run(listener, args.into_config(), shutdown).await
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal received");
    shutdown.cancel();
}
