//! A container's logs: the page is a frame with the controls (tail, since,
//! stdout / stderr, a text filter, follow); the script fetches the lines with
//! `containers.logs` through the API and, when following, polls for lines
//! newer than the last one shown. Log text only ever becomes DOM text.

use askama::Template;
use axum::extract::Path;
use axum::response::Response;

use super::page::{render, Chrome, SignedIn};

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    chrome: Chrome,
    device_id: String,
    container: String,
}

/// `GET /devices/{id}/containers/{container}/logs`.
pub(super) async fn show(
    signed_in: SignedIn,
    Path((device_id, container)): Path<(String, String)>,
) -> Response {
    render(&LogsPage {
        chrome: signed_in.chrome("devices"),
        device_id,
        container,
    })
}
