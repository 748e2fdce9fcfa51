//! The API of fleet operations: tags on devices, jobs (one call to every
//! device a filter matches) and calls that wait for offline devices.
//! Translation only: the operations (`ops::tags`, `ops::jobs`,
//! `ops::queued_calls`) check, act and audit.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::{body_of, AppError, ErrorBody};
use crate::http::state::AppState;
use crate::ops::jobs::{JobDetails, JobRequest, JobView};
use crate::ops::queued_calls::QueuedCallRequest;
use crate::ops::tags::TagPatch;
use crate::ops::Caller;
use crate::store::jobs::JobRecord;
use crate::store::queued_calls::QueuedCall;
use crate::store::TagSet;

/// The routes; mounted behind the caller check with the rest of `/api/v1`.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(patch_tags, replace_tags))
        .routes(routes!(list_jobs, start_job))
        .routes(routes!(get_job))
        .routes(routes!(list_queued_calls, queue_call))
        .routes(routes!(get_queued_call))
}

/// A device's tags.
#[derive(Debug, Serialize, ToSchema)]
pub struct Tags {
    pub tags: TagSet,
}

/// Changes a device's tags (operators and admins) by a JSON merge patch:
/// `{"site": "berlin", "old": null}` sets `site` and removes `old`.
#[utoipa::path(
    patch,
    path = "/devices/{id}/tags",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    request_body(content = TagPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The device's tags after the change", body = Tags),
        (status = 400, description = "`bad_request`: a bad key or value, or more than 32 tags", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs the operator role", body = ErrorBody),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
    ),
)]
async fn patch_tags(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<TagPatch>, JsonRejection>,
) -> Result<Json<Tags>, AppError> {
    let tags = state
        .ops()
        .tag_device(&caller, &id, &body_of(body)?)
        .await?;
    Ok(Json(Tags { tags }))
}

/// Replaces all of a device's tags (operators and admins).
#[utoipa::path(
    put,
    path = "/devices/{id}/tags",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    request_body = TagSet,
    responses(
        (status = 200, description = "The device's tags", body = Tags),
        (status = 400, description = "`bad_request`: a bad key or value, or more than 32 tags", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs the operator role", body = ErrorBody),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
    ),
)]
async fn replace_tags(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<TagSet>, JsonRejection>,
) -> Result<Json<Tags>, AppError> {
    let tags = state
        .ops()
        .set_device_tags(&caller, &id, &body_of(body)?)
        .await?;
    Ok(Json(Tags { tags }))
}

/// `GET /jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobRecord>,
}

/// A job just started.
#[derive(Debug, Serialize, ToSchema)]
pub struct StartedJob {
    pub job: JobView,
}

/// The latest 100 jobs.
#[utoipa::path(
    get,
    path = "/jobs",
    tag = "rpc",
    responses((status = 200, description = "The latest jobs", body = JobList)),
)]
async fn list_jobs(State(state): State<AppState>) -> Result<Json<JobList>, AppError> {
    Ok(Json(JobList {
        jobs: state.ops().latest_jobs(100).await?,
    }))
}

/// Calls one method with the same params on every accepted device the
/// filter matches, `concurrency` at a time, each with its own timeout.
/// Answers at once; read or follow the job at `GET /jobs/{id}` (or live on
/// `/ws/events?topic=job.<id>`). Audited as one `job` action when it ends.
#[utoipa::path(
    post,
    path = "/jobs",
    tag = "rpc",
    request_body = JobRequest,
    responses(
        (status = 202, description = "The job, running", body = StartedJob),
        (status = 400, description = "`bad_request`: bad method name, params, filter, concurrency or timeout; more than 10,000 devices", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller's role may not call this method (`METHOD_ROLES`)", body = ErrorBody),
        (status = 429, description = "`busy`: this instance runs 4 jobs already", body = ErrorBody),
    ),
)]
async fn start_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<JobRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<StartedJob>), AppError> {
    let job = state.ops().start_job(&caller, body_of(body)?).await?;
    Ok((StatusCode::ACCEPTED, Json(StartedJob { job })))
}

/// Which outcomes of a job to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutcomesQuery {
    /// Outcomes after this `seq` (the previous read's `next`); 0 for all.
    pub after: Option<i64>,
    /// At most this many (1 to 1000; default 1000).
    pub limit: Option<i64>,
}

/// A job, its tally so far, and its outcomes after `after`: poll with the
/// last `next` to follow it.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    tag = "rpc",
    params(("id" = i64, Path, description = "Job id"), OutcomesQuery),
    responses(
        (status = 200, description = "The job", body = JobDetails),
        (status = 404, description = "`unknown_job`", body = ErrorBody),
    ),
)]
async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    query: Result<Query<OutcomesQuery>, QueryRejection>,
) -> Result<Json<JobDetails>, AppError> {
    let Query(query) = query.map_err(|e| AppError::bad_request(e.body_text()))?;
    let details = state
        .ops()
        .job_outcomes(
            id,
            query.after.unwrap_or(0),
            query.limit.unwrap_or(crate::ops::jobs::MAX_OUTCOMES_READ),
        )
        .await?;
    Ok(Json(details))
}

/// `GET /devices/{id}/calls`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedCallList {
    /// The latest 50, newest first.
    pub calls: Vec<QueuedCall>,
}

/// One queued call.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedCallView {
    pub call: QueuedCall,
}

/// A device's queued calls, newest first.
#[utoipa::path(
    get,
    path = "/devices/{id}/calls",
    tag = "rpc",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, description = "The device's queued calls", body = QueuedCallList)),
)]
async fn list_queued_calls(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<QueuedCallList>, AppError> {
    Ok(Json(QueuedCallList {
        calls: state.ops().queued_calls(&id).await?,
    }))
}

/// Queues a call for a device, online or not: it is sent when the device is
/// online, and expires if that is not within `ttl_ms`. States: `queued` →
/// `sent` → `successful` or `failed`; or `expired`. It survives a restart
/// of the cloud. With an `idempotency_key` the caller used before, the
/// earlier call is answered (200) and nothing is queued.
#[utoipa::path(
    post,
    path = "/devices/{id}/calls",
    tag = "rpc",
    params(("id" = String, Path, description = "Device id")),
    request_body = QueuedCallRequest,
    responses(
        (status = 202, description = "Queued", body = QueuedCallView),
        (status = 200, description = "The call this idempotency key made before", body = QueuedCallView),
        (status = 400, description = "`bad_request`: bad method name, params, timeout, ttl or idempotency key", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller's role may not call this method (`METHOD_ROLES`)", body = ErrorBody),
        (status = 404, description = "`unknown_device`", body = ErrorBody),
        (status = 409, description = "`idempotency_conflict`: the key named a different call", body = ErrorBody),
        (status = 429, description = "`busy`: 100 calls wait for this device already (or 100,000 in all)", body = ErrorBody),
    ),
)]
async fn queue_call(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<QueuedCallRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<QueuedCallView>), AppError> {
    let (call, new) = state.ops().queue_call(&caller, &id, body_of(body)?).await?;
    let status = if new {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(QueuedCallView { call })))
}

/// One queued call of a device.
#[utoipa::path(
    get,
    path = "/devices/{id}/calls/{call}",
    tag = "rpc",
    params(
        ("id" = String, Path, description = "Device id"),
        ("call" = i64, Path, description = "Call id"),
    ),
    responses(
        (status = 200, description = "The call", body = QueuedCallView),
        (status = 404, description = "`unknown_call`", body = ErrorBody),
    ),
)]
async fn get_queued_call(
    State(state): State<AppState>,
    Path((id, call)): Path<(String, i64)>,
) -> Result<Json<QueuedCallView>, AppError> {
    Ok(Json(QueuedCallView {
        call: state.ops().queued_call(&id, call).await?,
    }))
}
