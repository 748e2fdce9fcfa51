//! A second worker, as small as one can be: how to add a method to a device
//! and listen to the cloud's events (README, "Adding a worker method").
//!
//! - Serves `example.echo` (answers `{"echo": <its params>}`) and
//!   `example.events` (the events heard so far: a count and the latest few)
//!   exactly as the real worker serves its methods: a jsonrpsee module handed
//!   to [`worker::serve`], one queue-group subscription per method on
//!   `rpc.<method>`, so that several copies share the requests.
//! - Listens to the events named by `--event` (default `example.notice`),
//!   which the cloud sends with `POST /api/v1/devices/{id}/events` and the
//!   bridge publishes on `rpc.<event>` with no reply subject. Each copy
//!   subscribes *outside* the queue group: every worker that listens hears
//!   every event.
//!
//! Run it beside a device stack:
//! `cargo run -p worker --example example_worker -- --nats-url nats://127.0.0.1:4222`;
//! `example_worker healthcheck` is its container health check.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use clap::Parser;
use futures::StreamExt;
use protocol::nats::RPC_PREFIX;
use protocol::{check_method_name, ErrorCode, RpcError};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use worker::jsonrpsee::RpcModule;
use worker::NatsLogin;

/// The method that answers its params.
const ECHO_METHOD: &str = "example.echo";
/// The method that tells which events were heard.
const EVENTS_METHOD: &str = "example.events";
/// How many of the latest events `example.events` shows.
const EVENTS_KEPT: usize = 10;

/// A minimal second worker: `example.echo`, `example.events`, and a
/// listener for the cloud's events.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// The device's NATS server.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,

    /// NATS user to sign in as (`example` in a device stack made by
    /// scripts/ensure-device-nats.sh).
    #[arg(long, env = "NATS_USER", requires = "nats_password_file")]
    nats_user: Option<String>,

    /// File holding the NATS user's password.
    #[arg(long, env = "NATS_PASSWORD_FILE", requires = "nats_user")]
    nats_password_file: Option<std::path::PathBuf>,

    /// An event to listen to (repeat for more); its name is checked as a
    /// method name is, because it becomes the subject `rpc.<event>`.
    #[arg(
        long = "event",
        env = "EXAMPLE_EVENTS",
        value_delimiter = ',',
        default_value = "example.notice"
    )]
    events: Vec<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Exit 0 if an example worker answers example.echo (container health check).
    Healthcheck,
}

/// One event as heard.
#[derive(Debug, Clone, Serialize)]
struct HeardEvent {
    event: String,
    params: Value,
}

/// The events heard so far: all counted, the latest few kept.
#[derive(Debug, Default, Serialize)]
struct Heard {
    count: u64,
    latest: VecDeque<HeardEvent>,
}

type SharedHeard = Arc<Mutex<Heard>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let login = nats_login(&args)?;
    if let Some(Command::Healthcheck) = args.command {
        return healthcheck(&args.nats_url, login.as_ref()).await;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    for event in &args.events {
        check_method_name(event).with_context(|| format!("--event {event:?}"))?;
    }
    // As the real worker connects: its own inbox, reconnecting forever.
    let nats = worker::connect_nats(&args.nats_url, login.as_ref())
        .await
        .context("connecting to NATS")?;
    let heard = SharedHeard::default();
    let shutdown = CancellationToken::new();
    for event in &args.events {
        let subject = format!("{RPC_PREFIX}{event}");
        // Not in the queue group: every listening worker hears each event.
        let subscription = nats
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("subscribing to {subject}"))?;
        tokio::spawn(listen(
            nats.clone(),
            event.clone(),
            subscription,
            heard.clone(),
        ));
    }
    info!(events = ?args.events, "listening to events");
    let serving = tokio::spawn(worker::serve(nats, methods(heard), shutdown.clone()));
    shutdown_signal().await?;
    info!("shutting down");
    shutdown.cancel();
    serving.await.context("serving task")??;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (`docker stop`).
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("listening for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// `example.echo` and `example.events`, registered as any jsonrpsee method.
fn methods(heard: SharedHeard) -> RpcModule<SharedHeard> {
    let mut module = RpcModule::new(heard);
    module
        .register_method(
            ECHO_METHOD,
            |params, _, _| json!({ "echo": params.parse::<Value>().unwrap_or(Value::Null) }),
        )
        .expect("registered once");
    module
        .register_method(EVENTS_METHOD, |_, heard, _| {
            let heard = heard.lock().unwrap_or_else(PoisonError::into_inner);
            serde_json::to_value(&*heard).unwrap_or_default()
        })
        .expect("registered once");
    module
}

/// Hears `event` until the connection closes. The bridge publishes a
/// notification as `{"jsonrpc":"2.0","method":…,"params":…}`; anything else
/// on the subject is dropped, and a *call* of that name (a request with a
/// reply subject) is told it is no method, rather than left to time out.
async fn listen(
    nats: async_nats::Client,
    event: String,
    mut messages: async_nats::Subscriber,
    heard: SharedHeard,
) {
    while let Some(message) = messages.next().await {
        if let Some(reply) = message.reply {
            let error = RpcError::new(
                ErrorCode::MethodNotFound,
                format!("{event} is an event, not a method"),
            );
            let id = serde_json::from_slice::<Value>(&message.payload)
                .ok()
                .and_then(|request| request.get("id").cloned())
                .unwrap_or_default();
            let answer = json!({"jsonrpc": "2.0", "id": id, "error": error});
            let _ = nats.publish(reply, answer.to_string().into()).await;
            continue;
        }
        let notification = match serde_json::from_slice::<Value>(&message.payload) {
            Ok(Value::Object(notification))
                if notification.get("method") == Some(&json!(event))
                    && !notification.contains_key("id") =>
            {
                notification
            }
            _ => {
                warn!(%event, "dropped a message that is not this event's notification");
                continue;
            }
        };
        let params = notification.get("params").cloned().unwrap_or_default();
        info!(%event, %params, "event heard");
        let mut heard = heard.lock().unwrap_or_else(PoisonError::into_inner);
        heard.count += 1;
        if heard.latest.len() == EVENTS_KEPT {
            heard.latest.pop_front();
        }
        heard.latest.push_back(HeardEvent {
            event: event.clone(),
            params,
        });
    }
}

/// The NATS user and its password, read from its file.
fn nats_login(args: &Args) -> anyhow::Result<Option<NatsLogin>> {
    let (Some(user), Some(path)) = (&args.nats_user, &args.nats_password_file) else {
        return Ok(None);
    };
    let password = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the NATS password file {}", path.display()))?;
    Ok(Some(NatsLogin {
        user: user.clone(),
        password: password.trim().to_owned(),
    }))
}

/// One `example.echo` round trip through the device's NATS.
async fn healthcheck(nats_url: &str, login: Option<&NatsLogin>) -> anyhow::Result<()> {
    let check = async {
        let nats = worker::nats_options("example-worker-healthcheck", login)
            .connect(nats_url)
            .await
            .with_context(|| format!("cannot connect to NATS at {nats_url}"))?;
        let request =
            json!({"jsonrpc": "2.0", "id": "healthcheck", "method": ECHO_METHOD, "params": {}});
        let reply = nats
            .request(
                format!("{RPC_PREFIX}{ECHO_METHOD}"),
                request.to_string().into(),
            )
            .await
            .context("no example worker answered")?;
        let answer: Value = serde_json::from_slice(&reply.payload).context("not JSON")?;
        ensure!(
            answer["result"]["echo"].is_object(),
            "unexpected answer: {answer}"
        );
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(3), check)
        .await
        .context("the check timed out")??;
    println!("ok");
    Ok(())
}
