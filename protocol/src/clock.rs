//! The one wall-clock reading of the system.
//!
//! Nothing in this crate calls it: every function here takes "now" as an
//! argument, so that it stays pure and can be tested at any instant. A caller
//! reads the clock here and passes the reading down.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as signers stamp them (0 for a clock
/// set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
