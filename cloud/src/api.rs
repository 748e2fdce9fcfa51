//! The REST API under `/api/v1`: the device registry, operator decisions, RPC
//! calls to devices and the audit log. Every route but `POST /login` needs a
//! caller (see [`crate::operator_auth`]); every action is audited.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::audit::{Action, AuditFilter};
use crate::error::AppError;
use crate::now_ms;
use crate::operator_auth::{self, Caller};
use crate::registry::{DeviceRecord, DeviceStatus};
use crate::state::AppState;
use protocol::close_code;

/// Auth events shown with a device.
const DEVICE_AUTH_EVENTS: i64 = 50;
/// Container events shown with a device.
const DEVICE_CONTAINER_EVENTS: i64 = 50;

pub(crate) fn routes(state: AppState) -> Router<AppState> {
    let authenticated = Router::new()
        .route("/me", get(operator_auth::me))
        .route("/logout", post(operator_auth::logout))
        .route("/devices", get(list_devices))
        .route("/devices/{id}", get(get_device).delete(delete_device))
        .route("/devices/{id}/accept", post(accept_device))
        .route("/devices/{id}/reject", post(reject_device))
        .route("/devices/{id}/rpc", post(call_device))
        .route("/devices/{id}/health", get(health_history))
        .route("/auth-events", get(list_auth_events))
        .route("/audit", get(list_audit))
        .route(
            "/operators",
            get(crate::operators_api::list_operators).post(crate::operators_api::add_operator),
        )
        .route(
            "/operators/{name}",
            delete(crate::operators_api::remove_operator),
        )
        .route(
            "/tokens",
            get(crate::operators_api::list_tokens).post(crate::operators_api::create_token),
        )
        .route("/tokens/{id}", delete(crate::operators_api::revoke_token))
        .route_layer(middleware::from_fn_with_state(
            state,
            operator_auth::require_caller,
        ));
    Router::new()
        .route("/login", post(operator_auth::login))
        .merge(authenticated)
}

/// A device as the API shows it: the registry record plus live state.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    pub id: String,
    pub status: DeviceStatus,
    pub fingerprint: String,
    pub public_key: String,
    pub first_seen: i64,
    pub last_seen: i64,
    /// Whether the device has an authenticated connection right now.
    pub online: bool,
    pub bridge_version: Option<String>,
    pub last_health: Option<Value>,
    pub last_health_at: Option<i64>,
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

#[derive(Debug, Default, Deserialize)]
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

async fn list_devices(
    State(state): State<AppState>,
    filter: Result<Query<DeviceFilter>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(filter) = filter.map_err(|e| AppError::bad_request(e.body_text()))?;
    let devices = device_views(&state, &filter).await?;
    Ok(Json(json!({ "devices": devices })))
}

async fn health_history(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    if state.registry().device(&id).await?.is_none() {
        return Err(AppError::unknown_device(&id));
    }
    let samples = state.registry().health_history(&id).await?;
    Ok(Json(json!({ "samples": samples })))
}

/// `AuditFilter` plus paging (serde's `flatten` loses the bool's type in a query).
#[derive(Debug, Deserialize)]
struct AuditQuery {
    source: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    failures_only: Option<bool>,
    offset: Option<i64>,
    limit: Option<i64>,
}

async fn list_audit(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<crate::audit::AuditPage>, AppError> {
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

async fn get_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let registry = state.registry();
    let record = registry
        .device(&id)
        .await?
        .ok_or_else(|| AppError::unknown_device(&id))?;
    let auth_events = registry.auth_events(Some(&id), DEVICE_AUTH_EVENTS).await?;
    let container_events = registry.device_events(&id, DEVICE_CONTAINER_EVENTS).await?;
    let online = state.fleet().is_online(&id);
    Ok(Json(json!({
        "device": DeviceView::new(record, online),
        "auth_events": auth_events,
        "container_events": container_events,
    })))
}

async fn accept_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let device = decide(&state, &caller, &id, DeviceStatus::Accepted).await?;
    Ok(Json(json!({ "device": device })))
}

async fn reject_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let device = decide(&state, &caller, &id, DeviceStatus::Rejected).await?;
    Ok(Json(json!({ "device": device })))
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

#[derive(Debug, Deserialize)]
struct AuthEventsQuery {
    device_id: Option<String>,
    limit: Option<i64>,
}

async fn list_auth_events(
    State(state): State<AppState>,
    Query(query): Query<AuthEventsQuery>,
) -> Result<Json<Value>, AppError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let events = state
        .registry()
        .auth_events(query.device_id.as_deref(), limit)
        .await?;
    Ok(Json(json!({ "events": events })))
}

/// Body of `POST /api/v1/devices/{id}/rpc`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcRequest {
    pub method: String,
    #[serde(default)]
    pub params: Option<Value>,
    /// Defaults to the cloud's RPC timeout; at most its maximum.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

async fn call_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<RpcRequest>, JsonRejection>,
) -> Result<Json<Value>, AppError> {
    let Json(body) = body.map_err(|e| AppError::bad_request(e.body_text()))?;
    let result = audited_call(&state, &caller, &id, body).await?;
    Ok(Json(json!({ "result": result })))
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
