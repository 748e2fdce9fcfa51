//! A fake device: a raw WebSocket client playing a device so that the cloud
//! can be tested alone. What it hears is checked, and what it sends signed, by
//! the protocol's [`Peer`], as the bridge does; a [`FrameBuilder`] makes the
//! frames a real bridge never would. The real bridge is tested in its own
//! crate and in the end-to-end scenarios.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::auth::{self, AuthenticateParams, Challenge};
use protocol::keys::{self, PrivateKey, PublicKey};
use protocol::rotation::RotateKeyParams;
use protocol::{
    nonce_text, now_ms, parse_frame, random_nonce, verify, Direction, Expectation, Message, Peer,
    Refusal, Remote, RpcError, Side, Signer, ANY_AUDIENCE, DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_SKEW_MS,
};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::frame::{FrameBuilder, SignedFrame};
use crate::{CloudEndpoint, PROMPTLY};

/// How a device WebSocket upgrade was refused: the HTTP status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedUpgrade {
    pub status: u16,
    pub body: String,
}

/// One device connection, seen from the device's side, its challenge read.
pub struct FakeDevice {
    pub id: String,
    pub key: PrivateKey,
    /// The challenge the cloud sent on this connection.
    pub challenge: String,
    /// This device talking to the cloud.
    peer: Peer,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl FakeDevice {
    /// Opens a device WebSocket to `cloud` for `id` and reads the challenge;
    /// the refused upgrade otherwise. With `forwarded_for`, the request
    /// carries `X-Forwarded-For` as a reverse proxy would send it.
    pub async fn connect(
        cloud: &CloudEndpoint,
        id: &str,
        key: PrivateKey,
        forwarded_for: Option<&str>,
    ) -> Result<FakeDevice, RefusedUpgrade> {
        use tokio_tungstenite::tungstenite::Error;
        let mut request = cloud.url.as_str().into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(protocol::SUBPROTOCOL),
        );
        if let Some(forwarded_for) = forwarded_for {
            request.headers_mut().insert(
                "X-Forwarded-For",
                HeaderValue::from_str(forwarded_for).unwrap(),
            );
        }
        let ws = match tokio::time::timeout(PROMPTLY, tokio_tungstenite::connect_async(request))
            .await
            .expect("the upgrade was not answered in time")
        {
            Ok((ws, _)) => ws,
            Err(Error::Http(response)) => {
                let body = response
                    .body()
                    .as_ref()
                    .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                    .unwrap_or_default();
                return Err(RefusedUpgrade {
                    status: response.status().as_u16(),
                    body,
                });
            }
            Err(e) => panic!("device WebSocket upgrade failed: {e}"),
        };
        let peer = Side::device(Arc::new(Signer::new(id, key.clone()))).peer(Remote {
            id: cloud.cloud_id.clone(),
            key: cloud.public_key,
        });
        let mut device = FakeDevice {
            id: id.to_string(),
            key,
            challenge: String::new(),
            peer,
            ws,
            next_id: 0,
        };
        device.challenge = match device.recv().await {
            Message::Notification { method, params } if method == auth::CHALLENGE => {
                Challenge::read(params)
                    .unwrap_or_else(|error| panic!("unreadable auth.challenge: {error}"))
                    .challenge
            }
            other => panic!("expected auth.challenge, got {other:?}"),
        };
        Ok(device)
    }

    pub fn public_key_pem(&self) -> String {
        keys::public_key_to_pem(&self.key.verifying_key())
    }

    pub fn fingerprint(&self) -> String {
        keys::fingerprint(&self.key.verifying_key())
    }

    // ----- building frames -------------------------------------------------

    /// A frame carrying `message`, signed by this device for the cloud, now;
    /// change any of that before [`FrameBuilder::sign`].
    pub fn frame(&self, message: Message) -> FrameBuilder {
        FrameBuilder::new(
            message,
            &self.id,
            self.key.clone(),
            self.peer.remote_id(),
            Direction::DeviceToCloud,
        )
    }

    /// `message` signed as this device for the cloud, to be tampered with or
    /// sent more than once.
    pub fn signed(&self, message: &Message) -> SignedFrame {
        self.frame(message.clone()).sign()
    }

    pub fn new_request_id(&mut self) -> String {
        self.next_id += 1;
        format!("d-{}", self.next_id)
    }

    // ----- sending -------------------------------------------------------

    pub async fn send(&mut self, frame: &SignedFrame) {
        self.send_text(frame.text()).await;
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(WsMessage::text(text.into())).await.unwrap();
    }

    /// Sends `message` signed as this device for the cloud, as a bridge would.
    pub async fn send_message(&mut self, message: &Message) {
        let text = self.peer.sign(message, now_ms());
        self.send_text(text).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(WsMessage::binary(bytes)).await.unwrap();
    }

    // ----- the handshake -------------------------------------------------

    /// Answers the challenge; returns the cloud's result (or error) value.
    pub async fn authenticate(&mut self) -> Value {
        self.authenticate_reporting("test-0.1").await
    }

    /// Answers the challenge reporting `bridge_version`; returns the cloud's
    /// result (or error) value.
    pub async fn authenticate_reporting(&mut self, bridge_version: &str) -> Value {
        let params = AuthenticateParams::new(
            &self.id,
            self.key.verifying_key(),
            &self.challenge,
            bridge_version,
        );
        self.authenticate_with(params).await
    }

    /// Answers the challenge saying it trusts `cloud_keys` (as a bridge
    /// does); returns the cloud's result (or error) value.
    pub async fn authenticate_trusting(&mut self, cloud_keys: &[PublicKey]) -> Value {
        let params = AuthenticateParams::new(
            &self.id,
            self.key.verifying_key(),
            &self.challenge,
            "test-0.1",
        )
        .trusting(cloud_keys);
        self.authenticate_with(params).await
    }

    /// Hears the cloud only when it signs with one of `keys` from now on.
    pub fn hear_cloud_keys(&self, keys: &[PublicKey]) {
        for key in keys.iter().rev() {
            self.peer.trust_remote_key(*key);
        }
        for key in self.peer.remote_keys() {
            if !keys.contains(&key) {
                self.peer.distrust_remote_key(&key);
            }
        }
    }

    async fn authenticate_with(&mut self, params: AuthenticateParams) -> Value {
        let id = self.new_request_id();
        let request = params.request(id.as_str(), auth::DEFAULT_AUTHENTICATE);
        self.send_message(&request).await;
        match self.recv_for_me_or_anyone().await {
            Message::Response {
                id: answered,
                result,
            } => {
                assert_eq!(answered, json!(id));
                result.unwrap_or_else(|e| serde_json::to_value(e).unwrap())
            }
            other => panic!("expected the auth response, got {other:?}"),
        }
    }

    // ----- receiving -----------------------------------------------------

    /// The next cloud message, verified as a device would.
    pub async fn recv(&mut self) -> Message {
        let text = self.expect_text().await;
        self.hear(&text)
    }

    /// The next cloud message, verified, signed for this device or for
    /// anyone. The cloud refuses an authentication request whose params it
    /// cannot read before it knows who connected, so it signs that refusal
    /// for anyone (`*`); a peer accepts `*` on the challenge only, so such a
    /// refusal is verified here with a plain [`verify`] for `*`.
    pub async fn recv_for_me_or_anyone(&mut self) -> Message {
        let text = self.expect_text().await;
        let frame = parse_frame(&text, DEFAULT_MAX_FRAME_BYTES)
            .unwrap_or_else(|refusal| refused_by_device(refusal, &text));
        let for_anyone = frame
            .get("meta")
            .is_some_and(|meta| meta["audience_id"] == ANY_AUDIENCE);
        if !for_anyone {
            return self.hear(&text);
        }
        let cloud_keys = self.peer.remote_keys();
        let expect = Expectation {
            signer_id: self.peer.remote_id(),
            keys: &cloud_keys,
            audience_id: ANY_AUDIENCE,
            direction: Direction::CloudToDevice,
            skew_ms: DEFAULT_SKEW_MS,
            now_ms: now_ms(),
        };
        verify(frame, &expect)
            .unwrap_or_else(|refusal| refused_by_device(refusal, &text))
            .message
    }

    /// The next message from the cloud, or how the connection ended: the
    /// close code, `None` if it ended without one.
    pub async fn recv_or_close(&mut self) -> Result<Message, Option<u16>> {
        let text = self.next_text().await?;
        Ok(self.hear(&text))
    }

    /// The next text frame; fails the test if the connection ended.
    async fn expect_text(&mut self) -> String {
        self.next_text()
            .await
            .unwrap_or_else(|code| panic!("expected a text frame, the connection ended ({code:?})"))
    }

    /// The next text frame, skipping pings; or how the connection ended: the
    /// close code, `None` if it ended without one.
    async fn next_text(&mut self) -> Result<String, Option<u16>> {
        loop {
            let next = tokio::time::timeout(PROMPTLY, self.ws.next())
                .await
                .expect("the cloud sent nothing in time");
            match next {
                Some(Ok(WsMessage::Text(text))) => return Ok(text.as_str().to_owned()),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(WsMessage::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(other)) => panic!("expected a text frame or a close, got {other:?}"),
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// A frame of the cloud's, checked as a device checks it, except for the
    /// replay checks: a fake device acts on nothing it hears.
    fn hear(&self, text: &str) -> Message {
        match self.peer.receive(text, now_ms(), None) {
            Ok(verified) => verified.message,
            Err(refused) => refused_by_device(refused.refusal, text),
        }
    }

    // ----- calls ---------------------------------------------------------

    /// Sends a request and returns the response's result or error.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, RpcError> {
        let id = self.new_request_id();
        self.send_message(&Message::request(id.as_str(), method, params))
            .await;
        self.expect_response(json!(id)).await
    }

    pub async fn expect_response(&mut self, id: Value) -> Result<Value, RpcError> {
        match self.recv().await {
            Message::Response {
                id: answered,
                result,
            } => {
                assert_eq!(answered, id, "response to another id");
                result
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// Expects the signed refusal of a frame, answered with `id`; returns it.
    pub async fn expect_refusal(&mut self, id: Value, reason: &str) -> RpcError {
        let error = self
            .expect_response(id)
            .await
            .expect_err("expected a refusal");
        assert_eq!(error.data, Some(json!({ "reason": reason })), "{error:?}");
        error
    }

    /// Sends `device.rotate_key` to `next`, with the proof signed by
    /// `prover`: `next`'s own key, as a bridge does, or another one, to be
    /// refused. Returns the request's id. Signs with the current key until
    /// [`FakeDevice::use_key`].
    pub async fn send_rotation(&mut self, next: PublicKey, prover: &PrivateKey) -> String {
        let id = self.new_request_id();
        let nonce = random_nonce();
        let current = self.key.verifying_key();
        let mut params = RotateKeyParams::new(&self.id, &current, prover, &nonce_text(&nonce));
        params.public_key_pem = keys::public_key_to_pem(&next);
        params.key = next;
        let text = self
            .peer
            .sign_with_nonce(&params.request(id.as_str()), nonce, now_ms());
        self.send_text(text).await;
        id
    }

    /// Signs with `key` from now on, as a bridge does once its rotation is
    /// confirmed.
    pub fn use_key(&mut self, key: PrivateKey) {
        self.peer
            .set_signer(Arc::new(Signer::new(self.id.clone(), key.clone())));
        self.key = key;
    }

    /// `cloud.ping` works on this connection.
    pub async fn ping_cloud(&mut self) {
        let result = self.call("cloud.ping", json!({})).await.unwrap();
        assert_eq!(result["pong"], json!(true));
    }

    pub async fn expect_status_notification(&mut self, status: &str) {
        match self.recv().await {
            Message::Notification { method, params } => {
                assert_eq!(method, auth::STATUS);
                assert_eq!(params, Some(json!({ "status": status })));
            }
            other => panic!("expected auth.status, got {other:?}"),
        }
    }

    // ----- the end of the connection -------------------------------------

    /// Reads until the cloud closes; returns the close code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let next = tokio::time::timeout(PROMPTLY, self.ws.next())
                .await
                .expect("the cloud did not close in time");
            match next {
                Some(Ok(WsMessage::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(WsMessage::Close(None))) | None => panic!("closed without a close code"),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(other)) => panic!("expected a close, got {other:?}"),
                Some(Err(e)) => panic!("socket error instead of a close: {e}"),
            }
        }
    }

    /// Reads until the connection ends: the close code if a close frame
    /// arrived, `None` if the socket just ended.
    pub async fn read_until_closed(&mut self) -> Option<u16> {
        loop {
            let next = tokio::time::timeout(PROMPTLY, self.ws.next())
                .await
                .expect("the connection did not end in time");
            match next {
                Some(Ok(WsMessage::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(other)) => panic!("expected the end, got {other:?}"),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads for `period`, answering pings (tungstenite does so as it reads),
    /// and expects nothing else; returns how many pings came.
    pub async fn answer_pings_for(&mut self, period: Duration) -> usize {
        let deadline = Instant::now() + period;
        let mut pings = 0;
        while let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match next {
                Some(Ok(WsMessage::Ping(_))) => pings += 1,
                other => panic!("expected only pings, got {other:?}"),
            }
        }
        pings
    }

    /// Drops the connection without a close handshake.
    pub fn drop_connection(self) {
        drop(self.ws);
    }
}

fn refused_by_device(refusal: Refusal, text: &str) -> ! {
    panic!("the cloud sent a frame a device refuses ({refusal}): {text}")
}
