//! The HTTP API's one error type: a status, a machine-readable kind and a
//! message, rendered as `{"error": {"kind", "message", "rpc_error"?}}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::RpcError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::accounts::AccountError;
use crate::fleet::{CallError, CallErrorKind};
use crate::registry::RegistryError;

#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    /// Stable label a client can branch on (`unknown_device`, `timed_out`, ...).
    pub kind: &'static str,
    pub message: String,
    /// The device's own JSON-RPC error, passed through.
    pub rpc_error: Option<RpcError>,
}

impl AppError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        AppError {
            status,
            kind,
            message: message.into(),
            rpc_error: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        AppError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized() -> Self {
        AppError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token (Authorization: Bearer <token>)",
        )
    }

    pub fn unknown_device(id: &str) -> Self {
        AppError::new(
            StatusCode::NOT_FOUND,
            "unknown_device",
            format!("unknown device {id:?}"),
        )
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error serving an API request");
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the cloud's log",
        )
    }
}

impl From<AccountError> for AppError {
    fn from(error: AccountError) -> Self {
        match error {
            AccountError::OperatorExists(_) => {
                AppError::new(StatusCode::CONFLICT, "operator_exists", error.to_string())
            }
            AccountError::UnknownOperator(_) => {
                AppError::new(StatusCode::NOT_FOUND, "unknown_operator", error.to_string())
            }
            AccountError::UnknownToken(_) => {
                AppError::new(StatusCode::NOT_FOUND, "unknown_token", error.to_string())
            }
            AccountError::BadName | AccountError::WeakPassword => {
                AppError::bad_request(error.to_string())
            }
            AccountError::Database(_) | AccountError::Hash(_) => AppError::internal(error),
        }
    }
}

impl From<RegistryError> for AppError {
    fn from(error: RegistryError) -> Self {
        AppError::internal(error)
    }
}

impl From<CallError> for AppError {
    fn from(error: CallError) -> Self {
        let kind = error.kind();
        let status = match kind {
            CallErrorKind::UnknownDevice => StatusCode::NOT_FOUND,
            CallErrorKind::NotAccepted => StatusCode::CONFLICT,
            CallErrorKind::Offline => StatusCode::SERVICE_UNAVAILABLE,
            CallErrorKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            CallErrorKind::Disconnected | CallErrorKind::DeviceError => StatusCode::BAD_GATEWAY,
            CallErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            CallErrorKind::Internal => return AppError::internal(error),
        };
        let mut app_error = AppError::new(status, kind.as_str(), error.to_string());
        if let CallError::Device(rpc_error) = error {
            app_error.rpc_error = Some(rpc_error);
        }
        app_error
    }
}

/// The body of every API error (the OpenAPI document's `ErrorBody`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable label to branch on: `bad_request`, `unauthorized`,
    /// `session_expired`, `wrong_password`, `rate_limited`, `csrf`,
    /// `cross_origin`, `unknown_device`, `not_accepted`, `offline`,
    /// `timed_out`, `disconnected`, `device_error`, `operator_exists`,
    /// `unknown_operator`, `self_removal`, `operator_required`,
    /// `unknown_token`, `internal`.
    #[schema(value_type = String, example = "offline")]
    pub kind: &'static str,
    /// For people; its wording may change.
    pub message: String,
    /// The device's JSON-RPC error object, with `device_error` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = crate::openapi::JsonRpcError)]
    pub rpc_error: Option<RpcError>,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind,
                message: self.message,
                rpc_error: self.rpc_error,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
