//! What the cloud serves to accepted devices: the requests it answers and the
//! notifications it records. Inputs here are already verified.

use protocol::keys::{self, PublicKey};
use protocol::rotation::{RotateKeyParams, Rotated, RotationRefusal};
use protocol::{ErrorCode, RpcError};
use serde_json::{json, Value};

use super::session::DeviceSession;
use super::Devices;
use crate::store::registry::AuthEventKind;
use protocol::now_ms;

/// Device → cloud liveness check.
pub const PING: &str = "cloud.ping";
/// Periodic health report; params object lands in `devices.last_health`.
pub const HEALTH: &str = "device.health";
/// A container event; lands in `device_events`.
pub const CONTAINER_EVENT: &str = "device.container_event";

/// Answers a request from an accepted device.
pub(crate) async fn answer(
    state: &Devices,
    device_id: &str,
    method: &str,
    _params: Option<Value>,
) -> Result<Value, RpcError> {
    match method {
        PING => Ok(json!({
            "pong": true,
            "cloud_id": state.config().cloud_id,
            "time_ms": now_ms(),
        })),
        _ => {
            tracing::debug!(%device_id, %method, "device called an unknown cloud method");
            Err(RpcError::new(
                ErrorCode::MethodNotFound,
                format!("method not found: {method}"),
            ))
        }
    }
}

/// Replaces the key of the accepted device on `session` (see
/// [`protocol::rotation`]): `signed_with` is the key that verified the
/// request, `nonce` its `meta.nonce`. The registry switches only if that key
/// is still the registered one; from then on this connection hears the new
/// key (and the old one only until the first frame signed with the new), and
/// a new connection presenting the old one is refused `key_mismatch`.
pub(crate) async fn rotate_key(
    state: &Devices,
    session: &DeviceSession,
    signed_with: &PublicKey,
    nonce: &str,
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let device_id = session.device_id();
    let current = session.peer.remote_keys()[0];
    let checked = if *signed_with != current {
        Err(RotationRefusal::Malformed(
            "signed with a key this device has already replaced".into(),
        ))
    } else {
        RotateKeyParams::read(params.as_ref()).and_then(|params| {
            params
                .verify(device_id, signed_with, nonce)
                .map(|()| params)
        })
    };
    let params = match checked {
        Ok(params) => params,
        Err(refusal) => return Err(refuse_rotation(state, device_id, &refusal).await),
    };
    let (old, new) = (
        keys::fingerprint(signed_with),
        keys::fingerprint(&params.key),
    );
    let rotated = state
        .registry()
        .rotate_key(
            device_id,
            &keys::public_key_to_pem(signed_with),
            &params.public_key_pem,
            &new,
            &format!("{old} replaced by {new}"),
            now_ms() as i64,
        )
        .await;
    match rotated {
        Ok(Some(event)) => {
            session.peer.replace_remote_key(params.key);
            tracing::info!(%device_id, %old, %new, "device rotated its key");
            state.publish_auth_event(&event);
            state.events().device(
                "device.key_rotated",
                device_id,
                json!({ "old": old, "new": new }),
            );
            Ok(Rotated::new(&params.key).to_value())
        }
        Ok(None) => {
            // This very rotation may be done already: the device sent it on a
            // connection that died before the answer came back, and resumed
            // it on this one, which still trusts the old key. The request
            // proves both keys, so finish it here too.
            let registered = state.registry().device(device_id).await.ok().flatten();
            if registered.is_some_and(|record| record.fingerprint == new) {
                session.peer.replace_remote_key(params.key);
                tracing::info!(%device_id, %new, "device resumed a key rotation already done");
                return Ok(Rotated::new(&params.key).to_value());
            }
            let mut error = RpcError::new(
                ErrorCode::Refused,
                "the registered key is no longer the one this request was signed with",
            );
            error.data = Some(json!({ "reason": "key_changed" }));
            Err(error)
        }
        Err(e) => {
            tracing::error!(%device_id, error = %e, "registry failed during a key rotation");
            Err(RpcError::new(
                ErrorCode::InternalError,
                "registry unavailable; retry",
            ))
        }
    }
}

/// Logs, counts and records a refused rotation; the error that answers it.
async fn refuse_rotation(state: &Devices, device_id: &str, refusal: &RotationRefusal) -> RpcError {
    let reason = refusal.reason();
    tracing::warn!(%device_id, reason, %refusal, "key rotation refused");
    state.refusal_counters().increment(reason);
    let detail = format!("{reason}: {refusal}");
    match state
        .registry()
        .add_refused_attempt(
            device_id,
            AuthEventKind::KeyRotationRefused,
            &detail,
            now_ms() as i64,
        )
        .await
    {
        Ok(event) => state.publish_auth_event(&event),
        Err(e) => tracing::warn!(%device_id, error = %e, "cannot record a refused rotation"),
    }
    let code = match refusal {
        RotationRefusal::Malformed(_) => ErrorCode::InvalidParams,
        _ => ErrorCode::Refused,
    };
    let mut error = RpcError::new(code, format!("key rotation refused: {refusal}"));
    error.data = Some(json!({ "reason": reason }));
    error
}

/// Records a notification from an accepted device; unknown ones, and ones
/// over their size limit, are logged and dropped before anything is stored.
pub(crate) async fn notify(state: &Devices, device_id: &str, method: &str, params: Option<Value>) {
    let now = now_ms() as i64;
    let limits = &state.config().limits;
    let limit = match method {
        HEALTH => limits.max_health_bytes,
        _ => limits.max_container_event_bytes,
    };
    if let Some(size) = params
        .as_ref()
        .map(|p| p.to_string().len())
        .filter(|size| *size > limit)
    {
        tracing::warn!(%device_id, %method, size, limit, "notification over its size limit; dropped");
        state.refusal_counters().increment("notification_too_large");
        return;
    }
    let stored = match (method, params) {
        (HEALTH, Some(health @ Value::Object(_))) => {
            let stored = state
                .registry()
                .record_health(device_id, &health, now)
                .await;
            state.events().device("device.health", device_id, health);
            stored
        }
        (CONTAINER_EVENT, Some(event)) => {
            let stored = state
                .registry()
                .add_device_event(device_id, method, &event, now)
                .await;
            state
                .events()
                .device("device.container_event", device_id, event);
            stored
        }
        (HEALTH | CONTAINER_EVENT, _) => {
            tracing::warn!(%device_id, %method, "notification without usable params ignored");
            return;
        }
        _ => {
            tracing::info!(%device_id, %method, "unknown notification ignored");
            return;
        }
    };
    if let Err(e) = stored {
        tracing::warn!(%device_id, %method, error = %e, "cannot store notification");
    }
}
