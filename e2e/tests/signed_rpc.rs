//! The whole signed RPC path, end to end: a real cloud, real bridges, a real
//! worker on a real nats-server, and the real Docker engine.

use std::time::{Duration, Instant};

use e2e::stack::{wait_for_device, RunningCloud, RunningDevice, SOON};
use futures::StreamExt;
use protocol::keys;
use serde_json::{json, Value};
use testkit::docker::TestContainer;
use testkit::wait_until;

async fn accepted_device(id: &str, cloud: &RunningCloud) -> RunningDevice {
    let device = RunningDevice::start(id, cloud).await;
    let api = cloud.api();
    wait_for_device(&api, id, "device pending", |d| d["status"] == "pending").await;
    api.accept(id).await.expect("accept");
    wait_for_device(&api, id, "device online", |d| d["online"] == true).await;
    wait_for_rpc_ok(cloud, id).await;
    device
}

/// Waits until `rpc.discover` answers: the bridge is live and a worker
/// serves. Returns its result.
async fn wait_for_rpc_ok(cloud: &RunningCloud, id: &str) -> Value {
    let api = cloud.api();
    wait_until("rpc.discover answered", SOON, || async {
        api.rpc(id, "rpc.discover", None, None).await.ok()
    })
    .await
}

fn texts(lines: &Value, stream: &str) -> Vec<String> {
    lines["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter(|l| l["stream"] == stream)
        .map(|l| l["text"].as_str().expect("text").to_owned())
        .collect()
}

#[tokio::test]
async fn a_new_device_is_pending_until_accepted_then_lists_containers_and_reads_logs() {
    let cloud = RunningCloud::start().await;
    let api = cloud.api();
    let device = RunningDevice::start("device-001", &cloud).await;

    let pending = wait_for_device(&api, "device-001", "device pending", |d| {
        d["status"] == "pending"
    })
    .await;
    assert_eq!(
        pending["fingerprint"],
        keys::fingerprint(&device.key.verifying_key())
    );
    let refused = api
        .rpc("device-001", "containers.list", None, None)
        .await
        .expect_err("a pending device is not called");
    assert_eq!(
        (refused.status(), refused.kind()),
        (Some(409), Some("not_accepted"))
    );

    // Accepting turns the same connection live: the bridge never reconnects.
    let nats = device.nats_client().await;
    let mut status = nats.subscribe(protocol::nats::BRIDGE_STATUS).await.unwrap();
    nats.flush().await.unwrap();
    api.accept("device-001").await.expect("accept");
    let next = tokio::time::timeout(SOON, status.next())
        .await
        .expect("a bridge.status")
        .unwrap();
    let next: Value = serde_json::from_slice(&next.payload).unwrap();
    assert_eq!(
        next["state"], "live",
        "the first state change after accept is live: {next}"
    );

    let container =
        TestContainer::start("echo line-1; echo line-2 >&2; echo line-3; sleep 600").await;
    let listed = wait_for_rpc_ok(&cloud, "device-001").await;
    assert!(listed["methods"]
        .as_array()
        .unwrap()
        .contains(&json!("containers.logs")));
    let list = api
        .rpc(
            "device-001",
            "containers.list",
            Some(json!({"all": true})),
            None,
        )
        .await
        .expect("containers.list");
    let ours = list["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["names"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n.as_str().unwrap().trim_start_matches('/') == container.name)
        })
        .cloned()
        .unwrap_or_else(|| panic!("{} not in {list}", container.name));
    assert_eq!(ours["image"], testkit::docker::BUSYBOX_IMAGE);
    assert_eq!(ours["state"], "running");

    let logs = wait_until("the container's three lines", SOON, || async {
        let params = json!({"container": container.name});
        let logs = api
            .rpc("device-001", "containers.logs", Some(params), None)
            .await
            .ok()?;
        logs["lines"]
            .as_array()
            .is_some_and(|l| l.len() == 3)
            .then_some(logs)
    })
    .await;
    assert_eq!(texts(&logs, "stdout"), ["line-1", "line-3"]);
    assert_eq!(texts(&logs, "stderr"), ["line-2"]);
    assert_eq!(logs["truncated"], false);
}

#[tokio::test]
async fn a_worker_pings_the_cloud_through_the_bridge_and_health_reaches_the_registry() {
    let cloud = RunningCloud::start().await;
    let device = accepted_device("device-ping", &cloud).await;

    let pong = worker::ping_cloud(&device.nats_client().await, Duration::from_secs(5))
        .await
        .expect("cloud.ping answered");
    assert_eq!(pong["pong"], true);
    assert_eq!(pong["cloud_id"], cloud.config.cloud_id);

    let with_health = wait_for_device(&cloud.api(), "device-ping", "a health report", |d| {
        !d["last_health"].is_null()
    })
    .await;
    let health = &with_health["last_health"];
    assert!(
        health["memory"]["total_bytes"].as_u64().unwrap() > 0,
        "{health}"
    );
    assert!(health["uptime_secs"].as_u64().unwrap() > 0, "{health}");
}

#[tokio::test]
async fn a_rejected_device_stays_out() {
    let cloud = RunningCloud::start().await;
    let api = cloud.api();
    let device =
        RunningDevice::start_bridge_only("device-bad", keys::generate(), &cloud, |config| {
            config.rejected_backoff = Duration::from_millis(200);
        })
        .await;
    wait_for_device(&api, "device-bad", "device pending", |d| {
        d["status"] == "pending"
    })
    .await;
    api.reject("device-bad").await.expect("reject");

    // The bridge keeps knocking (every 200 ms here); each time it is turned
    // away, and its attempts are counted in one row, not a row each.
    let attempts = |events: Vec<Value>| -> i64 {
        events
            .iter()
            .filter(|e| e["event"] == "authenticated")
            .map(|e| e["count"].as_i64().unwrap())
            .sum()
    };
    let attempts_before = attempts(auth_events(&cloud, "device-bad").await);
    let rows_before = auth_events(&cloud, "device-bad").await.len();
    wait_until("two more refused attempts", SOON, || async {
        (attempts(auth_events(&cloud, "device-bad").await) >= attempts_before + 2).then_some(())
    })
    .await;
    assert!(
        auth_events(&cloud, "device-bad").await.len() <= rows_before + 1,
        "a rejected device's attempts share one row"
    );
    let entry = api.device("device-bad").await.unwrap()["device"].clone();
    assert_eq!(
        (entry["status"].as_str(), entry["online"].as_bool()),
        (Some("rejected"), Some(false))
    );
    let refused = api
        .rpc("device-bad", "containers.list", None, None)
        .await
        .expect_err("a rejected device is not called");
    assert_eq!(refused.status(), Some(409), "{refused:?}");
    assert!(device.bridge_stats.refusals().is_empty());
}

#[tokio::test]
async fn a_known_id_with_another_key_is_refused_and_recorded() {
    let cloud = RunningCloud::start().await;
    let api = cloud.api();
    let genuine = accepted_device("device-twin", &cloud).await;
    let fingerprint = keys::fingerprint(&genuine.key.verifying_key());

    let impostor_key = keys::generate();
    let impostor_fingerprint = keys::fingerprint(&impostor_key.verifying_key());
    let _impostor =
        RunningDevice::start_bridge_only("device-twin", impostor_key, &cloud, |_| {}).await;

    let events = wait_until("a key_mismatch event", SOON, || async {
        let events = auth_events(&cloud, "device-twin").await;
        events
            .iter()
            .any(|e| e["event"] == "key_mismatch")
            .then_some(events)
    })
    .await;
    let mismatch = events
        .iter()
        .find(|e| e["event"] == "key_mismatch")
        .unwrap();
    assert!(
        mismatch["detail"]
            .as_str()
            .unwrap()
            .contains(&impostor_fingerprint),
        "{mismatch}"
    );

    let entry = api.device("device-twin").await.unwrap()["device"].clone();
    assert_eq!(entry["fingerprint"], fingerprint, "never silently re-keyed");
    assert_eq!(entry["status"], "accepted");
    let reply = api.rpc("device-twin", "rpc.discover", None, None).await;
    assert!(reply.is_ok(), "the genuine device carries on: {reply:?}");
}

#[tokio::test]
async fn rejecting_a_live_device_cuts_it_off_at_once() {
    let cloud = RunningCloud::start().await;
    let api = cloud.api();
    let device = accepted_device("device-cut", &cloud).await;
    let nats = device.nats_client().await;
    let mut status = nats.subscribe(protocol::nats::BRIDGE_STATUS).await.unwrap();
    nats.flush().await.unwrap();

    api.reject("device-cut").await.expect("reject");
    let entry = api.device("device-cut").await.unwrap()["device"].clone();
    assert_eq!(
        (entry["status"].as_str(), entry["online"].as_bool()),
        (Some("rejected"), Some(false))
    );
    let rejected = tokio::time::timeout(SOON, async {
        while let Some(message) = status.next().await {
            let state: Value = serde_json::from_slice(&message.payload).unwrap();
            if state["state"] == "rejected" {
                return;
            }
        }
    })
    .await;
    assert!(rejected.is_ok(), "the bridge learned it was rejected");
    let refused = api
        .rpc("device-cut", "rpc.discover", None, None)
        .await
        .expect_err("a rejected device is not called");
    assert_eq!(refused.status(), Some(409), "{refused:?}");
}

#[tokio::test]
async fn a_method_no_worker_serves_is_not_found_at_once() {
    let cloud = RunningCloud::start().await;
    let _device = accepted_device("device-nf", &cloud).await;
    let started = Instant::now();
    let error = cloud
        .api()
        .rpc(
            "device-nf",
            "no.such.method",
            None,
            Some(Duration::from_secs(20)),
        )
        .await
        .expect_err("no worker serves it");
    assert_eq!(error.kind(), Some("device_error"), "{error:?}");
    assert_eq!(
        error.rpc_error().and_then(|e| e["code"].as_i64()),
        Some(-32601),
        "{error:?}"
    );
    // Long before either timeout (20 s here, 25 s at the bridge).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_slow_worker_gives_a_timeout_error() {
    let cloud = RunningCloud::start().await;
    let mut device =
        RunningDevice::start_bridge_only("device-slow", keys::generate(), &cloud, |config| {
            config.worker_timeout = Duration::from_millis(300);
        })
        .await;
    device.start_worker().await;
    let api = cloud.api();
    wait_for_device(&api, "device-slow", "pending", |d| d["status"] == "pending").await;
    api.accept("device-slow").await.expect("accept");
    wait_for_rpc_ok(&cloud, "device-slow").await;
    // A worker that takes the request and never answers.
    let nats = device.nats_client().await;
    let _silent = nats
        .queue_subscribe("rpc.slow.method", "workers".into())
        .await
        .unwrap();
    nats.flush().await.unwrap();

    // Until the broker routes the new subscription to the bridge's requests
    // the method has no worker (-32601); once it does, the call times out.
    let at_bridge = wait_until("the silent worker takes the call", SOON, || async {
        let refused = api
            .rpc("device-slow", "slow.method", None, None)
            .await
            .expect_err("the worker never answers");
        let not_served = refused.rpc_error().and_then(|e| e["code"].as_i64()) == Some(-32601);
        (!not_served).then_some(refused)
    })
    .await;
    assert_eq!(at_bridge.kind(), Some("device_error"), "{at_bridge:?}");
    assert_eq!(
        at_bridge.rpc_error().and_then(|e| e["code"].as_i64()),
        Some(-32002),
        "{at_bridge:?}"
    );
}

#[tokio::test]
async fn the_cloud_times_out_a_call_the_device_does_not_answer_in_time() {
    let cloud = RunningCloud::start().await;
    let device = accepted_device("device-late", &cloud).await;
    let nats = device.nats_client().await;
    let _silent = nats
        .queue_subscribe("rpc.slow.method", "workers".into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let error = cloud
        .api()
        .rpc(
            "device-late",
            "slow.method",
            None,
            Some(Duration::from_millis(300)),
        )
        .await
        .expect_err("the device does not answer in time");
    assert_eq!(
        (error.status(), error.kind()),
        (Some(504), Some("timed_out")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_device_that_disconnects_mid_call_fails_the_call_at_once() {
    let cloud = RunningCloud::start().await;
    let mut device = accepted_device("device-drop", &cloud).await;
    let nats = device.nats_client().await;
    let mut silent = nats
        .queue_subscribe("rpc.slow.method", "workers".into())
        .await
        .unwrap();
    nats.flush().await.unwrap();

    let api = cloud.api();
    let call = tokio::spawn(async move {
        let started = Instant::now();
        let reply = api
            .rpc(
                "device-drop",
                "slow.method",
                None,
                Some(Duration::from_secs(60)),
            )
            .await;
        (reply, started.elapsed())
    });
    tokio::time::timeout(SOON, silent.next())
        .await
        .expect("the call reached the device");
    device.stop_bridge().await;
    let (reply, elapsed) = tokio::time::timeout(SOON, call)
        .await
        .expect("no hang")
        .unwrap();
    let error = reply.expect_err("the device left mid-call");
    assert_eq!(error.kind(), Some("disconnected"), "{error:?}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
}

#[tokio::test]
async fn after_a_cloud_restart_the_bridge_reconnects_and_calls_work_again() {
    let mut cloud = RunningCloud::start().await;
    let _device = accepted_device("device-rc", &cloud).await;
    cloud.restart().await;
    let discovered = wait_for_rpc_ok(&cloud, "device-rc").await;
    assert!(discovered["methods"]
        .as_array()
        .unwrap()
        .contains(&json!("containers.list")));
}

#[tokio::test]
async fn after_a_nats_restart_bridge_and_worker_reconnect() {
    let cloud = RunningCloud::start().await;
    let mut device = accepted_device("device-rn", &cloud).await;
    device.nats.restart().await;
    wait_for_rpc_ok(&cloud, "device-rn").await;
    let nats = device.nats_client().await;
    let pong = wait_until("cloud.ping after the restart", SOON, || async {
        worker::ping_cloud(&nats, Duration::from_secs(2)).await.ok()
    })
    .await;
    assert_eq!(pong["pong"], true);
}

async fn auth_events(cloud: &RunningCloud, device: &str) -> Vec<Value> {
    let page = cloud
        .api()
        .get(&format!("/auth-events?device_id={device}"))
        .await
        .expect("GET /auth-events");
    page["events"].as_array().cloned().expect("events")
}
