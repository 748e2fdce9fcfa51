//! Why a message was refused, and the JSON-RPC error codes the system uses.

/// JSON-RPC error codes: the standard ones and this system's server errors.
/// Each fits an `i32`, as JSON-RPC codes do (`repr(i32)`: the compiler refuses
/// any other value), so it converts to jsonrpsee's code without loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ErrorCode {
    ParseError = -32700,
    InvalidRequest = -32600,
    MethodNotFound = -32601,
    InvalidParams = -32602,
    InternalError = -32603,
    /// The message failed a signature or `meta` check.
    Refused = -32001,
    /// The callee did not answer in time.
    TimedOut = -32002,
    /// The device's connection closed while the call was in flight.
    DeviceDisconnected = -32003,
    /// The device is not (yet) accepted by an operator.
    NotAccepted = -32004,
    /// The callee cannot be reached right now (offline device, bridge not live).
    Unavailable = -32005,
}

impl ErrorCode {
    pub fn code(self) -> i64 {
        i64::from(self as i32)
    }

    /// This code as jsonrpsee's error object, for a JSON-RPC server built on
    /// jsonrpsee, with `message` and, if any, `data`.
    #[cfg(feature = "jsonrpsee")]
    pub fn error_object(
        self,
        message: impl Into<String>,
        data: Option<serde_json::Value>,
    ) -> jsonrpsee_types::ErrorObjectOwned {
        jsonrpsee_types::ErrorObjectOwned::owned(self as i32, message, data)
    }
}

/// A reason to refuse a frame. Each variant has a stable [`Refusal::reason`] code
/// for logs and metrics, and a sentence an operator can read ([`fmt::Display`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("binary frames are not accepted; send one JSON object per text frame")]
    BinaryFrame,
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
    #[error("number {0} is beyond ±(2^53−1); send large values as strings")]
    UnsafeNumber(String),
    #[error("batches (JSON arrays) are not accepted")]
    Batch,
    #[error("not a JSON-RPC 2.0 message: {0}")]
    NotJsonRpc(String),
    #[error("missing meta")]
    MissingMeta,
    #[error("invalid meta: {0}")]
    BadMeta(String),
    #[error("unsupported algorithm {0:?}; only ed25519 is accepted")]
    UnsupportedAlgorithm(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("unknown signer {found:?}; expected {expected:?}")]
    WrongSigner { expected: String, found: String },
    #[error("wrong audience {found:?}; expected {expected:?}")]
    WrongAudience { expected: String, found: String },
    #[error("wrong direction {found}; expected {expected}")]
    WrongDirection { expected: String, found: String },
    #[error("stale timestamp: {age_ms} ms old, allowed skew is {skew_ms} ms")]
    Stale { age_ms: u64, skew_ms: u64 },
    #[error("timestamp {ahead_ms} ms in the future, allowed skew is {skew_ms} ms")]
    Future { ahead_ms: u64, skew_ms: u64 },
    #[error("replayed nonce from {0:?}")]
    Replayed(String),
    #[error("replay guard is full; refusing until old nonces expire")]
    ReplayGuardFull,
    #[error("too many messages from {0:?} within the replay window; slow down")]
    TooManyMessages(String),
    #[error("method name {0:?} is not a plain dotted name")]
    BadMethodName(String),
    #[error("signed at {signed_at} ms, before this connection authenticated at {authenticated_at} ms; a replay from an earlier connection")]
    OlderThanSession {
        signed_at: u64,
        authenticated_at: u64,
    },
}

impl Refusal {
    /// Stable, machine-readable reason (a metrics label).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TooLarge { .. } => "too_large",
            Refusal::BinaryFrame => "binary_frame",
            Refusal::MalformedJson(_) => "malformed_json",
            Refusal::DuplicateKey(_) => "duplicate_key",
            Refusal::UnsafeNumber(_) => "unsafe_number",
            Refusal::Batch => "batch",
            Refusal::NotJsonRpc(_) => "not_jsonrpc",
            Refusal::MissingMeta => "missing_meta",
            Refusal::BadMeta(_) => "bad_meta",
            Refusal::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Refusal::BadSignature => "bad_signature",
            Refusal::WrongSigner { .. } => "wrong_signer",
            Refusal::WrongAudience { .. } => "wrong_audience",
            Refusal::WrongDirection { .. } => "wrong_direction",
            Refusal::Stale { .. } => "stale",
            Refusal::Future { .. } => "future",
            Refusal::Replayed(_) => "replayed",
            Refusal::ReplayGuardFull => "replay_guard_full",
            Refusal::TooManyMessages(_) => "too_many_messages",
            Refusal::BadMethodName(_) => "bad_method_name",
            Refusal::OlderThanSession { .. } => "older_than_session",
        }
    }

    /// The JSON-RPC error code a refused request is answered with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Refusal::MalformedJson(_) | Refusal::DuplicateKey(_) | Refusal::UnsafeNumber(_) => {
                ErrorCode::ParseError
            }
            Refusal::TooLarge { .. }
            | Refusal::BinaryFrame
            | Refusal::Batch
            | Refusal::NotJsonRpc(_) => ErrorCode::InvalidRequest,
            Refusal::BadMethodName(_) => ErrorCode::MethodNotFound,
            _ => ErrorCode::Refused,
        }
    }
}
