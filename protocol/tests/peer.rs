//! The peer: every way a received frame is refused, in the order the checks
//! run, and how each refusal is answered. Pure: fixed keys and a fixed "now".

use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use protocol::{
    sign, Direction, Message, Peer, Refused, Remote, ReplayGuard, RpcError, Side, Signer,
    ANY_AUDIENCE,
};
use serde_json::{json, Value};

const NOW: u64 = 1_763_780_000_123;
const SKEW: u64 = 60_000;
const CLOUD: &str = "cloud-dashboard";
const DEVICE: &str = "device-001";
const MAX_FRAME_BYTES: usize = 2048;

fn cloud_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn device_key() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

fn cloud_side() -> Side {
    Side::cloud(Arc::new(Signer::new(CLOUD, cloud_key()))).with_max_frame_bytes(MAX_FRAME_BYTES)
}

fn device_side() -> Side {
    Side::device(Arc::new(Signer::new(DEVICE, device_key()))).with_max_frame_bytes(MAX_FRAME_BYTES)
}

/// The device's end, hearing the cloud (as the bridge does).
fn device_peer() -> Peer {
    device_side().peer(Remote {
        id: CLOUD.into(),
        key: cloud_key().verifying_key(),
    })
}

/// The cloud's end, hearing the device.
fn cloud_peer() -> Peer {
    cloud_side().peer(Remote {
        id: DEVICE.into(),
        key: device_key().verifying_key(),
    })
}

fn guard() -> Mutex<ReplayGuard> {
    Mutex::new(ReplayGuard::new(SKEW, 100))
}

/// A cloud → device frame; every `meta` field as given.
fn signed_by(
    key: &SigningKey,
    signer: &str,
    audience: &str,
    direction: Direction,
    timestamp: u64,
    message: &Message,
) -> Value {
    let nonce: [u8; 16] = rand::random();
    Value::Object(sign(
        message, key, signer, audience, direction, nonce, timestamp,
    ))
}

/// A valid cloud → device frame, signed `at`.
fn from_cloud_at(message: &Message, at: u64) -> Value {
    signed_by(
        &cloud_key(),
        CLOUD,
        DEVICE,
        Direction::CloudToDevice,
        at,
        message,
    )
}

fn from_cloud(message: &Message) -> Value {
    from_cloud_at(message, NOW)
}

fn list(id: &str) -> Message {
    Message::request(id, "containers.list", json!({"all": true}))
}

/// The refusal of `text`, and the id and error its signed answer carries,
/// read as the cloud reads it (the answer must verify there).
fn refusal_of(
    peer: &Peer,
    text: &str,
    guard: Option<&Mutex<ReplayGuard>>,
) -> (&'static str, Option<(Value, RpcError)>) {
    let Refused { refusal, reply } = peer
        .receive(text, NOW, guard)
        .expect_err("the frame must be refused");
    (
        refusal.reason(),
        reply.map(|reply| answer_heard_by_cloud(&reply)),
    )
}

fn answer_heard_by_cloud(reply: &str) -> (Value, RpcError) {
    let verified = cloud_peer()
        .receive(reply, NOW, None)
        .unwrap_or_else(|refused| panic!("the answer must verify: {refused:?}"));
    match verified.message {
        Message::Response {
            id,
            result: Err(error),
        } => (id, error),
        other => panic!("expected an error response, got {other:?}"),
    }
}

/// Asserts the refusal reason and that its answer carries `answered_id`,
/// the reason and the code `Refusal::error_code` gives.
fn assert_answered(peer: &Peer, text: &str, reason: &str, answered_id: Value) {
    let (refused, answer) = refusal_of(peer, text, Some(&guard()));
    assert_eq!(refused, reason, "{text}");
    let (id, error) = answer.unwrap_or_else(|| panic!("{reason} must be answered"));
    assert_eq!(id, answered_id, "{reason}");
    assert_eq!(error.data, Some(json!({ "reason": reason })), "{reason}");
    assert!(error.message.starts_with("refused: "), "{}", error.message);
}

#[test]
fn a_valid_frame_comes_out_as_the_verified_message() {
    let text = from_cloud(&list("c-1")).to_string();
    let verified = device_peer().receive(&text, NOW, Some(&guard())).unwrap();
    assert_eq!(verified.message, list("c-1"));
    assert_eq!(verified.meta.signer_id, CLOUD);
    assert_eq!(verified.meta.audience_id, DEVICE);
}

#[test]
fn what_a_peer_signs_its_remote_receives() {
    let device = device_peer();
    let cloud = cloud_peer();
    let from_device = device.sign(&list("d-1"), NOW);
    let heard = cloud.receive(&from_device, NOW, Some(&guard())).unwrap();
    assert_eq!(heard.message, list("d-1"));
    assert_eq!(
        (
            heard.meta.signer_id.as_str(),
            heard.meta.audience_id.as_str()
        ),
        (DEVICE, CLOUD)
    );
    assert_eq!(heard.meta.direction, Direction::DeviceToCloud);
    let from_cloud = cloud.sign(&list("c-1"), NOW);
    assert!(device.receive(&from_cloud, NOW, Some(&guard())).is_ok());
}

#[test]
fn unreadable_frames_are_answered_with_id_null() {
    let peer = device_peer();
    let valid = from_cloud(&list("bad")).to_string();
    let padded = Message::request("bad", "containers.list", json!({"pad": "x".repeat(3000)}));
    let oversized = from_cloud(&padded).to_string();
    let unsafe_number = Message::request("bad", "a", json!({"n": 9_007_199_254_740_993u64}));
    for (text, reason) in [
        (oversized, "too_large"),
        (valid[..valid.len() - 1].to_owned(), "malformed_json"),
        (
            valid.replacen(r#""all":true"#, r#""all":true,"all":true"#, 1),
            "duplicate_key",
        ),
        (from_cloud(&unsafe_number).to_string(), "unsafe_number"),
        (format!("[{valid}]"), "batch"),
        ("3".to_owned(), "not_jsonrpc"),
    ] {
        assert_answered(&peer, &text, reason, Value::Null);
    }
}

#[test]
fn a_request_refused_by_a_check_of_meta_or_signature_is_answered_with_its_id() {
    let peer = device_peer();
    let other_key = SigningKey::from_bytes(&[3; 32]);
    let by = |key: &SigningKey, signer, audience, direction, at| {
        signed_by(key, signer, audience, direction, at, &list("bad"))
    };
    let c2d = Direction::CloudToDevice;
    let k = cloud_key();
    let with = |pointer: &str, value: Value| {
        let mut frame = from_cloud(&list("bad"));
        *frame.pointer_mut(pointer).unwrap() = value;
        frame
    };
    let mut without_meta = from_cloud(&list("bad"));
    without_meta.as_object_mut().unwrap().remove("meta");
    let mut foreign_meta = from_cloud(&list("bad"));
    foreign_meta["meta"]["extra"] = json!(1);
    let not_jsonrpc = with("/jsonrpc", json!("1.0"));
    for (frame, reason) in [
        (not_jsonrpc, "not_jsonrpc"),
        (without_meta, "missing_meta"),
        (foreign_meta, "bad_meta"),
        (
            with("/meta/algorithm", json!("hmac")),
            "unsupported_algorithm",
        ),
        (with("/params/all", json!(false)), "bad_signature"),
        (by(&other_key, CLOUD, DEVICE, c2d, NOW), "bad_signature"),
        (by(&k, "mallory", DEVICE, c2d, NOW), "wrong_signer"),
        (by(&k, CLOUD, "device-002", c2d, NOW), "wrong_audience"),
        (by(&k, CLOUD, ANY_AUDIENCE, c2d, NOW), "wrong_audience"),
        (
            by(&k, CLOUD, DEVICE, Direction::DeviceToCloud, NOW),
            "wrong_direction",
        ),
        (by(&k, CLOUD, DEVICE, c2d, NOW - SKEW - 1), "stale"),
        (by(&k, CLOUD, DEVICE, c2d, NOW + SKEW + 1), "future"),
    ] {
        assert_answered(&peer, &frame.to_string(), reason, json!("bad"));
    }
}

#[test]
fn a_bad_method_name_is_refused_before_it_can_become_a_subject() {
    let peer = device_peer();
    for method in ["rpc.>", "a.*", "a..b", "", "a b"] {
        let frame = from_cloud(&Message::request("bad", method, json!({})));
        assert_answered(&peer, &frame.to_string(), "bad_method_name", json!("bad"));
    }
    let notification = from_cloud(&Message::notification("rpc.>", json!({})));
    let (reason, answer) = refusal_of(&peer, &notification.to_string(), None);
    assert_eq!((reason, answer.is_none()), ("bad_method_name", true));
}

#[test]
fn refused_notifications_and_responses_are_never_answered() {
    let peer = device_peer();
    for message in [
        Message::notification("device.event", json!({"n": 1})),
        Message::result(json!("d-1"), json!({"n": 1})),
    ] {
        let mut frame = from_cloud(&message);
        frame["meta"]["audience_id"] = json!("device-002");
        let (reason, answer) = refusal_of(&peer, &frame.to_string(), Some(&guard()));
        assert_eq!(reason, "bad_signature");
        assert!(answer.is_none(), "{message:?} was answered");
    }
    // A request's id must be one JSON-RPC allows to be answered.
    let mut null_id = from_cloud(&list("bad"));
    null_id["id"] = Value::Null;
    let (_, answer) = refusal_of(&peer, &null_id.to_string(), Some(&guard()));
    assert!(answer.is_none());
}

#[test]
fn a_frame_is_heard_once_when_the_replay_checks_apply() {
    let peer = device_peer();
    let guard = guard();
    let text = from_cloud(&list("twice")).to_string();
    peer.receive(&text, NOW, Some(&guard)).unwrap();
    assert_answered_with(&peer, &text, &guard, "replayed", json!("twice"));

    // Without the checks (a frame nothing will act on), it takes no room.
    let fresh = from_cloud(&list("fresh")).to_string();
    for _ in 0..2 {
        peer.receive(&fresh, NOW, None).unwrap();
    }
    peer.receive(&fresh, NOW, Some(&guard)).unwrap();
}

fn assert_answered_with(
    peer: &Peer,
    text: &str,
    guard: &Mutex<ReplayGuard>,
    reason: &str,
    answered_id: Value,
) {
    let (refused, answer) = refusal_of(peer, text, Some(guard));
    assert_eq!(refused, reason);
    assert_eq!(answer.map(|(id, _)| id), Some(answered_id), "{reason}");
}

#[test]
fn a_full_guard_and_a_flooding_signer_are_refused() {
    let peer = device_peer();
    let full = Mutex::new(ReplayGuard::new(SKEW, 1));
    let flooded = Mutex::new(ReplayGuard::new(SKEW, 10).with_per_signer_capacity(1));
    for guard in [&full, &flooded] {
        let first = from_cloud(&list("1")).to_string();
        peer.receive(&first, NOW, Some(guard)).unwrap();
    }
    let second = from_cloud(&list("2")).to_string();
    assert_answered_with(&peer, &second, &full, "replay_guard_full", json!("2"));
    assert_answered_with(&peer, &second, &flooded, "too_many_messages", json!("2"));
}

#[test]
fn nothing_signed_before_the_connection_authenticated_is_heard() {
    let peer = device_peer();
    let earlier = from_cloud_at(&list("old"), NOW - 1).to_string();
    assert!(
        peer.receive(&earlier, NOW, Some(&guard())).is_ok(),
        "not authenticated yet"
    );

    peer.authenticated(NOW);
    peer.authenticated(NOW - 10_000); // the first call counts
    let earlier = from_cloud_at(&list("old"), NOW - 1).to_string();
    assert_answered_with(
        &peer,
        &earlier,
        &guard(),
        "older_than_session",
        json!("old"),
    );
    let at = from_cloud_at(&list("at"), NOW).to_string();
    assert!(peer.receive(&at, NOW, Some(&guard())).is_ok());
    assert!(
        peer.receive(&earlier, NOW, None).is_ok(),
        "the floor is one of the replay checks"
    );
}

#[test]
fn the_checks_run_in_order_and_the_first_refusal_counts() {
    let peer = device_peer();
    let guard = guard();
    peer.authenticated(NOW);
    // Stale and a bad method name: the timestamp is checked first.
    let stale = signed_by(
        &cloud_key(),
        CLOUD,
        DEVICE,
        Direction::CloudToDevice,
        NOW - SKEW - 1,
        &Message::request("bad", "rpc.>", json!({})),
    );
    assert_answered_with(&peer, &stale.to_string(), &guard, "stale", json!("bad"));
    // A bad method name and older than the session: the name is checked
    // first, and the nonce is never taken, so a copy is refused the same way.
    let bad_name = from_cloud_at(&Message::request("bad", "rpc.>", json!({})), NOW - 1);
    for _ in 0..2 {
        let text = bad_name.to_string();
        assert_answered_with(&peer, &text, &guard, "bad_method_name", json!("bad"));
    }
    // Older than the session and replayed: the floor comes first.
    let old = from_cloud_at(&list("old"), NOW - 1).to_string();
    assert_answered_with(&peer, &old, &guard, "older_than_session", json!("old"));
    assert!(guard.lock().unwrap().is_empty());
}

#[test]
fn a_binary_frame_is_refused_with_id_null() {
    let Refused { refusal, reply } = device_peer().refuse_binary(NOW);
    assert_eq!(refusal.reason(), "binary_frame");
    let (id, error) = answer_heard_by_cloud(&reply.unwrap());
    assert_eq!(id, Value::Null);
    assert_eq!(error.data, Some(json!({"reason": "binary_frame"})));
}

#[test]
fn only_the_challenge_notification_may_be_addressed_to_anyone_and_only_a_device_hears_one() {
    let to_anyone = |message: &Message, key: &SigningKey, signer, direction| {
        signed_by(key, signer, ANY_AUDIENCE, direction, NOW, message).to_string()
    };
    let challenge = Message::notification("auth.challenge", json!({"challenge": "c"}));
    let c2d = Direction::CloudToDevice;
    let heard = device_peer()
        .receive(&to_anyone(&challenge, &cloud_key(), CLOUD, c2d), NOW, None)
        .unwrap();
    assert_eq!(heard.message, challenge);

    let borrowed = Message::request("bad", "auth.challenge", json!({"challenge": "c"}));
    let text = to_anyone(&borrowed, &cloud_key(), CLOUD, c2d);
    assert_answered(&device_peer(), &text, "wrong_audience", json!("bad"));

    let d2c = Direction::DeviceToCloud;
    let text = to_anyone(&challenge, &device_key(), DEVICE, d2c);
    let refused = cloud_peer().receive(&text, NOW, None).unwrap_err();
    assert_eq!(refused.refusal.reason(), "wrong_audience");
}

/// The cloud before authentication: it parses first, learns from the frame
/// whom to expect, then verifies with that; until then it answers anyone.
#[test]
fn a_side_parses_before_it_knows_the_remote_and_answers_anyone() {
    let cloud = cloud_side();
    let refused = cloud.parse("{", NOW).unwrap_err();
    assert_eq!(refused.refusal.reason(), "malformed_json");
    let answer = protocol::parse_frame(&refused.reply.unwrap(), usize::MAX).unwrap();
    assert_eq!(answer["meta"]["audience_id"], ANY_AUDIENCE);
    assert_eq!(answer["id"], Value::Null);
    let binary = cloud.refuse_binary(NOW).reply.unwrap();
    assert!(binary.contains(r#""audience_id":"*""#), "{binary}");

    let authenticate = device_peer().sign(&list("a-1"), NOW);
    let frame = cloud.parse(&authenticate, NOW).unwrap();
    assert_eq!(frame.reply_to(), Some(json!("a-1")));
    assert_eq!(frame.get("method"), Some(&json!("containers.list")));
    let claimed = Remote {
        id: DEVICE.into(),
        key: device_key().verifying_key(),
    };
    let peer = cloud.peer(claimed);
    assert_eq!(peer.verify(frame, NOW, None).unwrap().message, list("a-1"));
}

#[test]
fn a_side_reading_ids_despite_parse_errors_answers_the_request_it_can_name() {
    let peer = device_side()
        .reading_ids_despite_parse_errors()
        .peer(Remote {
            id: CLOUD.into(),
            key: cloud_key().verifying_key(),
        });
    let text = from_cloud(&list("bad")).to_string();
    let unsafe_number = Message::request("bad", "a", json!({"n": 9_007_199_254_740_993u64}));
    let padded = Message::request("bad", "a", json!({"pad": "x".repeat(3000)}));
    let big_id =
        from_cloud(&list("x"))
            .to_string()
            .replacen(r#""id":"x""#, r#""id":9007199254740993"#, 1);
    for (text, reason, answered_id) in [
        (
            text.replacen(r#""all":true"#, r#""all":true,"all":true"#, 1),
            "duplicate_key",
            json!("bad"),
        ),
        (
            from_cloud(&unsafe_number).to_string(),
            "unsafe_number",
            json!("bad"),
        ),
        (
            text.replacen(r#""id":"bad""#, r#""id":"bad","id":"other""#, 1),
            "duplicate_key",
            Value::Null,
        ),
        (big_id, "unsafe_number", Value::Null),
        (from_cloud(&padded).to_string(), "too_large", Value::Null),
        (
            text[..text.len() - 1].to_owned(),
            "malformed_json",
            Value::Null,
        ),
    ] {
        assert_answered(&peer, &text, reason, answered_id);
    }
}

/// A device → cloud request signed by `key` as the device.
fn from_device_signed_by(key: &SigningKey) -> String {
    signed_by(
        key,
        DEVICE,
        CLOUD,
        Direction::DeviceToCloud,
        NOW,
        &Message::request("d-1", "cloud.ping", json!({})),
    )
    .to_string()
}

#[test]
fn a_replaced_key_is_heard_until_the_new_one_is_first_used() {
    let cloud = cloud_peer();
    let old = device_key();
    let new = SigningKey::from_bytes(&[3; 32]);
    cloud.replace_remote_key(new.verifying_key());
    assert_eq!(
        cloud.remote_keys(),
        [new.verifying_key(), old.verifying_key()]
    );
    // Frames the device signed before it learned of the change.
    let heard = cloud
        .receive(&from_device_signed_by(&old), NOW, None)
        .unwrap();
    assert_eq!(heard.key, old.verifying_key());
    let heard = cloud
        .receive(&from_device_signed_by(&new), NOW, None)
        .unwrap();
    assert_eq!(heard.key, new.verifying_key());
    // Once the new key was heard, the old one is not.
    assert_eq!(cloud.remote_keys(), [new.verifying_key()]);
    let refused = cloud
        .receive(&from_device_signed_by(&old), NOW, None)
        .unwrap_err();
    assert_eq!(refused.refusal.reason(), "bad_signature");
}

#[test]
fn a_remote_may_be_trusted_with_several_keys_never_with_none() {
    let first = cloud_key();
    let second = SigningKey::from_bytes(&[4; 32]);
    let device = device_side().peer_trusting(CLOUD.into(), vec![first.verifying_key()]);
    device.trust_remote_key(second.verifying_key());
    assert_eq!(
        device.remote_keys(),
        [second.verifying_key(), first.verifying_key()],
        "the newest first"
    );
    let frame = |key: &SigningKey| {
        let message = Message::request("c-1", "containers.list", json!({}));
        signed_by(key, CLOUD, DEVICE, Direction::CloudToDevice, NOW, &message).to_string()
    };
    for key in [&first, &second] {
        let heard = device.receive(&frame(key), NOW, None).unwrap();
        assert_eq!(heard.key, key.verifying_key());
    }
    assert!(device.distrust_remote_key(&first.verifying_key()));
    assert!(device.receive(&frame(&first), NOW, None).is_err());
    assert!(
        !device.distrust_remote_key(&second.verifying_key()),
        "never the last"
    );
    assert!(
        !device.distrust_remote_key(&first.verifying_key()),
        "not trusted"
    );
    assert_eq!(device.remote_keys(), [second.verifying_key()]);
}

#[test]
fn a_new_signer_signs_what_is_sent_and_the_refusals() {
    let device = device_peer();
    let new = SigningKey::from_bytes(&[5; 32]);
    device.set_signer(Arc::new(Signer::new(DEVICE, new.clone())));
    let cloud = cloud_peer();
    let sent = device.sign(&Message::request("d-1", "cloud.ping", json!({})), NOW);
    assert!(
        cloud.receive(&sent, NOW, None).is_err(),
        "the old key is not the signer"
    );
    cloud.replace_remote_key(new.verifying_key());
    assert!(cloud.receive(&sent, NOW, None).is_ok());
    let Refused { reply, .. } = device.refuse_binary(NOW);
    assert!(cloud.receive(&reply.unwrap(), NOW, None).is_ok());
}
