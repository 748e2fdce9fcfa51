//! One device connection from upgrade to close: the handshake, then a reader
//! loop that checks every frame through the session's peer and acts on the
//! verified message, a writer task (see [`super::link`]), and pings.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures::stream::SplitStream;
use futures::StreamExt;
use protocol::auth::StatusReport;
use protocol::close_code;
use protocol::{now_ms, ErrorCode, Message, RpcError};
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

use super::admission::UnauthenticatedSlot;
use super::link::{self, Link};
use super::session::DeviceSession;
use super::{handshake, served, Devices};
use crate::store::registry::DeviceStatus;

/// last_seen is written at most this often per device, to spare the database.
const LAST_SEEN_PERIOD: Duration = Duration::from_secs(30);
/// Time the writer gets to flush and send its close frame once a connection ends.
const WRITER_GRACE: Duration = Duration::from_secs(3);

/// Drives one upgraded `/ws/device` connection from handshake to close. The
/// connection holds `slot` among the unauthenticated ones until its handshake ends.
pub(crate) async fn run_connection(
    state: Devices,
    socket: WebSocket,
    address: IpAddr,
    slot: UnauthenticatedSlot,
) {
    let (sink, mut stream) = socket.split();
    // A device that leaves its outbox full for two ping periods is not reading.
    let send_timeout = 2 * state.config().ping_interval.max(Duration::from_millis(10));
    let (link, outbox) = Link::new(state.stopping(), send_timeout);
    let link = Arc::new(link);
    let mut writer = tokio::spawn(link::write_loop(sink, outbox, link.clone()));

    let authenticated = handshake::authenticate(&state, &link, &mut stream, address).await;
    drop(slot);
    if let Some(device) = authenticated {
        let session = Arc::new(DeviceSession::new(
            state.fleet().next_connection_id(),
            device.peer,
            device.status,
            state.admission().pending_allowance(),
            link.clone(),
        ));
        state.fleet().register(session.clone()).await;
        reconcile_with_registry(&state, &session).await;
        read_loop(&state, &session, &mut stream).await;
        session.fail_in_flight();
        state.fleet().unregister(&session).await;
        tracing::info!(device_id = %session.device_id(), "device disconnected");
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
async fn reconcile_with_registry(state: &Devices, session: &DeviceSession) {
    match state.registry().device(session.device_id()).await {
        Ok(None) => session.close(close_code::DELETED, "device deleted"),
        Ok(Some(record)) if record.status != session.status() => {
            session.apply_status(record.status).await
        }
        Ok(Some(_)) => {}
        Err(e) => {
            tracing::warn!(device_id = %session.device_id(), error = %e, "cannot re-read device status")
        }
    }
}

async fn read_loop(state: &Devices, session: &DeviceSession, stream: &mut SplitStream<WebSocket>) {
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
                    tracing::warn!(device_id = %session.device_id(), "device stopped answering pings; dropping it");
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
                tracing::info!(device_id = %session.device_id(), error = %e, "device socket error");
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
            tracing::warn!(device_id = %session.device_id(), "pending device sent too many messages; closing");
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
                let refused = session.peer.refuse_binary(now_ms());
                state
                    .refuse(&session.link, session.device_id(), refused)
                    .await
            }
            WsMessage::Close(_) => break,
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
        }
        if last_seen_written.elapsed() >= LAST_SEEN_PERIOD {
            last_seen_written = Instant::now();
            if let Err(e) = state
                .registry()
                .touch(session.device_id(), now_ms() as i64)
                .await
            {
                tracing::warn!(device_id = %session.device_id(), error = %e, "cannot record last_seen");
            }
        }
    }
}

async fn handle_text(state: &Devices, session: &DeviceSession, text: &str) {
    let config = state.config();
    // A pending device's frames are never acted on, so they need no replay
    // check, and they take no room in the cloud-wide guard.
    let guard = (session.status() == DeviceStatus::Accepted).then(|| state.replay_guard());
    let message = match session.peer.receive(text, now_ms(), guard) {
        Ok(verified) => verified.message,
        Err(refused) => {
            return state
                .refuse(&session.link, session.device_id(), refused)
                .await
        }
    };
    match message {
        Message::Request { id, method, params } => {
            let result = if method == config.auth_rpc_method {
                // Re-authenticating on a live connection just learns the status.
                let status = session.status().into();
                Ok(json!(StatusReport { status }))
            } else if session.status() != DeviceStatus::Accepted {
                Err(RpcError::new(
                    ErrorCode::NotAccepted,
                    "device is pending approval",
                ))
            } else {
                served::answer(state, session.device_id(), &method, params).await
            };
            let _ = session.send(&Message::Response { id, result }).await;
        }
        Message::Notification { method, params } => {
            if session.status() == DeviceStatus::Accepted {
                served::notify(state, session.device_id(), &method, params).await;
            } else {
                tracing::debug!(device_id = %session.device_id(), %method, "notification from a pending device ignored");
            }
        }
        Message::Response { id, result } => session.complete_call(&id, result),
    }
}
