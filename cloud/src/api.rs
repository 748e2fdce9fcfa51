//! The REST API under `/api/v1`, behind the admin bearer token: the device
//! registry, operator decisions, the auth audit log, and RPC calls to devices.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::AppError;
use crate::now_ms;
use crate::registry::{DeviceRecord, DeviceStatus};
use crate::state::AppState;
use protocol::close_code;

/// Auth events shown with a device.
const DEVICE_AUTH_EVENTS: i64 = 50;
/// Container events shown with a device.
const DEVICE_CONTAINER_EVENTS: i64 = 50;

pub(crate) fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/devices", get(list_devices))
        .route("/devices/{id}", get(get_device).delete(delete_device))
        .route("/devices/{id}/accept", post(accept_device))
        .route("/devices/{id}/reject", post(reject_device))
        .route("/devices/{id}/rpc", post(call_device))
        .route("/auth-events", get(list_auth_events))
        .route_layer(middleware::from_fn_with_state(state, require_admin_token))
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

async fn list_devices(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    let records = state.registry().devices().await?;
    let online = state.fleet().online_device_ids();
    let devices: Vec<DeviceView> = records
        .into_iter()
        .map(|record| {
            let is_online = online.contains(&record.id);
            DeviceView::new(record, is_online)
        })
        .collect();
    Ok(Json(json!({ "devices": devices })))
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
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    decide(&state, &id, DeviceStatus::Accepted).await
}

async fn reject_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    decide(&state, &id, DeviceStatus::Rejected).await
}

/// Stores the decision first, then tells the connected device, so that a
/// device told "accepted" is accepted in the registry too.
async fn decide(state: &AppState, id: &str, status: DeviceStatus) -> Result<Json<Value>, AppError> {
    let record = state
        .registry()
        .set_status(id, status, "by admin token", now_ms() as i64)
        .await?
        .ok_or_else(|| AppError::unknown_device(id))?;
    tracing::info!(device_id = %id, %status, "operator decision");
    state.fleet().apply_status(id, status).await;
    let online = state.fleet().is_online(id);
    Ok(Json(json!({ "device": DeviceView::new(record, online) })))
}

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
    Path(id): Path<String>,
    body: Result<Json<RpcRequest>, JsonRejection>,
) -> Result<Json<Value>, AppError> {
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
    Ok(Json(json!({ "result": result })))
}
