//! Who is calling the HTTP API, and signing in and out.
//!
//! A caller is an operator with a session cookie (browsers) or a bearer token
//! (scripts, the CLI): an operator's API token, or the host's admin token file.
//! Session callers must repeat their session's CSRF token in `X-CSRF-Token` on
//! every state-changing request; the cookie is HttpOnly and SameSite=Strict.
//! Sign-in attempts are rate limited per operator name and per client address.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::accounts::{is_valid_name, same_secret, Operator};
use crate::admission::ClientAddress;
use crate::audit::Action;
use crate::config::Limits;
use crate::error::{AppError, ErrorBody};
use crate::now_ms;
use crate::state::AppState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "devbridge_session";
/// Header carrying the CSRF token of a cookie session.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Name under which the admin token file's holder appears in the audit log.
pub const ADMIN_TOKEN_ACTOR: &str = "admin-token";
/// Failed sign-ins are counted within windows this long.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Sources whose failures are counted at once, at most.
const FAILURE_KEYS_KEPT: usize = 100_000;
/// How the audit log names the actor of a sign-in with a name that is no
/// operator's: the names strangers try are not worth a row each.
pub const UNKNOWN_OPERATOR: &str = "(unknown)";

/// How a caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Session { csrf_token: String },
    ApiToken { token_id: i64 },
    AdminToken,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Audit log name: the operator, or [`ADMIN_TOKEN_ACTOR`].
    pub name: String,
    /// None for the admin token, which belongs to no operator account.
    pub operator: Option<Operator>,
    pub credential: Credential,
}

impl Caller {
    pub fn csrf_token(&self) -> Option<&str> {
        match &self.credential {
            Credential::Session { csrf_token } => Some(csrf_token),
            _ => None,
        }
    }
}

/// Failed sign-ins, counted per (name, client address) and per client
/// address in one-minute windows. Only failures count, and never across
/// addresses for a name: someone else's failures do not lock out a correct
/// password typed elsewhere.
pub struct LoginLimiter {
    per_name: FailureCounter<(String, IpAddr)>,
    per_address: FailureCounter<IpAddr>,
}

impl LoginLimiter {
    pub fn new(limits: &Limits) -> Self {
        LoginLimiter {
            per_name: FailureCounter::new(limits.sign_in_failures_per_name_per_minute),
            per_address: FailureCounter::new(limits.sign_in_failures_per_address_per_minute),
        }
    }

    /// `Err(wait)` if this name or address has used up its failures.
    pub fn check(&self, name: &str, address: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let waits = [
            self.per_address.wait(&address, now),
            self.per_name.wait(&(name.to_owned(), address), now),
        ];
        match waits.into_iter().flatten().max() {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Counts a failed sign-in.
    pub fn failed(&self, name: &str, address: IpAddr) {
        let now = Instant::now();
        self.per_address.fail(address, now);
        self.per_name.fail((name.to_owned(), address), now);
    }
}

/// Failures per key within fixed windows of [`FAILURE_WINDOW`].
struct FailureCounter<K> {
    limit: u32,
    windows: Mutex<HashMap<K, FailureWindow>>,
}

#[derive(Clone, Copy)]
struct FailureWindow {
    started: Instant,
    failures: u32,
}

impl<K: Hash + Eq> FailureCounter<K> {
    fn new(limit: u32) -> Self {
        FailureCounter {
            limit: limit.max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// How long `key` must wait, if it has used up its failures. When the
    /// table is full of live windows a new key waits too: failing closed
    /// keeps a spread-out guesser from outrunning the count.
    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        match windows.get(key) {
            Some(window) => {
                let elapsed = now.duration_since(window.started);
                (elapsed < FAILURE_WINDOW && window.failures >= self.limit)
                    .then(|| FAILURE_WINDOW - elapsed)
            }
            None => (windows.len() >= FAILURE_KEYS_KEPT).then_some(FAILURE_WINDOW),
        }
    }

    fn fail(&self, key: K, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= FAILURE_KEYS_KEPT {
            windows.retain(|_, window| now.duration_since(window.started) < FAILURE_WINDOW);
            if windows.len() >= FAILURE_KEYS_KEPT {
                tracing::warn!("sign-in failure table is full; new sources wait a minute");
                return;
            }
        }
        let window = windows.entry(key).or_insert(FailureWindow {
            started: now,
            failures: 0,
        });
        if now.duration_since(window.started) >= FAILURE_WINDOW {
            *window = FailureWindow {
                started: now,
                failures: 0,
            };
        }
        window.failures += 1;
    }
}

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
/// also present its CSRF token.
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
        return caller_from_token(state, token).await;
    }
    let Some(secret) = session_secret(headers) else {
        return Err(AppError::unauthorized());
    };
    let session = state
        .accounts()
        .session(&secret, now_ms() as i64)
        .await
        .map_err(AppError::internal)?
        .ok_or_else(|| {
            AppError::new(
                StatusCode::UNAUTHORIZED,
                "session_expired",
                "your session has ended; sign in again",
            )
        })?;
    if needs_csrf {
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same_secret(presented.as_bytes(), session.csrf_token.as_bytes()) {
            return Err(AppError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "missing or wrong X-CSRF-Token for this session; reload the page",
            ));
        }
    }
    Ok(Caller {
        name: session.operator.name.clone(),
        operator: Some(session.operator),
        credential: Credential::Session {
            csrf_token: session.csrf_token,
        },
    })
}

async fn caller_from_token(state: &AppState, token: &str) -> Result<Caller, AppError> {
    if same_secret(token.as_bytes(), state.admin_token().as_bytes()) {
        return Ok(Caller {
            name: ADMIN_TOKEN_ACTOR.into(),
            operator: None,
            credential: Credential::AdminToken,
        });
    }
    let (operator, api_token) = state
        .accounts()
        .token_owner(token, now_ms() as i64)
        .await
        .map_err(AppError::internal)?
        .ok_or_else(AppError::unauthorized)?;
    Ok(Caller {
        name: operator.name.clone(),
        operator: Some(operator),
        credential: Credential::ApiToken {
            token_id: api_token.id,
        },
    })
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

/// Why a sign-in failed, for the caller (the dashboard words it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    WrongPassword,
    RateLimited(Duration),
}

/// Checks a sign-in and starts a session; records the attempt in the audit
/// log (refusals in aggregate: a row an hour per operator and outcome, and
/// names that are no operator's under [`UNKNOWN_OPERATOR`]). Returns the
/// operator, the session's `Set-Cookie` value and its CSRF token.
pub async fn sign_in(
    state: &AppState,
    name: &str,
    password: &str,
    address: IpAddr,
) -> Result<Result<(Operator, HeaderValue, String), LoginRefusal>, AppError> {
    let name = name.trim();
    let valid_name = is_valid_name(name);
    let known = valid_name
        && state
            .accounts()
            .operator(name)
            .await
            .map_err(AppError::internal)?
            .is_some();
    let actor = if known { name } else { UNKNOWN_OPERATOR };
    // Only a name that could be an operator's is kept, and only its latest.
    let detail = match (known, valid_name) {
        (true, _) => format!("from {address}"),
        (false, true) => format!("from {address}; name tried: {name}"),
        (false, false) => format!("from {address}; not a valid operator name"),
    };
    let refuse = |outcome: &'static str| Action {
        actor,
        action: "login",
        target: "",
        outcome,
        detail: &detail,
        latency_ms: None,
    };
    if let Err(wait) = state.login_limiter().check(name, address) {
        state.record_refusal(&refuse("rate_limited")).await;
        return Ok(Err(LoginRefusal::RateLimited(wait)));
    }
    let operator = if valid_name {
        state
            .accounts()
            .check_password(name, password)
            .await
            .map_err(AppError::internal)?
    } else {
        None
    };
    let Some(operator) = operator else {
        state.login_limiter().failed(name, address);
        state.record_refusal(&refuse("wrong_password")).await;
        return Ok(Err(LoginRefusal::WrongPassword));
    };
    let session = state
        .accounts()
        .start_session(&operator, now_ms() as i64)
        .await
        .map_err(AppError::internal)?;
    record(state, &operator.name, "login", "ok", "").await;
    let cookie = session_cookie(state, &session.secret, crate::accounts::SESSION_IDLE);
    Ok(Ok((operator, cookie, session.csrf_token)))
}

/// Ends the session these headers carry, if any; returns the clearing cookie.
pub async fn sign_out(state: &AppState, caller: &Caller, headers: &HeaderMap) -> HeaderValue {
    if let Some(secret) = session_secret(headers) {
        if let Err(e) = state.accounts().end_session(&secret).await {
            tracing::warn!(error = %e, "cannot end a session");
        }
    }
    record(state, &caller.name, "logout", "ok", "").await;
    session_cookie(state, "", Duration::ZERO)
}

fn session_cookie(state: &AppState, value: &str, max_age: Duration) -> HeaderValue {
    let secure = if state.config().secure_cookies {
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

/// Records an operator action; a failure to record is logged, not fatal.
pub async fn record(state: &AppState, actor: &str, action: &str, outcome: &str, target: &str) {
    state
        .record_action(&Action {
            actor,
            action,
            target,
            outcome,
            detail: "",
            latency_ms: None,
        })
        .await;
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
    body: Result<Json<LoginRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, AppError> {
    let Json(body) = body.map_err(|e| AppError::bad_request(e.body_text()))?;
    match sign_in(&state, &body.name, &body.password, address).await? {
        Ok((operator, cookie, csrf_token)) => Ok((
            [(header::SET_COOKIE, cookie)],
            Json(SignedIn {
                operator,
                csrf_token,
            }),
        )
            .into_response()),
        Err(LoginRefusal::WrongPassword) => Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            "wrong_password",
            "unknown operator or wrong password",
        )),
        Err(LoginRefusal::RateLimited(wait)) => {
            let mut response = AppError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "too many sign-in attempts; try again in {} s",
                    wait.as_secs() + 1
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs() + 1));
            Ok(response)
        }
    }
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
    };
    Json(Me {
        csrf_token: caller.csrf_token().map(str::to_owned),
        name: caller.name,
        operator: caller.operator,
        via,
    })
}
