//! The HTTP face of [`OpError`]: a status for each kind, and the body
//! `{"error": {"kind", "message", "rpc_error"?}}`.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::RpcError;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::ops::{ErrorKind, OpError};

/// An operation's error on its way to an HTTP client.
#[derive(Debug)]
pub struct AppError(pub OpError);

/// A JSON body, or `bad_request` saying what is wrong with it.
pub fn body_of<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, AppError> {
    body.map(|Json(body)| body)
        .map_err(|e| AppError::bad_request(e.body_text()))
}

impl AppError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AppError(OpError::new(kind, message))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        AppError(OpError::bad_request(message))
    }

    pub fn unauthorized() -> Self {
        AppError(OpError::unauthorized())
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        AppError(OpError::internal(error))
    }

    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.0.kind)
    }
}

impl<E: Into<OpError>> From<E> for AppError {
    fn from(error: E) -> Self {
        AppError(error.into())
    }
}

/// The status each kind is answered with.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized | ErrorKind::SessionExpired | ErrorKind::WrongPassword => {
            StatusCode::UNAUTHORIZED
        }
        ErrorKind::RateLimited | ErrorKind::Busy => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Forbidden
        | ErrorKind::Csrf
        | ErrorKind::CrossOrigin
        | ErrorKind::OperatorRequired => StatusCode::FORBIDDEN,
        ErrorKind::UnknownDevice
        | ErrorKind::UnknownOperator
        | ErrorKind::UnknownToken
        | ErrorKind::UnknownSession
        | ErrorKind::UnknownJob
        | ErrorKind::UnknownCall => StatusCode::NOT_FOUND,
        ErrorKind::NotAccepted
        | ErrorKind::OperatorExists
        | ErrorKind::SelfRemoval
        | ErrorKind::DeviceExists
        | ErrorKind::IdempotencyConflict => StatusCode::CONFLICT,
        ErrorKind::Offline => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Disconnected | ErrorKind::DeviceError => StatusCode::BAD_GATEWAY,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON-RPC 2.0 error object, as the device sent it.
#[derive(ToSchema)]
#[allow(dead_code)] // Only describes `protocol::RpcError` (no schema in that crate).
pub(crate) struct JsonRpcError {
    code: i64,
    message: String,
    data: Option<Value>,
}

/// The body of every API error (the OpenAPI document's `ErrorBody`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable label to branch on.
    pub kind: ErrorKind,
    /// For people; its wording may change.
    pub message: String,
    /// The device's JSON-RPC error object, with `device_error` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = JsonRpcError)]
    pub rpc_error: Option<RpcError>,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let OpError {
            kind,
            message,
            rpc_error,
            retry_after,
        } = self.0;
        let body = ErrorBody {
            error: ErrorDetail {
                kind,
                message,
                rpc_error,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(wait) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs() + 1));
        }
        response
    }
}
