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

    // The cap counts the answer as sent: `{"lines":[],"truncated":false}` is
    // 30 bytes, `{"stream":"stdout","text":"line-001"}` 37, and each line after
    // the first a comma more. So 6 lines fit in 30 + 37 + 5 × 38 = 257, the
    // 7th would not.
    let log_max_bytes = 257;
    let capped = module_with(WorkerConfig {
        log_max_bytes,
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
    let expected: Vec<_> = (1..=6)
        .map(|n| line("stdout", &format!("line-{n:03}")))
        .collect();
    assert_eq!(lines(&logs), expected);
    assert!(logs.to_string().len() <= log_max_bytes, "{logs}");
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
        let nats = worker::connect_nats(&server.url(), None)
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

// ---- answers always fit ----

/// Serialized size of a `containers.logs` result, as the worker sends it.
fn wire_len(result: &Value) -> usize {
    result.to_string().len()
}

/// Waits until `containers.logs` with `params` says `truncated` (the
/// container has printed past the cap), and returns that answer.
async fn wait_for_truncated_logs(module: &RpcModule<()>, params: Value) -> Value {
    wait_until("a truncated log answer", DEADLINE, || async {
        let logs = call_ok(module, "containers.logs", params.clone()).await;
        (logs["truncated"] == true).then_some(logs)
    })
    .await
}

#[tokio::test]
async fn many_empty_lines_give_a_log_answer_within_log_max_bytes() {
    // Each empty line costs 30 bytes as sent ({"stream":"stdout","text":""}
    // and a comma), though its text is empty.
    let container = TestContainer::start("yes '' | head -n 200000; sleep 600").await;
    let log_max_bytes = 64 * 1024;
    let module = module_with(WorkerConfig {
        log_max_bytes,
        ..WorkerConfig::default()
    })
    .await;

    for params in [
        json!({"container": container.name, "tail": worker::methods::MAX_TAIL}),
        json!({"container": container.name, "since": 1}),
    ] {
        let logs = wait_for_truncated_logs(&module, params.clone()).await;
        let size = wire_len(&logs);
        assert!(size <= log_max_bytes, "{params}: {size} bytes");
        // Cut at the cap, not far below it.
        assert!(size > log_max_bytes - 64, "{params}: {size} bytes");
        let lines = lines(&logs);
        assert!(
            lines.iter().all(|l| *l == line("stdout", "")),
            "{params}: {lines:?}"
        );
    }
}

#[tokio::test]
async fn lines_needing_escaping_and_timestamps_stay_within_log_max_bytes() {
    // Control characters take 6 bytes each as sent ("\u0001"), quotes and
    // backslashes 2.
    let container = TestContainer::start(
        r#"yes "$(printf 'a\001\002\033[31m"\\z')" | head -n 50000; sleep 600"#,
    )
    .await;
    let log_max_bytes = 32 * 1024;
    let module = module_with(WorkerConfig {
        log_max_bytes,
        ..WorkerConfig::default()
    })
    .await;

    for timestamps in [false, true] {
        let logs = wait_for_truncated_logs(
            &module,
            json!({"container": container.name, "tail": 5000, "timestamps": timestamps}),
        )
        .await;
        let size = wire_len(&logs);
        assert!(
            size <= log_max_bytes,
            "timestamps {timestamps}: {size} bytes"
        );
        let lines = logs["lines"].as_array().unwrap();
        assert!(lines.len() > 100, "{}", lines.len());
        for printed in lines {
            assert_eq!(printed["text"], "a\u{1}\u{2}\u{1b}[31m\"\\z");
            assert_eq!(printed.get("timestamp").is_some(), timestamps);
        }
    }
}

#[tokio::test]
async fn a_tail_over_the_maximum_is_refused_and_the_maximum_is_served() {
    let container = TestContainer::start("echo only-line; sleep 600").await;
    let module = module().await;
    wait_for_log_lines(&module, &container.name, 1).await;

    let max = worker::methods::MAX_TAIL;
    let error = call(
        &module,
        "containers.logs",
        json!({"container": container.name, "tail": max + 1}),
    )
    .await
    .unwrap_err();
    assert_eq!(error["code"], -32602, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains(&format!("maximum of {max} lines")),
        "{error}"
    );
    let logs = call_ok(
        &module,
        "containers.logs",
        json!({"container": container.name, "tail": max}),
    )
    .await;
    assert_eq!(lines(&logs), [line("stdout", "only-line")]);
}

#[tokio::test]
async fn a_transport_limit_below_log_max_bytes_cuts_the_log_answer_to_fit() {
    let container = TestContainer::start("seq -w 1 500 | sed 's/^/line-/'; sleep 600").await;
    let uncapped = module().await;
    wait_for_log_lines(&uncapped, &container.name, 500).await;

    let answer_limit = 4096;
    let module = worker::methods::rpc_module_with_answer_limit(
        e2e::docker::docker().await,
        &WorkerConfig::default(),
        move || answer_limit,
    );
    let logs = call_ok(
        &module,
        "containers.logs",
        json!({"container": container.name}),
    )
    .await;
    assert_eq!(logs["truncated"], true);
    let room = answer_limit - worker::methods::RESPONSE_ENVELOPE_RESERVE;
    assert!(wire_len(&logs) <= room, "{}", wire_len(&logs));
    let expected: Vec<_> = (1..=lines(&logs).len())
        .map(|n| line("stdout", &format!("line-{n:03}")))
        .collect();
    assert_eq!(lines(&logs), expected);
    assert!(expected.len() > 50, "{}", expected.len());
}

/// Sends a JSON-RPC request on `rpc.<method>` and returns the reply's raw
/// payload, waiting long enough for a large answer.
async fn nats_rpc_payload(
    client: &async_nats::Client,
    method: &str,
    params: Value,
) -> Result<Vec<u8>, async_nats::RequestError> {
    let request = json!({"jsonrpc": "2.0", "id": "c-17", "method": method, "params": params});
    let reply = client
        .send_request(
            format!("{}{method}", protocol::nats::RPC_PREFIX),
            async_nats::Request::new()
                .payload(request.to_string().into())
                .timeout(Some(Duration::from_secs(15))),
        )
        .await?;
    Ok(reply.payload.to_vec())
}

#[tokio::test]
async fn a_log_answer_larger_than_nats_max_payload_arrives_truncated() {
    // 3000 lines of 1000 bytes: 3 MB, three times what NATS carries.
    let container = TestContainer::start(
        r#"x=$(head -c 1000 /dev/zero | tr '\0' x); yes "$x" | head -n 3000; sleep 600"#,
    )
    .await;
    let server = NatsServer::start().await;
    let worker = RunningWorker::start(
        &server,
        WorkerConfig {
            log_max_bytes: 8 * 1024 * 1024,
            ..fast_reports()
        },
    )
    .await;
    let client = server.client().await;
    wait_for_list_over_nats(&client).await;
    let max_payload = client.server_info().max_payload;
    assert!(max_payload >= 1024 * 1024, "{max_payload}");

    let (payload, response) = wait_until("a truncated log answer over NATS", DEADLINE, || async {
        let payload = nats_rpc_payload(
            &client,
            "containers.logs",
            json!({"container": container.name, "tail": 3000}),
        )
        .await
        .expect("an answer, not silence");
        let response: Value = serde_json::from_slice(&payload).unwrap();
        (response["result"]["truncated"] == true).then_some((payload, response))
    })
    .await;
    assert!(payload.len() <= max_payload, "{} bytes", payload.len());
    let lines = lines(&response["result"]);
    // Cut to fit the message, not to some small fraction of it.
    assert!(lines.len() > 900, "{} lines", lines.len());
    assert!(lines.iter().all(|l| l.1.len() == 1000));

    worker.stop().await;
}

/// A nats-server whose `max_payload` is small, killed on drop.
struct SmallPayloadNats {
    port: u16,
    child: std::process::Child,
    _config_dir: tempfile::TempDir,
}

impl SmallPayloadNats {
    async fn start(max_payload: usize) -> SmallPayloadNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let config_dir = tempfile::tempdir().unwrap();
        let config = config_dir.path().join("nats-server.conf");
        std::fs::write(
            &config,
            format!("listen: 127.0.0.1:{port}\nmax_payload: {max_payload}\n"),
        )
        .unwrap();
        let binary = std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("nats-server"))
                    .find(|candidate| candidate.is_file())
            })
            .unwrap_or_else(|| "/usr/sbin/nats-server".into());
        let child = std::process::Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawning nats-server");
        let server = SmallPayloadNats {
            port,
            child,
            _config_dir: config_dir,
        };
        wait_until("nats-server to accept connections", DEADLINE, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        })
        .await;
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for SmallPayloadNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn an_answer_over_max_payload_is_an_error_and_a_log_answer_is_cut_to_fit() {
    let max_payload = 4096;
    let server = SmallPayloadNats::start(max_payload).await;
    // inspect shows the labels: this one alone is more than NATS carries.
    let big_label = "x".repeat(2 * max_payload);
    let bulky = TestContainer::start_with_labels(&[("bulky", &big_label)], "sleep 600").await;
    let chatty = TestContainer::start("seq -w 1 500 | sed 's/^/line-/'; sleep 600").await;
    wait_for_log_lines(&module().await, &chatty.name, 500).await;

    let nats = worker::connect_nats(&server.url(), None)
        .await
        .expect("worker's NATS client");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker::run(
        nats,
        e2e::docker::docker().await,
        fast_reports(),
        shutdown.clone(),
    ));
    let client = async_nats::connect(server.url()).await.unwrap();
    assert_eq!(client.server_info().max_payload, max_payload);
    wait_until("rpc.discover to be answered", DEADLINE, || async {
        nats_rpc_payload(&client, "rpc.discover", json!({}))
            .await
            .ok()
    })
    .await;

    // Any method: an error saying why, not a timeout.
    let payload = nats_rpc_payload(
        &client,
        "containers.inspect",
        json!({"container": bulky.name}),
    )
    .await
    .expect("an answer, not silence");
    let response: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(response["id"], "c-17");
    assert_eq!(response["error"]["code"], -32603, "{response}");
    let message = response["error"]["message"].as_str().unwrap();
    assert!(message.contains("larger than NATS carries"), "{message}");

    // containers.logs: the answer itself, truncated to fit.
    let payload = nats_rpc_payload(
        &client,
        "containers.logs",
        json!({"container": chatty.name}),
    )
    .await
    .expect("an answer, not silence");
    assert!(payload.len() <= max_payload, "{} bytes", payload.len());
    let response: Value = serde_json::from_slice(&payload).unwrap();
    let logs = &response["result"];
    assert_eq!(logs["truncated"], true, "{response}");
    let expected: Vec<_> = (1..=lines(logs).len())
        .map(|n| line("stdout", &format!("line-{n:03}")))
        .collect();
    assert!(expected.len() > 50, "{}", expected.len());
    assert_eq!(lines(logs), expected);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the worker stops in time")
        .expect("the worker task does not panic")
        .expect("the worker ends without error");
}

// ---- the stack protects itself ----

const COMPOSE_PROJECT: &str = "com.docker.compose.project";
const COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// A container labelled as Compose service `service` of project `project`.
async fn compose_container(project: &str, service: &str) -> TestContainer {
    TestContainer::start_with_labels(
        &[(COMPOSE_PROJECT, project), (COMPOSE_SERVICE, service)],
        "sleep 600",
    )
    .await
}

async fn stack_module(project: &str) -> RpcModule<()> {
    module_with(WorkerConfig {
        stack_project: Some(project.to_string()),
        ..WorkerConfig::default()
    })
    .await
}

#[tokio::test]
async fn containers_stop_refuses_the_stacks_own_bridge_nats_and_worker() {
    let project = e2e::docker::unique_name();
    let module = stack_module(&project).await;
    for service in worker::methods::PROTECTED_SERVICES {
        let own = compose_container(&project, service).await;
        // By name and by id alike: found by its labels.
        for reference in [&own.name, &own.id] {
            let error = call(
                &module,
                "containers.stop",
                json!({"container": reference, "timeout_secs": 1}),
            )
            .await
            .expect_err("stopping the stack's own container is refused");
            assert_eq!(error["code"], -32001, "{service}: {error}");
            let message = error["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("devbridge's own {service} container")),
                "{message}"
            );
            assert!(message.contains("restart is allowed"), "{message}");
            assert_eq!(error["data"]["service"], service, "{error}");
        }
        assert_eq!(container_state(&module, &own.name).await, "running");
    }
}

#[tokio::test]
async fn containers_stop_stops_containers_not_of_the_stack() {
    let project = e2e::docker::unique_name();
    let module = stack_module(&project).await;
    let unlabelled = TestContainer::start("sleep 600").await;
    let other_service = compose_container(&project, "web").await;
    let other_project = compose_container(&e2e::docker::unique_name(), "bridge").await;
    for container in [&unlabelled, &other_service, &other_project] {
        assert_eq!(
            call_ok(
                &module,
                "containers.stop",
                json!({"container": container.name, "timeout_secs": 1})
            )
            .await,
            json!({"ok": true})
        );
        assert_eq!(container_state(&module, &container.name).await, "exited");
    }
}

#[tokio::test]
async fn the_stacks_own_containers_may_be_restarted_and_started() {
    let project = e2e::docker::unique_name();
    let module = stack_module(&project).await;
    let bridge = compose_container(&project, "bridge").await;
    let started_at = |details: Value| details["state"]["started_at"].clone();
    let before = started_at(
        call_ok(
            &module,
            "containers.inspect",
            json!({"container": bridge.name}),
        )
        .await,
    );

    assert_eq!(
        call_ok(
            &module,
            "containers.restart",
            json!({"container": bridge.name, "timeout_secs": 1})
        )
        .await,
        json!({"ok": true})
    );
    let details = call_ok(
        &module,
        "containers.inspect",
        json!({"container": bridge.name}),
    )
    .await;
    assert_eq!(details["state"]["status"], "running");
    assert_ne!(started_at(details), before);

    assert_eq!(
        call_ok(
            &module,
            "containers.start",
            json!({"container": bridge.name})
        )
        .await,
        json!({"ok": true})
    );
    assert_eq!(container_state(&module, &bridge.name).await, "running");
}

#[tokio::test]
async fn without_stack_project_nothing_is_protected() {
    let project = e2e::docker::unique_name();
    let bridge = compose_container(&project, "bridge").await;
    let module = module().await;
    call_ok(
        &module,
        "containers.stop",
        json!({"container": bridge.name, "timeout_secs": 1}),
    )
    .await;
    assert_eq!(container_state(&module, &bridge.name).await, "exited");
}
