//! The team: operator accounts and the API tokens operators create. Used by
//! the API, the dashboard and, on the cloud's host, the CLI (whose changes
//! are audited under [`HOST_ACTOR`]). Every change is audited, refused ones too.

use crate::store::{Accounts, ApiToken, Operator};
use protocol::now_ms;

use super::auditor::Auditor;
use super::caller::Caller;
use super::error::{ErrorKind, OpError};

/// Longest API token name, in characters.
pub const MAX_TOKEN_NAME_CHARS: usize = 100;
/// How the audit log names whoever runs `cloud operators …` on the host.
pub const HOST_ACTOR: &str = "host";

/// Operators and their API tokens; a cheap, cloneable handle.
#[derive(Clone)]
pub struct Team {
    accounts: Accounts,
    auditor: Auditor,
}

impl Team {
    pub fn new(accounts: Accounts, auditor: Auditor) -> Self {
        Team { accounts, auditor }
    }

    /// Every operator account, by name.
    pub async fn operators(&self) -> Result<Vec<Operator>, OpError> {
        Ok(self.accounts.operators().await?)
    }

    /// Adds an operator; `actor` is who adds them.
    pub async fn add_operator(
        &self,
        actor: &str,
        name: &str,
        password: &str,
    ) -> Result<Operator, OpError> {
        let added = self
            .accounts
            .add_operator(name, password, now_ms() as i64)
            .await;
        let outcome = if added.is_ok() { "ok" } else { "refused" };
        self.auditor
            .record_simple(actor, "operator.add", outcome, name)
            .await;
        Ok(added?)
    }

    /// Removes an operator with their sessions and API tokens. `caller` may
    /// not remove themselves (someone must be left to sign in).
    pub async fn remove_operator(&self, actor: &Caller, name: &str) -> Result<(), OpError> {
        if actor.operator.as_ref().is_some_and(|o| o.name == name) {
            return Err(OpError::new(
                ErrorKind::SelfRemoval,
                "operators cannot remove themselves; ask another operator",
            ));
        }
        self.remove_operator_as(&actor.name, name).await
    }

    /// Removes an operator, for an actor who is no operator (the host's CLI).
    pub async fn remove_operator_as(&self, actor: &str, name: &str) -> Result<(), OpError> {
        let removed = self.accounts.remove_operator(name).await;
        let outcome = if removed.is_ok() {
            "ok"
        } else {
            "unknown_operator"
        };
        self.auditor
            .record_simple(actor, "operator.remove", outcome, name)
            .await;
        Ok(removed?)
    }

    /// Sets an operator's password (their sessions stay).
    pub async fn set_password(
        &self,
        actor: &str,
        name: &str,
        password: &str,
    ) -> Result<(), OpError> {
        let changed = self.accounts.set_password(name, password).await;
        let outcome = if changed.is_ok() { "ok" } else { "refused" };
        self.auditor
            .record_simple(actor, "operator.password", outcome, name)
            .await;
        Ok(changed?)
    }

    /// Every API token, active and revoked, newest first.
    pub async fn tokens(&self) -> Result<Vec<ApiToken>, OpError> {
        Ok(self.accounts.tokens().await?)
    }

    /// Creates a token for the calling operator; returns it with its secret,
    /// which is never stored and so never shown again.
    pub async fn create_token(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<(ApiToken, String), OpError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_TOKEN_NAME_CHARS {
            return Err(OpError::bad_request(format!(
                "a token needs a name of 1 to {MAX_TOKEN_NAME_CHARS} characters"
            )));
        }
        let Some(operator) = &caller.operator else {
            return Err(OpError::new(
                ErrorKind::OperatorRequired,
                "API tokens belong to an operator: sign in as one (the admin token cannot create tokens)",
            ));
        };
        let created = self
            .accounts
            .create_token(operator, name, now_ms() as i64)
            .await?;
        self.auditor
            .record_simple(&caller.name, "token.create", "ok", name)
            .await;
        Ok(created)
    }

    /// Revokes a token at once; revoking twice is harmless.
    pub async fn revoke_token(&self, caller: &Caller, id: i64) -> Result<ApiToken, OpError> {
        let revoked = self.accounts.revoke_token(id, now_ms() as i64).await;
        let (outcome, target) = match &revoked {
            Ok(token) => ("ok", token.name.clone()),
            Err(_) => ("unknown_token", id.to_string()),
        };
        self.auditor
            .record_simple(&caller.name, "token.revoke", outcome, &target)
            .await;
        Ok(revoked?)
    }
}
