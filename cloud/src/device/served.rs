//! What the cloud serves to accepted devices: the requests it answers and the
//! notifications it records. Inputs here are already verified.

use protocol::{ErrorCode, RpcError};
use serde_json::{json, Value};

use super::Devices;
use protocol::now_ms;

/// Device → cloud liveness check.
pub const PING: &str = "cloud.ping";
/// Periodic health report; params object lands in `devices.last_health`.
pub const HEALTH: &str = "device.health";
/// A container event; lands in `device_events`.
pub const CONTAINER_EVENT: &str = "device.container_event";

/// Answers a request from an accepted device.
pub(crate) async fn answer(
    state: &Devices,
    device_id: &str,
    method: &str,
    _params: Option<Value>,
) -> Result<Value, RpcError> {
    match method {
        PING => Ok(json!({
            "pong": true,
            "cloud_id": state.config().cloud_id,
            "time_ms": now_ms(),
        })),
        _ => {
            tracing::debug!(%device_id, %method, "device called an unknown cloud method");
            Err(RpcError::new(
                ErrorCode::MethodNotFound,
                format!("method not found: {method}"),
            ))
        }
    }
}

/// Records a notification from an accepted device; unknown ones, and ones
/// over their size limit, are logged and dropped before anything is stored.
pub(crate) async fn notify(state: &Devices, device_id: &str, method: &str, params: Option<Value>) {
    let now = now_ms() as i64;
    let limits = &state.config().limits;
    let limit = match method {
        HEALTH => limits.max_health_bytes,
        _ => limits.max_container_event_bytes,
    };
    if let Some(size) = params
        .as_ref()
        .map(|p| p.to_string().len())
        .filter(|size| *size > limit)
    {
        tracing::warn!(%device_id, %method, size, limit, "notification over its size limit; dropped");
        state.refusal_counters().increment("notification_too_large");
        return;
    }
    let stored = match (method, params) {
        (HEALTH, Some(health @ Value::Object(_))) => {
            let stored = state
                .registry()
                .record_health(device_id, &health, now)
                .await;
            state.events().device("device.health", device_id, health);
            stored
        }
        (CONTAINER_EVENT, Some(event)) => {
            let stored = state
                .registry()
                .add_device_event(device_id, method, &event, now)
                .await;
            state
                .events()
                .device("device.container_event", device_id, event);
            stored
        }
        (HEALTH | CONTAINER_EVENT, _) => {
            tracing::warn!(%device_id, %method, "notification without usable params ignored");
            return;
        }
        _ => {
            tracing::info!(%device_id, %method, "unknown notification ignored");
            return;
        }
    };
    if let Err(e) = stored {
        tracing::warn!(%device_id, %method, error = %e, "cannot store notification");
    }
}
