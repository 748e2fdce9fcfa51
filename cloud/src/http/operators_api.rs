//! `/api/v1/operators` and `/api/v1/tokens`: operator accounts and the API
//! bearer tokens operators create, list and revoke. Every change is audited.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::error::{AppError, ErrorBody};
use crate::http::state::AppState;
use crate::ops::Caller;
use crate::store::{ApiToken, Operator};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorList {
    /// By name.
    pub operators: Vec<Operator>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorAdded {
    pub operator: Operator,
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

/// Every operator account.
#[utoipa::path(
    get,
    path = "/operators",
    tag = "operators",
    responses((status = 200, description = "The operators", body = OperatorList)),
)]
pub(crate) async fn list_operators(
    State(state): State<AppState>,
) -> Result<Json<OperatorList>, AppError> {
    let operators = state.ops().team().operators().await?;
    Ok(Json(OperatorList { operators }))
}

/// Adds an operator account.
#[utoipa::path(
    post,
    path = "/operators",
    tag = "operators",
    request_body = NewOperator,
    responses(
        (status = 201, description = "Added", body = OperatorAdded),
        (status = 400, description = "`bad_request`: bad name or a password under 10 characters", body = ErrorBody),
        (status = 409, description = "`operator_exists`", body = ErrorBody),
    ),
)]
pub(crate) async fn add_operator(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewOperator>, JsonRejection>,
) -> Result<(StatusCode, Json<OperatorAdded>), AppError> {
    let Json(body) = body.map_err(|e| AppError::bad_request(e.body_text()))?;
    let operator = state
        .ops()
        .team()
        .add_operator(&caller.name, &body.name, &body.password)
        .await?;
    Ok((StatusCode::CREATED, Json(OperatorAdded { operator })))
}

/// Removes an operator with their sessions and API tokens.
#[utoipa::path(
    delete,
    path = "/operators/{name}",
    tag = "operators",
    params(("name" = String, Path, description = "Operator name")),
    responses(
        (status = 204, description = "Removed"),
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What the token is for, e.g. `ci-deploy`.
    pub name: String,
}

/// Every API token, active and revoked.
#[utoipa::path(
    get,
    path = "/tokens",
    tag = "operators",
    responses((status = 200, description = "The tokens", body = TokenList)),
)]
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
) -> Result<Json<TokenList>, AppError> {
    let tokens = state.ops().team().tokens().await?;
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
        (status = 403, description = "`operator_required`: the admin token belongs to no operator", body = ErrorBody),
    ),
)]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<TokenCreated>), AppError> {
    let Json(body) = body.map_err(|e| AppError::bad_request(e.body_text()))?;
    let (token, secret) = state.ops().team().create_token(&caller, &body.name).await?;
    Ok((StatusCode::CREATED, Json(TokenCreated { token, secret })))
}

/// Revokes a token at once; revoking twice is harmless.
#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    tag = "operators",
    params(("id" = i64, Path, description = "Token id")),
    responses(
        (status = 200, description = "Revoked", body = TokenRevoked),
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
