//! Cloud requests relayed to workers over NATS and answered signed, worker
//! calls and notifications signed to the cloud, and both again after the
//! nats-server restarts.

mod support;

use std::time::Duration;

use protocol::auth::AuthStatus;
use protocol::{Direction, ErrorCode, Message};
use serde_json::{json, Value};
use support::{live, scenario, scenario_without_workers, served, DEVICE_ID};
use testkit::fake_cloud::CLOUD_ID;
use testkit::{wait_until, PROMPTLY};
use tokio::time::Instant;

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
    assert_eq!(auth.params.device_id, DEVICE_ID);
    assert_eq!(
        auth.params.key, s.device_key,
        "params carry the device's key"
    );
    assert!(auth
        .params
        .public_key_pem
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(
        auth.params.challenge,
        Some(challenge),
        "the same challenge is echoed"
    );
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
    wait_until("the bridge to announce pending", PROMPTLY, || async {
        s.statuses().contains(&"pending".to_owned()).then_some(())
    })
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
        PROMPTLY,
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
