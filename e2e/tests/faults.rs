//! The fault matrix: each part of the path killed or cut off while a call is
//! in flight, on the real parts. Every test shows that
//!
//! - nothing hangs: every wait is bounded;
//! - the fault gives a distinct error an operator can read, on each side;
//! - the link comes back within its bounds (small reconnect backoff here);
//! - nothing accepted is lost: a call the API answered OK was really served
//!   (a test worker keeps a ledger of what it served), and a call in flight
//!   fails with an error instead of vanishing.
//!
//! Each test prints `fault: <name>: <errors>; recovered in X s`, so that
//! `cargo nextest run -p e2e --test faults --no-capture 2>&1 | grep '^fault:'`
//! shows the matrix.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge::BridgeConfig;
use cloud::client::{ApiClient, ApiError};
use e2e::cloud_process::CloudProcess;
use e2e::fault_proxy::FaultProxy;
use e2e::log_capture::{self, CapturedLogs};
use e2e::stack::{wait_for_device, RunningCloud, RunningDevice, SOON};
use futures::StreamExt;
use protocol::keys;
use protocol::nats::{RPC_PREFIX, WORKER_QUEUE_GROUP};
use serde_json::{json, Value};
use testkit::docker::TestContainer;
use testkit::wait_until;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The bridge's reconnect backoff in these tests.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Time a reconnect may take besides the backoff wait: TCP, WebSocket
/// upgrade, the signed handshake and a first call, on a busy machine.
const ALLOWANCE: Duration = Duration::from_secs(5);
/// The longest wait between two NATS reconnect attempts (async-nats's
/// default delay grows to 4 s), which bridge and worker use.
const NATS_RECONNECT_MAX: Duration = Duration::from_secs(4);
/// The time an operator's call may take before the cloud gives up; a fault
/// must fail the call well before it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

// ----- the matrix ----------------------------------------------------------

/// The cloud is a `cloud serve` child process here, killed with SIGKILL: an
/// in-process cloud can only be cancelled, and its tasks would close their
/// sockets politely (or, aborted, leave connection tasks running), while a
/// killed process sends nothing and the kernel closes every socket.
#[tokio::test]
async fn the_cloud_killed_mid_call_fails_the_call_and_the_bridge_reconnects_to_the_restarted_cloud()
{
    let logs = log_capture::capture();
    let mut cloud = CloudProcess::start(&[]).await;
    let api = cloud.api();
    let id = "fault-cloud-killed";
    let mut device =
        RunningDevice::start_bridge_to(id, keys::generate(), cloud.endpoint(), small_backoff).await;
    device.start_worker().await;
    let mut ledger = Ledger::start(&device).await;
    accept(&api, id).await;
    let mut status = BridgeStatus::watch(&device).await;
    echo(&api, id, &ledger, "before-1").await;
    echo(&api, id, &ledger, "before-2").await;

    let call = spawn_call(&api, id, "fault.hold", "in-flight");
    ledger.wait_held("in-flight").await;
    cloud.kill();
    let killed = Instant::now();

    // The operator's request dies with the process: no HTTP answer at all,
    // which no client can take for a result.
    let (reply, _) = tokio::time::timeout(SOON, call)
        .await
        .expect("the operator's call in flight does not hang")
        .expect("call task");
    let Err(ApiError::Unreachable { source: error, .. }) = reply else {
        panic!("a killed cloud cannot have answered the call in flight: {reply:?}");
    };
    let operator_error = error_chain(&error);
    assert!(
        error.is_request()
            && ["closed", "reset"]
                .iter()
                .any(|w| operator_error.contains(w)),
        "the connection closed under the request: {operator_error}"
    );

    // The bridge sees its connection end, says why, and retries with backoff.
    status.wait_for("disconnected").await;
    let dropped = logs
        .wait_for_line(&[id, "disconnected from the cloud"], SOON)
        .await;
    let bridge_error = reason(&dropped);
    assert!(
        bridge_error.contains("connection"),
        "the bridge names the lost connection: {dropped}"
    );
    // Down long enough for the backoff to reach its ceiling.
    let refused = wait_until(
        "the bridge to retry at its backoff ceiling",
        SOON,
        || async {
            let attempts = logs.lines_with(&[id, "cannot connect to"]);
            (attempts.len() >= 6).then(|| attempts[0].clone())
        },
    )
    .await;
    assert!(
        refused.contains("Connection refused"),
        "while the cloud is down each attempt says why: {refused}"
    );

    cloud.start_again().await;
    let back = Instant::now();
    let outage = killed.elapsed();
    wait_for_rpc_ok(&api, id, RECONNECT_MAX + ALLOWANCE).await;
    let recovered = back.elapsed();

    // The accept was committed before the kill: the device is live again
    // without an operator, and calls work.
    let entry = api.device(id).await.expect("the device survived the kill")["device"].clone();
    assert_eq!(entry["status"], "accepted", "{entry}");
    echo(&api, id, &ledger, "after").await;
    ledger.assert_served_exactly(&["before-1", "before-2", "after"], &["in-flight"]);
    eprintln!(
        "fault: cloud SIGKILLed mid-call: operator: HTTP request failed ({operator_error}); \
         bridge: {bridge_error}, then {}; recovered in {:.2} s (outage {:.2} s)",
        reason(&refused),
        recovered.as_secs_f64(),
        outage.as_secs_f64()
    );
    assert_backoff_within_bounds(&logs, id);
}

#[tokio::test]
async fn nats_killed_mid_call_fails_the_call_at_the_bridge_and_bridge_and_worker_reconnect() {
    let logs = log_capture::capture();
    let cloud = RunningCloud::start().await;
    let api = cloud.api();
    let id = "fault-nats-killed";
    let worker_timeout = Duration::from_secs(2);
    let mut device = RunningDevice::start_bridge_only(id, keys::generate(), &cloud, |config| {
        small_backoff(config);
        config.worker_timeout = worker_timeout;
    })
    .await;
    device.start_worker().await;
    let mut ledger = Ledger::start(&device).await;
    accept(&api, id).await;
    echo(&api, id, &ledger, "before").await;

    let call = spawn_call(&api, id, "fault.hold", "in-flight");
    ledger.wait_held("in-flight").await;
    device.nats.kill();
    let killed = Instant::now();

    // The bridge answers the call with its own error, well before the
    // cloud's timeout.
    let (reply, elapsed) = tokio::time::timeout(SOON, call)
        .await
        .expect("the call in flight does not hang")
        .expect("call task");
    let in_flight_error = bridge_error(&reply);
    assert!(
        elapsed < worker_timeout + ALLOWANCE,
        "the bridge gave up after its worker timeout, not the cloud's: {elapsed:?}"
    );
    // A call while the bus is down fails the same bounded way.
    let started = Instant::now();
    let during = api.rpc(id, "rpc.discover", None, Some(CALL_TIMEOUT)).await;
    let during_error = bridge_error(&during);
    assert!(started.elapsed() < worker_timeout + ALLOWANCE);
    // The WebSocket to the cloud does not depend on NATS.
    let entry = api.device(id).await.expect("device")["device"].clone();
    assert_eq!(entry["online"], true, "{entry}");

    device.nats.start_again().await;
    let back = Instant::now();
    let outage = killed.elapsed();
    wait_for_rpc_ok(&api, id, NATS_RECONNECT_MAX + ALLOWANCE).await;
    let recovered = back.elapsed();

    // Both directions work again: the worker answers, and reaches the cloud
    // through the bridge's re-made subscriptions.
    let nats = device.nats_client().await;
    let pong = wait_until("cloud.ping through the bridge", SOON, || async {
        worker::ping_cloud(&nats, Duration::from_secs(2)).await.ok()
    })
    .await;
    assert_eq!(pong["pong"], true);
    api.rpc(id, "containers.list", None, None)
        .await
        .expect("containers.list");
    echo(&api, id, &ledger, "after").await;
    ledger.assert_served_exactly(&["before", "after"], &["in-flight"]);
    assert_eq!(
        logs.lines_with(&[id, "disconnected from the cloud"]),
        Vec::<String>::new(),
        "the link to the cloud stayed up"
    );
    eprintln!(
        "fault: nats-server SIGKILLed mid-call: cloud: {in_flight_error} (in flight), \
         {during_error} (during the outage); recovered in {:.2} s (outage {:.2} s)",
        recovered.as_secs_f64(),
        outage.as_secs_f64()
    );
    // The error names the fault: the bridge's own bus is down, which the
    // relay reports as -32005 "device message bus unavailable", not a worker
    // that did not answer (-32002), which is what a killed worker gives.
    for (when, reply) in [("in flight", &reply), ("during the outage", &during)] {
        let rpc_error = device_error(reply);
        let message = rpc_error["message"].as_str().unwrap_or("").to_lowercase();
        assert!(
            rpc_error["code"] == -32005 && (message.contains("bus") || message.contains("nats")),
            "a call {when} while nats-server is down must fail as the device's message bus \
             being unavailable (-32005), not as a worker timeout; got {rpc_error}"
        );
    }
}

#[tokio::test]
async fn the_worker_killed_mid_call_fails_the_call_and_a_new_worker_serves_the_next() {
    let cloud = RunningCloud::start().await;
    let api = cloud.api();
    let id = "fault-worker-killed";
    let worker_timeout = Duration::from_secs(3);
    let mut device = RunningDevice::start_bridge_only(id, keys::generate(), &cloud, |config| {
        small_backoff(config);
        config.worker_timeout = worker_timeout;
    })
    .await;
    device.start_worker().await;
    accept(&api, id).await;

    // Stopping a container that ignores SIGTERM keeps the worker in the
    // Docker call for the whole grace period: a slow method, mid-way.
    let container = TestContainer::start(
        "trap 'echo got-term' TERM; echo ready; while true; do sleep 0.1; done",
    )
    .await;
    let params = json!({"container": container.name, "timeout_secs": 60});
    let call = {
        let api = api.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let reply = api
                .rpc(id, "containers.stop", Some(params), Some(CALL_TIMEOUT))
                .await;
            (reply, started.elapsed())
        })
    };
    wait_until("the engine to be stopping the container", SOON, || async {
        container_logs(&container)
            .await
            .contains("got-term")
            .then_some(())
    })
    .await;
    device.kill_worker().await;

    let (reply, elapsed) = tokio::time::timeout(SOON, call)
        .await
        .expect("the call in flight does not hang")
        .expect("call task");
    let in_flight_error = bridge_error(&reply);
    assert_eq!(
        device_error(&reply)["code"],
        -32002,
        "the worker never answered: {reply:?}"
    );
    assert!(
        elapsed < worker_timeout + ALLOWANCE,
        "failed at the bridge's worker timeout: {elapsed:?}"
    );

    // With no worker, a call is refused at once, naming the missing worker.
    let (no_worker, refused_in) = wait_until("no responders for containers.list", SOON, || async {
        let started = Instant::now();
        let reply = api.rpc(id, "containers.list", None, None).await;
        let not_found = reply
            .as_ref()
            .is_err_and(|error| error.rpc_error().is_some_and(|e| e["code"] == -32601));
        not_found.then(|| (reply, started.elapsed()))
    })
    .await;
    let no_worker_error = bridge_error(&no_worker);
    assert!(
        no_worker_error.contains("no worker serves"),
        "{no_worker_error}"
    );
    assert!(refused_in < worker_timeout, "at once: {refused_in:?}");

    device.start_worker().await;
    let started = Instant::now();
    let listed = wait_until("a new worker to serve", ALLOWANCE, || async {
        api.rpc(id, "containers.list", Some(json!({"all": true})), None)
            .await
            .ok()
    })
    .await;
    let recovered = started.elapsed();
    assert!(listed.to_string().contains(&container.name), "{listed}");
    let entry = api.device(id).await.expect("device")["device"].clone();
    assert_eq!(entry["online"], true, "the bridge never left: {entry}");
    eprintln!(
        "fault: worker killed mid-call: cloud: {in_flight_error} (in flight), \
         {no_worker_error} (no worker); recovered in {:.2} s",
        recovered.as_secs_f64()
    );
}

#[tokio::test]
async fn an_unreachable_docker_engine_is_a_distinct_error_naming_the_engine_and_the_device_carries_on(
) {
    let cloud = RunningCloud::start().await;
    let api = cloud.api();
    let id = "fault-docker-unreachable";
    let worker_timeout = Duration::from_secs(10);
    let mut device = RunningDevice::start_bridge_only(id, keys::generate(), &cloud, |config| {
        small_backoff(config);
        config.worker_timeout = worker_timeout;
    })
    .await;

    // A TCP Docker host where nothing listens (yet).
    let port = free_port();
    let tcp_host = format!("tcp://127.0.0.1:{port}");
    let docker = worker::connect_docker(Some(&tcp_host)).expect("a client for any tcp:// host");
    device.start_worker_with_docker(docker).await;
    accept(&api, id).await;
    let tcp_error = engine_unavailable(&api, id, worker_timeout).await;

    // The rest of the device carries on: the link, the worker's other
    // methods, and its calls to the cloud.
    let entry = api.device(id).await.expect("device")["device"].clone();
    assert_eq!(entry["online"], true, "{entry}");
    api.rpc(id, "rpc.discover", None, None)
        .await
        .expect("rpc.discover");
    let pong = worker::ping_cloud(&device.nats_client().await, Duration::from_secs(5))
        .await
        .expect("cloud.ping");
    assert_eq!(pong["pong"], true);

    // The engine comes up on that address: the same worker uses it.
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .expect("the Docker host's port is free again");
    let engine = EngineForwarder::start(Listener::Tcp(listener));
    let tcp_recovered = engine_answers(&api, id).await;
    drop(engine);

    // The local socket goes away (the engine stopped), under a running worker.
    device.kill_worker().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("docker.sock");
    let unix_host = format!("unix://{}", socket.display());
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("a socket to point at");
    let docker = worker::connect_docker(Some(&unix_host)).expect("the socket exists");
    drop(listener);
    std::fs::remove_file(&socket).expect("remove the socket");
    device.start_worker_with_docker(docker).await;
    wait_for_rpc_ok(&api, id, SOON).await;
    let unix_error = engine_unavailable(&api, id, worker_timeout).await;
    let listener = tokio::net::UnixListener::bind(&socket).expect("the socket again");
    let _engine = EngineForwarder::start(Listener::Unix(listener));
    let unix_recovered = engine_answers(&api, id).await;

    eprintln!(
        "fault: docker engine unreachable: cloud: {tcp_error} (nothing on {tcp_host}), \
         {unix_error} (socket gone); recovered in {:.2} s / {:.2} s (once the engine answered)",
        tcp_recovered.as_secs_f64(),
        unix_recovered.as_secs_f64()
    );
}

/// Calls `containers.list`, which must fail at once as the engine being
/// unavailable; returns the error.
async fn engine_unavailable(api: &ApiClient, id: &str, worker_timeout: Duration) -> String {
    let started = Instant::now();
    let reply = api
        .rpc(id, "containers.list", None, Some(CALL_TIMEOUT))
        .await;
    let elapsed = started.elapsed();
    let error = bridge_error(&reply);
    assert_eq!(
        device_error(&reply)["code"],
        -32005,
        "unavailable, from the worker: {reply:?}"
    );
    assert!(
        error.contains("docker unavailable"),
        "names the engine: {error}"
    );
    assert!(
        elapsed < worker_timeout,
        "promptly, not at a timeout: {elapsed:?}"
    );
    error
}

/// Waits until `containers.list` answers; returns how long it took.
async fn engine_answers(api: &ApiClient, id: &str) -> Duration {
    let started = Instant::now();
    let listed = wait_until("containers.list once the engine is up", SOON, || async {
        api.rpc(id, "containers.list", None, None).await.ok()
    })
    .await;
    assert!(listed["containers"].is_array(), "{listed}");
    started.elapsed()
}

#[tokio::test]
async fn a_silent_path_is_dropped_by_both_ends_and_the_bridge_reconnects_when_it_forwards_again() {
    let logs = log_capture::capture();
    let ping_interval = Duration::from_millis(500);
    let cloud = RunningCloud::start_with(|config| config.ping_interval = ping_interval).await;
    let api = cloud.api();
    let proxy = FaultProxy::start(cloud.addr).await;
    let id = "fault-silent-path";
    let connect_timeout = Duration::from_secs(2);
    let mut device = RunningDevice::start_bridge_only(id, keys::generate(), &cloud, |config| {
        small_backoff(config);
        config.cloud_url = proxy.ws_url();
        config.ping_interval = ping_interval;
        config.connect_timeout = connect_timeout;
    })
    .await;
    device.start_worker().await;
    let ledger = Ledger::start(&device).await;
    accept(&api, id).await;
    let mut status = BridgeStatus::watch(&device).await;
    echo(&api, id, &ledger, "before").await;

    let nats = device.nats_client().await;
    proxy.go_silent();
    let silent = Instant::now();
    // A call into the silence fails once the cloud gives the device up.
    let call = spawn_call(&api, id, "fault.echo", "into-the-silence");
    // So does a worker's call to the cloud, once the bridge gives it up.
    let uplink = tokio::spawn({
        let nats = nats.clone();
        async move { worker::ping_cloud(&nats, CALL_TIMEOUT).await }
    });
    let (reply, elapsed) = tokio::time::timeout(SOON, call)
        .await
        .expect("the call into the silence does not hang")
        .expect("call task");
    let in_flight_error = api_error(&reply);
    assert_eq!(
        refusal(&reply),
        (Some(502), Some("disconnected")),
        "{reply:?}"
    );
    assert!(elapsed < CALL_TIMEOUT, "{elapsed:?}");
    let dropped = silent.elapsed();
    assert!(
        dropped < 3 * ping_interval + ALLOWANCE,
        "the cloud dropped the device at its ping timeout: {dropped:?}"
    );
    let cloud_log = logs
        .wait_for_line(&[id, "device stopped answering pings"], SOON)
        .await;
    // Later calls learn at once that the device is offline.
    let started = Instant::now();
    let offline = api
        .rpc(id, "fault.echo", Some(json!({"token": "offline"})), None)
        .await;
    let offline_error = api_error(&offline);
    assert_eq!(
        refusal(&offline),
        (Some(503), Some("offline")),
        "{offline:?}"
    );
    assert!(started.elapsed() < ALLOWANCE);

    // The bridge hears nothing either: its own ping timeout ends the
    // session (no close frame crossed the silence), and its attempts to
    // reconnect time out.
    status.wait_for("disconnected").await;
    let bridge_dropped = logs
        .wait_for_line(&[id, "disconnected from the cloud"], SOON)
        .await;
    let bridge_error = reason(&bridge_dropped);
    assert!(
        bridge_error.contains("cloud stopped answering pings"),
        "{bridge_dropped}"
    );
    let attempt = logs
        .wait_for_line(&[id, "disconnected from the cloud", "timed out"], SOON)
        .await;
    let outcome = tokio::time::timeout(SOON, uplink)
        .await
        .expect("the worker's call into the silence does not hang")
        .expect("uplink task");
    let uplink_error = unavailable(outcome);
    assert!(
        uplink_error.contains("closed while the call was in flight"),
        "{uplink_error}"
    );
    let not_connected = unavailable(worker::ping_cloud(&nats, CALL_TIMEOUT).await);
    assert!(
        not_connected.contains("not connected to the cloud"),
        "{not_connected}"
    );

    let connections = proxy.connections();
    proxy.forward();
    let back = Instant::now();
    let silence = silent.elapsed();
    wait_for_rpc_ok(&api, id, 2 * RECONNECT_MAX + connect_timeout + ALLOWANCE).await;
    let recovered = back.elapsed();
    assert!(
        proxy.connections() > connections,
        "a new connection through the path"
    );
    echo(&api, id, &ledger, "after").await;
    ledger.assert_served_exactly(&["before", "after"], &[]);
    eprintln!(
        "fault: silent path (half-open, both sockets kept): cloud: {} and the call in flight \
         {in_flight_error}, then {offline_error}; bridge: {bridge_error}, then {}; \
         worker's call to the cloud: {uplink_error}, then {not_connected}; \
         recovered in {:.2} s (silent {:.2} s)",
        cloud_log_message(&cloud_log),
        reason(&attempt),
        recovered.as_secs_f64(),
        silence.as_secs_f64()
    );
    assert_backoff_within_bounds(&logs, id);
}

// ----- helpers ---------------------------------------------------------------

fn small_backoff(config: &mut BridgeConfig) {
    config.reconnect_min = RECONNECT_MIN;
    config.reconnect_max = RECONNECT_MAX;
}

/// Accepts the new device and waits until a worker answers through it.
async fn accept(api: &ApiClient, id: &str) {
    wait_for_device(api, id, "device pending", |d| d["status"] == "pending").await;
    api.accept(id).await.expect("accept");
    wait_for_rpc_ok(api, id, SOON).await;
}

/// Waits up to `deadline` until `rpc.discover` answers: the device is live
/// and a worker serves.
async fn wait_for_rpc_ok(api: &ApiClient, id: &str, deadline: Duration) {
    wait_until("rpc.discover answered", deadline, || async {
        api.rpc(id, "rpc.discover", None, Some(Duration::from_secs(5)))
            .await
            .ok()
    })
    .await;
}

/// Calls `fault.echo` with `token`, which must answer OK with the token, and
/// be in the ledger: an OK is a call served.
async fn echo(api: &ApiClient, id: &str, ledger: &Ledger, token: &str) {
    let reply = api
        .rpc(
            id,
            "fault.echo",
            Some(json!({"token": token})),
            Some(CALL_TIMEOUT),
        )
        .await;
    let echoed = reply.unwrap_or_else(|error| panic!("fault.echo {token}: {error}"));
    assert_eq!(echoed["token"], token, "{echoed}");
    assert!(
        ledger.served().contains(token),
        "answered OK but not served: {token}"
    );
}

/// An operator's call: its result or why it failed.
type Reply = Result<Value, ApiError>;

/// Starts an operator call; the task returns its reply and how long it took.
fn spawn_call(
    api: &ApiClient,
    id: &'static str,
    method: &'static str,
    token: &'static str,
) -> JoinHandle<(Reply, Duration)> {
    let api = api.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let reply = api
            .rpc(
                id,
                method,
                Some(json!({"token": token})),
                Some(CALL_TIMEOUT),
            )
            .await;
        (reply, started.elapsed())
    })
}

/// The status and `kind` of a call the cloud refused.
fn refusal(reply: &Reply) -> (Option<u16>, Option<&str>) {
    match reply {
        Err(error) => (error.status(), error.kind()),
        Ok(result) => panic!("the call was answered: {result}"),
    }
}

/// `status kind message` of an API error.
fn api_error(reply: &Reply) -> String {
    match reply {
        Err(ApiError::Refused {
            status,
            kind,
            message,
            ..
        }) => format!("{status} {kind} {}", json!(message)),
        _ => panic!("an API error: {reply:?}"),
    }
}

/// The device's own JSON-RPC error, passed through by the cloud (502
/// `device_error`).
fn device_error(reply: &Reply) -> &Value {
    assert_eq!(
        refusal(reply),
        (Some(502), Some("device_error")),
        "an error from the device, not the cloud: {reply:?}"
    );
    reply
        .as_ref()
        .err()
        .and_then(ApiError::rpc_error)
        .expect("a device_error carries the device's error")
}

/// [`device_error`] as `502 device_error code message`.
fn bridge_error(reply: &Reply) -> String {
    let rpc_error = device_error(reply);
    format!(
        "502 device_error {} {}",
        rpc_error["code"],
        json!(rpc_error["message"])
    )
}

/// A worker's call to the cloud that the bridge failed as unavailable
/// (-32005), as `code message`.
fn unavailable(outcome: Result<Value, worker::CloudCallError>) -> String {
    match outcome {
        Err(worker::CloudCallError::Rpc(error)) if error.code == -32005 => {
            format!("{} {:?}", error.code, error.message)
        }
        other => panic!("expected the bridge's -32005 unavailable, got {other:?}"),
    }
}

/// An error and its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The `reason=` of a bridge log line (up to its next field, `wait_ms=`).
fn reason(line: &str) -> String {
    let start = line.find(" reason=").map_or(0, |at| at + " reason=".len());
    let end = line.find(" wait_ms=").unwrap_or(line.len());
    line[start..end.max(start)].to_owned()
}

/// The message of a cloud log line: after its target, before its fields.
fn cloud_log_message(line: &str) -> String {
    let message = line.split_once(": ").map_or(line, |(_, message)| message);
    message
        .split_once(" device_id=")
        .map_or(message, |(message, _)| message)
        .to_owned()
}

/// Every wait the bridge logged before reconnecting lies within its backoff
/// bounds: at least the minimum (no hot loop), at most the maximum.
fn assert_backoff_within_bounds(logs: &CapturedLogs, id: &str) {
    let waits: Vec<u64> = logs
        .lines_with(&[id, "will reconnect"])
        .iter()
        .map(|line| {
            log_capture::field(line, "wait_ms")
                .and_then(|ms| ms.parse().ok())
                .unwrap_or_else(|| panic!("wait_ms in {line}"))
        })
        .collect();
    assert!(!waits.is_empty(), "the bridge waited before reconnecting");
    let (min, max) = (
        RECONNECT_MIN.as_millis() as u64,
        RECONNECT_MAX.as_millis() as u64,
    );
    let outside: Vec<u64> = waits
        .iter()
        .copied()
        .filter(|wait| !(min..=max).contains(wait))
        .collect();
    assert!(
        outside.is_empty(),
        "reconnect waits must lie within reconnect_min {min} ms and reconnect_max {max} ms; \
         outside: {outside:?} of {waits:?}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `docker logs` of a test container.
async fn container_logs(container: &TestContainer) -> String {
    let id = container.id.clone();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("docker")
            .args(["logs", &id])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default()
    })
    .await
    .expect("docker logs")
}

/// The bridge's link states as it announces them on NATS.
struct BridgeStatus {
    subscription: async_nats::Subscriber,
    _nats: async_nats::Client,
}

impl BridgeStatus {
    async fn watch(device: &RunningDevice) -> BridgeStatus {
        let nats = device.nats_client().await;
        let subscription = nats
            .subscribe(protocol::nats::BRIDGE_STATUS)
            .await
            .expect("subscribe to bridge.status");
        nats.flush().await.expect("flush");
        BridgeStatus {
            subscription,
            _nats: nats,
        }
    }

    /// Waits for the bridge to announce `state`.
    async fn wait_for(&mut self, state: &str) {
        let seen = tokio::time::timeout(SOON, async {
            while let Some(message) = self.subscription.next().await {
                let announced: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
                if announced["state"] == state {
                    return;
                }
            }
        })
        .await;
        assert!(
            seen.is_ok(),
            "the bridge did not announce {state:?} within {SOON:?}"
        );
    }
}

/// A test worker on the device's NATS: `fault.echo` answers `{"token": T}`
/// at once, `fault.hold` takes the request and never answers. It records
/// every token it took, so a test can prove that what the API answered OK
/// was really served. Its NATS client reconnects like a worker's.
struct Ledger {
    taken: Arc<Mutex<Vec<String>>>,
    served: Arc<Mutex<Vec<String>>>,
    held: mpsc::UnboundedReceiver<String>,
    task: JoinHandle<()>,
}

impl Ledger {
    async fn start(device: &RunningDevice) -> Ledger {
        let nats = device.nats_client().await;
        let mut subscriptions = Vec::new();
        for method in ["fault.echo", "fault.hold"] {
            let subscription = nats
                .queue_subscribe(
                    format!("{RPC_PREFIX}{method}"),
                    WORKER_QUEUE_GROUP.to_string(),
                )
                .await
                .expect("subscribe");
            subscriptions.push(subscription);
        }
        nats.flush().await.expect("flush");
        let taken = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(Mutex::new(Vec::new()));
        let (held_tx, held) = mpsc::unbounded_channel();
        let task = tokio::spawn({
            let (taken, served) = (taken.clone(), served.clone());
            async move {
                let mut requests = futures::stream::select_all(subscriptions);
                while let Some(message) = requests.next().await {
                    let request: Value =
                        serde_json::from_slice(&message.payload).unwrap_or_default();
                    let token = request["params"]["token"].as_str().unwrap_or("").to_owned();
                    taken.lock().unwrap().push(token.clone());
                    if message.subject.ends_with(".hold") {
                        let _ = held_tx.send(token);
                        continue;
                    }
                    let answer = json!({
                        "jsonrpc": "2.0",
                        "id": request["id"],
                        "result": {"token": token},
                    });
                    if let Some(reply) = message.reply {
                        if nats.publish(reply, answer.to_string().into()).await.is_ok() {
                            served.lock().unwrap().push(token);
                        }
                    }
                }
            }
        });
        Ledger {
            taken,
            served,
            held,
            task,
        }
    }

    /// Waits until the device holds the call with `token`.
    async fn wait_held(&mut self, token: &str) {
        let held = tokio::time::timeout(SOON, async {
            while let Some(held) = self.held.recv().await {
                if held == token {
                    return;
                }
            }
        })
        .await;
        assert!(held.is_ok(), "the call {token:?} did not reach the device");
    }

    /// Tokens of the calls answered.
    fn served(&self) -> BTreeSet<String> {
        self.served.lock().unwrap().iter().cloned().collect()
    }

    /// The device answered exactly `served` and took (without answering)
    /// exactly `held`: nothing else reached it, nothing was answered twice.
    fn assert_served_exactly(&self, served: &[&str], held: &[&str]) {
        let answered = self.served.lock().unwrap().clone();
        assert_eq!(answered, served, "calls the device answered");
        let mut taken = self.taken.lock().unwrap().clone();
        taken.retain(|token| !served.contains(&token.as_str()));
        assert_eq!(taken, held, "calls the device took and did not answer");
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the Docker engine comes up again.
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// The Docker engine coming up at an address: forwards each connection to
/// the local engine's socket.
struct EngineForwarder {
    task: JoinHandle<()>,
}

impl EngineForwarder {
    fn start(listener: Listener) -> EngineForwarder {
        let engine = docker_socket();
        let task = tokio::spawn(async move {
            loop {
                let engine = engine.clone();
                match &listener {
                    Listener::Tcp(listener) => match listener.accept().await {
                        Ok((client, _)) => tokio::spawn(forward_to_engine(client, engine)),
                        Err(_) => return,
                    },
                    Listener::Unix(listener) => match listener.accept().await {
                        Ok((client, _)) => tokio::spawn(forward_to_engine(client, engine)),
                        Err(_) => return,
                    },
                };
            }
        });
        EngineForwarder { task }
    }
}

async fn forward_to_engine(
    mut client: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    engine: PathBuf,
) {
    if let Ok(mut engine) = tokio::net::UnixStream::connect(&engine).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
    }
}

impl Drop for EngineForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The local engine's socket: `DOCKER_HOST` if it is `unix://`, else the default.
fn docker_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}
