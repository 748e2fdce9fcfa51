//! Refuses a nonce seen before from the same signer within the skew window.
//!
//! A message is only accepted while its timestamp is within ±skew of now, so a
//! nonce must be remembered until `timestamp + skew` has passed and can then be
//! forgotten: memory follows the message rate, not the fleet size. A hard cap
//! bounds it even under a flood; at the cap the guard fails closed. A cap per
//! signer keeps one flooding signer from filling it for everyone else.

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::BuildHasher;

use crate::error::Refusal;

/// A nonce as the guard remembers it: a 64-bit keyed digest of signer and
/// nonce, about 50 bytes of memory in all with its expiry, where the two
/// strings took about 340 (measured by `bench soak`). A digest shared by two messages can only make the second look
/// replayed (it is refused, failing closed), never let a replay through;
/// with a secret key chosen at start nobody can aim for one, and by chance
/// it happens to one message in about 10^13 with a million nonces held.
type Digest = u64;

/// When a remembered nonce may be forgotten, and whose it was.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Expiry {
    at_ms: u64,
    nonce: Digest,
    signer: Digest,
}

#[derive(Debug)]
pub struct ReplayGuard {
    skew_ms: u64,
    capacity: usize,
    per_signer_capacity: usize,
    /// The digests' secret key.
    digests: RandomState,
    seen: HashSet<Digest>,
    /// Nonces held per signer, for the per-signer cap.
    per_signer: HashMap<Digest, usize>,
    /// Min-heap by expiry, so expired nonces are dropped oldest first.
    expiries: BinaryHeap<Reverse<Expiry>>,
}

impl ReplayGuard {
    /// `capacity` is the most nonces held at once.
    pub fn new(skew_ms: u64, capacity: usize) -> Self {
        ReplayGuard {
            skew_ms,
            capacity,
            per_signer_capacity: capacity,
            digests: RandomState::new(),
            seen: HashSet::new(),
            per_signer: HashMap::new(),
            expiries: BinaryHeap::new(),
        }
    }

    /// At most `limit` nonces of one signer at once (by default, `capacity`).
    pub fn with_per_signer_capacity(mut self, limit: usize) -> Self {
        self.per_signer_capacity = limit;
        self
    }

    /// Records the nonce, or refuses it if it was seen within the window.
    /// Call only after the signature and timestamp have been verified.
    pub fn admit(
        &mut self,
        signer: &str,
        nonce: &str,
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        self.forget_expired(now_ms);
        let signer_digest = self.digests.hash_one(signer);
        let nonce_digest = self.digests.hash_one((signer, nonce));
        if self.seen.contains(&nonce_digest) {
            return Err(Refusal::Replayed(signer.to_owned()));
        }
        if self.seen.len() >= self.capacity {
            return Err(Refusal::ReplayGuardFull);
        }
        let held = self.per_signer.entry(signer_digest).or_default();
        if *held >= self.per_signer_capacity {
            return Err(Refusal::TooManyMessages(signer.to_owned()));
        }
        *held += 1;
        self.seen.insert(nonce_digest);
        self.expiries.push(Reverse(Expiry {
            at_ms: timestamp_ms.saturating_add(self.skew_ms),
            nonce: nonce_digest,
            signer: signer_digest,
        }));
        Ok(())
    }

    /// Number of nonces currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn forget_expired(&mut self, now_ms: u64) {
        while let Some(oldest) = self.expiries.peek_mut() {
            if oldest.0.at_ms >= now_ms {
                break;
            }
            let Reverse(expiry) = PeekMut::pop(oldest);
            self.seen.remove(&expiry.nonce);
            if let Some(held) = self.per_signer.get_mut(&expiry.signer) {
                *held -= 1;
                if *held == 0 {
                    self.per_signer.remove(&expiry.signer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_nonce_seen_from_the_same_signer() {
        let mut guard = ReplayGuard::new(60_000, 10);
        guard.admit("dev-1", "n1", 1_000, 1_000).unwrap();
        assert_eq!(
            guard.admit("dev-1", "n1", 1_000, 2_000),
            Err(Refusal::Replayed("dev-1".into()))
        );
        guard.admit("dev-2", "n1", 1_000, 2_000).unwrap();
    }

    #[test]
    fn forgets_nonces_once_their_timestamp_is_out_of_the_window() {
        let mut guard = ReplayGuard::new(60_000, 10);
        guard.admit("d", "n1", 1_000, 1_000).unwrap();
        guard.admit("d", "n2", 30_000, 30_000).unwrap();
        guard.admit("d", "n3", 62_000, 62_000).unwrap();
        assert_eq!(guard.len(), 2, "n1 expired at 61 000");
    }

    #[test]
    fn memory_is_bounded_and_fails_closed() {
        let mut guard = ReplayGuard::new(60_000, 2);
        guard.admit("d", "a", 0, 0).unwrap();
        guard.admit("d", "b", 0, 0).unwrap();
        assert_eq!(guard.admit("d", "c", 0, 0), Err(Refusal::ReplayGuardFull));
        guard.admit("d", "c", 61_000, 61_000).unwrap();
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn one_flooding_signer_does_not_lock_out_the_others() {
        let mut guard = ReplayGuard::new(60_000, 10).with_per_signer_capacity(2);
        guard.admit("flood", "a", 0, 0).unwrap();
        guard.admit("flood", "b", 0, 0).unwrap();
        assert_eq!(
            guard.admit("flood", "c", 0, 0),
            Err(Refusal::TooManyMessages("flood".into()))
        );
        guard.admit("calm", "a", 0, 0).unwrap();
        // Once the flood's nonces expire (and calm's), it may speak again.
        guard.admit("flood", "d", 61_000, 61_000).unwrap();
        assert_eq!(guard.len(), 1);
    }
}
