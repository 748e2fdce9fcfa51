//! `system.health`: the host's CPU, memory, root disk, load and uptime (sysinfo)
//! and how many containers run (Docker).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use jsonrpsee::types::ErrorObjectOwned;
use serde::{Deserialize, Serialize};
use sysinfo::{Disks, System, MINIMUM_CPU_UPDATE_INTERVAL};
use tokio::sync::Mutex;

use super::MethodContext;
use crate::error::docker_error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}

/// The answer of `system.health`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Health {
    /// Average over all CPUs since the previous sample (at least 200 ms).
    cpu_percent: f32,
    memory: Usage,
    /// The filesystem mounted at `/`; null if sysinfo does not list it.
    disk: Option<Usage>,
    /// Load averages over 1, 5 and 15 minutes.
    load: [f64; 3],
    uptime_secs: u64,
    /// Null when Docker cannot be asked; `docker_error` then says why.
    containers_running: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    docker_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Usage {
    total_bytes: u64,
    used_bytes: u64,
}

/// Samples the host. CPU usage is a difference between two readings, so the
/// previous reading is kept between calls.
pub(crate) struct HostProbe {
    cpu: Mutex<CpuSampler>,
}

struct CpuSampler {
    system: System,
    last_refresh: Option<Instant>,
}

impl HostProbe {
    pub(crate) fn new() -> Self {
        HostProbe {
            cpu: Mutex::new(CpuSampler {
                system: System::new(),
                last_refresh: None,
            }),
        }
    }

    /// CPU usage in percent since the previous call, waiting for a second
    /// reading when the previous one is missing or too recent to compare.
    async fn cpu_percent(&self) -> f32 {
        let mut sampler = self.cpu.lock().await;
        let comparable = sampler
            .last_refresh
            .is_some_and(|at| at.elapsed() >= MINIMUM_CPU_UPDATE_INTERVAL);
        if !comparable {
            sampler.system.refresh_cpu_usage();
            tokio::time::sleep(MINIMUM_CPU_UPDATE_INTERVAL).await;
        }
        sampler.system.refresh_cpu_usage();
        sampler.last_refresh = Some(Instant::now());
        sampler.system.global_cpu_usage()
    }
}

fn memory_usage() -> Usage {
    let mut system = System::new();
    system.refresh_memory();
    Usage {
        total_bytes: system.total_memory(),
        used_bytes: system.used_memory(),
    }
}

fn root_disk_usage() -> Option<Usage> {
    let disks = Disks::new_with_refreshed_list();
    let root = disks
        .list()
        .iter()
        .find(|disk| disk.mount_point() == Path::new("/"))?;
    Some(Usage {
        total_bytes: root.total_space(),
        used_bytes: root.total_space().saturating_sub(root.available_space()),
    })
}

pub(crate) async fn system_health(
    context: Arc<MethodContext>,
    _: NoParams,
) -> Result<Health, ErrorObjectOwned> {
    // Health is worth reporting when Docker is down, so a Docker error is a field.
    let containers_running = match context.engine.client().await {
        Ok(docker) => docker
            .info()
            .await
            .map(|info| info.containers_running.unwrap_or_default())
            .map_err(|err| docker_error(err, None)),
        Err(err) => Err(err),
    };
    let load = System::load_average();
    Ok(Health {
        cpu_percent: context.host.cpu_percent().await,
        memory: memory_usage(),
        disk: root_disk_usage(),
        load: [load.one, load.five, load.fifteen],
        uptime_secs: System::uptime(),
        containers_running: containers_running.as_ref().ok().copied(),
        docker_error: containers_running
            .err()
            .map(|err| err.message().to_string()),
    })
}
