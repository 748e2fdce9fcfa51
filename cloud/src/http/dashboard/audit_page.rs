//! The audit log: every operator action and every device auth event,
//! filtered and paginated on the server. On the first page the script
//! prepends new entries as they happen (`/ws/events?topic=audit`).

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::format::utc_time;
use super::page::{render, Chrome, SignedIn};
use crate::http::error::AppError;
use crate::http::state::AppState;
use crate::store::audit::{AuditEntry, AuditFilter};

/// Entries per page.
const PAGE_SIZE: i64 = 50;

/// The query of `/audit`: as the API's, but empty fields mean "any", since
/// that is what an empty form field sends.
#[derive(Debug, Default, Deserialize)]
pub(super) struct AuditQuery {
    #[serde(default)]
    source: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    failures_only: Option<String>,
    #[serde(default)]
    offset: Option<i64>,
}

impl AuditQuery {
    fn filter(&self) -> AuditFilter {
        let some = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        AuditFilter {
            source: some(&self.source),
            actor: some(&self.actor),
            action: some(&self.action),
            target: some(&self.target),
            failures_only: Some(self.failures_only()),
        }
    }

    fn failures_only(&self) -> bool {
        self.failures_only
            .as_deref()
            .is_some_and(|v| !v.is_empty() && v != "false")
    }

    /// This query at another offset, as a link.
    fn link(&self, offset: i64) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("source", &self.source),
            ("actor", &self.actor),
            ("action", &self.action),
            ("target", &self.target),
        ] {
            if !value.is_empty() {
                query.append_pair(key, value);
            }
        }
        if self.failures_only() {
            query.append_pair("failures_only", "true");
        }
        if offset > 0 {
            query.append_pair("offset", &offset.to_string());
        }
        let query = query.finish();
        if query.is_empty() {
            "/audit".into()
        } else {
            format!("/audit?{query}")
        }
    }
}

struct EntryRow {
    at: String,
    at_ms: i64,
    entry: AuditEntry,
    latency: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    query: AuditQuery,
    failures_only: bool,
    rows: Vec<EntryRow>,
    total: i64,
    first: i64,
    last: i64,
    newer: Option<String>,
    older: Option<String>,
    /// Live updates only make sense on the newest page.
    live: bool,
}

/// `GET /audit?source=&actor=&action=&target=&failures_only=&offset=`.
pub(super) async fn show(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<AuditQuery>,
) -> Response {
    let offset = query.offset.unwrap_or(0).max(0);
    let page = match state
        .ops()
        .audit_page(&query.filter(), offset, PAGE_SIZE)
        .await
    {
        Ok(page) => page,
        Err(e) => return AppError::internal(e).into_response(),
    };
    let shown = page.entries.len() as i64;
    render(&AuditPage {
        chrome: signed_in.chrome("audit"),
        failures_only: query.failures_only(),
        total: page.total,
        first: if shown == 0 { 0 } else { offset + 1 },
        last: offset + shown,
        newer: (offset > 0).then(|| query.link((offset - PAGE_SIZE).max(0))),
        older: (offset + shown < page.total).then(|| query.link(offset + PAGE_SIZE)),
        live: offset == 0,
        rows: page
            .entries
            .into_iter()
            .map(|entry| EntryRow {
                at: utc_time(entry.at),
                at_ms: entry.at,
                latency: entry
                    .latency_ms
                    .map_or_else(String::new, |ms| format!("{ms} ms")),
                entry,
            })
            .collect(),
        query,
    })
}
