//! Signing in and out. Failed sign-ins are limited per operator name and
//! client address and per client address; every attempt is audited (refusals
//! in aggregate: a row an hour per operator and outcome, and names that are
//! no operator's under [`UNKNOWN_OPERATOR`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::store::accounts::{is_valid_name, NewSession};
use crate::store::{Action, Operator};
use protocol::now_ms;

use super::{Caller, ErrorKind, OpError, Operations};

/// Failed sign-ins are counted within windows this long.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Sources whose failures are counted at once, at most.
const FAILURE_KEYS_KEPT: usize = 100_000;
/// How the audit log names the actor of a sign-in with a name that is no
/// operator's: the names strangers try are not worth a row each.
pub const UNKNOWN_OPERATOR: &str = "(unknown)";

impl Operations {
    /// Checks a sign-in and starts a session. Refused with `wrong_password`,
    /// or `rate_limited` with the wait in [`OpError::retry_after`].
    pub async fn sign_in(
        &self,
        name: &str,
        password: &str,
        address: IpAddr,
    ) -> Result<(Operator, NewSession), OpError> {
        let accounts = &self.store().accounts;
        let name = name.trim();
        let valid_name = is_valid_name(name);
        let known = valid_name
            && accounts
                .operator(name)
                .await
                .map_err(OpError::internal)?
                .is_some();
        let actor = if known { name } else { UNKNOWN_OPERATOR };
        // Only a name that could be an operator's is kept, and only its latest.
        let detail = match (known, valid_name) {
            (true, _) => format!("from {address}"),
            (false, true) => format!("from {address}; name tried: {name}"),
            (false, false) => format!("from {address}; not a valid operator name"),
        };
        let refuse = |kind: ErrorKind| Action {
            actor,
            action: "login",
            target: "",
            outcome: kind.as_str(),
            detail: &detail,
            latency_ms: None,
        };
        let limiter = &self.inner.login_limiter;
        if let Err(wait) = limiter.check(name, address) {
            self.auditor()
                .record_refusal(&refuse(ErrorKind::RateLimited))
                .await;
            let mut error = OpError::new(
                ErrorKind::RateLimited,
                format!(
                    "too many sign-in attempts; try again in {} s",
                    wait.as_secs() + 1
                ),
            );
            error.retry_after = Some(wait);
            return Err(error);
        }
        let operator = if valid_name {
            accounts
                .check_password(name, password)
                .await
                .map_err(OpError::internal)?
        } else {
            None
        };
        let Some(operator) = operator else {
            limiter.failed(name, address);
            self.auditor()
                .record_refusal(&refuse(ErrorKind::WrongPassword))
                .await;
            return Err(OpError::new(
                ErrorKind::WrongPassword,
                "unknown operator or wrong password",
            ));
        };
        let session = accounts
            .start_session(&operator, now_ms() as i64)
            .await
            .map_err(OpError::internal)?;
        self.auditor()
            .record_simple(&operator.name, "login", "ok", "")
            .await;
        Ok((operator, session))
    }

    /// Ends the session with `secret`, if the caller has one.
    pub async fn sign_out(&self, caller: &Caller, secret: Option<&str>) {
        if let Some(secret) = secret {
            if let Err(e) = self.store().accounts.end_session(secret).await {
                tracing::warn!(error = %e, "cannot end a session");
            }
        }
        self.auditor()
            .record_simple(&caller.name, "logout", "ok", "")
            .await;
    }
}

/// Failed sign-ins, counted per (name, client address) and per client
/// address in one-minute windows. Only failures count, and never across
/// addresses for a name: someone else's failures do not lock out a correct
/// password typed elsewhere.
pub(super) struct LoginLimiter {
    per_name: FailureCounter<(String, IpAddr)>,
    per_address: FailureCounter<IpAddr>,
}

impl LoginLimiter {
    pub fn new(limits: &Limits) -> Self {
        LoginLimiter {
            per_name: FailureCounter::new(limits.sign_in_failures_per_name_per_minute),
            per_address: FailureCounter::new(limits.sign_in_failures_per_address_per_minute),
        }
    }

    /// `Err(wait)` if this name or address has used up its failures.
    pub fn check(&self, name: &str, address: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let waits = [
            self.per_address.wait(&address, now),
            self.per_name.wait(&(name.to_owned(), address), now),
        ];
        match waits.into_iter().flatten().max() {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Counts a failed sign-in.
    pub fn failed(&self, name: &str, address: IpAddr) {
        let now = Instant::now();
        self.per_address.fail(address, now);
        self.per_name.fail((name.to_owned(), address), now);
    }
}

/// Failures per key within fixed windows of [`FAILURE_WINDOW`].
struct FailureCounter<K> {
    limit: u32,
    windows: Mutex<HashMap<K, FailureWindow>>,
}

#[derive(Clone, Copy)]
struct FailureWindow {
    started: Instant,
    failures: u32,
}

impl<K: Hash + Eq> FailureCounter<K> {
    fn new(limit: u32) -> Self {
        FailureCounter {
            limit: limit.max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// How long `key` must wait, if it has used up its failures. When the
    /// table is full of live windows a new key waits too: failing closed
    /// keeps a spread-out guesser from outrunning the count.
    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        match windows.get(key) {
            Some(window) => {
                let elapsed = now.duration_since(window.started);
                (elapsed < FAILURE_WINDOW && window.failures >= self.limit)
                    .then(|| FAILURE_WINDOW - elapsed)
            }
            None => (windows.len() >= FAILURE_KEYS_KEPT).then_some(FAILURE_WINDOW),
        }
    }

    fn fail(&self, key: K, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= FAILURE_KEYS_KEPT {
            windows.retain(|_, window| now.duration_since(window.started) < FAILURE_WINDOW);
            if windows.len() >= FAILURE_KEYS_KEPT {
                tracing::warn!("sign-in failure table is full; new sources wait a minute");
                return;
            }
        }
        let window = windows.entry(key).or_insert(FailureWindow {
            started: now,
            failures: 0,
        });
        if now.duration_since(window.started) >= FAILURE_WINDOW {
            *window = FailureWindow {
                started: now,
                failures: 0,
            };
        }
        window.failures += 1;
    }
}
