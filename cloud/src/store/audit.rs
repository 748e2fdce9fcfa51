//! The audit log: every operator action (sign-ins, decisions on devices, RPC
//! calls with their outcome and latency, token and account changes), read
//! together with the devices' own auth events (new key, authenticated,
//! refused and why).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tokio::sync::{mpsc, oneshot};

use crate::store::database::Pool;
use crate::store::registry::{aggregation_bucket, AuthEvent};

/// Device auth events the audit log shows. Accept, reject and delete are
/// operator actions and appear once, as such.
const DEVICE_EVENTS: [&str; 6] = [
    "new_key",
    "authenticated",
    "key_mismatch",
    "auth_failed",
    "key_rotated",
    "key_rotation_refused",
];
/// Those whose outcome reads `refused`.
const REFUSED_DEVICE_EVENTS: [&str; 3] = ["key_mismatch", "auth_failed", "key_rotation_refused"];
/// Most entries one page may hold.
pub const MAX_PAGE: i64 = 500;
/// Most actions one group commit writes (7 bound values each, well within
/// SQLite's limit of 32,766).
const MAX_GROUP: usize = 256;
/// Actions waiting for the writer before recorders wait for room.
const WRITER_QUEUE: usize = 4 * MAX_GROUP;

/// What an operator did, to be recorded.
#[derive(Debug, Clone)]
pub struct Action<'a> {
    pub actor: &'a str,
    /// `login`, `logout`, `device.accept`, `device.reject`, `device.delete`,
    /// `rpc`, `token.create`, `token.revoke`, `operator.add`, `operator.remove`.
    pub action: &'a str,
    /// The device, token or operator acted on.
    pub target: &'a str,
    /// `ok`, or why not (`wrong_password`, `timed_out`, `offline`, ...).
    pub outcome: &'a str,
    /// The RPC method, a token's name, ...
    pub detail: &'a str,
    pub latency_ms: Option<i64>,
}

impl Action<'_> {
    /// This action as the log shows it once stored as row `id`.
    fn entry(&self, id: i64, at: i64, count: i64) -> AuditEntry {
        AuditEntry {
            source: "operator".into(),
            id,
            at,
            actor: self.actor.to_owned(),
            action: self.action.to_owned(),
            target: self.target.to_owned(),
            outcome: self.outcome.to_owned(),
            detail: self.detail.to_owned(),
            latency_ms: self.latency_ms,
            count,
        }
    }
}

/// Why an action could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The group it was written with failed: every action of the group sees
    /// the same error.
    #[error("cannot write the audit log: {0}")]
    Database(Arc<sqlx::Error>),
    #[error("the audit log's writer has stopped")]
    WriterStopped,
}

impl From<sqlx::Error> for RecordError {
    fn from(e: sqlx::Error) -> Self {
        RecordError::Database(Arc::new(e))
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    /// `operator` (an operator action) or `device` (a device auth event).
    pub source: String,
    pub id: i64,
    pub at: i64,
    /// The operator, or the device for device events.
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
    pub latency_ms: Option<i64>,
    /// Attempts this entry stands for: refusals alike within a clock hour
    /// share one entry, `at` being the latest.
    pub count: i64,
}

impl AuditEntry {
    /// A device auth event as the audit log shows it, or None for the kinds
    /// it leaves to the operator action that caused them.
    pub fn from_device_event(event: &AuthEvent) -> Option<AuditEntry> {
        if !DEVICE_EVENTS.contains(&event.event.as_str()) {
            return None;
        }
        let refused = REFUSED_DEVICE_EVENTS.contains(&event.event.as_str());
        Some(AuditEntry {
            source: "device".into(),
            id: event.id,
            at: event.at,
            actor: event.device_id.clone(),
            action: event.event.clone(),
            target: event.device_id.clone(),
            outcome: if refused { "refused" } else { "ok" }.into(),
            detail: event.detail.clone(),
            latency_ms: None,
            count: event.count,
        })
    }
}

/// Which entries to list; every filter is optional and exact.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditFilter {
    /// `operator` or `device`.
    pub source: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// A device id (or token, operator) acted on.
    pub target: Option<String>,
    /// Entries with any other outcome than `ok`, when `true`.
    pub failures_only: Option<bool>,
}

/// One page of the audit log, newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Entries matching the filter in all.
    pub total: i64,
    pub offset: i64,
    pub limit: i64,
}

#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: Pool,
    /// The group writer's queue (see [`AuditLog::record`]).
    writer: mpsc::Sender<Pending>,
}

/// An action waiting for the group writer, with whom to tell once it is stored.
struct Pending {
    entry: AuditEntry,
    stored: oneshot::Sender<Result<AuditEntry, RecordError>>,
}

impl AuditLog {
    /// The log in `pool`'s database, with its group writer (a task of the
    /// current tokio runtime, ending when the last clone of the log is dropped).
    pub fn new(pool: Pool) -> Self {
        let (writer, queue) = mpsc::channel(WRITER_QUEUE);
        tokio::spawn(write_groups(pool.clone(), queue));
        AuditLog { pool, writer }
    }

    /// Stores an action; returns it as the log shows it, once it is committed.
    ///
    /// Actions recorded at the same moment are committed together, in one
    /// statement and one transaction: under load one commit serves every
    /// call that finished meanwhile, instead of each call waiting for a
    /// commit of its own; alone, an action is written at once.
    pub async fn record(&self, action: &Action<'_>, now: i64) -> Result<AuditEntry, RecordError> {
        let (stored, written) = oneshot::channel();
        let pending = Pending {
            entry: action.entry(0, now, 1),
            stored,
        };
        self.writer
            .send(pending)
            .await
            .map_err(|_| RecordError::WriterStopped)?;
        written.await.map_err(|_| RecordError::WriterStopped)?
    }

    /// Stores a refused action in aggregate: the entry with the same actor,
    /// action, target and outcome in this clock hour counts one more (and
    /// takes this detail and time), in one statement, so attempts at the
    /// same moment cannot split it. Repeated refusals cost a row an hour.
    pub async fn record_refusal(
        &self,
        action: &Action<'_>,
        now: i64,
    ) -> Result<AuditEntry, sqlx::Error> {
        let (id, count): (i64, i64) = sqlx::query_as(
            "INSERT INTO audit_log (at, actor, action, target, outcome, detail, latency_ms, bucket) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (actor, action, target, outcome, bucket) DO UPDATE \
             SET count = audit_log.count + 1, at = excluded.at, detail = excluded.detail \
             RETURNING id, count",
        )
        .bind(now)
        .bind(action.actor)
        .bind(action.action)
        .bind(action.target)
        .bind(action.outcome)
        .bind(action.detail)
        .bind(action.latency_ms)
        .bind(aggregation_bucket(now))
        .fetch_one(&self.pool)
        .await?;
        Ok(action.entry(id, now, count))
    }

    /// Forgets operator actions and device auth events older than
    /// `retention`, and all but the newest `max_rows` of each. Returns how
    /// many entries went.
    pub async fn prune(
        &self,
        now: i64,
        retention: Duration,
        max_rows: i64,
    ) -> Result<u64, sqlx::Error> {
        let oldest_kept = now.saturating_sub(retention.as_millis() as i64);
        let mut pruned = 0;
        for table in ["audit_log", "auth_events"] {
            pruned += sqlx::query(&format!(
                "DELETE FROM {table} WHERE at < $1 OR id <= \
                 (SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET $2)"
            ))
            .bind(oldest_kept)
            .bind(max_rows)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(pruned)
    }

    pub async fn page(
        &self,
        filter: &AuditFilter,
        offset: i64,
        limit: i64,
    ) -> Result<AuditPage, sqlx::Error> {
        let limit = limit.clamp(1, MAX_PAGE);
        let offset = offset.max(0);
        let quoted = |kinds: &[&str]| {
            kinds
                .iter()
                .map(|kind| format!("'{kind}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (shown, refused) = (quoted(&DEVICE_EVENTS), quoted(&REFUSED_DEVICE_EVENTS));
        let union = format!(
            "SELECT 'operator' AS source, id, at, actor, action, target, outcome, detail, latency_ms, count \
             FROM audit_log \
             UNION ALL \
             SELECT 'device', id, at, device_id, event, device_id, \
                    CASE WHEN event IN ({refused}) THEN 'refused' ELSE 'ok' END, \
                    detail, NULL, count \
             FROM auth_events WHERE event IN ({shown})"
        );
        let conditions = "($1 IS NULL OR source = $1) AND ($2 IS NULL OR actor = $2) \
             AND ($3 IS NULL OR action = $3) AND ($4 IS NULL OR target = $4) \
             AND (NOT $5 OR outcome <> 'ok')";
        let failures_only = filter.failures_only.unwrap_or(false);
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM ({union}) AS entries WHERE {conditions}"
        ))
        .bind(&filter.source)
        .bind(&filter.actor)
        .bind(&filter.action)
        .bind(&filter.target)
        .bind(failures_only)
        .fetch_one(&self.pool)
        .await?;
        let entries = sqlx::query_as(&format!(
            "SELECT * FROM ({union}) AS entries WHERE {conditions} \
             ORDER BY at DESC, source, id DESC LIMIT $6 OFFSET $7"
        ))
        .bind(&filter.source)
        .bind(&filter.actor)
        .bind(&filter.action)
        .bind(&filter.target)
        .bind(failures_only)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        Ok(AuditPage {
            entries,
            total,
            offset,
            limit,
        })
    }
}

/// The group writer: takes every action waiting (up to [`MAX_GROUP`]), writes
/// them in one statement, and tells each recorder its entry.
async fn write_groups(pool: Pool, mut queue: mpsc::Receiver<Pending>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        match insert_group(&pool, &group).await {
            Ok(ids) => {
                for (pending, id) in group.drain(..).zip(ids) {
                    let entry = AuditEntry {
                        id,
                        ..pending.entry
                    };
                    let _ = pending.stored.send(Ok(entry));
                }
            }
            Err(e) => {
                let e = RecordError::from(e);
                for pending in group.drain(..) {
                    let _ = pending.stored.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Inserts `group` (rows of their own: no bucket, so never an aggregate) and
/// returns their ids in the group's order.
async fn insert_group(pool: &Pool, group: &[Pending]) -> Result<Vec<i64>, sqlx::Error> {
    // Written out, not with sqlx's QueryBuilder: through the `Any` driver it
    // numbers no placeholders, which PostgreSQL needs.
    const COLUMNS: usize = 7;
    let rows = (0..group.len())
        .map(|row| {
            let first = row * COLUMNS;
            let values: Vec<String> = (1..=COLUMNS).map(|c| format!("${}", first + c)).collect();
            format!("({})", values.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO audit_log (at, actor, action, target, outcome, detail, latency_ms) \
         VALUES {rows} RETURNING id"
    );
    let mut insert = sqlx::query_scalar(&sql);
    for Pending { entry, .. } in group {
        insert = insert
            .bind(entry.at)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.target)
            .bind(&entry.outcome)
            .bind(&entry.detail)
            .bind(entry.latency_ms);
    }
    let mut ids: Vec<i64> = insert.fetch_all(pool).await?;
    // One statement inserts its rows in order, each taking the next id, but
    // RETURNING may list them in any order.
    ids.sort_unstable();
    if ids.len() != group.len() {
        return Err(sqlx::Error::Protocol(format!(
            "inserted {} audit entries, got {} ids back",
            group.len(),
            ids.len()
        )));
    }
    Ok(ids)
}
