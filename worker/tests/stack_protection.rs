//! The stack protects itself: `containers.stop` refuses the stack's own
//! bridge, nats and worker, recognised by their Compose labels.

mod support;

use serde_json::{json, Value};
use support::{call, call_ok, container_state, module, module_with};
use testkit::docker::TestContainer;
use worker::jsonrpsee::RpcModule;
use worker::WorkerConfig;

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
    let project = testkit::docker::unique_name();
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
    let project = testkit::docker::unique_name();
    let module = stack_module(&project).await;
    let unlabelled = TestContainer::start("sleep 600").await;
    let other_service = compose_container(&project, "web").await;
    let other_project = compose_container(&testkit::docker::unique_name(), "bridge").await;
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
    let project = testkit::docker::unique_name();
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
    let project = testkit::docker::unique_name();
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
