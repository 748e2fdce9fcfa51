//! What every handler and device session shares: config, the cloud's signing
//! identity, the registry, operator accounts and the audit log, the fleet of
//! live sessions, live events, the replay guard, the refusal counters and the
//! metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use protocol::keys::PublicKey;
use protocol::{ReplayGuard, Signer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::Accounts;
use crate::admission::{Admission, TrustedProxies};
use crate::audit::{Action, AuditEntry, AuditLog};
use crate::config::CloudConfig;
use crate::events::EventHub;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::operator_auth::LoginLimiter;
use crate::refusals::RefusalCounters;
use crate::registry::Registry;

/// Most nonces the cloud-wide replay guard remembers at once (it fails closed
/// beyond). About 100 bytes each, so ~100 MB at worst.
const REPLAY_GUARD_CAPACITY: usize = 1_000_000;

/// A cheap, cloneable handle on the cloud's shared state.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    config: CloudConfig,
    signer: Arc<Signer>,
    registry: Registry,
    accounts: Accounts,
    audit: AuditLog,
    events: EventHub,
    login_limiter: LoginLimiter,
    admission: Admission,
    fleet: Fleet,
    /// One guard for the whole cloud: a nonce is unique per signer, and a
    /// device may hop between connections.
    replay_guard: Mutex<ReplayGuard>,
    refusals: RefusalCounters,
    /// This cloud's own metrics (never a global recorder: tests run several clouds).
    metrics: Metrics,
    admin_token: String,
    /// Cancelled at shutdown; every device connection stops on it.
    sessions_stop: CancellationToken,
    /// Device connection tasks, so that shutdown can wait for their close frames.
    sessions: TaskTracker,
}

impl AppState {
    /// Loads the cloud's private key and the admin token (creating the token
    /// file if missing) named in `config`.
    pub async fn new(config: CloudConfig, registry: Registry) -> anyhow::Result<Self> {
        let key = protocol::keys::read_private_key(&config.private_key_path)
            .context("cannot load the cloud's private key")?;
        let admin_token = crate::admin_token::load_or_create(&config.admin_token_file)?;
        tracing::info!(
            path = %config.admin_token_file.display(),
            "admin token file (use it as the API bearer token)"
        );
        let signer = Arc::new(Signer::new(config.cloud_id.clone(), key));
        let events = EventHub::default();
        let skew_ms = u64::try_from(config.skew.as_millis()).unwrap_or(u64::MAX);
        let metrics = Metrics::default();
        Ok(AppState {
            inner: Arc::new(Shared {
                fleet: Fleet::new(registry.clone(), events.clone(), metrics.rpc()),
                accounts: Accounts::new(registry.pool().clone()),
                audit: AuditLog::new(registry.pool().clone()),
                events,
                login_limiter: LoginLimiter::new(&config.limits),
                admission: Admission::new(&config.limits),
                replay_guard: Mutex::new(
                    ReplayGuard::new(skew_ms, REPLAY_GUARD_CAPACITY)
                        .with_per_signer_capacity(config.replay_per_device),
                ),
                config,
                signer,
                registry,
                refusals: RefusalCounters::default(),
                metrics,
                admin_token,
                sessions_stop: CancellationToken::new(),
                sessions: TaskTracker::new(),
            }),
        })
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

    pub fn accounts(&self) -> &Accounts {
        &self.inner.accounts
    }

    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    pub fn events(&self) -> &EventHub {
        &self.inner.events
    }

    /// Publishes a device auth event, already stored, to the live audit log.
    pub(crate) fn publish_auth_event(&self, event: &crate::registry::AuthEvent) {
        if let Some(entry) = crate::audit::AuditEntry::from_device_event(event) {
            self.inner.events.audit(&entry);
        }
    }

    /// Stores an operator action in the audit log and publishes it live. A
    /// failure to store is logged: the action itself has happened.
    pub async fn record_action(&self, action: &Action<'_>) {
        let stored = self
            .inner
            .audit
            .record(action, crate::now_ms() as i64)
            .await;
        self.publish_stored(action, stored);
    }

    /// Stores a refused operator action in aggregate (see
    /// [`AuditLog::record_refusal`]) and publishes it live.
    pub async fn record_refusal(&self, action: &Action<'_>) {
        let stored = self
            .inner
            .audit
            .record_refusal(action, crate::now_ms() as i64)
            .await;
        self.publish_stored(action, stored);
    }

    fn publish_stored(&self, action: &Action<'_>, stored: Result<AuditEntry, sqlx::Error>) {
        match stored {
            Ok(entry) => self.inner.events.audit(&entry),
            Err(e) => tracing::error!(
                error = %e, actor = action.actor, action = action.action,
                "cannot write the audit log"
            ),
        }
    }

    /// The key devices verify the cloud's messages with.
    pub fn public_key(&self) -> PublicKey {
        self.inner.signer.public_key()
    }

    /// Refused device frames so far, by [`protocol::Refusal::reason`], plus
    /// `bad_auth_params`, `bad_challenge` and `key_mismatch` for refused
    /// authentications.
    pub fn refusals(&self) -> HashMap<&'static str, u64> {
        self.inner.refusals.snapshot()
    }

    /// Ends every device connection (close 1001) and lets no new one start.
    pub fn close_all_sessions(&self) {
        self.inner.sessions.close();
        self.inner.sessions_stop.cancel();
    }

    /// Whether shutdown has begun (then `/readyz` says not ready).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.sessions_stop.is_cancelled()
    }

    /// Waits until every device connection task has finished.
    pub async fn sessions_closed(&self) {
        self.inner.sessions.close();
        self.inner.sessions.wait().await;
    }

    pub(crate) fn signer(&self) -> &Arc<Signer> {
        &self.inner.signer
    }

    pub(crate) fn replay_guard(&self) -> &Mutex<ReplayGuard> {
        &self.inner.replay_guard
    }

    /// Nonces the cloud-wide replay guard holds: only accepted devices'.
    pub fn remembered_nonces(&self) -> usize {
        self.inner
            .replay_guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub(crate) fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    pub(crate) fn refusal_counters(&self) -> &RefusalCounters {
        &self.inner.refusals
    }

    pub(crate) fn login_limiter(&self) -> &LoginLimiter {
        &self.inner.login_limiter
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn admin_token(&self) -> &str {
        &self.inner.admin_token
    }

    pub(crate) fn sessions_stop(&self) -> &CancellationToken {
        &self.inner.sessions_stop
    }

    pub(crate) fn session_tracker(&self) -> &TaskTracker {
        &self.inner.sessions
    }

    pub(crate) fn skew_ms(&self) -> u64 {
        u64::try_from(self.inner.config.skew.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Whose `X-Forwarded-For` the client address extractor believes.
impl axum::extract::FromRef<AppState> for TrustedProxies {
    fn from_ref(state: &AppState) -> Self {
        TrustedProxies(state.config().limits.trusted_proxies.clone())
    }
}
