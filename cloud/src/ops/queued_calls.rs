//! Calls that wait for an offline device (`ttl_ms`): stored, sent when the
//! device is online, completed or expired; an idempotency key makes a
//! retried submission find the call it made. The keeper (one task per
//! instance) expires what waited too long and sends what waits for a device
//! this instance holds; stores claim each call once, so instances sharing the
//! fleet never send one twice.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::store::queued_calls::{Enqueued, NewQueuedCall, QueuedCall};
use crate::store::{Action, DeviceStatus};
use protocol::now_ms;

use super::devices::RpcRequest;
use super::{Caller, ErrorKind, OpError, Operations, Permission};

/// Longest a call may wait for its device.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most calls waiting for one device.
pub const MAX_WAITING_PER_DEVICE: i64 = 100;
/// Most calls waiting in all.
pub const MAX_WAITING: i64 = 100_000;
/// Longest idempotency key, in bytes.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Calls of a device shown with it.
pub const CALLS_SHOWN: i64 = 50;
/// How often the keeper looks for calls to send or expire.
const KEEPER_PERIOD: Duration = Duration::from_secs(1);
/// A sent call with no answer this long after its timeout was lost with the
/// instance that sent it.
const LOST_AFTER: Duration = Duration::from_secs(60);
/// Ended calls are kept this long.
const KEEP_ENDED: Duration = Duration::from_secs(30 * 24 * 3600);

/// A call to keep until the device is online.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueuedCallRequest {
    #[schema(example = "containers.restart")]
    pub method: String,
    /// A JSON object or array.
    #[serde(default)]
    pub params: Option<Value>,
    /// How long the device has to answer once the call is sent; defaults to
    /// the cloud's RPC timeout.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// How long the call waits for its device, at most 7 days.
    #[schema(minimum = 1)]
    pub ttl_ms: u64,
    /// Names this submission: submitting the same key again (the same
    /// operator) answers the call made the first time instead of a new one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Devices this instance is sending queued calls to right now.
#[derive(Default)]
pub(super) struct Sending(Mutex<HashSet<String>>);

impl Sending {
    /// Marks `device_id` as being sent to; false if it already is.
    fn start(&self, device_id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device_id.to_owned())
    }

    fn end(&self, device_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(device_id);
    }
}

impl Operations {
    /// Stores a call for a device, and sends it at once if the device is
    /// online. The second value is false when the idempotency key named an
    /// earlier call, which is answered instead.
    pub async fn queue_call(
        &self,
        caller: &Caller,
        device_id: &str,
        request: QueuedCallRequest,
    ) -> Result<(QueuedCall, bool), OpError> {
        let action = "rpc.queue";
        let needed = self.config().method_roles.needed_for(&request.method);
        self.auditor()
            .authorize(
                caller,
                Permission::Call(needed),
                action,
                device_id,
                &request.method,
            )
            .await?;
        Self::check_stored_call(&request.method, request.params.as_ref())?;
        let timeout = self.call_timeout(request.timeout_ms)?;
        if request.ttl_ms == 0 || Duration::from_millis(request.ttl_ms) > MAX_TTL {
            return Err(OpError::bad_request(format!(
                "ttl_ms is 1 to {} (7 days)",
                MAX_TTL.as_millis()
            )));
        }
        if let Some(key) = &request.idempotency_key {
            if key.is_empty()
                || key.len() > MAX_IDEMPOTENCY_KEY_BYTES
                || key.chars().any(char::is_control)
            {
                return Err(OpError::bad_request(format!(
                    "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes of printable text"
                )));
            }
        }
        if self.store().registry.device(device_id).await?.is_none() {
            return Err(OpError::unknown_device(device_id));
        }
        let now = now_ms() as i64;
        let call = NewQueuedCall {
            device_id,
            method: &request.method,
            params: request.params.as_ref(),
            timeout_ms: timeout.as_millis() as i64,
            created_by: &caller.name,
            expires_at: now + request.ttl_ms as i64,
            idempotency_key: request.idempotency_key.as_deref(),
        };
        let enqueued = self
            .store()
            .queued_calls
            .enqueue(&call, MAX_WAITING_PER_DEVICE, MAX_WAITING, now)
            .await?;
        let (stored, new) = match enqueued {
            Enqueued::New(stored) => (stored, true),
            Enqueued::Existing(stored) => {
                let same = stored.device_id == device_id
                    && stored.method == request.method
                    && stored.params == request.params;
                if !same {
                    return Err(OpError::new(
                        ErrorKind::IdempotencyConflict,
                        format!(
                            "idempotency key {:?} named call {} ({} on {}) already; use a new key for a different call",
                            stored.idempotency_key.as_deref().unwrap_or_default(),
                            stored.id,
                            stored.method,
                            stored.device_id
                        ),
                    ));
                }
                (stored, false)
            }
            Enqueued::DeviceFull => {
                return Err(OpError::new(
                    ErrorKind::Busy,
                    format!("{MAX_WAITING_PER_DEVICE} calls wait for {device_id} already"),
                ))
            }
            Enqueued::FleetFull => {
                return Err(OpError::new(
                    ErrorKind::Busy,
                    format!("{MAX_WAITING} calls wait for devices already"),
                ))
            }
        };
        if new {
            self.auditor()
                .record(&Action {
                    actor: &caller.name,
                    action,
                    target: device_id,
                    outcome: "ok",
                    detail: &format!("call {}: {}", stored.id, stored.method),
                    latency_ms: None,
                })
                .await;
            self.publish_call(&stored);
            if self
                .device_layer()
                .fleet()
                .connection_of(device_id)
                .await
                .is_some()
            {
                let ops = self.clone();
                let device_id = device_id.to_owned();
                tokio::spawn(async move { ops.send_waiting(&device_id).await });
            }
        }
        Ok((stored, new))
    }

    /// A device's calls, newest first.
    pub async fn queued_calls(&self, device_id: &str) -> Result<Vec<QueuedCall>, OpError> {
        Ok(self
            .store()
            .queued_calls
            .of_device(device_id, CALLS_SHOWN)
            .await?)
    }

    /// One call of a device.
    pub async fn queued_call(&self, device_id: &str, id: i64) -> Result<QueuedCall, OpError> {
        self.store()
            .queued_calls
            .call(id)
            .await?
            .filter(|call| call.device_id == device_id)
            .ok_or_else(|| {
                OpError::new(
                    ErrorKind::UnknownCall,
                    format!("device {device_id:?} has no call {id}"),
                )
            })
    }

    /// Until `stop`: expires what waited too long, fails what was lost, and
    /// sends what waits for the devices this instance holds.
    pub async fn keep_queued_calls(&self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(KEEPER_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.keep_once(&mut last_prune).await {
                tracing::warn!(error = %e, "queued calls: keeping failed; trying again");
            }
        }
    }

    async fn keep_once(&self, last_prune: &mut Instant) -> Result<(), OpError> {
        let store = &self.store().queued_calls;
        let now = now_ms() as i64;
        for call in store.expire(now).await? {
            self.end_of_call(&call, None).await;
        }
        let lost_before = now - LOST_AFTER.as_millis() as i64;
        for call in store.fail_lost(lost_before, now).await? {
            self.end_of_call(&call, None).await;
        }
        if last_prune.elapsed() > Duration::from_secs(3600) {
            *last_prune = Instant::now();
            store.prune(now - KEEP_ENDED.as_millis() as i64).await?;
        }
        let online = self.device_layer().fleet().online_device_ids();
        for device_id in store.devices_waiting(now).await? {
            if online.contains(&device_id) {
                let ops = self.clone();
                tokio::spawn(async move { ops.send_waiting(&device_id).await });
            }
        }
        Ok(())
    }

    /// Sends a device's waiting calls one at a time, oldest first, while it
    /// is accepted and online.
    async fn send_waiting(&self, device_id: &str) {
        if !self.inner.sending.start(device_id) {
            return;
        }
        if let Err(e) = self.send_each_waiting(device_id).await {
            tracing::warn!(%device_id, error = %e, "queued calls: sending failed; the keeper tries again");
        }
        self.inner.sending.end(device_id);
    }

    async fn send_each_waiting(&self, device_id: &str) -> Result<(), OpError> {
        let store = &self.store().queued_calls;
        let accepted = self
            .store()
            .registry
            .device(device_id)
            .await?
            .is_some_and(|device| device.status == DeviceStatus::Accepted);
        if !accepted {
            return Ok(());
        }
        for id in store.waiting_for(device_id, now_ms() as i64).await? {
            let Some(call) = store.claim(id, now_ms() as i64).await? else {
                continue;
            };
            self.publish_call(&call);
            let started = Instant::now();
            let request = RpcRequest {
                method: call.method.clone(),
                params: call.params.clone(),
                timeout_ms: Some(call.timeout_ms as u64),
            };
            let outcome = self.call_unaudited(device_id, request).await;
            let latency = started.elapsed().as_millis() as i64;
            let now = now_ms() as i64;
            let ended = match &outcome {
                // Not sent: the device went away first. It waits again.
                Err(e) if matches!(e.kind, ErrorKind::Offline | ErrorKind::NotAccepted) => {
                    if let Some(call) = store.unclaim(id).await? {
                        self.publish_call(&call);
                    }
                    return Ok(());
                }
                Ok(result) => store.complete(id, Ok(result), now).await?,
                Err(e) => {
                    store
                        .complete(id, Err((e.kind.as_str(), &e.message)), now)
                        .await?
                }
            };
            if let Some(call) = ended {
                self.end_of_call(&call, Some(latency)).await;
            }
        }
        Ok(())
    }

    /// Records a call's end in the audit log, in its submitter's name, and
    /// tells the live page.
    async fn end_of_call(&self, call: &QueuedCall, latency_ms: Option<i64>) {
        let outcome = match call.state.as_str() {
            "successful" => "ok",
            "expired" => "expired",
            _ => call.outcome.as_deref().unwrap_or("failed"),
        };
        self.auditor()
            .record(&Action {
                actor: &call.created_by,
                action: "rpc",
                target: &call.device_id,
                outcome,
                detail: &format!("{} (queued call {})", call.method, call.id),
                latency_ms,
            })
            .await;
        self.publish_call(call);
    }

    fn publish_call(&self, call: &QueuedCall) {
        self.device_layer().events().device(
            "device.queued_call",
            &call.device_id,
            json!({ "call": call }),
        );
    }
}
