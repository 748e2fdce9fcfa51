//! The one error of every operation: a kind a client can branch on, a message
//! for people, and the device's own JSON-RPC error when it answered with one.
//! The HTTP layer maps each kind to a status; nothing here knows HTTP.

use std::time::Duration;

use protocol::RpcError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::device::{CallError, CallErrorKind};
use crate::store::{AccountError, RegistryError};

/// Why an operation failed: stable labels, as the API reports them (the
/// OpenAPI document lists them as the `kind` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    SessionExpired,
    WrongPassword,
    RateLimited,
    Csrf,
    CrossOrigin,
    UnknownDevice,
    NotAccepted,
    Offline,
    TimedOut,
    Disconnected,
    DeviceError,
    OperatorExists,
    UnknownOperator,
    SelfRemoval,
    OperatorRequired,
    UnknownToken,
    UnknownSession,
    DeviceExists,
    UnknownJob,
    UnknownCall,
    /// An idempotency key used before for a different call.
    IdempotencyConflict,
    /// Too many calls wait for the device (or the fleet), or too many jobs run.
    Busy,
    Internal,
}

impl ErrorKind {
    /// Every kind, for documentation and tests.
    pub const ALL: [ErrorKind; 26] = [
        ErrorKind::BadRequest,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::SessionExpired,
        ErrorKind::WrongPassword,
        ErrorKind::RateLimited,
        ErrorKind::Csrf,
        ErrorKind::CrossOrigin,
        ErrorKind::UnknownDevice,
        ErrorKind::NotAccepted,
        ErrorKind::Offline,
        ErrorKind::TimedOut,
        ErrorKind::Disconnected,
        ErrorKind::DeviceError,
        ErrorKind::OperatorExists,
        ErrorKind::UnknownOperator,
        ErrorKind::SelfRemoval,
        ErrorKind::OperatorRequired,
        ErrorKind::UnknownToken,
        ErrorKind::UnknownSession,
        ErrorKind::DeviceExists,
        ErrorKind::UnknownJob,
        ErrorKind::UnknownCall,
        ErrorKind::IdempotencyConflict,
        ErrorKind::Busy,
        ErrorKind::Internal,
    ];

    /// The label the API reports and the audit log records as the outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::SessionExpired => "session_expired",
            ErrorKind::WrongPassword => "wrong_password",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Csrf => "csrf",
            ErrorKind::CrossOrigin => "cross_origin",
            ErrorKind::UnknownDevice => "unknown_device",
            ErrorKind::NotAccepted => "not_accepted",
            ErrorKind::Offline => "offline",
            ErrorKind::TimedOut => "timed_out",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::DeviceError => "device_error",
            ErrorKind::OperatorExists => "operator_exists",
            ErrorKind::UnknownOperator => "unknown_operator",
            ErrorKind::SelfRemoval => "self_removal",
            ErrorKind::OperatorRequired => "operator_required",
            ErrorKind::UnknownToken => "unknown_token",
            ErrorKind::UnknownSession => "unknown_session",
            ErrorKind::DeviceExists => "device_exists",
            ErrorKind::UnknownJob => "unknown_job",
            ErrorKind::UnknownCall => "unknown_call",
            ErrorKind::IdempotencyConflict => "idempotency_conflict",
            ErrorKind::Busy => "busy",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
pub struct OpError {
    pub kind: ErrorKind,
    /// For people; its wording may change.
    pub message: String,
    /// The device's JSON-RPC error, passed through (with `device_error`).
    pub rpc_error: Option<RpcError>,
    /// When to try again (with `rate_limited`).
    pub retry_after: Option<Duration>,
}

impl OpError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        OpError {
            kind,
            message: message.into(),
            rpc_error: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        OpError::new(ErrorKind::BadRequest, message)
    }

    pub fn unauthorized() -> Self {
        OpError::new(
            ErrorKind::Unauthorized,
            "missing or invalid bearer token (Authorization: Bearer <token>)",
        )
    }

    pub fn unknown_device(id: &str) -> Self {
        OpError::new(ErrorKind::UnknownDevice, format!("unknown device {id:?}"))
    }

    /// Logs the cause, which callers never see.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error serving a request");
        OpError::new(ErrorKind::Internal, "internal error; see the cloud's log")
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for OpError {}

impl From<AccountError> for OpError {
    fn from(error: AccountError) -> Self {
        let kind = match error {
            AccountError::OperatorExists(_) => ErrorKind::OperatorExists,
            AccountError::UnknownOperator(_) => ErrorKind::UnknownOperator,
            AccountError::UnknownToken(_) => ErrorKind::UnknownToken,
            AccountError::UnknownSession(_) => ErrorKind::UnknownSession,
            AccountError::BadName | AccountError::WeakPassword | AccountError::BadRole(_) => {
                ErrorKind::BadRequest
            }
            AccountError::Database(_) | AccountError::Hash(_) => return OpError::internal(error),
        };
        OpError::new(kind, error.to_string())
    }
}

impl From<RegistryError> for OpError {
    fn from(error: RegistryError) -> Self {
        OpError::internal(error)
    }
}

impl From<sqlx::Error> for OpError {
    fn from(error: sqlx::Error) -> Self {
        OpError::internal(error)
    }
}

impl From<CallError> for OpError {
    fn from(error: CallError) -> Self {
        let kind = match error.kind() {
            CallErrorKind::UnknownDevice => ErrorKind::UnknownDevice,
            CallErrorKind::NotAccepted => ErrorKind::NotAccepted,
            CallErrorKind::Offline => ErrorKind::Offline,
            CallErrorKind::TimedOut => ErrorKind::TimedOut,
            CallErrorKind::Disconnected => ErrorKind::Disconnected,
            CallErrorKind::DeviceError => ErrorKind::DeviceError,
            CallErrorKind::BadRequest => ErrorKind::BadRequest,
            CallErrorKind::Internal => return OpError::internal(error),
        };
        let mut op_error = OpError::new(kind, error.to_string());
        if let CallError::Device(rpc_error) = error {
            op_error.rpc_error = Some(rpc_error);
        }
        op_error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_serializes_as_its_label() {
        for kind in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
