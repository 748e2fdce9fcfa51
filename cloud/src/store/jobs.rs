//! Jobs: one method called on every device a filter matched, with each
//! device's outcome as it came. Running a job is the operations layer's;
//! this keeps what it did.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::database::Pool;
use crate::store::RegistryError;

/// Most outcomes one insert writes (7 bound values each).
const MAX_INSERT: usize = 500;

/// A job as stored.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobRecord {
    pub id: i64,
    pub created_by: String,
    pub created_at: i64,
    /// The cloud instance running it.
    pub instance: String,
    pub method: String,
    #[schema(required = true)]
    pub params: Option<Value>,
    /// The device filter, as the device list's query string.
    pub filter: String,
    /// How many devices the filter matched when the job started.
    pub total: i64,
    /// `running`, `finished`, or `interrupted` (its instance stopped first).
    pub state: String,
    #[schema(required = true)]
    pub finished_at: Option<i64>,
}

/// One device's outcome in a job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobOutcome {
    /// Order of arrival within the job, from 1.
    pub seq: i64,
    pub device_id: String,
    /// `ok`, or the error kind (`offline`, `timed_out`, `device_error`, ...).
    pub outcome: String,
    /// The device's result when `ok`, else the error's message.
    pub result: Value,
    pub latency_ms: i64,
    pub finished_at: i64,
}

type JobRow = (
    i64,
    String,
    i64,
    String,
    String,
    Option<String>,
    String,
    i64,
    String,
    Option<i64>,
);

const JOB_COLUMNS: &str =
    "id, created_by, created_at, instance, method, params, filter, total, state, finished_at";

fn job_from_row(row: JobRow) -> Result<JobRecord, RegistryError> {
    let (id, created_by, created_at, instance, method, params, filter, total, state, finished_at) =
        row;
    Ok(JobRecord {
        id,
        created_by,
        created_at,
        instance,
        method,
        params: params.as_deref().map(parse_json).transpose()?,
        filter,
        total,
        state,
        finished_at,
    })
}

fn parse_json(text: &str) -> Result<Value, RegistryError> {
    serde_json::from_str(text).map_err(|e| RegistryError::Corrupt(format!("stored JSON: {e}")))
}

/// Jobs in the registry database.
#[derive(Debug, Clone)]
pub struct Jobs {
    pool: Pool,
}

/// What a new job is.
pub struct NewJob<'a> {
    pub created_by: &'a str,
    pub instance: &'a str,
    pub method: &'a str,
    pub params: Option<&'a Value>,
    pub filter: &'a str,
    pub total: i64,
}

impl Jobs {
    pub fn new(pool: Pool) -> Self {
        Jobs { pool }
    }

    /// Stores a new running job; its id.
    pub async fn create(&self, job: &NewJob<'_>, now: i64) -> Result<i64, RegistryError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO jobs (created_by, created_at, instance, method, params, filter, total, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'running') RETURNING id",
        )
        .bind(job.created_by)
        .bind(now)
        .bind(job.instance)
        .bind(job.method)
        .bind(job.params.map(Value::to_string))
        .bind(job.filter)
        .bind(job.total)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Appends outcomes, in one transaction.
    pub async fn record(&self, job_id: i64, outcomes: &[JobOutcome]) -> Result<(), RegistryError> {
        let mut tx = self.pool.begin().await?;
        for chunk in outcomes.chunks(MAX_INSERT) {
            let placeholders: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let n = i * 7;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4,
                        n + 5,
                        n + 6,
                        n + 7
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO job_results (job_id, seq, device_id, outcome, result, latency_ms, finished_at) \
                 VALUES {}",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for outcome in chunk {
                query = query
                    .bind(job_id)
                    .bind(outcome.seq)
                    .bind(outcome.device_id.clone())
                    .bind(outcome.outcome.clone())
                    .bind(outcome.result.to_string())
                    .bind(outcome.latency_ms)
                    .bind(outcome.finished_at);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks a running job `finished` or `interrupted`.
    pub async fn finish(&self, job_id: i64, state: &str, now: i64) -> Result<(), RegistryError> {
        sqlx::query(
            "UPDATE jobs SET state = $1, finished_at = $2 WHERE id = $3 AND state = 'running'",
        )
        .bind(state)
        .bind(now)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Jobs `instance` was running when it stopped: they will never finish.
    pub async fn interrupt_all_of(&self, instance: &str, now: i64) -> Result<u64, RegistryError> {
        Ok(sqlx::query(
            "UPDATE jobs SET state = 'interrupted', finished_at = $1 \
             WHERE instance = $2 AND state = 'running'",
        )
        .bind(now)
        .bind(instance)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub async fn job(&self, id: i64) -> Result<Option<JobRecord>, RegistryError> {
        let row: Option<JobRow> =
            sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(job_from_row).transpose()
    }

    /// The latest jobs, newest first.
    pub async fn latest(&self, limit: i64) -> Result<Vec<JobRecord>, RegistryError> {
        let rows: Vec<JobRow> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(job_from_row).collect()
    }

    /// A job's outcomes after `after` (a `seq`), in order, at most `limit`.
    pub async fn outcomes(
        &self,
        job_id: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<JobOutcome>, RegistryError> {
        let rows: Vec<(i64, String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT seq, device_id, outcome, result, latency_ms, finished_at FROM job_results \
             WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(job_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(seq, device_id, outcome, result, latency_ms, finished_at)| {
                    Ok(JobOutcome {
                        seq,
                        device_id,
                        outcome,
                        result: parse_json(&result)?,
                        latency_ms,
                        finished_at,
                    })
                },
            )
            .collect()
    }

    /// How many devices ended in each outcome (`ok`, `offline`, ...).
    pub async fn tally(&self, job_id: i64) -> Result<Vec<(String, i64)>, RegistryError> {
        Ok(sqlx::query_as(
            "SELECT outcome, COUNT(*) FROM job_results WHERE job_id = $1 \
             GROUP BY outcome ORDER BY outcome",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Forgets jobs (and their outcomes) beyond the newest `keep`.
    pub async fn prune(&self, keep: i64) -> Result<u64, RegistryError> {
        let oldest_kept: Option<i64> =
            sqlx::query_scalar("SELECT id FROM jobs ORDER BY id DESC LIMIT 1 OFFSET $1")
                .bind(keep - 1)
                .fetch_optional(&self.pool)
                .await?;
        let Some(oldest_kept) = oldest_kept else {
            return Ok(0);
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM job_results WHERE job_id < $1")
            .bind(oldest_kept)
            .execute(&mut *tx)
            .await?;
        let pruned = sqlx::query("DELETE FROM jobs WHERE id < $1")
            .bind(oldest_kept)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(pruned)
    }
}
