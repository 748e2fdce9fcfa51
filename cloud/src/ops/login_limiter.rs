//! Failed sign-ins, counted per (name, client address) and per client
//! address in one-minute windows, in the database every instance shares:
//! a guesser whose attempts the load balancer spreads over the instances
//! meets one limit, not one per instance.

use std::net::IpAddr;
use std::time::Duration;

use crate::config::Limits;
use crate::store::{AccountError, Accounts};

/// Failed sign-ins are counted within windows this long from a source's first.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Only failures count, and never across addresses for a name: someone
/// else's failures do not lock out a correct password typed elsewhere.
pub(super) struct LoginLimiter {
    per_name: i64,
    per_address: i64,
}

impl LoginLimiter {
    pub fn new(limits: &Limits) -> Self {
        LoginLimiter {
            per_name: i64::from(limits.sign_in_failures_per_name_per_minute.max(1)),
            per_address: i64::from(limits.sign_in_failures_per_address_per_minute.max(1)),
        }
    }

    /// `Err(wait)` if this name or address has used up its failures.
    pub async fn check(
        &self,
        accounts: &Accounts,
        name: &str,
        address: IpAddr,
        now_ms: i64,
    ) -> Result<Result<(), Duration>, AccountError> {
        let [by_address, by_name] = sources(name, address);
        let mut wait = None;
        for (source, limit) in [(by_address, self.per_address), (by_name, self.per_name)] {
            let window = accounts
                .sign_in_failures(&source, FAILURE_WINDOW, now_ms)
                .await?;
            if let Some((_, started_at)) = window.filter(|(failures, _)| *failures >= limit) {
                let ends = started_at + FAILURE_WINDOW.as_millis() as i64;
                wait = wait.max(Some(Duration::from_millis((ends - now_ms).max(0) as u64)));
            }
        }
        Ok(wait.map_or(Ok(()), Err))
    }

    /// Counts a failed sign-in.
    pub async fn failed(
        &self,
        accounts: &Accounts,
        name: &str,
        address: IpAddr,
        now_ms: i64,
    ) -> Result<(), AccountError> {
        accounts
            .record_sign_in_failure(&sources(name, address), FAILURE_WINDOW, now_ms)
            .await
    }
}

/// What a failure counts against: the address, and the name from it (an
/// operator name, or a stand-in for one that cannot be: the row stays small).
fn sources(name: &str, address: IpAddr) -> [String; 2] {
    [
        format!("address {address}"),
        format!("name {name} {address}"),
    ]
}
