//! The worker's settings, parsed once by `main` and passed down; the library
//! never reads the environment.

use std::time::Duration;

/// What a running worker needs to know besides its NATS and Docker connections.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How often `cloud.notify.device.health` is published.
    pub health_interval: Duration,
    /// Cap on the total text `containers.logs` returns, so one answer stays
    /// within what NATS and the WebSocket will carry.
    pub log_max_bytes: usize,
    /// How long a device → cloud call (`cloud.call.*`) may take.
    pub cloud_call_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            health_interval: Duration::from_secs(30),
            log_max_bytes: 512 * 1024,
            cloud_call_timeout: Duration::from_secs(10),
        }
    }
}
