//! Every way a frame is refused at the cloud, one test each. Each asserts the
//! signed error's reason, that the refusal was counted, and that a valid
//! `cloud.ping` on the same connection still works afterwards.

mod support;

use std::time::Duration;

use protocol::keys;
use protocol::{canonical_signing_bytes, Direction, Message};
use serde_json::{json, Map, Value};
use support::TestCloud;
use testkit::fake_device::FakeDevice;

const SMALL_FRAME_LIMIT: usize = 2048;

/// A live device to misbehave, and a bystander that must not notice.
async fn live_device() -> (TestCloud, FakeDevice, FakeDevice) {
    let cloud = TestCloud::start_with(|c| c.max_frame_bytes = SMALL_FRAME_LIMIT).await;
    let device = cloud.accepted_device("dev-1").await;
    let bystander = cloud.accepted_device("dev-2").await;
    (cloud, device, bystander)
}

fn ping(id: &str) -> Message {
    Message::request(id, "cloud.ping", json!({"n": 1}))
}

/// Asserts the refusal (answered with `id`), its count, and that the
/// connection and the other device carry on.
async fn assert_refused_then_alive(
    cloud: &TestCloud,
    device: &mut FakeDevice,
    bystander: &mut FakeDevice,
    id: Value,
    reason: &str,
) {
    device.expect_refusal(id, reason).await;
    assert!(
        cloud
            .state
            .devices()
            .refusals()
            .get(reason)
            .copied()
            .unwrap_or(0)
            >= 1,
        "{reason} not counted: {:?}",
        cloud.state.devices().refusals()
    );
    device.ping_cloud().await;
    bystander.ping_cloud().await;
}

#[tokio::test]
async fn tampered_params() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let frame = device.signed(&ping("r-1")).tampered("/params/n", json!(2));
    device.send(&frame).await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        json!("r-1"),
        "bad_signature",
    )
    .await;
}

#[tokio::test]
async fn tampered_meta_field() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let signed = device.signed(&ping("r-1"));
    let timestamp = signed
        .get("/meta/timestamp")
        .and_then(Value::as_u64)
        .unwrap();
    let frame = signed.tampered("/meta/timestamp", json!(timestamp - 1));
    device.send(&frame).await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        json!("r-1"),
        "bad_signature",
    )
    .await;
}

#[tokio::test]
async fn wrong_audience() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let frame = device.frame(ping("r-1")).audience("another-cloud").sign();
    device.send(&frame).await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        json!("r-1"),
        "wrong_audience",
    )
    .await;
}

#[tokio::test]
async fn wrong_direction() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let frame = device
        .frame(ping("r-1"))
        .direction(Direction::CloudToDevice)
        .sign();
    device.send(&frame).await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        json!("r-1"),
        "wrong_direction",
    )
    .await;
}

#[tokio::test]
async fn stale_timestamp_beyond_skew() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let frame = device
        .frame(ping("r-1"))
        .aged(Duration::from_millis(61_000))
        .sign();
    device.send(&frame).await;
    assert_refused_then_alive(&cloud, &mut device, &mut bystander, json!("r-1"), "stale").await;
}

#[tokio::test]
async fn future_timestamp_beyond_skew() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let frame = device
        .frame(ping("r-1"))
        .ahead(Duration::from_millis(61_000))
        .sign();
    device.send(&frame).await;
    assert_refused_then_alive(&cloud, &mut device, &mut bystander, json!("r-1"), "future").await;
}

#[tokio::test]
async fn byte_exact_replay() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let text = device.signed(&ping("r-1")).text();
    device.send_text(text.clone()).await;
    assert!(device.expect_response(json!("r-1")).await.is_ok());
    device.send_text(text).await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        json!("r-1"),
        "replayed",
    )
    .await;
}

#[tokio::test]
async fn unknown_signer() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let frame = device.frame(ping("r-1")).signer_id("mallory").sign();
    device.send(&frame).await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        json!("r-1"),
        "wrong_signer",
    )
    .await;
}

#[tokio::test]
async fn signature_by_another_key() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let frame = device.frame(ping("r-1")).key(keys::generate()).sign();
    device.send(&frame).await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        json!("r-1"),
        "bad_signature",
    )
    .await;
}

#[tokio::test]
async fn missing_meta() {
    let (cloud, mut device, mut bystander) = live_device().await;
    device
        .send(&device.signed(&ping("r-1")).without("/meta"))
        .await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        json!("r-1"),
        "missing_meta",
    )
    .await;
}

#[tokio::test]
async fn other_algorithm() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let frame = device
        .signed(&ping("r-1"))
        .tampered("/meta/algorithm", json!("hmac-sha256"));
    device.send(&frame).await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        json!("r-1"),
        "unsupported_algorithm",
    )
    .await;
}

#[tokio::test]
async fn malformed_json() {
    let (cloud, mut device, mut bystander) = live_device().await;
    device
        .send_text(r#"{"jsonrpc":"2.0","id":"r-1","method":"cloud.ping""#)
        .await;
    // The id of an unreadable frame is unknown: JSON-RPC answers with null.
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        Value::Null,
        "malformed_json",
    )
    .await;
}

#[tokio::test]
async fn duplicate_keys() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let text = device.signed(&ping("r-1")).text();
    let duplicated = text.replacen('{', r#"{"method":"containers.remove","#, 1);
    device.send_text(duplicated).await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        Value::Null,
        "duplicate_key",
    )
    .await;
}

#[tokio::test]
async fn integer_beyond_two_to_the_53() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let two_53: u64 = 1 << 53;
    let with = |n: u64| Message::request("r-1", "cloud.ping", json!({ "n": n }));

    // The trap: JCS writes 2^53+1 as the double 2^53, so both sign the same bytes.
    let canonical = |n| {
        let mut map: Map<String, Value> = with(n).to_value();
        map.insert("meta".into(), json!({}));
        canonical_signing_bytes(&map)
    };
    assert_eq!(canonical(two_53 + 1), canonical(two_53));

    // 2^53+1 signed as is: refused before any signature check.
    device.send(&device.signed(&with(two_53 + 1))).await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        Value::Null,
        "unsafe_number",
    )
    .await;

    // Its rounded neighbour signed, while the frame carries 2^53+1: refused too.
    let signed_neighbour = device.signed(&with(two_53)).text();
    let carried = signed_neighbour.replace(&two_53.to_string(), &(two_53 + 1).to_string());
    assert_ne!(carried, signed_neighbour);
    device.send_text(carried).await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        Value::Null,
        "unsafe_number",
    )
    .await;
}

#[tokio::test]
async fn batch_array() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let frame = device.signed(&ping("r-1"));
    device.send_text(format!("[{}]", frame.text())).await;
    assert_refused_then_alive(&cloud, &mut device, &mut bystander, Value::Null, "batch").await;
}

#[tokio::test]
async fn binary_frame() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let text = device.signed(&ping("r-1")).text();
    device.send_binary(text.into_bytes()).await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        Value::Null,
        "binary_frame",
    )
    .await;
}

#[tokio::test]
async fn oversized_frame() {
    let (cloud, mut device, mut bystander) = live_device().await;
    let padding = "x".repeat(SMALL_FRAME_LIMIT);
    let big = Message::request("r-1", "cloud.ping", json!({ "padding": padding }));
    device.send(&device.signed(&big)).await;
    let error = device.expect_refusal(Value::Null, "too_large").await;
    assert!(
        error.message.contains("exceeds the limit"),
        "{}",
        error.message
    );
    assert_eq!(cloud.state.devices().refusals().get("too_large"), Some(&1));
    device.ping_cloud().await;
    bystander.ping_cloud().await;
}

#[tokio::test]
async fn bad_method_name() {
    let (cloud, mut device, mut bystander) = live_device().await;
    device
        .send_message(&Message::request("r-1", "rpc.>", json!({})))
        .await;
    assert_refused_then_alive(
        &cloud,
        &mut device,
        &mut bystander,
        json!("r-1"),
        "bad_method_name",
    )
    .await;
}

#[tokio::test]
async fn a_refused_notification_is_not_answered() {
    let (cloud, mut device, _bystander) = live_device().await;
    let frame = device
        .signed(&Message::notification("device.health", json!({"cpu": 1})))
        .tampered("/params/cpu", json!(99));
    device.send(&frame).await;
    // The next thing the device hears is the answer to its ping, not an error.
    device.ping_cloud().await;
    assert_eq!(
        cloud.state.devices().refusals().get("bad_signature"),
        Some(&1)
    );
    assert_eq!(
        cloud.api().device("dev-1").await.unwrap()["device"]["last_health"],
        Value::Null
    );
}

#[tokio::test]
async fn unknown_cloud_method_is_method_not_found() {
    let (_cloud, mut device, _bystander) = live_device().await;
    let error = device.call("cloud.nothing", json!({})).await.unwrap_err();
    assert_eq!(error.code, protocol::ErrorCode::MethodNotFound.code());
    device.ping_cloud().await;
}

#[tokio::test]
async fn a_device_over_its_message_cap_is_refused_and_the_others_carry_on() {
    let cloud = TestCloud::start_with(|config| config.replay_per_device = 4).await;
    let mut device = cloud.accepted_device("dev-1").await;
    let mut bystander = cloud.accepted_device("dev-2").await;
    // The authentication request takes no nonce (its challenge is single-use).
    for _ in 0..4 {
        device.ping_cloud().await;
    }
    device.send_message(&ping("r-over")).await;
    device
        .expect_refusal(json!("r-over"), "too_many_messages")
        .await;
    assert_eq!(
        cloud.state.devices().refusals().get("too_many_messages"),
        Some(&1)
    );
    for _ in 0..3 {
        bystander.ping_cloud().await;
    }
}
