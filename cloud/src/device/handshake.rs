//! Authentication of a new connection: the signed challenge, the device's
//! proof of possession of its key, and the registry's verdict.
//!
//! Until this succeeds the cloud does not know who is connected, so nothing
//! but the authentication request is heard; a failed attempt closes the
//! connection (the challenge was single-use) with a code that says why.

use std::net::IpAddr;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures::stream::SplitStream;
use futures::StreamExt;
use protocol::auth::{AuthenticateParams, Challenge, StatusReport};
use protocol::close_code;
use protocol::keys;
use protocol::peer::{Peer, Remote, Unverified};
use protocol::{now_ms, ErrorCode, Message, RpcError, Signer, ANY_AUDIENCE};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::admission;
use super::link::Link;
use super::Devices;
use crate::store::registry::{AuthEventKind, DeviceStatus, Registration, RegistryError};

/// How logs name a peer that has not authenticated yet.
const UNAUTHENTICATED: &str = "(unauthenticated)";

/// A device that proved possession of its registered (or newly pending) key:
/// the peer that hears it from now on (nothing it signed before its
/// authentication request is heard), and its status.
pub(crate) struct Authenticated {
    pub peer: Peer,
    pub status: DeviceStatus,
    /// The cloud keys the device said it trusts (fingerprints), if it said.
    pub cloud_keys: Option<Vec<String>>,
}

/// Why an attempt failed: the label counted, the error answered, the detail logged.
struct AuthFailure {
    reason: &'static str,
    error: RpcError,
}

impl AuthFailure {
    fn new(reason: &'static str, code: ErrorCode, message: impl Into<String>) -> Self {
        let mut error = RpcError::new(code, message);
        error.data = Some(json!({ "reason": reason }));
        AuthFailure { reason, error }
    }
}

/// Runs the handshake; `None` if the connection ended or was refused (the
/// close has been asked of the link).
pub(crate) async fn authenticate(
    state: &Devices,
    link: &Link,
    stream: &mut SplitStream<WebSocket>,
    address: IpAddr,
) -> Option<Authenticated> {
    let config = state.config();
    let side = state.side();
    let challenge = Challenge::random();
    let hello = side.sign(&challenge.notification(), ANY_AUDIENCE, now_ms());
    link.send(hello).await.ok()?;

    let deadline = Instant::now() + config.auth_timeout;
    loop {
        let received = tokio::select! {
            _ = link.stop().cancelled() => return None,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::info!("device did not authenticate in time");
                state.metrics().handshake_refused("auth_timeout");
                link.close(close_code::AUTH_TIMEOUT, "authentication timed out");
                return None;
            }
            received = stream.next() => received,
        };
        let text = match received {
            Some(Ok(WsMessage::Text(text))) => text,
            Some(Ok(WsMessage::Binary(_))) => {
                state
                    .refuse(link, UNAUTHENTICATED, side.refuse_binary(now_ms()))
                    .await;
                continue;
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return None,
        };
        let frame = match side.parse(&text, now_ms()) {
            Ok(frame) => frame,
            Err(refused) => {
                state.refuse(link, UNAUTHENTICATED, refused).await;
                continue;
            }
        };
        let Some(request_id) = frame.reply_to().filter(|_| {
            frame.get("method").and_then(Value::as_str) == Some(&config.auth_rpc_method)
        }) else {
            // Not authenticated yet: nothing but authentication is heard.
            if let Some(id) = frame.reply_to() {
                let error = RpcError::new(
                    ErrorCode::NotAccepted,
                    format!("authenticate first with {}", config.auth_rpc_method),
                );
                send_error(state, link, &claimed_signer(&frame), id, error).await;
            }
            continue;
        };
        return match attempt(state, link, frame, &challenge.challenge, address).await {
            Ok(device) => device,
            Err((claimed_device, failure)) => {
                fail(state, link, claimed_device.as_deref(), request_id, failure).await;
                None
            }
        };
    }
}

/// Verifies one authentication request and applies the registry's verdict.
/// On failure returns the device id the request claimed, if readable.
async fn attempt(
    state: &Devices,
    link: &Link,
    frame: Unverified,
    challenge: &str,
    address: IpAddr,
) -> Result<Option<Authenticated>, (Option<String>, AuthFailure)> {
    let config = state.config();
    let max_version = config.limits.max_bridge_version_bytes;
    // The key to verify with comes from the frame itself: proof of possession.
    let claimed = auth_params(frame.get("params"), max_version).map_err(|f| (None, f))?;
    let claimed_id = Some(claimed.device_id.clone());
    let peer = state.side().peer(Remote {
        id: claimed.device_id,
        key: claimed.key,
    });
    // No replay guard: the request must carry this connection's one-time
    // challenge, so a recorded one is refused, and nothing a stranger sends
    // is remembered under the id it claims.
    let verified = peer.verify(frame, now_ms(), None).map_err(|refused| {
        let refusal = refused.refusal;
        let mut error = RpcError::refused(&refusal);
        error.message = format!("authentication {}", error.message);
        (
            claimed_id.clone(),
            AuthFailure {
                reason: refusal.reason(),
                error,
            },
        )
    })?;

    // From here on, act only on the verified message.
    let signed_at = verified.meta.timestamp;
    let Message::Request { id, params, .. } = verified.message else {
        let failure = AuthFailure::new(
            "bad_auth_params",
            ErrorCode::InvalidRequest,
            "not a request",
        );
        return Err((claimed_id, failure));
    };
    let params = auth_params(params.as_ref(), max_version).map_err(|f| (claimed_id.clone(), f))?;
    if params.challenge.as_deref() != Some(challenge) {
        return Err((
            claimed_id,
            AuthFailure::new(
                "bad_challenge",
                ErrorCode::Refused,
                "challenge does not match the one sent on this connection",
            ),
        ));
    }
    peer.authenticated(signed_at);
    Ok(decide(state, link, peer, id, params, address).await)
}

/// What the registry says of a device that proved possession of a key.
enum Verdict {
    Status(DeviceStatus),
    /// The id is registered with another key (whose fingerprint this is).
    KeyMismatch(String),
    /// A limit on strangers or unaccepted devices: try again later.
    SlowDown(admission::Refused),
}

/// Answers a device that proved possession of its key with the registry's
/// verdict; `Some` if the connection stays open.
async fn decide(
    state: &Devices,
    link: &Link,
    peer: Peer,
    request_id: Value,
    params: AuthenticateParams,
    address: IpAddr,
) -> Option<Authenticated> {
    let device_id = params.device_id.as_str();
    let fingerprint = keys::fingerprint(&params.key);
    let status = match verdict(state, &params, &fingerprint, address).await {
        Ok(Verdict::Status(status)) => status,
        Ok(Verdict::SlowDown(refused)) => {
            tracing::info!(%device_id, %address, reason = refused.reason, "{}", refused.message);
            state.refusal_counters().increment(refused.reason);
            state.metrics().handshake_refused(refused.reason);
            let mut error = RpcError::new(ErrorCode::Refused, refused.message);
            error.data = Some(json!({ "reason": refused.reason }));
            send_error(state, link, device_id, request_id, error).await;
            link.close(close_code::TRY_AGAIN_LATER, "slow down; retry later");
            return None;
        }
        Ok(Verdict::KeyMismatch(registered)) => {
            tracing::warn!(
                %device_id, presented = %fingerprint, %registered,
                "known device id presented a different key; refused"
            );
            let detail = format!("presented {fingerprint}; registered {registered}");
            match state
                .registry()
                .add_refused_attempt(
                    device_id,
                    AuthEventKind::KeyMismatch,
                    &detail,
                    now_ms() as i64,
                )
                .await
            {
                Ok(event) => state.publish_auth_event(&event),
                Err(e) => tracing::warn!(%device_id, error = %e, "cannot record key_mismatch"),
            }
            state.refusal_counters().increment("key_mismatch");
            state.events().device(
                "device.key_mismatch",
                device_id,
                json!({ "presented": fingerprint, "registered": registered }),
            );
            state.metrics().handshake_refused("key_mismatch");
            let mut error = RpcError::new(
                ErrorCode::Refused,
                format!("device id {device_id} is registered with a different key"),
            );
            error.data = Some(json!({ "reason": "key_mismatch" }));
            send_error(state, link, device_id, request_id, error).await;
            link.close(
                close_code::KEY_MISMATCH,
                "device id is registered with a different key",
            );
            return None;
        }
        Err(e) => {
            tracing::error!(%device_id, error = %e, "registry failed during authentication");
            state.metrics().handshake_refused("registry_unavailable");
            let error = RpcError::new(ErrorCode::InternalError, "registry unavailable; retry");
            send_error(state, link, device_id, request_id, error).await;
            link.close(close_code::INTERNAL_ERROR, "registry unavailable");
            return None;
        }
    };

    // A device that trusts the key the cloud is rotating to hears it from
    // this answer on.
    if let Some(next) = state.next_signer().filter(|next| trusts(&params, next)) {
        peer.set_signer(next.clone());
    }
    let answer = StatusReport {
        status: status.into(),
    }
    .result(request_id);
    link.send(peer.sign(&answer, now_ms())).await.ok()?;
    if status == DeviceStatus::Rejected {
        tracing::info!(%device_id, "rejected device tried to connect; closing");
        state.metrics().handshake_refused("rejected");
        link.close(close_code::REJECTED, "device rejected");
        return None;
    }
    tracing::info!(%device_id, %status, "device authenticated");
    Some(Authenticated {
        peer,
        status,
        cloud_keys: params.cloud_keys,
    })
}

/// Whether the device said it trusts `signer`'s key.
fn trusts(params: &AuthenticateParams, signer: &Signer) -> bool {
    let fingerprint = keys::fingerprint(&signer.public_key());
    params
        .cloud_keys
        .as_ref()
        .is_some_and(|trusted| trusted.contains(&fingerprint))
}

/// The newest cloud key the device trusts, by fingerprint: the next key if
/// it said so, or else the current one, which signed the challenge it answered.
fn newest_trusted_cloud_key(state: &Devices, params: &AuthenticateParams) -> String {
    match state.next_signer().filter(|next| trusts(params, next)) {
        Some(next) => keys::fingerprint(&next.public_key()),
        None => keys::fingerprint(&state.public_key()),
    }
}

/// Looks the device up, registering an unknown one as pending (within the
/// limits on new ids), and records the authentication of a known one. Never
/// re-keys. Nothing of a known device is touched unless the key matches.
async fn verdict(
    state: &Devices,
    params: &AuthenticateParams,
    fingerprint: &str,
    address: IpAddr,
) -> Result<Verdict, RegistryError> {
    let registry = state.registry();
    let now = now_ms() as i64;
    let id = params.device_id.as_str();
    let bridge_version = params.bridge_version.as_deref();
    let record = match registry.device(id).await? {
        Some(record) => record,
        None => {
            if let Err(refused) = state.admission().register_new_device(address) {
                return Ok(Verdict::SlowDown(refused));
            }
            let max_pending = state.config().limits.max_pending_devices;
            match registry
                .register_new_key(
                    id,
                    &params.public_key_pem,
                    fingerprint,
                    bridge_version,
                    max_pending,
                    now,
                )
                .await?
            {
                Registration::Registered(event) => {
                    state.publish_auth_event(&event);
                    let newest = newest_trusted_cloud_key(state, params);
                    registry.record_cloud_key(id, &newest).await?;
                    tracing::info!(device_id = %id, %fingerprint, "new device key; pending approval");
                    state.events().device(
                        "device.new_key",
                        id,
                        json!({ "fingerprint": fingerprint, "status": DeviceStatus::Pending }),
                    );
                    return Ok(Verdict::Status(DeviceStatus::Pending));
                }
                Registration::PendingFull => {
                    return Ok(Verdict::SlowDown(admission::Refused {
                        reason: "too_many_pending",
                        message: format!(
                            "{max_pending} devices already wait for an operator's decision; \
                             no new device ids until some are accepted, rejected or deleted"
                        ),
                    }));
                }
                // Another connection registered this id a moment ago.
                Registration::Exists => registry.device(id).await?.ok_or_else(|| {
                    RegistryError::Corrupt(format!("device {id} vanished while registering"))
                })?,
            }
        }
    };
    if keys::public_key_from_pem(&record.public_key).ok() != Some(params.key) {
        return Ok(Verdict::KeyMismatch(record.fingerprint));
    }
    if record.status != DeviceStatus::Accepted {
        if let Err(refused) = state.admission().reconnect_unaccepted(id) {
            return Ok(Verdict::SlowDown(refused));
        }
    }
    let event = registry
        .record_authenticated(&record, bridge_version, now)
        .await?;
    state.publish_auth_event(&event);
    let newest = newest_trusted_cloud_key(state, params);
    if record.cloud_key_fingerprint.as_deref() != Some(newest.as_str()) {
        registry.record_cloud_key(id, &newest).await?;
    }
    Ok(Verdict::Status(record.status))
}

/// Reads the params of `device.authenticate` (see
/// [`AuthenticateParams::read`]); a refusal is `bad_auth_params`.
fn auth_params(
    params: Option<&Value>,
    max_version: usize,
) -> Result<AuthenticateParams, AuthFailure> {
    AuthenticateParams::read(params, max_version)
        .map_err(|message| AuthFailure::new("bad_auth_params", ErrorCode::InvalidParams, message))
}

/// Logs, counts, records (for a known device) and answers a failed attempt,
/// then closes the connection.
async fn fail(
    state: &Devices,
    link: &Link,
    device_id: Option<&str>,
    request_id: Value,
    failure: AuthFailure,
) {
    let AuthFailure { reason, error } = failure;
    tracing::warn!(device_id = device_id.unwrap_or("?"), reason, message = %error.message, "device authentication failed");
    state.refusal_counters().increment(reason);
    state.metrics().handshake_refused(reason);
    if let Some(id) = device_id {
        // Only known devices get an audit line, one an hour that counts the
        // attempts, so strangers cannot fill the log.
        let registry = state.registry();
        if let Ok(Some(_)) = registry.device(id).await {
            let detail = format!("{reason}: {}", error.message);
            match registry
                .add_refused_attempt(id, AuthEventKind::AuthFailed, &detail, now_ms() as i64)
                .await
            {
                Ok(event) => state.publish_auth_event(&event),
                Err(e) => tracing::warn!(device_id = id, error = %e, "cannot record auth_failed"),
            }
        }
    }
    send_error(
        state,
        link,
        device_id.unwrap_or(ANY_AUDIENCE),
        request_id,
        error,
    )
    .await;
    link.close(close_code::AUTH_FAILED, "authentication failed");
}

async fn send_error(state: &Devices, link: &Link, audience: &str, id: Value, error: RpcError) {
    let text = state
        .side()
        .sign(&Message::error(id, error), audience, now_ms());
    let _ = link.send(text).await;
}

/// Whom an unauthenticated frame claims to be from (only to address an error).
fn claimed_signer(frame: &Unverified) -> String {
    frame
        .get("meta")
        .and_then(|meta| meta.get("signer_id"))
        .and_then(Value::as_str)
        .unwrap_or(ANY_AUDIENCE)
        .to_owned()
}
