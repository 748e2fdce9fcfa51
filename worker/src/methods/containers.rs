//! `containers.list`, `containers.inspect` and the lifecycle actions
//! `containers.start`, `containers.stop`, `containers.restart`.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::models::{ContainerInspectResponse, ContainerSummary, PortSummary};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, RestartContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use jsonrpsee::types::ErrorObjectOwned;
use protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{check_container_ref, MethodContext};
use crate::error::{docker_error, rpc_error};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Include stopped containers too.
    #[serde(default)]
    all: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ContainerList {
    containers: Vec<ContainerRow>,
}

/// One row of `containers.list`.
#[derive(Debug, Clone, Serialize)]
struct ContainerRow {
    id: String,
    /// Without the leading `/` Docker lists names with.
    names: Vec<String>,
    image: String,
    state: String,
    /// Docker's human text, e.g. "Up 5 minutes".
    status: String,
    /// Seconds since the Unix epoch.
    created: i64,
    ports: Vec<PortRow>,
}

#[derive(Debug, Clone, Serialize)]
struct PortRow {
    private: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    public: Option<u16>,
    #[serde(rename = "type")]
    protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
}

pub(crate) async fn list(
    context: Arc<MethodContext>,
    params: ListParams,
) -> Result<ContainerList, ErrorObjectOwned> {
    let docker = context.engine.client().await?;
    let options = ListContainersOptionsBuilder::new().all(params.all).build();
    let summaries = docker
        .list_containers(Some(options))
        .await
        .map_err(|err| docker_error(err, None))?;
    Ok(ContainerList {
        containers: summaries.into_iter().map(container_row).collect(),
    })
}

fn container_row(summary: ContainerSummary) -> ContainerRow {
    ContainerRow {
        id: summary.id.unwrap_or_default(),
        names: summary
            .names
            .unwrap_or_default()
            .into_iter()
            .map(|name| strip_slash(&name))
            .collect(),
        image: summary.image.unwrap_or_default(),
        state: summary.state.map(|s| s.to_string()).unwrap_or_default(),
        status: summary.status.unwrap_or_default(),
        created: summary.created.unwrap_or_default(),
        ports: summary
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(port_row)
            .collect(),
    }
}

fn port_row(port: PortSummary) -> PortRow {
    PortRow {
        private: port.private_port,
        public: port.public_port,
        protocol: port.typ.map(|t| t.to_string()).unwrap_or_default(),
        ip: port.ip.filter(|ip| !ip.is_empty()),
    }
}

fn strip_slash(name: &str) -> String {
    name.strip_prefix('/').unwrap_or(name).to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContainerParams {
    container: String,
}

/// `containers.inspect`: what an operator needs to see, and deliberately not the
/// environment (it holds secrets) nor the command line (it may too).
pub(crate) async fn inspect(
    context: Arc<MethodContext>,
    params: ContainerParams,
) -> Result<Value, ErrorObjectOwned> {
    let container = check_container_ref(&params.container)?;
    let docker = context.engine.client().await?;
    let details = docker
        .inspect_container(container, None)
        .await
        .map_err(|err| docker_error(err, Some(container)))?;
    Ok(inspect_summary(details))
}

fn inspect_summary(details: ContainerInspectResponse) -> Value {
    let config = details.config.unwrap_or_default();
    let state = details.state.unwrap_or_default();
    let restart_policy = details
        .host_config
        .and_then(|host| host.restart_policy)
        .and_then(|policy| policy.name)
        .map(|name| name.to_string());
    let mounts: Vec<Value> = details
        .mounts
        .unwrap_or_default()
        .into_iter()
        .map(|mount| {
            json!({
                "type": mount.typ.map(|t| t.to_string()),
                "name": mount.name,
                "source": mount.source,
                "destination": mount.destination,
                "mode": mount.mode,
                "rw": mount.rw,
            })
        })
        .collect();
    // "80/tcp" → host bindings; a port that is exposed but not published maps to [].
    let ports: HashMap<String, Vec<Value>> = details
        .network_settings
        .and_then(|network| network.ports)
        .unwrap_or_default()
        .into_iter()
        .map(|(port, bindings)| {
            let bindings = bindings
                .unwrap_or_default()
                .into_iter()
                .map(|b| json!({"host_ip": b.host_ip, "host_port": b.host_port}))
                .collect();
            (port, bindings)
        })
        .collect();
    json!({
        "id": details.id,
        "name": details.name.as_deref().map(strip_slash),
        "image": config.image,
        "image_id": details.image,
        "created": details.created,
        "state": {
            "status": state.status.map(|s| s.to_string()),
            "running": state.running,
            "paused": state.paused,
            "restarting": state.restarting,
            "oom_killed": state.oom_killed,
            "exit_code": state.exit_code,
            "error": state.error.filter(|e| !e.is_empty()),
            "started_at": state.started_at,
            "finished_at": state.finished_at,
            "health": state.health.and_then(|h| h.status).map(|s| s.to_string()),
        },
        "restart_count": details.restart_count,
        "restart_policy": restart_policy,
        "mounts": mounts,
        "ports": ports,
        "labels": config.labels.unwrap_or_default(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionParams {
    container: String,
    /// Seconds Docker waits after SIGTERM before SIGKILL (stop, restart).
    timeout_secs: Option<u32>,
}

/// The answer of a lifecycle action.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Done {
    ok: bool,
}

const DONE: Done = Done { ok: true };

/// Docker answers 304 to starting a running container or stopping a stopped
/// one; bollard counts that as success, so the actions are idempotent.
pub(crate) async fn start(
    context: Arc<MethodContext>,
    params: ActionParams,
) -> Result<Done, ErrorObjectOwned> {
    let container = check_container_ref(&params.container)?;
    let docker = context.engine.client().await?;
    docker
        .start_container(container, None::<StartContainerOptions>)
        .await
        .map_err(|err| docker_error(err, Some(container)))?;
    Ok(DONE)
}

/// `containers.stop`, except on the device stack's own `bridge`, `nats` and
/// `worker` containers: stopping one cuts the device off from the cloud, with
/// nothing left to start it again (see [`own_stack_service`]).
pub(crate) async fn stop(
    context: Arc<MethodContext>,
    params: ActionParams,
) -> Result<Done, ErrorObjectOwned> {
    let container = check_container_ref(&params.container)?;
    let mut options = StopContainerOptionsBuilder::new();
    if let Some(timeout) = params.timeout_secs {
        options = options.t(timeout_arg(timeout)?);
    }
    let docker = context.engine.client().await?;
    if let Some(project) = &context.stack_project {
        // Asked of Docker by whatever reference the caller gave (name, id,
        // short id), so no spelling of it slips past.
        let details = docker
            .inspect_container(container, None)
            .await
            .map_err(|err| docker_error(err, Some(container)))?;
        let labels = details.config.and_then(|config| config.labels);
        if let Some(service) = own_stack_service(labels.as_ref(), project) {
            return Err(own_stack_refusal(container, service));
        }
    }
    docker
        .stop_container(container, Some(options.build()))
        .await
        .map_err(|err| docker_error(err, Some(container)))?;
    Ok(DONE)
}

pub(crate) async fn restart(
    context: Arc<MethodContext>,
    params: ActionParams,
) -> Result<Done, ErrorObjectOwned> {
    let container = check_container_ref(&params.container)?;
    let mut options = RestartContainerOptionsBuilder::new();
    if let Some(timeout) = params.timeout_secs {
        options = options.t(timeout_arg(timeout)?);
    }
    let docker = context.engine.client().await?;
    docker
        .restart_container(container, Some(options.build()))
        .await
        .map_err(|err| docker_error(err, Some(container)))?;
    Ok(DONE)
}

/// Compose services of the device stack that `containers.stop` refuses: the
/// bridge (the link to the cloud), nats (between bridge and worker) and the
/// worker (which serves the calls).
pub const PROTECTED_SERVICES: [&str; 3] = ["bridge", "nats", "worker"];

/// Labels Docker Compose puts on each container it creates.
const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";
const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";

/// The service, if the container with these labels is one of the device
/// stack's own: Compose project `project` and a service of
/// [`PROTECTED_SERVICES`]. Found by labels, not by name: names differ with
/// the project and the Compose version, labels do not.
fn own_stack_service<'a>(
    labels: Option<&'a HashMap<String, String>>,
    project: &str,
) -> Option<&'a str> {
    let labels = labels?;
    if labels.get(COMPOSE_PROJECT_LABEL).map(String::as_str) != Some(project) {
        return None;
    }
    let service = labels.get(COMPOSE_SERVICE_LABEL)?;
    PROTECTED_SERVICES
        .contains(&service.as_str())
        .then_some(service.as_str())
}

fn own_stack_refusal(container: &str, service: &str) -> ErrorObjectOwned {
    ErrorCode::Refused.error_object(
        format!(
            "refusing to stop devbridge's own {service} container {container}: \
             the device would be cut off from the cloud with nothing to start it again; \
             containers.restart is allowed"
        ),
        Some(json!({"reason": "own_stack_container", "service": service})),
    )
}

/// Longest stop timeout accepted: bollard gives up on a Docker request after
/// 120 s, so a longer wait would end in a client-side timeout, not a stop.
const MAX_STOP_TIMEOUT_SECS: u32 = 100;

fn timeout_arg(timeout_secs: u32) -> Result<i32, ErrorObjectOwned> {
    if timeout_secs > MAX_STOP_TIMEOUT_SECS {
        return Err(rpc_error(
            ErrorCode::InvalidParams,
            format!("timeout_secs {timeout_secs} is over the maximum of {MAX_STOP_TIMEOUT_SECS}"),
        ));
    }
    Ok(timeout_secs as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn the_stacks_bridge_nats_and_worker_are_its_own() {
        for service in PROTECTED_SERVICES {
            let labels = labels(&[
                (COMPOSE_PROJECT_LABEL, "devbridge-device-001"),
                (COMPOSE_SERVICE_LABEL, service),
            ]);
            assert_eq!(
                own_stack_service(Some(&labels), "devbridge-device-001"),
                Some(service)
            );
        }
    }

    #[test]
    fn other_services_projects_and_unlabelled_containers_are_not() {
        let project = "devbridge-device-001";
        let cases = [
            labels(&[
                (COMPOSE_PROJECT_LABEL, project),
                (COMPOSE_SERVICE_LABEL, "web"),
            ]),
            labels(&[
                (COMPOSE_PROJECT_LABEL, "devbridge-device-002"),
                (COMPOSE_SERVICE_LABEL, "bridge"),
            ]),
            labels(&[(COMPOSE_SERVICE_LABEL, "bridge")]),
            labels(&[(COMPOSE_PROJECT_LABEL, project)]),
            labels(&[]),
        ];
        for labels in &cases {
            assert_eq!(own_stack_service(Some(labels), project), None, "{labels:?}");
        }
        assert_eq!(own_stack_service(None, project), None);
    }

    #[test]
    fn the_refusal_says_what_and_why() {
        let error = own_stack_refusal("devbridge-device-001-bridge-1", "bridge");
        assert_eq!(i64::from(error.code()), ErrorCode::Refused.code());
        let message = error.message();
        assert!(message.contains("own bridge container"), "{message}");
        assert!(message.contains("cut off"), "{message}");
        assert!(message.contains("restart is allowed"), "{message}");
    }
}
