//! Counts of refused frames by reason, for tests and `/metrics`.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct RefusalCounters {
    counts: Mutex<HashMap<&'static str, u64>>,
}

impl RefusalCounters {
    pub fn increment(&self, reason: &'static str) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry(reason).or_default() += 1;
    }

    pub fn snapshot(&self) -> HashMap<&'static str, u64> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
