//! One's own account: changing one's password (which ends every session of
//! one's own, this one too, so the browser signs in again) and one's browser
//! sessions, the current one marked, each of which can be ended.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::format::utc_time;
use super::page::{csrf_refused, render_with_status, sentence, Chrome, MessagePage, SignedIn};
use crate::http::auth::session_secret;
use crate::http::error::{status_of, AppError};
use crate::http::state::AppState;
use crate::ops::ErrorKind;
use crate::store::accounts::{session_id_of, MIN_PASSWORD_CHARS};
use crate::store::SessionInfo;

/// Where a changed password sends the browser: its session has ended.
const SIGNED_OUT_BY_PASSWORD_CHANGE: &str = "/login?done=password";
/// Where ending the current session from the list sends the browser.
const SIGNED_OUT_BY_ENDING_SESSION: &str = "/login?done=session";

struct SessionRow {
    session: SessionInfo,
    created: String,
    created_ms: i64,
    last_used: String,
    last_used_ms: i64,
    /// The session this page is shown in.
    current: bool,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    chrome: Chrome,
    sessions: Vec<SessionRow>,
    min_password_chars: usize,
    error: Option<String>,
}

/// `GET /account`.
pub(super) async fn show(
    State(state): State<AppState>,
    signed_in: SignedIn,
    headers: HeaderMap,
) -> Response {
    page(&state, &signed_in, &headers, StatusCode::OK, None).await
}

#[derive(Debug, Deserialize)]
pub(super) struct PasswordForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    /// The new password typed again, so that a typo does not lock one out.
    #[serde(default)]
    again: String,
}

/// `POST /account/password`: on success every session of the caller's has
/// ended, this one too, so the answer is the sign-in form, saying why.
pub(super) async fn change_password(
    State(state): State<AppState>,
    signed_in: SignedIn,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, "/account");
    }
    if form.new != form.again {
        let error = "The new password and its repetition differ. Type them again.".to_owned();
        return page(
            &state,
            &signed_in,
            &headers,
            StatusCode::BAD_REQUEST,
            Some(error),
        )
        .await;
    }
    match state
        .ops()
        .team()
        .change_own_password(&signed_in.caller, &form.current, &form.new)
        .await
    {
        Ok(()) => Redirect::to(SIGNED_OUT_BY_PASSWORD_CHANGE).into_response(),
        Err(e) if matches!(e.kind, ErrorKind::WrongPassword | ErrorKind::BadRequest) => {
            let status = status_of(e.kind);
            page(
                &state,
                &signed_in,
                &headers,
                status,
                Some(sentence(&e.message)),
            )
            .await
        }
        Err(e) => AppError(e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct EndSessionForm {
    #[serde(default)]
    csrf_token: String,
}

/// `POST /account/sessions/{id}/end`: ending the current session signs
/// this browser out.
pub(super) async fn end_session(
    State(state): State<AppState>,
    signed_in: SignedIn,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<EndSessionForm>,
) -> Response {
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, "/account");
    }
    let current = current_session_id(&headers).is_some_and(|own| own == id);
    match state
        .ops()
        .team()
        .end_own_session(&signed_in.caller, &id)
        .await
    {
        Ok(()) if current => Redirect::to(SIGNED_OUT_BY_ENDING_SESSION).into_response(),
        Ok(()) => Redirect::to("/account").into_response(),
        Err(e) if e.kind == ErrorKind::UnknownSession => {
            // Ended elsewhere meanwhile, or expired: the list says what is left.
            let error = "That session has ended already.".to_owned();
            page(
                &state,
                &signed_in,
                &headers,
                StatusCode::NOT_FOUND,
                Some(error),
            )
            .await
        }
        Err(e) => AppError(e).into_response(),
    }
}

/// The id under which `SessionInfo` lists the session of this request's cookie.
fn current_session_id(headers: &HeaderMap) -> Option<String> {
    session_secret(headers).map(|secret| session_id_of(&secret))
}

async fn page(
    state: &AppState,
    signed_in: &SignedIn,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let sessions = match state.ops().team().own_sessions(&signed_in.caller).await {
        Ok(sessions) => sessions,
        // The admin token belongs to no account: no password, no sessions.
        Err(e) if e.kind == ErrorKind::OperatorRequired => {
            return render_with_status(
                StatusCode::FORBIDDEN,
                &MessagePage {
                    chrome: signed_in.chrome("account"),
                    title: "No operator account".into(),
                    message: sentence(&e.message),
                    back: "/devices".into(),
                },
            )
        }
        Err(e) => return AppError(e).into_response(),
    };
    let current = current_session_id(headers);
    let page = AccountPage {
        chrome: signed_in.chrome("account"),
        sessions: sessions
            .into_iter()
            .map(|session| SessionRow {
                created: utc_time(session.created_at),
                created_ms: session.created_at,
                last_used: utc_time(session.last_used_at),
                last_used_ms: session.last_used_at,
                current: current.as_deref() == Some(session.id.as_str()),
                session,
            })
            .collect(),
        min_password_chars: MIN_PASSWORD_CHARS,
        error,
    };
    render_with_status(status, &page)
}

#[cfg(test)]
mod tests {
    use axum::http::{header, HeaderMap, HeaderValue};

    use super::current_session_id;

    #[test]
    fn the_current_session_is_named_by_the_start_of_its_secrets_digest() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("other=1; devbridge_session=abc"),
        );
        // base64url(SHA-256("abc")) = ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0
        assert_eq!(
            current_session_id(&headers).as_deref(),
            Some("ungWv48Bz-pBQUDe")
        );
        assert_eq!(current_session_id(&HeaderMap::new()), None);
    }
}
