//! The REST API under `/api/v1`, behind the admin bearer token: the device
//! registry, operator decisions, the auth audit log, and RPC calls to devices.
//!
//! Each handler's `#[utoipa::path]` is both its route and its entry in the
//! OpenAPI document (see [`crate::openapi`]); add routes only with `routes!`,
//! or `tests/openapi.rs` fails for the undocumented one.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{AppError, ErrorBody};
use crate::now_ms;
use crate::registry::{AuthEvent, DeviceEvent, DeviceRecord, DeviceStatus};
use crate::state::AppState;
use protocol::close_code;

/// Auth events shown with a device.
const DEVICE_AUTH_EVENTS: i64 = 50;
/// Container events shown with a device.
const DEVICE_CONTAINER_EVENTS: i64 = 50;

pub(crate) fn routes(state: AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_devices))
        .routes(routes!(get_device, delete_device))
        .routes(routes!(accept_device))
        .routes(routes!(reject_device))
        .routes(routes!(call_device))
        .routes(routes!(list_auth_events))
        .route_layer(middleware::from_fn_with_state(state, require_admin_token))
}

/// A device as the API shows it: the registry record plus live state.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    pub id: String,
    pub status: DeviceStatus,
    pub fingerprint: String,
    pub public_key: String,
    pub first_seen: i64,
    pub last_seen: i64,
    /// Whether the device has an authenticated connection right now.
    pub online: bool,
    // Always sent, null when unknown: required, and nullable.
    #[schema(required = true)]
    pub bridge_version: Option<String>,
    /// The latest `system.health` report the device sent.
    #[schema(required = true)]
    pub last_health: Option<Value>,
    #[schema(required = true)]
    pub last_health_at: Option<i64>,
}

/// `GET /devices`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    /// Pending devices first, then by id.
    pub devices: Vec<DeviceView>,
}

/// `GET /devices/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDetails {
    pub device: DeviceView,
    /// The latest auth events of this device, newest first.
    pub auth_events: Vec<AuthEvent>,
    /// The latest container events the device reported, newest first.
    pub container_events: Vec<DeviceEvent>,
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

impl DeviceView {
    fn new(record: DeviceRecord, online: bool) -> Self {
        DeviceView {
            id: record.id,
            status: record.status,
            fingerprint: record.fingerprint,
            public_key: record.public_key,
            first_seen: record.first_seen,
            last_seen: record.last_seen,
            online,
            bridge_version: record.bridge_version,
            last_health: record.last_health,
            last_health_at: record.last_health_at,
        }
    }
}

async fn require_admin_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if same_secret(token.trim().as_bytes(), state.admin_token().as_bytes()) => {
            Ok(next.run(request).await)
        }
        _ => Err(AppError::unauthorized()),
    }
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every device, pending ones first.
#[utoipa::path(
    get,
    path = "/devices",
    tag = "devices",
    responses((status = 200, description = "The devices", body = DeviceList)),
)]
async fn list_devices(State(state): State<AppState>) -> Result<Json<DeviceList>, AppError> {
    let records = state.registry().devices().await?;
    let online = state.fleet().online_device_ids();
    let devices: Vec<DeviceView> = records
        .into_iter()
        .map(|record| {
            let is_online = online.contains(&record.id);
            DeviceView::new(record, is_online)
        })
        .collect();
    Ok(Json(DeviceList { devices }))
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
    let registry = state.registry();
    let record = registry
        .device(&id)
        .await?
        .ok_or_else(|| AppError::unknown_device(&id))?;
    let auth_events = registry.auth_events(Some(&id), DEVICE_AUTH_EVENTS).await?;
    let container_events = registry.device_events(&id, DEVICE_CONTAINER_EVENTS).await?;
    let online = state.fleet().is_online(&id);
    Ok(Json(DeviceDetails {
        device: DeviceView::new(record, online),
        auth_events,
        container_events,
    }))
}

/// Accepts a device's key; a connected device goes live at once.
#[utoipa::path(
    post,
    path = "/devices/{id}/accept",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device, now accepted", body = DeviceDecision),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
    ),
)]
async fn accept_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDecision>, AppError> {
    decide(&state, &id, DeviceStatus::Accepted).await
}

/// Rejects a device's key; a connected device is cut off at once.
#[utoipa::path(
    post,
    path = "/devices/{id}/reject",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device, now rejected", body = DeviceDecision),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
    ),
)]
async fn reject_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDecision>, AppError> {
    decide(&state, &id, DeviceStatus::Rejected).await
}

/// Stores the decision first, then tells the connected device, so that a
/// device told "accepted" is accepted in the registry too.
async fn decide(
    state: &AppState,
    id: &str,
    status: DeviceStatus,
) -> Result<Json<DeviceDecision>, AppError> {
    let record = state
        .registry()
        .set_status(id, status, "by admin token", now_ms() as i64)
        .await?
        .ok_or_else(|| AppError::unknown_device(id))?;
    tracing::info!(device_id = %id, %status, "operator decision");
    state.fleet().apply_status(id, status).await;
    let online = state.fleet().is_online(id);
    Ok(Json(DeviceDecision {
        device: DeviceView::new(record, online),
    }))
}

/// Forgets a device (the audit log keeps it); a connected device is cut off.
#[utoipa::path(
    delete,
    path = "/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
    ),
)]
async fn delete_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    if !state
        .registry()
        .delete(&id, "by admin token", now_ms() as i64)
        .await?
    {
        return Err(AppError::unknown_device(&id));
    }
    tracing::info!(device_id = %id, "device deleted");
    state
        .fleet()
        .disconnect(&id, close_code::DELETED, "device deleted");
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
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let events = state
        .registry()
        .auth_events(query.device_id.as_deref(), limit)
        .await?;
    Ok(Json(AuthEventList { events }))
}

/// Body of `POST /api/v1/devices/{id}/rpc`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RpcRequest {
    /// Dotted method name, e.g. `containers.list`.
    #[schema(example = "containers.list")]
    pub method: String,
    /// A JSON object or array.
    #[serde(default)]
    pub params: Option<Value>,
    /// Defaults to the cloud's RPC timeout; at most its maximum.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
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
    Path(id): Path<String>,
    body: Result<Json<RpcRequest>, JsonRejection>,
) -> Result<Json<RpcResult>, AppError> {
    let Json(body) = body.map_err(|e| AppError::bad_request(e.body_text()))?;
    let max = state.config().max_rpc_timeout();
    let timeout = match body.timeout_ms {
        None => state.config().rpc_timeout,
        Some(0) => return Err(AppError::bad_request("timeout_ms must be positive")),
        Some(ms) if Duration::from_millis(ms) > max => {
            return Err(AppError::bad_request(format!(
                "timeout_ms must be at most {}",
                max.as_millis()
            )))
        }
        Some(ms) => Duration::from_millis(ms),
    };
    let result = state
        .fleet()
        .call(&id, &body.method, body.params, timeout)
        .await?;
    Ok(Json(RpcResult { result }))
}
