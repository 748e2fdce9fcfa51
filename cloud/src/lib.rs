//! The cloud: the `/ws/device` endpoint devices keep a signed JSON-RPC
//! WebSocket open to, the device registry (SQLite), the REST API and
//! dashboard operators use to accept devices and call methods on them, and
//! the operator CLI.
//!
//! Layers, each importing only those below it:
//! `http` (and `cli`) → `ops` → `device` → `events`, `store` → `config`.
//!
//! `run` takes an already-bound listener and a shutdown token, so tests start
//! the real server in-process on `127.0.0.1:0`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod client_address;
pub mod config;
pub mod device;
pub mod events;
pub mod http;
pub mod ops;
pub mod roles;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use protocol::Signer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{CloudConfig, ServeArgs, VERSION};
pub use device::{CallError, CallErrorKind, Devices, Fleet};
pub use http::{app, AppState};
pub use ops::{ErrorKind, OpError, Operations};
pub use store::{DeviceRecord, DeviceStatus, Registry, RegistryError, Store};

/// Longest shutdown: in-flight HTTP requests and device close frames get this long.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Opens and migrates the registry, then serves until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    config: CloudConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = Registry::open(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open the registry at {}",
                redacted(&config.database_url)
            )
        })?;
    let state = assemble(config, registry).await?;
    serve(listener, state, shutdown).await
}

/// Builds the layers over `registry`: loads the cloud's private key and the
/// admin token (creating the token file if missing) named in `config`, and
/// joins the other instances on `config.cloud_nats_url`, if set.
pub async fn assemble(config: CloudConfig, registry: Registry) -> anyhow::Result<AppState> {
    anyhow::ensure!(
        protocol::is_valid_device_id(&config.instance),
        "the instance name {:?} is not 1 to 128 of A-Z a-z 0-9 . _ -",
        config.instance
    );
    let key = protocol::keys::read_private_key(&config.private_key_path)
        .context("cannot load the cloud's private key")?;
    let next_key = match &config.next_private_key_path {
        None => None,
        Some(path) => Some(
            protocol::keys::read_private_key(path)
                .context("cannot load the cloud's next private key")?,
        ),
    };
    anyhow::ensure!(
        next_key
            .as_ref()
            .is_none_or(|next| next.verifying_key() != key.verifying_key()),
        "the cloud's next private key is its current one"
    );
    if let Some(bad) = config
        .retired_key_fingerprints
        .iter()
        .find(|fingerprint| !protocol::cloud_keys::is_fingerprint(fingerprint))
    {
        anyhow::bail!("{bad:?} is not a key fingerprint (SHA256: and 43 characters of base64)");
    }
    let admin_token = ops::admin_token::load_or_create(&config.admin_token_file)?;
    tracing::info!(
        path = %config.admin_token_file.display(),
        "admin token file (use it as the API bearer token)"
    );
    let config = Arc::new(config);
    let store = Store::over(registry);
    let signer = Signer::new(config.cloud_id.clone(), key);
    let next_signer = next_key.map(|key| Signer::new(config.cloud_id.clone(), key));
    tracing::info!(
        fingerprint = %protocol::keys::fingerprint(&signer.public_key()),
        next = ?next_signer.as_ref().map(|next| protocol::keys::fingerprint(&next.public_key())),
        retired = ?config.retired_key_fingerprints,
        "cloud key loaded"
    );
    let (events, cluster) = match &config.cloud_nats_url {
        None => (events::EventHub::default(), None),
        Some(url) => {
            let (events, relay) = events::EventHub::relayed();
            let cluster = device::Cluster::connect(url, &config.instance, events.clone(), relay)
                .await
                .with_context(|| {
                    format!("cannot join the other instances through NATS at {url}")
                })?;
            tracing::info!(instance = %config.instance, %url, "sharing the fleet with the other instances");
            (events, Some(cluster))
        }
    };
    let devices = Devices::new(
        config.clone(),
        signer,
        next_signer,
        store.registry.clone(),
        events,
        cluster,
    );
    // Jobs this instance ran before it stopped will never finish.
    let interrupted = store
        .jobs
        .interrupt_all_of(&config.instance, protocol::now_ms() as i64)
        .await?;
    if interrupted > 0 {
        tracing::warn!(
            jobs = interrupted,
            "jobs interrupted by this instance's last stop"
        );
    }
    let ops = Operations::new(config, store, devices.clone(), admin_token);
    Ok(AppState::new(ops, devices))
}

/// Serves `app(state)` on `listener` until `shutdown`; then closes every
/// device connection (1001) and waits for them and in-flight requests, for
/// at most [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    let config = state.ops().config();
    tracing::info!(
        version = VERSION,
        %address,
        cloud_id = %config.cloud_id,
        "cloud listening (devices on /ws/device, API on /api/v1)"
    );
    let limits = config.limits.clone();
    let mut server = tokio::spawn(http::server::serve(
        listener,
        app(state.clone()),
        limits.clone(),
        shutdown.clone(),
    ));
    let pruning = tokio::spawn(store::housekeeping::run(
        state.ops().store().clone(),
        limits,
        shutdown.clone(),
    ));
    let presence = {
        let devices = state.devices().clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { devices.fleet().keep_presence(stop).await })
    };
    let queued_calls = {
        let ops = state.ops().clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { ops.keep_queued_calls(stop).await })
    };
    tokio::select! {
        // Shutdown first: the server also ends on it, and that is no failure.
        biased;
        _ = shutdown.cancelled() => {}
        ended = &mut server => {
            ended.context("server task failed")?;
            anyhow::bail!("server stopped");
        }
    }
    pruning.abort();
    presence.abort();
    queued_calls.abort();
    tracing::info!("shutting down");
    let devices = state.devices();
    devices.close_all();
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    if tokio::time::timeout_at(deadline, &mut server)
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still running after the grace period; dropping them");
        server.abort();
    }
    if tokio::time::timeout_at(deadline, devices.all_closed())
        .await
        .is_err()
    {
        tracing::warn!("device connections still open after the grace period; dropping them");
    }
    Ok(())
}

/// A database URL fit for a log line: without its password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _password)) => {
                    format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
                }
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
