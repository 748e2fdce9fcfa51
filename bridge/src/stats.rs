//! What the bridge counts while it runs.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Counters an operator (and a test) can read while the bridge runs.
#[derive(Debug, Default)]
pub struct BridgeStats {
    refusals: Mutex<BTreeMap<&'static str, u64>>,
}

impl BridgeStats {
    pub(crate) fn count_refusal(&self, reason: &'static str) {
        *self
            .refusals
            .lock()
            .expect("stats lock")
            .entry(reason)
            .or_default() += 1;
    }

    /// Frames refused from the cloud, by reason.
    pub fn refusals(&self) -> BTreeMap<&'static str, u64> {
        self.refusals.lock().expect("stats lock").clone()
    }
}
