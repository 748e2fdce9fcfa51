//! Operator accounts: argon2id passwords, browser sessions (each with its own
//! CSRF token) and API bearer tokens. Only SHA-256 digests of session and API
//! token secrets are stored; the secrets themselves are shown once.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::roles::{Role, UnknownRole};
use crate::store::database::Pool;

/// A session ends this long after its last use.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// `last_used_at` of a session or token is written at most this often.
const TOUCH_EVERY_MS: i64 = 60_000;
/// Shortest password an operator may choose.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// API tokens start with this, so that a leaked one is recognisable in a scan.
pub const TOKEN_PREFIX: &str = "dbt_";

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("operator {0:?} already exists")]
    OperatorExists(String),
    #[error("no operator named {0:?}")]
    UnknownOperator(String),
    #[error("operator names are 1 to 64 characters of letters, digits, '.', '_', '@' or '-'")]
    BadName,
    #[error("passwords must have at least {MIN_PASSWORD_CHARS} characters")]
    WeakPassword,
    #[error("no role {0:?}: roles are viewer, operator and admin")]
    BadRole(String),
    #[error("no session {0:?} of yours")]
    UnknownSession(String),
    #[error("no API token {0}")]
    UnknownToken(i64),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Operator {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
}

#[derive(sqlx::FromRow)]
struct OperatorRow {
    id: i64,
    name: String,
    role: String,
    created_at: i64,
}

impl TryFrom<OperatorRow> for Operator {
    type Error = AccountError;

    fn try_from(row: OperatorRow) -> Result<Self, Self::Error> {
        Ok(Operator {
            role: parse_role(&row.role)?,
            id: row.id,
            name: row.name,
            created_at: row.created_at,
        })
    }
}

const OPERATOR_COLUMNS: &str = "id, name, role, created_at";

/// A live browser session.
#[derive(Debug, Clone)]
pub struct Session {
    pub operator: Operator,
    /// Must come back with every state-changing request of this session.
    pub csrf_token: String,
}

/// A new session: the cookie secret and its CSRF token.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub secret: String,
    pub csrf_token: String,
}

/// An API token as it is listed; the secret is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiToken {
    pub id: i64,
    pub operator: String,
    pub name: String,
    /// The most it may do; it acts with the lower of this and its operator's role.
    pub role: Role,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct ApiTokenRow {
    id: i64,
    operator: String,
    name: String,
    role: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl TryFrom<ApiTokenRow> for ApiToken {
    type Error = AccountError;

    fn try_from(row: ApiTokenRow) -> Result<Self, Self::Error> {
        Ok(ApiToken {
            role: parse_role(&row.role)?,
            id: row.id,
            operator: row.operator,
            name: row.name,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
        })
    }
}

const TOKEN_COLUMNS: &str =
    "t.id, o.name AS operator, t.name, t.role, t.created_at, t.last_used_at, t.revoked_at";

/// One of an operator's browser sessions, as they see it on their own page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SessionInfo {
    /// Names the session for revoking it: the start of its secret's digest,
    /// which opens nothing.
    pub id: String,
    /// Address and browser it was started from.
    pub client: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
}

/// How many characters of a session's digest name it.
const SESSION_ID_CHARS: usize = 16;

/// Password checks that run at once; more wait their turn. Each costs tens
/// of milliseconds of CPU by design, so sign-ins from many addresses at once
/// must not take every core from the devices.
const PASSWORD_CHECKS_AT_ONCE: usize = 2;

/// Operator accounts in the registry database.
#[derive(Debug, Clone)]
pub struct Accounts {
    pool: Pool,
    password_checks: Arc<Semaphore>,
}

impl Accounts {
    pub fn new(pool: Pool) -> Self {
        Accounts {
            pool,
            password_checks: Arc::new(Semaphore::new(PASSWORD_CHECKS_AT_ONCE)),
        }
    }

    pub async fn add_operator(
        &self,
        name: &str,
        password: &str,
        role: Role,
        now: i64,
    ) -> Result<Operator, AccountError> {
        check_name(name)?;
        let hash = hash_password(password).await?;
        let inserted: Option<OperatorRow> = sqlx::query_as(&format!(
            "INSERT INTO operators (name, password_hash, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING RETURNING {OPERATOR_COLUMNS}"
        ))
        .bind(name)
        .bind(hash)
        .bind(role.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        inserted
            .ok_or_else(|| AccountError::OperatorExists(name.to_owned()))?
            .try_into()
    }

    pub async fn operators(&self) -> Result<Vec<Operator>, AccountError> {
        let rows: Vec<OperatorRow> = sqlx::query_as(&format!(
            "SELECT {OPERATOR_COLUMNS} FROM operators ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Operator::try_from).collect()
    }

    /// Changes an operator's role; their sessions and tokens act with the new
    /// role from their next request.
    pub async fn set_role(&self, name: &str, role: Role) -> Result<Operator, AccountError> {
        let row: Option<OperatorRow> = sqlx::query_as(&format!(
            "UPDATE operators SET role = $1 WHERE name = $2 RETURNING {OPERATOR_COLUMNS}"
        ))
        .bind(role.as_str())
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.ok_or_else(|| AccountError::UnknownOperator(name.to_owned()))?
            .try_into()
    }

    /// Removes an operator with their sessions and tokens.
    pub async fn remove_operator(&self, name: &str) -> Result<(), AccountError> {
        let removed = sqlx::query("DELETE FROM operators WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(AccountError::UnknownOperator(name.to_owned()));
        }
        Ok(())
    }

    /// Sets a new password and ends the operator's sessions.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<(), AccountError> {
        let hash = hash_password(password).await?;
        let mut tx = self.pool.begin().await?;
        let id: Option<i64> = sqlx::query_scalar(
            "UPDATE operators SET password_hash = $1 WHERE name = $2 RETURNING id",
        )
        .bind(hash)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let id = id.ok_or_else(|| AccountError::UnknownOperator(name.to_owned()))?;
        sqlx::query("DELETE FROM operator_sessions WHERE operator_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The operator of this name, if there is one.
    pub async fn operator(&self, name: &str) -> Result<Option<Operator>, AccountError> {
        let row: Option<OperatorRow> = sqlx::query_as(&format!(
            "SELECT {OPERATOR_COLUMNS} FROM operators WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Operator::try_from).transpose()
    }

    /// The operator whose name and password these are. An unknown name costs
    /// as much time as a wrong password, so timing does not reveal names.
    pub async fn check_password(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<Operator>, AccountError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT password_hash FROM operators WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        let hash = row.map(|(hash,)| hash);
        let password = password.to_owned();
        let _turn = self
            .password_checks
            .acquire()
            .await
            .map_err(|e| AccountError::Hash(e.to_string()))?;
        let matches = tokio::task::spawn_blocking(move || {
            let hash = hash.as_deref().unwrap_or_else(|| dummy_hash());
            PasswordHash::new(hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .map_err(|e| AccountError::Hash(e.to_string()))?;
        if !matches {
            return Ok(None);
        }
        self.operator(name).await
    }

    /// `client`: where the session was started from, as its operator will
    /// see it (bounded by the caller).
    pub async fn start_session(
        &self,
        operator: &Operator,
        client: &str,
        now: i64,
    ) -> Result<NewSession, AccountError> {
        let secret = random_secret();
        let csrf_token = random_secret();
        sqlx::query(
            "INSERT INTO operator_sessions (token_hash, operator_id, csrf_token, client, created_at, last_used_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(digest(&secret))
        .bind(operator.id)
        .bind(&csrf_token)
        .bind(client)
        .bind(now)
        .bind(now)
        .bind(now + SESSION_IDLE.as_millis() as i64)
        .execute(&self.pool)
        .await?;
        // Expired sessions go when new ones come, so the table stays small.
        sqlx::query("DELETE FROM operator_sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(NewSession { secret, csrf_token })
    }

    /// The live session of a cookie secret; extends it while in use.
    pub async fn session(&self, secret: &str, now: i64) -> Result<Option<Session>, AccountError> {
        let hash = digest(secret);
        let row: Option<SessionRow> = sqlx::query_as(
            "SELECT o.id, o.name, o.role, o.created_at, s.csrf_token, s.last_used_at \
             FROM operator_sessions s JOIN operators o ON o.id = s.operator_id \
             WHERE s.token_hash = $1 AND s.expires_at >= $2",
        )
        .bind(&hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(SessionRow {
            id,
            name,
            role,
            created_at,
            csrf_token,
            last_used_at,
        }) = row
        else {
            return Ok(None);
        };
        if now - last_used_at >= TOUCH_EVERY_MS {
            sqlx::query(
                "UPDATE operator_sessions SET last_used_at = $1, expires_at = $2 WHERE token_hash = $3",
            )
            .bind(now)
            .bind(now + SESSION_IDLE.as_millis() as i64)
            .bind(&hash)
            .execute(&self.pool)
            .await?;
        }
        Ok(Some(Session {
            operator: Operator::try_from(OperatorRow {
                id,
                name,
                role,
                created_at,
            })?,
            csrf_token,
        }))
    }

    /// The operator's live sessions, the latest used first.
    pub async fn sessions_of(
        &self,
        operator: &Operator,
        now: i64,
    ) -> Result<Vec<SessionInfo>, AccountError> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT token_hash, client, created_at, last_used_at, expires_at FROM operator_sessions \
             WHERE operator_id = $1 AND expires_at >= $2 ORDER BY last_used_at DESC",
        )
        .bind(operator.id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(hash, client, created_at, last_used_at, expires_at)| SessionInfo {
                    id: session_id(&hash),
                    client,
                    created_at,
                    last_used_at,
                    expires_at,
                },
            )
            .collect())
    }

    /// Ends one of the operator's sessions, named as [`SessionInfo::id`].
    pub async fn end_session_of(
        &self,
        operator: &Operator,
        session_id: &str,
    ) -> Result<(), AccountError> {
        let unknown = || AccountError::UnknownSession(session_id.chars().take(32).collect());
        let valid = session_id.len() == SESSION_ID_CHARS
            && session_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(unknown());
        }
        // A prefix match: the id is the digest's start, and within one
        // operator's handful of sessions 96 bits never collide.
        let ended = sqlx::query(&format!(
            "DELETE FROM operator_sessions WHERE operator_id = $1 AND substr(token_hash, 1, {SESSION_ID_CHARS}) = $2"
        ))
        .bind(operator.id)
        .bind(session_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if ended == 0 {
            return Err(unknown());
        }
        Ok(())
    }

    pub async fn end_session(&self, secret: &str) -> Result<(), AccountError> {
        sqlx::query("DELETE FROM operator_sessions WHERE token_hash = $1")
            .bind(digest(secret))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A new API token for `operator`; the returned secret is shown once.
    pub async fn create_token(
        &self,
        operator: &Operator,
        name: &str,
        role: Role,
        now: i64,
    ) -> Result<(ApiToken, String), AccountError> {
        let secret = format!("{TOKEN_PREFIX}{}", random_secret());
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO api_tokens (operator_id, name, role, token_hash, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(operator.id)
        .bind(name)
        .bind(role.as_str())
        .bind(digest(&secret))
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let token = ApiToken {
            id,
            operator: operator.name.clone(),
            name: name.to_owned(),
            role,
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        };
        Ok((token, secret))
    }

    /// The API tokens of `operator` (every operator's if None), newest first.
    pub async fn tokens(&self, operator: Option<&Operator>) -> Result<Vec<ApiToken>, AccountError> {
        let rows: Vec<ApiTokenRow> = sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens t JOIN operators o ON o.id = t.operator_id \
             WHERE $1 IS NULL OR t.operator_id = $1 ORDER BY t.id DESC"
        ))
        .bind(operator.map(|o| o.id))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ApiToken::try_from).collect()
    }

    /// The token with this id, revoked or not.
    pub async fn token(&self, id: i64) -> Result<ApiToken, AccountError> {
        let row: Option<ApiTokenRow> = sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens t JOIN operators o ON o.id = t.operator_id WHERE t.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.ok_or(AccountError::UnknownToken(id))?.try_into()
    }

    /// Revokes a token at once; revoking twice is harmless.
    pub async fn revoke_token(&self, id: i64, now: i64) -> Result<ApiToken, AccountError> {
        sqlx::query("UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.token(id).await
    }

    /// The operator and token a bearer secret stands for, unless revoked.
    pub async fn token_owner(
        &self,
        secret: &str,
        now: i64,
    ) -> Result<Option<(Operator, ApiToken)>, AccountError> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let row: Option<TokenOwnerRow> = sqlx::query_as(
            "SELECT o.id AS op_id, o.name AS op_name, o.role AS op_role, o.created_at AS op_created, \
                    t.id, t.name, t.role, t.created_at, t.last_used_at \
             FROM api_tokens t JOIN operators o ON o.id = t.operator_id \
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
        )
        .bind(digest(secret))
        .fetch_optional(&self.pool)
        .await?;
        let Some(TokenOwnerRow {
            op_id,
            op_name,
            op_role,
            op_created,
            id,
            name,
            role,
            created_at,
            last_used_at,
        }) = row
        else {
            return Ok(None);
        };
        if last_used_at.is_none_or(|at| now - at >= TOUCH_EVERY_MS) {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        let operator = Operator::try_from(OperatorRow {
            id: op_id,
            name: op_name,
            role: op_role,
            created_at: op_created,
        })?;
        let token = ApiToken {
            id,
            operator: operator.name.clone(),
            name,
            role: parse_role(&role)?,
            created_at,
            last_used_at: Some(now),
            revoked_at: None,
        };
        Ok(Some((operator, token)))
    }

    /// Failed sign-ins of `source` within the window it is in at `now`, on
    /// every instance, and when that window began.
    pub async fn sign_in_failures(
        &self,
        source: &str,
        window: Duration,
        now: i64,
    ) -> Result<Option<(i64, i64)>, AccountError> {
        Ok(sqlx::query_as(
            "SELECT failures, started_at FROM sign_in_failures WHERE source = $1 AND started_at > $2",
        )
        .bind(source)
        .bind(now - window.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Counts a failed sign-in against each of `sources` in one transaction:
    /// one more in its window, or the first of a new one if the last is over
    /// (those are forgotten as they end).
    pub async fn record_sign_in_failure(
        &self,
        sources: &[String],
        window: Duration,
        now: i64,
    ) -> Result<(), AccountError> {
        let ended = now - window.as_millis() as i64;
        let mut tx = self.pool.begin().await?;
        for source in sources {
            sqlx::query(
                "INSERT INTO sign_in_failures (source, started_at, failures) VALUES ($1, $2, 1) \
                 ON CONFLICT (source) DO UPDATE SET \
                 failures = CASE WHEN sign_in_failures.started_at <= $3 THEN 1 \
                                 ELSE sign_in_failures.failures + 1 END, \
                 started_at = CASE WHEN sign_in_failures.started_at <= $3 THEN $2 \
                                   ELSE sign_in_failures.started_at END",
            )
            .bind(source)
            .bind(now)
            .bind(ended)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM sign_in_failures WHERE started_at <= $1")
            .bind(ended)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: i64,
    name: String,
    role: String,
    created_at: i64,
    csrf_token: String,
    last_used_at: i64,
}

fn session_id(token_hash: &str) -> String {
    token_hash.chars().take(SESSION_ID_CHARS).collect()
}

/// The [`SessionInfo::id`] of the session whose cookie secret this is, so a
/// page can mark the session it was asked from.
pub fn session_id_of(secret: &str) -> String {
    session_id(&digest(secret))
}

#[derive(sqlx::FromRow)]
struct TokenOwnerRow {
    op_id: i64,
    op_name: String,
    op_role: String,
    op_created: i64,
    id: i64,
    name: String,
    role: String,
    created_at: i64,
    last_used_at: Option<i64>,
}

fn parse_role(text: &str) -> Result<Role, AccountError> {
    text.parse()
        .map_err(|e: UnknownRole| AccountError::BadRole(e.0))
}

fn check_name(name: &str) -> Result<(), AccountError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(AccountError::BadName)
    }
}

/// An operator name: 1 to 64 of `A-Z a-z 0-9 . _ @ -`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

async fn hash_password(password: &str) -> Result<String, AccountError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AccountError::WeakPassword);
    }
    let password = password.to_owned();
    // argon2 is deliberately slow: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| AccountError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| AccountError::Hash(e.to_string()))?
}

/// A valid argon2id hash of no one's password, checked against when the name
/// is unknown.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(random_secret().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .unwrap_or_default()
    })
}

/// 32 random bytes, base64url.
fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
}

/// Compares without an early exit, so timing does not reveal a prefix.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
