//! Shared test support: real parts started for a test and stopped on drop, so
//! scenarios in `tests/` read as stories. Nothing here is a mock.

pub mod docker;
pub mod nats;
pub mod stack;
pub mod test_cloud;
pub mod wait;

pub use wait::wait_until;
