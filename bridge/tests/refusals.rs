//! Every way a frame from the cloud is refused at the bridge, one test each.
//! Each asserts the signed error's reason and code, that the refusal was
//! counted, that no worker was invoked, and that the connection carries on.

mod support;

use std::time::Duration;

use protocol::keys::{self, PrivateKey};
use protocol::{Direction, ErrorCode, Message, RpcError};
use serde_json::{json, Value};
use support::{live, served, Scenario};
use testkit::fake_cloud::DeviceLink;
use testkit::frame::SignedFrame;

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

// ----- one test each ------------------------------------------------------------

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
