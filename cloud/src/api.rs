//! The REST API under `/api/v1`: the device registry, operator decisions, RPC
//! calls to devices and the audit log. Every route but `POST /login` needs a
//! caller (see [`crate::operator_auth`]); every action is audited.
//!
//! Each handler's `#[utoipa::path]` is both its route and its entry in the
//! OpenAPI document (see [`crate::openapi`]); add routes only with `routes!`,
//! or `tests/openapi.rs` fails for the undocumented one.

use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{Action, AuditFilter, AuditPage};
use crate::error::{AppError, ErrorBody};
use crate::now_ms;
use crate::operator_auth::{self, Caller};
use crate::operators_api;
use crate::registry::{AuthEvent, DeviceEvent, DeviceRecord, DeviceStatus, HealthSample};
use crate::state::AppState;
use protocol::close_code;

/// Auth events shown with a device.
const DEVICE_AUTH_EVENTS: i64 = 50;
/// Container events shown with a device.
const DEVICE_CONTAINER_EVENTS: i64 = 50;

pub(crate) fn routes(state: AppState) -> OpenApiRouter<AppState> {
    let authenticated = OpenApiRouter::new()
        .routes(routes!(operator_auth::me))
        .routes(routes!(operator_auth::logout))
        .routes(routes!(list_devices))
        .routes(routes!(get_device, delete_device))
        .routes(routes!(accept_device))
        .routes(routes!(reject_device))
        .routes(routes!(call_device))
        .routes(routes!(health_history))
        .routes(routes!(list_auth_events))
        .routes(routes!(list_audit))
        .routes(routes!(
            operators_api::list_operators,
            operators_api::add_operator
        ))
        .routes(routes!(operators_api::remove_operator))
        .routes(routes!(
            operators_api::list_tokens,
            operators_api::create_token
        ))
        .routes(routes!(operators_api::revoke_token))
        .route_layer(middleware::from_fn_with_state(
            state,
            operator_auth::require_caller,
        ));
    OpenApiRouter::new()
        .routes(routes!(operator_auth::login))
        .merge(authenticated)
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

impl DeviceView {
    pub(crate) fn new(record: DeviceRecord, online: bool) -> Self {
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

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceFilter {
    /// `pending`, `accepted`, `rejected`, `online` or `offline`.
    pub state: Option<String>,
    /// Part of the device id, any case.
    pub q: Option<String>,
}

/// Devices matching `filter`, pending ones first.
pub async fn device_views(
    state: &AppState,
    filter: &DeviceFilter,
) -> Result<Vec<DeviceView>, AppError> {
    let wanted = filter.state.as_deref().filter(|s| !s.is_empty());
    if let Some(wanted) = wanted {
        if !["pending", "accepted", "rejected", "online", "offline"].contains(&wanted) {
            return Err(AppError::bad_request(format!(
                "unknown state {wanted:?}: use pending, accepted, rejected, online or offline"
            )));
        }
    }
    let needle = filter.q.as_deref().unwrap_or("").trim().to_lowercase();
    let records = state.registry().devices().await?;
    let online = state.fleet().online_device_ids();
    Ok(records
        .into_iter()
        .map(|record| {
            let is_online = online.contains(&record.id);
            DeviceView::new(record, is_online)
        })
        .filter(|device| match wanted {
            None => true,
            Some("online") => device.online,
            Some("offline") => !device.online,
            Some(status) => device.status.as_str() == status,
        })
        .filter(|device| needle.is_empty() || device.id.to_lowercase().contains(&needle))
        .collect())
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
    let devices = device_views(&state, &filter).await?;
    Ok(Json(DeviceList { devices }))
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
    if state.registry().device(&id).await?.is_none() {
        return Err(AppError::unknown_device(&id));
    }
    let samples = state.registry().health_history(&id).await?;
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
        .audit()
        .page(
            &filter,
            query.offset.unwrap_or(0),
            query.limit.unwrap_or(100),
        )
        .await
        .map_err(AppError::internal)?;
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
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDecision>, AppError> {
    let device = decide(&state, &caller, &id, DeviceStatus::Accepted).await?;
    Ok(Json(DeviceDecision { device }))
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
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDecision>, AppError> {
    let device = decide(&state, &caller, &id, DeviceStatus::Rejected).await?;
    Ok(Json(DeviceDecision { device }))
}

/// An operator's decision on a device. Stores it first, then tells the
/// connected device, so that a device told "accepted" is accepted in the
/// registry too.
pub async fn decide(
    state: &AppState,
    caller: &Caller,
    id: &str,
    status: DeviceStatus,
) -> Result<DeviceView, AppError> {
    let action = match status {
        DeviceStatus::Accepted => "device.accept",
        _ => "device.reject",
    };
    let detail = format!("by {}", caller.name);
    let record = state
        .registry()
        .set_status(id, status, &detail, now_ms() as i64)
        .await?;
    let outcome = if record.is_some() {
        "ok"
    } else {
        "unknown_device"
    };
    operator_auth::record(state, &caller.name, action, outcome, id).await;
    let record = record.ok_or_else(|| AppError::unknown_device(id))?;
    tracing::info!(device_id = %id, %status, operator = %caller.name, "operator decision");
    state.fleet().apply_status(id, status).await;
    state
        .events()
        .device("device.status", id, json!({ "status": status }));
    let online = state.fleet().is_online(id);
    Ok(DeviceView::new(record, online))
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
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    remove_device(&state, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Forgets a device and cuts its connection; it may register again as pending.
pub async fn remove_device(state: &AppState, caller: &Caller, id: &str) -> Result<(), AppError> {
    let detail = format!("by {}", caller.name);
    let deleted = state
        .registry()
        .delete(id, &detail, now_ms() as i64)
        .await?;
    let outcome = if deleted { "ok" } else { "unknown_device" };
    operator_auth::record(state, &caller.name, "device.delete", outcome, id).await;
    if !deleted {
        return Err(AppError::unknown_device(id));
    }
    tracing::info!(device_id = %id, operator = %caller.name, "device deleted");
    state
        .fleet()
        .disconnect(id, close_code::DELETED, "device deleted");
    state.events().device("device.deleted", id, Value::Null);
    Ok(())
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
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<RpcRequest>, JsonRejection>,
) -> Result<Json<RpcResult>, AppError> {
    let Json(body) = body.map_err(|e| AppError::bad_request(e.body_text()))?;
    let result = audited_call(&state, &caller, &id, body).await?;
    Ok(Json(RpcResult { result }))
}

/// Calls a device for `caller` and records the call, its outcome and its
/// latency in the audit log.
pub async fn audited_call(
    state: &AppState,
    caller: &Caller,
    id: &str,
    body: RpcRequest,
) -> Result<Value, AppError> {
    let method = body.method.clone();
    let started = Instant::now();
    let outcome = call_checked(state, id, body).await;
    state
        .record_action(&Action {
            actor: &caller.name,
            action: "rpc",
            target: id,
            outcome: outcome.as_ref().map_or_else(|e| e.kind, |_| "ok"),
            detail: &method,
            latency_ms: Some(started.elapsed().as_millis() as i64),
        })
        .await;
    outcome
}

async fn call_checked(state: &AppState, id: &str, body: RpcRequest) -> Result<Value, AppError> {
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
    Ok(state
        .fleet()
        .call(id, &body.method, body.params, timeout)
        .await?)
}
