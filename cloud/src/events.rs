//! Live events for browsers and scripts: `/ws/events?topic=...`.
//!
//! One broadcast ring feeds every subscriber. Each subscriber reads at its own
//! pace, and at most [`QUEUE_PER_CLIENT`] events wait for it; a subscriber that
//! falls further behind skips ahead and is told how many it missed
//! (`{"type":"lagged","missed":n}`), so a slow browser never slows the
//! publisher or the other subscribers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::error::AppError;
use crate::now_ms;
use crate::state::AppState;

/// Events that may wait for one subscriber before it is told it lagged.
pub const QUEUE_PER_CLIENT: usize = 256;
/// A subscriber that takes longer than this to accept one event is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// What an event is about; subscribers choose by topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `devices`: every device's events.
    Devices,
    /// `device.<id>`: one device's events.
    Device(String),
    /// `audit`: each new audit log entry.
    Audit,
}

impl Topic {
    pub fn parse(text: &str) -> Option<Topic> {
        match text {
            "devices" => Some(Topic::Devices),
            "audit" => Some(Topic::Audit),
            _ => text
                .strip_prefix("device.")
                .filter(|id| protocol::is_valid_device_id(id))
                .map(|id| Topic::Device(id.to_owned())),
        }
    }

    fn matches(&self, event: &LiveEvent) -> bool {
        match (self, &event.device_id) {
            (Topic::Audit, _) => event.kind.starts_with("audit."),
            (Topic::Devices, Some(_)) => true,
            (Topic::Device(id), Some(device_id)) => id == device_id,
            (_, None) => false,
        }
    }
}

/// One event, as subscribers receive it (serialized once, shared by all).
#[derive(Debug, Serialize)]
pub struct LiveEvent {
    /// `device.new_key`, `device.status`, `device.online`, `device.offline`,
    /// `device.deleted`, `device.health`, `device.container_event`, `audit.entry`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub at: u64,
    pub data: Value,
}

/// The cloud's event fan-out; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<(LiveEvent, Utf8Bytes)>>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            sender: broadcast::channel(QUEUE_PER_CLIENT).0,
        }
    }
}

impl EventHub {
    /// An event about one device.
    pub fn device(&self, kind: &'static str, device_id: &str, data: Value) {
        self.publish(LiveEvent {
            kind,
            device_id: Some(device_id.to_owned()),
            at: now_ms(),
            data,
        });
    }

    /// A new audit log entry.
    pub fn audit(&self, entry: &crate::audit::AuditEntry) {
        self.publish(LiveEvent {
            kind: "audit.entry",
            device_id: None,
            at: now_ms(),
            data: json!(entry),
        });
    }

    fn publish(&self, event: LiveEvent) {
        let text = serde_json::to_string(&event).unwrap_or_default();
        // No subscriber is not an error: nobody is looking.
        let _ = self.sender.send(Arc::new((event, text.into())));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<(LiveEvent, Utf8Bytes)>> {
        self.sender.subscribe()
    }
}

/// `GET /ws/events?topic=devices&topic=device.<id>&topic=audit`, for a signed-in
/// operator (session cookie) or an API token.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Result<Response, AppError> {
    crate::operator_auth::caller_from_headers(&state, &headers, false).await?;
    check_same_origin(&headers)?;
    let topics = parse_topics(query.as_deref().unwrap_or(""))?;
    let events = state.events().subscribe();
    let stop = state.sessions_stop().clone();
    Ok(upgrade.on_upgrade(move |socket| forward(socket, events, topics, stop)))
}

fn parse_topics(query: &str) -> Result<Vec<Topic>, AppError> {
    let mut topics = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "topic" {
            continue;
        }
        let topic = Topic::parse(&value).ok_or_else(|| {
            AppError::bad_request(format!(
                "unknown topic {value:?}: use devices, device.<id> or audit"
            ))
        })?;
        topics.push(topic);
    }
    if topics.is_empty() {
        return Err(AppError::bad_request(
            "name at least one topic: /ws/events?topic=devices (or device.<id>, audit)",
        ));
    }
    Ok(topics)
}

/// Browsers send cookies on cross-site WebSocket handshakes too; a page of
/// another origin must not read this stream with the operator's session.
fn check_same_origin(headers: &HeaderMap) -> Result<(), AppError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(()); // not a browser
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    if host.is_some() && origin_host == host {
        Ok(())
    } else {
        Err(AppError::new(
            axum::http::StatusCode::FORBIDDEN,
            "cross_origin",
            "event stream requested from another origin",
        ))
    }
}

async fn forward(
    mut socket: WebSocket,
    mut events: broadcast::Receiver<Arc<(LiveEvent, Utf8Bytes)>>,
    topics: Vec<Topic>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let outgoing = tokio::select! {
            _ = stop.cancelled() => break,
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue, // pings are answered by the library
            },
            event = events.recv() => match event {
                Ok(event) if topics.iter().any(|t| t.matches(&event.0)) => event.1.clone(),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    json!({ "type": "lagged", "missed": missed }).to_string().into()
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        match tokio::time::timeout(SEND_TIMEOUT, socket.send(WsMessage::Text(outgoing))).await {
            Ok(Ok(())) => {}
            _ => return, // gone, or too slow to keep
        }
    }
    let _ = socket.send(WsMessage::Close(None)).await;
}
