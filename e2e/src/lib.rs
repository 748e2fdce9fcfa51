//! Shared test support: real parts started for a test and stopped on drop, so
//! scenarios in `tests/` read as stories. The one stand-in, `test_cloud`, is a
//! test peer that plays the cloud so that the bridge can be tested alone.

pub mod browser;
pub mod cloud_process;
pub mod dev_stack;
pub mod docker;
pub mod fault_proxy;
pub mod log_capture;
pub mod nats;
pub mod stack;
pub mod test_cloud;
pub mod tls_proxy;
pub mod wait;

pub use wait::wait_until;
