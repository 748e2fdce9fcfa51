//! Why a call from the cloud to a device failed.

use std::time::Duration;

use protocol::{Refusal, RpcError};

use crate::store::registry::{DeviceStatus, RegistryError};

/// Why a call to a device failed; [`CallError::kind`] is what callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("unknown device {0:?}")]
    UnknownDevice(String),
    #[error("device is {0}, not accepted")]
    NotAccepted(DeviceStatus),
    #[error("device is offline")]
    Offline,
    #[error("device did not answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("device disconnected before answering")]
    Disconnected,
    #[error("device answered with error {}: {}", .0.code, .0.message)]
    Device(RpcError),
    #[error("bad method: {0}")]
    BadMethod(Refusal),
    #[error("bad params: {0}")]
    BadParams(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot reach the other cloud instances: {0}")]
    Cluster(String),
}

/// The kinds of [`CallError`], as the API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallErrorKind {
    UnknownDevice,
    NotAccepted,
    Offline,
    TimedOut,
    Disconnected,
    DeviceError,
    BadRequest,
    Internal,
}

impl CallErrorKind {
    /// The label the HTTP API reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CallErrorKind::UnknownDevice => "unknown_device",
            CallErrorKind::NotAccepted => "not_accepted",
            CallErrorKind::Offline => "offline",
            CallErrorKind::TimedOut => "timed_out",
            CallErrorKind::Disconnected => "disconnected",
            CallErrorKind::DeviceError => "device_error",
            CallErrorKind::BadRequest => "bad_request",
            CallErrorKind::Internal => "internal",
        }
    }
}

impl CallError {
    pub fn kind(&self) -> CallErrorKind {
        match self {
            CallError::UnknownDevice(_) => CallErrorKind::UnknownDevice,
            CallError::NotAccepted(_) => CallErrorKind::NotAccepted,
            CallError::Offline => CallErrorKind::Offline,
            CallError::TimedOut(_) => CallErrorKind::TimedOut,
            CallError::Disconnected => CallErrorKind::Disconnected,
            CallError::Device(_) => CallErrorKind::DeviceError,
            CallError::BadMethod(_) | CallError::BadParams(_) => CallErrorKind::BadRequest,
            CallError::Registry(_) | CallError::Cluster(_) => CallErrorKind::Internal,
        }
    }
}
