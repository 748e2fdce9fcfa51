//! `./run-dev.sh` from a fresh clone, as a newcomer runs it: both Compose
//! stacks come up healthy, a device is accepted over the API and answers from
//! its own containers, survives a cloud restart and a second `./run-dev.sh`,
//! and `down` leaves nothing.
//!
//! These tests build release binaries and images and run real containers;
//! nextest runs them alone (`.config/nextest.toml`).

use std::time::Duration;

use e2e::dev_stack::DevStack;
use serde_json::json;
use testkit::wait_until;

/// Time for a device to answer once accepted, or to come back after the cloud
/// restarts (the bridge backs off up to RECONNECT_MAX_SECS, 30 s, between tries).
const DEVICE_DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test]
async fn run_dev_brings_up_a_device_that_answers_survives_a_cloud_restart_and_goes_away_on_down() {
    let mut stack = DevStack::up("one-device", 1).await;
    let api = stack.api();

    // The dev admin run-dev.sh printed signs in.
    let signed_in = reqwest::Client::new()
        .post(format!("{}/api/v1/login", stack.url()))
        .json(&json!({"name": "admin", "password": stack.admin_password()}))
        .send()
        .await
        .expect("POST /login");
    assert_eq!(signed_in.status(), 200, "the dev admin signs in");

    // run-dev.sh waits for a healthy bridge, which means authenticated: pending.
    let device = api.device("device-001").await.expect("GET device-001")["device"].clone();
    assert_eq!(device["status"], "pending", "{device}");
    api.accept("device-001").await.expect("accept device-001");

    let listed = wait_until("containers.list on device-001", DEVICE_DEADLINE, || async {
        api.rpc(
            "device-001",
            "containers.list",
            Some(json!({"all": true})),
            None,
        )
        .await
        .ok()
    })
    .await;
    let listed_ids: Vec<&str> = listed["containers"]
        .as_array()
        .expect("containers.list gives containers")
        .iter()
        .filter_map(|container| container["id"].as_str())
        .collect();
    for service in ["bridge", "worker", "nats"] {
        let id = stack.container("device-001", service);
        assert!(
            listed_ids.contains(&id.as_str()),
            "the device's own {service} container {id} is in containers.list: {listed}"
        );
    }

    assert_least_privilege(&stack);
    let bridge = stack.container("device-001", "bridge");
    // The stack protects itself: stopping its own bridge would cut the device off.
    let refused = api
        .rpc(
            "device-001",
            "containers.stop",
            Some(json!({"container": bridge})),
            None,
        )
        .await;
    assert!(
        refused.is_err(),
        "stopping the stack's own bridge is refused: {refused:?}"
    );
    assert_eq!(
        docker_inspect(&bridge, "{{.State.Running}}"),
        "true",
        "the bridge keeps running"
    );
    let logs = api
        .rpc(
            "device-001",
            "containers.logs",
            Some(json!({"container": bridge})),
            None,
        )
        .await
        .unwrap_or_else(|error| panic!("containers.logs of the bridge: {error}"));
    let lines = logs["lines"]
        .as_array()
        .expect("containers.logs gives lines");
    assert!(
        lines.iter().any(|line| line["text"]
            .as_str()
            .is_some_and(|text| text.contains("bridge starting") && text.contains("device-001"))),
        "the bridge's start-up line is in its logs: {logs}"
    );

    let cloud = stack.container("cloud", "cloud");
    let restarted = std::process::Command::new("docker")
        .args(["restart", &cloud])
        .output()
        .expect("docker restart");
    assert!(
        restarted.status.success(),
        "docker restart the cloud: {restarted:?}"
    );
    // Online now can only come from the new cloud process: the bridge reconnected by itself.
    wait_until(
        "device-001 online again after the cloud restart",
        DEVICE_DEADLINE,
        || async {
            match api.device("device-001").await {
                Ok(shown) if shown["device"]["online"] == true => Some(()),
                _ => None,
            }
        },
    )
    .await;
    let device = api.device("device-001").await.expect("GET device-001")["device"].clone();
    assert_eq!(
        device["status"], "accepted",
        "the registry kept the decision: {device}"
    );
    let health = api
        .rpc("device-001", "system.health", None, None)
        .await
        .unwrap_or_else(|error| panic!("system.health after the restart: {error}"));
    assert!(health.is_object(), "{health}");

    // A second run reuses keys and data: same key, still accepted, and the
    // old token still works.
    let fingerprint = device["fingerprint"].clone();
    stack.run_up().await;
    let device = api.device("device-001").await.expect("GET device-001")["device"].clone();
    assert_eq!(device["fingerprint"], fingerprint, "{device}");
    assert_eq!(device["status"], "accepted", "{device}");

    stack.down();
    let leftovers = stack.leftovers();
    assert!(leftovers.is_empty(), "left after down: {leftovers:?}");
}

/// Every container of the device stack runs with the least it needs, and its
/// NATS refuses a client on the stack's network that has no user.
fn assert_least_privilege(stack: &DevStack) {
    for service in ["bridge", "worker", "nats"] {
        let id = stack.container("device-001", service);
        assert_eq!(
            docker_inspect(&id, "{{.HostConfig.CapDrop}}"),
            "[ALL]",
            "{service}"
        );
        assert_eq!(
            docker_inspect(&id, "{{.HostConfig.ReadonlyRootfs}}"),
            "true",
            "{service}"
        );
        assert_eq!(
            docker_inspect(&id, "{{.HostConfig.SecurityOpt}}"),
            "[no-new-privileges:true]",
            "{service}"
        );
    }
    // A stranger on the stack's network: the worker image, without credentials.
    let worker = stack.container("device-001", "worker");
    let image = docker_inspect(&worker, "{{.Config.Image}}");
    let network = format!("{}_default", stack.project("device-001"));
    let stranger = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            &network,
            "--env",
            "NATS_URL=nats://nats:4222",
        ])
        .args([image.as_str(), "worker", "healthcheck"])
        .output()
        .expect("docker run");
    let said = String::from_utf8_lossy(&stranger.stderr).to_lowercase();
    assert!(
        !stranger.status.success() && said.contains("authorization"),
        "NATS refuses a client without a user: {stranger:?}"
    );
}

/// One field of `docker inspect`, as text.
fn docker_inspect(container: &str, format: &str) -> String {
    let output = std::process::Command::new("docker")
        .args(["inspect", "--format", format, container])
        .output()
        .expect("docker inspect");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn run_dev_with_three_devices_starts_three_pending_devices_that_each_answer_once_accepted() {
    let mut stack = DevStack::up("three-devices", 3).await;
    let api = stack.api();
    let ids = ["device-001", "device-002", "device-003"];

    let listed = api.devices().await.expect("GET /devices");
    let devices = listed["devices"].as_array().expect("devices");
    let mut fingerprints = Vec::new();
    for id in ids {
        let device = devices
            .iter()
            .find(|device| device["id"] == id)
            .unwrap_or_else(|| panic!("{id} is registered: {listed}"));
        assert_eq!(device["status"], "pending", "{device}");
        assert_eq!(device["online"], true, "{device}");
        fingerprints.push(
            device["fingerprint"]
                .as_str()
                .expect("fingerprint")
                .to_string(),
        );
    }
    fingerprints.sort();
    fingerprints.dedup();
    assert_eq!(fingerprints.len(), 3, "each device has its own key");

    for id in ids {
        api.accept(id).await.expect("accept");
    }
    for id in ids {
        let health = wait_until(
            &format!("system.health on {id}"),
            DEVICE_DEADLINE,
            || async { api.rpc(id, "system.health", None, None).await.ok() },
        )
        .await;
        assert!(health.is_object(), "{id}: {health}");
    }

    stack.down();
    let leftovers = stack.leftovers();
    assert!(leftovers.is_empty(), "left after down: {leftovers:?}");
}
