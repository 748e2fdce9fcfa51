//! The dashboard's stylesheet, script and icon, compiled into the binary
//! (device networks and this cloud may reach no CDN). Pages link them with a
//! content hash in the query, so they can be cached for good.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

const APP_CSS: &str = include_str!("../../../assets/app.css");
const APP_JS: &str = include_str!("../../../assets/app.js");
const FAVICON: &str = include_str!("../../../assets/favicon.svg");

/// A short hash of every asset: the `?v=` of their URLs.
pub(super) fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut hasher = Sha256::new();
        for asset in [APP_CSS, APP_JS, FAVICON] {
            hasher.update(asset.as_bytes());
        }
        hasher.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// `GET /assets/{file}`.
pub(super) async fn serve(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // The URL changes with the content (`?v=`), so a copy never goes stale.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        body,
    )
        .into_response()
}
