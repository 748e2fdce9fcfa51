//! Who is acting: an operator with a session (browsers) or an API token
//! (scripts, the CLI), or the holder of the host's admin token. Callers are
//! authenticated in `super::sign_in`.

use crate::store::Operator;

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
