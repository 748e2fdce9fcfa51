//! One WebSocket connection to the cloud: the authentication handshake, then
//! relaying verified cloud requests to workers and device calls up to the cloud.

use std::collections::HashMap;

use futures::{SinkExt, StreamExt};
use protocol::{auth, Direction, ErrorCode, Expectation, Message, Refusal, ReplayGuard, RpcError};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::relay::call_worker;
use crate::status::{announce, LinkState};
use crate::{now_ms, BridgeConfig, BridgeStats, LiveLink};

/// Prefix of the authentication request's id, the only request sent before
/// going live. The rest is random, so that only the cloud's answer to this
/// very request is taken: a recorded answer names another id.
const AUTH_REQUEST_PREFIX: &str = "auth-";
/// Frames queued for the socket writer; senders wait when it is full.
const WRITE_QUEUE: usize = 256;
/// Device → cloud calls and notifications queued for this session.
pub const UPLINK_QUEUE: usize = 256;

/// A device-side call or notification for the cloud, from the NATS uplink.
pub enum Outbound {
    Call {
        method: String,
        params: Option<Value>,
        reply: oneshot::Sender<Result<Value, RpcError>>,
    },
    Notify {
        method: String,
        params: Option<Value>,
    },
}

/// How a session ended, which decides how long to wait before the next.
#[derive(Debug)]
pub enum SessionEnd {
    Closed { authenticated: bool, reason: String },
    Rejected(String),
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    AwaitChallenge,
    AwaitAuthResult,
    Pending,
    Live,
}

pub struct Session<'a> {
    config: &'a BridgeConfig,
    nats: &'a async_nats::Client,
    guard: &'a mut ReplayGuard,
    stats: &'a BridgeStats,
    live: &'a LiveLink,
    stage: Stage,
    writer: mpsc::Sender<Frame>,
    uplink: mpsc::Sender<Outbound>,
    /// Device → cloud calls awaiting the cloud's response, by request id.
    in_flight: HashMap<String, oneshot::Sender<Result<Value, RpcError>>>,
    next_call: u64,
    /// This connection's authentication request id (see [`AUTH_REQUEST_PREFIX`]).
    auth_request_id: String,
    /// The cloud's timestamp on its answer to our authentication: nothing it
    /// signed before is heard on this connection, so frames recorded on an
    /// earlier one (even before a restart of the bridge, whose replay guard
    /// is then empty) are refused.
    authenticated_at: Option<u64>,
}

/// Connects, authenticates and serves until the connection ends.
pub async fn run_session(
    config: &BridgeConfig,
    nats: &async_nats::Client,
    guard: &mut ReplayGuard,
    stats: &BridgeStats,
    live: &LiveLink,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let closed = |reason: String| SessionEnd::Closed {
        authenticated: false,
        reason,
    };
    let mut request = match config.cloud_url.as_str().into_client_request() {
        Ok(request) => request,
        Err(error) => return closed(format!("invalid cloud URL {}: {error}", config.cloud_url)),
    };
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(protocol::SUBPROTOCOL),
    );
    // Small buffers: a device holds one connection, but the cloud holds
    // thousands of the other end, and the bridge should be as lean.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(8 << 10)
        .write_buffer_size(0)
        .max_message_size(Some(config.max_frame_bytes.saturating_mul(4)));
    // The connector is used for wss:// URLs only.
    let tls = tokio_tungstenite::Connector::Rustls(config.tls.clone());
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(ws_config), true, Some(tls));
    let (socket, response) = tokio::select! {
        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        result = tokio::time::timeout(config.connect_timeout, connect) => match result {
            Ok(Ok(connected)) => connected,
            Ok(Err(error)) => return closed(format!("cannot connect to {}: {error}", config.cloud_url)),
            Err(_) => return closed(format!("connecting to {} timed out", config.cloud_url)),
        },
    };
    let agreed = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if agreed != Some(protocol::SUBPROTOCOL) {
        return closed(format!(
            "cloud did not agree to subprotocol {} (got {agreed:?})",
            protocol::SUBPROTOCOL
        ));
    }
    tracing::info!(url = %config.cloud_url, "connected to the cloud");

    let (mut sink, mut stream) = socket.split();
    let (writer, mut to_write) = mpsc::channel::<Frame>(WRITE_QUEUE);
    // Aborted with the session, so the socket closes even while relay tasks
    // still hold a sender.
    let write_task = AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(frame) = to_write.recv().await {
            let closing = matches!(frame, Frame::Close(_));
            if sink.send(frame).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    }));
    let (uplink, mut uplink_rx) = mpsc::channel(UPLINK_QUEUE);
    let mut session = Session {
        config,
        nats,
        guard,
        stats,
        live,
        stage: Stage::AwaitChallenge,
        writer,
        uplink,
        in_flight: HashMap::new(),
        next_call: 0,
        auth_request_id: format!("{AUTH_REQUEST_PREFIX}{:016x}", rand::random::<u64>()),
        authenticated_at: None,
    };

    let handshake_deadline = Instant::now() + config.connect_timeout;
    let mut last_heard = Instant::now();
    let mut pings = interval(config.ping_interval);
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    pings.tick().await;

    let end = loop {
        let authenticated = matches!(session.stage, Stage::Pending | Stage::Live);
        tokio::select! {
            _ = shutdown.cancelled() => {
                session.close(CloseCode::Away, "bridge shutting down").await;
                break SessionEnd::Shutdown;
            }
            frame = stream.next() => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(Frame::Text(text))) => {
                        if let Some(end) = session.on_text(text.as_str()).await {
                            break end;
                        }
                    }
                    Some(Ok(Frame::Binary(_))) => session.refuse(&Refusal::BinaryFrame, Some(Value::Null)).await,
                    Some(Ok(Frame::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        break if code == protocol::close_code::REJECTED {
                            SessionEnd::Rejected(reason)
                        } else {
                            SessionEnd::Closed { authenticated, reason: format!("cloud closed the connection ({code} {reason})") }
                        };
                    }
                    Some(Ok(_)) => {} // pings are answered by tungstenite; pongs only prove liveness
                    Some(Err(error)) => break SessionEnd::Closed { authenticated, reason: format!("connection error: {error}") },
                    None => break SessionEnd::Closed { authenticated, reason: "connection closed".into() },
                }
            }
            Some(outbound) = uplink_rx.recv() => session.send_outbound(outbound).await,
            _ = pings.tick() => {
                if last_heard.elapsed() > config.ping_interval * 2 {
                    break SessionEnd::Closed { authenticated, reason: "cloud stopped answering pings".into() };
                }
                let _ = session.writer.send(Frame::Ping(Default::default())).await;
            }
            _ = tokio::time::sleep_until(handshake_deadline), if !authenticated => {
                session.close(CloseCode::Policy, "authentication timed out").await;
                break SessionEnd::Closed { authenticated, reason: "authentication handshake timed out".into() };
            }
        }
    };
    session.end();
    drop(session);
    // Give the writer a moment to flush a close frame, never longer.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write_task).await;
    end
}

/// The id of a request that the strict parser refused for a duplicate key or
/// an unsafe number, read leniently so that the cloud hears why. `None` for
/// anything else: an oversized frame is not parsed at all, and an id that is
/// itself duplicated or unsafe cannot be answered faithfully.
fn request_id_despite(text: &str, refusal: &Refusal) -> Option<Value> {
    match refusal {
        Refusal::DuplicateKey(key) if key != "id" => {}
        Refusal::UnsafeNumber(_) => {}
        _ => return None,
    }
    let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    frame.get("method")?;
    let id = frame.get("id")?;
    let safe = id.is_string()
        || id
            .as_i64()
            .is_some_and(|n| n.unsigned_abs() <= protocol::MAX_SAFE_INTEGER);
    safe.then(|| id.clone())
}

impl Session<'_> {
    async fn on_text(&mut self, text: &str) -> Option<SessionEnd> {
        let config = self.config;
        let frame = match protocol::parse_frame(text, config.max_frame_bytes) {
            Ok(frame) => frame,
            Err(refusal) => {
                // As JSON-RPC answers a parse error: with id null when no id
                // can be read faithfully.
                let id = request_id_despite(text, &refusal).unwrap_or(Value::Null);
                self.refuse(&refusal, Some(id)).await;
                return None;
            }
        };
        // Peeked only to answer a refused request and to pick the audience;
        // nothing unverified is acted upon. Only the challenge notification
        // may be addressed to anyone, not a request borrowing its name.
        let unverified_id = frame.get("method").and(frame.get("id")).cloned();
        let is_challenge = frame.get("method").and_then(Value::as_str) == Some(auth::CHALLENGE)
            && !frame.contains_key("id");
        let now = now_ms();
        let expect = Expectation {
            signer_id: &config.cloud_id,
            key: &config.cloud_key,
            audience_id: if is_challenge {
                protocol::ANY_AUDIENCE
            } else {
                config.device_id()
            },
            direction: Direction::CloudToDevice,
            skew_ms: config.skew.as_millis() as u64,
            now_ms: now,
        };
        let verified = protocol::verify(frame, &expect).and_then(|verified| {
            let meta = &verified.meta;
            if let Some(authenticated_at) = self.authenticated_at {
                if meta.timestamp < authenticated_at {
                    return Err(Refusal::OlderThanSession {
                        signed_at: meta.timestamp,
                        authenticated_at,
                    });
                }
            }
            self.guard
                .admit(&meta.signer_id, &meta.nonce, meta.timestamp, now)
                .map(|()| verified)
        });
        let message = match verified {
            Ok(verified) => {
                let answers_auth = matches!(&verified.message,
                    Message::Response { id, .. } if self.stage == Stage::AwaitAuthResult
                        && id.as_str() == Some(self.auth_request_id.as_str()));
                if answers_auth {
                    self.authenticated_at = Some(verified.meta.timestamp);
                }
                verified.message
            }
            Err(refusal) => {
                self.refuse(&refusal, unverified_id).await;
                return None;
            }
        };
        self.on_message(message).await
    }

    async fn on_message(&mut self, message: Message) -> Option<SessionEnd> {
        match (self.stage, message) {
            (Stage::AwaitChallenge, Message::Notification { method, params })
                if method == auth::CHALLENGE =>
            {
                let challenge = params
                    .as_ref()
                    .and_then(|p| p.get("challenge"))
                    .and_then(Value::as_str);
                let Some(challenge) = challenge else {
                    return Some(self.closed("auth.challenge without a challenge"));
                };
                let params = json!({
                    "device_id": self.config.device_id(),
                    "public_key": protocol::keys::public_key_to_pem(&self.config.signer.public_key()),
                    "challenge": challenge,
                    "bridge_version": env!("CARGO_PKG_VERSION"),
                });
                let request = Message::request(
                    self.auth_request_id.clone(),
                    self.config.auth_method.clone(),
                    params,
                );
                self.send(&request).await;
                self.stage = Stage::AwaitAuthResult;
                None
            }
            (Stage::AwaitAuthResult, Message::Response { id, result })
                if id.as_str() == Some(self.auth_request_id.as_str()) =>
            {
                match result {
                    Ok(result) => {
                        self.on_status(result.get("status").and_then(Value::as_str))
                            .await
                    }
                    Err(error) => {
                        Some(self.closed(&format!("authentication refused: {}", error.message)))
                    }
                }
            }
            (Stage::Pending | Stage::Live, Message::Notification { method, params })
                if method == auth::STATUS =>
            {
                self.on_status(
                    params
                        .as_ref()
                        .and_then(|p| p.get("status"))
                        .and_then(Value::as_str),
                )
                .await
            }
            (Stage::Live, Message::Request { id, method, params }) => {
                match protocol::check_method_name(&method) {
                    Ok(()) => self.relay_request(id, method, params),
                    Err(refusal) => self.refuse(&refusal, Some(id)).await,
                }
                None
            }
            (_, Message::Request { id, method, .. }) => {
                let error = RpcError::new(
                    ErrorCode::NotAccepted,
                    format!("device is not live yet; {method:?} not relayed"),
                );
                self.send(&Message::error(id, error)).await;
                None
            }
            (Stage::Live, Message::Notification { method, params })
                if !method.starts_with("auth.") =>
            {
                self.relay_notification(method, params).await;
                None
            }
            (_, Message::Response { id, result }) => {
                let sender = id.as_str().and_then(|id| self.in_flight.remove(id));
                match sender {
                    Some(sender) => {
                        let _ = sender.send(result);
                    }
                    None => tracing::warn!(%id, "response for no call in flight; dropped"),
                }
                None
            }
            (stage, message) => {
                tracing::warn!(?stage, method = ?message.method(), "unexpected message for this stage; dropped");
                None
            }
        }
    }

    async fn on_status(&mut self, status: Option<&str>) -> Option<SessionEnd> {
        let device_id = self.config.device_id();
        match status {
            Some("accepted") => {
                if self.stage != Stage::Live {
                    self.stage = Stage::Live;
                    *self.live.lock().expect("live link lock") = Some(self.uplink.clone());
                    tracing::info!(device_id, "accepted by the cloud; live");
                    announce(self.nats, self.config, LinkState::Live).await;
                }
                None
            }
            Some("pending") => {
                self.stage = Stage::Pending;
                self.clear_live();
                tracing::info!(
                    device_id,
                    fingerprint = %protocol::keys::fingerprint(&self.config.signer.public_key()),
                    "key is pending approval by an operator"
                );
                announce(self.nats, self.config, LinkState::Pending).await;
                None
            }
            Some("rejected") => Some(SessionEnd::Rejected("device rejected by the cloud".into())),
            other => Some(self.closed(&format!("unknown auth status {other:?}"))),
        }
    }

    /// Relays in its own task so that a slow worker never blocks the socket.
    fn relay_request(&self, id: Value, method: String, params: Option<Value>) {
        let nats = self.nats.clone();
        let writer = self.writer.clone();
        let config = self.config.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = call_worker(
                &nats,
                &config.cloud_id,
                &id,
                &method,
                params,
                config.worker_timeout,
                config.max_frame_bytes,
            )
            .await;
            tracing::info!(%method, %id, ok = outcome.is_ok(), elapsed_ms = started.elapsed().as_millis() as u64, "relayed cloud request");
            let response = Message::Response {
                id,
                result: outcome,
            };
            let text = config.signer.sign_to_text(
                &response,
                &config.cloud_id,
                Direction::DeviceToCloud,
                now_ms(),
            );
            let _ = writer.send(Frame::text(text)).await;
        });
    }

    async fn relay_notification(&self, method: String, params: Option<Value>) {
        if protocol::check_method_name(&method).is_err() {
            tracing::warn!(%method, "notification with a bad method name; dropped");
            return;
        }
        let message = Message::Notification {
            method: method.clone(),
            params,
        };
        let payload = Value::Object(message.to_value()).to_string();
        if let Err(error) = self
            .nats
            .publish(
                format!("{}{method}", protocol::nats::RPC_PREFIX),
                payload.into(),
            )
            .await
        {
            tracing::warn!(%error, %method, "cannot relay notification");
        }
    }

    async fn send_outbound(&mut self, outbound: Outbound) {
        match outbound {
            Outbound::Call {
                method,
                params,
                reply,
            } => {
                self.next_call += 1;
                let id = format!("d-{}", self.next_call);
                self.in_flight.retain(|_, waiting| !waiting.is_closed());
                self.in_flight.insert(id.clone(), reply);
                self.send(&Message::Request {
                    id: id.into(),
                    method,
                    params,
                })
                .await;
            }
            Outbound::Notify { method, params } => {
                self.send(&Message::Notification { method, params }).await;
            }
        }
    }

    /// Logs and counts a refusal; a refused request gets a signed error.
    async fn refuse(&self, refusal: &Refusal, request_id: Option<Value>) {
        tracing::warn!(reason = refusal.reason(), %refusal, "refused a frame from the cloud");
        self.stats.count_refusal(refusal.reason());
        if let Some(id) = request_id {
            self.send(&Message::error(id, RpcError::refused(refusal)))
                .await;
        }
    }

    async fn send(&self, message: &Message) {
        let text = self.config.signer.sign_to_text(
            message,
            &self.config.cloud_id,
            Direction::DeviceToCloud,
            now_ms(),
        );
        let _ = self.writer.send(Frame::text(text)).await;
    }

    async fn close(&self, code: CloseCode, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: reason.to_owned().into(),
        };
        let _ = self.writer.send(Frame::Close(Some(frame))).await;
    }

    fn closed(&self, reason: &str) -> SessionEnd {
        SessionEnd::Closed {
            authenticated: matches!(self.stage, Stage::Pending | Stage::Live),
            reason: reason.to_owned(),
        }
    }

    fn clear_live(&self) {
        *self.live.lock().expect("live link lock") = None;
    }

    /// Leaves the live link and fails every call still in flight at once.
    fn end(&mut self) {
        self.clear_live();
        for (_, waiting) in self.in_flight.drain() {
            let _ = waiting.send(Err(RpcError::new(
                ErrorCode::Unavailable,
                "connection to the cloud closed while the call was in flight",
            )));
        }
    }
}
