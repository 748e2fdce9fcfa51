//! `GET /metrics`: the device layer's counters plus what is read at scrape
//! time (devices by status, live connections, refused frames).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::device::metrics::{Snapshot, CONTENT_TYPE};
use crate::device::Devices;
use crate::store::DeviceStatus;

/// Longest wait for the registry's counts; a scrape must not hang on a stuck
/// database (Prometheus gives up after 10 s by default).
const DEVICE_COUNT_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /metrics`. Unauthenticated, as Prometheus exporters usually are: it
/// shows counts only, never a device id, key or token.
pub(crate) async fn scrape(State(devices): State<Devices>) -> Response {
    let device_counts = match tokio::time::timeout(
        DEVICE_COUNT_TIMEOUT,
        devices.registry().count_by_status(),
    )
    .await
    {
        Ok(Ok(counts)) => Some(counts),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot count devices for /metrics");
            None
        }
        Err(_) => {
            tracing::warn!("registry too slow to count devices for /metrics");
            None
        }
    };
    let fleet = devices.fleet();
    let snapshot = Snapshot {
        devices: device_counts,
        connections: [DeviceStatus::Pending, DeviceStatus::Accepted]
            .map(|status| (status, fleet.count_connections(status))),
        refusals: devices.refusals(),
        unauthenticated: devices.unauthenticated(),
        remembered_nonces: devices.remembered_nonces(),
    };
    match devices.metrics().encode(snapshot) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            tracing::error!("cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
