//! The worker's settings, parsed once by `main` and passed down; the library
//! never reads the environment.

use std::time::Duration;

/// What a running worker needs to know besides its NATS and Docker connections.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How often `cloud.notify.device.health` is published.
    pub health_interval: Duration,
    /// Cap on the size of one `containers.logs` answer as sent: every byte of
    /// its JSON (each line's stream, text as escaped, timestamp, punctuation)
    /// counts, so the answer stays within what NATS and the WebSocket carry.
    pub log_max_bytes: usize,
    /// How long a device → cloud call (`cloud.call.*`) may take.
    pub cloud_call_timeout: Duration,
    /// The Compose project of the device stack this worker belongs to:
    /// `containers.stop` refuses containers of this project whose Compose
    /// service is `bridge`, `nats` or `worker`. `None` protects nothing.
    pub stack_project: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            health_interval: Duration::from_secs(30),
            log_max_bytes: 512 * 1024,
            cloud_call_timeout: Duration::from_secs(10),
            stack_project: None,
        }
    }
}
