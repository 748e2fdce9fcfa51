//! `GET /ws/events?topic=...`: the event hub's stream, for a signed-in
//! operator or an API token.
//!
//! A socket starts with the topics of its query (`topic=a&topic=b` or
//! `topic=a,b`; none is allowed) and changes them in-band with
//! `{"subscribe": [...]}` and `{"unsubscribe": [...]}`, each answered with
//! `{"type":"subscribed"|"unsubscribed","topics":[named],"now":[all]}` or
//! `{"type":"error","message","topic"?}`. Each topic it gains (at connect or
//! by `subscribe`) is first sent a `{"type":"snapshot","topic",...}` of the
//! current state, then its live events. What a client sends is bounded: text
//! of at most [`MAX_CLIENT_MESSAGE_BYTES`], at most [`MAX_TOPICS`] topics, at
//! most [`CLIENT_MESSAGES_PER_SECOND`] messages a second (after a burst);
//! beyond these, or on a binary message, the socket is closed with a reason.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use governor::{DefaultDirectRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::events::{LiveEvent, Topic};
use crate::http::error::AppError;
use crate::http::state::AppState;
use crate::ops::devices::{DeviceFilter, DeviceView};
use crate::ops::ErrorKind;
use crate::store::DeviceStatus;

/// A subscriber that takes longer than this to accept one event is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest text message a client may send; a subscribe naming 64 long device
/// topics fits well within it.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 4096;

/// What the WebSocket library reads at most before giving up on a message
/// (without a close reason); between [`MAX_CLIENT_MESSAGE_BYTES`] and this a
/// client is told why it is closed.
const TRANSPORT_MESSAGE_CAP: usize = 64 * 1024;

/// Most topics one socket may follow at once.
pub const MAX_TOPICS: usize = 64;

/// Client messages a socket may send a second, on average...
pub const CLIENT_MESSAGES_PER_SECOND: u32 = 5;
/// ...and at once.
pub const CLIENT_MESSAGE_BURST: u32 = 20;

/// Most devices one `devices` snapshot lists; `truncated` says when there are more.
pub const SNAPSHOT_DEVICES: usize = 1000;

// Close codes of RFC 6455 §7.4.1.
const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
const CLOSE_POLICY_VIOLATION: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;

/// `GET /ws/events?topic=devices&topic=device.<id>&topic=audit` (or
/// `topic=devices,audit`), for a signed-in operator (session cookie) or an
/// API token.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Result<Response, AppError> {
    crate::http::auth::caller_from_headers(&state, &headers, false).await?;
    check_same_origin(&headers)?;
    let topics = parse_topics(query.as_deref().unwrap_or(""))?;
    // Subscribed before any snapshot is read, so no event after it is missed.
    let events = state.devices().events().subscribe();
    Ok(upgrade
        .max_message_size(TRANSPORT_MESSAGE_CAP)
        .max_frame_size(TRANSPORT_MESSAGE_CAP)
        .on_upgrade(move |socket| {
            let subscriber = Subscriber {
                state,
                topics: Vec::new(),
                limiter: client_message_limiter(),
            };
            subscriber.run(socket, events, topics)
        }))
}

/// The query's topics: repeated `topic=` and comma-separated values alike.
fn parse_topics(query: &str) -> Result<Vec<Topic>, AppError> {
    let mut topics: Vec<Topic> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "topic" {
            continue;
        }
        for name in value.split(',') {
            let topic = parse_topic(name).map_err(AppError::bad_request)?;
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
    }
    if topics.len() > MAX_TOPICS {
        return Err(AppError::bad_request(format!(
            "at most {MAX_TOPICS} topics per socket"
        )));
    }
    Ok(topics)
}

fn parse_topic(name: &str) -> Result<Topic, String> {
    Topic::parse(name).ok_or_else(|| {
        let shown: String = name.chars().take(80).collect();
        format!("unknown topic {shown:?}: use devices, device.<id>, audit or job.<id>")
    })
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

fn client_message_limiter() -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(CLIENT_MESSAGES_PER_SECOND).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(CLIENT_MESSAGE_BURST).unwrap_or(NonZeroU32::MIN);
    DefaultDirectRateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

/// What a client may send: exactly one of the two lists.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    unsubscribe: Option<Vec<String>>,
}

/// Why a client's message was not acted upon; the socket stays open.
struct Refusal {
    message: String,
    topic: Option<String>,
}

impl Refusal {
    fn new(message: impl Into<String>) -> Self {
        Refusal {
            message: message.into(),
            topic: None,
        }
    }

    fn to_text(&self) -> Utf8Bytes {
        let mut answer = json!({ "type": "error", "message": self.message });
        if let Some(topic) = &self.topic {
            answer["topic"] = json!(topic);
        }
        answer.to_string().into()
    }
}

/// Why the socket is closed.
struct Abuse {
    code: u16,
    reason: String,
}

/// One `/ws/events` socket.
struct Subscriber {
    state: AppState,
    topics: Vec<Topic>,
    limiter: DefaultDirectRateLimiter,
}

impl Subscriber {
    async fn run(
        mut self,
        mut socket: WebSocket,
        mut events: broadcast::Receiver<Arc<(LiveEvent, Utf8Bytes)>>,
        initial: Vec<Topic>,
    ) {
        let stop = self.state.devices().stopping().clone();
        let mut outgoing = self.snapshots(&initial).await;
        self.topics = initial;
        loop {
            for text in outgoing.drain(..) {
                let sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(WsMessage::Text(text)));
                match sent.await {
                    Ok(Ok(())) => {}
                    _ => return, // gone, or too slow to keep
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                incoming = socket.recv() => match incoming {
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(message)) => match self.heard(message).await {
                        Ok(answers) => outgoing = answers,
                        Err(abuse) => {
                            tracing::info!(code = abuse.code, reason = %abuse.reason, "closing a live event socket");
                            let frame = CloseFrame { code: abuse.code, reason: abuse.reason.into() };
                            let _ = tokio::time::timeout(
                                SEND_TIMEOUT,
                                socket.send(WsMessage::Close(Some(frame))),
                            )
                            .await;
                            return;
                        }
                    },
                },
                event = events.recv() => match event {
                    Ok(event) if self.topics.iter().any(|t| t.matches(&event.0)) => {
                        outgoing.push(event.1.clone());
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        outgoing.push(json!({ "type": "lagged", "missed": missed }).to_string().into());
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        let _ = socket.send(WsMessage::Close(None)).await;
    }

    /// What to send in answer to a client's message, or why to close.
    async fn heard(&mut self, message: WsMessage) -> Result<Vec<Utf8Bytes>, Abuse> {
        if self.limiter.check().is_err() {
            return Err(Abuse {
                code: CLOSE_POLICY_VIOLATION,
                reason: format!(
                    "too many messages: at most {CLIENT_MESSAGES_PER_SECOND} a second \
                     (bursts of {CLIENT_MESSAGE_BURST})"
                ),
            });
        }
        let text = match message {
            WsMessage::Text(text) => text,
            WsMessage::Binary(_) => {
                return Err(Abuse {
                    code: CLOSE_UNSUPPORTED_DATA,
                    reason: "binary messages are not accepted: send JSON text".into(),
                })
            }
            // Pings are answered by the library; pongs need nothing.
            _ => return Ok(Vec::new()),
        };
        if text.len() > MAX_CLIENT_MESSAGE_BYTES {
            return Err(Abuse {
                code: CLOSE_TOO_BIG,
                reason: format!("message too large: at most {MAX_CLIENT_MESSAGE_BYTES} bytes"),
            });
        }
        Ok(match self.change_topics(&text).await {
            Ok(answers) => answers,
            Err(refusal) => vec![refusal.to_text()],
        })
    }

    /// Applies a `subscribe` or `unsubscribe`: its acknowledgement, and for a
    /// subscribe the snapshots of the topics it names.
    async fn change_topics(&mut self, text: &str) -> Result<Vec<Utf8Bytes>, Refusal> {
        let message: ClientMessage = serde_json::from_str(text).map_err(|e| {
            Refusal::new(format!(
                "not a message this socket understands ({e}): send \
                 {{\"subscribe\": [topics]}} or {{\"unsubscribe\": [topics]}}"
            ))
        })?;
        let (subscribing, names) = match (message.subscribe, message.unsubscribe) {
            (Some(names), None) => (true, names),
            (None, Some(names)) => (false, names),
            _ => {
                return Err(Refusal::new(
                    "send either {\"subscribe\": [topics]} or {\"unsubscribe\": [topics]}",
                ))
            }
        };
        let mut named = Vec::new();
        for name in &names {
            let topic = parse_topic(name).map_err(|message| Refusal {
                message,
                topic: Some(name.chars().take(80).collect()),
            })?;
            if !named.contains(&topic) {
                named.push(topic);
            }
        }
        let mut outgoing = Vec::new();
        if subscribing {
            let added = named.iter().filter(|t| !self.topics.contains(t)).count();
            if self.topics.len() + added > MAX_TOPICS {
                return Err(Refusal::new(format!(
                    "at most {MAX_TOPICS} topics per socket: this one has {} and asks for {added} more; \
                     unsubscribe some first",
                    self.topics.len()
                )));
            }
            // Acknowledged and snapshotted before the topics take effect:
            // events of the topic are sent after its snapshot, never before.
            let snapshots = self.snapshots(&named).await;
            for topic in &named {
                if !self.topics.contains(topic) {
                    self.topics.push(topic.clone());
                }
            }
            outgoing.push(self.acknowledgement("subscribed", &named));
            outgoing.extend(snapshots);
        } else {
            self.topics.retain(|t| !named.contains(t));
            outgoing.push(self.acknowledgement("unsubscribed", &named));
        }
        Ok(outgoing)
    }

    fn acknowledgement(&self, kind: &str, named: &[Topic]) -> Utf8Bytes {
        let names = |topics: &[Topic]| topics.iter().map(Topic::to_string).collect::<Vec<_>>();
        json!({ "type": kind, "topics": names(named), "now": names(&self.topics) })
            .to_string()
            .into()
    }

    /// The current state of each topic that has one (`devices`,
    /// `device.<id>`).
    async fn snapshots(&self, topics: &[Topic]) -> Vec<Utf8Bytes> {
        let mut snapshots = Vec::new();
        for topic in topics {
            let snapshot = match topic {
                Topic::Devices => self.devices_snapshot().await,
                Topic::Device(id) => self.device_snapshot(id).await,
                // The audit log and jobs are read from their pages.
                _ => continue,
            };
            snapshots.push(snapshot.unwrap_or_else(|e| {
                tracing::warn!(topic = %topic, error = %e, "no snapshot for a live event socket");
                Refusal {
                    message: format!("the current state cannot be read now: {}", e.message),
                    topic: Some(topic.to_string()),
                }
                .to_text()
            }));
        }
        snapshots
    }

    async fn devices_snapshot(&self) -> Result<Utf8Bytes, crate::ops::OpError> {
        let devices = self.state.ops().devices(&DeviceFilter::default()).await?;
        let total = devices.len();
        let shown: Vec<DeviceState> = devices
            .iter()
            .take(SNAPSHOT_DEVICES)
            .map(DeviceState::of)
            .collect();
        Ok(json!({
            "type": "snapshot",
            "topic": "devices",
            "devices": shown,
            "total": total,
            "truncated": total > SNAPSHOT_DEVICES,
        })
        .to_string()
        .into())
    }

    async fn device_snapshot(&self, id: &str) -> Result<Utf8Bytes, crate::ops::OpError> {
        // A device not registered (yet) has no state: it may still come.
        let device = match self.state.ops().device(id).await {
            Ok(details) => Some(details.device),
            Err(e) if e.kind == ErrorKind::UnknownDevice => None,
            Err(e) => return Err(e),
        };
        let state = device.as_ref().map(|device| {
            let mut state = json!(DeviceState::of(device));
            state["bridge_version"] = json!(device.bridge_version);
            state["last_health"] = device.last_health.clone().unwrap_or(Value::Null);
            state["last_health_at"] = json!(device.last_health_at);
            state
        });
        Ok(json!({
            "type": "snapshot",
            "topic": format!("device.{id}"),
            "device_id": id,
            "device": state,
        })
        .to_string()
        .into())
    }
}

/// A device's state in a snapshot, as the device list shows it.
#[derive(Serialize)]
struct DeviceState<'a> {
    id: &'a str,
    status: DeviceStatus,
    online: bool,
    last_seen: i64,
}

impl<'a> DeviceState<'a> {
    fn of(device: &'a DeviceView) -> Self {
        DeviceState {
            id: &device.id,
            status: device.status,
            online: device.online,
            last_seen: device.last_seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_come_repeated_or_comma_separated_and_each_is_checked() {
        let topics = parse_topics("topic=devices,audit&topic=device.dev-1&topic=audit").unwrap();
        assert_eq!(
            topics,
            vec![Topic::Devices, Topic::Audit, Topic::Device("dev-1".into())]
        );
        assert!(parse_topics("").unwrap().is_empty());
        for bad in [
            "topic=devices,",
            "topic=devices,everything",
            "topic=device.a%20b",
        ] {
            assert!(parse_topics(bad).is_err(), "{bad}");
        }
        let too_many = (0..=MAX_TOPICS)
            .map(|n| format!("device.d{n}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_topics(&format!("topic={too_many}")).is_err());
    }
}
