//! The device's bridge: one signed WebSocket to the cloud, relayed to the
//! device-local NATS bus.
//!
//! Cloud requests are verified (see the `protocol` crate), relayed to workers
//! on `rpc.<method>`, and their replies signed back. Workers reach the cloud
//! through `cloud.call.<method>` and `cloud.notify.<method>`. The connection is
//! kept forever: exponential backoff with jitter between attempts, and a long
//! wait after the cloud rejects this device (see [`Reconnect`]).
#![forbid(unsafe_code)]

mod cloud_trust;
mod config;
mod liveness;
mod outbound;
mod relay;
pub mod rotation;
mod session;
mod stats;
mod status;
pub mod tls;
mod uplink;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use protocol::nats::LinkState;
use protocol::ReplayGuard;
use tokio_util::sync::CancellationToken;

pub use config::BridgeConfig;
pub use liveness::{Due, Liveness};
pub use stats::BridgeStats;
pub use status::read_state_file;

use cloud_trust::CloudTrust;
use outbound::LiveLink;
use rotation::DeviceIdentity;
use session::{run_session, Keys, SessionEnd};

/// Most nonces the replay guard holds; one cloud's message rate over the skew
/// window stays far below this.
const REPLAY_CAPACITY: usize = 100_000;

pub struct Bridge {
    config: BridgeConfig,
    nats: async_nats::Client,
    stats: Arc<BridgeStats>,
}

impl Bridge {
    pub fn new(config: BridgeConfig, nats: async_nats::Client) -> Self {
        Bridge {
            config,
            nats,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<BridgeStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Bridge {
            config,
            nats,
            stats,
        } = self;
        let device_id = config.device_id().to_owned();
        let live: LiveLink = Arc::default();
        let uplinks = shutdown.child_token();
        let calls = tokio::spawn(uplink::serve_calls(
            nats.clone(),
            live.clone(),
            config.cloud_call_timeout,
            uplinks.clone(),
        ));
        let notifications = tokio::spawn(uplink::serve_notifications(
            nats.clone(),
            live.clone(),
            uplinks.clone(),
        ));
        let rotations = tokio::spawn(rotation::serve_rotate_requests(
            nats.clone(),
            live.clone(),
            uplinks.clone(),
        ));
        let keys = Keys {
            identity: Arc::new(DeviceIdentity::new(
                config.signer.clone(),
                config.key_file.clone(),
            )),
            trust: CloudTrust::new(config.cloud_keys.clone(), config.cloud_keys_file.clone()),
        };

        // Kept across reconnects: a frame heard on one connection is not
        // heard again on the next.
        let guard = Mutex::new(ReplayGuard::new(
            config.skew.as_millis() as u64,
            REPLAY_CAPACITY,
        ));
        let mut reconnect = Reconnect::new(
            config.reconnect_min,
            config.reconnect_max,
            config.rejected_backoff,
            rand::random::<f64>,
        );
        loop {
            status::announce(&nats, &config, LinkState::Connecting).await;
            let end = run_session(&config, &keys, &nats, &guard, &stats, &live, &shutdown).await;
            let wait = match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Rejected(reason) => {
                    let wait = reconnect.after_rejection();
                    tracing::warn!(%device_id, %reason, wait_secs = wait.as_secs(), "rejected by the cloud");
                    status::announce(&nats, &config, LinkState::Rejected).await;
                    wait
                }
                SessionEnd::KeyMismatch(reason) => {
                    status::announce(&nats, &config, LinkState::Disconnected).await;
                    let other_key = keys.identity.key_mismatch();
                    let wait = reconnect.after_close(false);
                    tracing::warn!(%device_id, %reason, other_key, wait_ms = wait.as_millis() as u64, "the cloud has another key registered for this device");
                    wait
                }
                SessionEnd::Closed {
                    authenticated,
                    reason,
                } => {
                    status::announce(&nats, &config, LinkState::Disconnected).await;
                    let wait = reconnect.after_close(authenticated);
                    tracing::warn!(%device_id, %reason, wait_ms = wait.as_millis() as u64, "disconnected from the cloud; will reconnect");
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        uplinks.cancel();
        let _ = tokio::join!(calls, notifications, rotations);
        tracing::info!(%device_id, "bridge stopped");
        Ok(())
    }
}

/// How long the bridge waits before connecting again, by how its last
/// connection ended. Pure: the jitter comes from `jitter`, a source of
/// numbers in [0, 1] (`rand::random` in the bridge), and no clock is read.
///
/// After a connection closed, the waits grow exponentially from `min` up to
/// `max`, starting over once a connection authenticated. Each wait is drawn
/// from the upper half of its step (never below `min`), so that a fleet does
/// not reconnect in step; the jitter keeps every wait within [min, max]
/// (backon's own adds up to 100% above the cap). After the cloud rejected
/// this device, the wait is `rejected`, and the waits start over.
pub struct Reconnect<J> {
    min: Duration,
    max: Duration,
    rejected: Duration,
    jitter: J,
    steps: ExponentialBackoff,
}

impl<J: FnMut() -> f64> Reconnect<J> {
    pub fn new(min: Duration, max: Duration, rejected: Duration, jitter: J) -> Self {
        Reconnect {
            min,
            max,
            rejected,
            jitter,
            steps: steps(min, max),
        }
    }

    /// The wait after a connection closed, `authenticated` or not.
    pub fn after_close(&mut self, authenticated: bool) -> Duration {
        if authenticated {
            self.steps = steps(self.min, self.max);
        }
        let step = self.steps.next().unwrap_or(self.max);
        step.mul_f64((self.jitter)().mul_add(0.5, 0.5))
            .max(self.min)
    }

    /// The wait after the cloud rejected this device.
    pub fn after_rejection(&mut self) -> Duration {
        self.steps = steps(self.min, self.max);
        self.rejected
    }
}

/// Doubling from `min` up to `max`, forever.
fn steps(min: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
        .build()
}
