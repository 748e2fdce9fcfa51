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
    /// How long a device → cloud call (`cloud.call.*`) may take. Longer
    /// than the bridge's own wait for the cloud (`CLOUD_CALL_TIMEOUT_MS`,
    /// 15 s), so that a slow cloud reaches the worker as the bridge's
    /// timeout error, not as a NATS request that went unanswered.
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
            cloud_call_timeout: Duration::from_secs(20),
            stack_project: None,
        }
    }
}
