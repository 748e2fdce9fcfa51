//! `/api/v1/operators`, `/api/v1/me/…` and `/api/v1/tokens`: operator
//! accounts and their roles (admins), one's own password and sessions, and
//! the API bearer tokens operators create, list and revoke. Every change is
//! audited; who may do what is the operations layer's rule (`ops::team`).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::error::{body_of, AppError, ErrorBody};
use crate::http::state::AppState;
use crate::ops::Caller;
use crate::roles::Role;
use crate::store::{ApiToken, Operator, SessionInfo};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    pub name: String,
    /// What they may do; `viewer` if left out.
    #[serde(default = "least_role")]
    #[schema(default = "viewer")]
    pub role: Role,
    /// At least 10 characters; left out, one is made up and answered once.
    pub password: Option<String>,
}

/// A new operator gets the least role unless the admin chooses another.
fn least_role() -> Role {
    Role::Viewer
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorList {
    /// By name.
    pub operators: Vec<Operator>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorAdded {
    pub operator: Operator,
    /// The made-up password, in this answer only; null if one was given.
    #[schema(required = true)]
    pub password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorChanged {
    pub operator: Operator,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PasswordReset {
    /// The operator's new, made-up password, in this answer only.
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnPasswordChange {
    pub current: String,
    /// At least 10 characters.
    pub new: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// The latest used first.
    pub sessions: Vec<SessionInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    /// Newest first; never their secrets.
    pub tokens: Vec<ApiToken>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreated {
    pub token: ApiToken,
    /// The bearer secret; shown in this answer only.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenRevoked {
    pub token: ApiToken,
}

/// Every operator account, with their roles (admins).
#[utoipa::path(
    get,
    path = "/operators",
    tag = "operators",
    responses(
        (status = 200, description = "The operators", body = OperatorList),
        (status = 403, description = "`forbidden`: needs the admin role", body = ErrorBody),
    ),
)]
pub(crate) async fn list_operators(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<OperatorList>, AppError> {
    let operators = state.ops().team().operators(&caller).await?;
    Ok(Json(OperatorList { operators }))
}

/// Adds an operator account with a role (admins).
#[utoipa::path(
    post,
    path = "/operators",
    tag = "operators",
    request_body = NewOperator,
    responses(
        (status = 201, description = "Added", body = OperatorAdded),
        (status = 400, description = "`bad_request`: bad name or role, or a password under 10 characters", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs the admin role", body = ErrorBody),
        (status = 409, description = "`operator_exists`", body = ErrorBody),
    ),
)]
pub(crate) async fn add_operator(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewOperator>, JsonRejection>,
) -> Result<(StatusCode, Json<OperatorAdded>), AppError> {
    let body = body_of(body)?;
    let (operator, password) = state
        .ops()
        .team()
        .add_operator(&caller, &body.name, body.role, body.password.as_deref())
        .await?;
    let password = body.password.is_none().then_some(password);
    Ok((
        StatusCode::CREATED,
        Json(OperatorAdded { operator, password }),
    ))
}

/// Changes an operator's role, from their next request on (admins; not one's own).
#[utoipa::path(
    put,
    path = "/operators/{name}/role",
    tag = "operators",
    params(("name" = String, Path, description = "Operator name")),
    request_body = RoleChange,
    responses(
        (status = 200, description = "Changed", body = OperatorChanged),
        (status = 403, description = "`forbidden`: needs the admin role, or it is the caller's own", body = ErrorBody),
        (status = 404, description = "`unknown_operator`", body = ErrorBody),
    ),
)]
pub(crate) async fn set_role(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<RoleChange>, JsonRejection>,
) -> Result<Json<OperatorChanged>, AppError> {
    let body = body_of(body)?;
    let operator = state
        .ops()
        .team()
        .set_role(&caller, &name, body.role)
        .await?;
    Ok(Json(OperatorChanged { operator }))
}

/// Gives an operator a new, made-up password and ends their sessions (admins).
#[utoipa::path(
    post,
    path = "/operators/{name}/password",
    tag = "operators",
    params(("name" = String, Path, description = "Operator name")),
    responses(
        (status = 200, description = "The new password, shown once", body = PasswordReset),
        (status = 403, description = "`forbidden`: needs the admin role", body = ErrorBody),
        (status = 404, description = "`unknown_operator`", body = ErrorBody),
    ),
)]
pub(crate) async fn reset_password(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<PasswordReset>, AppError> {
    let password = state
        .ops()
        .team()
        .reset_password(&caller, &name, None)
        .await?;
    Ok(Json(PasswordReset { password }))
}

/// Removes an operator with their sessions and API tokens (admins).
#[utoipa::path(
    delete,
    path = "/operators/{name}",
    tag = "operators",
    params(("name" = String, Path, description = "Operator name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "`forbidden`: needs the admin role", body = ErrorBody),
        (status = 404, description = "`unknown_operator`", body = ErrorBody),
        (status = 409, description = "`self_removal`: operators cannot remove themselves", body = ErrorBody),
    ),
)]
pub(crate) async fn remove_operator(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, AppError> {
    state.ops().team().remove_operator(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Changes the caller's own password; all their sessions end.
#[utoipa::path(
    post,
    path = "/me/password",
    tag = "operators",
    request_body = OwnPasswordChange,
    responses(
        (status = 204, description = "Changed; sign in again"),
        (status = 400, description = "`bad_request`: a new password under 10 characters", body = ErrorBody),
        (status = 401, description = "`wrong_password`: the current password is wrong", body = ErrorBody),
        (status = 403, description = "`operator_required`: the admin token has no password", body = ErrorBody),
    ),
)]
pub(crate) async fn change_own_password(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<OwnPasswordChange>, JsonRejection>,
) -> Result<StatusCode, AppError> {
    let body = body_of(body)?;
    state
        .ops()
        .team()
        .change_own_password(&caller, &body.current, &body.new)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's own browser sessions.
#[utoipa::path(
    get,
    path = "/me/sessions",
    tag = "operators",
    responses(
        (status = 200, description = "The sessions", body = SessionList),
        (status = 403, description = "`operator_required`: the admin token has no sessions", body = ErrorBody),
    ),
)]
pub(crate) async fn own_sessions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<SessionList>, AppError> {
    let sessions = state.ops().team().own_sessions(&caller).await?;
    Ok(Json(SessionList { sessions }))
}

/// Ends one of the caller's own sessions.
#[utoipa::path(
    delete,
    path = "/me/sessions/{id}",
    tag = "operators",
    params(("id" = String, Path, description = "Session id, as listed")),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "`unknown_session`", body = ErrorBody),
    ),
)]
pub(crate) async fn end_own_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    state.ops().team().end_own_session(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What the token is for, e.g. `ci-deploy`.
    pub name: String,
    /// What it may do: the caller's role or lower (default: the caller's).
    pub role: Option<Role>,
}

/// The caller's API tokens, active and revoked (everyone's for an admin).
#[utoipa::path(
    get,
    path = "/tokens",
    tag = "operators",
    responses((status = 200, description = "The tokens", body = TokenList)),
)]
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<TokenList>, AppError> {
    let tokens = state.ops().team().tokens(&caller).await?;
    Ok(Json(TokenList { tokens }))
}

/// Creates a token for the calling operator; its secret is in this answer only.
#[utoipa::path(
    post,
    path = "/tokens",
    tag = "operators",
    request_body = NewToken,
    responses(
        (status = 201, description = "Created", body = TokenCreated),
        (status = 400, description = "`bad_request`: a name of 1 to 100 characters is needed", body = ErrorBody),
        (status = 403, description = "`operator_required`: the admin token belongs to no operator; `forbidden`: a role above the caller's", body = ErrorBody),
    ),
)]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<TokenCreated>), AppError> {
    let body = body_of(body)?;
    let (token, secret) = state
        .ops()
        .team()
        .create_token(&caller, &body.name, body.role)
        .await?;
    Ok((StatusCode::CREATED, Json(TokenCreated { token, secret })))
}

/// Revokes a token at once, one's own or (admins) anyone's; revoking twice is harmless.
#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    tag = "operators",
    params(("id" = i64, Path, description = "Token id")),
    responses(
        (status = 200, description = "Revoked", body = TokenRevoked),
        (status = 403, description = "`forbidden`: another operator's token, without the admin role", body = ErrorBody),
        (status = 404, description = "`unknown_token`", body = ErrorBody),
    ),
)]
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> Result<Json<TokenRevoked>, AppError> {
    let token = state.ops().team().revoke_token(&caller, id).await?;
    Ok(Json(TokenRevoked { token }))
}
