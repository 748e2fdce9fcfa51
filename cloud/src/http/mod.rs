//! The HTTP layer: the REST API under `/api/v1` (with its OpenAPI document),
//! the dashboard, live events, `/metrics`, health probes, and the device
//! endpoint's route. Handlers translate requests into operations and
//! [`OpError`](crate::ops::OpError)s into responses, nothing more.

pub mod api;
pub mod auth;
mod dashboard;
pub mod error;
mod fleet_api;
mod health;
mod live_events;
mod metrics;
mod notify_api;
pub mod openapi;
pub mod operators_api;
pub mod server;
pub mod state;

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{any, get};
use axum::Router;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::device;
pub use state::AppState;

/// The HTTP timeout sits this far above the longest RPC timeout, so an RPC
/// always reports its own timeout.
const HTTP_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// The whole HTTP surface: `/ws/device`, `/ws/events`, `/healthz`, `/readyz`,
/// `/metrics`, `/api/v1` and the dashboard.
pub fn app(state: AppState) -> Router {
    let http_timeout = state.ops().config().max_rpc_timeout() + HTTP_TIMEOUT_MARGIN;
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
        .route("/ws/device", any(device::endpoint::upgrade))
        .route("/ws/events", get(live_events::upgrade))
        .merge(http)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
