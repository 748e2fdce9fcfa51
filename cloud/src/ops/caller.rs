//! Who is acting: an operator with a session (browsers) or an API token
//! (scripts, the CLI), or the holder of the host's admin token.

use crate::store::accounts::same_secret;
use crate::store::Operator;
use protocol::now_ms;

use super::{ErrorKind, OpError, Operations};

/// Name under which the admin token file's holder appears in the audit log.
pub const ADMIN_TOKEN_ACTOR: &str = "admin-token";

/// How a caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Session { csrf_token: String },
    ApiToken { token_id: i64 },
    AdminToken,
}

/// The authenticated caller of an operation.
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

impl Operations {
    /// The caller a bearer token names: the admin token, or an operator's
    /// live API token.
    pub async fn caller_from_token(&self, token: &str) -> Result<Caller, OpError> {
        if same_secret(token.as_bytes(), self.inner.admin_token.as_bytes()) {
            return Ok(Caller {
                name: ADMIN_TOKEN_ACTOR.into(),
                operator: None,
                credential: Credential::AdminToken,
            });
        }
        let (operator, api_token) = self
            .store()
            .accounts
            .token_owner(token, now_ms() as i64)
            .await
            .map_err(OpError::internal)?
            .ok_or_else(OpError::unauthorized)?;
        Ok(Caller {
            name: operator.name.clone(),
            operator: Some(operator),
            credential: Credential::ApiToken {
                token_id: api_token.id,
            },
        })
    }

    /// The caller a live session names. `presented_csrf`: for a request that
    /// changes state, the CSRF token it carries, which must be the session's.
    pub async fn caller_from_session(
        &self,
        secret: &str,
        presented_csrf: Option<&str>,
    ) -> Result<Caller, OpError> {
        let session = self
            .store()
            .accounts
            .session(secret, now_ms() as i64)
            .await
            .map_err(OpError::internal)?
            .ok_or_else(|| {
                OpError::new(
                    ErrorKind::SessionExpired,
                    "your session has ended; sign in again",
                )
            })?;
        if let Some(presented) = presented_csrf {
            if !same_secret(presented.as_bytes(), session.csrf_token.as_bytes()) {
                return Err(OpError::new(
                    ErrorKind::Csrf,
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
}
