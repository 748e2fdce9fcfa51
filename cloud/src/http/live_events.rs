//! `GET /ws/events?topic=...`: the event hub's stream, for a signed-in
//! operator or an API token.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use serde_json::json;
use tokio::sync::broadcast;

use crate::events::{LiveEvent, Topic};
use crate::http::error::AppError;
use crate::http::state::AppState;
use crate::ops::ErrorKind;

/// A subscriber that takes longer than this to accept one event is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET /ws/events?topic=devices&topic=device.<id>&topic=audit`, for a signed-in
/// operator (session cookie) or an API token.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Result<Response, AppError> {
    crate::http::auth::caller_from_headers(&state, &headers, false).await?;
    check_same_origin(&headers)?;
    let topics = parse_topics(query.as_deref().unwrap_or(""))?;
    let events = state.devices().events().subscribe();
    let stop = state.devices().stopping().clone();
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
            ErrorKind::CrossOrigin,
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
