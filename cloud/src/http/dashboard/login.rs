//! Signing in and out through HTML forms.
//!
//! The sign-in form has no session yet to tie a CSRF token to, so it uses a
//! double-submit token: a random value in a short-lived SameSite=Strict
//! cookie and the same value in a hidden field. A page of another site can
//! neither read the cookie nor make the browser send it.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;

use super::assets;
use super::page::{local_path, render_with_status, SignedIn};
use crate::client_address::ClientAddress;
use crate::http::auth::{caller_from_headers, sign_in, sign_out};
use crate::http::error::AppError;
use crate::http::state::AppState;
use crate::ops::ErrorKind;
use crate::store::accounts::same_secret;

/// The cookie holding the sign-in form's CSRF token.
const LOGIN_CSRF_COOKIE: &str = "devbridge_login_csrf";
/// How long a sign-in form stays usable.
const LOGIN_FORM_MAX_AGE_SECS: u64 = 3600;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    form_token: String,
    next: String,
    name: String,
    error: Option<String>,
    /// Why the browser is here, when it was signed out on purpose.
    notice: Option<&'static str>,
    assets: &'static str,
}

#[derive(Debug, Deserialize)]
pub(super) struct NextQuery {
    next: Option<String>,
    /// What ended the session (see [`notice_of`]).
    done: Option<String>,
}

/// A fixed sentence per `done` value: the query names a message, never
/// carries its text, so a link cannot put words on this page.
fn notice_of(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "password" => Some(
            "Your password has changed and every session of yours has ended. \
             Sign in with the new password.",
        ),
        "session" => Some("You ended this session from your account page."),
        _ => None,
    }
}

/// `GET /login`: the form; a signed-in operator goes straight on.
pub(super) async fn form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<NextQuery>,
) -> Response {
    let next = local_path(query.next.as_deref(), "/");
    if caller_from_headers(&state, &headers, false).await.is_ok() {
        return Redirect::to(&next).into_response();
    }
    let notice = notice_of(query.done.as_deref());
    login_page(&state, StatusCode::OK, next, String::new(), None, notice)
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    name: String,
    password: String,
    #[serde(default)]
    form_token: String,
    #[serde(default)]
    next: String,
}

/// `POST /login`: checks the form's token, then signs in (which applies the
/// rate limits and records the attempt in the audit log).
pub(super) async fn submit(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = local_path(Some(&form.next), "/");
    let expected = crate::http::auth::cookie_value(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_secret(form.form_token.as_bytes(), expected.as_bytes()) {
        let error = "This sign-in form has expired. Please try again.".to_owned();
        return login_page(
            &state,
            StatusCode::BAD_REQUEST,
            next,
            form.name,
            Some(error),
            None,
        );
    }
    match sign_in(&state, &headers, &form.name, &form.password, address).await {
        Ok((_, session_cookie, _)) => {
            let mut response = Redirect::to(&next).into_response();
            let headers = response.headers_mut();
            headers.append(header::SET_COOKIE, session_cookie);
            headers.append(header::SET_COOKIE, login_cookie(&state, "", 0));
            response
        }
        Err(e) if e.kind == ErrorKind::WrongPassword => login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            next,
            form.name,
            Some("Unknown operator or wrong password.".into()),
            None,
        ),
        Err(e) if e.kind == ErrorKind::RateLimited => {
            let wait = e.retry_after.unwrap_or_default();
            let error = format!(
                "Too many sign-in attempts. Try again in {} seconds.",
                wait.as_secs() + 1
            );
            let mut response = login_page(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                next,
                form.name,
                Some(error),
                None,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs() + 1));
            response
        }
        Err(e) => AppError(e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct LogoutForm {
    #[serde(default)]
    csrf_token: String,
}

/// `POST /logout`: ends the session (CSRF-checked, so no other site can sign
/// an operator out).
pub(super) async fn logout(
    State(state): State<AppState>,
    signed_in: SignedIn,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if !signed_in.csrf_ok(&form.csrf_token) {
        return super::page::csrf_refused(&signed_in, "/");
    }
    let cookie = sign_out(&state, &signed_in.caller, &headers).await;
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

/// The form with a fresh token, and the cookie that holds it.
fn login_page(
    state: &AppState,
    status: StatusCode,
    next: String,
    name: String,
    error: Option<String>,
    notice: Option<&'static str>,
) -> Response {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let form_token = URL_SAFE_NO_PAD.encode(bytes);
    let cookie = login_cookie(state, &form_token, LOGIN_FORM_MAX_AGE_SECS);
    let page = LoginPage {
        form_token,
        next,
        name,
        error,
        notice,
        assets: assets::version(),
    };
    let mut response = render_with_status(status, &page);
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

fn login_cookie(state: &AppState, value: &str, max_age_secs: u64) -> HeaderValue {
    let secure = if state.ops().config().secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let text = format!(
        "{LOGIN_CSRF_COOKIE}={value}; Path=/login; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}
