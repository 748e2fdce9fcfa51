//! The bridge's connection state, announced to workers on `bridge.status`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connecting,
    /// Authenticated, waiting for an operator to accept the key.
    Pending,
    Live,
    Disconnected,
    /// The cloud refused this device; the bridge waits long before retrying.
    Rejected,
}

pub async fn announce(nats: &async_nats::Client, device_id: &str, state: LinkState) {
    let payload = serde_json::json!({
        "state": state,
        "device_id": device_id,
        "at_ms": crate::now_ms(),
    });
    if let Err(error) = nats
        .publish(protocol::nats::BRIDGE_STATUS, payload.to_string().into())
        .await
    {
        tracing::warn!(%error, "cannot publish bridge.status");
    }
}
