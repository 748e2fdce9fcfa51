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
use protocol::cloud_keys::{DistrustCloudKey, TrustCloudKey, TrustedCloudKeys};
use protocol::keys;
use protocol::rotation;
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
        align_cloud_keys(&state, session.clone(), device.cloud_keys);
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
async fn reconcile_with_registry(state: &Devices, session: &Arc<DeviceSession>) {
    match state.registry().device(session.device_id()).await {
        Ok(None) => session.close(close_code::DELETED, "device deleted"),
        Ok(Some(record)) => {
            if record.status != session.status() {
                session.apply_status(record.status).await;
            }
            if record.key_rotation_required_at.is_some() {
                ask_to_rotate(state, session.clone());
            }
        }
        Err(e) => {
            tracing::warn!(device_id = %session.device_id(), error = %e, "cannot re-read device status")
        }
    }
}

/// Brings the cloud keys the device trusts in line with the cloud's: asks
/// it to trust the key the cloud is rotating to, and once it does, signs this
/// session with that key; asks it to stop trusting retired keys. `trusted` is
/// what the device said it trusts when it authenticated (a bridge too old to
/// say is asked anyway, and answers that it serves no such method). In a task
/// of its own, since the answers come through this connection's reader.
fn align_cloud_keys(state: &Devices, session: Arc<DeviceSession>, trusted: Option<Vec<String>>) {
    if session.status() != DeviceStatus::Accepted {
        return;
    }
    let trusts = |fingerprint: &String| {
        trusted
            .as_ref()
            .is_some_and(|list| list.contains(fingerprint))
    };
    let to_trust = state
        .next_signer()
        .filter(|next| !trusts(&keys::fingerprint(&next.public_key())))
        .cloned();
    let to_distrust: Vec<String> = state
        .config()
        .retired_key_fingerprints
        .iter()
        .filter(|fingerprint| trusted.is_none() || trusts(fingerprint))
        .cloned()
        .collect();
    if to_trust.is_none() && to_distrust.is_empty() {
        return;
    }
    let (state, timeout) = (state.clone(), state.config().rpc_timeout);
    tokio::spawn(async move {
        let device_id = session.device_id();
        if let Some(next) = to_trust {
            let fingerprint = keys::fingerprint(&next.public_key());
            let request = TrustCloudKey {
                key: next.public_key(),
            };
            let Message::Request { method, params, .. } = request.request(0) else {
                unreachable!("a trust request is a request")
            };
            let trusted = session
                .call(&method, params, timeout)
                .await
                .map_err(|e| e.to_string())
                .and_then(TrustedCloudKeys::read);
            match trusted {
                Ok(trusted) if trusted.cloud_keys.contains(&fingerprint) => {
                    session.peer.set_signer(next);
                    tracing::info!(%device_id, %fingerprint, "device trusts the cloud's next key; signing with it");
                    if let Err(e) = state
                        .registry()
                        .record_cloud_key(device_id, &fingerprint)
                        .await
                    {
                        tracing::warn!(%device_id, error = %e, "cannot record the cloud key the device trusts");
                    }
                }
                Ok(trusted) => {
                    tracing::warn!(%device_id, ?trusted, "device did not take the cloud's next key")
                }
                Err(error) => {
                    tracing::warn!(%device_id, %error, "device did not take the cloud's next key")
                }
            }
        }
        for fingerprint in to_distrust {
            let request = DistrustCloudKey {
                fingerprint: fingerprint.clone(),
            };
            let Message::Request { method, params, .. } = request.request(0) else {
                unreachable!("a distrust request is a request")
            };
            match session.call(&method, params, timeout).await {
                Ok(_) => {
                    tracing::info!(%device_id, %fingerprint, "device no longer trusts a retired cloud key")
                }
                Err(error) => {
                    tracing::warn!(%device_id, %fingerprint, %error, "device did not drop a retired cloud key")
                }
            }
        }
    });
}

/// Asks the device to rotate its key, as an operator required while it was
/// away (see [`crate::ops`]'s `require_rotation`); in a task of its own, since
/// the answer comes through this connection's reader. An accepted device only:
/// nothing else is sent to a pending one.
fn ask_to_rotate(state: &Devices, session: Arc<DeviceSession>) {
    if session.status() != DeviceStatus::Accepted {
        return;
    }
    let timeout = state.config().rpc_timeout;
    tokio::spawn(async move {
        let asked = session
            .call(rotation::ROTATE_KEY_REQUIRED, Some(json!({})), timeout)
            .await;
        if let Err(error) = asked {
            tracing::warn!(device_id = %session.device_id(), %error, "device did not take up the required key rotation");
        }
    });
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
    let verified = match session.peer.receive(text, now_ms(), guard) {
        Ok(verified) => verified,
        Err(refused) => {
            return state
                .refuse(&session.link, session.device_id(), refused)
                .await
        }
    };
    match verified.message {
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
            } else if method == rotation::ROTATE_KEY {
                let (key, nonce) = (&verified.key, &verified.meta.nonce);
                served::rotate_key(state, session, key, nonce, params).await
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
