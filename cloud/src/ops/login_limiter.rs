//! Failed sign-ins, counted per (name, client address) and per client
//! address in one-minute windows.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::Limits;

/// Failed sign-ins are counted within windows this long.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Sources whose failures are counted at once, at most.
const FAILURE_KEYS_KEPT: usize = 100_000;

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
