//! The devices page: pending keys first, with their fingerprints and the
//! accept / reject buttons; every device's state, last contact and health.
//! The table is also served alone (`/fragments/devices`), which the script
//! fetches again whenever a device event arrives.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::format::{utc_time, HealthView};
use super::page::{
    csrf_refused, local_path, render, render_with_status, sentence, Chrome, MessagePage, SignedIn,
};
use crate::http::error::{status_of, AppError};
use crate::http::state::AppState;
use crate::ops::devices::{DeviceFilter, DeviceView};
use crate::ops::{ErrorKind, OpError, Permission};
use crate::store::registry::DeviceStatus;

/// One row of the table.
pub(super) struct DeviceRow {
    pub id: String,
    pub status: &'static str,
    pub fingerprint: String,
    pub online: bool,
    pub last_seen_ms: i64,
    pub last_seen: String,
    pub bridge_version: String,
    pub health: Option<HealthView>,
    /// The admin who registered its key before it first connected.
    pub preauthorized_by: Option<String>,
    /// A preauthorized device that has not connected yet (`last_seen` is 0).
    pub never_connected: bool,
    /// When an admin required it to rotate its key, until it has.
    pub key_rotation_required: Option<String>,
    /// `key=value` each, in key order.
    pub tags: Vec<String>,
}

impl DeviceRow {
    pub fn new(device: DeviceView) -> Self {
        DeviceRow {
            health: HealthView::from_report(device.last_health.as_ref()),
            status: device.status.as_str(),
            last_seen: utc_time(device.last_seen),
            last_seen_ms: device.last_seen,
            never_connected: device.last_seen == 0,
            key_rotation_required: device.key_rotation_required_at.map(utc_time),
            preauthorized_by: device.preauthorized_by,
            tags: device
                .tags
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect(),
            bridge_version: device.bridge_version.unwrap_or_default(),
            fingerprint: device.fingerprint,
            online: device.online,
            id: device.id,
        }
    }
}

/// The table and the count of keys awaiting a decision.
#[derive(Template)]
#[template(path = "device_list.html")]
pub(super) struct DeviceList {
    rows: Vec<DeviceRow>,
    pending: usize,
    filtered: bool,
    csrf_token: String,
    /// Where the row forms come back to: this page with its filter.
    back: String,
    /// Admins: the accept, reject and delete buttons.
    may_decide_keys: bool,
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    chrome: Chrome,
    list: DeviceList,
    q: String,
    state: String,
    tag: String,
    preauthorize: PreauthorizeForm,
}

/// The preauthorize form as it is shown: empty, or as submitted with what
/// was wrong with it.
#[derive(Debug, Default, Deserialize)]
pub(super) struct PreauthorizeForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    public_key: String,
    #[serde(skip)]
    error: Option<String>,
}

/// `GET /` and `GET /devices?state=&q=`.
pub(super) async fn show(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(filter): Query<DeviceFilter>,
) -> Response {
    match device_list(&state, &signed_in, &filter).await {
        Ok(list) => render(&DevicesPage {
            chrome: signed_in.chrome("devices"),
            list,
            q: filter.q.unwrap_or_default(),
            state: filter.state.unwrap_or_default(),
            tag: filter.tag.unwrap_or_default(),
            preauthorize: PreauthorizeForm::default(),
        }),
        // A hand-typed filter the API refuses gets a page, not JSON.
        Err(e) if e.kind == ErrorKind::BadRequest => render_with_status(
            StatusCode::BAD_REQUEST,
            &MessagePage {
                chrome: signed_in.chrome("devices"),
                title: "That filter is not one the list knows".into(),
                message: e.message,
                back: "/devices".into(),
            },
        ),
        Err(e) => AppError(e).into_response(),
    }
}

/// `GET /fragments/devices?state=&q=`: the table alone.
pub(super) async fn fragment(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(filter): Query<DeviceFilter>,
) -> Response {
    match device_list(&state, &signed_in, &filter).await {
        Ok(list) => render(&list),
        Err(e) => AppError(e).into_response(),
    }
}

async fn device_list(
    state: &AppState,
    signed_in: &SignedIn,
    filter: &DeviceFilter,
) -> Result<DeviceList, OpError> {
    let views = state.ops().devices(filter).await?;
    let rows: Vec<DeviceRow> = views.into_iter().map(DeviceRow::new).collect();
    let query = filter.to_query();
    Ok(DeviceList {
        pending: rows.iter().filter(|r| r.status == "pending").count(),
        filtered: !query.is_empty(),
        rows,
        csrf_token: signed_in.chrome("").csrf_token,
        back: format!("/devices?{query}"),
        may_decide_keys: signed_in.caller.may(Permission::DecideKeys),
    })
}

/// `POST /devices`: registers a device's id and key before it first
/// connects (admins). On success the device's page; otherwise the list
/// again with the form as it was sent and what was wrong, in a sentence.
pub(super) async fn preauthorize(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Form(mut form): Form<PreauthorizeForm>,
) -> Response {
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, "/devices");
    }
    let id = form.id.trim().to_owned();
    let done = state
        .ops()
        .preauthorize(&signed_in.caller, &id, &form.public_key)
        .await;
    let error = match done {
        Ok(device) => return Redirect::to(&format!("/devices/{}", device.id)).into_response(),
        Err(e) if matches!(e.kind, ErrorKind::BadRequest | ErrorKind::DeviceExists) => e,
        // Not an admin: the page they came from had no such form to show it on.
        Err(e) if e.kind == ErrorKind::Forbidden => {
            return render_with_status(
                StatusCode::FORBIDDEN,
                &MessagePage {
                    chrome: signed_in.chrome("devices"),
                    title: format!("Could not preauthorize {id}"),
                    message: sentence(&e.message),
                    back: "/devices".into(),
                },
            )
        }
        Err(e) => return AppError(e).into_response(),
    };
    let filter = DeviceFilter::default();
    let list = match device_list(&state, &signed_in, &filter).await {
        Ok(list) => list,
        Err(e) => return AppError(e).into_response(),
    };
    form.error = Some(sentence(&error.message));
    render_with_status(
        status_of(error.kind),
        &DevicesPage {
            chrome: signed_in.chrome("devices"),
            list,
            q: String::new(),
            state: String::new(),
            tag: String::new(),
            preauthorize: form,
        },
    )
}

/// The hidden fields of a row's forms.
#[derive(Debug, Deserialize)]
pub(super) struct DecisionForm {
    #[serde(default)]
    csrf_token: String,
    back: Option<String>,
}

/// `POST /devices/{id}/accept`.
pub(super) async fn accept(
    state: State<AppState>,
    signed_in: SignedIn,
    id: Path<String>,
    form: Form<DecisionForm>,
) -> Response {
    decide(state, signed_in, id, form, Decision::Accept).await
}

/// `POST /devices/{id}/reject`.
pub(super) async fn reject(
    state: State<AppState>,
    signed_in: SignedIn,
    id: Path<String>,
    form: Form<DecisionForm>,
) -> Response {
    decide(state, signed_in, id, form, Decision::Reject).await
}

/// `POST /devices/{id}/delete`.
pub(super) async fn delete(
    state: State<AppState>,
    signed_in: SignedIn,
    id: Path<String>,
    form: Form<DecisionForm>,
) -> Response {
    decide(state, signed_in, id, form, Decision::Delete).await
}

/// `POST /devices/{id}/require-key-rotation`.
pub(super) async fn require_key_rotation(
    state: State<AppState>,
    signed_in: SignedIn,
    id: Path<String>,
    form: Form<DecisionForm>,
) -> Response {
    decide(state, signed_in, id, form, Decision::RequireRotation).await
}

#[derive(Debug, Clone, Copy)]
enum Decision {
    Accept,
    Reject,
    Delete,
    RequireRotation,
}

async fn decide(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
    decision: Decision,
) -> Response {
    // A deleted device has no page to return to.
    let fallback = match decision {
        Decision::Delete => "/devices".to_owned(),
        _ => format!("/devices/{id}"),
    };
    let back = match decision {
        Decision::Delete => fallback,
        _ => local_path(form.back.as_deref(), &fallback),
    };
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, &back);
    }
    let (ops, caller) = (state.ops(), &signed_in.caller);
    let done = match decision {
        Decision::Accept => ops
            .decide(caller, &id, DeviceStatus::Accepted)
            .await
            .map(drop),
        Decision::Reject => ops
            .decide(caller, &id, DeviceStatus::Rejected)
            .await
            .map(drop),
        Decision::Delete => ops.remove_device(caller, &id).await,
        Decision::RequireRotation => ops.require_rotation(caller, &id).await.map(drop),
    };
    match done {
        Ok(()) => Redirect::to(&back).into_response(),
        Err(e) => render_with_status(
            status_of(e.kind),
            &MessagePage {
                chrome: signed_in.chrome("devices"),
                title: format!("Could not {} {id}", decision_verb(decision)),
                message: e.message,
                back: "/devices".into(),
            },
        ),
    }
}

fn decision_verb(decision: Decision) -> &'static str {
    match decision {
        Decision::Accept => "accept",
        Decision::Reject => "reject",
        Decision::Delete => "delete",
        Decision::RequireRotation => "require a key rotation of",
    }
}
