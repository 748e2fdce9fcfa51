//! The live device connections by device id, and calls from the cloud to a
//! device through them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use protocol::{check_method_name, find_unsafe_number, Message};
use serde_json::Value;

use super::call_error::CallError;
use super::metrics::RpcMetrics;
use super::session::DeviceSession;
use crate::events::EventHub;
use crate::store::registry::{DeviceStatus, Registry};
use protocol::close_code;

/// Live device sessions (pending or accepted), one per device.
pub struct Fleet {
    sessions: Mutex<HashMap<String, Arc<DeviceSession>>>,
    next_connection_id: AtomicU64,
    /// Tells unknown, undecided and offline devices apart when a call fails.
    registry: Registry,
    /// Where devices coming online and going offline are announced.
    events: EventHub,
    /// Every call's outcome and latency, for `/metrics`.
    metrics: RpcMetrics,
}

impl Fleet {
    pub(crate) fn new(registry: Registry, events: EventHub, metrics: RpcMetrics) -> Self {
        Fleet {
            sessions: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(1),
            registry,
            events,
            metrics,
        }
    }

    /// Calls `method` on an accepted, connected device and waits up to
    /// `timeout` for its answer. `params`, if any, must be an object or array.
    pub async fn call(
        &self,
        device_id: &str,
        method: &str,
        params: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let started = Instant::now();
        let outcome = self
            .call_unmeasured(device_id, method, params, timeout)
            .await;
        let failure = outcome.as_ref().err().map(CallError::kind);
        self.metrics.observe(failure, started.elapsed());
        outcome
    }

    async fn call_unmeasured(
        &self,
        device_id: &str,
        method: &str,
        params: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        check_method_name(method).map_err(CallError::BadMethod)?;
        if let Some(params) = &params {
            check_params(params)?;
        }
        let session = self.live_session(device_id).await?;
        let (call_id, answer) = session.start_call().ok_or(CallError::Disconnected)?;
        let request = Message::Request {
            id: Value::String(call_id.clone()),
            method: method.to_owned(),
            params,
        };
        let outcome = tokio::time::timeout(timeout, async {
            session
                .send(&request)
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
                session.forget_call(&call_id);
                Err(e)
            }
            Err(_elapsed) => {
                session.forget_call(&call_id);
                Err(CallError::TimedOut(timeout))
            }
        }
    }

    /// Whether the device has an authenticated connection (pending or accepted).
    pub fn is_online(&self, device_id: &str) -> bool {
        self.lock().contains_key(device_id)
    }

    /// How many authenticated connections have `status`.
    pub(crate) fn count_connections(&self, status: DeviceStatus) -> usize {
        self.lock()
            .values()
            .filter(|s| s.status() == status)
            .count()
    }

    /// Ids of devices with an authenticated connection.
    pub fn online_device_ids(&self) -> HashSet<String> {
        self.lock().keys().cloned().collect()
    }

    /// An accepted, connected device's session, or why there is none.
    async fn live_session(&self, device_id: &str) -> Result<Arc<DeviceSession>, CallError> {
        let session = self.session(device_id);
        if let Some(session) = session.as_ref() {
            if session.status() == DeviceStatus::Accepted {
                return Ok(session.clone());
            }
        }
        // No live session: the registry tells unknown, undecided and offline apart.
        match self.registry.device(device_id).await? {
            None => Err(CallError::UnknownDevice(device_id.to_owned())),
            Some(record) if record.status != DeviceStatus::Accepted => {
                Err(CallError::NotAccepted(record.status))
            }
            Some(_) if session.is_some() => Err(CallError::NotAccepted(DeviceStatus::Pending)),
            Some(_) => Err(CallError::Offline),
        }
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `session` the device's live connection, closing the one it replaces.
    pub(crate) fn register(&self, session: Arc<DeviceSession>) {
        let device_id = session.device_id().to_owned();
        let status = session.status();
        let replaced = self.lock().insert(device_id.clone(), session);
        if let Some(old) = replaced {
            tracing::info!(device_id = %old.device_id(), "newer connection replaces the old one");
            old.close(close_code::REPLACED, "replaced by a newer connection");
        }
        self.events.device(
            "device.online",
            &device_id,
            serde_json::json!({ "status": status }),
        );
    }

    /// Removes `session` unless a newer connection has already replaced it.
    pub(crate) fn unregister(&self, session: &DeviceSession) {
        let mut sessions = self.lock();
        if sessions
            .get(session.device_id())
            .is_some_and(|s| s.connection_id == session.connection_id)
        {
            sessions.remove(session.device_id());
            drop(sessions);
            self.events
                .device("device.offline", session.device_id(), Value::Null);
        }
    }

    /// Delivers an operator decision (already stored) to a connected device.
    pub(crate) async fn apply_status(&self, device_id: &str, status: DeviceStatus) {
        if let Some(session) = self.session(device_id) {
            session.apply_status(status).await;
        }
    }

    /// Closes a device's connection, if it has one.
    pub(crate) fn disconnect(&self, device_id: &str, code: u16, reason: &'static str) {
        if let Some(session) = self.session(device_id) {
            session.close(code, reason);
        }
    }

    fn session(&self, device_id: &str) -> Option<Arc<DeviceSession>> {
        self.lock().get(device_id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<DeviceSession>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Params must be an object or an array, and every number must survive the
/// canonical form (else the device refuses the call as unsafe).
fn check_params(params: &Value) -> Result<(), CallError> {
    if !(params.is_object() || params.is_array()) {
        return Err(CallError::BadParams(
            "params must be a JSON object or array".into(),
        ));
    }
    match find_unsafe_number(params) {
        Some(n) => Err(CallError::BadParams(format!(
            "number {n} is beyond ±(2^53−1); send large values as strings"
        ))),
        None => Ok(()),
    }
}
