//! The audit log's writer for operations: each action is stored, then
//! published live; and the one check of a caller's permission, whose
//! refusals are audited here too.

use protocol::now_ms;

use super::caller::{Caller, Permission};
use super::error::{ErrorKind, OpError};
use crate::events::EventHub;
use crate::store::audit::RecordError;
use crate::store::{Action, AuditEntry, AuditLog};

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
        let stored = self.log.record(action, now_ms() as i64).await;
        self.publish(action, stored);
    }

    /// Stores a refused action in aggregate (see [`AuditLog::record_refusal`]).
    pub async fn record_refusal(&self, action: &Action<'_>) {
        let stored = self.log.record_refusal(action, now_ms() as i64).await;
        self.publish(action, stored.map_err(RecordError::from));
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

    /// Refuses with `forbidden` unless `caller` has `permission`, and audits
    /// the refusal (in aggregate: a row an hour per caller, action and
    /// target; `what` adds to its detail, e.g. the method called).
    pub async fn authorize(
        &self,
        caller: &Caller,
        permission: Permission,
        action: &str,
        target: &str,
        what: &str,
    ) -> Result<(), OpError> {
        let Err(refused) = caller.require(permission) else {
            return Ok(());
        };
        let detail = if what.is_empty() {
            refused.message.clone()
        } else {
            format!("{what}: {}", refused.message)
        };
        self.record_refusal(&Action {
            actor: &caller.name,
            action,
            target,
            outcome: ErrorKind::Forbidden.as_str(),
            detail: &detail,
            latency_ms: None,
        })
        .await;
        Err(refused)
    }

    fn publish(&self, action: &Action<'_>, stored: Result<AuditEntry, RecordError>) {
        match stored {
            Ok(entry) => self.events.audit(&entry),
            Err(e) => tracing::error!(
                error = %e, actor = action.actor, action = action.action,
                "cannot write the audit log"
            ),
        }
    }
}
