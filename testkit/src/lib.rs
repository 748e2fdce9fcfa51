//! Test support shared by the components' own tests and the end-to-end
//! scenarios: real parts started for a test and stopped on drop, and two
//! stand-ins that speak wire protocol v1 through the protocol's `Peer`, as the
//! real ends do, a [`fake_cloud`] (to test the bridge alone) and a
//! [`fake_device`] (to test the cloud alone), so that a test can send any
//! frame, correctly signed or broken on purpose (see [`frame`]), and check
//! what comes back.
//!
//! It depends on no component (cloud, bridge, worker), so that any crate can
//! dev-depend on it. Helpers panic with a clear message instead of returning
//! errors: they exist to make tests short.

pub mod docker;
pub mod fake_cloud;
pub mod fake_device;
pub mod frame;
pub mod nats;
pub mod postgres;
pub use postgres::{PostgresServer, TestDatabase};

mod wait;

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use protocol::keys::PublicKey;

pub use wait::wait_until;

/// How long a test waits for something that should happen at once.
pub const PROMPTLY: Duration = Duration::from_secs(5);

/// Where a device connects: the cloud's device URL, its signer id and its
/// public key (of a cloud run in-process, as a child process, or faked).
#[derive(Debug, Clone)]
pub struct CloudEndpoint {
    pub url: String,
    pub cloud_id: String,
    pub public_key: PublicKey,
}

/// A port that was free a moment ago: bound to port 0 and released, so a
/// server (and its restarts) can use a fixed port.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}
