//! An authenticated device connection as the fleet and the operations see
//! it: the device's [`Peer`], its status, its outbound link, and the table
//! of cloud → device calls awaiting their answer. The connection's task
//! (`super::connection`) feeds it what the device sends.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use governor::DefaultDirectRateLimiter;
use protocol::auth::StatusReport;
use protocol::calls::CallTable;
use protocol::close_code;
use protocol::peer::Peer;
use protocol::{now_ms, Message, RpcError};
use serde_json::Value;
use tokio::sync::oneshot;

use super::call_error::CallError;
use super::link::{Link, LinkClosed};
use crate::store::registry::DeviceStatus;

/// Prefix of the ids of cloud → device calls.
const CALL_ID_PREFIX: &str = "c-";

/// The answer a pending call is waiting for.
type CallReply = Result<Value, RpcError>;

/// An authenticated device connection, as the fleet and the API see it.
pub(crate) struct DeviceSession {
    /// Tells this connection from a newer one of the same device.
    pub(crate) connection_id: u64,
    /// The device as this connection hears it: its id, its registered key,
    /// and when it authenticated.
    pub(super) peer: Peer,
    /// Messages a pending device may still send: it may only wait.
    pub(super) pending_allowance: DefaultDirectRateLimiter,
    /// Pending sessions carry nothing but auth traffic until accepted.
    status: Mutex<DeviceStatus>,
    pub(super) link: Arc<Link>,
    /// Calls awaiting the device's answer; closed once the connection is
    /// gone, so that no call can start waiting on a dead one.
    calls: Mutex<CallTable<oneshot::Sender<CallReply>>>,
}

impl DeviceSession {
    pub(super) fn new(
        connection_id: u64,
        peer: Peer,
        status: DeviceStatus,
        pending_allowance: DefaultDirectRateLimiter,
        link: Arc<Link>,
    ) -> Self {
        DeviceSession {
            connection_id,
            peer,
            pending_allowance,
            status: Mutex::new(status),
            link,
            calls: Mutex::new(CallTable::new(CALL_ID_PREFIX)),
        }
    }

    pub(crate) fn device_id(&self) -> &str {
        self.peer.remote_id()
    }

    pub(crate) fn status(&self) -> DeviceStatus {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signs `message` for this device and queues it.
    pub(crate) async fn send(&self, message: &Message) -> Result<(), LinkClosed> {
        self.link.send(self.peer.sign(message, now_ms())).await
    }

    pub(crate) fn close(&self, code: u16, reason: &'static str) {
        self.link.close(code, reason);
    }

    /// Applies an operator decision to the live connection: accepted goes live
    /// at once; rejected is told so and cut off.
    /// A status only moves forward (pending → accepted → rejected), so a stale
    /// registry read racing an operator's decision cannot undo it.
    pub(crate) async fn apply_status(&self, status: DeviceStatus) {
        let moved = {
            let mut current = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            let forward = matches!(
                (*current, status),
                (
                    DeviceStatus::Pending,
                    DeviceStatus::Accepted | DeviceStatus::Rejected
                ) | (DeviceStatus::Accepted, DeviceStatus::Rejected)
            );
            if forward {
                *current = status;
            }
            forward
        };
        if !moved {
            return;
        }
        let device_id = self.device_id();
        let notice = StatusReport {
            status: status.into(),
        }
        .notification();
        match status {
            DeviceStatus::Accepted => {
                tracing::info!(%device_id, "device accepted; session is live");
                let _ = self.send(&notice).await;
            }
            DeviceStatus::Rejected => {
                tracing::info!(%device_id, "device rejected; closing its connection");
                let _ = self.send(&notice).await;
                self.close(close_code::REJECTED, "device rejected");
            }
            _ => {}
        }
    }

    /// Calls `method` on this device (accepted: the caller checked) and waits
    /// up to `timeout` for its answer.
    pub(crate) async fn call(
        &self,
        method: &str,
        params: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let (call_id, answer) = self.start_call().ok_or(CallError::Disconnected)?;
        let request = Message::Request {
            id: Value::String(call_id.clone()),
            method: method.to_owned(),
            params,
        };
        let outcome = tokio::time::timeout(timeout, async {
            self.send(&request)
                .await
                .map_err(|_| CallError::Disconnected)?;
            // The sender is dropped, failing this, when the connection closes.
            answer.await.map_err(|_| CallError::Disconnected)
        })
        .await;
        match outcome {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(CallError::Device(error)),
            Ok(Err(e)) => {
                self.forget_call(&call_id);
                Err(e)
            }
            Err(_elapsed) => {
                self.forget_call(&call_id);
                Err(CallError::TimedOut(timeout))
            }
        }
    }

    /// Registers a new call; `None` if the connection is already gone.
    fn start_call(&self) -> Option<(String, oneshot::Receiver<CallReply>)> {
        let (sender, receiver) = oneshot::channel();
        let id = self.calls().start(sender)?;
        Some((id, receiver))
    }

    /// Drops a call that gave up (timed out).
    fn forget_call(&self, id: &str) {
        self.calls().forget(id);
    }

    /// Hands the device's answer to the call awaiting it.
    pub(super) fn complete_call(&self, id: &Value, reply: CallReply) {
        match self.calls().answer(id) {
            Some(waiter) => {
                let _ = waiter.send(reply);
            }
            None => tracing::warn!(
                device_id = %self.device_id(), %id,
                "response matches no call in flight (late or unknown); dropped"
            ),
        }
    }

    /// Fails every call in flight at once: their waiters see the sender drop.
    pub(super) fn fail_in_flight(&self) {
        let waiting = self.calls().close();
        if !waiting.is_empty() {
            tracing::info!(device_id = %self.device_id(), calls = waiting.len(), "connection closed with calls in flight");
        }
    }

    fn calls(&self) -> MutexGuard<'_, CallTable<oneshot::Sender<CallReply>>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
