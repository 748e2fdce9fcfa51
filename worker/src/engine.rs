//! The Docker engine as the methods see it: a client whose API version suits
//! the engine.

use std::sync::atomic::{AtomicBool, Ordering};

use bollard::errors::Error as DockerError;
use bollard::Docker;
use jsonrpsee::types::ErrorObjectOwned;

use crate::error::docker_error;

/// Connects to `host` (`unix://`, `tcp://`, `http://`), or by bollard's local
/// defaults when `None`. Nothing is sent yet; a missing Unix socket fails here.
pub fn connect_docker(host: Option<&str>) -> Result<Docker, DockerError> {
    match host {
        Some(host) => Docker::connect_with_host(host),
        None => Docker::connect_with_defaults(),
    }
}

/// A Docker client that negotiates the API version before its first use.
///
/// bollard speaks its newest API version by default, and an older engine refuses
/// every request from a client newer than itself. Negotiation needs the engine up,
/// so it happens lazily and is retried until it succeeds once. The version lives
/// behind an `Arc` shared by all clones of the client.
pub(crate) struct Engine {
    docker: Docker,
    negotiated: AtomicBool,
}

impl Engine {
    pub(crate) fn new(docker: Docker) -> Self {
        Engine {
            docker,
            negotiated: AtomicBool::new(false),
        }
    }

    /// The client, ready to talk to the engine, or "docker unavailable".
    pub(crate) async fn client(&self) -> Result<&Docker, ErrorObjectOwned> {
        if !self.negotiated.load(Ordering::Relaxed) {
            self.docker
                .clone()
                .negotiate_version()
                .await
                .map_err(|err| docker_error(err, None))?;
            self.negotiated.store(true, Ordering::Relaxed);
        }
        Ok(&self.docker)
    }
}
