//! The worker against the real Docker engine (its methods called in-process)
//! and a real nats-server (the NATS contract: `rpc.<method>`, `cloud.notify.*`,
//! `cloud.call.*`, `bridge.status`, and surviving a server restart).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::docker::{TestContainer, BUSYBOX_IMAGE};
use e2e::nats::NatsServer;
use e2e::wait_until;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::jsonrpsee::RpcModule;
use worker::{CloudCallError, WorkerConfig};

const DEADLINE: Duration = Duration::from_secs(20);

async fn module_with(config: WorkerConfig) -> RpcModule<()> {
    worker::rpc_module(e2e::docker::docker().await, &config)
}

async fn module() -> RpcModule<()> {
    module_with(WorkerConfig::default()).await
}

/// Calls `method` in-process; `Err` holds the JSON-RPC error object.
async fn call(module: &RpcModule<()>, method: &str, params: Value) -> Result<Value, Value> {
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (response, _) = module
        .raw_json_request(&request.to_string(), 1)
        .await
        .expect("a well-formed request");
    let response: Value = serde_json::from_str(response.get()).expect("a JSON response");
    match response.get("error") {
        Some(error) => Err(error.clone()),
        None => Ok(response["result"].clone()),
    }
}

async fn call_ok(module: &RpcModule<()>, method: &str, params: Value) -> Value {
    call(module, method, params.clone())
        .await
        .unwrap_or_else(|error| panic!("{method} {params} failed: {error}"))
}

/// (stream, text) of each line of a `containers.logs` answer.
fn lines(logs: &Value) -> Vec<(String, String)> {
    logs["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|line| {
            (
                line["stream"].as_str().unwrap().to_string(),
                line["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn line(stream: &str, text: &str) -> (String, String) {
    (stream.to_string(), text.to_string())
}

/// Waits until the container's log holds `count` lines, and returns them.
async fn wait_for_log_lines(module: &RpcModule<()>, container: &str, count: usize) -> Value {
    wait_until("the container's log lines", DEADLINE, || async {
        let logs = call_ok(module, "containers.logs", json!({"container": container})).await;
        (lines(&logs).len() >= count).then_some(logs)
    })
    .await
}

async fn container_state(module: &RpcModule<()>, container: &str) -> String {
    let details = call_ok(
        module,
        "containers.inspect",
        json!({"container": container}),
    )
    .await;
    details["state"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

// ---- methods, called in-process against the real Docker engine ----

#[tokio::test]
async fn containers_list_finds_a_started_container_by_name_and_image() {
    let container = TestContainer::start("sleep 600").await;
    let module = module().await;

    let listed = call_ok(&module, "containers.list", json!({})).await;
    let row = listed["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["names"] == json!([container.name]))
        .unwrap_or_else(|| panic!("{} not in {listed}", container.name))
        .clone();
    assert_eq!(row["id"], container.id);
    assert_eq!(row["image"], BUSYBOX_IMAGE);
    assert_eq!(row["state"], "running");
    assert!(row["status"].as_str().unwrap().starts_with("Up"), "{row}");
    assert!(row["created"].as_i64().unwrap() > 0);
    assert_eq!(row["ports"], json!([]));
}

#[tokio::test]
async fn containers_list_shows_stopped_containers_only_with_all() {
    let container = TestContainer::start("true").await;
    let module = module().await;
    wait_until("the container to exit", DEADLINE, || async {
        (container_state(&module, &container.name).await == "exited").then_some(())
    })
    .await;

    let names = |listed: Value| -> Vec<Value> {
        listed["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["names"][0].clone())
            .collect()
    };
    let running = names(call_ok(&module, "containers.list", json!({})).await);
    let all = names(call_ok(&module, "containers.list", json!({"all": true})).await);
    assert!(!running.contains(&json!(container.name)));
    assert!(all.contains(&json!(container.name)));
}

#[tokio::test]
async fn containers_logs_returns_exactly_the_printed_lines_with_their_streams() {
    // The sleeps order the writes: stdout and stderr are separate pipes.
    let container = TestContainer::start(
        "echo line-1; sleep 0.1; echo line-2 >&2; sleep 0.1; echo line-3; sleep 600",
    )
    .await;
    let module = module().await;

    let logs = wait_for_log_lines(&module, &container.name, 3).await;
    assert_eq!(
        lines(&logs),
        [
            line("stdout", "line-1"),
            line("stderr", "line-2"),
            line("stdout", "line-3"),
        ]
    );
    assert_eq!(logs["truncated"], false);
    assert!(logs["lines"][0].get("timestamp").is_none());

    let tail = call_ok(
        &module,
        "containers.logs",
        json!({"container": container.name, "tail": 1}),
    )
    .await;
    assert_eq!(lines(&tail), [line("stdout", "line-3")]);

    let stderr_only = call_ok(
        &module,
        "containers.logs",
        json!({"container": container.name, "stdout": false}),
    )
    .await;
    assert_eq!(lines(&stderr_only), [line("stderr", "line-2")]);

    let stamped = call_ok(
        &module,
        "containers.logs",
        json!({"container": container.name, "timestamps": true}),
    )
    .await;
    assert_eq!(lines(&stamped), lines(&logs));
    for stamped_line in stamped["lines"].as_array().unwrap() {
        let timestamp = stamped_line["timestamp"].as_str().unwrap();
        assert!(
            timestamp.starts_with("20") && timestamp.contains('T') && timestamp.ends_with('Z'),
            "not RFC 3339: {timestamp}"
        );
    }
}

#[tokio::test]
async fn containers_logs_are_capped_at_log_max_bytes_and_say_truncated() {
    let container = TestContainer::start("seq -w 1 100 | sed 's/^/line-/'; sleep 600").await;
    let uncapped = module().await;
    wait_for_log_lines(&uncapped, &container.name, 100).await;

    let capped = module_with(WorkerConfig {
        log_max_bytes: 50,
        ..WorkerConfig::default()
    })
    .await;
    let logs = call_ok(
        &capped,
        "containers.logs",
        json!({"container": container.name}),
    )
    .await;
    assert_eq!(logs["truncated"], true);
    // "line-001" is 8 bytes: 6 lines fit in 50, the 7th would not.
    let expected: Vec<_> = (1..=6)
        .map(|n| line("stdout", &format!("line-{n:03}")))
        .collect();
    assert_eq!(lines(&logs), expected);
}

#[tokio::test]
async fn an_unknown_container_is_a_clear_invalid_params_error() {
    let module = module().await;
    let missing = e2e::docker::unique_name();
    for method in [
        "containers.logs",
        "containers.inspect",
        "containers.start",
        "containers.stop",
        "containers.restart",
    ] {
        let error = call(&module, method, json!({"container": missing}))
            .await
            .expect_err(method);
        assert_eq!(error["code"], -32602, "{method}: {error}");
        assert_eq!(
            error["message"],
            format!("no such container: {missing}"),
            "{method}"
        );
    }
}

#[tokio::test]
async fn invalid_params_say_what_is_wrong() {
    let module = module().await;
    let error = call(&module, "containers.logs", json!({}))
        .await
        .unwrap_err();
    assert_eq!(error["code"], -32602);
    assert!(
        error["message"].as_str().unwrap().contains("container"),
        "{error}"
    );
    let error = call(&module, "containers.list", json!(["all"]))
        .await
        .unwrap_err();
    assert_eq!(error["code"], -32602);
}

#[tokio::test]
async fn containers_stop_start_and_restart_change_the_state() {
    let container = TestContainer::start("sleep 600").await;
    let module = module().await;
    let target = json!({"container": container.name, "timeout_secs": 1});

    assert_eq!(
        call_ok(&module, "containers.stop", target.clone()).await,
        json!({"ok": true})
    );
    assert_eq!(container_state(&module, &container.name).await, "exited");

    assert_eq!(
        call_ok(
            &module,
            "containers.start",
            json!({"container": container.name})
        )
        .await,
        json!({"ok": true})
    );
    assert_eq!(container_state(&module, &container.name).await, "running");
    // Starting a running container is not an error.
    call_ok(
        &module,
        "containers.start",
        json!({"container": container.id}),
    )
    .await;

    let started_before = call_ok(
        &module,
        "containers.inspect",
        json!({"container": container.name}),
    )
    .await["state"]["started_at"]
        .clone();
    call_ok(&module, "containers.restart", target).await;
    let details = call_ok(
        &module,
        "containers.inspect",
        json!({"container": container.name}),
    )
    .await;
    assert_eq!(details["state"]["status"], "running");
    assert_ne!(details["state"]["started_at"], started_before);
}

#[tokio::test]
async fn containers_inspect_shows_the_container_but_not_its_environment() {
    let secret = "hunter2-do-not-leak";
    let container = TestContainer::start_with_env(&[("DB_PASSWORD", secret)], "sleep 600").await;
    let module = module().await;

    let details = call_ok(
        &module,
        "containers.inspect",
        json!({"container": container.name}),
    )
    .await;
    assert_eq!(details["id"], container.id);
    assert_eq!(details["name"], container.name);
    assert_eq!(details["image"], BUSYBOX_IMAGE);
    assert_eq!(details["state"]["status"], "running");
    assert_eq!(details["labels"]["devbridge-test"], "1");
    assert_eq!(details["restart_count"], 0);
    assert!(details["created"].is_string(), "{details}");
    let text = details.to_string();
    assert!(!text.contains(secret), "the environment leaked: {text}");
    assert!(
        !text.contains("DB_PASSWORD"),
        "the environment leaked: {text}"
    );
}

#[tokio::test]
async fn system_health_has_sane_numbers() {
    let _running = TestContainer::start("sleep 600").await;
    let module = module().await;

    let health = call_ok(&module, "system.health", json!({})).await;
    let cpu = health["cpu_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&cpu), "{health}");
    for part in ["memory", "disk"] {
        let total = health[part]["total_bytes"].as_u64().unwrap();
        let used = health[part]["used_bytes"].as_u64().unwrap();
        assert!(total > 0 && used > 0 && used <= total, "{part}: {health}");
    }
    let load = health["load"].as_array().unwrap();
    assert_eq!(load.len(), 3);
    assert!(load.iter().all(|l| l.as_f64().unwrap() >= 0.0));
    assert!(health["uptime_secs"].as_u64().unwrap() > 0);
    assert!(
        health["containers_running"].as_i64().unwrap() >= 1,
        "{health}"
    );
    assert!(health.get("docker_error").is_none());
}

#[tokio::test]
async fn rpc_discover_lists_the_served_methods() {
    let module = module().await;
    let discovered = call_ok(&module, "rpc.discover", Value::Null).await;
    let mut served: Vec<&str> = module.method_names().collect();
    served.sort_unstable();
    assert_eq!(discovered["methods"], json!(served));
    for method in [
        "containers.list",
        "containers.logs",
        "system.health",
        "rpc.discover",
    ] {
        assert!(served.contains(&method), "{method}");
    }
}

// ---- the NATS contract, against a real nats-server ----

/// `worker::run` in a task, stopped (and checked to stop cleanly) on `stop`.
struct RunningWorker {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    async fn start(server: &NatsServer, config: WorkerConfig) -> RunningWorker {
        let nats = worker::connect_nats(&server.url())
            .await
            .expect("worker's NATS client");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker::run(
            nats,
            e2e::docker::docker().await,
            config,
            shutdown.clone(),
        ));
        RunningWorker { shutdown, task }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the worker stops within its grace period")
            .expect("the worker task does not panic")
            .expect("the worker ends without error");
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn fast_reports() -> WorkerConfig {
    WorkerConfig {
        health_interval: Duration::from_millis(200),
        cloud_call_timeout: Duration::from_secs(2),
        ..WorkerConfig::default()
    }
}

/// Sends a JSON-RPC request on `rpc.<method>` the way the bridge does.
async fn nats_rpc(
    client: &async_nats::Client,
    method: &str,
    params: Value,
) -> Result<Value, async_nats::RequestError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(protocol::nats::HEADER_SIGNER, "cloud-dashboard");
    headers.insert(protocol::nats::HEADER_REQUEST_ID, "c-17");
    let request = json!({"jsonrpc": "2.0", "id": "c-17", "method": method, "params": params});
    let reply = client
        .send_request(
            format!("{}{method}", protocol::nats::RPC_PREFIX),
            async_nats::Request::new()
                .headers(headers)
                .payload(request.to_string().into())
                .timeout(Some(Duration::from_secs(2))),
        )
        .await?;
    Ok(serde_json::from_slice(&reply.payload).expect("a JSON-RPC response"))
}

/// Waits until `rpc.containers.list` answers over NATS (the worker has
/// subscribed), and returns the response.
async fn wait_for_list_over_nats(client: &async_nats::Client) -> Value {
    wait_until("rpc.containers.list to be answered", DEADLINE, || async {
        nats_rpc(client, "containers.list", json!({})).await.ok()
    })
    .await
}

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
        json!({"container": e2e::docker::unique_name()}),
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
    let status = |state: &str| json!({"state": state}).to_string().into();
    bridge
        .publish("bridge.status", status("connecting"))
        .await
        .unwrap();
    bridge
        .publish("bridge.status", status("live"))
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
