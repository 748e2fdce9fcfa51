//! Signing in and out, and who a bearer token or a session names. Failed
//! sign-ins are limited per operator name and client address and per client
//! address; every attempt is audited (refusals in aggregate: a row an hour
//! per operator and outcome, and names that are no operator's under
//! [`UNKNOWN_OPERATOR`]).

use std::net::IpAddr;

use crate::roles::Role;
use crate::store::accounts::{is_valid_name, same_secret, NewSession};
use crate::store::{Action, Operator};
use protocol::now_ms;

use super::{Caller, Credential, ErrorKind, OpError, Operations, ADMIN_TOKEN_ACTOR};

/// How the audit log names the actor of a sign-in with a name that is no
/// operator's: the names strangers try are not worth a row each.
pub const UNKNOWN_OPERATOR: &str = "(unknown)";

impl Operations {
    /// Checks a sign-in and starts a session. Refused with `wrong_password`,
    /// or `rate_limited` with the wait in [`OpError::retry_after`].
    /// `user_agent` only labels the session for its operator.
    pub async fn sign_in(
        &self,
        name: &str,
        password: &str,
        address: IpAddr,
        user_agent: Option<&str>,
    ) -> Result<(Operator, NewSession), OpError> {
        let accounts = &self.store().accounts;
        let name = name.trim();
        let valid_name = is_valid_name(name);
        let known = valid_name
            && accounts
                .operator(name)
                .await
                .map_err(OpError::internal)?
                .is_some();
        let actor = if known { name } else { UNKNOWN_OPERATOR };
        // Only a name that could be an operator's is kept, and only its latest.
        let detail = match (known, valid_name) {
            (true, _) => format!("from {address}"),
            (false, true) => format!("from {address}; name tried: {name}"),
            (false, false) => format!("from {address}; not a valid operator name"),
        };
        let refuse = |kind: ErrorKind| Action {
            actor,
            action: "login",
            target: "",
            outcome: kind.as_str(),
            detail: &detail,
            latency_ms: None,
        };
        let limiter = &self.inner.login_limiter;
        let counted_name = if valid_name { name } else { "(not a name)" };
        let now = now_ms() as i64;
        let allowed = limiter
            .check(accounts, counted_name, address, now)
            .await
            .map_err(OpError::internal)?;
        if let Err(wait) = allowed {
            self.auditor()
                .record_refusal(&refuse(ErrorKind::RateLimited))
                .await;
            let mut error = OpError::new(
                ErrorKind::RateLimited,
                format!(
                    "too many sign-in attempts; try again in {} s",
                    wait.as_secs() + 1
                ),
            );
            error.retry_after = Some(wait);
            return Err(error);
        }
        let operator = if valid_name {
            accounts
                .check_password(name, password)
                .await
                .map_err(OpError::internal)?
        } else {
            None
        };
        let Some(operator) = operator else {
            limiter
                .failed(accounts, counted_name, address, now)
                .await
                .map_err(OpError::internal)?;
            self.auditor()
                .record_refusal(&refuse(ErrorKind::WrongPassword))
                .await;
            return Err(OpError::new(
                ErrorKind::WrongPassword,
                "unknown operator or wrong password",
            ));
        };
        let client = session_client(address, user_agent);
        let session = accounts
            .start_session(&operator, &client, now_ms() as i64)
            .await
            .map_err(OpError::internal)?;
        self.auditor()
            .record_simple(&operator.name, "login", "ok", "")
            .await;
        Ok((operator, session))
    }

    /// Ends the session with `secret`, if the caller has one.
    pub async fn sign_out(&self, caller: &Caller, secret: Option<&str>) {
        if let Some(secret) = secret {
            if let Err(e) = self.store().accounts.end_session(secret).await {
                tracing::warn!(error = %e, "cannot end a session");
            }
        }
        self.auditor()
            .record_simple(&caller.name, "logout", "ok", "")
            .await;
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
                role: Role::Admin,
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
            role: api_token.role.min(operator.role),
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
            role: session.operator.role,
            operator: Some(session.operator),
            credential: Credential::Session {
                csrf_token: session.csrf_token,
            },
        })
    }
}

/// Longest browser name kept with a session, in characters.
const MAX_USER_AGENT_CHARS: usize = 120;

/// How a session is labelled for its operator: the address, and the browser
/// (printable characters only, cut short).
fn session_client(address: IpAddr, user_agent: Option<&str>) -> String {
    let browser: String = user_agent
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_USER_AGENT_CHARS)
        .collect();
    if browser.trim().is_empty() {
        address.to_string()
    } else {
        format!("{address} · {}", browser.trim())
    }
}
