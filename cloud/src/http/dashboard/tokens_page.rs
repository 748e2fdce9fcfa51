//! API tokens: every operator's, listed; a new one for the signed-in
//! operator, whose secret is shown on the answer page once and never again;
//! revoking one. Audited as the API's token routes are.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::format::utc_time;
use super::page::{csrf_refused, render, render_with_status, sentence, Chrome, SignedIn};
use crate::http::error::{status_of, AppError};
use crate::http::state::AppState;
use crate::ops::{ErrorKind, OpError};
use crate::roles::Role;
use crate::store::ApiToken;

struct TokenRow {
    token: ApiToken,
    created: String,
    created_ms: i64,
    last_used: String,
    last_used_ms: i64,
    revoked: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    chrome: Chrome,
    rows: Vec<TokenRow>,
    /// The roles a new token may have: the caller's and those below it
    /// (a token never does more than its creator).
    roles: Vec<Role>,
    /// The name and secret of a token created just now.
    created: Option<(String, String)>,
    error: Option<String>,
}

/// `GET /tokens`.
pub(super) async fn show(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    page(&state, &signed_in, StatusCode::OK, None, None).await
}

#[derive(Debug, Deserialize)]
pub(super) struct CreateForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    name: String,
    /// Empty: the caller's own role.
    #[serde(default)]
    role: String,
}

/// `POST /tokens`: answers with the list and the new secret (not a
/// redirect, so that the secret is never in a URL or shown twice).
pub(super) async fn create(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Form(form): Form<CreateForm>,
) -> Response {
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, "/tokens");
    }
    let role = match form.role.as_str() {
        "" => Ok(None),
        text => text
            .parse::<Role>()
            .map(Some)
            .map_err(|e| OpError::bad_request(e.to_string())),
    };
    let created = match role {
        Ok(role) => {
            state
                .ops()
                .team()
                .create_token(&signed_in.caller, &form.name, role)
                .await
        }
        Err(e) => Err(e),
    };
    match created {
        Ok((token, secret)) => {
            let created = Some((token.name, secret));
            page(&state, &signed_in, StatusCode::CREATED, created, None).await
        }
        Err(e)
            if matches!(
                e.kind,
                ErrorKind::BadRequest | ErrorKind::OperatorRequired | ErrorKind::Forbidden
            ) =>
        {
            let status = status_of(e.kind);
            page(&state, &signed_in, status, None, Some(sentence(&e.message))).await
        }
        Err(e) => AppError(e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RevokeForm {
    #[serde(default)]
    csrf_token: String,
}

/// `POST /tokens/{id}/revoke`.
pub(super) async fn revoke(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<i64>,
    Form(form): Form<RevokeForm>,
) -> Response {
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, "/tokens");
    }
    match state.ops().team().revoke_token(&signed_in.caller, id).await {
        Ok(_) => Redirect::to("/tokens").into_response(),
        Err(e) => AppError(e).into_response(),
    }
}

async fn page(
    state: &AppState,
    signed_in: &SignedIn,
    status: StatusCode,
    created: Option<(String, String)>,
    error: Option<String>,
) -> Response {
    let tokens = match state.ops().team().tokens(&signed_in.caller).await {
        Ok(tokens) => tokens,
        Err(e) => return AppError::from(e).into_response(),
    };
    let page = TokensPage {
        chrome: signed_in.chrome("tokens"),
        rows: tokens
            .into_iter()
            .map(|token| TokenRow {
                created: utc_time(token.created_at),
                created_ms: token.created_at,
                last_used: token.last_used_at.map(utc_time).unwrap_or_default(),
                last_used_ms: token.last_used_at.unwrap_or(0),
                revoked: token.revoked_at.map(utc_time).unwrap_or_default(),
                token,
            })
            .collect(),
        roles: Role::ALL
            .into_iter()
            .filter(|role| *role <= signed_in.caller.role)
            .collect(),
        created,
        error,
    };
    if status == StatusCode::OK {
        render(&page)
    } else {
        render_with_status(status, &page)
    }
}
