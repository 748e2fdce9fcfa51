//! The device side of the cloud: the `/ws/device` endpoint, the handshake,
//! each authenticated session and its outbound link, the checks every inbound
//! frame passes, the fleet of live sessions that calls go through, and what
//! the cloud serves to devices.
//!
//! [`Devices`] is all that a device connection can reach: the registry, the
//! event hub and the device-side limits, never an operator's credentials.

pub mod admission;
pub mod call_error;
pub mod cluster;
mod connection;
pub mod endpoint;
pub mod fleet;
mod handshake;
mod link;
pub mod metrics;
pub mod refusals;
pub mod served;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use protocol::keys::PublicKey;
use protocol::peer::{Refused, Side};
use protocol::{ReplayGuard, Signer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::CloudConfig;
use crate::events::EventHub;
use crate::store::registry::AuthEvent;
use crate::store::{AuditEntry, Registry};
use admission::Admission;
use link::Link;
use metrics::Metrics;
use refusals::RefusalCounters;

pub use call_error::{CallError, CallErrorKind};
pub use cluster::Cluster;
pub use fleet::Fleet;

/// Most nonces the cloud-wide replay guard remembers at once (it fails closed
/// beyond). About 100 bytes each, so ~100 MB at worst.
const REPLAY_GUARD_CAPACITY: usize = 1_000_000;

/// What every device connection shares; a cheap, cloneable handle.
#[derive(Clone)]
pub struct Devices {
    inner: Arc<Shared>,
}

struct Shared {
    config: Arc<CloudConfig>,
    /// The cloud's end of every device connection: its signer and limits.
    side: Side,
    public_key: PublicKey,
    /// The key the cloud is rotating to, if any: each session whose device
    /// trusts it signs with it (see `connection::align_cloud_keys`).
    next_signer: Option<Arc<Signer>>,
    registry: Registry,
    events: EventHub,
    admission: Admission,
    fleet: Fleet,
    /// One guard for the whole cloud: a nonce is unique per signer, and a
    /// device may hop between connections.
    replay_guard: Mutex<ReplayGuard>,
    refusals: RefusalCounters,
    /// This cloud's own metrics (never a global recorder: tests run several clouds).
    metrics: Metrics,
    /// Cancelled at shutdown; every device connection stops on it.
    stop: CancellationToken,
    /// Device connection tasks, so that shutdown can wait for their close frames.
    sessions: TaskTracker,
}

impl Devices {
    /// The device side of this instance; `cluster` links it to the other
    /// instances sharing the fleet, if any.
    pub fn new(
        config: Arc<CloudConfig>,
        signer: Signer,
        next_signer: Option<Signer>,
        registry: Registry,
        events: EventHub,
        cluster: Option<Cluster>,
    ) -> Self {
        let metrics = Metrics::default();
        let skew_ms = u64::try_from(config.skew.as_millis()).unwrap_or(u64::MAX);
        Devices {
            inner: Arc::new(Shared {
                fleet: Fleet::new(
                    config.instance.clone(),
                    cluster,
                    registry.clone(),
                    events.clone(),
                    metrics.rpc(),
                ),
                admission: Admission::new(&config.limits),
                replay_guard: Mutex::new(
                    ReplayGuard::new(skew_ms, REPLAY_GUARD_CAPACITY)
                        .with_per_signer_capacity(config.replay_per_device),
                ),
                public_key: signer.public_key(),
                next_signer: next_signer.map(Arc::new),
                side: Side::cloud(Arc::new(signer))
                    .with_skew_ms(skew_ms)
                    .with_max_frame_bytes(config.max_frame_bytes),
                config,
                registry,
                events,
                refusals: RefusalCounters::default(),
                metrics,
                stop: CancellationToken::new(),
                sessions: TaskTracker::new(),
            }),
        }
    }

    pub fn config(&self) -> &CloudConfig {
        &self.inner.config
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn fleet(&self) -> &Fleet {
        &self.inner.fleet
    }

    pub fn events(&self) -> &EventHub {
        &self.inner.events
    }

    /// The key devices verify the cloud's messages with.
    pub fn public_key(&self) -> PublicKey {
        self.inner.public_key
    }

    /// The key the cloud is rotating to, if any.
    pub fn next_signer(&self) -> Option<&Arc<Signer>> {
        self.inner.next_signer.as_ref()
    }

    /// Refused device frames so far, by [`protocol::Refusal::reason`], plus
    /// `bad_auth_params`, `bad_challenge` and `key_mismatch` for refused
    /// authentications.
    pub fn refusals(&self) -> HashMap<&'static str, u64> {
        self.inner.refusals.snapshot()
    }

    /// Nonces the cloud-wide replay guard holds: only accepted devices'.
    pub fn remembered_nonces(&self) -> usize {
        self.inner
            .replay_guard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Device connections that have not authenticated yet.
    pub fn unauthenticated(&self) -> usize {
        self.inner.admission.unauthenticated()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Ends every device connection (close 1001) and lets no new one start.
    pub fn close_all(&self) {
        self.inner.sessions.close();
        self.inner.stop.cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.stop.is_cancelled()
    }

    /// Cancelled at shutdown; long-lived streams (live events too) stop on it.
    pub fn stopping(&self) -> &CancellationToken {
        &self.inner.stop
    }

    /// Waits until every device connection task has finished.
    pub async fn all_closed(&self) {
        self.inner.sessions.close();
        self.inner.sessions.wait().await;
    }

    /// Publishes a device auth event, already stored, to the live audit log.
    fn publish_auth_event(&self, event: &AuthEvent) {
        if let Some(entry) = AuditEntry::from_device_event(event) {
            self.inner.events.audit(&entry);
        }
    }

    fn side(&self) -> &Side {
        &self.inner.side
    }

    /// Logs and counts a refused frame from `device_id` (as far as it is
    /// known) and sends the signed answer, if the refusal has one.
    async fn refuse(&self, link: &Link, device_id: &str, refused: Refused) {
        let Refused { refusal, reply } = refused;
        tracing::warn!(%device_id, reason = refusal.reason(), %refusal, "refused a frame");
        self.inner.refusals.increment(refusal.reason());
        if let Some(reply) = reply {
            let _ = link.send(reply).await;
        }
    }

    fn replay_guard(&self) -> &Mutex<ReplayGuard> {
        &self.inner.replay_guard
    }

    fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    fn refusal_counters(&self) -> &RefusalCounters {
        &self.inner.refusals
    }

    fn session_tracker(&self) -> &TaskTracker {
        &self.inner.sessions
    }
}
