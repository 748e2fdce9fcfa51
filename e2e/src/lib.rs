//! End-to-end support: the real cloud, bridges and workers started together
//! in-process (`stack`), the cloud as a child process, the dev stack, the
//! dashboard in a real browser, and the faults a scenario injects (a TCP
//! proxy to cut or silence, a TLS proxy), each stopped on drop, so that
//! scenarios in `tests/` read as stories. What the components' own tests
//! share with these scenarios (nats-server, Docker, the fake cloud and
//! device, `wait_until`) is in the `testkit` crate.

pub mod browser;
pub mod cloud_process;
pub mod dashboard;
pub mod dev_stack;
pub mod example_worker;
pub mod fault_proxy;
pub mod log_capture;
pub mod stack;
pub mod tls_proxy;
