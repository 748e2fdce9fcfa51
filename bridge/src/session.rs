//! One WebSocket connection to the cloud: the authentication handshake, then
//! relaying verified cloud requests to workers and device calls up to the
//! cloud. What a frame must pass, and how a refusal is answered, is the
//! protocol's [`Peer`]; this is its I/O.

use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use protocol::auth::{self, AuthStatus, AuthenticateParams, Challenge, StatusReport};
use protocol::cloud_keys::{
    DistrustCloudKey, TrustCloudKey, TrustedCloudKeys, DISTRUST_CLOUD_KEY, TRUST_CLOUD_KEY,
};
use protocol::keys::{self, PrivateKey};
use protocol::nats::{LinkState, Relayed};
use protocol::rotation::{self, RotateKeyParams, Rotated};
use protocol::{
    nonce_text, now_ms, random_nonce, CallTable, ErrorCode, Message, Peer, Refused, ReplayGuard,
    RpcError, Signer, Verified,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::cloud_trust::CloudTrust;
use crate::config::BridgeConfig;
use crate::liveness::{Due, Liveness};
use crate::outbound::{CallReply, LiveLink, Outbound, RotationReply};
use crate::relay::call_worker;
use crate::rotation::DeviceIdentity;
use crate::stats::BridgeStats;
use crate::status::announce;

/// Prefix of the authentication request's id, the only request sent before
/// going live. The rest is random, so that only the cloud's answer to this
/// very request is taken: a recorded answer names another id.
const AUTH_REQUEST_PREFIX: &str = "auth-";
/// Prefix of the ids of device → cloud calls.
const CALL_PREFIX: &str = "d-";
/// Frames queued for the socket writer; senders wait when it is full.
const WRITE_QUEUE: usize = 256;
/// Device → cloud calls and notifications queued for this session.
pub const UPLINK_QUEUE: usize = 256;

/// How a session ended, which decides how long to wait before the next.
#[derive(Debug)]
pub enum SessionEnd {
    Closed {
        authenticated: bool,
        reason: String,
    },
    /// The cloud has another key registered for this device id.
    KeyMismatch(String),
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
    /// The bridge's replay guard, kept across connections.
    guard: &'a Mutex<ReplayGuard>,
    stats: &'a BridgeStats,
    live: &'a LiveLink,
    keys: &'a Keys,
    /// The key rotation in flight on this connection, if any: waiting for the
    /// cloud's answer, to finish it. It ends with the connection (as with a
    /// crash, the next connection finds out where the rotation stands).
    rotation: Option<AbortOnDropHandle<()>>,
    /// This end of the connection; shared with the tasks answering relayed
    /// requests.
    peer: Arc<Peer>,
    stage: Stage,
    writer: mpsc::Sender<Frame>,
    uplink: mpsc::Sender<Outbound>,
    /// Device → cloud calls awaiting the cloud's response.
    calls: CallTable<CallReply>,
    /// This connection's authentication request id (see [`AUTH_REQUEST_PREFIX`]).
    auth_request_id: String,
}

/// A rotation sent to the cloud, waiting for its answer.
struct Rotation {
    peer: Arc<Peer>,
    identity: Arc<DeviceIdentity>,
    next: PrivateKey,
    timeout: std::time::Duration,
}

/// Once the cloud confirms, signs with the new key on this connection and
/// makes it the key file; once the cloud refuses, forgets `.next` (the cloud
/// kept the old key). Without an answer `.next` is kept: the cloud may have
/// switched or not, which the next connection finds out.
async fn finish_rotation(
    rotation: Rotation,
    answered: oneshot::Receiver<Result<Value, RpcError>>,
    reply: Option<RotationReply>,
) {
    let Rotation {
        peer,
        identity,
        next,
        timeout,
    } = rotation;
    let expected = keys::fingerprint(&next.verifying_key());
    let outcome = match tokio::time::timeout(timeout, answered).await {
        Ok(Ok(Ok(result))) => match Rotated::read(result) {
            Ok(rotated) if rotated.fingerprint == expected => {
                let signer = Signer::new(peer.signer().id(), next);
                peer.set_signer(Arc::new(signer.clone()));
                match identity.rotated(signer) {
                    Ok(()) => {
                        tracing::info!(fingerprint = %expected, "device key rotated");
                        Ok(expected)
                    }
                    Err(error) => {
                        // Recovered from on the next connection: the key file
                        // is refused, and .next is tried.
                        tracing::error!(%error, "the cloud has the new key, but it could not replace the key file");
                        Err(RpcError::new(ErrorCode::InternalError, error.to_string()))
                    }
                }
            }
            other => Err(RpcError::new(
                ErrorCode::InternalError,
                format!("the cloud answered the rotation unexpectedly: {other:?}"),
            )),
        },
        Ok(Ok(Err(error))) => {
            tracing::warn!(error = %error.message, data = ?error.data, "the cloud refused the key rotation; the old key stays");
            if let Some(path) = identity.next_file() {
                let _ = std::fs::remove_file(path);
            }
            Err(error)
        }
        Ok(Err(_closed)) => Err(RpcError::new(
            ErrorCode::Unavailable,
            "connection to the cloud closed during the rotation; it resumes on the next",
        )),
        Err(_elapsed) => Err(RpcError::new(
            ErrorCode::TimedOut,
            "the cloud did not answer the rotation in time; it resumes on the next connection",
        )),
    };
    if let Some(reply) = reply {
        let _ = reply.send(outcome);
    }
}

/// The keys, kept across connections: this device's own, and the cloud's
/// it trusts.
pub(crate) struct Keys {
    pub identity: Arc<DeviceIdentity>,
    pub trust: CloudTrust,
}

/// Connects, authenticates and serves until the connection ends.
pub(crate) async fn run_session(
    config: &BridgeConfig,
    keys: &Keys,
    nats: &async_nats::Client,
    guard: &Mutex<ReplayGuard>,
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
        keys,
        rotation: None,
        peer: Arc::new(config.peer(keys.identity.signer(), keys.trust.keys())),
        stage: Stage::AwaitChallenge,
        writer,
        uplink,
        calls: CallTable::new(CALL_PREFIX),
        auth_request_id: format!("{AUTH_REQUEST_PREFIX}{:016x}", rand::random::<u64>()),
    };

    let mut liveness = Liveness::start(config.ping_interval, config.connect_timeout);

    let end = loop {
        let authenticated = matches!(session.stage, Stage::Pending | Stage::Live);
        if authenticated {
            liveness.authenticated();
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                session.close(CloseCode::Away, "bridge shutting down").await;
                break SessionEnd::Shutdown;
            }
            frame = stream.next() => {
                liveness.heard();
                match frame {
                    Some(Ok(Frame::Text(text))) => {
                        if let Some(end) = session.on_text(text.as_str()).await {
                            break end;
                        }
                    }
                    Some(Ok(Frame::Binary(_))) => session.refuse(session.peer.refuse_binary(now_ms())).await,
                    Some(Ok(Frame::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        break if code == protocol::close_code::REJECTED {
                            SessionEnd::Rejected(reason)
                        } else if code == protocol::close_code::KEY_MISMATCH {
                            SessionEnd::KeyMismatch(reason)
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
            due = liveness.due() => match due {
                Due::Ping => {
                    let _ = session.writer.send(Frame::Ping(Default::default())).await;
                }
                Due::HandshakeTimedOut => {
                    session.close(CloseCode::Policy, "authentication timed out").await;
                    break SessionEnd::Closed { authenticated, reason: due.reason().into() };
                }
                Due::CloudSilent => break SessionEnd::Closed { authenticated, reason: due.reason().into() },
            },
        }
    };
    session.end();
    drop(session);
    // Give the writer a moment to flush a close frame, never longer.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write_task).await;
    end
}

impl Session<'_> {
    async fn on_text(&mut self, text: &str) -> Option<SessionEnd> {
        match self.peer.receive(text, now_ms(), Some(self.guard)) {
            Ok(verified) => self.on_message(verified).await,
            Err(refused) => {
                self.refuse(refused).await;
                None
            }
        }
    }

    async fn on_message(&mut self, verified: Verified) -> Option<SessionEnd> {
        let signed_at = verified.meta.timestamp;
        let signed_with = verified.key;
        match (self.stage, verified.message) {
            (Stage::AwaitChallenge, Message::Notification { method, params })
                if method == auth::CHALLENGE =>
            {
                let challenge = match Challenge::read(params) {
                    Ok(challenge) => challenge,
                    Err(error) => {
                        return Some(self.closed(&format!("unreadable auth.challenge: {error}")))
                    }
                };
                let params = AuthenticateParams::new(
                    self.config.device_id(),
                    self.peer.signer().public_key(),
                    &challenge.challenge,
                    env!("CARGO_PKG_VERSION"),
                )
                .trusting(&self.peer.remote_keys());
                let request =
                    params.request(self.auth_request_id.clone(), &self.config.auth_method);
                self.send(&request).await;
                self.stage = Stage::AwaitAuthResult;
                None
            }
            (Stage::AwaitAuthResult, Message::Response { id, result })
                if id.as_str() == Some(self.auth_request_id.as_str()) =>
            {
                // Nothing the cloud signed before this answer is heard on this
                // connection, so frames recorded on an earlier one (even
                // before a restart of the bridge, whose replay guard is then
                // empty) are refused.
                self.peer.authenticated(signed_at);
                match result {
                    Ok(result) => {
                        let report = StatusReport::read(Some(result));
                        if report.is_ok() {
                            self.keys.identity.authenticated();
                        }
                        self.on_status(report).await
                    }
                    Err(error) => {
                        let reason = format!("authentication refused: {}", error.message);
                        let mismatch = error
                            .data
                            .as_ref()
                            .is_some_and(|data| data["reason"] == "key_mismatch");
                        Some(match mismatch {
                            true => SessionEnd::KeyMismatch(reason),
                            false => self.closed(&reason),
                        })
                    }
                }
            }
            (Stage::Pending | Stage::Live, Message::Notification { method, params })
                if method == auth::STATUS =>
            {
                self.on_status(StatusReport::read(params)).await
            }
            (Stage::Live, Message::Request { id, method, .. })
                if method == rotation::ROTATE_KEY_REQUIRED =>
            {
                let answer = match self.keys.identity.rotatable() {
                    true => Ok(json!({ "status": "rotating" })),
                    false => Err(RpcError::new(
                        ErrorCode::Unavailable,
                        "this bridge has no key file to rotate",
                    )),
                };
                let rotating = answer.is_ok();
                self.send(&Message::Response { id, result: answer }).await;
                if rotating {
                    tracing::info!("the cloud requires a new device key; rotating");
                    self.rotate_key(None).await;
                }
                None
            }
            (Stage::Live, Message::Request { id, method, params })
                if method == TRUST_CLOUD_KEY || method == DISTRUST_CLOUD_KEY =>
            {
                let result = self.change_cloud_trust(&method, params.as_ref(), &signed_with);
                self.send(&Message::Response { id, result }).await;
                None
            }
            (Stage::Live, Message::Request { id, method, params }) => {
                self.relay_request(id, method, params);
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
                self.relay_notification(&method, params).await;
                None
            }
            (_, Message::Response { id, result }) => {
                match self.calls.answer(&id) {
                    Some(waiting) => {
                        let _ = waiting.send(result);
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

    async fn on_status(&mut self, report: Result<StatusReport, String>) -> Option<SessionEnd> {
        let status = match report {
            Ok(report) => report.status,
            Err(error) => return Some(self.closed(&format!("unreadable auth status: {error}"))),
        };
        let device_id = self.config.device_id();
        match status {
            AuthStatus::Accepted => {
                if self.stage != Stage::Live {
                    self.stage = Stage::Live;
                    *self.live.lock().expect("live link lock") = Some(self.uplink.clone());
                    tracing::info!(device_id, "accepted by the cloud; live");
                    announce(self.nats, self.config, LinkState::Live).await;
                    if self.keys.identity.has_next() {
                        tracing::info!("a key rotation was begun and not finished; resuming it");
                        self.rotate_key(None).await;
                    }
                }
                None
            }
            AuthStatus::Pending => {
                self.stage = Stage::Pending;
                self.clear_live();
                tracing::info!(
                    device_id,
                    fingerprint = %keys::fingerprint(&self.peer.signer().public_key()),
                    "key is pending approval by an operator"
                );
                announce(self.nats, self.config, LinkState::Pending).await;
                None
            }
            AuthStatus::Rejected => {
                Some(SessionEnd::Rejected("device rejected by the cloud".into()))
            }
        }
    }

    /// Trusts one more cloud key, or one less, as the cloud asks in a
    /// request signed with `signed_with` (see [`CloudTrust`]), on this
    /// connection and on the next ones.
    fn change_cloud_trust(
        &self,
        method: &str,
        params: Option<&Value>,
        signed_with: &protocol::keys::PublicKey,
    ) -> Result<Value, RpcError> {
        let invalid = |message: String| RpcError::new(ErrorCode::InvalidParams, message);
        let (status, trusted) = if method == TRUST_CLOUD_KEY {
            let TrustCloudKey { key } = TrustCloudKey::read(params).map_err(invalid)?;
            let trusted = self.keys.trust.trust(key)?;
            self.peer.trust_remote_key(key);
            ("trusted", trusted)
        } else {
            let DistrustCloudKey { fingerprint } =
                DistrustCloudKey::read(params).map_err(invalid)?;
            let before = self.keys.trust.keys();
            let trusted = self.keys.trust.distrust(&fingerprint, signed_with)?;
            for gone in before.iter().filter(|key| !trusted.contains(key)) {
                self.peer.distrust_remote_key(gone);
            }
            ("distrusted", trusted)
        };
        Ok(TrustedCloudKeys::new(status, &trusted).to_value())
    }

    /// Relays in its own task so that a slow worker never blocks the socket.
    fn relay_request(&self, id: Value, method: String, params: Option<Value>) {
        let nats = self.nats.clone();
        let writer = self.writer.clone();
        let peer = self.peer.clone();
        let timeout = self.config.worker_timeout;
        let max_reply_bytes = self.config.max_frame_bytes;
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = match Relayed::request(peer.remote_id(), id.clone(), &method, params) {
                Ok(request) => call_worker(&nats, request, timeout, max_reply_bytes).await,
                Err(refusal) => Err(RpcError::refused(&refusal)),
            };
            tracing::info!(%method, %id, ok = outcome.is_ok(), elapsed_ms = started.elapsed().as_millis() as u64, "relayed cloud request");
            let response = Message::Response {
                id,
                result: outcome,
            };
            let _ = writer
                .send(Frame::text(peer.sign(&response, now_ms())))
                .await;
        });
    }

    async fn relay_notification(&self, method: &str, params: Option<Value>) {
        let Ok(notification) = Relayed::notification(method, params) else {
            tracing::warn!(%method, "notification with a bad method name; dropped");
            return;
        };
        let Relayed {
            subject, payload, ..
        } = notification;
        if let Err(error) = self.nats.publish(subject, payload.into()).await {
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
                // Calls whose requester gave up waiting are forgotten.
                self.calls.forget_if(CallReply::is_closed);
                // The table closes only when the session ends.
                if let Some(id) = self.calls.start(reply) {
                    self.send(&Message::Request {
                        id: id.into(),
                        method,
                        params,
                    })
                    .await;
                }
            }
            Outbound::Notify { method, params } => {
                self.send(&Message::Notification { method, params }).await;
            }
            Outbound::RotateKey { reply } => self.rotate_key(reply).await,
        }
    }

    /// Sends `device.rotate_key` for the key in `.next` (made now if there
    /// is none), and finishes the rotation in a task of its own once the
    /// cloud answers (see [`finish_rotation`]), so that the connection goes
    /// on meanwhile.
    async fn rotate_key(&mut self, reply: Option<RotationReply>) {
        let refuse = |reply: Option<RotationReply>, error: RpcError| {
            tracing::warn!(error = %error.message, "key not rotated");
            if let Some(reply) = reply {
                let _ = reply.send(Err(error));
            }
        };
        if self.stage != Stage::Live {
            let error = RpcError::new(ErrorCode::NotAccepted, "not live on the cloud yet");
            return refuse(reply, error);
        }
        if !self.keys.identity.rotatable() {
            let error = RpcError::new(
                ErrorCode::Unavailable,
                "this bridge has no key file to rotate",
            );
            return refuse(reply, error);
        }
        if self
            .rotation
            .as_ref()
            .is_some_and(|task| !task.is_finished())
        {
            let error = RpcError::new(
                ErrorCode::Unavailable,
                "a key rotation is in progress already",
            );
            return refuse(reply, error);
        }
        let next = match self.keys.identity.next_key() {
            Ok(next) => next,
            Err(error) => {
                let error = RpcError::new(
                    ErrorCode::InternalError,
                    format!("cannot write the new key: {error}"),
                );
                return refuse(reply, error);
            }
        };
        let (answer, answered) = oneshot::channel();
        self.calls.forget_if(CallReply::is_closed);
        let Some(call_id) = self.calls.start(answer) else {
            let error = RpcError::new(ErrorCode::Unavailable, "connection to the cloud closed");
            return refuse(reply, error);
        };
        // The proof names this request's nonce, so it is drawn here.
        let nonce = random_nonce();
        let current = self.peer.signer().public_key();
        let params = RotateKeyParams::new(
            self.config.device_id(),
            &current,
            &next,
            &nonce_text(&nonce),
        );
        let request = self
            .peer
            .sign_with_nonce(&params.request(call_id), nonce, now_ms());
        let _ = self.writer.send(Frame::text(request)).await;
        let finish = finish_rotation(
            Rotation {
                peer: self.peer.clone(),
                identity: self.keys.identity.clone(),
                next,
                timeout: self.config.cloud_call_timeout,
            },
            answered,
            reply,
        );
        self.rotation = Some(AbortOnDropHandle::new(tokio::spawn(finish)));
    }

    /// Logs and counts a refusal, and sends its signed answer, if it has one.
    async fn refuse(&self, refused: Refused) {
        let Refused { refusal, reply } = refused;
        tracing::warn!(reason = refusal.reason(), %refusal, "refused a frame from the cloud");
        self.stats.count_refusal(refusal.reason());
        if let Some(reply) = reply {
            let _ = self.writer.send(Frame::text(reply)).await;
        }
    }

    async fn send(&self, message: &Message) {
        let text = self.peer.sign(message, now_ms());
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
        for waiting in self.calls.close() {
            let _ = waiting.send(Err(RpcError::new(
                ErrorCode::Unavailable,
                "connection to the cloud closed while the call was in flight",
            )));
        }
    }
}
