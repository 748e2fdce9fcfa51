//! The worker's methods, called in-process against the real Docker engine.

mod support;

use serde_json::{json, Value};
use support::{
    call, call_ok, container_state, line, lines, module, module_with, wait_for_log_lines, DEADLINE,
};
use testkit::docker::{TestContainer, BUSYBOX_IMAGE};
use testkit::wait_until;
use worker::WorkerConfig;

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
    let missing = testkit::docker::unique_name();
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

/// `system.info` describes the Docker engine's host, as `docker info` does.
#[tokio::test]
async fn system_info_is_what_the_docker_engine_says_of_its_host() {
    let module = module().await;
    let info = call_ok(&module, "system.info", json!({})).await;
    let host = testkit::docker::docker()
        .await
        .info()
        .await
        .expect("docker info");
    assert_eq!(info["source"], "docker", "{info}");
    assert_eq!(info["hostname"], json!(host.name), "{info}");
    assert_eq!(info["os_name"], json!(host.operating_system), "{info}");
    assert_eq!(info["kernel_version"], json!(host.kernel_version), "{info}");
    assert_eq!(info["architecture"], json!(host.architecture), "{info}");
    assert_eq!(info["docker_version"], json!(host.server_version), "{info}");
    assert!(info["cpu_count"].as_u64().unwrap() >= 1, "{info}");
    assert!(info["memory_total_bytes"].as_u64().unwrap() > 0, "{info}");
    assert!(info.get("docker_error").is_none(), "{info}");
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
