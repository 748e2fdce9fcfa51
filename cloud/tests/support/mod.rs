//! Test support: a real cloud on `127.0.0.1:0` with a SQLite file in a
//! tempdir, and a test device.
//!
//! `TestDevice` is a raw tokio-tungstenite client that signs with the protocol
//! crate. It plays a device so that the cloud can be tested alone, including
//! sending frames a real bridge never would; the full bridge is tested in e2e.
#![allow(dead_code)]

pub mod python;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use cloud::{AppState, CloudConfig, Registry};
use futures::{SinkExt, StreamExt};
use protocol::keys::{self, PrivateKey, PublicKey};
use protocol::{parse_frame, verify, Direction, Expectation, Message, Verified};
use serde_json::{json, Map, Value};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen at once.
pub const PROMPTLY: Duration = Duration::from_secs(5);

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `name=value` of the cookie named `name` that `response` sets.
pub fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
}

/// The value of the hidden field `name` in `html`.
pub fn hidden_field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// Polls `condition` until it holds, failing the test after `PROMPTLY`.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PROMPTLY;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct TestCloud {
    pub addr: SocketAddr,
    pub state: AppState,
    pub token: String,
    pub cloud_id: String,
    pub cloud_key: PublicKey,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: TempDir,
}

impl TestCloud {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut CloudConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("keys/cloud_private.pem");
        std::fs::create_dir_all(key_path.parent().unwrap()).unwrap();
        keys::write_private_key(&key_path, &keys::generate()).unwrap();
        let mut config = CloudConfig {
            private_key_path: key_path,
            database_url: format!("sqlite://{}", dir.path().join("data/cloud.db").display()),
            admin_token_file: dir.path().join("data/admin.token"),
            ..CloudConfig::default()
        };
        tweak(&mut config);
        let registry = Registry::open(&config.database_url).await.unwrap();
        let state = AppState::new(config.clone(), registry).await.unwrap();
        let token = std::fs::read_to_string(&config.admin_token_file)
            .unwrap()
            .trim()
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(cloud::serve(listener, state.clone(), shutdown.clone()));
        TestCloud {
            addr,
            cloud_key: state.public_key(),
            state,
            token,
            cloud_id: config.cloud_id,
            http: reqwest::Client::new(),
            shutdown,
            server: Some(server),
            _dir: dir,
        }
    }

    /// Shuts the cloud down as SIGTERM would and waits for `serve` to return.
    pub async fn shut_down(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let server = self.server.take().expect("running");
        tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .expect("shutdown is bounded")
            .unwrap()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/device", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn json(response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        Self::json(response).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        Self::json(response).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .delete(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        Self::json(response).await
    }

    /// The device as `GET /api/v1/devices/{id}` shows it.
    pub async fn device(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/devices/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Opens a connection for `id` with a fresh key and reads the challenge.
    pub async fn connect(&self, id: &str) -> TestDevice {
        self.connect_with_key(id, keys::generate()).await
    }

    pub async fn connect_with_key(&self, id: &str, key: PrivateKey) -> TestDevice {
        TestDevice::open(self, id, key).await
    }

    /// A device that authenticated, was accepted by the operator, and heard so.
    pub async fn accepted_device(&self, id: &str) -> TestDevice {
        let mut device = self.connect(id).await;
        assert_eq!(device.authenticate().await, json!({"status": "pending"}));
        let (status, body) = self
            .post(&format!("/api/v1/devices/{id}/accept"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        device.expect_status_notification("accepted").await;
        device
    }
}

impl Drop for TestCloud {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Plays a device (see the module docs).
pub struct TestDevice {
    pub id: String,
    pub key: PrivateKey,
    pub challenge: String,
    cloud_id: String,
    cloud_key: PublicKey,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl TestDevice {
    async fn open(cloud: &TestCloud, id: &str, key: PrivateKey) -> Self {
        match Self::try_open(cloud, id, key, None).await {
            Ok(device) => device,
            Err(refused) => panic!("device WebSocket upgrade refused: {refused:?}"),
        }
    }

    pub fn public_key_pem(&self) -> String {
        keys::public_key_to_pem(&self.key.verifying_key())
    }

    pub fn fingerprint(&self) -> String {
        keys::fingerprint(&self.key.verifying_key())
    }

    /// Signs as this device for the cloud, as a bridge would.
    pub fn signed(&self, message: &Message) -> Map<String, Value> {
        self.signed_as(
            message,
            &self.key,
            &self.id,
            &self.cloud_id.clone(),
            Direction::DeviceToCloud,
            now_ms(),
        )
    }

    /// Signs with every meta field chosen by the test.
    pub fn signed_as(
        &self,
        message: &Message,
        key: &PrivateKey,
        signer: &str,
        audience: &str,
        direction: Direction,
        timestamp: u64,
    ) -> Map<String, Value> {
        let nonce: [u8; 16] = rand::random();
        protocol::sign(message, key, signer, audience, direction, nonce, timestamp)
    }

    pub fn new_request_id(&mut self) -> String {
        self.next_id += 1;
        format!("d-{}", self.next_id)
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(WsMessage::text(text.into())).await.unwrap();
    }

    pub async fn send_frame(&mut self, frame: Map<String, Value>) {
        self.send_text(Value::Object(frame).to_string()).await;
    }

    pub async fn send_message(&mut self, message: &Message) {
        let frame = self.signed(message);
        self.send_frame(frame).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(WsMessage::binary(bytes)).await.unwrap();
    }

    /// Answers the challenge; returns the cloud's result (or error) value.
    pub async fn authenticate(&mut self) -> Value {
        self.authenticate_reporting("test-0.1").await
    }

    /// The next cloud message, verified as a device would.
    pub async fn recv(&mut self) -> Message {
        let id = self.id.clone();
        self.recv_verified(&id).await.message
    }

    pub async fn recv_verified(&mut self, audience: &str) -> Verified {
        match self.next_text().await {
            Ok(text) => self.verify_from_cloud(&text, audience),
            Err(code) => panic!("expected a text frame, the connection ended ({code:?})"),
        }
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

    /// Verifies a frame of the cloud's, signed for `audience`, as a device would.
    fn verify_from_cloud(&self, text: &str, audience: &str) -> Verified {
        let frame = parse_frame(text, 1 << 22).unwrap();
        let expect = Expectation {
            signer_id: &self.cloud_id,
            key: &self.cloud_key,
            audience_id: audience,
            direction: Direction::CloudToDevice,
            skew_ms: 60_000,
            now_ms: now_ms(),
        };
        verify(frame, &expect).unwrap()
    }

    /// Sends a request and returns the response's result or error.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, protocol::RpcError> {
        let id = self.new_request_id();
        self.send_message(&Message::request(id.as_str(), method, params))
            .await;
        self.expect_response(json!(id)).await
    }

    pub async fn expect_response(&mut self, id: Value) -> Result<Value, protocol::RpcError> {
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
    pub async fn expect_refusal(&mut self, id: Value, reason: &str) -> protocol::RpcError {
        let error = self
            .expect_response(id)
            .await
            .expect_err("expected a refusal");
        assert_eq!(error.data, Some(json!({ "reason": reason })), "{error:?}");
        error
    }

    /// `cloud.ping` works on this connection.
    pub async fn ping_cloud(&mut self) {
        let result = self.call("cloud.ping", json!({})).await.unwrap();
        assert_eq!(result["pong"], json!(true));
    }

    pub async fn expect_status_notification(&mut self, status: &str) {
        match self.recv().await {
            Message::Notification { method, params } => {
                assert_eq!(method, protocol::auth::STATUS);
                assert_eq!(params, Some(json!({ "status": status })));
            }
            other => panic!("expected auth.status, got {other:?}"),
        }
    }

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

// Helpers of the attack tests (tests/attacks.rs): restarting a cloud on its
// data, the database's size on disk, device WebSockets whose upgrade may be
// refused or that come through a proxy, and handshakes with chosen params.

/// How a device WebSocket upgrade was refused: the HTTP status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedUpgrade {
    pub status: u16,
    pub body: String,
}

impl TestCloud {
    /// The directory holding the cloud's key, database and admin token.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> std::path::PathBuf {
        self.dir().join("data/cloud.db")
    }

    /// Bytes the database takes on disk: the file, its WAL and shared memory.
    pub fn database_bytes(&self) -> u64 {
        let path = self.database_path();
        ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let mut name = path.clone().into_os_string();
                name.push(suffix);
                std::fs::metadata(name).map_or(0, |m| m.len())
            })
            .sum()
    }

    /// Shuts the cloud down as SIGTERM would and starts it again on the same
    /// data directory, key and admin token (on the same address if it can be
    /// bound again). Devices must reconnect.
    pub async fn restart(&mut self) {
        self.shut_down().await.unwrap();
        self.state.registry().close().await;
        let config = self.state.config().clone();
        let registry = Registry::open(&config.database_url).await.unwrap();
        let state = AppState::new(config.clone(), registry).await.unwrap();
        let token = std::fs::read_to_string(&config.admin_token_file)
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(token, self.token, "the admin token survives a restart");
        assert_eq!(state.public_key(), self.cloud_key, "the key survives");
        let listener = match tokio::net::TcpListener::bind(self.addr).await {
            Ok(listener) => listener,
            Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        self.addr = listener.local_addr().unwrap();
        self.shutdown = CancellationToken::new();
        self.server = Some(tokio::spawn(cloud::serve(
            listener,
            state.clone(),
            self.shutdown.clone(),
        )));
        self.state = state;
        // Pooled connections went with the old server.
        self.http = reqwest::Client::new();
    }

    /// Opens a device WebSocket for `id` and reads the challenge; the
    /// refused upgrade otherwise. With `forwarded_for`, the request carries
    /// `X-Forwarded-For` as a reverse proxy would send it.
    pub async fn try_connect(
        &self,
        id: &str,
        key: PrivateKey,
        forwarded_for: Option<&str>,
    ) -> Result<TestDevice, RefusedUpgrade> {
        TestDevice::try_open(self, id, key, forwarded_for).await
    }

    /// `try_connect` that must succeed.
    pub async fn connect_from(&self, id: &str, key: PrivateKey, forwarded_for: &str) -> TestDevice {
        match self.try_connect(id, key, Some(forwarded_for)).await {
            Ok(device) => device,
            Err(refused) => panic!("upgrade from {forwarded_for} refused: {refused:?}"),
        }
    }
}

impl TestDevice {
    async fn try_open(
        cloud: &TestCloud,
        id: &str,
        key: PrivateKey,
        forwarded_for: Option<&str>,
    ) -> Result<Self, RefusedUpgrade> {
        use tokio_tungstenite::tungstenite::Error;
        let mut request = cloud.ws_url().into_client_request().unwrap();
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
        let mut device = TestDevice {
            id: id.to_string(),
            key,
            challenge: String::new(),
            cloud_id: cloud.cloud_id.clone(),
            cloud_key: cloud.cloud_key,
            ws,
            next_id: 0,
        };
        let hello = device.recv_verified(protocol::ANY_AUDIENCE).await;
        match hello.message {
            Message::Notification { method, params } if method == protocol::auth::CHALLENGE => {
                device.challenge = params.unwrap()["challenge"].as_str().unwrap().to_string();
            }
            other => panic!("expected auth.challenge, got {other:?}"),
        }
        Ok(device)
    }

    /// Answers the challenge reporting `bridge_version`; returns the cloud's
    /// result (or error) value.
    pub async fn authenticate_reporting(&mut self, bridge_version: &str) -> Value {
        let id = self.new_request_id();
        let request = Message::request(
            id.as_str(),
            protocol::auth::DEFAULT_AUTHENTICATE,
            json!({
                "device_id": self.id,
                "public_key": self.public_key_pem(),
                "challenge": self.challenge,
                "bridge_version": bridge_version,
            }),
        );
        self.send_message(&request).await;
        // A refusal of params the cloud could not read is signed for anyone.
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

    /// The next cloud message, verified, signed for this device or for anyone.
    pub async fn recv_for_me_or_anyone(&mut self) -> Message {
        let text = self.next_text().await.unwrap_or_else(|code| {
            panic!("expected a text frame, the connection ended ({code:?})")
        });
        let frame: Value = serde_json::from_str(&text).unwrap();
        let audience = match frame["meta"]["audience_id"].as_str() {
            Some(protocol::ANY_AUDIENCE) => protocol::ANY_AUDIENCE,
            _ => self.id.as_str(),
        };
        self.verify_from_cloud(&text, audience).message
    }

    /// The next message from the cloud, or how the connection ended: the
    /// close code, `None` if it ended without one.
    pub async fn recv_or_close(&mut self) -> Result<Message, Option<u16>> {
        let text = self.next_text().await?;
        Ok(self.verify_from_cloud(&text, &self.id).message)
    }
}
