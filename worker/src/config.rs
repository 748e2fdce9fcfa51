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

/// The shortest health interval: more often would be a steady load on the
/// device, its uplink and the cloud's database for little news.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// The longest health interval: beyond a day the dashboard's hour of health
/// is always empty.
pub const MAX_HEALTH_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Reads `HEALTH_INTERVAL_SECS`: whole seconds from [`MIN_HEALTH_INTERVAL`]
/// to [`MAX_HEALTH_INTERVAL`], refused otherwise with the bounds named.
pub fn parse_health_interval_secs(text: &str) -> Result<Duration, String> {
    let secs: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of seconds (e.g. 30)"))?;
    let interval = Duration::from_secs(secs);
    let (min, max) = (MIN_HEALTH_INTERVAL.as_secs(), MAX_HEALTH_INTERVAL.as_secs());
    if !(MIN_HEALTH_INTERVAL..=MAX_HEALTH_INTERVAL).contains(&interval) {
        return Err(format!(
            "{secs} s is out of range: health is reported every {min} to {max} seconds"
        ));
    }
    Ok(interval)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_interval_is_five_seconds_or_more() {
        assert_eq!(parse_health_interval_secs("5"), Ok(Duration::from_secs(5)));
        assert_eq!(
            parse_health_interval_secs("30"),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            parse_health_interval_secs("86400"),
            Ok(Duration::from_secs(86400))
        );
        for (text, says) in [
            (
                "4",
                "4 s is out of range: health is reported every 5 to 86400 seconds",
            ),
            ("0", "0 s is out of range"),
            ("86401", "86401 s is out of range"),
            ("-5", "not a whole number of seconds"),
            ("2.5", "not a whole number of seconds"),
            ("", "not a whole number of seconds"),
        ] {
            let error = parse_health_interval_secs(text).unwrap_err();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }
}
