//! The worker's NATS contract, against a real nats-server: `rpc.<method>`,
//! `cloud.notify.*`, `cloud.call.*`, `bridge.status`, and surviving a server
//! restart.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use protocol::nats::{BridgeStatus, LinkState, BRIDGE_STATUS};
use serde_json::{json, Value};
use support::{fast_reports, nats_rpc, wait_for_list_over_nats, RunningWorker, DEADLINE};
use testkit::docker::{TestContainer, BUSYBOX_IMAGE};
use testkit::nats::NatsServer;
use testkit::wait_until;
use worker::CloudCallError;

#[tokio::test]
async fn a_request_on_rpc_method_gets_the_json_rpc_response() {
    let server = NatsServer::start().await;
    let container = TestContainer::start("sleep 600").await;
    let worker = RunningWorker::start(&server, fast_reports()).await;
    let client = server.client().await;

    let response = wait_for_list_over_nats(&client).await;
    assert_eq!(response["jsonrpc"], "2.0");
    assert_eq!(response["id"], "c-17");
    let names: Vec<&Value> = response["result"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| &row["names"][0])
        .collect();
    assert!(names.contains(&&json!(container.name)), "{response}");

    let error = nats_rpc(
        &client,
        "containers.logs",
        json!({"container": testkit::docker::unique_name()}),
    )
    .await
    .unwrap();
    assert_eq!(error["error"]["code"], -32602, "{error}");
    assert_eq!(error["id"], "c-17");

    worker.stop().await;
}

#[tokio::test]
async fn an_unserved_method_has_no_responders() {
    let server = NatsServer::start().await;
    let worker = RunningWorker::start(&server, fast_reports()).await;
    let client = server.client().await;
    wait_for_list_over_nats(&client).await;

    let error = nats_rpc(&client, "no.such.method", json!({}))
        .await
        .expect_err("nobody serves no.such.method");
    assert_eq!(error.kind(), async_nats::RequestErrorKind::NoResponders);

    worker.stop().await;
}

#[tokio::test]
async fn health_is_published_on_cloud_notify_device_health() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut reports = client
        .subscribe("cloud.notify.device.health")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let worker = RunningWorker::start(&server, fast_reports()).await;

    for _ in 0..2 {
        let report = tokio::time::timeout(DEADLINE, reports.next())
            .await
            .expect("a health report in time")
            .expect("the subscription is open");
        let health: Value = serde_json::from_slice(&report.payload).unwrap();
        assert!(
            health["memory"]["total_bytes"].as_u64().unwrap() > 0,
            "{health}"
        );
        assert!(health["containers_running"].is_i64(), "{health}");
    }

    worker.stop().await;
}

#[tokio::test]
async fn a_started_container_is_published_as_a_container_event() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut events = client
        .subscribe("cloud.notify.device.container_event")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let worker = RunningWorker::start(&server, fast_reports()).await;

    let container = TestContainer::start("sleep 600").await;
    let started = tokio::time::timeout(DEADLINE, async {
        while let Some(message) = events.next().await {
            let event: Value = serde_json::from_slice(&message.payload).unwrap();
            if event["name"] == json!(container.name) && event["action"] == "start" {
                return event;
            }
        }
        panic!("the event subscription closed");
    })
    .await
    .expect("a start event for the test container");
    assert_eq!(started["container_id"], container.id);
    assert_eq!(started["image"], BUSYBOX_IMAGE);
    assert!(started["time"].as_i64().unwrap() > 0);

    worker.stop().await;
}

/// Plays the bridge's side of `cloud.call.cloud.ping`: answers each call with
/// `answer` and counts them.
async fn fake_bridge_ping(client: &async_nats::Client, answer: Value) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut requests = client.subscribe("cloud.call.cloud.ping").await.unwrap();
    client.flush().await.unwrap();
    let (client, counter) = (client.clone(), calls.clone());
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            counter.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = request.reply {
                let _ = client.publish(reply, answer.to_string().into()).await;
            }
        }
    });
    calls
}

#[tokio::test]
async fn ping_cloud_returns_the_bridges_answer() {
    let server = NatsServer::start().await;
    let bridge = server.client().await;
    let pings = fake_bridge_ping(
        &bridge,
        json!({"jsonrpc": "2.0", "id": 1, "result": {"pong": true}}),
    )
    .await;
    let device = server.client().await;

    let answer = worker::ping_cloud(&device, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(answer, json!({"pong": true}));
    assert_eq!(pings.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_cloud_error_comes_back_as_rpc_error() {
    let server = NatsServer::start().await;
    let bridge = server.client().await;
    fake_bridge_ping(
        &bridge,
        json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "bridge not live"}}),
    )
    .await;
    let device = server.client().await;

    match worker::ping_cloud(&device, Duration::from_secs(2)).await {
        Err(CloudCallError::Rpc(error)) => {
            assert_eq!(error.code, -32005);
            assert_eq!(error.message, "bridge not live");
        }
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

#[tokio::test]
async fn ping_cloud_without_a_bridge_is_no_bridge() {
    let server = NatsServer::start().await;
    let device = server.client().await;
    let result = worker::ping_cloud(&device, Duration::from_secs(2)).await;
    assert!(
        matches!(result, Err(CloudCallError::NoBridge)),
        "{result:?}"
    );
}

#[tokio::test]
async fn the_worker_pings_the_cloud_when_the_bridge_goes_live() {
    let server = NatsServer::start().await;
    let bridge = server.client().await;
    let pings = fake_bridge_ping(
        &bridge,
        json!({"jsonrpc": "2.0", "id": 1, "result": {"pong": true}}),
    )
    .await;
    let worker = RunningWorker::start(&server, fast_reports()).await;
    // The start-up ping: the bridge is up before the worker.
    wait_until("the start-up ping", DEADLINE, || async {
        (pings.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let after_start = pings.load(Ordering::SeqCst);

    // Going live again after another state pings again.
    let status = |state| {
        let status = BridgeStatus {
            state,
            device_id: "device-001".into(),
            at_ms: protocol::now_ms(),
        };
        serde_json::to_vec(&status).unwrap().into()
    };
    bridge
        .publish(BRIDGE_STATUS, status(LinkState::Connecting))
        .await
        .unwrap();
    bridge
        .publish(BRIDGE_STATUS, status(LinkState::Live))
        .await
        .unwrap();
    wait_until("a ping after the bridge went live", DEADLINE, || async {
        (pings.load(Ordering::SeqCst) > after_start).then_some(())
    })
    .await;

    worker.stop().await;
}

#[tokio::test]
async fn the_worker_serves_again_after_nats_server_restarts() {
    let mut server = NatsServer::start().await;
    let worker = RunningWorker::start(&server, fast_reports()).await;
    let client = server.client().await;
    wait_for_list_over_nats(&client).await;

    server.restart().await;

    // Both the worker's client and the test's reconnect on their own.
    let response = wait_for_list_over_nats(&client).await;
    assert!(response["result"]["containers"].is_array(), "{response}");

    worker.stop().await;
}

#[tokio::test]
async fn the_worker_starts_before_nats_server_and_serves_once_it_is_up() {
    let mut server = NatsServer::start().await;
    server.stop();
    let worker = RunningWorker::start(&server, fast_reports()).await;

    server.restart().await;

    let client = server.client().await;
    let response = wait_for_list_over_nats(&client).await;
    assert!(response["result"]["containers"].is_array(), "{response}");

    worker.stop().await;
}
