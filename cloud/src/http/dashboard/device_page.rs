//! One device: its key and state, its health with a chart of the last hour,
//! and its containers. The container table and the chart are drawn by the
//! script from the API (`containers.list` through `POST .../rpc`, and
//! `GET .../health`), so that they refresh live without a reload.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::devices_page::DeviceRow;
use super::format::utc_time;
use super::page::{render, render_with_status, Chrome, MessagePage, SignedIn};
use crate::http::error::AppError;
use crate::http::state::AppState;
use crate::ops::ErrorKind;

/// Auth events listed on the page.
const AUTH_EVENTS_SHOWN: usize = 10;

struct AuthEventRow {
    at: String,
    at_ms: i64,
    event: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    chrome: Chrome,
    device: DeviceRow,
    first_seen: String,
    first_seen_ms: i64,
    auth_events: Vec<AuthEventRow>,
    /// The device methods this page calls that the caller's role allows,
    /// space-separated: the script offers only these.
    may_call: String,
}

/// Every device method the page and the logs page call (`app.js`).
const PAGE_METHODS: [&str; 5] = [
    "containers.list",
    "containers.logs",
    "containers.start",
    "containers.stop",
    "containers.restart",
];

/// `GET /devices/{id}`.
pub(super) async fn show(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<String>,
) -> Response {
    let details = match state.ops().device(&id).await {
        Ok(details) => details,
        Err(e) if e.kind == ErrorKind::UnknownDevice => {
            return render_with_status(
                StatusCode::NOT_FOUND,
                &MessagePage {
                    chrome: signed_in.chrome("devices"),
                    title: "No such device".into(),
                    message: format!("No device {id:?} is registered (it may have been deleted)."),
                    back: "/devices".into(),
                },
            )
        }
        Err(e) => return AppError(e).into_response(),
    };
    let first_seen_ms = details.device.first_seen;
    let device = DeviceRow::new(details.device);
    let auth_events = details.auth_events.into_iter().take(AUTH_EVENTS_SHOWN);
    let may_call = PAGE_METHODS
        .into_iter()
        .filter(|method| signed_in.may_call(&state, method))
        .collect::<Vec<_>>()
        .join(" ");
    render(&DevicePage {
        may_call,
        chrome: signed_in.chrome("devices"),
        device,
        first_seen: utc_time(first_seen_ms),
        first_seen_ms,
        auth_events: auth_events
            .map(|e| AuthEventRow {
                at: utc_time(e.at),
                at_ms: e.at,
                event: e.event,
                detail: e.detail,
            })
            .collect(),
    })
}
