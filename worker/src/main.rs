//! The `worker` binary: parses its config, sets up logging, connects to NATS
//! and Docker, and runs the worker until SIGINT or SIGTERM.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use worker::WorkerConfig;

mod healthcheck;

/// JSON-RPC methods over the Docker API, served on the device-local NATS.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// NATS server to serve on and report through.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,

    /// NATS user to sign in as (the device stack's broker has one per service).
    #[arg(long, env = "NATS_USER", requires = "nats_password_file")]
    nats_user: Option<String>,

    /// File holding the NATS user's password (mode 0600).
    #[arg(long, env = "NATS_PASSWORD_FILE", requires = "nats_user")]
    nats_password_file: Option<std::path::PathBuf>,

    /// Docker engine address (unix://, tcp://, http://); by default the local
    /// socket.
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: Option<String>,

    /// Seconds between health reports to the cloud: 5 to 86400.
    #[arg(long = "health-interval-secs", env = "HEALTH_INTERVAL_SECS", default_value = "30",
          value_parser = worker::config::parse_health_interval_secs)]
    health_interval: Duration,

    /// Cap on one containers.logs answer as serialized, in bytes (also cut to
    /// fit what NATS carries).
    #[arg(long, env = "LOG_MAX_BYTES", default_value_t = 512 * 1024)]
    log_max_bytes: usize,

    /// How long a call from this device to the cloud may take, in
    /// milliseconds: longer than the bridge's own CLOUD_CALL_TIMEOUT_MS.
    #[arg(long, env = "CLOUD_CALL_TIMEOUT_MS", default_value_t = 20_000)]
    cloud_call_timeout_ms: u64,

    /// Compose project of this device stack: containers.stop refuses its
    /// bridge, nats and worker containers. Unset, nothing is protected.
    #[arg(long, env = "STACK_PROJECT")]
    stack_project: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Exit 0 if a worker answers rpc.discover on NATS_URL (for container health checks).
    Healthcheck,
}

/// The NATS user and its password, read from its file.
fn nats_login(args: &Args) -> anyhow::Result<Option<worker::NatsLogin>> {
    let (Some(user), Some(path)) = (&args.nats_user, &args.nats_password_file) else {
        return Ok(None);
    };
    let password = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the NATS password file {}", path.display()))?;
    Ok(Some(worker::NatsLogin {
        user: user.clone(),
        password: password.trim().to_owned(),
    }))
}

/// How long the worker may take to stop after a signal.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let login = nats_login(&args)?;
    if let Some(Command::Healthcheck) = args.command {
        return healthcheck::run(&args.nats_url, login.as_ref(), Duration::from_secs(3)).await;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        nats_url = %args.nats_url,
        docker_host = args.docker_host.as_deref().unwrap_or("(local default)"),
        "worker starting"
    );
    let config = WorkerConfig {
        health_interval: args.health_interval,
        log_max_bytes: args.log_max_bytes,
        cloud_call_timeout: Duration::from_millis(args.cloud_call_timeout_ms),
        stack_project: args.stack_project.clone(),
    };

    let docker = worker::connect_docker(args.docker_host.as_deref())
        .context("connecting to the Docker engine")?;
    // Connects in the background and reconnects forever.
    let nats = worker::connect_nats(&args.nats_url, login.as_ref())
        .await
        .context("connecting to NATS")?;

    let shutdown = CancellationToken::new();
    let mut running = tokio::spawn(worker::run(nats, docker, config, shutdown.clone()));
    tokio::select! {
        finished = &mut running => return finished.context("worker task panicked")?,
        () = shutdown_signal() => info!("shutting down"),
    }
    shutdown.cancel();
    match tokio::time::timeout(SHUTDOWN_TIMEOUT, running).await {
        Ok(finished) => {
            finished.context("worker task panicked")??;
            info!("worker stopped");
            Ok(())
        }
        Err(_) => {
            warn!(timeout = ?SHUTDOWN_TIMEOUT, "worker did not stop in time");
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(terminate) => terminate,
                Err(err) => {
                    warn!(error = %err, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
