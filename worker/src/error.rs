//! The worker's JSON-RPC errors: one with a code of the system's, and a Docker
//! error turned into one a caller can act on. The engine and the methods both
//! use these; this module uses neither.

use std::error::Error as _;

use bollard::errors::Error as DockerError;
use jsonrpsee::types::ErrorObjectOwned;
use protocol::ErrorCode;

/// A JSON-RPC error object with one of the system's codes.
pub(crate) fn rpc_error(code: ErrorCode, message: impl Into<String>) -> ErrorObjectOwned {
    code.error_object(message, None)
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
