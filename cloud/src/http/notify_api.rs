//! `POST /api/v1/devices/{id}/events`: an event to a device (a signed
//! notification, no answer expected). Translation only: the operation
//! ([`crate::ops::notify`]) checks, sends and audits.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use crate::http::error::{body_of, AppError, ErrorBody};
use crate::http::state::AppState;
use crate::ops::notify::{EventRequest, EventSent};
use crate::ops::Caller;

/// Sends an accepted, connected device an event: a signed JSON-RPC
/// notification the bridge publishes on the device's NATS as `rpc.<event>`
/// for the workers that subscribe to it. Nothing answers it: 202 says the
/// device's connection took it. The caller needs the role `METHOD_ROLES`
/// gives a method of the event's name.
#[utoipa::path(
    post,
    path = "/devices/{id}/events",
    tag = "rpc",
    params(("id" = String, Path, description = "Device id")),
    request_body = EventRequest,
    responses(
        (status = 202, description = "Handed to the device's connection", body = EventSent),
        (status = 400, description = "`bad_request`: unreadable body, bad or reserved event name, params not an object or array or over 64 KiB", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller's role may not call a method of this name (`METHOD_ROLES`)", body = ErrorBody),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
        (status = 409, description = "`not_accepted`: the device is pending or rejected", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many events to this device; `Retry-After` says when to try again", body = ErrorBody),
        (status = 502, description = "`disconnected`: the connection closed before it took the event", body = ErrorBody),
        (status = 503, description = "`offline`: accepted but not connected", body = ErrorBody),
    ),
)]
pub(crate) async fn notify_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<EventRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<EventSent>), AppError> {
    let body = body_of(body)?;
    let sent = state
        .ops()
        .notify_device(&caller, &id, &body.event, body.params)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(sent)))
}
