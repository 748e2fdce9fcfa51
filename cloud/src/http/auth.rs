//! Who is calling the HTTP API, and signing in and out.
//!
//! A caller is an operator with a session cookie (browsers) or a bearer token
//! (scripts, the CLI): an operator's API token, or the host's admin token file.
//! Session callers must repeat their session's CSRF token in `X-CSRF-Token` on
//! every state-changing request; the cookie is HttpOnly and SameSite=Strict.
//! Who the caller is and whether they may sign in is the operations layer's
//! business (`ops::caller`, `ops::sign_in`); this module reads headers and
//! writes cookies.

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::client_address::ClientAddress;
use crate::http::error::{body_of, AppError, ErrorBody};
use crate::http::state::AppState;
use crate::ops::{Caller, Credential, OpError};
use crate::roles::Role;
use crate::store::accounts::SESSION_IDLE;
use crate::store::Operator;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "devbridge_session";
/// Header carrying the CSRF token of a cookie session.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Middleware of the API: puts the [`Caller`] in the request's extensions, or
/// refuses the request (401 without credentials, 403 without CSRF token).
pub(crate) async fn require_caller(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let unsafe_method = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let caller = caller_from_headers(&state, request.headers(), unsafe_method).await?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// The caller these headers authenticate. `needs_csrf`: a cookie session must
/// also present its CSRF token (`X-CSRF-Token`).
pub async fn caller_from_headers(
    state: &AppState,
    headers: &HeaderMap,
    needs_csrf: bool,
) -> Result<Caller, AppError> {
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        let token = authorization
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(AppError::unauthorized)?;
        return Ok(state.ops().caller_from_token(token).await?);
    }
    let Some(secret) = session_secret(headers) else {
        return Err(AppError::unauthorized());
    };
    let presented_csrf = needs_csrf.then(|| {
        headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    });
    Ok(state
        .ops()
        .caller_from_session(&secret, presented_csrf)
        .await?)
}

/// The session cookie's secret, if the request carries one.
pub fn session_secret(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, SESSION_COOKIE)
}

/// The value of the request's cookie `name`, if any.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    pub name: String,
    pub password: String,
}

/// Checks a sign-in and starts a session (see [`Operations::sign_in`]).
/// Returns the operator, the session's `Set-Cookie` value and its CSRF token.
///
/// [`Operations::sign_in`]: crate::ops::Operations::sign_in
pub async fn sign_in(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    password: &str,
    address: IpAddr,
) -> Result<(Operator, HeaderValue, String), OpError> {
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|value| value.to_str().ok());
    let (operator, session) = state
        .ops()
        .sign_in(name, password, address, user_agent)
        .await?;
    let cookie = session_cookie(state, &session.secret, SESSION_IDLE);
    Ok((operator, cookie, session.csrf_token))
}

/// Ends the session these headers carry, if any; returns the clearing cookie.
pub async fn sign_out(state: &AppState, caller: &Caller, headers: &HeaderMap) -> HeaderValue {
    let secret = session_secret(headers);
    state.ops().sign_out(caller, secret.as_deref()).await;
    session_cookie(state, "", Duration::ZERO)
}

fn session_cookie(state: &AppState, value: &str, max_age: Duration) -> HeaderValue {
    let secure = if state.ops().config().secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let text = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age.as_secs()
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A new session: its operator, and the CSRF token every state-changing
/// request of the session must carry in `X-CSRF-Token`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignedIn {
    pub operator: Operator,
    pub csrf_token: String,
}

/// Who the caller is.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// The operator, or `admin-token`.
    pub name: String,
    #[schema(required = true)]
    pub operator: Option<Operator>,
    /// `session`, `api_token` or `admin_token`.
    pub via: &'static str,
    /// What the caller may do (for a token: the lower of its and its operator's role).
    pub role: Role,
    /// The session's CSRF token; null for bearer tokens.
    #[schema(required = true)]
    pub csrf_token: Option<String>,
}

/// Signs in: sets the session cookie (HttpOnly, SameSite=Strict). Failures
/// are limited per operator name and client address (5 a minute by default)
/// and per client address (30).
#[utoipa::path(
    post,
    path = "/login",
    tag = "operators",
    security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in; the cookie is in `Set-Cookie`", body = SignedIn),
        (status = 400, description = "`bad_request`: unreadable body", body = ErrorBody),
        (status = 401, description = "`wrong_password`: unknown operator or wrong password", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many attempts; see `Retry-After`", body = ErrorBody),
    ),
)]
pub(crate) async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    body: Result<Json<LoginRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, AppError> {
    let body = body_of(body)?;
    let (operator, cookie, csrf_token) =
        sign_in(&state, &headers, &body.name, &body.password, address).await?;
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(SignedIn {
            operator,
            csrf_token,
        }),
    )
        .into_response())
}

/// Signs out: ends the caller's session and clears its cookie.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "operators",
    responses(
        (status = 204, description = "Signed out"),
        (status = 403, description = "`csrf`: a session without its CSRF token", body = ErrorBody),
    ),
)]
pub(crate) async fn logout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    let cookie = sign_out(&state, &caller, &headers).await;
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

/// Who the caller is, and a session's CSRF token.
#[utoipa::path(
    get,
    path = "/me",
    tag = "operators",
    responses((status = 200, description = "The caller", body = Me)),
)]
pub(crate) async fn me(Extension(caller): Extension<Caller>) -> Json<Me> {
    let via = match caller.credential {
        Credential::Session { .. } => "session",
        Credential::ApiToken { .. } => "api_token",
        Credential::AdminToken => "admin_token",
        Credential::Host => "host",
    };
    Json(Me {
        csrf_token: caller.csrf_token().map(str::to_owned),
        role: caller.role,
        name: caller.name,
        operator: caller.operator,
        via,
    })
}
