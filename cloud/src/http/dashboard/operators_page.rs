//! Operator accounts (admins): the list with each one's role, adding one
//! (with a made-up password shown on the answer page once, never in a URL),
//! changing a role, resetting a password (which ends their sessions) and
//! removing an account. Every change goes through `ops::team`, which checks
//! the role and audits it, as the API's `/api/v1/operators` routes do.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::format::utc_time;
use super::page::{csrf_refused, render_with_status, sentence, Chrome, MessagePage, SignedIn};
use crate::http::error::{status_of, AppError};
use crate::http::state::AppState;
use crate::ops::{ErrorKind, OpError};
use crate::roles::Role;
use crate::store::Operator;

struct OperatorRow {
    operator: Operator,
    created: String,
    created_ms: i64,
    /// The signed-in admin's own row: no role change, reset or removal
    /// (the server refuses them; one's own password is on the Account page).
    is_self: bool,
}

/// A password made up just now, shown once on the answer page.
struct NewPassword {
    operator: String,
    password: String,
    /// Added just now (otherwise reset, and their sessions ended).
    added: bool,
}

#[derive(Template)]
#[template(path = "operators.html")]
struct OperatorsPage {
    chrome: Chrome,
    rows: Vec<OperatorRow>,
    roles: [Role; 3],
    new_password: Option<NewPassword>,
    /// What the last form did, when it said nothing secret.
    notice: Option<String>,
    error: Option<String>,
}

/// `GET /operators`.
pub(super) async fn show(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    page(&state, &signed_in, StatusCode::OK, Answer::default()).await
}

/// What a form leaves on the page it answers with.
#[derive(Default)]
struct Answer {
    new_password: Option<NewPassword>,
    notice: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct AddForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
}

/// `POST /operators`: answers with the list and the made-up password (not a
/// redirect, so that the password is never in a URL or shown twice).
pub(super) async fn add(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Form(form): Form<AddForm>,
) -> Response {
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, "/operators");
    }
    let name = form.name.trim();
    let added = match parse_role(&form.role) {
        Ok(role) => {
            state
                .ops()
                .team()
                .add_operator(&signed_in.caller, name, role, None)
                .await
        }
        Err(e) => Err(e),
    };
    match added {
        Ok((operator, password)) => {
            let answer = Answer {
                new_password: Some(NewPassword {
                    operator: operator.name,
                    password,
                    added: true,
                }),
                ..Answer::default()
            };
            page(&state, &signed_in, StatusCode::CREATED, answer).await
        }
        Err(e) => refused(&state, &signed_in, e).await,
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RoleForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    role: String,
}

/// `POST /operators/{name}/role`: effective from their next request.
pub(super) async fn set_role(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(name): Path<String>,
    Form(form): Form<RoleForm>,
) -> Response {
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, "/operators");
    }
    let changed = match parse_role(&form.role) {
        Ok(role) => {
            state
                .ops()
                .team()
                .set_role(&signed_in.caller, &name, role)
                .await
        }
        Err(e) => Err(e),
    };
    match changed {
        Ok(operator) => {
            let answer = Answer {
                notice: Some(format!(
                    "{} is now {}, from their next request on.",
                    operator.name,
                    with_article(operator.role)
                )),
                ..Answer::default()
            };
            page(&state, &signed_in, StatusCode::OK, answer).await
        }
        Err(e) => refused(&state, &signed_in, e).await,
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct PlainForm {
    #[serde(default)]
    csrf_token: String,
}

/// `POST /operators/{name}/password`: a made-up password, shown once; their
/// sessions end.
pub(super) async fn reset_password(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(name): Path<String>,
    Form(form): Form<PlainForm>,
) -> Response {
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, "/operators");
    }
    match state
        .ops()
        .team()
        .reset_password(&signed_in.caller, &name, None)
        .await
    {
        Ok(password) => {
            let answer = Answer {
                new_password: Some(NewPassword {
                    operator: name,
                    password,
                    added: false,
                }),
                ..Answer::default()
            };
            page(&state, &signed_in, StatusCode::OK, answer).await
        }
        Err(e) => refused(&state, &signed_in, e).await,
    }
}

/// `POST /operators/{name}/remove`: with their sessions and API tokens.
pub(super) async fn remove(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(name): Path<String>,
    Form(form): Form<PlainForm>,
) -> Response {
    if !signed_in.csrf_ok(&form.csrf_token) {
        return csrf_refused(&signed_in, "/operators");
    }
    match state
        .ops()
        .team()
        .remove_operator(&signed_in.caller, &name)
        .await
    {
        Ok(()) => Redirect::to("/operators").into_response(),
        Err(e) => refused(&state, &signed_in, e).await,
    }
}

fn parse_role(text: &str) -> Result<Role, OpError> {
    text.parse()
        .map_err(|e: crate::roles::UnknownRole| OpError::bad_request(e.to_string()))
}

/// "an admin", "a viewer".
fn with_article(role: Role) -> String {
    match role {
        Role::Admin | Role::Operator => format!("an {role}"),
        Role::Viewer => format!("a {role}"),
    }
}

/// The page again with what was wrong in a sentence; errors no form can
/// cause (the database is down) as the API would answer them.
async fn refused(state: &AppState, signed_in: &SignedIn, e: OpError) -> Response {
    match e.kind {
        ErrorKind::BadRequest
        | ErrorKind::OperatorExists
        | ErrorKind::UnknownOperator
        | ErrorKind::SelfRemoval
        | ErrorKind::Forbidden => {
            let answer = Answer {
                error: Some(sentence(&e.message)),
                ..Answer::default()
            };
            page(state, signed_in, status_of(e.kind), answer).await
        }
        _ => AppError(e).into_response(),
    }
}

async fn page(
    state: &AppState,
    signed_in: &SignedIn,
    status: StatusCode,
    answer: Answer,
) -> Response {
    let operators = match state.ops().team().operators(&signed_in.caller).await {
        Ok(operators) => operators,
        // Only admins see the list; anyone else who comes here is told so.
        Err(e) if e.kind == ErrorKind::Forbidden => {
            return render_with_status(
                StatusCode::FORBIDDEN,
                &MessagePage {
                    chrome: signed_in.chrome("operators"),
                    title: "Only admins manage operators".into(),
                    message: sentence(&e.message),
                    back: "/devices".into(),
                },
            )
        }
        Err(e) => return AppError(e).into_response(),
    };
    let own_name = signed_in.caller.operator.as_ref().map(|o| o.name.as_str());
    let page = OperatorsPage {
        chrome: signed_in.chrome("operators"),
        rows: operators
            .into_iter()
            .map(|operator| OperatorRow {
                created: utc_time(operator.created_at),
                created_ms: operator.created_at,
                is_self: own_name == Some(operator.name.as_str()),
                operator,
            })
            .collect(),
        roles: Role::ALL,
        new_password: answer.new_password,
        notice: answer.notice,
        error: answer.error,
    };
    render_with_status(status, &page)
}
