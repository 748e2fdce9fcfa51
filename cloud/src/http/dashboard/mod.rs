//! The operator dashboard: server-rendered HTML pages (askama templates in
//! `cloud/templates/`) with one stylesheet and one script embedded in the
//! binary (`cloud/assets/`). Pages read through the same functions as the
//! REST API; the script calls the API itself (with the session's CSRF token)
//! for RPCs, and `/ws/events` for live updates.
//!
//! Every response carries a strict Content-Security-Policy: no inline script
//! or style, nothing from another origin.

mod account_page;
mod assets;
mod audit_page;
mod device_page;
mod devices_page;
mod fleet_pages;
mod format;
mod login;
mod logs_page;
mod operators_page;
mod page;
mod tokens_page;

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::http::state::AppState;

/// The dashboard's routes, to be merged into the cloud's router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(devices_page::show))
        .route(
            "/devices",
            get(devices_page::show).post(devices_page::preauthorize),
        )
        .route("/fragments/devices", get(devices_page::fragment))
        .route("/devices/{id}/tags", post(fleet_pages::set_tags))
        .route("/devices/{id}/calls", post(fleet_pages::queue_call))
        .route(
            "/fragments/devices/{id}/calls",
            get(fleet_pages::queued_calls_fragment),
        )
        .route(
            "/jobs",
            get(fleet_pages::jobs_page).post(fleet_pages::start_job),
        )
        .route("/jobs/{id}", get(fleet_pages::job_page))
        .route("/fragments/jobs/{id}", get(fleet_pages::job_fragment))
        .route("/devices/{id}", get(device_page::show))
        .route("/devices/{id}/accept", post(devices_page::accept))
        .route("/devices/{id}/reject", post(devices_page::reject))
        .route("/devices/{id}/delete", post(devices_page::delete))
        .route(
            "/devices/{id}/require-key-rotation",
            post(devices_page::require_key_rotation),
        )
        .route(
            "/devices/{id}/containers/{container}/logs",
            get(logs_page::show),
        )
        .route("/audit", get(audit_page::show))
        .route("/tokens", get(tokens_page::show).post(tokens_page::create))
        .route("/tokens/{id}/revoke", post(tokens_page::revoke))
        .route(
            "/operators",
            get(operators_page::show).post(operators_page::add),
        )
        .route("/operators/{name}/role", post(operators_page::set_role))
        .route(
            "/operators/{name}/password",
            post(operators_page::reset_password),
        )
        .route("/operators/{name}/remove", post(operators_page::remove))
        .route("/account", get(account_page::show))
        .route("/account/password", post(account_page::change_password))
        .route(
            "/account/sessions/{id}/end",
            post(account_page::end_session),
        )
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/assets/{file}", get(assets::serve))
        .layer(middleware::from_fn(security_headers))
}

/// The policy every dashboard response carries. `'self'` covers the
/// same-origin `/ws/events` socket too.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
