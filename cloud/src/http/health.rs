//! `/healthz` says the process answers (liveness); `/readyz` says it can
//! serve (readiness): the registry database answers and shutdown has not
//! begun. A load balancer stops sending traffic on a 503, while liveness stays
//! up through a database outage so that nothing restarts the process for it.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::config::VERSION;
use crate::device::Devices;

/// Longest wait for the database to answer; probes time out in seconds.
const DATABASE_PING_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok", "version": VERSION }))
}

/// 200 `{"status": "ready"}`, or 503 `{"status": "not_ready", "reason"}`.
pub(crate) async fn readyz(State(devices): State<Devices>) -> (StatusCode, Json<Value>) {
    if devices.is_shutting_down() {
        return not_ready("shutting down");
    }
    match tokio::time::timeout(DATABASE_PING_TIMEOUT, devices.registry().ping()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Ok(Err(e)) => {
            // The detail goes to the log only: this endpoint needs no token.
            tracing::warn!(error = %e, "not ready: the registry database fails");
            not_ready("the registry database does not answer")
        }
        Err(_) => {
            tracing::warn!("not ready: the registry database is too slow");
            not_ready("the registry database does not answer in time")
        }
    }
}

fn not_ready(reason: &str) -> (StatusCode, Json<Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "not_ready", "reason": reason })),
    )
}
