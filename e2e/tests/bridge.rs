//! The bridge alone, with a real nats-server and real WebSockets: the cloud is
//! played by `e2e::test_cloud` (a test peer speaking wire protocol v1), and
//! workers by a spy subscriber, so that every frame can be chosen, broken on
//! purpose, and checked on both sides.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge::{Bridge, BridgeConfig, BridgeStats};
use e2e::nats::NatsServer;
use e2e::test_cloud::{AuthStatus, DeviceLink, SignedFrame, TestCloud, CLOSE_REJECTED, CLOUD_ID};
use e2e::wait_until;
use futures::StreamExt;
use protocol::keys::{self, PrivateKey, PublicKey};
use protocol::nats::{HEADER_REQUEST_ID, HEADER_SIGNER};
use protocol::{Direction, ErrorCode, Message, RpcError, Signer};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const DEVICE_ID: &str = "device-001";

// ----- the scenario: nats-server, test cloud, spy worker, bridge -------------

/// A message as a worker on `rpc.>` received it.
#[derive(Debug, Clone)]
struct Seen {
    subject: String,
    signer: Option<String>,
    request_id: Option<String>,
    payload: Value,
}

/// Stands in for a worker, so that "the worker is never invoked" can be
/// asserted: a plain async-nats subscriber on `rpc.>` that records every
/// message it receives and answers requests with a JSON-RPC result echoing the
/// method, `{"method": <method>}`.
struct Spy {
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: AbortOnDrop,
}

impl Spy {
    async fn start(nats: async_nats::Client) -> Spy {
        let mut messages = nats.subscribe("rpc.>").await.expect("spy subscribes");
        nats.flush()
            .await
            .expect("spy subscription reaches the server");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                let payload: Value =
                    serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
                let header = |name: &str| {
                    let headers = message.headers.as_ref()?;
                    Some(headers.get(name)?.as_str().to_owned())
                };
                log.lock().unwrap().push(Seen {
                    subject: message.subject.to_string(),
                    signer: header(HEADER_SIGNER),
                    request_id: header(HEADER_REQUEST_ID),
                    payload: payload.clone(),
                });
                if let Some(reply) = message.reply {
                    let answer = json!({
                        "jsonrpc": "2.0",
                        "id": payload["id"],
                        "result": {"method": payload["method"]},
                    });
                    let _ = nats.publish(reply, answer.to_string().into()).await;
                }
            }
        });
        Spy {
            seen,
            _task: AbortOnDrop(task),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Scenario {
    nats: NatsServer,
    cloud: TestCloud,
    /// A client for what workers do besides serving: cloud calls, notifications.
    client: async_nats::Client,
    spy: Option<Spy>,
    /// Every `state` announced on `bridge.status`, in order.
    statuses: Arc<Mutex<Vec<String>>>,
    stats: Arc<BridgeStats>,
    device_key: PublicKey,
    shutdown: CancellationToken,
    _statuses_task: AbortOnDrop,
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts nats-server, the spy worker, the test cloud and a bridge whose
/// config `tweak` adjusts (reconnects are fast unless it says otherwise).
async fn scenario(tweak: impl FnOnce(&mut BridgeConfig)) -> Scenario {
    start(true, tweak).await
}

/// As [`scenario`], with no worker at all on `rpc.>`.
async fn scenario_without_workers(tweak: impl FnOnce(&mut BridgeConfig)) -> Scenario {
    start(false, tweak).await
}

async fn start(with_spy: bool, tweak: impl FnOnce(&mut BridgeConfig)) -> Scenario {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let spy = match with_spy {
        true => Some(Spy::start(nats.client().await).await),
        false => None,
    };
    let statuses: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut announcements = client.subscribe("bridge.status").await.unwrap();
    client.flush().await.unwrap();
    let log = statuses.clone();
    let statuses_task = tokio::spawn(async move {
        while let Some(message) = announcements.next().await {
            let status: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
            assert_eq!(status["device_id"], DEVICE_ID);
            let state = status["state"].as_str().unwrap_or("?").to_owned();
            log.lock().unwrap().push(state);
        }
    });

    let cloud = TestCloud::start().await;
    let device_key = keys::generate();
    let mut config = BridgeConfig::new(
        cloud.url(),
        Signer::new(DEVICE_ID, device_key.clone()),
        cloud.id().to_owned(),
        cloud.public_key(),
    );
    config.reconnect_min = Duration::from_millis(50);
    config.reconnect_max = Duration::from_millis(200);
    tweak(&mut config);
    let bridge = Bridge::new(config, nats.client().await);
    let stats = bridge.stats();
    let shutdown = CancellationToken::new();
    tokio::spawn(bridge.run(shutdown.clone()));
    Scenario {
        nats,
        cloud,
        client,
        spy,
        statuses,
        stats,
        device_key: device_key.verifying_key(),
        shutdown,
        _statuses_task: AbortOnDrop(statuses_task),
    }
}

/// A scenario whose bridge is connected, authenticated and live: it has
/// announced `live`, so device → cloud traffic is forwarded from now on.
async fn live(tweak: impl FnOnce(&mut BridgeConfig)) -> (Scenario, DeviceLink) {
    let mut s = scenario(tweak).await;
    let link = s.cloud.connect_device(AuthStatus::Accepted).await;
    wait_until(
        "the bridge to announce live",
        Duration::from_secs(5),
        || async { (s.statuses().last().map(String::as_str) == Some("live")).then_some(()) },
    )
    .await;
    (s, link)
}

impl Scenario {
    fn spy(&self) -> &Spy {
        self.spy.as_ref().expect("this scenario has a spy worker")
    }

    fn refusals(&self, reason: &str) -> u64 {
        self.stats.refusals().get(reason).copied().unwrap_or(0)
    }

    fn all_refusals(&self) -> u64 {
        self.stats.refusals().values().sum()
    }

    fn statuses(&self) -> Vec<String> {
        self.statuses.lock().unwrap().clone()
    }

    /// A worker's `cloud.call.<method>` request, as the NATS requester sees it.
    async fn cloud_call(&self, method: &str, timeout: Duration) -> Value {
        let reply = self
            .client
            .send_request(
                format!("cloud.call.{method}"),
                async_nats::Request::new()
                    .payload("{}".into())
                    .timeout(Some(timeout)),
            )
            .await
            .unwrap_or_else(|error| panic!("cloud.call.{method} got no reply: {error}"));
        serde_json::from_slice(&reply.payload).expect("the bridge replies JSON")
    }
}

/// `result` of a request the spy served.
fn served(method: &str) -> Result<Value, RpcError> {
    Ok(json!({ "method": method }))
}

// ----- the refusal check -------------------------------------------------------

/// What the bridge is sent in a refusal test.
enum Bad {
    Text(String),
    Binary(Vec<u8>),
}

impl From<SignedFrame> for Bad {
    fn from(frame: SignedFrame) -> Self {
        Bad::Text(frame.text())
    }
}

impl From<String> for Bad {
    fn from(text: String) -> Self {
        Bad::Text(text)
    }
}

/// How the bridge must answer the bad frame.
struct Refused {
    /// `Refusal::reason()`, the label of the answer and of the counter.
    reason: &'static str,
    /// Part of the error message, saying why.
    says: &'static str,
    /// The id the signed error answers: the request's, when the bridge can
    /// read one faithfully, else null (as JSON-RPC 2.0 answers parse errors).
    answered_id: Value,
}

/// The JSON-RPC code a refusal is answered with (the contract of
/// `Refusal::error_code`).
fn code_of(reason: &str) -> i64 {
    match reason {
        "malformed_json" | "duplicate_key" | "unsafe_number" => ErrorCode::ParseError,
        "too_large" | "binary_frame" | "batch" | "not_jsonrpc" => ErrorCode::InvalidRequest,
        "bad_method_name" => ErrorCode::MethodNotFound,
        _ => ErrorCode::Refused,
    }
    .code()
}

fn assert_refusal_error(error: &RpcError, expected: &Refused) {
    assert_eq!(
        error.data,
        Some(json!({"reason": expected.reason})),
        "error.data.reason of {error:?}"
    );
    assert_eq!(error.code, code_of(expected.reason), "code of {error:?}");
    assert!(
        error.message.contains(expected.says),
        "the message {:?} should say {:?}",
        error.message,
        expected.says
    );
}

/// Sends `bad` on a live link and checks everything a refusal means: a signed
/// error with the reason when the frame is a request with an id, the counter
/// for that reason (and no other) goes up by one, the worker is never invoked,
/// and the connection carries on: a valid request right after is served.
async fn assert_refused(
    s: &Scenario,
    link: &mut DeviceLink,
    bad: impl Into<Bad>,
    expected: Refused,
) {
    let refusals_before = s.all_refusals();
    let reason_before = s.refusals(expected.reason);
    let seen_before = s.spy().seen().len();

    match bad.into() {
        Bad::Text(text) => link.send_text(text),
        Bad::Binary(bytes) => link.send_binary(bytes),
    }
    let (answered, outcome) = link.recv_response().await;
    assert_eq!(
        answered, expected.answered_id,
        "the error answers the refused frame"
    );
    let error = outcome.expect_err("a refused frame is answered with an error");
    assert_refusal_error(&error, &expected);

    link.send(&link.request("after", "containers.list", json!({})));
    let (answered, outcome) = link.recv_response().await;
    assert_eq!(answered, json!("after"));
    assert_eq!(
        outcome,
        served("containers.list"),
        "the connection carries on"
    );

    assert_eq!(
        s.refusals(expected.reason),
        reason_before + 1,
        "refusals counted for {:?}: {:?}",
        expected.reason,
        s.stats.refusals()
    );
    assert_eq!(s.all_refusals(), refusals_before + 1, "one refusal in all");
    let seen: Vec<_> = s.spy().seen().into_iter().skip(seen_before).collect();
    assert_eq!(
        seen.len(),
        1,
        "only the valid request reaches a worker: {seen:?}"
    );
    assert_eq!(seen[0].payload["id"], "after");
}

fn refused(reason: &'static str, says: &'static str, answered_id: &'static str) -> Refused {
    Refused {
        reason,
        says,
        answered_id: json!(answered_id),
    }
}

/// A frame whose id cannot be read faithfully: answered with id null.
fn refused_unreadable(reason: &'static str, says: &'static str) -> Refused {
    Refused {
        reason,
        says,
        answered_id: Value::Null,
    }
}

fn list_all() -> Message {
    Message::request("bad", "containers.list", json!({"all": true}))
}

// ----- handshake and relay ------------------------------------------------------

#[tokio::test]
async fn handshake_proves_the_device_key_and_a_live_request_reaches_a_worker() {
    let mut s = scenario(|_| {}).await;
    let mut link = s.cloud.accept().await;

    let challenge = link.send_challenge();
    let auth = link.recv_authenticate(&challenge).await;
    assert_eq!(auth.method, "device.authenticate");
    assert_eq!(auth.meta.signer_id, DEVICE_ID, "signed as the device");
    assert_eq!(auth.meta.audience_id, CLOUD_ID);
    assert_eq!(auth.meta.direction, Direction::DeviceToCloud);
    assert_eq!(auth.device_id, DEVICE_ID);
    assert_eq!(
        auth.public_key, s.device_key,
        "params carry the device's key"
    );
    assert!(auth
        .public_key_pem
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(auth.challenge, challenge, "the same challenge is echoed");
    link.answer_authenticate(&auth, AuthStatus::Accepted);

    link.send(&link.request("c-17", "containers.list", json!({"all": true})));
    let response = link.recv().await;

    let seen = s.spy().seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].subject, "rpc.containers.list");
    assert_eq!(
        seen[0].payload,
        json!({"jsonrpc": "2.0", "id": "c-17", "method": "containers.list", "params": {"all": true}}),
        "the verified request, meta removed"
    );
    assert_eq!(seen[0].signer.as_deref(), Some(CLOUD_ID));
    assert_eq!(seen[0].request_id.as_deref(), Some("c-17"), "the bare id");

    assert_eq!(response.meta.signer_id, DEVICE_ID, "signed by the device");
    assert_eq!(response.meta.audience_id, CLOUD_ID);
    assert_eq!(response.meta.direction, Direction::DeviceToCloud);
    assert_eq!(
        response.message,
        Message::result(json!("c-17"), json!({"method": "containers.list"})),
        "the spy's answer, under the same id"
    );
    assert_eq!(s.all_refusals(), 0);
}

#[tokio::test]
async fn a_pending_device_relays_nothing_until_accepted_on_the_same_connection() {
    let mut s = scenario(|_| {}).await;
    let mut link = s.cloud.connect_device(AuthStatus::Pending).await;

    let error = link
        .call("p-1", "containers.list", json!({}))
        .await
        .expect_err("not relayed while pending");
    assert_eq!(error.code, ErrorCode::NotAccepted.code());
    assert!(s.spy().seen().is_empty(), "the worker is never invoked");

    link.send_status(AuthStatus::Accepted);
    let outcome = link.call("p-2", "containers.list", json!({})).await;
    assert_eq!(outcome, served("containers.list"));
    assert_eq!(s.spy().seen().len(), 1);
    assert_eq!(s.spy().seen()[0].payload["id"], "p-2");
    assert_eq!(s.cloud.connections(), 1, "accepted with no reconnect");
}

// ----- refusals at the bridge: one test each ------------------------------------

#[tokio::test]
async fn refuses_tampered_params() {
    let (s, mut link) = live(|_| {}).await;
    let frame = link
        .frame(list_all())
        .sign()
        .tampered("/params/all", json!(false));
    let expected = refused("bad_signature", "signature does not verify", "bad");
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_a_tampered_meta_field() {
    let (s, mut link) = live(|_| {}).await;
    let signed = link.frame(list_all()).sign();
    let timestamp = signed
        .get("/meta/timestamp")
        .and_then(Value::as_u64)
        .unwrap();
    let frame = signed.tampered("/meta/timestamp", json!(timestamp + 1));
    let expected = refused("bad_signature", "signature does not verify", "bad");
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_a_wrong_audience() {
    let (s, mut link) = live(|_| {}).await;
    let frame = link.frame(list_all()).audience("device-002").sign();
    let expected = refused("wrong_audience", r#"wrong audience "device-002""#, "bad");
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_audience_any_on_a_request() {
    let (s, mut link) = live(|_| {}).await;
    let frame = link.frame(list_all()).audience("*").sign();
    let expected = refused("wrong_audience", r#"wrong audience "*""#, "bad");
    assert_refused(&s, &mut link, frame, expected).await;
}

/// Only the `auth.challenge` notification may carry audience `*`, not a
/// request that borrows its name.
#[tokio::test]
async fn refuses_audience_any_on_a_request_named_like_the_challenge() {
    let (s, mut link) = live(|_| {}).await;
    let request = Message::request("bad", "auth.challenge", json!({"challenge": "x"}));
    let frame = link.frame(request).audience("*").sign();
    let expected = refused("wrong_audience", r#"wrong audience "*""#, "bad");
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_the_wrong_direction() {
    let (s, mut link) = live(|_| {}).await;
    let frame = link
        .frame(list_all())
        .direction(Direction::DeviceToCloud)
        .sign();
    let expected = refused(
        "wrong_direction",
        "wrong direction device_to_cloud; expected cloud_to_device",
        "bad",
    );
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_a_stale_timestamp() {
    let (s, mut link) = live(|c| c.skew = Duration::from_secs(30)).await;
    let frame = link.frame(list_all()).aged(Duration::from_secs(90)).sign();
    let expected = refused("stale", "stale timestamp", "bad");
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_a_future_timestamp() {
    let (s, mut link) = live(|c| c.skew = Duration::from_secs(30)).await;
    let frame = link.frame(list_all()).ahead(Duration::from_secs(90)).sign();
    let expected = refused("future", "in the future", "bad");
    assert_refused(&s, &mut link, frame, expected).await;
}

/// A byte-exact copy of a valid frame: the first is served, the second refused.
#[tokio::test]
async fn refuses_a_replayed_frame_after_serving_it_once() {
    let (s, mut link) = live(|_| {}).await;
    let frame = link.request("twice", "containers.list", json!({}));

    link.send(&frame);
    let (id, outcome) = link.recv_response().await;
    assert_eq!((id, outcome), (json!("twice"), served("containers.list")));
    assert_eq!(s.spy().seen().len(), 1);

    let expected = refused("replayed", "replayed nonce", "twice");
    assert_refused(&s, &mut link, frame, expected).await;
}

/// A frame signed before this connection's authentication was answered: a
/// frame recorded on an earlier connection, which a bridge that restarted
/// (its replay guard empty) would otherwise serve again within the skew.
#[tokio::test]
async fn refuses_a_frame_signed_before_this_connection_authenticated() {
    let (s, mut link) = live(|_| {}).await;
    let frame = link.frame(list_all()).aged(Duration::from_secs(5)).sign();
    let expected = refused(
        "older_than_session",
        "before this connection authenticated",
        "bad",
    );
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_an_unknown_signer() {
    let (s, mut link) = live(|_| {}).await;
    let frame = link.frame(list_all()).signer_id("mallory").sign();
    let expected = refused("wrong_signer", r#"unknown signer "mallory""#, "bad");
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_a_signature_by_another_key() {
    let (s, mut link) = live(|_| {}).await;
    let other: PrivateKey = keys::generate();
    let frame = link.frame(list_all()).key(other).sign();
    let expected = refused("bad_signature", "signature does not verify", "bad");
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_a_frame_without_meta() {
    let (s, mut link) = live(|_| {}).await;
    let frame = link.frame(list_all()).sign().without("/meta");
    let expected = refused("missing_meta", "missing meta", "bad");
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_another_algorithm() {
    let (s, mut link) = live(|_| {}).await;
    let frame = link
        .frame(list_all())
        .sign()
        .tampered("/meta/algorithm", json!("hmac-sha256"));
    let expected = refused(
        "unsupported_algorithm",
        r#"unsupported algorithm "hmac-sha256""#,
        "bad",
    );
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_malformed_json() {
    let (s, mut link) = live(|_| {}).await;
    let text = link.frame(list_all()).sign().text();
    let truncated = text[..text.len() - 1].to_owned();
    let expected = refused_unreadable("malformed_json", "malformed JSON");
    assert_refused(&s, &mut link, truncated, expected).await;
}

#[tokio::test]
async fn refuses_duplicate_keys() {
    let (s, mut link) = live(|_| {}).await;
    let text = link.frame(list_all()).sign().text();
    let duplicated = text.replacen(r#""all":true"#, r#""all":true,"all":true"#, 1);
    assert_ne!(duplicated, text);
    let expected = refused("duplicate_key", r#"duplicate key "all""#, "bad");
    assert_refused(&s, &mut link, duplicated, expected).await;
}

/// JCS writes numbers as doubles, so 9007199254740993 and its rounded
/// neighbour 9007199254740992 have the same signed bytes: a frame signed over
/// one and edited to carry the other must not pass.
#[tokio::test]
async fn refuses_an_unsafe_integer_edited_after_signing_its_rounded_neighbour() {
    let (s, mut link) = live(|_| {}).await;
    let message = Message::request(
        "bad",
        "containers.list",
        json!({"n": 9_007_199_254_740_992u64}),
    );
    let text = link.frame(message).sign().text();
    let edited = text.replacen("9007199254740992", "9007199254740993", 1);
    assert_ne!(edited, text);
    let expected = refused("unsafe_number", "9007199254740993", "bad");
    assert_refused(&s, &mut link, edited, expected).await;
}

#[tokio::test]
async fn refuses_an_unsafe_integer_even_when_signed_as_is() {
    let (s, mut link) = live(|_| {}).await;
    let message = Message::request(
        "bad",
        "containers.list",
        json!({"n": 9_007_199_254_740_993u64}),
    );
    let frame = link.frame(message).sign();
    assert!(frame.text().contains("9007199254740993"));
    let expected = refused("unsafe_number", "9007199254740993", "bad");
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_a_batch() {
    let (s, mut link) = live(|_| {}).await;
    let batch = format!("[{}]", link.frame(list_all()).sign().text());
    let expected = refused_unreadable("batch", "batches (JSON arrays) are not accepted");
    assert_refused(&s, &mut link, batch, expected).await;
}

#[tokio::test]
async fn refuses_a_binary_frame() {
    let (s, mut link) = live(|_| {}).await;
    let bytes = link.frame(list_all()).sign().text().into_bytes();
    let expected = refused_unreadable("binary_frame", "binary frames are not accepted");
    assert_refused(&s, &mut link, Bad::Binary(bytes), expected).await;
}

#[tokio::test]
async fn refuses_an_oversized_frame() {
    let (s, mut link) = live(|c| c.max_frame_bytes = 2048).await;
    let padded = Message::request("bad", "containers.list", json!({"pad": "x".repeat(3000)}));
    let frame = link.frame(padded).sign();
    let expected = refused_unreadable("too_large", "exceeds the limit of 2048 bytes");
    assert_refused(&s, &mut link, frame, expected).await;
}

async fn assert_method_name_refused(method: &str) {
    let (s, mut link) = live(|_| {}).await;
    let frame = link.request("bad", method, json!({}));
    let expected = refused("bad_method_name", "is not a plain dotted name", "bad");
    assert_refused(&s, &mut link, frame, expected).await;
}

#[tokio::test]
async fn refuses_a_method_name_with_a_full_wildcard() {
    assert_method_name_refused("rpc.>").await;
}

#[tokio::test]
async fn refuses_a_method_name_with_a_token_wildcard() {
    assert_method_name_refused("a.*").await;
}

#[tokio::test]
async fn refuses_a_method_name_with_an_empty_token() {
    assert_method_name_refused("a..b").await;
}

#[tokio::test]
async fn refuses_an_empty_method_name() {
    assert_method_name_refused("").await;
}

#[tokio::test]
async fn refuses_a_method_name_with_a_space() {
    assert_method_name_refused("a b").await;
}

// ----- relay errors ---------------------------------------------------------------

#[tokio::test]
async fn a_method_no_worker_serves_is_method_not_found_at_once() {
    let mut s = scenario_without_workers(|c| c.worker_timeout = Duration::from_secs(5)).await;
    let mut link = s.cloud.connect_device(AuthStatus::Accepted).await;

    let asked = Instant::now();
    let error = link
        .call("nf", "nothing.serves.this", json!({}))
        .await
        .expect_err("no worker");
    assert_eq!(error.code, ErrorCode::MethodNotFound.code(), "{error:?}");
    assert!(error.message.contains("method not found"), "{error:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "answered in {:?}, not after the 5 s worker timeout",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_worker_that_does_not_answer_times_out() {
    let worker_timeout = Duration::from_millis(300);
    let mut s = scenario_without_workers(|c| c.worker_timeout = worker_timeout).await;
    // A worker that takes the request and never answers.
    let silent = s.nats.client().await;
    let _subscription = silent.subscribe("rpc.containers.slow").await.unwrap();
    silent.flush().await.unwrap();
    let mut link = s.cloud.connect_device(AuthStatus::Accepted).await;

    let asked = Instant::now();
    let error = link
        .call("slow", "containers.slow", json!({}))
        .await
        .expect_err("timed out");
    assert_eq!(error.code, ErrorCode::TimedOut.code(), "{error:?}");
    assert!(asked.elapsed() >= worker_timeout, "{:?}", asked.elapsed());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}

// ----- device → cloud -----------------------------------------------------------

#[tokio::test]
async fn a_cloud_call_from_a_worker_is_signed_and_answered() {
    let (s, mut link) = live(|_| {}).await;
    let call = tokio::spawn({
        let client = s.client.clone();
        async move {
            let reply = client
                .request("cloud.call.cloud.ping", "{}".into())
                .await
                .expect("a reply");
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    });

    let request = link.recv().await;
    assert_eq!(request.meta.signer_id, DEVICE_ID);
    assert_eq!(request.meta.audience_id, CLOUD_ID);
    assert_eq!(request.meta.direction, Direction::DeviceToCloud);
    let Message::Request { id, method, params } = request.message else {
        panic!("expected a request, got {:?}", request.message);
    };
    assert_eq!(method, "cloud.ping");
    assert_eq!(params, Some(json!({})));
    link.respond(id, Ok(json!({"pong": true})));

    let reply = call.await.unwrap();
    assert_eq!(reply["jsonrpc"], "2.0");
    assert_eq!(reply["result"], json!({"pong": true}), "{reply}");
}

#[tokio::test]
async fn a_notification_from_a_worker_reaches_the_cloud_signed() {
    let (s, mut link) = live(|_| {}).await;
    let health = json!({"cpu_percent": 12.5, "containers_running": 3});
    s.client
        .publish("cloud.notify.device.health", health.to_string().into())
        .await
        .unwrap();

    let notification = link.recv().await;
    assert_eq!(notification.meta.signer_id, DEVICE_ID);
    assert_eq!(notification.meta.audience_id, CLOUD_ID);
    assert_eq!(notification.meta.direction, Direction::DeviceToCloud);
    assert_eq!(
        notification.message,
        Message::notification("device.health", health)
    );
}

#[tokio::test]
async fn a_cloud_call_while_pending_is_unavailable_at_once() {
    let mut s = scenario(|_| {}).await;
    let _link = s.cloud.connect_device(AuthStatus::Pending).await;
    wait_until(
        "the bridge to announce pending",
        Duration::from_secs(5),
        || async { s.statuses().contains(&"pending".to_owned()).then_some(()) },
    )
    .await;

    let asked = Instant::now();
    let reply = s.cloud_call("cloud.ping", Duration::from_secs(10)).await;
    assert_eq!(
        reply["error"]["code"],
        ErrorCode::Unavailable.code(),
        "{reply}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_cloud_call_while_disconnected_is_unavailable_at_once() {
    let mut s = scenario(|_| {}).await;
    let _link = s.cloud.connect_device(AuthStatus::Accepted).await;
    s.cloud.stop();
    wait_until(
        "the bridge to announce it is disconnected",
        Duration::from_secs(5),
        || async {
            s.statuses()
                .contains(&"disconnected".to_owned())
                .then_some(())
        },
    )
    .await;

    let asked = Instant::now();
    let reply = s.cloud_call("cloud.ping", Duration::from_secs(10)).await;
    assert_eq!(
        reply["error"]["code"],
        ErrorCode::Unavailable.code(),
        "{reply}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_cloud_call_fails_promptly_when_the_connection_drops_mid_call() {
    let (s, mut link) = live(|c| c.cloud_call_timeout = Duration::from_secs(10)).await;
    let call = tokio::spawn({
        let client = s.client.clone();
        async move {
            let reply = client
                .request("cloud.call.cloud.ping", "{}".into())
                .await
                .expect("a reply");
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    });
    let request = link.recv().await;
    assert_eq!(request.message.method(), Some("cloud.ping"));

    let dropped = Instant::now();
    link.drop_connection();
    let reply = tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .expect("the requester is answered, not left hanging")
        .unwrap();
    assert_eq!(
        reply["error"]["code"],
        ErrorCode::Unavailable.code(),
        "{reply}"
    );
    assert!(dropped.elapsed() < Duration::from_secs(3));
}

// ----- bridge.status ---------------------------------------------------------------

#[tokio::test]
async fn bridge_status_announces_connecting_then_live() {
    let mut s = scenario(|_| {}).await;
    let _link = s.cloud.connect_device(AuthStatus::Accepted).await;
    let states = wait_until("live on bridge.status", Duration::from_secs(5), || async {
        let states = s.statuses();
        states.contains(&"live".to_owned()).then_some(states)
    })
    .await;
    assert_eq!(states, ["connecting", "live"]);
}

#[tokio::test]
async fn bridge_status_announces_pending_before_live() {
    let mut s = scenario(|_| {}).await;
    let link = s.cloud.connect_device(AuthStatus::Pending).await;
    wait_until(
        "pending on bridge.status",
        Duration::from_secs(5),
        || async { (s.statuses() == ["connecting", "pending"]).then_some(()) },
    )
    .await;

    link.send_status(AuthStatus::Accepted);
    let states = wait_until("live on bridge.status", Duration::from_secs(5), || async {
        let states = s.statuses();
        states.contains(&"live".to_owned()).then_some(states)
    })
    .await;
    assert_eq!(states, ["connecting", "pending", "live"]);
}

// ----- reconnecting -----------------------------------------------------------------

#[tokio::test]
async fn reconnects_by_itself_when_the_cloud_drops_the_connection() {
    let (mut s, link) = live(|_| {}).await;
    link.drop_connection();

    let mut link = s.cloud.connect_device(AuthStatus::Accepted).await;
    let outcome = link.call("again", "containers.list", json!({})).await;
    assert_eq!(outcome, served("containers.list"));
    assert_eq!(s.cloud.connections(), 2);
}

#[tokio::test]
async fn reconnects_by_itself_when_the_cloud_restarts_on_the_same_port() {
    let (mut s, _link) = live(|_| {}).await;
    let url = s.cloud.url();
    s.cloud.restart().await;
    assert_eq!(s.cloud.url(), url);

    let mut link = s.cloud.connect_device(AuthStatus::Accepted).await;
    let outcome = link.call("again", "containers.list", json!({})).await;
    assert_eq!(outcome, served("containers.list"));
}

/// Backoff settings for the rejection tests: plain reconnects within 100 ms,
/// a rejection waits 2 s. Margins are generous; the point is the difference.
fn rejection_backoff(c: &mut BridgeConfig) {
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(100);
    c.rejected_backoff = Duration::from_secs(2);
}

async fn assert_backs_off_for_rejection(s: &mut Scenario, rejected_at: Instant) {
    assert!(
        s.cloud
            .accept_within(Duration::from_secs(1))
            .await
            .is_none(),
        "no new connection within the first second after a rejection"
    );
    let _next = s.cloud.accept().await;
    let waited = rejected_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "reconnected {waited:?} after the rejection; rejected_backoff is 2 s"
    );
}

#[tokio::test]
async fn a_rejected_device_backs_off_longer_than_a_dropped_one() {
    let (mut s, link) = live(rejection_backoff).await;

    let dropped = Instant::now();
    link.drop_connection();
    let mut link = s.cloud.accept().await;
    assert!(
        dropped.elapsed() < Duration::from_secs(1),
        "a plain drop reconnects fast ({:?})",
        dropped.elapsed()
    );

    let challenge = link.send_challenge();
    let auth = link.recv_authenticate(&challenge).await;
    let rejected_at = Instant::now();
    link.answer_authenticate(&auth, AuthStatus::Rejected);
    link.closed().await;
    assert_backs_off_for_rejection(&mut s, rejected_at).await;
    assert!(s.statuses().contains(&"rejected".to_owned()));
}

#[tokio::test]
async fn close_code_4001_while_live_backs_off_long() {
    let (mut s, mut link) = live(rejection_backoff).await;
    let rejected_at = Instant::now();
    link.close(CLOSE_REJECTED, "device rejected by an operator");
    link.closed().await;
    assert_backs_off_for_rejection(&mut s, rejected_at).await;
}

// ----- NATS restart ------------------------------------------------------------------

#[tokio::test]
async fn relay_and_cloud_calls_work_again_after_nats_restarts() {
    let (mut s, mut link) = live(|c| c.worker_timeout = Duration::from_secs(1)).await;
    assert_eq!(
        link.call("before", "containers.list", json!({})).await,
        served("containers.list")
    );

    s.nats.restart().await;

    // Cloud → worker: the bridge's and the spy's clients reconnect.
    let give_up = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let id = format!("after-{attempt}");
        if link.call(&id, "containers.list", json!({})).await == served("containers.list") {
            break;
        }
        assert!(Instant::now() < give_up, "the relay never worked again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Worker → cloud: the bridge's `cloud.call.>` subscription is restored.
    loop {
        let call = tokio::spawn({
            let client = s.client.clone();
            async move {
                client
                    .send_request(
                        "cloud.call.cloud.ping",
                        async_nats::Request::new()
                            .payload("{}".into())
                            .timeout(Some(Duration::from_secs(2))),
                    )
                    .await
            }
        });
        if let Some(request) = link.recv_within(Duration::from_secs(2)).await {
            let Message::Request { id, method, .. } = request.message else {
                panic!("expected the cloud call, got {:?}", request.message);
            };
            assert_eq!(method, "cloud.ping");
            link.respond(id, Ok(json!({"pong": true})));
            let reply = call.await.unwrap().expect("the call is answered");
            let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
            assert_eq!(reply["result"], json!({"pong": true}), "{reply}");
            break;
        }
        let _ = call.await; // never reached the bridge: not resubscribed yet
        assert!(Instant::now() < give_up, "cloud.call.> never worked again");
    }
}
