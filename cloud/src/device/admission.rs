//! What a party that has proven no key may make the cloud hold, per client
//! address and in all: device WebSockets that have not authenticated yet,
//! handshakes, new device ids, and reconnects of devices an operator has not
//! accepted. Each check answers with the reason an operator can read.
//! Addresses are the client's (see [`crate::client_address`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use crate::config::Limits;

/// Keys a limiter keeps before the ones at full allowance are swept.
const LIMITER_KEYS_KEPT: usize = 10_000;

/// Why a connection or a handshake was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// Stable label (metrics, the error's `data.reason`).
    pub reason: &'static str,
    pub message: String,
}

impl Refused {
    fn new(reason: &'static str, message: String) -> Self {
        Refused { reason, message }
    }
}

/// The counters and limiters of [`Limits`], shared by every connection.
pub(crate) struct Admission {
    limits: Limits,
    unauthenticated: Arc<Mutex<Unauthenticated>>,
    handshakes: DefaultKeyedRateLimiter<IpAddr>,
    new_devices: DefaultKeyedRateLimiter<IpAddr>,
    reconnects: DefaultKeyedRateLimiter<String>,
}

#[derive(Default)]
struct Unauthenticated {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// A device WebSocket's place among the unauthenticated ones; given back on
/// drop (when the device has authenticated, or the connection ended).
pub(crate) struct UnauthenticatedSlot {
    counts: Arc<Mutex<Unauthenticated>>,
    address: IpAddr,
}

impl Drop for UnauthenticatedSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.per_address.get_mut(&self.address) {
            *held -= 1;
            if *held == 0 {
                counts.per_address.remove(&self.address);
            }
        }
    }
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn per_hour(n: u32) -> Quota {
    Quota::per_hour(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

/// Takes one cell of `key`'s allowance; `Err(wait)` when there is none.
fn take<K>(limiter: &DefaultKeyedRateLimiter<K>, key: &K) -> Result<(), Duration>
where
    K: std::hash::Hash + Eq + Clone,
{
    if limiter.len() > LIMITER_KEYS_KEPT {
        limiter.retain_recent();
    }
    limiter
        .check_key(key)
        .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

/// "N s", rounded up, for messages.
fn seconds(wait: Duration) -> u64 {
    wait.as_secs() + 1
}

impl Admission {
    pub(crate) fn new(limits: &Limits) -> Self {
        Admission {
            limits: limits.clone(),
            unauthenticated: Arc::default(),
            handshakes: DefaultKeyedRateLimiter::keyed(per_minute(
                limits.handshakes_per_address_per_minute,
            )),
            new_devices: DefaultKeyedRateLimiter::keyed(per_hour(
                limits.new_devices_per_address_per_hour,
            )),
            reconnects: DefaultKeyedRateLimiter::keyed(per_minute(
                limits.pending_reconnects_per_minute,
            )),
        }
    }

    /// Admits a new device WebSocket from `address`: within the handshake
    /// rate, and a free unauthenticated slot (per address and in all).
    pub(crate) fn open_device_socket(
        &self,
        address: IpAddr,
    ) -> Result<UnauthenticatedSlot, Refused> {
        take(&self.handshakes, &address).map_err(|wait| {
            Refused::new(
                "too_many_handshakes",
                format!(
                    "too many device handshakes from {address}; retry in {} s",
                    seconds(wait)
                ),
            )
        })?;
        let mut counts = self
            .unauthenticated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.limits.max_unauthenticated {
            return Err(Refused::new(
                "too_many_unauthenticated",
                "too many device connections are authenticating; retry later".into(),
            ));
        }
        let held = counts.per_address.entry(address).or_default();
        if *held >= self.limits.max_unauthenticated_per_address {
            return Err(Refused::new(
                "too_many_unauthenticated",
                format!(
                    "too many device connections from {address} are authenticating; retry later"
                ),
            ));
        }
        *held += 1;
        counts.total += 1;
        Ok(UnauthenticatedSlot {
            counts: self.unauthenticated.clone(),
            address,
        })
    }

    /// Device connections not authenticated yet (for `/metrics`).
    pub(crate) fn unauthenticated(&self) -> usize {
        self.unauthenticated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// Takes one of `address`'s new device ids for this hour.
    pub(crate) fn register_new_device(&self, address: IpAddr) -> Result<(), Refused> {
        take(&self.new_devices, &address).map_err(|wait| {
            Refused::new(
                "too_many_new_devices",
                format!(
                    "{address} registered too many new device ids; retry in {} s",
                    seconds(wait)
                ),
            )
        })
    }

    /// Takes one of a pending or rejected device's connections for this
    /// minute. Called only once the device has proven its registered key, so
    /// no one else can spend it.
    pub(crate) fn reconnect_unaccepted(&self, device_id: &str) -> Result<(), Refused> {
        take(&self.reconnects, &device_id.to_owned()).map_err(|wait| {
            Refused::new(
                "reconnecting_too_often",
                format!(
                    "device {device_id} is not accepted and reconnects too often; retry in {} s",
                    seconds(wait)
                ),
            )
        })
    }

    /// The allowance of one pending connection: a few messages a minute.
    pub(crate) fn pending_allowance(&self) -> DefaultDirectRateLimiter {
        DefaultDirectRateLimiter::direct(per_minute(self.limits.pending_messages_per_minute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_slots_are_bounded_and_given_back() {
        let limits = Limits {
            max_unauthenticated: 3,
            max_unauthenticated_per_address: 2,
            ..Limits::default()
        };
        let admission = Admission::new(&limits);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = admission.open_device_socket(a).unwrap();
        let _second = admission.open_device_socket(a).unwrap();
        assert_eq!(
            admission
                .open_device_socket(a)
                .map(|_| ())
                .unwrap_err()
                .reason,
            "too_many_unauthenticated"
        );
        let _third = admission.open_device_socket(b).unwrap();
        assert!(admission.open_device_socket(b).is_err(), "3 in all");
        drop(first);
        let _again = admission.open_device_socket(a).unwrap();
        assert_eq!(admission.unauthenticated(), 3);
    }

    #[test]
    fn handshakes_per_address_are_rate_limited() {
        let limits = Limits {
            handshakes_per_address_per_minute: 2,
            ..Limits::default()
        };
        let admission = Admission::new(&limits);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        drop(admission.open_device_socket(a).unwrap());
        drop(admission.open_device_socket(a).unwrap());
        let refused = admission.open_device_socket(a).map(|_| ()).unwrap_err();
        assert_eq!(refused.reason, "too_many_handshakes");
        assert!(admission
            .open_device_socket("192.0.2.2".parse().unwrap())
            .is_ok());
    }
}
