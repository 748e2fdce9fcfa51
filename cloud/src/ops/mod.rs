//! The operations layer: everything an operator can do to the fleet (decide
//! on a device, remove it, call it), to the team (operators, API tokens) and
//! to their own session. Each operation checks its input, acts through the
//! store and the device layer, records itself in the audit log and answers
//! with one error type, [`OpError`]. The API, the dashboard and the CLI only
//! translate to and from it.

pub mod admin_token;
pub mod caller;
pub mod devices;
mod error;
pub mod sign_in;
pub mod team;

use std::sync::Arc;

use crate::config::CloudConfig;
use crate::device::Devices;
use crate::events::EventHub;
use crate::store::{Action, AuditEntry, AuditLog, Store};
use sign_in::LoginLimiter;
use team::Team;

pub use caller::{Caller, Credential, ADMIN_TOKEN_ACTOR};
pub use error::{ErrorKind, OpError};

/// Writes operator actions to the audit log and publishes them live.
#[derive(Clone)]
pub struct Auditor {
    log: AuditLog,
    events: EventHub,
}

impl Auditor {
    pub fn new(log: AuditLog, events: EventHub) -> Self {
        Auditor { log, events }
    }

    /// Stores an action and publishes it. A failure to store is logged: the
    /// action itself has happened.
    pub async fn record(&self, action: &Action<'_>) {
        let stored = self.log.record(action, protocol::now_ms() as i64).await;
        self.publish(action, stored);
    }

    /// Stores a refused action in aggregate (see [`AuditLog::record_refusal`]).
    pub async fn record_refusal(&self, action: &Action<'_>) {
        let stored = self
            .log
            .record_refusal(action, protocol::now_ms() as i64)
            .await;
        self.publish(action, stored);
    }

    /// The common case: an action with no detail and no latency.
    pub async fn record_simple(&self, actor: &str, action: &str, outcome: &str, target: &str) {
        self.record(&Action {
            actor,
            action,
            target,
            outcome,
            detail: "",
            latency_ms: None,
        })
        .await;
    }

    fn publish(&self, action: &Action<'_>, stored: Result<AuditEntry, sqlx::Error>) {
        match stored {
            Ok(entry) => self.events.audit(&entry),
            Err(e) => tracing::error!(
                error = %e, actor = action.actor, action = action.action,
                "cannot write the audit log"
            ),
        }
    }
}

/// The operations, with what they act on; a cheap, cloneable handle.
#[derive(Clone)]
pub struct Operations {
    inner: Arc<Shared>,
}

struct Shared {
    config: Arc<CloudConfig>,
    store: Store,
    devices: Devices,
    auditor: Auditor,
    team: Team,
    login_limiter: LoginLimiter,
    /// The host's break-glass bearer token (see [`admin_token`]).
    admin_token: String,
}

impl Operations {
    pub fn new(
        config: Arc<CloudConfig>,
        store: Store,
        devices: Devices,
        admin_token: String,
    ) -> Self {
        let auditor = Auditor::new(store.audit.clone(), devices.events().clone());
        Operations {
            inner: Arc::new(Shared {
                team: Team::new(store.accounts.clone(), auditor.clone()),
                login_limiter: LoginLimiter::new(&config.limits),
                config,
                store,
                devices,
                auditor,
                admin_token,
            }),
        }
    }

    pub fn config(&self) -> &CloudConfig {
        &self.inner.config
    }

    /// Operators and their API tokens.
    pub fn team(&self) -> &Team {
        &self.inner.team
    }

    pub fn auditor(&self) -> &Auditor {
        &self.inner.auditor
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn device_layer(&self) -> &Devices {
        &self.inner.devices
    }
}
