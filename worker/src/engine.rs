//! The Docker engine as the methods see it: a client whose API version suits the
//! engine, and Docker errors turned into JSON-RPC errors a caller can act on.

use std::error::Error as _;
use std::sync::atomic::{AtomicBool, Ordering};

use bollard::errors::Error as DockerError;
use bollard::Docker;
use jsonrpsee::types::ErrorObjectOwned;
use protocol::ErrorCode;

use crate::methods::rpc_error;

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

/// Maps a Docker error to a JSON-RPC error. `container` names the container the
/// call was about, so a 404 reads "no such container: X".
pub(crate) fn docker_error(err: DockerError, container: Option<&str>) -> ErrorObjectOwned {
    match err {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } => match container {
            Some(container) => rpc_error(
                ErrorCode::InvalidParams,
                format!("no such container: {container}"),
            ),
            None => rpc_error(ErrorCode::InternalError, format!("docker: {message}")),
        },
        // 4xx: the engine understood and refused (a conflict, a bad argument).
        DockerError::DockerResponseServerError {
            status_code: 400..=499,
            message,
        } => rpc_error(
            ErrorCode::InvalidParams,
            format!("docker refused: {message}"),
        ),
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => rpc_error(
            ErrorCode::InternalError,
            format!("docker error {status_code}: {message}"),
        ),
        DockerError::JsonDataError { .. } | DockerError::JsonSerdeError { .. } => rpc_error(
            ErrorCode::InternalError,
            format!("unexpected answer from docker: {err}"),
        ),
        // Everything else is about reaching the engine: socket, HTTP, timeout.
        other => rpc_error(
            ErrorCode::Unavailable,
            format!("docker unavailable: {}", error_chain(&other)),
        ),
    }
}

/// The error and its sources, joined, because bollard's transport errors say
/// only "client error (Connect)" at the top.
pub(crate) fn error_chain(err: &DockerError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
