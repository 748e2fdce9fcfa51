//! The example second worker (`worker/examples/example_worker.rs`, README
//! "Adding a worker method") as a process beside a device's real worker, a
//! real bridge and nats-server, and a real cloud: the cloud calls the
//! example's method, and the events the cloud sends reach it; bad events are
//! refused with a reason while other devices keep answering; and the NATS
//! user `scripts/ensure-device-nats.sh` makes for it is enough to serve,
//! hear events and pass its health check.

use std::path::Path;
use std::process::Command;

use cloud::client::{ApiClient, ApiError};
use cloud::ops::ADMIN_TOKEN_ACTOR;
use cloud::roles::Role;
use e2e::example_worker::ExampleWorker;
use e2e::stack::{wait_for_device, RunningCloud, RunningDevice, SOON};
use protocol::nats::RPC_PREFIX;
use serde_json::{json, Value};
use testkit::nats::NatsServer;
use testkit::wait_until;

/// A device (bridge, real worker, nats-server) accepted and online, with the
/// example worker running on its NATS.
async fn device_with_example(cloud: &RunningCloud, id: &str) -> (RunningDevice, ExampleWorker) {
    let device = RunningDevice::start(id, cloud).await;
    let api = cloud.api();
    wait_for_device(&api, id, "the device to connect", |d| d["online"] == true).await;
    api.accept(id).await.expect("accept");
    let example = ExampleWorker::start(&device.nats.url(), &[]);
    // Until the example has subscribed, its method is not found.
    wait_until("the example worker to answer", SOON, || async {
        api.rpc(id, "example.echo", Some(json!({})), None)
            .await
            .ok()
    })
    .await;
    (device, example)
}

/// What `example.events` answers: the events the example heard.
async fn heard(api: &ApiClient, id: &str) -> Value {
    api.rpc(id, "example.events", None, None)
        .await
        .expect("example.events")
}

async fn refusal(api: &ApiClient, id: &str, event: &str, params: Option<Value>) -> ApiError {
    api.notify(id, event, params)
        .await
        .expect_err("the event is refused")
}

#[tokio::test]
async fn the_cloud_calls_the_example_workers_method_and_its_events_reach_it() {
    let cloud = RunningCloud::start().await;
    let api = cloud.api();
    let (_device, example) = device_with_example(&cloud, "example-1").await;

    let echoed = api
        .rpc(
            "example-1",
            "example.echo",
            Some(json!({"text": "hi"})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(echoed, json!({"echo": {"text": "hi"}}));
    // The real worker beside it still serves its own methods, and lists
    // only its own: each worker answers for what it serves.
    let discovered = api
        .rpc("example-1", "rpc.discover", None, None)
        .await
        .unwrap();
    let methods = discovered["methods"].as_array().unwrap();
    assert!(methods.contains(&json!("system.health")), "{discovered}");
    assert_eq!(heard(&api, "example-1").await["count"], 0);

    let sent = api
        .notify(
            "example-1",
            "example.notice",
            Some(json!({"text": "hello"})),
        )
        .await
        .unwrap();
    assert_eq!(sent, json!({"status": "sent"}));
    let events = wait_until("the example to hear the event", SOON, || async {
        let events = heard(&api, "example-1").await;
        (events["count"] == 1).then_some(events)
    })
    .await;
    assert_eq!(
        events["latest"],
        json!([{"event": "example.notice", "params": {"text": "hello"}}])
    );
    assert!(example.log().contains("event heard"), "{}", example.log());

    // An event no worker listens to is sent and dropped on the device:
    // nothing there acknowledges events, so the cloud cannot tell.
    api.notify("example-1", "example.unheard", None)
        .await
        .unwrap();
    api.notify("example-1", "example.notice", Some(json!([1, 2])))
        .await
        .unwrap();
    wait_until("the second notice to be heard", SOON, || async {
        (heard(&api, "example-1").await["count"] == 2).then_some(())
    })
    .await;
    let events = heard(&api, "example-1").await;
    assert_eq!(events["latest"][1]["params"], json!([1, 2]), "{events}");

    // Each event is audited with its name and outcome.
    let audit = api
        .audit("action=device.notify&target=example-1")
        .await
        .unwrap();
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{audit}");
    assert!(entries
        .iter()
        .all(|entry| entry["outcome"] == "ok" && entry["actor"] == ADMIN_TOKEN_ACTOR));
    assert!(entries
        .iter()
        .any(|entry| entry["detail"] == "example.unheard"));
}

#[tokio::test]
async fn bad_events_are_refused_with_a_reason_while_a_bystander_keeps_answering() {
    let cloud = RunningCloud::start().await;
    let api = cloud.api();
    let (_target, _example) = device_with_example(&cloud, "example-target").await;
    let (_bystander, _bystanders_example) = device_with_example(&cloud, "bystander").await;

    for (event, params, says) in [
        ("rpc.>", None, "bad event name"),
        ("example notice", None, "bad event name"),
        ("", None, "bad event name"),
        (
            "auth.status",
            Some(json!({"status": "rejected"})),
            "protocol's own",
        ),
        ("example.notice", Some(json!("text")), "object or array"),
        (
            "example.notice",
            Some(json!({"blob": "x".repeat(64 * 1024)})),
            "at most 65536",
        ),
        (
            "example.notice",
            Some(json!({"n": 9_007_199_254_740_993_u64})),
            "2^53",
        ),
    ] {
        let error = refusal(&api, "example-target", event, params).await;
        assert_eq!(error.status(), Some(400), "{event:?}: {error}");
        assert_eq!(error.kind(), Some("bad_request"), "{event:?}");
        assert!(error.to_string().contains(says), "{event:?}: {error}");
        // The bystander is not held up by the refusals.
        let echoed = api
            .rpc("bystander", "example.echo", Some(json!({"n": 1})), None)
            .await
            .unwrap();
        assert_eq!(echoed, json!({"echo": {"n": 1}}));
    }
    assert_eq!(heard(&api, "example-target").await["count"], 0);

    // An unknown device, and one that is not connected.
    let error = refusal(&api, "no-such-device", "example.notice", None).await;
    assert_eq!(
        (error.status(), error.kind()),
        (Some(404), Some("unknown_device"))
    );
    let offline = RunningDevice::start("offline-one", &cloud).await;
    wait_for_device(&api, "offline-one", "it to connect", |d| {
        d["online"] == true
    })
    .await;
    api.accept("offline-one").await.unwrap();
    drop(offline);
    wait_for_device(&api, "offline-one", "it to go", |d| d["online"] == false).await;
    let error = refusal(&api, "offline-one", "example.notice", None).await;
    assert_eq!((error.status(), error.kind()), (Some(503), Some("offline")));

    // A viewer may not send what the method roles give operators only.
    let accounts = &cloud.state().ops().store().accounts;
    let now = protocol::now_ms() as i64;
    accounts
        .add_operator("watcher", "a long enough password", Role::Viewer, now)
        .await
        .unwrap();
    let watcher = accounts.operator("watcher").await.unwrap().unwrap();
    let (_, secret) = accounts
        .create_token(&watcher, "test", Role::Viewer, now)
        .await
        .unwrap();
    let viewer = ApiClient::new(&format!("http://{}", cloud.addr), &secret, SOON);
    let error = refusal(&viewer, "example-target", "example.notice", None).await;
    assert_eq!(
        (error.status(), error.kind()),
        (Some(403), Some("forbidden"))
    );

    // The refusals are audited with the outcome, and the bystander heard nothing.
    let audit = api
        .audit("action=device.notify&failures_only=true")
        .await
        .unwrap();
    let outcomes: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|entry| entry["outcome"].as_str())
        .collect();
    for outcome in ["bad_request", "unknown_device", "offline", "forbidden"] {
        assert!(outcomes.contains(&outcome), "{outcome}: {audit}");
    }
    assert_eq!(heard(&api, "bystander").await["count"], 0);
    assert_eq!(heard(&api, "example-target").await["count"], 0);
}

#[tokio::test]
async fn the_example_user_of_the_device_broker_serves_hears_events_and_passes_its_health_check() {
    let users = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-device-nats.sh");
    let made = Command::new(script).arg(users.path()).output().unwrap();
    assert!(made.status.success(), "{made:?}");
    let nats = NatsServer::start_with_config(users.path().join("nats.conf")).await;
    let password_file = users.path().join("example.password");
    let login = ["--nats-user", "example", "--nats-password-file"];
    let mut args = login.to_vec();
    args.push(password_file.to_str().unwrap());
    let example = ExampleWorker::start(&nats.url(), &args);

    // Its health check, as its container runs it, signed in as itself.
    let healthy = || {
        let mut check = std::process::Command::new(example.binary());
        check
            .arg("--nats-url")
            .arg(nats.url())
            .args(&args)
            .arg("healthcheck");
        check.output().unwrap()
    };
    let passed = wait_until("the example's health check to pass", SOON, || async {
        let output = healthy();
        output.status.success().then_some(output)
    })
    .await;
    assert_eq!(String::from_utf8_lossy(&passed.stdout).trim(), "ok");

    // The bridge's user publishes a cloud event as the bridge relays one.
    let bridge_password = std::fs::read_to_string(users.path().join("bridge.password")).unwrap();
    let bridge = worker::nats_options(
        "bridge",
        Some(&worker::NatsLogin {
            user: "bridge".into(),
            password: bridge_password.trim().into(),
        }),
    )
    .connect(nats.url())
    .await
    .unwrap();
    let notification = protocol::nats::Relayed::notification(
        "example.notice",
        Some(json!({"text": "over the broker"})),
    )
    .unwrap();
    assert_eq!(notification.subject, format!("{RPC_PREFIX}example.notice"));
    assert!(notification.headers.is_none());
    bridge
        .publish(notification.subject, notification.payload.into())
        .await
        .unwrap();
    let events = wait_until("the example to hear it", SOON, || async {
        let request = json!({"jsonrpc": "2.0", "id": "t", "method": "example.events"});
        let reply = bridge
            .request("rpc.example.events", request.to_string().into())
            .await
            .ok()?;
        let answer: Value = serde_json::from_slice(&reply.payload).ok()?;
        (answer["result"]["count"] == 1).then_some(answer)
    })
    .await;
    assert_eq!(
        events["result"]["latest"][0]["params"],
        json!({"text": "over the broker"})
    );
    assert!(
        !example.log().contains("Permissions Violation"),
        "{}",
        example.log()
    );
}
