//! `system.info`: what the device is — hostname, operating system, kernel,
//! architecture, CPUs, memory and Docker version.
//!
//! The worker usually runs in a container of its own (a `FROM scratch`
//! image, with no `/etc/os-release`), where its own view of "the system" is
//! the container's. So the facts come from the Docker engine, which
//! describes its host, and from sysinfo (this process's view: the kernel is
//! the host's either way) only when Docker cannot be asked.

use std::sync::Arc;

use jsonrpsee::types::ErrorObjectOwned;
use serde::Serialize;
use sysinfo::System;

use super::health::NoParams;
use super::MethodContext;
use crate::error::docker_error;

/// The answer of `system.info`; a fact neither source knows is null.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct SystemInfo {
    hostname: Option<String>,
    /// e.g. "Debian GNU/Linux 12 (bookworm)".
    os_name: Option<String>,
    /// e.g. "12".
    os_version: Option<String>,
    kernel_version: Option<String>,
    /// e.g. "x86_64", "aarch64".
    architecture: Option<String>,
    cpu_count: Option<u64>,
    memory_total_bytes: Option<u64>,
    /// The engine's version; null when Docker cannot be asked.
    docker_version: Option<String>,
    /// `docker` when the engine described its host, `worker` when only this
    /// process's own view was available.
    source: &'static str,
    /// Why Docker could not be asked, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    docker_error: Option<String>,
}

impl SystemInfo {
    /// This process's own view of the system.
    fn of_this_process() -> Self {
        let mut system = System::new();
        system.refresh_memory();
        SystemInfo {
            hostname: System::host_name(),
            os_name: System::long_os_version().or_else(System::name),
            os_version: System::os_version(),
            kernel_version: System::kernel_version(),
            architecture: Some(System::cpu_arch()).filter(|arch| !arch.is_empty()),
            cpu_count: std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u64),
            memory_total_bytes: Some(system.total_memory()).filter(|total| *total > 0),
            docker_version: None,
            source: "worker",
            docker_error: None,
        }
    }

    /// The engine's description of its host, each missing fact taken from
    /// this process's view.
    fn of_docker_host(info: bollard::models::SystemInfo, own: SystemInfo) -> Self {
        let positive = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).filter(|n| *n > 0);
        SystemInfo {
            hostname: info.name.or(own.hostname),
            os_name: info.operating_system.or(own.os_name),
            os_version: info.os_version.or(own.os_version),
            kernel_version: info.kernel_version.or(own.kernel_version),
            architecture: info.architecture.or(own.architecture),
            cpu_count: positive(info.ncpu).or(own.cpu_count),
            memory_total_bytes: positive(info.mem_total).or(own.memory_total_bytes),
            docker_version: info.server_version,
            source: "docker",
            docker_error: None,
        }
    }
}

pub(crate) async fn system_info(
    context: Arc<MethodContext>,
    _: NoParams,
) -> Result<SystemInfo, ErrorObjectOwned> {
    let own = SystemInfo::of_this_process();
    // What the worker knows is still worth answering when Docker is down.
    let described = match context.engine.client().await {
        Ok(docker) => docker.info().await.map_err(|err| docker_error(err, None)),
        Err(err) => Err(err),
    };
    Ok(match described {
        Ok(info) => SystemInfo::of_docker_host(info, own),
        Err(err) => SystemInfo {
            docker_error: Some(err.message().to_string()),
            ..own
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_s_facts_win_and_the_process_fills_the_gaps() {
        let own = SystemInfo::of_this_process();
        assert!(own.kernel_version.is_some());
        assert!(own.architecture.is_some());
        let info = bollard::models::SystemInfo {
            name: Some("edge-7".into()),
            operating_system: Some("Debian GNU/Linux 12 (bookworm)".into()),
            ncpu: Some(0), // unknown: the process's count instead
            server_version: Some("26.1.5".into()),
            ..Default::default()
        };
        let merged = SystemInfo::of_docker_host(info, own.clone());
        assert_eq!(merged.hostname.as_deref(), Some("edge-7"));
        assert_eq!(
            merged.os_name.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(merged.kernel_version, own.kernel_version);
        assert_eq!(merged.cpu_count, own.cpu_count);
        assert_eq!(merged.docker_version.as_deref(), Some("26.1.5"));
        assert_eq!(merged.source, "docker");
    }
}
