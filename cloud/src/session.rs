//! One device connection: the handshake, then a reader loop that checks every
//! frame and acts on the verified message, a writer task (see [`crate::link`]),
//! pings, and the table of cloud → device calls awaiting their answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures::stream::SplitStream;
use futures::StreamExt;
use governor::DefaultDirectRateLimiter;
use protocol::keys::PublicKey;
use protocol::{auth, Direction, ErrorCode, Expectation, Message, RpcError, Signer};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};

use crate::admission::UnauthenticatedSlot;
use crate::inbound::{self, Refused};
use crate::link::{self, Link, LinkClosed};
use crate::registry::DeviceStatus;
use crate::state::AppState;
use crate::{cloud_methods, handshake, now_ms};
use protocol::close_code;

/// last_seen is written at most this often per device, to spare the database.
const LAST_SEEN_PERIOD: Duration = Duration::from_secs(30);
/// Time the writer gets to flush and send its close frame once a connection ends.
const WRITER_GRACE: Duration = Duration::from_secs(3);

/// The answer a pending call is waiting for.
type CallReply = Result<Value, RpcError>;

/// An authenticated device connection, as the fleet and the API see it.
pub(crate) struct DeviceSession {
    pub(crate) device_id: String,
    /// Tells this connection from a newer one of the same device.
    pub(crate) connection_id: u64,
    /// The registered key every frame of this connection must verify with.
    key: PublicKey,
    /// When the device signed its authentication on this connection.
    authenticated_at: u64,
    /// Messages a pending device may still send: it may only wait.
    pending_allowance: DefaultDirectRateLimiter,
    /// Pending sessions carry nothing but auth traffic until accepted.
    status: Mutex<DeviceStatus>,
    link: Arc<Link>,
    /// Calls awaiting the device's answer, by JSON-RPC id; `None` once the
    /// connection is gone, so that no call can start waiting on a dead one.
    in_flight: Mutex<Option<HashMap<String, oneshot::Sender<CallReply>>>>,
    next_call: AtomicU64,
    signer: Arc<Signer>,
}

impl DeviceSession {
    pub(crate) fn status(&self) -> DeviceStatus {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signs `message` for this device and queues it.
    pub(crate) async fn send(&self, message: &Message) -> Result<(), LinkClosed> {
        let text =
            self.signer
                .sign_to_text(message, &self.device_id, Direction::CloudToDevice, now_ms());
        self.link.send(text).await
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
        match status {
            DeviceStatus::Accepted => {
                tracing::info!(device_id = %self.device_id, "device accepted; session is live");
                let _ = self.send(&status_notification(status)).await;
            }
            DeviceStatus::Rejected => {
                tracing::info!(device_id = %self.device_id, "device rejected; closing its connection");
                let _ = self.send(&status_notification(status)).await;
                self.close(close_code::REJECTED, "device rejected");
            }
            _ => {}
        }
    }

    /// Registers a new call; `None` if the connection is already gone.
    pub(crate) fn start_call(&self) -> Option<(String, oneshot::Receiver<CallReply>)> {
        let id = format!("c-{}", self.next_call.fetch_add(1, Ordering::Relaxed) + 1);
        let (sender, receiver) = oneshot::channel();
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        in_flight.as_mut()?.insert(id.clone(), sender);
        Some((id, receiver))
    }

    /// Drops a call that gave up (timed out).
    pub(crate) fn forget_call(&self, id: &str) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(table) = in_flight.as_mut() {
            table.remove(id);
        }
    }

    fn complete_call(&self, id: &Value, reply: CallReply) {
        let waiter = id.as_str().and_then(|id| {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            in_flight.as_mut()?.remove(id)
        });
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(reply);
            }
            None => tracing::warn!(
                device_id = %self.device_id, %id,
                "response matches no call in flight (late or unknown); dropped"
            ),
        }
    }

    /// Fails every call in flight at once: their waiters see the sender drop.
    fn fail_in_flight(&self) {
        let table = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(table) = table.filter(|t| !t.is_empty()) {
            tracing::info!(device_id = %self.device_id, calls = table.len(), "connection closed with calls in flight");
        }
    }
}

pub(crate) fn status_notification(status: DeviceStatus) -> Message {
    Message::notification(auth::STATUS, json!({ "status": status.as_str() }))
}

/// Drives one upgraded `/ws/device` connection from handshake to close. The
/// connection holds `slot` among the unauthenticated ones until its handshake ends.
pub(crate) async fn run_connection(
    state: AppState,
    socket: WebSocket,
    address: IpAddr,
    slot: UnauthenticatedSlot,
) {
    let (sink, mut stream) = socket.split();
    // A device that leaves its outbox full for two ping periods is not reading.
    let send_timeout = 2 * state.config().ping_interval.max(Duration::from_millis(10));
    let (link, outbox) = Link::new(state.sessions_stop(), send_timeout);
    let link = Arc::new(link);
    let mut writer = tokio::spawn(link::write_loop(sink, outbox, link.clone()));

    let authenticated = handshake::authenticate(&state, &link, &mut stream, address).await;
    drop(slot);
    if let Some(device) = authenticated {
        let session = Arc::new(DeviceSession {
            connection_id: state.fleet().next_connection_id(),
            device_id: device.device_id,
            key: device.key,
            authenticated_at: device.signed_at,
            pending_allowance: state.admission().pending_allowance(),
            status: Mutex::new(device.status),
            link: link.clone(),
            in_flight: Mutex::new(Some(HashMap::new())),
            next_call: AtomicU64::new(0),
            signer: state.signer().clone(),
        });
        state.fleet().register(session.clone());
        reconcile_with_registry(&state, &session).await;
        read_loop(&state, &session, &mut stream).await;
        state.fleet().unregister(&session);
        session.fail_in_flight();
        if let Err(e) = state
            .registry()
            .touch(&session.device_id, now_ms() as i64)
            .await
        {
            tracing::warn!(device_id = %session.device_id, error = %e, "cannot record last_seen");
        }
        tracing::info!(device_id = %session.device_id, "device disconnected");
    }

    link.stop().cancel();
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// An operator may have decided between the handshake reading the registry and
/// the session joining the fleet (where decisions are delivered); catch up.
async fn reconcile_with_registry(state: &AppState, session: &DeviceSession) {
    match state.registry().device(&session.device_id).await {
        Ok(None) => session.close(close_code::DELETED, "device deleted"),
        Ok(Some(record)) if record.status != session.status() => {
            session.apply_status(record.status).await
        }
        Ok(Some(_)) => {}
        Err(e) => {
            tracing::warn!(device_id = %session.device_id, error = %e, "cannot re-read device status")
        }
    }
}

async fn read_loop(state: &AppState, session: &DeviceSession, stream: &mut SplitStream<WebSocket>) {
    // Guarded: a zero period would make the ticker panic.
    let ping_interval = state.config().ping_interval.max(Duration::from_millis(10));
    let mut pings = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // The handshake has just written last_seen.
    let mut last_seen_written = Instant::now();
    loop {
        let received = tokio::select! {
            _ = session.link.stop().cancelled() => break,
            _ = pings.tick() => {
                if last_heard.elapsed() > 2 * ping_interval {
                    tracing::warn!(device_id = %session.device_id, "device stopped answering pings; dropping it");
                    session.close(close_code::UNRESPONSIVE, "ping timeout");
                    break;
                }
                session.link.ping();
                continue;
            }
            received = stream.next() => received,
        };
        let message = match received {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                tracing::info!(device_id = %session.device_id, error = %e, "device socket error");
                break;
            }
            None => break,
        };
        last_heard = Instant::now();
        let counted = matches!(message, WsMessage::Text(_) | WsMessage::Binary(_));
        if counted
            && session.status() == DeviceStatus::Pending
            && session.pending_allowance.check().is_err()
        {
            tracing::warn!(device_id = %session.device_id, "pending device sent too many messages; closing");
            state.refusal_counters().increment("pending_flood");
            session.close(
                close_code::TRY_AGAIN_LATER,
                "too many messages while pending; wait for an operator",
            );
            break;
        }
        match message {
            WsMessage::Text(text) => handle_text(state, session, text.as_str()).await,
            WsMessage::Binary(_) => {
                refuse(
                    state,
                    &session.link,
                    &session.device_id,
                    &session.device_id,
                    inbound::binary_frame(),
                )
                .await
            }
            WsMessage::Close(_) => break,
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
        }
        if last_seen_written.elapsed() >= LAST_SEEN_PERIOD {
            last_seen_written = Instant::now();
            if let Err(e) = state
                .registry()
                .touch(&session.device_id, now_ms() as i64)
                .await
            {
                tracing::warn!(device_id = %session.device_id, error = %e, "cannot record last_seen");
            }
        }
    }
}

async fn handle_text(state: &AppState, session: &DeviceSession, text: &str) {
    let config = state.config();
    let checked = inbound::parse(text, config.max_frame_bytes).and_then(|frame| {
        let expect = Expectation {
            signer_id: &session.device_id,
            key: &session.key,
            audience_id: &config.cloud_id,
            direction: Direction::DeviceToCloud,
            skew_ms: state.skew_ms(),
            now_ms: now_ms(),
        };
        let verified = inbound::verify(frame, &expect)?;
        // A pending device's frames are never acted on, so they need no
        // replay check, and they take no room in the cloud-wide guard.
        if session.status() == DeviceStatus::Accepted {
            inbound::admit(
                &verified,
                session.authenticated_at,
                expect.now_ms,
                state.replay_guard(),
            )
            .map_err(|refusal| Refused {
                refusal,
                reply_to: verified.message.request_id().cloned(),
            })?;
        }
        Ok(verified)
    });
    let message = match checked {
        Ok(verified) => verified.message,
        Err(refused) => {
            let device = &session.device_id;
            return refuse(state, &session.link, device, device, refused).await;
        }
    };
    match message {
        Message::Request { id, method, params } => {
            let result = if method == config.auth_rpc_method {
                // Re-authenticating on a live connection just learns the status.
                Ok(json!({ "status": session.status().as_str() }))
            } else if session.status() != DeviceStatus::Accepted {
                Err(RpcError::new(
                    ErrorCode::NotAccepted,
                    "device is pending approval",
                ))
            } else {
                cloud_methods::answer(state, &session.device_id, &method, params).await
            };
            let _ = session.send(&Message::Response { id, result }).await;
        }
        Message::Notification { method, params } => {
            if session.status() == DeviceStatus::Accepted {
                cloud_methods::notify(state, &session.device_id, &method, params).await;
            } else {
                tracing::debug!(device_id = %session.device_id, %method, "notification from a pending device ignored");
            }
        }
        Message::Response { id, result } => session.complete_call(&id, result),
    }
}

/// Logs and counts a refused frame and, if it was a request, answers it with
/// a signed error (`audience` is who the answer is signed for).
pub(crate) async fn refuse(
    state: &AppState,
    link: &Link,
    device_id: &str,
    audience: &str,
    refused: Refused,
) {
    let Refused { refusal, reply_to } = refused;
    tracing::warn!(%device_id, reason = refusal.reason(), %refusal, "refused a frame");
    state.refusal_counters().increment(refusal.reason());
    if let Some(id) = reply_to {
        let answer = Message::error(id, RpcError::refused(&refusal));
        let text =
            state
                .signer()
                .sign_to_text(&answer, audience, Direction::CloudToDevice, now_ms());
        let _ = link.send(text).await;
    }
}
