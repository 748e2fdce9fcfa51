//! What the device side hands the live session: calls and notifications
//! from workers (`crate::uplink`) and key rotations (`crate::rotation`), each
//! through the live session's queue, which the session (`crate::session`)
//! drains on its own connection.

use std::sync::{Arc, Mutex};

use protocol::RpcError;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// The live session's uplink queue, when there is a live session.
pub(crate) type LiveLink = Arc<Mutex<Option<mpsc::Sender<Outbound>>>>;

/// Where a device → cloud call waits for the cloud's answer.
pub(crate) type CallReply = oneshot::Sender<Result<Value, RpcError>>;

/// Where a rotation's outcome goes: the new key's fingerprint, or why not.
pub(crate) type RotationReply = oneshot::Sender<Result<String, RpcError>>;

/// A device-side call or notification for the cloud, from the NATS uplink.
pub enum Outbound {
    Call {
        method: String,
        params: Option<Value>,
        reply: CallReply,
    },
    Notify {
        method: String,
        params: Option<Value>,
    },
    /// Rotate the device's key (see [`crate::rotation`]); the outcome goes
    /// to `reply`, if someone waits for it.
    RotateKey { reply: Option<RotationReply> },
}
