//! One device: its key and state, its health with a chart of the last hour,
//! what system it is, its containers and their latest events, and an RPC
//! console. The container table, the system facts and the chart are drawn by
//! the script from the API (`containers.list` and `system.info` through
//! `POST .../rpc`, and `GET .../health`), so that they refresh live without a
//! reload; container events are listed here and prepended live by the
//! script. The console offers what the device's `rpc.discover` lists and the
//! caller's role allows, and calls through the same `POST .../rpc` as every
//! button, so the same role check and audit apply.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use serde_json::Value;

use super::devices_page::DeviceRow;
use super::fleet_pages::{may_tag, QueuedCallList};
use super::format::utc_time;
use super::page::{render, render_with_status, Chrome, MessagePage, SignedIn};
use crate::http::error::AppError;
use crate::http::state::AppState;
use crate::ops::ErrorKind;
use crate::store::registry::DeviceEvent;

/// Auth events listed on the page.
const AUTH_EVENTS_SHOWN: usize = 10;

/// Container events listed on the page (the script keeps as many when it
/// adds live ones).
const CONTAINER_EVENTS_SHOWN: usize = 50;

/// Longest text of a container event's field shown: the device wrote it.
const EVENT_FIELD_CHARS: usize = 200;

/// One container event as listed; every field is the device's text.
struct ContainerEventRow {
    at: String,
    at_ms: i64,
    action: String,
    name: String,
    image: String,
    health: String,
}

impl ContainerEventRow {
    fn new(event: DeviceEvent) -> Self {
        let field = |key: &str| {
            event
                .payload
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(EVENT_FIELD_CHARS)
                .collect::<String>()
        };
        ContainerEventRow {
            action: field("action"),
            name: field("name"),
            image: field("image"),
            health: field("health"),
            at: utc_time(event.at),
            at_ms: event.at,
        }
    }
}

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
    container_events: Vec<ContainerEventRow>,
    /// The `METHOD_ROLES` rules, `pattern=role` comma-separated, with the
    /// caller's role: the console offers a discovered method only when the
    /// role suffices (the server checks again on each call).
    method_roles: String,
    /// Operators and admins: the tag form.
    may_tag: bool,
    queued_calls: QueuedCallList,
}

/// Every device method the page and the logs page call (`app.js`).
const PAGE_METHODS: [&str; 7] = [
    "containers.list",
    "containers.logs",
    "containers.start",
    "containers.stop",
    "containers.restart",
    "system.info",
    "rpc.discover",
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
    let container_events = details
        .container_events
        .into_iter()
        .take(CONTAINER_EVENTS_SHOWN)
        .map(ContainerEventRow::new)
        .collect();
    let method_roles = state
        .ops()
        .config()
        .method_roles
        .rules()
        .map(|(pattern, role)| format!("{pattern}={role}"))
        .collect::<Vec<_>>()
        .join(",");
    let may_call = PAGE_METHODS
        .into_iter()
        .filter(|method| signed_in.may_call(&state, method))
        .collect::<Vec<_>>()
        .join(" ");
    let queued_calls = match QueuedCallList::of(&state, &id).await {
        Ok(list) => list,
        Err(e) => return AppError(e).into_response(),
    };
    render(&DevicePage {
        may_tag: may_tag(&signed_in),
        queued_calls,
        may_call,
        container_events,
        method_roles,
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
