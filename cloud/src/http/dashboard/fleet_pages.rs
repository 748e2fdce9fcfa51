//! The dashboard's fleet operations: a device's tags, its queued calls (a
//! form to queue one, the list redrawn live from `/fragments/...`), and jobs
//! (started from the filtered device list, each with a page whose outcomes
//! are redrawn live as `job.<id>` events arrive). Forms post here and are
//! answered with a redirect; each goes through the same operation as the API.

use std::time::Duration;

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::Value;

use super::format::utc_time;
use super::page::{
    csrf_refused, render, render_with_status, sentence, Chrome, MessagePage, SignedIn,
};
use crate::http::error::{status_of, AppError};
use crate::http::state::AppState;
use crate::ops::devices::DeviceFilter;
use crate::ops::jobs::{JobDetails, JobRequest};
use crate::ops::queued_calls::QueuedCallRequest;
use crate::ops::tags::parse_assignments;
use crate::ops::{ErrorKind, OpError, Permission};
use crate::store::jobs::JobOutcome;
use crate::store::queued_calls::QueuedCall;

/// Most characters of a result shown in a table cell; the API has it whole.
const RESULT_CHARS: usize = 240;

/// What went wrong with a form, on a page of its own.
fn refused(
    signed_in: &SignedIn,
    nav: &'static str,
    title: String,
    error: OpError,
    back: String,
) -> Response {
    render_with_status(
        status_of(error.kind),
        &MessagePage {
            chrome: signed_in.chrome(nav),
            title,
            message: sentence(&error.message),
            back,
        },
    )
}

fn shortened(value: &Value) -> String {
    let text = match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut short: String = text.chars().take(RESULT_CHARS).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// A job's filter as people read it: `tag site=berlin · state online`.
fn filter_text(query: &str) -> String {
    form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| match name.as_ref() {
            "q" => format!("id contains {value}"),
            name => format!("{name} {value}"),
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Params as typed in a form: empty for none, else JSON.
fn form_params(text: &str) -> Result<Option<Value>, OpError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| OpError::bad_request(format!("params are not JSON: {e}")))
}

// ---- tags ------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(super) struct TagsForm {
    #[serde(default)]
    csrf_token: String,
    /// `key=value` words, space-separated.
    #[serde(default)]
    tags: String,
}

/// `POST /devices/{id}/tags`: replaces the device's tags.
pub(super) async fn set_tags(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<TagsForm>,
) -> Response {
    let back = format!("/devices/{id}");
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, &back);
    }
    let done = match parse_assignments(form.tags.split_whitespace()) {
        Ok(tags) => {
            state
                .ops()
                .set_device_tags(&signed_in.caller, &id, &tags)
                .await
        }
        Err(e) => Err(e),
    };
    match done {
        Ok(_) => Redirect::to(&back).into_response(),
        Err(e) => refused(
            &signed_in,
            "devices",
            format!("Could not tag {id}"),
            e,
            back,
        ),
    }
}

// ---- queued calls ----------------------------------------------------------

/// One queued call as listed.
pub(super) struct QueuedCallRow {
    id: i64,
    method: String,
    state: String,
    created_by: String,
    created: String,
    created_ms: i64,
    expires: String,
    expires_ms: i64,
    outcome: String,
    result: String,
}

impl QueuedCallRow {
    fn new(call: QueuedCall) -> Self {
        QueuedCallRow {
            result: call.result.as_ref().map(shortened).unwrap_or_default(),
            outcome: call.outcome.unwrap_or_default(),
            created: utc_time(call.created_at),
            created_ms: call.created_at,
            expires: utc_time(call.expires_at),
            expires_ms: call.expires_at,
            id: call.id,
            method: call.method,
            state: call.state,
            created_by: call.created_by,
        }
    }
}

/// A device's queued calls: on its page, and alone for the live redraw.
#[derive(Template)]
#[template(path = "queued_calls.html")]
pub(super) struct QueuedCallList {
    rows: Vec<QueuedCallRow>,
}

impl QueuedCallList {
    pub(super) async fn of(state: &AppState, device_id: &str) -> Result<Self, OpError> {
        let calls = state.ops().queued_calls(device_id).await?;
        Ok(QueuedCallList {
            rows: calls.into_iter().map(QueuedCallRow::new).collect(),
        })
    }
}

/// `GET /fragments/devices/{id}/calls`.
pub(super) async fn queued_calls_fragment(
    State(state): State<AppState>,
    _signed_in: SignedIn,
    Path(id): Path<String>,
) -> Response {
    match QueuedCallList::of(&state, &id).await {
        Ok(list) => render(&list),
        Err(e) => AppError(e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct QueueForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    params: String,
    /// How long it may wait, as people write it: `1h`, `7d`.
    #[serde(default)]
    ttl: String,
}

/// `POST /devices/{id}/calls`: queues a call for the device.
pub(super) async fn queue_call(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<QueueForm>,
) -> Response {
    let back = format!("/devices/{id}");
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, &back);
    }
    let request = form_params(&form.params).and_then(|params| {
        let ttl = humantime::parse_duration(form.ttl.trim()).map_err(|_| {
            OpError::bad_request(format!(
                "{:?} is not a time to wait, such as 1h or 7d",
                form.ttl
            ))
        })?;
        Ok(QueuedCallRequest {
            method: form.method.trim().to_owned(),
            params,
            timeout_ms: None,
            ttl_ms: u64::try_from(ttl.min(Duration::from_secs(u32::MAX.into())).as_millis())
                .unwrap_or(u64::MAX),
            idempotency_key: None,
        })
    });
    let done = match request {
        Ok(request) => {
            state
                .ops()
                .queue_call(&signed_in.caller, &id, request)
                .await
        }
        Err(e) => Err(e),
    };
    match done {
        Ok(_) => Redirect::to(&format!("{back}#queued-calls")).into_response(),
        Err(e) => refused(
            &signed_in,
            "devices",
            format!("Could not queue a call for {id}"),
            e,
            back,
        ),
    }
}

// ---- jobs ------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(super) struct JobForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    params: String,
    // The list's filter, as the page was showing it.
    state: Option<String>,
    q: Option<String>,
    tag: Option<String>,
}

/// `POST /jobs`: starts a job on the devices the list's filter matches.
pub(super) async fn start_job(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Form(form): Form<JobForm>,
) -> Response {
    let filter = DeviceFilter {
        state: form.state,
        q: form.q,
        tag: form.tag,
    };
    let back = format!("/devices?{}", filter.to_query());
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, &back);
    }
    let started = match form_params(&form.params) {
        Ok(params) => {
            let request = JobRequest {
                method: form.method.trim().to_owned(),
                params,
                filter,
                concurrency: None,
                timeout_ms: None,
            };
            state.ops().start_job(&signed_in.caller, request).await
        }
        Err(e) => Err(e),
    };
    match started {
        Ok(job) => Redirect::to(&format!("/jobs/{}", job.job.id)).into_response(),
        Err(e) => refused(
            &signed_in,
            "jobs",
            "Could not start the job".into(),
            e,
            back,
        ),
    }
}

/// One device's outcome as listed.
struct OutcomeRow {
    seq: i64,
    device_id: String,
    outcome: String,
    result: String,
    latency_ms: i64,
}

impl OutcomeRow {
    fn new(outcome: JobOutcome) -> Self {
        OutcomeRow {
            result: shortened(&outcome.result),
            seq: outcome.seq,
            device_id: outcome.device_id,
            outcome: outcome.outcome,
            latency_ms: outcome.latency_ms,
        }
    }
}

/// A job's progress and outcomes: on its page, and alone for the live redraw.
#[derive(Template)]
#[template(path = "job_outcomes.html")]
struct JobOutcomes {
    state: String,
    total: i64,
    done: i64,
    tally: Vec<(String, i64)>,
    rows: Vec<OutcomeRow>,
}

impl JobOutcomes {
    fn new(details: JobDetails) -> Self {
        JobOutcomes {
            state: details.job.job.state,
            total: details.job.job.total,
            done: details.job.done,
            tally: details.job.tally.into_iter().collect(),
            rows: details.outcomes.into_iter().map(OutcomeRow::new).collect(),
        }
    }
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    chrome: Chrome,
    id: i64,
    method: String,
    params: String,
    /// The device list's query, for the link to it.
    filter: String,
    filter_text: String,
    created_by: String,
    created: String,
    created_ms: i64,
    outcomes: JobOutcomes,
}

fn unknown_job(signed_in: &SignedIn, error: OpError) -> Response {
    if error.kind != ErrorKind::UnknownJob {
        return AppError(error).into_response();
    }
    refused(
        signed_in,
        "jobs",
        "No such job".into(),
        error,
        "/jobs".into(),
    )
}

/// `GET /jobs/{id}`.
pub(super) async fn job_page(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<i64>,
) -> Response {
    let details = match state.ops().job(id).await {
        Ok(details) => details,
        Err(e) => return unknown_job(&signed_in, e),
    };
    let job = &details.job.job;
    render(&JobPage {
        chrome: signed_in.chrome("jobs"),
        id,
        method: job.method.clone(),
        params: job
            .params
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default(),
        filter: job.filter.clone(),
        filter_text: filter_text(&job.filter),
        created_by: job.created_by.clone(),
        created: utc_time(job.created_at),
        created_ms: job.created_at,
        outcomes: JobOutcomes::new(details),
    })
}

/// `GET /fragments/jobs/{id}`.
pub(super) async fn job_fragment(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<i64>,
) -> Response {
    match state.ops().job(id).await {
        Ok(details) => render(&JobOutcomes::new(details)),
        Err(e) => unknown_job(&signed_in, e),
    }
}

struct JobRow {
    id: i64,
    method: String,
    filter: String,
    total: i64,
    state: String,
    created_by: String,
    created: String,
    created_ms: i64,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    chrome: Chrome,
    rows: Vec<JobRow>,
}

/// `GET /jobs`: the latest jobs.
pub(super) async fn jobs_page(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    let jobs = match state.ops().latest_jobs(100).await {
        Ok(jobs) => jobs,
        Err(e) => return AppError(e).into_response(),
    };
    let rows = jobs
        .into_iter()
        .map(|job| JobRow {
            created: utc_time(job.created_at),
            created_ms: job.created_at,
            id: job.id,
            method: job.method,
            filter: filter_text(&job.filter),
            total: job.total,
            state: job.state,
            created_by: job.created_by,
        })
        .collect();
    render(&JobsPage {
        chrome: signed_in.chrome("jobs"),
        rows,
    })
}

/// Whether the caller may tag devices (the device page's tag form).
pub(super) fn may_tag(signed_in: &SignedIn) -> bool {
    signed_in.caller.may(Permission::TagDevices)
}
