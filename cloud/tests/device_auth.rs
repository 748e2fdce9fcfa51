//! Authentication at `/ws/device`: pending → accepted on the same socket,
//! rejection, key mismatch, replacement, deletion and failed handshakes.

mod support;

use std::time::Duration;

use protocol::{keys, Message};
use reqwest::Method;
use serde_json::json;
use support::{wait_until, TestCloud};

#[tokio::test]
async fn a_fresh_key_is_pending_and_goes_live_on_the_same_socket_when_accepted() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.connect("dev-1").await;
    assert_eq!(device.authenticate().await, json!({"status": "pending"}));

    let shown = cloud.api().device("dev-1").await.unwrap();
    assert_eq!(shown["device"]["status"], "pending");
    assert_eq!(shown["device"]["online"], true);
    assert_eq!(shown["device"]["fingerprint"], device.fingerprint());
    assert_eq!(shown["device"]["public_key"], device.public_key_pem());
    assert_eq!(shown["device"]["bridge_version"], "test-0.1");
    assert_eq!(shown["auth_events"][0]["event"], "new_key");

    // Pending: nothing but auth traffic.
    let error = device.call("cloud.ping", json!({})).await.unwrap_err();
    assert_eq!(error.code, protocol::ErrorCode::NotAccepted.code());
    assert_eq!(error.message, "device is pending approval");

    let (status, body) = cloud
        .api()
        .request(Method::POST, "/devices/dev-1/accept", Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device"]["status"], "accepted");
    device.expect_status_notification("accepted").await;
    device.ping_cloud().await;

    // A cloud → device call reaches the device and its answer comes back.
    let fleet_call = {
        let state = cloud.state.clone();
        tokio::spawn(async move {
            state
                .devices()
                .fleet()
                .call(
                    "dev-1",
                    "containers.list",
                    Some(json!({"all": true})),
                    Duration::from_secs(5),
                )
                .await
        })
    };
    let Message::Request { id, method, params } = device.recv().await else {
        panic!("expected a request");
    };
    assert_eq!(method, "containers.list");
    assert_eq!(params, Some(json!({"all": true})));
    device
        .send_message(&Message::result(id, json!([{"id": "abc"}])))
        .await;
    assert_eq!(fleet_call.await.unwrap().unwrap(), json!([{"id": "abc"}]));
}

#[tokio::test]
async fn a_rejected_device_is_closed_with_4001_and_stays_out() {
    let cloud = TestCloud::start().await;
    let key = keys::generate();
    let mut device = cloud.connect_with_key("dev-1", key.clone()).await;
    assert_eq!(device.authenticate().await, json!({"status": "pending"}));

    let (status, _) = cloud
        .api()
        .request(Method::POST, "/devices/dev-1/reject", Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(status, 200);
    device.expect_status_notification("rejected").await;
    assert_eq!(
        device.expect_close().await,
        (4001, "device rejected".into())
    );

    let mut again = cloud.connect_with_key("dev-1", key).await;
    assert_eq!(again.authenticate().await, json!({"status": "rejected"}));
    assert_eq!(again.expect_close().await.0, 4001);
    // The close is sent before the connection's end is tidied away.
    wait_until("the rejected device is not online", || async {
        !cloud.state.devices().fleet().is_online("dev-1")
    })
    .await;
}

#[tokio::test]
async fn a_known_id_with_a_different_key_is_refused_with_4002_and_recorded() {
    let cloud = TestCloud::start().await;
    let mut original = cloud.connect("dev-1").await;
    original.authenticate().await;
    let registered = original.fingerprint();

    let mut impostor = cloud.connect("dev-1").await;
    let answer = impostor.authenticate().await;
    assert_eq!(answer["data"]["reason"], "key_mismatch", "{answer}");
    assert_eq!(impostor.expect_close().await.0, 4002);

    let (status, body) = cloud
        .api()
        .request(Method::GET, "/auth-events?device_id=dev-1", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let mismatch = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "key_mismatch")
        .expect("a key_mismatch event");
    assert!(mismatch["detail"]
        .as_str()
        .unwrap()
        .contains(&impostor.fingerprint()));
    // Never re-keyed; the original connection is untouched.
    assert_eq!(
        cloud.api().device("dev-1").await.unwrap()["device"]["fingerprint"],
        registered
    );
    assert!(cloud.state.devices().fleet().is_online("dev-1"));
}

#[tokio::test]
async fn rejecting_a_live_device_closes_its_socket_at_once() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    cloud.api().reject("dev-1").await.unwrap();
    device.expect_status_notification("rejected").await;
    assert_eq!(device.expect_close().await.0, 4001);
}

#[tokio::test]
async fn deleting_a_live_device_closes_its_socket_and_a_reconnect_is_pending_again() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let key = device.key.clone();
    let api = cloud.api();
    let (status, _) = api
        .request(Method::DELETE, "/devices/dev-1", None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    assert_eq!(device.expect_close().await, (4005, "device deleted".into()));
    let (status, _) = api
        .request(Method::GET, "/devices/dev-1", None)
        .await
        .unwrap();
    assert_eq!(status, 404);

    let mut again = cloud.connect_with_key("dev-1", key).await;
    assert_eq!(again.authenticate().await, json!({"status": "pending"}));
}

#[tokio::test]
async fn a_second_connection_replaces_the_first() {
    let cloud = TestCloud::start().await;
    let mut first = cloud.accepted_device("dev-1").await;
    let mut second = cloud.connect_with_key("dev-1", first.key.clone()).await;
    assert_eq!(second.authenticate().await, json!({"status": "accepted"}));
    assert_eq!(
        first.expect_close().await,
        (4004, "replaced by a newer connection".into())
    );
    second.ping_cloud().await;

    let call = {
        let state = cloud.state.clone();
        tokio::spawn(async move {
            state
                .devices()
                .fleet()
                .call("dev-1", "system.health", None, Duration::from_secs(5))
                .await
        })
    };
    let Message::Request { id, .. } = second.recv().await else {
        panic!("expected the call on the newer connection");
    };
    second.send_message(&Message::result(id, json!("ok"))).await;
    assert_eq!(call.await.unwrap().unwrap(), json!("ok"));
}

#[tokio::test]
async fn the_subprotocol_is_required() {
    use tokio_tungstenite::tungstenite::Error;
    let cloud = TestCloud::start().await;
    match tokio_tungstenite::connect_async(cloud.ws_url()).await {
        Err(Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body = String::from_utf8(response.body().clone().unwrap()).unwrap();
            assert!(body.contains("signed-jsonrpc.v1"), "{body}");
        }
        other => panic!("expected a refused upgrade, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_challenge_fails_authentication_with_4003() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.connect("dev-1").await;
    let request = Message::request(
        "a-1",
        "device.authenticate",
        json!({
            "device_id": "dev-1",
            "public_key": device.public_key_pem(),
            "challenge": "bm90IHRoZSBjaGFsbGVuZ2U",
            "bridge_version": "test",
        }),
    );
    device.send_message(&request).await;
    device.expect_refusal(json!("a-1"), "bad_challenge").await;
    assert_eq!(device.expect_close().await.0, 4003);
    let (status, _) = cloud
        .api()
        .request(Method::GET, "/devices/dev-1", None)
        .await
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn authentication_signed_by_another_key_fails_and_is_recorded_for_a_known_device() {
    let cloud = TestCloud::start().await;
    let mut original = cloud.connect("dev-1").await;
    original.authenticate().await;

    // Claims the registered key but signs with another: no proof of possession.
    let mut device = cloud.connect("dev-1").await;
    let request = Message::request(
        "a-1",
        "device.authenticate",
        json!({
            "device_id": "dev-1",
            "public_key": original.public_key_pem(),
            "challenge": device.challenge,
            "bridge_version": "test",
        }),
    );
    device.send(&device.signed(&request)).await;
    device.expect_refusal(json!("a-1"), "bad_signature").await;
    assert_eq!(device.expect_close().await.0, 4003);
    let body = cloud
        .api()
        .get("/auth-events?device_id=dev-1")
        .await
        .unwrap();
    assert_eq!(body["events"][0]["event"], "auth_failed", "{body}");
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_auth_timeout() {
    let cloud = TestCloud::start_with(|c| c.auth_timeout = Duration::from_millis(300)).await;
    let mut device = cloud.connect("dev-1").await;
    assert_eq!(device.expect_close().await.0, 4006);
}

#[tokio::test]
async fn an_operator_decision_reaches_a_device_that_is_still_connecting() {
    // Accepting before the device authenticates: it is told "accepted" at once.
    let cloud = TestCloud::start().await;
    let key = keys::generate();
    let mut first = cloud.connect_with_key("dev-1", key.clone()).await;
    first.authenticate().await;
    first.drop_connection();
    wait_until("the first connection is gone", || async {
        !cloud.state.devices().fleet().is_online("dev-1")
    })
    .await;
    cloud.api().accept("dev-1").await.unwrap();
    let mut device = cloud.connect_with_key("dev-1", key).await;
    assert_eq!(device.authenticate().await, json!({"status": "accepted"}));
    device.ping_cloud().await;
}

/// A rotation the device sent on a connection that died before the answer
/// came back is done in the registry; the device resumes it on its next
/// connection, which authenticated with the old key: the cloud finishes it
/// there too instead of refusing `key_changed`.
#[tokio::test]
async fn a_rotation_already_done_is_finished_when_the_device_resumes_it() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let old = protocol::keys::public_key_to_pem(&device.key.verifying_key());
    let next = protocol::keys::generate();
    let new_pem = protocol::keys::public_key_to_pem(&next.verifying_key());
    let new = protocol::keys::fingerprint(&next.verifying_key());
    // The earlier connection's rotation, done while this one was authenticating.
    cloud
        .state
        .devices()
        .registry()
        .rotate_key("dev-1", &old, &new_pem, &new, "earlier connection", 1)
        .await
        .unwrap()
        .expect("switched");

    let id = device.send_rotation(next.verifying_key(), &next).await;
    let rotated = device.expect_response(json!(id)).await.unwrap();
    assert_eq!(rotated["fingerprint"], new);
    device.use_key(next);
    device.ping_cloud().await;

    // Another key entirely is still refused as changed.
    let mut other = cloud.connect("dev-2").await;
    other.authenticate().await;
    cloud.api().accept("dev-2").await.unwrap();
    other.expect_status_notification("accepted").await;
    let other_old = protocol::keys::public_key_to_pem(&other.key.verifying_key());
    let elsewhere = protocol::keys::generate().verifying_key();
    cloud
        .state
        .devices()
        .registry()
        .rotate_key(
            "dev-2",
            &other_old,
            &protocol::keys::public_key_to_pem(&elsewhere),
            &protocol::keys::fingerprint(&elsewhere),
            "someone else",
            1,
        )
        .await
        .unwrap()
        .expect("switched");
    let mine = protocol::keys::generate();
    let id = other.send_rotation(mine.verifying_key(), &mine).await;
    let refused = other.expect_response(json!(id)).await.unwrap_err();
    assert_eq!(refused.data.unwrap()["reason"], "key_changed");
}
