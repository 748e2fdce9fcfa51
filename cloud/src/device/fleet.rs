//! The live device connections by device id, and calls and events from the
//! cloud to a device through them: directly when this instance holds its
//! socket, through the [`Cluster`] when another does.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use protocol::{check_method_name, find_unsafe_number, Message};
use serde_json::Value;

use super::call_error::CallError;
use super::cluster::Cluster;
use super::metrics::RpcMetrics;
use super::session::DeviceSession;
use crate::events::EventHub;
use crate::store::registry::{DeviceStatus, Registry};
use protocol::close_code;

/// How often an instance records that it is alive.
pub const PRESENCE_PERIOD: Duration = Duration::from_secs(10);
/// A device held by an instance not alive for this long counts as offline
/// (the instance is gone, and its devices are reconnecting elsewhere).
pub const PRESENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Live device sessions (pending or accepted), one per device.
pub struct Fleet {
    sessions: Mutex<HashMap<String, Arc<DeviceSession>>>,
    /// This instance's name, recorded beside each device it holds.
    instance: String,
    /// The other instances sharing the fleet, if any.
    cluster: Option<Cluster>,
    next_connection_id: AtomicU64,
    /// Tells unknown, undecided and offline devices apart when a call fails.
    registry: Registry,
    /// Where devices coming online and going offline are announced.
    events: EventHub,
    /// Every call's outcome and latency, for `/metrics`.
    metrics: RpcMetrics,
}

impl Fleet {
    pub(crate) fn new(
        instance: String,
        cluster: Option<Cluster>,
        registry: Registry,
        events: EventHub,
        metrics: RpcMetrics,
    ) -> Self {
        Fleet {
            sessions: Mutex::new(HashMap::new()),
            instance,
            cluster,
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
        match self.session(device_id) {
            Some(session) if session.status() == DeviceStatus::Accepted => {
                return session.call(method, params, timeout).await
            }
            Some(_) => {}
            None => {
                if let Some(cluster) = &self.cluster {
                    match cluster.call(device_id, method, params, timeout).await {
                        Err(CallError::Offline) => {}
                        outcome => return outcome,
                    }
                }
            }
        }
        Err(self.why_not_live(device_id).await)
    }

    /// Sends the event `event` to an accepted, connected device as a signed
    /// notification (no answer; the bridge publishes it on `rpc.<event>`):
    /// `Ok` once the device's link has taken it. `params`, if any, must be
    /// an object or array.
    pub async fn notify(
        &self,
        device_id: &str,
        event: &str,
        params: Option<Value>,
    ) -> Result<(), CallError> {
        check_method_name(event).map_err(CallError::BadMethod)?;
        if let Some(params) = &params {
            check_params(params)?;
        }
        match self.session(device_id) {
            Some(session) if session.status() == DeviceStatus::Accepted => {
                let notification = Message::Notification {
                    method: event.to_owned(),
                    params,
                };
                return session
                    .send(&notification)
                    .await
                    .map_err(|_| CallError::Disconnected);
            }
            Some(_) => {}
            None => {
                if let Some(cluster) = &self.cluster {
                    match cluster.notify(device_id, event, params).await {
                        Err(CallError::Offline) => {}
                        outcome => return outcome,
                    }
                }
            }
        }
        Err(self.why_not_live(device_id).await)
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

    /// Why a call cannot reach the device: the registry tells unknown,
    /// undecided and offline apart.
    async fn why_not_live(&self, device_id: &str) -> CallError {
        match self.registry.device(device_id).await {
            Err(e) => e.into(),
            Ok(None) => CallError::UnknownDevice(device_id.to_owned()),
            Ok(Some(record)) if record.status != DeviceStatus::Accepted => {
                CallError::NotAccepted(record.status)
            }
            Ok(Some(_)) if self.is_online(device_id) => {
                CallError::NotAccepted(DeviceStatus::Pending)
            }
            Ok(Some(_)) => CallError::Offline,
        }
    }

    /// Where each connected device is: device id → the instance holding its
    /// socket (this one's sessions, and those the others recorded).
    pub async fn connections(&self) -> HashMap<String, String> {
        let mut connections = self.elsewhere(None).await;
        for id in self.lock().keys() {
            connections.insert(id.clone(), self.instance.clone());
        }
        connections
    }

    /// The instance holding the device's socket, if one does.
    pub async fn connection_of(&self, device_id: &str) -> Option<String> {
        if self.is_online(device_id) {
            return Some(self.instance.clone());
        }
        self.elsewhere(Some(device_id)).await.remove(device_id)
    }

    async fn elsewhere(&self, device_id: Option<&str>) -> HashMap<String, String> {
        let alive_since = protocol::now_ms() as i64 - PRESENCE_TIMEOUT.as_millis() as i64;
        match self
            .registry
            .connected_elsewhere(&self.instance, alive_since, device_id)
            .await
        {
            Ok(rows) => rows.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which instance holds which device");
                HashMap::new()
            }
        }
    }

    /// Records, every [`PRESENCE_PERIOD`] until `stop`, that this instance is
    /// alive; at the first, forgets what an earlier run of it recorded.
    pub async fn keep_presence(&self, stop: tokio_util::sync::CancellationToken) {
        let mut ticks = tokio::time::interval(PRESENCE_PERIOD);
        let mut starting = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let now = protocol::now_ms() as i64;
            match self
                .registry
                .record_instance_alive(&self.instance, starting, now)
                .await
            {
                Ok(()) => starting = false,
                Err(e) => tracing::warn!(error = %e, "cannot record that this instance is alive"),
            }
        }
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `session` the device's live connection, closing the one it
    /// replaces, here or on another instance.
    pub(crate) async fn register(&self, session: Arc<DeviceSession>) {
        let device_id = session.device_id().to_owned();
        let status = session.status();
        let replaced = self.lock().insert(device_id.clone(), session.clone());
        if let Some(old) = replaced {
            tracing::info!(device_id = %old.device_id(), "newer connection replaces the old one");
            old.close(close_code::REPLACED, "replaced by a newer connection");
        }
        if let Err(e) = self
            .registry
            .record_connected(&device_id, &self.instance, session.connection_id)
            .await
        {
            tracing::warn!(%device_id, error = %e, "cannot record where the device is connected");
        }
        if let Some(cluster) = &self.cluster {
            cluster.hold(session).await;
        }
        self.events.device(
            "device.online",
            &device_id,
            serde_json::json!({ "status": status, "instance": self.instance }),
        );
    }

    /// Removes `session` unless a newer connection has already replaced it,
    /// and records when the device was last seen.
    pub(crate) async fn unregister(&self, session: &DeviceSession) {
        let device_id = session.device_id();
        let current = {
            let mut sessions = self.lock();
            let current = sessions
                .get(device_id)
                .is_some_and(|s| s.connection_id == session.connection_id);
            if current {
                sessions.remove(device_id);
            }
            current
        };
        if let Some(cluster) = &self.cluster {
            cluster.release(session);
        }
        let now = protocol::now_ms() as i64;
        if let Err(e) = self
            .registry
            .record_disconnected(device_id, &self.instance, session.connection_id, now)
            .await
        {
            tracing::warn!(%device_id, error = %e, "cannot record that the device disconnected");
        }
        if current {
            self.events.device("device.offline", device_id, Value::Null);
        }
    }

    /// Delivers an operator decision (already stored) to the device's
    /// connection, wherever it is.
    pub(crate) async fn apply_status(&self, device_id: &str, status: DeviceStatus) {
        match (self.session(device_id), &self.cluster) {
            (Some(session), _) => session.apply_status(status).await,
            (None, Some(cluster)) => cluster.send_status(device_id, status).await,
            (None, None) => {}
        }
    }

    /// Closes the device's connection (it was deleted), wherever it is.
    pub(crate) async fn disconnect(&self, device_id: &str) {
        match (self.session(device_id), &self.cluster) {
            (Some(session), _) => session.close(close_code::DELETED, "device deleted"),
            (None, Some(cluster)) => cluster.send_disconnect(device_id).await,
            (None, None) => {}
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
pub fn check_params(params: &Value) -> Result<(), CallError> {
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
