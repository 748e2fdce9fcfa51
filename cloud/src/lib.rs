//! The cloud: the `/ws/device` endpoint devices keep a signed JSON-RPC
//! WebSocket open to, the device registry (SQLite), the REST API operators use
//! to accept devices and call RPCs on them, and the operator CLI.
//!
//! `run` takes an already-bound listener and a shutdown token, so tests start
//! the real server in-process on `127.0.0.1:0`.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod admin_token;
mod admission;
pub mod api;
pub mod audit;
pub mod cli;
pub mod cloud_methods;
pub mod config;
mod dashboard;
mod device_ws;
pub mod error;
pub mod events;
pub mod fleet;
mod handshake;
mod health;
pub mod healthcheck;
mod housekeeping;
mod http_server;
mod inbound;
mod link;
mod metrics;
mod openapi;
pub mod operator_auth;
mod operators_api;
pub mod refusals;
pub mod registry;
mod session;
mod state;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::{any, get};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use config::{CloudConfig, ServeArgs};
pub use error::AppError;
pub use fleet::{CallError, CallErrorKind, Fleet};
pub use registry::{DeviceRecord, DeviceStatus, Registry, RegistryError};
pub use state::AppState;

/// This build's version, logged at start and shown by `/healthz`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Longest shutdown: in-flight HTTP requests and device close frames get this long.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The HTTP timeout sits this far above the longest RPC timeout, so an RPC
/// always reports its own timeout.
const HTTP_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// Opens and migrates the registry, then serves until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    config: CloudConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = Registry::open(&config.database_url)
        .await
        .with_context(|| format!("cannot open the registry at {}", config.database_url))?;
    let state = AppState::new(config, registry).await?;
    serve(listener, state, shutdown).await
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
    tracing::info!(
        version = VERSION,
        %address,
        cloud_id = %state.config().cloud_id,
        "cloud listening (devices on /ws/device, API on /api/v1)"
    );
    let limits = state.config().limits.clone();
    let mut server = tokio::spawn(http_server::serve(
        listener,
        app(state.clone()),
        limits,
        shutdown.clone(),
    ));
    let pruning = tokio::spawn(housekeeping::run(state.clone(), shutdown.clone()));
    tokio::select! {
        ended = &mut server => {
            ended.context("server task failed")?;
            anyhow::bail!("server stopped");
        }
        _ = shutdown.cancelled() => {}
    }
    pruning.abort();
    tracing::info!("shutting down");
    state.close_all_sessions();
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    if tokio::time::timeout_at(deadline, &mut server)
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still running after the grace period; dropping them");
        server.abort();
    }
    if tokio::time::timeout_at(deadline, state.sessions_closed())
        .await
        .is_err()
    {
        tracing::warn!("device connections still open after the grace period; dropping them");
    }
    Ok(())
}

/// The whole HTTP surface: `/ws/device`, `/ws/events`, `/healthz`, `/readyz`,
/// `/metrics` and `/api/v1`.
pub fn app(state: AppState) -> Router {
    let http_timeout = state.config().max_rpc_timeout() + HTTP_TIMEOUT_MARGIN;
    let http = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::scrape))
        .merge(openapi::api_v1(state.clone()))
        .merge(dashboard::routes())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            http_timeout,
        ));
    Router::new()
        .route("/ws/device", any(device_ws::upgrade))
        .route("/ws/events", get(events::upgrade))
        .merge(http)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
