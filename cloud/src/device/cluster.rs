//! Several cloud instances sharing one fleet, over a NATS they share
//! (`CLOUD_NATS_URL`, a cluster in production).
//!
//! A device's socket is held by exactly one instance. While it holds it,
//! that instance subscribes to the device's subjects,
//! `devbridge.device.<id>.<verb>` (a `.` of the id written `~`):
//!
//! - `call`: a call that arrived at another instance. The holder runs it
//!   and publishes to the request's reply inbox a `working` beat every
//!   [`BEAT`] while it runs, then the outcome. A caller that hears nothing
//!   for [`SILENCE`] knows the holder is gone: the call fails with
//!   `disconnected`, as it would had the device dropped. No subscriber at
//!   all (NATS's "no responders") means no instance holds the device.
//! - `notify`: an event (a notification, no answer from the device) that
//!   arrived at another instance. The holder sends it and answers at once
//!   with whether the device's link took it; no answer within [`SILENCE`]
//!   counts as `disconnected`, no subscriber as `offline`, as for a call.
//! - `status`: an operator's decision, already stored, to apply at once.
//! - `disconnect`: the device was deleted; its socket is closed.
//! - `takeover`: the device authenticated on another instance, whose
//!   session replaces this one fleet-wide.
//!
//! Live events go to every instance on `devbridge.events`; each delivers the
//! others' to its own subscribers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::{HeaderMap, StatusCode, Subscriber};
use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use protocol::close_code;
use protocol::{Message, RpcError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::call_error::CallError;
use super::session::DeviceSession;
use crate::events::EventHub;
use crate::store::registry::DeviceStatus;

/// How often the holder of a device tells a waiting caller it still works.
pub const BEAT: Duration = Duration::from_secs(1);
/// How long a caller waits without a word from the holder before it counts
/// the holder as gone.
pub const SILENCE: Duration = Duration::from_secs(4);
/// Subject of the live events every instance shares.
const EVENTS_SUBJECT: &str = "devbridge.events";
/// Header naming the instance that published a message.
const INSTANCE_HEADER: &str = "Devbridge-Instance";
/// Header naming the holder's connection a `takeover` replaces the others with.
const CONNECTION_HEADER: &str = "Devbridge-Connection";

/// This instance's link to the others; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    instance: String,
    /// The task serving each held device's subjects, with its connection.
    held: Mutex<HashMap<String, (u64, AbortHandle)>>,
}

/// A call as it travels to the holder.
#[derive(Serialize, Deserialize)]
struct RemoteCall {
    method: String,
    params: Option<Value>,
    timeout_ms: u64,
}

/// An event as it travels to the holder.
#[derive(Serialize, Deserialize)]
struct RemoteNotification {
    event: String,
    params: Option<Value>,
}

/// What the holder tells a waiting caller.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Progress {
    Working,
    Answered(Value),
    DeviceError(RpcError),
    TimedOut(u64),
    Disconnected,
    NotAccepted(DeviceStatus),
}

impl Cluster {
    /// Connects to the shared NATS and starts relaying live events both
    /// ways: `relay` holds what this instance publishes.
    pub async fn connect(
        url: &str,
        instance: &str,
        events: EventHub,
        relay: mpsc::Receiver<Utf8Bytes>,
    ) -> Result<Self, async_nats::ConnectError> {
        let servers = url
            .split(',')
            .map(|server| server.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, e)
            })?;
        // Reconnects forever, to any server of the list: an instance without
        // its NATS still serves the devices it holds.
        let client = async_nats::ConnectOptions::new()
            .name(format!("devbridge-cloud {instance}"))
            .connect(servers)
            .await?;
        let cluster = Cluster {
            inner: Arc::new(Inner {
                client,
                instance: instance.to_owned(),
                held: Mutex::new(HashMap::new()),
            }),
        };
        tokio::spawn(cluster.clone().publish_events(relay));
        match cluster.inner.client.subscribe(EVENTS_SUBJECT).await {
            Ok(subscriber) => {
                tokio::spawn(cluster.clone().deliver_events(subscriber, events));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to the other instances' events")
            }
        }
        Ok(cluster)
    }

    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Calls `method` on a device another instance may hold. `Offline` if
    /// none does.
    pub(crate) async fn call(
        &self,
        device_id: &str,
        method: &str,
        params: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let client = &self.inner.client;
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| CallError::Cluster(e.to_string()))?;
        let request = RemoteCall {
            method: method.to_owned(),
            params,
            timeout_ms: timeout.as_millis() as u64,
        };
        let payload = serde_json::to_vec(&request).expect("a call serializes");
        client
            .publish_with_reply(device_subject(device_id, "call"), inbox, payload.into())
            .await
            .map_err(|e| CallError::Cluster(e.to_string()))?;
        loop {
            let Ok(Some(reply)) = tokio::time::timeout(SILENCE, replies.next()).await else {
                return Err(CallError::Disconnected);
            };
            if reply.status == Some(StatusCode::NO_RESPONDERS) {
                return Err(CallError::Offline);
            }
            match serde_json::from_slice(&reply.payload) {
                Ok(Progress::Working) => continue,
                Ok(Progress::Answered(result)) => return Ok(result),
                Ok(Progress::DeviceError(error)) => return Err(CallError::Device(error)),
                Ok(Progress::TimedOut(ms)) => {
                    return Err(CallError::TimedOut(Duration::from_millis(ms)))
                }
                Ok(Progress::Disconnected) => return Err(CallError::Disconnected),
                Ok(Progress::NotAccepted(status)) => return Err(CallError::NotAccepted(status)),
                Err(e) => return Err(CallError::Cluster(format!("unreadable answer: {e}"))),
            }
        }
    }

    /// Sends the event `event` to a device another instance may hold, and
    /// waits until that instance has handed it to the device's link.
    /// `Offline` if no instance holds the device.
    pub(crate) async fn notify(
        &self,
        device_id: &str,
        event: &str,
        params: Option<Value>,
    ) -> Result<(), CallError> {
        let client = &self.inner.client;
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| CallError::Cluster(e.to_string()))?;
        let notification = RemoteNotification {
            event: event.to_owned(),
            params,
        };
        let payload = serde_json::to_vec(&notification).expect("an event serializes");
        client
            .publish_with_reply(device_subject(device_id, "notify"), inbox, payload.into())
            .await
            .map_err(|e| CallError::Cluster(e.to_string()))?;
        let Ok(Some(reply)) = tokio::time::timeout(SILENCE, replies.next()).await else {
            return Err(CallError::Disconnected);
        };
        if reply.status == Some(StatusCode::NO_RESPONDERS) {
            return Err(CallError::Offline);
        }
        match serde_json::from_slice(&reply.payload) {
            Ok(Progress::Answered(_)) => Ok(()),
            Ok(Progress::NotAccepted(status)) => Err(CallError::NotAccepted(status)),
            Ok(_) => Err(CallError::Disconnected),
            Err(e) => Err(CallError::Cluster(format!("unreadable answer: {e}"))),
        }
    }

    /// Tells whichever instance holds the device to apply `status`.
    pub(crate) async fn send_status(&self, device_id: &str, status: DeviceStatus) {
        let payload = serde_json::to_vec(&status).expect("a status serializes");
        self.publish(
            device_subject(device_id, "status"),
            HeaderMap::new(),
            payload,
        )
        .await;
    }

    /// Tells whichever instance holds the device to close its socket.
    pub(crate) async fn send_disconnect(&self, device_id: &str) {
        self.publish(
            device_subject(device_id, "disconnect"),
            HeaderMap::new(),
            Vec::new(),
        )
        .await;
    }

    /// This instance now holds `session`: serves its subjects, and tells any
    /// other instance holding an older session of the device to close it.
    pub(crate) async fn hold(&self, session: Arc<DeviceSession>) {
        let device_id = session.device_id().to_owned();
        let subscriber = match self
            .inner
            .client
            .subscribe(device_subject(&device_id, "*"))
            .await
        {
            Ok(subscriber) => subscriber,
            Err(e) => {
                tracing::error!(%device_id, error = %e, "cannot serve the device to the other instances");
                return;
            }
        };
        let connection_id = session.connection_id;
        let (echoed, echo) = oneshot::channel();
        let serving = tokio::spawn(self.clone().serve(session, subscriber, echoed));
        let replaced = self
            .held()
            .insert(device_id.clone(), (connection_id, serving.abort_handle()));
        if let Some((_, older)) = replaced {
            older.abort();
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION_HEADER, connection_id.to_string().as_str());
        self.publish(device_subject(&device_id, "takeover"), headers, Vec::new())
            .await;
        // NATS serves one client's commands in order: once this takeover
        // comes back on the new subscription, the server has the
        // subscription, and a decision stored from now on reaches this
        // session (the connection re-reads the registry next, for one stored
        // before). Flushing the socket alone would not say so.
        if tokio::time::timeout(SILENCE, echo).await.is_err() {
            tracing::warn!(%device_id, "the device's subscription was not confirmed in time");
        }
    }

    /// This instance no longer holds `session` (unless a newer one of the
    /// same device took its place here).
    pub(crate) fn release(&self, session: &DeviceSession) {
        let mut held = self.held();
        if held
            .get(session.device_id())
            .is_some_and(|(connection, _)| *connection == session.connection_id)
        {
            if let Some((_, serving)) = held.remove(session.device_id()) {
                serving.abort();
            }
        }
    }

    /// Serves one held device's subjects until released.
    /// `echoed` is told when this session's own takeover comes back.
    async fn serve(
        self,
        session: Arc<DeviceSession>,
        mut requests: Subscriber,
        echoed: oneshot::Sender<()>,
    ) {
        let mut echoed = Some(echoed);
        while let Some(message) = requests.next().await {
            let verb = message.subject.rsplit('.').next().unwrap_or_default();
            match verb {
                // Each in a task of its own: a slow device or a full outbox
                // must not hold up this device's other subjects.
                "call" => {
                    if let Some((call, inbox)) = remote_request::<RemoteCall>(&message, "call") {
                        tokio::spawn(self.clone().answer(session.clone(), call, inbox));
                    }
                }
                "notify" => {
                    if let Some((event, inbox)) =
                        remote_request::<RemoteNotification>(&message, "event")
                    {
                        tokio::spawn(self.clone().deliver(session.clone(), event, inbox));
                    }
                }
                "status" => match serde_json::from_slice::<DeviceStatus>(&message.payload) {
                    Ok(status) => session.apply_status(status).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "dropped an unreadable status from another instance")
                    }
                },
                "disconnect" => session.close(close_code::DELETED, "device deleted"),
                "takeover" => {
                    let from = |name| {
                        message
                            .headers
                            .as_ref()
                            .and_then(|headers| headers.get(name))
                            .map(|value| value.as_str().to_owned())
                    };
                    let mine = from(INSTANCE_HEADER).as_deref() == Some(self.instance())
                        && from(CONNECTION_HEADER) == Some(session.connection_id.to_string());
                    if mine {
                        if let Some(echoed) = echoed.take() {
                            let _ = echoed.send(());
                        }
                    } else {
                        tracing::info!(device_id = %session.device_id(), by = ?from(INSTANCE_HEADER), "a newer connection on another instance replaces this one");
                        session.close(close_code::REPLACED, "replaced by a newer connection");
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends an event from another instance to `session`'s device, and tells
    /// that instance whether the device's link took it.
    async fn deliver(
        self,
        session: Arc<DeviceSession>,
        notification: RemoteNotification,
        inbox: String,
    ) {
        let progress = if session.status() != DeviceStatus::Accepted {
            Progress::NotAccepted(session.status())
        } else {
            let event = Message::Notification {
                method: notification.event,
                params: notification.params,
            };
            match session.send(&event).await {
                Ok(()) => Progress::Answered(Value::Null),
                Err(_) => Progress::Disconnected,
            }
        };
        let payload = serde_json::to_vec(&progress).expect("an outcome serializes");
        self.publish(inbox, HeaderMap::new(), payload).await;
    }

    /// Runs a call from another instance on `session`, beating while it runs.
    async fn answer(self, session: Arc<DeviceSession>, call: RemoteCall, inbox: String) {
        let progress = if session.status() != DeviceStatus::Accepted {
            Progress::NotAccepted(session.status())
        } else {
            let timeout = Duration::from_millis(call.timeout_ms);
            let running = session.call(&call.method, call.params, timeout);
            tokio::pin!(running);
            let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + BEAT, BEAT);
            loop {
                tokio::select! {
                    outcome = &mut running => break match outcome {
                        Ok(result) => Progress::Answered(result),
                        Err(CallError::Device(error)) => Progress::DeviceError(error),
                        Err(CallError::TimedOut(after)) => Progress::TimedOut(after.as_millis() as u64),
                        Err(_) => Progress::Disconnected,
                    },
                    _ = beats.tick() => {
                        let beat = serde_json::to_vec(&Progress::Working).expect("serializes");
                        self.publish(inbox.clone(), HeaderMap::new(), beat).await;
                    }
                }
            }
        };
        let payload = serde_json::to_vec(&progress).expect("an outcome serializes");
        self.publish(inbox, HeaderMap::new(), payload).await;
    }

    async fn publish(&self, subject: String, mut headers: HeaderMap, payload: Vec<u8>) {
        headers.insert(INSTANCE_HEADER, self.instance());
        if let Err(e) = self
            .inner
            .client
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
        {
            tracing::warn!(%subject, error = %e, "cannot publish to the other instances");
        }
    }

    /// Publishes this instance's live events for the others.
    async fn publish_events(self, mut relay: mpsc::Receiver<Utf8Bytes>) {
        while let Some(text) = relay.recv().await {
            self.publish(
                EVENTS_SUBJECT.into(),
                HeaderMap::new(),
                text.as_bytes().to_vec(),
            )
            .await;
        }
    }

    /// Delivers the other instances' live events to subscribers here.
    async fn deliver_events(self, mut events: Subscriber, hub: EventHub) {
        while let Some(message) = events.next().await {
            let from = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(INSTANCE_HEADER));
            if from.is_some_and(|instance| instance.as_str() == self.instance()) {
                continue;
            }
            match std::str::from_utf8(&message.payload) {
                Ok(text) => hub.deliver_relayed(text),
                Err(_) => tracing::warn!("dropped a relayed event that is not UTF-8"),
            }
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, AbortHandle)>> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// `devbridge.device.<id>.<verb>`; a device id may hold dots, which NATS
/// reads as token separators, and never `~`, which takes their place.
fn device_subject(device_id: &str, verb: &str) -> String {
    format!("devbridge.device.{}.{verb}", device_id.replace('.', "~"))
}

/// A request another instance waits on: its payload read as `T`, and the
/// inbox to answer; None (an unreadable one logged) otherwise.
fn remote_request<T: serde::de::DeserializeOwned>(
    message: &async_nats::Message,
    what: &str,
) -> Option<(T, String)> {
    let inbox = message.reply.as_ref()?.to_string();
    match serde_json::from_slice(&message.payload) {
        Ok(request) => Some((request, inbox)),
        Err(e) => {
            tracing::warn!(error = %e, "dropped an unreadable {what} from another instance");
            None
        }
    }
}
