//! Helpers of the worker's tests: its methods called in-process against the
//! real Docker engine, and `worker::run` against a real nats-server.

// Each test file uses a part of this module.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};
use testkit::nats::NatsServer;
use testkit::wait_until;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::jsonrpsee::RpcModule;
use worker::WorkerConfig;

/// How long a test waits for Docker or the worker to get somewhere.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub async fn module_with(config: WorkerConfig) -> RpcModule<()> {
    worker::rpc_module(testkit::docker::docker().await, &config)
}

pub async fn module() -> RpcModule<()> {
    module_with(WorkerConfig::default()).await
}

/// Calls `method` in-process; `Err` holds the JSON-RPC error object.
pub async fn call(module: &RpcModule<()>, method: &str, params: Value) -> Result<Value, Value> {
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

pub async fn call_ok(module: &RpcModule<()>, method: &str, params: Value) -> Value {
    call(module, method, params.clone())
        .await
        .unwrap_or_else(|error| panic!("{method} {params} failed: {error}"))
}

/// (stream, text) of each line of a `containers.logs` answer.
pub fn lines(logs: &Value) -> Vec<(String, String)> {
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

pub fn line(stream: &str, text: &str) -> (String, String) {
    (stream.to_string(), text.to_string())
}

/// Waits until the container's log holds `count` lines, and returns them.
pub async fn wait_for_log_lines(module: &RpcModule<()>, container: &str, count: usize) -> Value {
    wait_until("the container's log lines", DEADLINE, || async {
        let logs = call_ok(module, "containers.logs", json!({"container": container})).await;
        (lines(&logs).len() >= count).then_some(logs)
    })
    .await
}

pub async fn container_state(module: &RpcModule<()>, container: &str) -> String {
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

/// `worker::run` in a task, stopped (and checked to stop cleanly) on `stop`.
pub struct RunningWorker {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    pub async fn start(server: &NatsServer, config: WorkerConfig) -> RunningWorker {
        let nats = worker::connect_nats(&server.url(), None)
            .await
            .expect("worker's NATS client");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker::run(
            nats,
            testkit::docker::docker().await,
            config,
            shutdown.clone(),
        ));
        RunningWorker { shutdown, task }
    }

    pub async fn stop(mut self) {
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

pub fn fast_reports() -> WorkerConfig {
    WorkerConfig {
        health_interval: Duration::from_millis(200),
        cloud_call_timeout: Duration::from_secs(2),
        ..WorkerConfig::default()
    }
}

/// Sends a JSON-RPC request on `rpc.<method>` the way the bridge does.
pub async fn nats_rpc(
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
pub async fn wait_for_list_over_nats(client: &async_nats::Client) -> Value {
    wait_until("rpc.containers.list to be answered", DEADLINE, || async {
        nats_rpc(client, "containers.list", json!({})).await.ok()
    })
    .await
}
