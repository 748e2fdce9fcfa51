//! The REST API under `/api/v1`: the device registry, operator decisions, RPC
//! calls to devices and the audit log. Every route but `POST /login` needs a
//! caller (see [`crate::http::auth`]); every action is audited.
//!
//! Each handler's `#[utoipa::path]` is both its route and its entry in the
//! OpenAPI document (see [`crate::http::openapi`]); add routes only with `routes!`,
//! or `tests/openapi.rs` fails for the undocumented one.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::auth;
use crate::http::error::{body_of, AppError, ErrorBody};
use crate::http::operators_api;
use crate::http::state::AppState;
use crate::ops::devices::{DeviceDetails, DeviceFilter, DeviceView, RpcRequest};
use crate::ops::keys::RotationRequired;
use crate::ops::Caller;
use crate::store::registry::{AuthEvent, HealthSample};
use crate::store::{AuditFilter, AuditPage, DeviceStatus};

pub(crate) fn routes(state: AppState) -> OpenApiRouter<AppState> {
    let authenticated = OpenApiRouter::new()
        .routes(routes!(auth::me))
        .routes(routes!(auth::logout))
        .routes(routes!(list_devices, preauthorize_device))
        .routes(routes!(get_device, delete_device))
        .routes(routes!(accept_device))
        .routes(routes!(reject_device))
        .routes(routes!(require_key_rotation))
        .routes(routes!(call_device))
        .routes(routes!(crate::http::notify_api::notify_device))
        .routes(routes!(health_history))
        .routes(routes!(list_auth_events))
        .routes(routes!(list_audit))
        .routes(routes!(
            operators_api::list_operators,
            operators_api::add_operator
        ))
        .routes(routes!(operators_api::remove_operator))
        .routes(routes!(operators_api::set_role))
        .routes(routes!(operators_api::reset_password))
        .routes(routes!(operators_api::change_own_password))
        .routes(routes!(operators_api::own_sessions))
        .routes(routes!(operators_api::end_own_session))
        .routes(routes!(
            operators_api::list_tokens,
            operators_api::create_token
        ))
        .routes(routes!(operators_api::revoke_token))
        .merge(crate::http::fleet_api::routes())
        .route_layer(middleware::from_fn_with_state(state, auth::require_caller));
    OpenApiRouter::new()
        .routes(routes!(auth::login))
        .merge(authenticated)
}

/// `GET /devices`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    /// Pending devices first, then by id.
    pub devices: Vec<DeviceView>,
}

/// `GET /devices/{id}/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthHistory {
    /// The last hour of health reports, oldest first.
    pub samples: Vec<HealthSample>,
}

/// A device after an operator's decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDecision {
    pub device: DeviceView,
}

/// `GET /auth-events`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthEventList {
    /// Newest first.
    pub events: Vec<AuthEvent>,
}

/// What the device answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct RpcResult {
    /// The JSON-RPC result, as the device sent it.
    pub result: Value,
}

/// Devices, pending ones first, optionally filtered by state and name.
#[utoipa::path(
    get,
    path = "/devices",
    tag = "devices",
    params(DeviceFilter),
    responses(
        (status = 200, description = "The devices", body = DeviceList),
        (status = 400, description = "`bad_request`: unknown state", body = ErrorBody),
    ),
)]
async fn list_devices(
    State(state): State<AppState>,
    filter: Result<Query<DeviceFilter>, QueryRejection>,
) -> Result<Json<DeviceList>, AppError> {
    let Query(filter) = filter.map_err(|e| AppError::bad_request(e.body_text()))?;
    let devices = state.ops().devices(&filter).await?;
    Ok(Json(DeviceList { devices }))
}

/// A device an admin registers before it exists.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preauthorization {
    pub id: String,
    /// The device's Ed25519 public key, SPKI PEM (its `device_public.pem`).
    pub public_key: String,
}

/// Registers a device's id and key before it first connects (admins): its
/// first connection with that key is accepted at once.
#[utoipa::path(
    post,
    path = "/devices",
    tag = "devices",
    request_body = Preauthorization,
    responses(
        (status = 201, description = "The device, accepted, never connected", body = DeviceDecision),
        (status = 400, description = "`bad_request`: bad id, or not an Ed25519 SPKI PEM key", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs the admin role", body = ErrorBody),
        (status = 409, description = "`device_exists`: the id is registered already", body = ErrorBody),
    ),
)]
async fn preauthorize_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<Preauthorization>, JsonRejection>,
) -> Result<(StatusCode, Json<DeviceDecision>), AppError> {
    let body = body_of(body)?;
    let device = state
        .ops()
        .preauthorize(&caller, &body.id, &body.public_key)
        .await?;
    Ok((StatusCode::CREATED, Json(DeviceDecision { device })))
}

/// A device's health reports of the last hour, for a chart.
#[utoipa::path(
    get,
    path = "/devices/{id}/health",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "Oldest first", body = HealthHistory),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
    ),
)]
async fn health_history(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<HealthHistory>, AppError> {
    let samples = state.ops().health_history(&id).await?;
    Ok(Json(HealthHistory { samples }))
}

/// `AuditFilter` plus paging (serde's `flatten` loses the bool's type in a query).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// `operator` (operator actions) or `device` (device auth events).
    source: Option<String>,
    /// The operator, or the device of a device event.
    actor: Option<String>,
    /// e.g. `rpc`, `login`, `device.accept`, `new_key`.
    action: Option<String>,
    /// The device (or token, operator) acted on.
    target: Option<String>,
    /// Only entries whose outcome is not `ok`.
    failures_only: Option<bool>,
    /// Entries to skip (default 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
    /// Entries per page (1 to 500, default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// The audit log: operator actions (sign-ins, decisions, each RPC with its
/// outcome and latency, token and account changes) and device auth events,
/// newest first.
#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "One page", body = AuditPage),
        (status = 400, description = "`bad_request`: unreadable query", body = ErrorBody),
    ),
)]
async fn list_audit(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, AppError> {
    let Query(query) = query.map_err(|e| AppError::bad_request(e.body_text()))?;
    let filter = AuditFilter {
        source: query.source,
        actor: query.actor,
        action: query.action,
        target: query.target,
        failures_only: query.failures_only,
    };
    let page = state
        .ops()
        .audit_page(
            &filter,
            query.offset.unwrap_or(0),
            query.limit.unwrap_or(100),
        )
        .await?;
    Ok(Json(page))
}

/// One device with its recent auth and container events.
#[utoipa::path(
    get,
    path = "/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device", body = DeviceDetails),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
    ),
)]
async fn get_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetails>, AppError> {
    Ok(Json(state.ops().device(&id).await?))
}

/// Accepts a device's key; a connected device goes live at once.
#[utoipa::path(
    post,
    path = "/devices/{id}/accept",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 403, description = "`forbidden`: needs the admin role", body = ErrorBody),
        (status = 200, description = "The device, now accepted", body = DeviceDecision),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
    ),
)]
async fn accept_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDecision>, AppError> {
    let device = state
        .ops()
        .decide(&caller, &id, DeviceStatus::Accepted)
        .await?;
    Ok(Json(DeviceDecision { device }))
}

/// Rejects a device's key; a connected device is cut off at once.
#[utoipa::path(
    post,
    path = "/devices/{id}/reject",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 403, description = "`forbidden`: needs the admin role", body = ErrorBody),
        (status = 200, description = "The device, now rejected", body = DeviceDecision),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
    ),
)]
async fn reject_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDecision>, AppError> {
    let device = state
        .ops()
        .decide(&caller, &id, DeviceStatus::Rejected)
        .await?;
    Ok(Json(DeviceDecision { device }))
}

/// Requires a device to rotate its key (admins): asked at once if it is
/// online, else when it next connects; the device view shows when it was
/// required until the device has rotated.
#[utoipa::path(
    post,
    path = "/devices/{id}/require-key-rotation",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "Required", body = RotationRequired),
        (status = 403, description = "`forbidden`: needs the admin role", body = ErrorBody),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
    ),
)]
async fn require_key_rotation(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<RotationRequired>, AppError> {
    Ok(Json(state.ops().require_rotation(&caller, &id).await?))
}

/// Forgets a device (the audit log keeps it); a connected device is cut off.
#[utoipa::path(
    delete,
    path = "/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden`: needs the admin role", body = ErrorBody),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
    ),
)]
async fn delete_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    state.ops().remove_device(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuthEventsQuery {
    /// Only this device's events.
    device_id: Option<String>,
    /// At most this many events (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The auth audit log: new keys, accepts, rejects, deletions, key mismatches
/// and failed authentications, newest first.
#[utoipa::path(
    get,
    path = "/auth-events",
    tag = "audit",
    params(AuthEventsQuery),
    responses((status = 200, description = "The events", body = AuthEventList)),
)]
async fn list_auth_events(
    State(state): State<AppState>,
    Query(query): Query<AuthEventsQuery>,
) -> Result<Json<AuthEventList>, AppError> {
    let events = state
        .ops()
        .auth_events(query.device_id.as_deref(), query.limit.unwrap_or(100))
        .await?;
    Ok(Json(AuthEventList { events }))
}

/// Calls a JSON-RPC method on an accepted, connected device and waits for
/// its answer. The error kinds tell why a call failed.
#[utoipa::path(
    post,
    path = "/devices/{id}/rpc",
    tag = "rpc",
    params(("id" = String, Path, description = "Device id")),
    request_body = RpcRequest,
    responses(
        (status = 200, description = "The device's result", body = RpcResult),
        (status = 400, description = "`bad_request`: unreadable body, bad method name, params or timeout", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller's role may not call this method (`METHOD_ROLES`)", body = ErrorBody),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
        (status = 409, description = "`not_accepted`: the device is pending or rejected", body = ErrorBody),
        (status = 502, description = "`device_error`: the device answered with a JSON-RPC error (in `rpc_error`); \
                                      `disconnected`: it dropped the connection before answering", body = ErrorBody),
        (status = 503, description = "`offline`: accepted but not connected", body = ErrorBody),
        (status = 504, description = "`timed_out`: no answer within the timeout", body = ErrorBody),
    ),
)]
async fn call_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<RpcRequest>, JsonRejection>,
) -> Result<Json<RpcResult>, AppError> {
    let body = body_of(body)?;
    let result = state.ops().call(&caller, &id, body).await?;
    Ok(Json(RpcResult { result }))
}
