//! A fake cloud: a test peer playing the cloud, so that the bridge can be
//! tested alone.
//!
//! This is a test double, not the product: the real cloud (registry, dashboard,
//! REST API) is tested elsewhere, in its own crate and in the end-to-end
//! scenarios. Here a real WebSocket server on `127.0.0.1:0` speaks wire
//! protocol v1 with the `protocol` crate, and hands each connection to the test
//! as a [`DeviceLink`], so that a test can run the handshake step by step
//! (challenge, `device.authenticate`, the status it chooses), then send any
//! frame it likes, correctly signed or deliberately broken, and read what the
//! bridge sends back. What the fake cloud hears is checked, and what it says
//! signed, by the protocol's [`Peer`], as the real cloud does; a
//! [`FrameBuilder`] makes the frames a real cloud never would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::auth::{AuthStatus, AuthenticateParams, Challenge, StatusReport};
use protocol::keys::{self, PrivateKey, PublicKey};
use protocol::{
    now_ms, Direction, Message, Meta, Peer, Refused, Remote, ReplayGuard, RpcError, Side, Signer,
    Verified, ANY_AUDIENCE,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::frame::{FrameBuilder, SignedFrame};
use crate::CloudEndpoint;

/// The cloud's signer id, as the real cloud's default.
pub const CLOUD_ID: &str = "cloud-dashboard";
/// The path the bridge connects to.
pub const DEVICE_PATH: &str = "/ws/device";
/// How long a helper waits for a connection or a frame before failing the test.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The longest bridge version the fake cloud reads, as the real cloud's default.
const MAX_BRIDGE_VERSION_BYTES: usize = 64;

/// The listening fake cloud. Dropping it stops listening and cuts every
/// connection it accepted.
pub struct FakeCloud {
    /// Kept for the frames a test forges.
    key: PrivateKey,
    /// The cloud's end of every connection.
    side: Side,
    addr: SocketAddr,
    /// WebSocket connections accepted so far, over restarts.
    accepted: Arc<AtomicUsize>,
    arrivals_tx: mpsc::UnboundedSender<DeviceLink>,
    /// Accepted connections the test has not taken yet.
    arrivals: mpsc::UnboundedReceiver<DeviceLink>,
    /// Cancelled to stop listening and cut the connections of this run.
    running: CancellationToken,
}

impl FakeCloud {
    /// Listens on a free port of 127.0.0.1 with a fresh cloud key.
    pub async fn start() -> FakeCloud {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake cloud");
        let addr = listener.local_addr().expect("fake cloud address");
        let (arrivals_tx, arrivals) = mpsc::unbounded_channel();
        let key = keys::generate();
        let cloud = FakeCloud {
            side: Side::cloud(Arc::new(Signer::new(CLOUD_ID, key.clone()))),
            key,
            addr,
            accepted: Arc::default(),
            arrivals_tx,
            arrivals,
            running: CancellationToken::new(),
        };
        cloud.listen(listener);
        cloud
    }

    /// `ws://127.0.0.1:<port>/ws/device`.
    pub fn url(&self) -> String {
        format!("ws://{}{DEVICE_PATH}", self.addr)
    }

    /// What a bridge needs to reach this cloud.
    pub fn endpoint(&self) -> CloudEndpoint {
        CloudEndpoint {
            url: self.url(),
            cloud_id: CLOUD_ID.to_owned(),
            public_key: self.key.verifying_key(),
        }
    }

    /// WebSocket connections accepted so far (including across restarts).
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The next connection; fails the test if none arrives within [`DEADLINE`].
    pub async fn accept(&mut self) -> DeviceLink {
        self.accept_within(DEADLINE)
            .await
            .unwrap_or_else(|| panic!("the bridge did not connect within {DEADLINE:?}"))
    }

    /// The next connection, if one arrives within `wait`.
    pub async fn accept_within(&mut self, wait: Duration) -> Option<DeviceLink> {
        tokio::time::timeout(wait, self.arrivals.recv())
            .await
            .ok()
            .flatten()
    }

    /// Accepts the next connection and runs the handshake answering `status`.
    pub async fn connect_device(&mut self, status: AuthStatus) -> DeviceLink {
        let mut link = self.accept().await;
        link.handshake(status).await;
        link
    }

    /// Stops as a crashed cloud would (listener closed, every connection cut
    /// without a close frame), then listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.running = CancellationToken::new();
        let give_up = tokio::time::Instant::now() + DEADLINE;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(error) if tokio::time::Instant::now() < give_up => {
                    tracing::debug!(%error, "port not free yet; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("cannot listen again on {}: {error}", self.addr),
            }
        };
        self.listen(listener);
    }

    /// Stops listening and cuts every connection without a close frame, as a
    /// crashed cloud would; the port stays free until [`FakeCloud::restart`].
    pub fn stop(&mut self) {
        self.running.cancel();
        while self.arrivals.try_recv().is_ok() {}
    }

    fn listen(&self, listener: TcpListener) {
        let running = self.running.clone();
        let (side, key) = (self.side.clone(), self.key.clone());
        let accepted = self.accepted.clone();
        let arrivals = self.arrivals_tx.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = running.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(error) => {
                            tracing::warn!(%error, "fake cloud cannot accept");
                            continue;
                        }
                    },
                };
                let (side, key) = (side.clone(), key.clone());
                let (accepted, arrivals) = (accepted.clone(), arrivals.clone());
                let kill = running.child_token();
                tokio::spawn(async move {
                    match upgrade(stream).await {
                        Ok(_) if kill.is_cancelled() => {} // stopped meanwhile
                        Ok(socket) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            let _ = arrivals.send(DeviceLink::new(socket, side, key, kill));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "fake cloud refused a WebSocket upgrade")
                        }
                    }
                });
            }
        });
    }
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        self.running.cancel();
    }
}

/// Accepts the upgrade on `/ws/device` only when the client offers the
/// `signed-jsonrpc.v1` subprotocol, and agrees to it.
async fn upgrade(
    stream: TcpStream,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    // The error type is the one tungstenite's `Callback` asks for.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, mut response: Response| {
        let offered = request
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == protocol::SUBPROTOCOL);
        if request.uri().path() != DEVICE_PATH || !offered {
            let mut refusal = ErrorResponse::new(Some(format!(
                "expected {DEVICE_PATH} with subprotocol {}",
                protocol::SUBPROTOCOL
            )));
            *refusal.status_mut() = StatusCode::BAD_REQUEST;
            return Err(refusal);
        }
        response.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(protocol::SUBPROTOCOL),
        );
        Ok(response)
    };
    tokio_tungstenite::accept_hdr_async(stream, check).await
}

/// Moves frames between the socket and the test, so that pings are answered
/// while the test is busy elsewhere; returning drops the socket without a
/// close frame. Once `silence` is cancelled it neither reads nor writes, and
/// holds the connection open until killed: a cloud that hangs.
async fn pump(
    mut socket: WebSocketStream<TcpStream>,
    to_test: mpsc::UnboundedSender<Frame>,
    mut from_test: mpsc::UnboundedReceiver<Frame>,
    silence: CancellationToken,
    kill: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = kill.cancelled() => return,
            _ = silence.cancelled() => {
                kill.cancelled().await;
                return;
            }
            frame = socket.next() => match frame {
                Some(Ok(frame)) => { let _ = to_test.send(frame); }
                Some(Err(_)) | None => return,
            },
            frame = from_test.recv() => match frame {
                Some(frame) => if socket.send(frame).await.is_err() { return },
                None => return,
            },
        }
    }
}

/// The `device.authenticate` request the bridge sent, verified.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    pub id: Value,
    pub method: String,
    pub params: AuthenticateParams,
    pub meta: Meta,
}

/// One WebSocket connection from a bridge, seen from the cloud's side.
/// Dropping it cuts the connection without a close frame.
pub struct DeviceLink {
    side: Side,
    /// Signs the frames a test forges.
    cloud_key: PrivateKey,
    /// The cloud talking to the device, once its authentication request told who it is.
    peer: Option<Peer>,
    /// Proves the bridge never reuses a nonce.
    guard: Mutex<ReplayGuard>,
    incoming: mpsc::UnboundedReceiver<Frame>,
    outgoing: mpsc::UnboundedSender<Frame>,
    silence: CancellationToken,
    kill: CancellationToken,
}

impl DeviceLink {
    fn new(
        socket: WebSocketStream<TcpStream>,
        side: Side,
        cloud_key: PrivateKey,
        kill: CancellationToken,
    ) -> Self {
        let (to_test, incoming) = mpsc::unbounded_channel();
        let (outgoing, from_test) = mpsc::unbounded_channel();
        let silence = CancellationToken::new();
        tokio::spawn(pump(
            socket,
            to_test,
            from_test,
            silence.clone(),
            kill.clone(),
        ));
        DeviceLink {
            side,
            cloud_key,
            peer: None,
            guard: Mutex::new(ReplayGuard::new(protocol::DEFAULT_SKEW_MS, 100_000)),
            incoming,
            outgoing,
            silence,
            kill,
        }
    }

    // ----- the handshake -------------------------------------------------

    /// Challenge, `device.authenticate`, and the answer `status` (for
    /// `Rejected`, the answer and then close code 4001).
    pub async fn handshake(&mut self, status: AuthStatus) -> AuthRequest {
        let challenge = self.send_challenge();
        let request = self.recv_authenticate(&challenge).await;
        self.answer_authenticate(&request, status);
        request
    }

    /// Sends the signed `auth.challenge` (audience `*`) and returns the challenge.
    pub fn send_challenge(&self) -> String {
        let challenge = Challenge::random();
        self.send_text(
            self.side
                .sign(&challenge.notification(), ANY_AUDIENCE, now_ms()),
        );
        challenge.challenge
    }

    /// Reads the bridge's `device.authenticate` request and verifies it as the
    /// cloud does: signed by the key in its params, signer = the device id in
    /// its params, addressed to the cloud, and echoing `challenge`. From then
    /// on this link hears that device, as of the request's timestamp.
    pub async fn recv_authenticate(&mut self, challenge: &str) -> AuthRequest {
        let text = self.recv_text().await;
        let now = now_ms();
        let frame = self
            .side
            .parse(&text, now)
            .unwrap_or_else(|refused| refused_by_cloud(refused, &text));
        // The key to verify with comes from the request itself: proof of possession.
        let params = AuthenticateParams::read(frame.get("params"), MAX_BRIDGE_VERSION_BYTES)
            .unwrap_or_else(|error| panic!("unreadable authenticate params: {error}: {text}"));
        let peer = self.side.peer(Remote {
            id: params.device_id.clone(),
            key: params.key,
        });
        let verified = peer
            .verify(frame, now, Some(&self.guard))
            .unwrap_or_else(|refused| refused_by_cloud(refused, &text));
        let Message::Request { id, method, .. } = verified.message else {
            panic!("expected the authenticate request, got {text}");
        };
        assert_eq!(
            params.challenge.as_deref(),
            Some(challenge),
            "the challenge must be echoed"
        );
        peer.authenticated(verified.meta.timestamp);
        self.peer = Some(peer);
        AuthRequest {
            id,
            method,
            params,
            meta: verified.meta,
        }
    }

    /// Answers the authenticate request with `{"status": status}`; a rejected
    /// device is then cut off with close code 4001.
    pub fn answer_authenticate(&self, request: &AuthRequest, status: AuthStatus) {
        self.send_message(&StatusReport { status }.result(request.id.clone()));
        if status == AuthStatus::Rejected {
            self.close(
                protocol::close_code::REJECTED,
                "device rejected by an operator",
            );
        }
    }

    /// Sends the signed notification `auth.status` `{"status": status}`.
    pub fn send_status(&self, status: AuthStatus) {
        self.send_message(&StatusReport { status }.notification());
    }

    /// The device rotated its key to `key`: heard from now on, and its old
    /// key until the first frame signed with `key` (as the cloud does).
    pub fn device_rotated(&self, key: PublicKey) {
        self.peer().replace_remote_key(key);
    }

    /// The device id learnt in the handshake.
    pub fn device_id(&self) -> &str {
        self.peer().remote_id()
    }

    fn peer(&self) -> &Peer {
        self.peer
            .as_ref()
            .expect("the handshake has not run on this link yet")
    }

    // ----- building frames -------------------------------------------------

    /// A correctly signed cloud → device request, to be sent as is, more
    /// than once, or tampered with.
    pub fn request(&self, id: &str, method: &str, params: Value) -> SignedFrame {
        self.frame(Message::request(id, method, params)).sign()
    }

    /// A frame carrying `message`, signed by this cloud for this device, now;
    /// change any of that before [`FrameBuilder::sign`].
    pub fn frame(&self, message: Message) -> FrameBuilder {
        FrameBuilder::new(
            message,
            CLOUD_ID,
            self.cloud_key.clone(),
            self.device_id(),
            Direction::CloudToDevice,
        )
    }

    // ----- sending -------------------------------------------------------

    pub fn send(&self, frame: &SignedFrame) {
        self.send_text(frame.text());
    }

    /// Sends `message` signed by this cloud for the device, as the cloud would.
    pub fn send_message(&self, message: &Message) {
        self.send_text(self.peer().sign(message, now_ms()));
    }

    pub fn send_text(&self, text: impl Into<String>) {
        self.send_frame(Frame::text(text.into()));
    }

    pub fn send_binary(&self, bytes: impl Into<Vec<u8>>) {
        self.send_frame(Frame::binary(bytes.into()));
    }

    pub fn send_frame(&self, frame: Frame) {
        // The pump is gone only when the connection is; a test then sees it on read.
        let _ = self.outgoing.send(frame);
    }

    /// A signed response to a device → cloud call.
    pub fn respond(&self, id: Value, result: Result<Value, RpcError>) {
        self.send_message(&Message::Response { id, result });
    }

    /// Sends a close frame with `code`; the bridge answers and the link ends.
    pub fn close(&self, code: u16, reason: &str) {
        self.send_frame(Frame::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        })));
    }

    /// Stops reading and writing, pongs included, and keeps the TCP
    /// connection open: a cloud that hangs, or a route that black-holes.
    pub fn go_silent(&self) {
        self.silence.cancel();
    }

    /// Cuts the TCP connection without a close frame, as a crash would.
    pub fn drop_connection(self) {
        self.kill.cancel();
    }

    // ----- receiving -----------------------------------------------------

    /// The next data or close frame (pings and pongs skipped), if one arrives
    /// within `wait`; `None` also when the connection has ended.
    pub async fn next_frame_within(&mut self, wait: Duration) -> Option<Frame> {
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(give_up, self.incoming.recv()).await {
                Ok(Some(Frame::Ping(_) | Frame::Pong(_))) => continue,
                Ok(frame) => return frame,
                Err(_) => return None,
            }
        }
    }

    /// The next text frame, as sent; fails the test on anything else.
    pub async fn recv_text(&mut self) -> String {
        match self.next_frame_within(DEADLINE).await {
            Some(Frame::Text(text)) => text.as_str().to_owned(),
            Some(other) => panic!("expected a text frame from the bridge, got {other:?}"),
            None => panic!("no frame from the bridge within {DEADLINE:?}"),
        }
    }

    /// The next frame from the bridge, which must pass every check of wire
    /// protocol v1 (strict parsing, signature by the device key, signer =
    /// device id, audience = this cloud, direction, timestamp, fresh nonce).
    pub async fn recv(&mut self) -> Verified {
        self.recv_within(DEADLINE)
            .await
            .unwrap_or_else(|| panic!("no frame from the bridge within {DEADLINE:?}"))
    }

    /// As [`DeviceLink::recv`], or `None` if no frame arrives within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Verified> {
        let text = match self.next_frame_within(wait).await? {
            Frame::Text(text) => text.as_str().to_owned(),
            other => panic!("expected a text frame from the bridge, got {other:?}"),
        };
        let verified = self
            .peer()
            .receive(&text, now_ms(), Some(&self.guard))
            .unwrap_or_else(|refused| refused_by_cloud(refused, &text));
        Some(verified)
    }

    /// The next frame, which must be a verified response: its id and outcome.
    pub async fn recv_response(&mut self) -> (Value, Result<Value, RpcError>) {
        match self.recv().await.message {
            Message::Response { id, result } => (id, result),
            other => panic!("expected a response from the bridge, got {other:?}"),
        }
    }

    /// Sends a correctly signed request and returns the outcome of the
    /// response, which must be the next frame and carry the same id.
    pub async fn call(&mut self, id: &str, method: &str, params: Value) -> Result<Value, RpcError> {
        self.send_message(&Message::request(id, method, params));
        let (answered, outcome) = self.recv_response().await;
        assert_eq!(
            answered,
            json!(id),
            "the response must carry the request's id"
        );
        outcome
    }

    /// Waits until the bridge ends the connection; returns its close frame if
    /// it sent one. Data frames on the way are dropped.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        let give_up = tokio::time::Instant::now() + DEADLINE;
        let mut close = None;
        loop {
            match tokio::time::timeout_at(give_up, self.incoming.recv()).await {
                Ok(Some(Frame::Close(frame))) => close = frame,
                Ok(Some(_)) => {}
                Ok(None) => return close,
                Err(_) => panic!("the connection did not end within {DEADLINE:?}"),
            }
        }
    }
}

fn refused_by_cloud(refused: Refused, text: &str) -> ! {
    panic!(
        "the bridge sent a frame the cloud refuses ({}): {text}",
        refused.refusal
    )
}
