//! Names of the device-local NATS contract (bridge ⇄ workers). Constants only:
//! this crate does not talk to NATS.

/// Prefix of a verified cloud request, relayed to workers: `rpc.<method>`.
pub const RPC_PREFIX: &str = "rpc.";
/// Prefix of a device → cloud call: `cloud.call.<method>`.
pub const CLOUD_CALL_PREFIX: &str = "cloud.call.";
/// Prefix of a device → cloud notification: `cloud.notify.<method>`.
pub const CLOUD_NOTIFY_PREFIX: &str = "cloud.notify.";
/// Where the bridge announces its connection state.
pub const BRIDGE_STATUS: &str = "bridge.status";
/// Queue group workers share, so each request is served once.
pub const WORKER_QUEUE_GROUP: &str = "workers";
/// Header carrying the verified signer of a relayed request.
pub const HEADER_SIGNER: &str = "Signer-Id";
/// Header carrying the JSON-RPC id of a relayed request, for logs.
pub const HEADER_REQUEST_ID: &str = "Request-Id";

/// The reply inbox prefix of a NATS client signed in as `user`: each user
/// has its own, so the broker's permissions can keep one from reading
/// another's answers (see `scripts/ensure-device-nats.sh`).
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}
