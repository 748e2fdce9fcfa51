//! Calls that wait for their device: stored `queued` until the device is
//! online, claimed `sent` by exactly one instance, then `successful` or
//! `failed`; `expired` when the device did not come online before the call's
//! time ran out. Surviving a restart is the point: all of it is here.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::database::Pool;
use crate::store::RegistryError;

/// A queued call's state.
pub const QUEUED: &str = "queued";
pub const SENT: &str = "sent";
pub const SUCCESSFUL: &str = "successful";
pub const FAILED: &str = "failed";
pub const EXPIRED: &str = "expired";

/// A queued call as stored.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueuedCall {
    pub id: i64,
    pub device_id: String,
    pub method: String,
    #[schema(required = true)]
    pub params: Option<Value>,
    /// How long the device has to answer once the call is sent.
    pub timeout_ms: i64,
    pub created_by: String,
    pub created_at: i64,
    /// Until when the call waits for its device (ms since the epoch).
    pub expires_at: i64,
    #[schema(required = true)]
    pub idempotency_key: Option<String>,
    /// `queued`, `sent`, `successful`, `failed` or `expired`.
    pub state: String,
    #[schema(required = true)]
    pub sent_at: Option<i64>,
    #[schema(required = true)]
    pub finished_at: Option<i64>,
    /// Why it failed: an error kind (`timed_out`, `device_error`, `lost`, ...).
    #[schema(required = true)]
    pub outcome: Option<String>,
    /// The device's result when successful, the error's message when failed.
    #[schema(required = true)]
    pub result: Option<Value>,
}

type CallRow = (
    i64,
    String,
    String,
    Option<String>,
    i64,
    String,
    i64,
    i64,
    Option<String>,
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

const CALL_COLUMNS: &str = "id, device_id, method, params, timeout_ms, created_by, created_at, \
     expires_at, idempotency_key, state, sent_at, finished_at, outcome, result";

fn call_from_row(row: CallRow) -> Result<QueuedCall, RegistryError> {
    let (
        id,
        device_id,
        method,
        params,
        timeout_ms,
        created_by,
        created_at,
        expires_at,
        idempotency_key,
        state,
        sent_at,
        finished_at,
        outcome,
        result,
    ) = row;
    Ok(QueuedCall {
        id,
        device_id,
        method,
        params: params.as_deref().map(parse_json).transpose()?,
        timeout_ms,
        created_by,
        created_at,
        expires_at,
        idempotency_key,
        state,
        sent_at,
        finished_at,
        outcome,
        result: result.as_deref().map(parse_json).transpose()?,
    })
}

fn calls_from_rows(rows: Vec<CallRow>) -> Result<Vec<QueuedCall>, RegistryError> {
    rows.into_iter().map(call_from_row).collect()
}

fn parse_json(text: &str) -> Result<Value, RegistryError> {
    serde_json::from_str(text).map_err(|e| RegistryError::Corrupt(format!("stored JSON: {e}")))
}

/// A call to store.
pub struct NewQueuedCall<'a> {
    pub device_id: &'a str,
    pub method: &'a str,
    pub params: Option<&'a Value>,
    pub timeout_ms: i64,
    pub created_by: &'a str,
    pub expires_at: i64,
    pub idempotency_key: Option<&'a str>,
}

/// What [`QueuedCalls::enqueue`] did.
#[derive(Debug)]
pub enum Enqueued {
    New(QueuedCall),
    /// The caller's idempotency key named this call already: nothing stored.
    Existing(QueuedCall),
    /// The device has the most calls waiting that it may.
    DeviceFull,
    /// The fleet has the most calls waiting that it may.
    FleetFull,
}

/// Queued calls in the registry database.
#[derive(Debug, Clone)]
pub struct QueuedCalls {
    pool: Pool,
}

impl QueuedCalls {
    pub fn new(pool: Pool) -> Self {
        QueuedCalls { pool }
    }

    /// Stores `call` as queued, unless its idempotency key names an earlier
    /// call of the same operator, or `per_device` calls wait for the device,
    /// or `in_all` for the fleet.
    pub async fn enqueue(
        &self,
        call: &NewQueuedCall<'_>,
        per_device: i64,
        in_all: i64,
        now: i64,
    ) -> Result<Enqueued, RegistryError> {
        if let Some(existing) = self.by_key(call).await? {
            return Ok(Enqueued::Existing(existing));
        }
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM queued_calls WHERE device_id = $1 AND state = 'queued'",
        )
        .bind(call.device_id)
        .fetch_one(&self.pool)
        .await?;
        if waiting >= per_device {
            return Ok(Enqueued::DeviceFull);
        }
        let waiting: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM queued_calls WHERE state = 'queued'")
                .fetch_one(&self.pool)
                .await?;
        if waiting >= in_all {
            return Ok(Enqueued::FleetFull);
        }
        let row: Option<CallRow> = sqlx::query_as(&format!(
            "INSERT INTO queued_calls (device_id, method, params, timeout_ms, created_by, \
             created_at, expires_at, idempotency_key, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued') \
             ON CONFLICT (created_by, idempotency_key) DO NOTHING RETURNING {CALL_COLUMNS}"
        ))
        .bind(call.device_id)
        .bind(call.method)
        .bind(call.params.map(Value::to_string))
        .bind(call.timeout_ms)
        .bind(call.created_by)
        .bind(now)
        .bind(call.expires_at)
        .bind(call.idempotency_key)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Enqueued::New(call_from_row(row)?)),
            // The same key, submitted at the same moment elsewhere.
            None => match self.by_key(call).await? {
                Some(existing) => Ok(Enqueued::Existing(existing)),
                None => Err(RegistryError::Corrupt(
                    "a queued call's insert conflicted with nothing".into(),
                )),
            },
        }
    }

    async fn by_key(&self, call: &NewQueuedCall<'_>) -> Result<Option<QueuedCall>, RegistryError> {
        let Some(key) = call.idempotency_key else {
            return Ok(None);
        };
        let row: Option<CallRow> = sqlx::query_as(&format!(
            "SELECT {CALL_COLUMNS} FROM queued_calls WHERE created_by = $1 AND idempotency_key = $2"
        ))
        .bind(call.created_by)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(call_from_row).transpose()
    }

    pub async fn call(&self, id: i64) -> Result<Option<QueuedCall>, RegistryError> {
        let row: Option<CallRow> = sqlx::query_as(&format!(
            "SELECT {CALL_COLUMNS} FROM queued_calls WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(call_from_row).transpose()
    }

    /// A device's calls, newest first.
    pub async fn of_device(
        &self,
        device_id: &str,
        limit: i64,
    ) -> Result<Vec<QueuedCall>, RegistryError> {
        let rows: Vec<CallRow> = sqlx::query_as(&format!(
            "SELECT {CALL_COLUMNS} FROM queued_calls WHERE device_id = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        calls_from_rows(rows)
    }

    /// Devices with calls still waiting.
    pub async fn devices_waiting(&self, now: i64) -> Result<Vec<String>, RegistryError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT device_id FROM queued_calls WHERE state = 'queued' AND expires_at > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The ids of a device's calls still waiting, oldest first.
    pub async fn waiting_for(&self, device_id: &str, now: i64) -> Result<Vec<i64>, RegistryError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM queued_calls WHERE device_id = $1 AND state = 'queued' \
             AND expires_at > $2 ORDER BY id",
        )
        .bind(device_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Marks a waiting call `sent`; None when another instance sent it
    /// first, or it has expired. Whoever gets it sends it, once.
    pub async fn claim(&self, id: i64, now: i64) -> Result<Option<QueuedCall>, RegistryError> {
        let row: Option<CallRow> = sqlx::query_as(&format!(
            "UPDATE queued_calls SET state = 'sent', sent_at = $1 \
             WHERE id = $2 AND state = 'queued' AND expires_at > $1 RETURNING {CALL_COLUMNS}"
        ))
        .bind(now)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(call_from_row).transpose()
    }

    /// Puts a sent call back to waiting: the device went away before the
    /// call reached it.
    pub async fn unclaim(&self, id: i64) -> Result<Option<QueuedCall>, RegistryError> {
        let row: Option<CallRow> = sqlx::query_as(&format!(
            "UPDATE queued_calls SET state = 'queued', sent_at = NULL \
             WHERE id = $1 AND state = 'sent' RETURNING {CALL_COLUMNS}"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(call_from_row).transpose()
    }

    /// Records a sent call's end: `successful` with the result, or `failed`
    /// with the error kind and message.
    pub async fn complete(
        &self,
        id: i64,
        outcome: Result<&Value, (&str, &str)>,
        now: i64,
    ) -> Result<Option<QueuedCall>, RegistryError> {
        let (state, kind, result) = match outcome {
            Ok(result) => (SUCCESSFUL, None, result.to_string()),
            Err((kind, message)) => (FAILED, Some(kind), Value::from(message).to_string()),
        };
        let row: Option<CallRow> = sqlx::query_as(&format!(
            "UPDATE queued_calls SET state = $1, outcome = $2, result = $3, finished_at = $4 \
             WHERE id = $5 AND state = 'sent' RETURNING {CALL_COLUMNS}"
        ))
        .bind(state)
        .bind(kind)
        .bind(result)
        .bind(now)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(call_from_row).transpose()
    }

    /// Marks the calls whose time ran out while waiting `expired`; them.
    pub async fn expire(&self, now: i64) -> Result<Vec<QueuedCall>, RegistryError> {
        let rows: Vec<CallRow> = sqlx::query_as(&format!(
            "UPDATE queued_calls SET state = 'expired', finished_at = $1 \
             WHERE state = 'queued' AND expires_at <= $1 RETURNING {CALL_COLUMNS}"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        calls_from_rows(rows)
    }

    /// Calls sent and still unanswered when their timeout had passed by
    /// `lost_before`: the instance that sent them stopped first. They failed
    /// `lost`: the device may or may not have run them.
    pub async fn fail_lost(
        &self,
        lost_before: i64,
        now: i64,
    ) -> Result<Vec<QueuedCall>, RegistryError> {
        let rows: Vec<CallRow> = sqlx::query_as(&format!(
            "UPDATE queued_calls SET state = 'failed', outcome = 'lost', finished_at = $1, \
             result = $2 WHERE state = 'sent' AND sent_at + timeout_ms < $3 RETURNING {CALL_COLUMNS}"
        ))
        .bind(now)
        .bind(Value::from("the cloud instance that sent the call stopped before its answer").to_string())
        .bind(lost_before)
        .fetch_all(&self.pool)
        .await?;
        calls_from_rows(rows)
    }

    /// Forgets calls that ended before `finished_before`.
    pub async fn prune(&self, finished_before: i64) -> Result<u64, RegistryError> {
        Ok(sqlx::query(
            "DELETE FROM queued_calls WHERE finished_at IS NOT NULL AND finished_at < $1",
        )
        .bind(finished_before)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
