//! The team: operator accounts, their roles and sessions, and the API tokens
//! operators create. Used by the API, the dashboard and, on the cloud's host,
//! the CLI (acting as [`Caller::host`]). Managing operators and other people's
//! tokens needs the admin role; everyone manages their own password, sessions
//! and tokens. Every change is audited, refused ones too.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

use crate::roles::Role;
use crate::store::{Accounts, ApiToken, Operator, SessionInfo};
use protocol::now_ms;

use super::auditor::Auditor;
use super::caller::{Caller, Permission};
use super::error::{ErrorKind, OpError};

/// Longest API token name, in characters.
pub const MAX_TOKEN_NAME_CHARS: usize = 100;

/// Operators and their API tokens; a cheap, cloneable handle.
#[derive(Clone)]
pub struct Team {
    accounts: Accounts,
    auditor: Auditor,
}

/// A password made up for someone, shown once: 120 random bits.
pub fn made_up_password() -> String {
    let mut bytes = [0u8; 15];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Team {
    pub fn new(accounts: Accounts, auditor: Auditor) -> Self {
        Team { accounts, auditor }
    }

    /// Every operator account, by name.
    pub async fn operators(&self, caller: &Caller) -> Result<Vec<Operator>, OpError> {
        self.auditor
            .authorize(caller, Permission::ManageTeam, "operator.list", "", "")
            .await?;
        Ok(self.accounts.operators().await?)
    }

    /// Adds an operator with `role`. Without a `password` one is made up;
    /// the password is returned to be shown once.
    pub async fn add_operator(
        &self,
        caller: &Caller,
        name: &str,
        role: Role,
        password: Option<&str>,
    ) -> Result<(Operator, String), OpError> {
        self.auditor
            .authorize(caller, Permission::ManageTeam, "operator.add", name, "")
            .await?;
        let password = password.map_or_else(made_up_password, str::to_owned);
        let added = self
            .accounts
            .add_operator(name, &password, role, now_ms() as i64)
            .await;
        let outcome = if added.is_ok() { "ok" } else { "refused" };
        self.record(
            caller,
            "operator.add",
            outcome,
            name,
            &format!("role {role}"),
        )
        .await;
        Ok((added?, password))
    }

    /// Changes an operator's role, effective at their next request. Nobody
    /// changes their own: an admin could lock every admin out.
    pub async fn set_role(
        &self,
        caller: &Caller,
        name: &str,
        role: Role,
    ) -> Result<Operator, OpError> {
        self.auditor
            .authorize(caller, Permission::ManageTeam, "operator.role", name, "")
            .await?;
        if caller.operator.as_ref().is_some_and(|o| o.name == name) {
            return Err(OpError::new(
                ErrorKind::Forbidden,
                "operators cannot change their own role; ask another admin",
            ));
        }
        let changed = self.accounts.set_role(name, role).await;
        let outcome = if changed.is_ok() { "ok" } else { "refused" };
        self.record(
            caller,
            "operator.role",
            outcome,
            name,
            &format!("to {role}"),
        )
        .await;
        Ok(changed?)
    }

    /// Removes an operator with their sessions and API tokens. Nobody removes
    /// themselves (someone must be left to sign in).
    pub async fn remove_operator(&self, caller: &Caller, name: &str) -> Result<(), OpError> {
        self.auditor
            .authorize(caller, Permission::ManageTeam, "operator.remove", name, "")
            .await?;
        if caller.operator.as_ref().is_some_and(|o| o.name == name) {
            return Err(OpError::new(
                ErrorKind::SelfRemoval,
                "operators cannot remove themselves; ask another admin",
            ));
        }
        let removed = self.accounts.remove_operator(name).await;
        let outcome = if removed.is_ok() {
            "ok"
        } else {
            "unknown_operator"
        };
        self.record(caller, "operator.remove", outcome, name, "")
            .await;
        Ok(removed?)
    }

    /// Sets another operator's password (made up if None, and returned to be
    /// shown once) and ends their sessions.
    pub async fn reset_password(
        &self,
        caller: &Caller,
        name: &str,
        password: Option<&str>,
    ) -> Result<String, OpError> {
        self.auditor
            .authorize(
                caller,
                Permission::ManageTeam,
                "operator.password",
                name,
                "",
            )
            .await?;
        let password = password.map_or_else(made_up_password, str::to_owned);
        let changed = self.accounts.set_password(name, &password).await;
        let outcome = if changed.is_ok() { "ok" } else { "refused" };
        self.record(caller, "operator.password", outcome, name, "")
            .await;
        changed?;
        Ok(password)
    }

    /// The caller changes their own password, proving the current one; their
    /// sessions end (this one too: the browser signs in again).
    pub async fn change_own_password(
        &self,
        caller: &Caller,
        current: &str,
        new: &str,
    ) -> Result<(), OpError> {
        let operator = own_account(caller)?;
        let proven = self
            .accounts
            .check_password(&operator.name, current)
            .await?
            .is_some();
        if !proven {
            self.record(caller, "operator.own_password", "wrong_password", "", "")
                .await;
            return Err(OpError::new(
                ErrorKind::WrongPassword,
                "the current password is wrong",
            ));
        }
        let changed = self.accounts.set_password(&operator.name, new).await;
        let outcome = if changed.is_ok() { "ok" } else { "refused" };
        self.record(caller, "operator.own_password", outcome, "", "")
            .await;
        Ok(changed?)
    }

    /// The caller's own live browser sessions.
    pub async fn own_sessions(&self, caller: &Caller) -> Result<Vec<SessionInfo>, OpError> {
        let operator = own_account(caller)?;
        Ok(self.accounts.sessions_of(operator, now_ms() as i64).await?)
    }

    /// Ends one of the caller's own sessions.
    pub async fn end_own_session(&self, caller: &Caller, session_id: &str) -> Result<(), OpError> {
        let operator = own_account(caller)?;
        let ended = self.accounts.end_session_of(operator, session_id).await;
        let outcome = if ended.is_ok() {
            "ok"
        } else {
            "unknown_session"
        };
        self.record(caller, "session.revoke", outcome, "", "").await;
        Ok(ended?)
    }

    /// The API tokens the caller may see, active and revoked, newest first:
    /// everyone's for an admin, their own for others.
    pub async fn tokens(&self, caller: &Caller) -> Result<Vec<ApiToken>, OpError> {
        let whose = if caller.may(Permission::ManageTeam) {
            None
        } else {
            Some(own_account(caller)?)
        };
        Ok(self.accounts.tokens(whose).await?)
    }

    /// Creates a token for the calling operator, acting with `role` (the
    /// caller's own if None; never more); returns it with its secret, which
    /// is never stored and so never shown again.
    pub async fn create_token(
        &self,
        caller: &Caller,
        name: &str,
        role: Option<Role>,
    ) -> Result<(ApiToken, String), OpError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_TOKEN_NAME_CHARS {
            return Err(OpError::bad_request(format!(
                "a token needs a name of 1 to {MAX_TOKEN_NAME_CHARS} characters"
            )));
        }
        let operator = own_account(caller)?;
        let role = role.unwrap_or(caller.role);
        if role > caller.role {
            self.record(caller, "token.create", "forbidden", name, "")
                .await;
            return Err(OpError::new(
                ErrorKind::Forbidden,
                format!(
                    "a token cannot do more than its creator: {} acts as {}",
                    caller.name, caller.role
                ),
            ));
        }
        let created = self
            .accounts
            .create_token(operator, name, role, now_ms() as i64)
            .await?;
        self.record(caller, "token.create", "ok", name, &format!("role {role}"))
            .await;
        Ok(created)
    }

    /// Revokes a token at once, the caller's own or (for an admin) anyone's;
    /// revoking twice is harmless.
    pub async fn revoke_token(&self, caller: &Caller, id: i64) -> Result<ApiToken, OpError> {
        let token = match self.accounts.token(id).await {
            Ok(token) => token,
            Err(e) => {
                self.record(caller, "token.revoke", "unknown_token", &id.to_string(), "")
                    .await;
                return Err(e.into());
            }
        };
        let own = caller
            .operator
            .as_ref()
            .is_some_and(|o| o.name == token.operator);
        if !own {
            self.auditor
                .authorize(
                    caller,
                    Permission::ManageTeam,
                    "token.revoke",
                    &token.name,
                    "",
                )
                .await?;
        }
        let revoked = self.accounts.revoke_token(id, now_ms() as i64).await?;
        self.record(caller, "token.revoke", "ok", &revoked.name, "")
            .await;
        Ok(revoked)
    }

    async fn record(
        &self,
        caller: &Caller,
        action: &str,
        outcome: &str,
        target: &str,
        detail: &str,
    ) {
        self.auditor
            .record(&crate::store::Action {
                actor: &caller.name,
                action,
                target,
                outcome,
                detail,
                latency_ms: None,
            })
            .await;
    }
}

/// The caller's operator account; the admin token and the host have none.
fn own_account(caller: &Caller) -> Result<&Operator, OpError> {
    caller.operator.as_ref().ok_or_else(|| {
        OpError::new(
            ErrorKind::OperatorRequired,
            "this belongs to an operator account: sign in as one (the admin token has none)",
        )
    })
}
