//! The device registry: devices and their keys, the auth audit log,
//! and the container events devices report.
//!
//! Every write that belongs with an audit event happens in one transaction with
//! it. Timestamps are milliseconds since the Unix epoch.

use protocol::auth::AuthStatus;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::database::{self, Backend, Connection, Pool};
use utoipa::ToSchema;

/// Refusals alike within one window of this length (a clock hour) share one
/// row, with a count: a device's refused attempts here, refused operator
/// actions in the audit log.
pub const AGGREGATION_WINDOW: Duration = Duration::from_secs(3600);

/// The aggregation window `at` (ms since the epoch) falls in.
pub(crate) fn aggregation_bucket(at: i64) -> i64 {
    at.div_euclid(AGGREGATION_WINDOW.as_millis() as i64)
}

/// Container events kept per device; older ones are pruned on insert.
pub const DEVICE_EVENTS_KEPT: i64 = 1000;
/// Health reports are kept this long, for the dashboard's chart.
pub const HEALTH_HISTORY: Duration = Duration::from_secs(3600);
/// At most one health report per device is kept per this period, however
/// often the device sends them (the latest is always shown).
pub const HEALTH_SAMPLE_PERIOD: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Open(#[from] database::OpenError),
    #[error("corrupt registry row: {0}")]
    Corrupt(String),
}

/// Where an operator has put a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Its key is known but no operator has decided yet; it may only authenticate.
    Pending,
    Accepted,
    Rejected,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Accepted => "accepted",
            DeviceStatus::Rejected => "rejected",
        }
    }
}

impl FromStr for DeviceStatus {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(DeviceStatus::Pending),
            "accepted" => Ok(DeviceStatus::Accepted),
            "rejected" => Ok(DeviceStatus::Rejected),
            other => Err(RegistryError::Corrupt(format!("unknown status {other:?}"))),
        }
    }
}

/// What the device is told of its status.
impl From<DeviceStatus> for AuthStatus {
    fn from(status: DeviceStatus) -> Self {
        match status {
            DeviceStatus::Pending => AuthStatus::Pending,
            DeviceStatus::Accepted => AuthStatus::Accepted,
            DeviceStatus::Rejected => AuthStatus::Rejected,
        }
    }
}

impl std::fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the auth audit log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthEventKind {
    /// An unknown device id presented a key; it is now pending.
    NewKey,
    Authenticated,
    Accepted,
    Rejected,
    Deleted,
    /// A known id presented a different key (the detail holds its fingerprint).
    KeyMismatch,
    /// A known id failed to authenticate (the detail says why).
    AuthFailed,
    /// The device replaced its key (the detail holds both fingerprints).
    KeyRotated,
    /// The device tried to replace its key and was refused (the detail says why).
    KeyRotationRefused,
    /// An admin registered the id with its key before it ever connected.
    Preauthorized,
}

impl AuthEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthEventKind::NewKey => "new_key",
            AuthEventKind::Authenticated => "authenticated",
            AuthEventKind::Accepted => "accepted",
            AuthEventKind::Rejected => "rejected",
            AuthEventKind::Deleted => "deleted",
            AuthEventKind::KeyMismatch => "key_mismatch",
            AuthEventKind::AuthFailed => "auth_failed",
            AuthEventKind::KeyRotated => "key_rotated",
            AuthEventKind::KeyRotationRefused => "key_rotation_refused",
            AuthEventKind::Preauthorized => "preauthorized",
        }
    }
}

/// One registered device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceRecord {
    pub id: String,
    /// SPKI PEM of the device's key: the one it first presented, or the
    /// one it rotated to since.
    pub public_key: String,
    pub fingerprint: String,
    pub status: DeviceStatus,
    pub first_seen: i64,
    /// 0 until the device first authenticates (a preauthorized device).
    pub last_seen: i64,
    pub bridge_version: Option<String>,
    pub last_health: Option<Value>,
    pub last_health_at: Option<i64>,
    /// The admin who registered the key before the device first connected.
    pub preauthorized_by: Option<String>,
    /// When an operator required the device to rotate its key; `None` once
    /// it has (or when never required).
    pub key_rotation_required_at: Option<i64>,
    /// The newest cloud key the device trusts, as it last said.
    pub cloud_key_fingerprint: Option<String>,
}

impl DeviceRecord {
    /// Whether the device has never authenticated.
    pub fn never_connected(&self) -> bool {
        self.last_seen == 0
    }
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    id: String,
    public_key: String,
    fingerprint: String,
    status: String,
    first_seen: i64,
    last_seen: i64,
    bridge_version: Option<String>,
    last_health: Option<String>,
    last_health_at: Option<i64>,
    key_rotation_required_at: Option<i64>,
    cloud_key_fingerprint: Option<String>,
    preauthorized_by: Option<String>,
}

impl TryFrom<DeviceRow> for DeviceRecord {
    type Error = RegistryError;

    fn try_from(row: DeviceRow) -> Result<Self, Self::Error> {
        let last_health = row
            .last_health
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| RegistryError::Corrupt(format!("last_health of {}: {e}", row.id)))?;
        Ok(DeviceRecord {
            status: row.status.parse()?,
            id: row.id,
            public_key: row.public_key,
            fingerprint: row.fingerprint,
            first_seen: row.first_seen,
            last_seen: row.last_seen,
            bridge_version: row.bridge_version,
            last_health,
            last_health_at: row.last_health_at,
            key_rotation_required_at: row.key_rotation_required_at,
            cloud_key_fingerprint: row.cloud_key_fingerprint,
            preauthorized_by: row.preauthorized_by,
        })
    }
}

/// One line of the auth audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, ToSchema)]
pub struct AuthEvent {
    pub id: i64,
    pub device_id: String,
    pub at: i64,
    pub event: String,
    pub detail: String,
    /// Attempts this event stands for (refusals alike within an hour share one).
    pub count: i64,
}

/// One container event a device reported.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DeviceEvent {
    pub id: i64,
    pub device_id: String,
    pub at: i64,
    pub topic: String,
    pub payload: Value,
}

/// One health report of a device.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct HealthSample {
    pub at: i64,
    pub health: Value,
}

/// What [`Registry::register_new_key`] did.
#[derive(Debug)]
pub enum Registration {
    /// The device is now pending; its `new_key` event.
    Registered(AuthEvent),
    /// The id was registered already (perhaps a moment ago, by another connection).
    Exists,
    /// The registry holds the most pending devices it may.
    PendingFull,
}

/// The PostgreSQL advisory lock new registrations take turns on: any
/// number, the same in every instance.
const PENDING_REGISTRATION_LOCK: i64 = 0x6465_7662_7064_6e67;

/// A cheap, cloneable handle on the registry database.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: Pool,
    backend: Backend,
    /// Registrations of new ids that may wait on the database at once. They
    /// take turns (the pending cap), each holding a connection while it
    /// waits: without this bound a storm of new ids would hold every
    /// connection, and an operator's accept would find none.
    registrations: Arc<tokio::sync::Semaphore>,
}

/// See [`Registry::registrations`]: a quarter of the smallest pool.
const REGISTRATIONS_AT_ONCE: usize = 2;

const DEVICE_COLUMNS: &str = "id, public_key, fingerprint, status, first_seen, last_seen, \
                              bridge_version, last_health, last_health_at, \
                              key_rotation_required_at, cloud_key_fingerprint, preauthorized_by";

impl Registry {
    /// Opens and migrates the database at `url`: `sqlite://data/cloud.db`
    /// (the file and its directory are created if missing) or
    /// `postgres://user:password@host/database`.
    pub async fn open(url: &str) -> Result<Self, RegistryError> {
        let (pool, backend) = database::open(url).await?;
        Ok(Registry {
            pool,
            backend,
            registrations: Arc::new(tokio::sync::Semaphore::new(REGISTRATIONS_AT_ONCE)),
        })
    }

    /// The database, shared with operator accounts and the audit log.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Answers if the database does (for `/readyz`).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Copies the write-ahead log into the database and empties it. SQLite's
    /// own checkpoints never get to empty the log while some connection
    /// always holds a read snapshot, which concurrent writers do under load:
    /// the log then grows with every write until the disk is full. This one
    /// waits (up to the busy timeout) for the readers of older snapshots.
    /// Returns the log's size in pages before it was emptied. PostgreSQL
    /// keeps its own log: there, nothing is done.
    pub async fn checkpoint(&self) -> Result<i64, RegistryError> {
        if self.backend != Backend::Sqlite {
            return Ok(0);
        }
        let (busy, log_pages, _checkpointed): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await?;
        if busy != 0 {
            tracing::warn!(
                log_pages,
                "the write-ahead log could not be emptied: readers kept it busy"
            );
        }
        Ok(log_pages)
    }

    /// Closes the database; every later query fails.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// How many devices have each status (for `/metrics`); a status no device
    /// has is left out.
    pub async fn count_by_status(&self) -> Result<Vec<(DeviceStatus, i64)>, RegistryError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM devices GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(status, count)| Ok((status.parse()?, count)))
            .collect()
    }

    pub async fn device(&self, id: &str) -> Result<Option<DeviceRecord>, RegistryError> {
        let row: Option<DeviceRow> = sqlx::query_as(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(DeviceRecord::try_from).transpose()
    }

    /// All devices, pending ones first (they wait for an operator), then by id.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, RegistryError> {
        let rows: Vec<DeviceRow> = sqlx::query_as(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices \
             ORDER BY CASE status WHEN 'pending' THEN 0 ELSE 1 END, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(DeviceRecord::try_from).collect()
    }

    /// Records an unknown device as pending, with a `new_key` event, unless
    /// the id is already registered or `max_pending` devices are pending
    /// (then nothing changes).
    pub async fn register_new_key(
        &self,
        id: &str,
        public_key_pem: &str,
        fingerprint: &str,
        bridge_version: Option<&str>,
        max_pending: i64,
        now: i64,
    ) -> Result<Registration, RegistryError> {
        let _turn = self
            .registrations
            .acquire()
            .await
            .expect("the semaphore is never closed");
        // The transaction starts with its write, so it takes the write lock
        // at once (waiting its turn) instead of upgrading a read, which
        // SQLite refuses when another write came in between. One statement
        // checks the id and the cap, so concurrent registrations cannot
        // overshoot it.
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // PostgreSQL runs writers side by side, each counting what was
            // committed before it began: registrations take turns, or
            // instances registering at once could each slip under the cap.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PENDING_REGISTRATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO devices (id, public_key, fingerprint, status, first_seen, last_seen, bridge_version) \
             SELECT $1, $2, $3, 'pending', $4, $5, $6 \
             WHERE (SELECT COUNT(*) FROM devices WHERE status = 'pending') < $7 \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(public_key_pem)
        .bind(fingerprint)
        .bind(now)
        .bind(now)
        .bind(bridge_version)
        .bind(max_pending)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            tx.rollback().await?;
            return Ok(if self.device(id).await?.is_some() {
                Registration::Exists
            } else {
                Registration::PendingFull
            });
        }
        let event = insert_auth_event(&mut tx, id, AuthEventKind::NewKey, fingerprint, now).await?;
        tx.commit().await?;
        Ok(Registration::Registered(event))
    }

    /// Registers a device an admin vouches for, before it ever connects:
    /// accepted with this key, with a `preauthorized` event. Returns None
    /// (and changes nothing) if the id is registered already.
    pub async fn preauthorize(
        &self,
        id: &str,
        public_key_pem: &str,
        fingerprint: &str,
        by: &str,
        now: i64,
    ) -> Result<Option<DeviceRecord>, RegistryError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<DeviceRow> = sqlx::query_as(&format!(
            "INSERT INTO devices (id, public_key, fingerprint, status, first_seen, last_seen, preauthorized_by) \
             VALUES ($1, $2, $3, 'accepted', $4, 0, $5) \
             ON CONFLICT (id) DO NOTHING RETURNING {DEVICE_COLUMNS}"
        ))
        .bind(id)
        .bind(public_key_pem)
        .bind(fingerprint)
        .bind(now)
        .bind(by)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let detail = format!("{fingerprint} by {by}");
        insert_auth_event(&mut tx, id, AuthEventKind::Preauthorized, &detail, now).await?;
        tx.commit().await?;
        Ok(Some(row.try_into()?))
    }

    /// A known device proved possession of its key: bumps last_seen, stores the
    /// bridge version and logs (and returns) `authenticated`, in aggregate
    /// for a device that is not accepted (it may reconnect all day). The
    /// first connection of a preauthorized device says so in its detail.
    pub async fn record_authenticated(
        &self,
        record: &DeviceRecord,
        bridge_version: Option<&str>,
        now: i64,
    ) -> Result<AuthEvent, RegistryError> {
        let (id, status) = (record.id.as_str(), record.status);
        let detail = match &record.preauthorized_by {
            Some(admin) if record.never_connected() => {
                format!(
                    "{}; first connection, preauthorized by {admin}",
                    status.as_str()
                )
            }
            _ => status.as_str().to_owned(),
        };
        let detail = detail.as_str();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE devices SET last_seen = $1, bridge_version = COALESCE($2, bridge_version) WHERE id = $3",
        )
        .bind(now)
        .bind(bridge_version)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let bucket = (status != DeviceStatus::Accepted).then(|| aggregation_bucket(now));
        let event = upsert_auth_event(
            &mut tx,
            id,
            AuthEventKind::Authenticated,
            detail,
            now,
            bucket,
        )
        .await?;
        tx.commit().await?;
        Ok(event)
    }

    /// An operator decision. Returns the updated device, or None if unknown.
    pub async fn set_status(
        &self,
        id: &str,
        status: DeviceStatus,
        detail: &str,
        now: i64,
    ) -> Result<Option<DeviceRecord>, RegistryError> {
        let event = match status {
            DeviceStatus::Accepted => AuthEventKind::Accepted,
            DeviceStatus::Rejected => AuthEventKind::Rejected,
            DeviceStatus::Pending => {
                return Err(RegistryError::Corrupt(
                    "a device cannot be set back to pending".into(),
                ))
            }
        };
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query("UPDATE devices SET status = $1 WHERE id = $2")
            .bind(status.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        insert_auth_event(&mut tx, id, event, detail, now).await?;
        let row: DeviceRow = sqlx::query_as(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(row.try_into()?))
    }

    /// The device replaced its key `old_public_key` with `new_public_key`
    /// (SPKI PEM, canonical): switches the key, forgets any rotation an
    /// operator required, and logs `key_rotated` with `detail`, in one
    /// transaction. Only while the registered key is still `old_public_key`:
    /// `None` when it is not (another rotation came first, or the device was
    /// deleted), and then nothing changes.
    pub async fn rotate_key(
        &self,
        id: &str,
        old_public_key: &str,
        new_public_key: &str,
        new_fingerprint: &str,
        detail: &str,
        now: i64,
    ) -> Result<Option<AuthEvent>, RegistryError> {
        let mut tx = self.pool.begin().await?;
        let switched = sqlx::query(
            "UPDATE devices SET public_key = $1, fingerprint = $2, key_rotation_required_at = NULL, \
             last_seen = CASE WHEN last_seen < $3 THEN $3 ELSE last_seen END \
             WHERE id = $4 AND public_key = $5",
        )
        .bind(new_public_key)
        .bind(new_fingerprint)
        .bind(now)
        .bind(id)
        .bind(old_public_key)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !switched {
            tx.rollback().await?;
            return Ok(None);
        }
        let event = insert_auth_event(&mut tx, id, AuthEventKind::KeyRotated, detail, now).await?;
        tx.commit().await?;
        Ok(Some(event))
    }

    /// Records that an operator requires the device to rotate its key (kept
    /// until it has). Returns the device, or `None` if unknown.
    pub async fn require_key_rotation(
        &self,
        id: &str,
        now: i64,
    ) -> Result<Option<DeviceRecord>, RegistryError> {
        let row: Option<DeviceRow> = sqlx::query_as(&format!(
            "UPDATE devices SET key_rotation_required_at = $1 WHERE id = $2 RETURNING {DEVICE_COLUMNS}"
        ))
        .bind(now)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(DeviceRecord::try_from).transpose()
    }

    /// Records the newest cloud key the device trusts, by its fingerprint.
    pub async fn record_cloud_key(&self, id: &str, fingerprint: &str) -> Result<(), RegistryError> {
        sqlx::query("UPDATE devices SET cloud_key_fingerprint = $1 WHERE id = $2")
            .bind(fingerprint)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets a device and its container events; the audit log keeps a
    /// `deleted` line. Returns false if the id was unknown.
    pub async fn delete(&self, id: &str, detail: &str, now: i64) -> Result<bool, RegistryError> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM devices WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if deleted {
            for table in ["device_events", "device_health", "device_tags"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE device_id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            insert_auth_event(&mut tx, id, AuthEventKind::Deleted, detail, now).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Forgets pending devices last seen before `seen_before` (a connected
    /// device is seen at least every half minute), with a `deleted` event
    /// each; returns their ids.
    pub async fn forget_stale_pending(
        &self,
        seen_before: i64,
        now: i64,
    ) -> Result<Vec<String>, RegistryError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "DELETE FROM devices WHERE status = 'pending' AND last_seen < $1 RETURNING id",
        )
        .bind(seen_before)
        .fetch_all(&mut *tx)
        .await?;
        for id in &ids {
            insert_auth_event(&mut tx, id, AuthEventKind::Deleted, "pending expired", now).await?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    pub async fn touch(&self, id: &str, now: i64) -> Result<(), RegistryError> {
        sqlx::query("UPDATE devices SET last_seen = CASE WHEN last_seen < $1 THEN $1 ELSE last_seen END WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores a health report as the device's latest, and in its last hour
    /// (at most one per [`HEALTH_SAMPLE_PERIOD`]).
    pub async fn record_health(
        &self,
        id: &str,
        health: &Value,
        now: i64,
    ) -> Result<(), RegistryError> {
        let text = health.to_string();
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE devices SET last_health = $1, last_health_at = $2, last_seen = CASE WHEN last_seen < $3 THEN $3 ELSE last_seen END WHERE id = $4")
            .bind(&text)
            .bind(now)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO device_health (device_id, at, health) SELECT $1, $2, $3 \
             WHERE NOT EXISTS (SELECT 1 FROM device_health WHERE device_id = $1 AND at > $4)",
        )
        .bind(id)
        .bind(now)
        .bind(&text)
        .bind(now - HEALTH_SAMPLE_PERIOD.as_millis() as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM device_health WHERE device_id = $1 AND at < $2")
            .bind(id)
            .bind(now - HEALTH_HISTORY.as_millis() as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A device's health reports of the last hour, oldest first.
    pub async fn health_history(&self, id: &str) -> Result<Vec<HealthSample>, RegistryError> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT at, health FROM device_health WHERE device_id = $1 ORDER BY at")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(at, health)| {
                let health = serde_json::from_str(&health)
                    .map_err(|e| RegistryError::Corrupt(format!("health of {id}: {e}")))?;
                Ok(HealthSample { at, health })
            })
            .collect()
    }

    /// Stores a container event and prunes the device's events beyond the
    /// latest [`DEVICE_EVENTS_KEPT`].
    pub async fn add_device_event(
        &self,
        device_id: &str,
        topic: &str,
        payload: &Value,
        now: i64,
    ) -> Result<(), RegistryError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO device_events (device_id, at, topic, payload) VALUES ($1, $2, $3, $4)",
        )
        .bind(device_id)
        .bind(now)
        .bind(topic)
        .bind(payload.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM device_events WHERE device_id = $1 AND id <= \
             (SELECT id FROM device_events WHERE device_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
        )
        .bind(device_id)
        .bind(DEVICE_EVENTS_KEPT)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The latest container events of a device, newest first.
    pub async fn device_events(
        &self,
        device_id: &str,
        limit: i64,
    ) -> Result<Vec<DeviceEvent>, RegistryError> {
        let rows: Vec<(i64, String, i64, String, String)> = sqlx::query_as(
            "SELECT id, device_id, at, topic, payload FROM device_events \
             WHERE device_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, device_id, at, topic, payload)| {
                let payload = serde_json::from_str(&payload)
                    .map_err(|e| RegistryError::Corrupt(format!("device event {id}: {e}")))?;
                Ok(DeviceEvent {
                    id,
                    device_id,
                    at,
                    topic,
                    payload,
                })
            })
            .collect()
    }

    pub async fn add_auth_event(
        &self,
        device_id: &str,
        event: AuthEventKind,
        detail: &str,
        now: i64,
    ) -> Result<AuthEvent, RegistryError> {
        let mut conn = self.pool.acquire().await?;
        insert_auth_event(&mut conn, device_id, event, detail, now).await
    }

    /// Records a refused attempt on a known device in aggregate: one row per
    /// kind and clock hour counts them (see [`AGGREGATION_WINDOW`]),
    /// so a stranger hammering an id costs its owner one bounded record.
    pub async fn add_refused_attempt(
        &self,
        device_id: &str,
        event: AuthEventKind,
        detail: &str,
        now: i64,
    ) -> Result<AuthEvent, RegistryError> {
        let mut conn = self.pool.acquire().await?;
        let bucket = Some(aggregation_bucket(now));
        upsert_auth_event(&mut conn, device_id, event, detail, now, bucket).await
    }

    /// Records that `instance` holds the device's connection `connection_id`.
    pub async fn record_connected(
        &self,
        id: &str,
        instance: &str,
        connection_id: u64,
    ) -> Result<(), RegistryError> {
        sqlx::query("UPDATE devices SET connected_to = $1, connection_id = $2 WHERE id = $3")
            .bind(instance)
            .bind(connection_id as i64)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The device's connection `connection_id` on `instance` closed: bumps
    /// last_seen, and forgets where it is connected unless a newer connection
    /// (here or on another instance) has taken its place.
    pub async fn record_disconnected(
        &self,
        id: &str,
        instance: &str,
        connection_id: u64,
        now: i64,
    ) -> Result<(), RegistryError> {
        sqlx::query(
            "UPDATE devices SET last_seen = CASE WHEN last_seen < $1 THEN $1 ELSE last_seen END, \
             connected_to = CASE WHEN connected_to = $2 AND connection_id = $3 THEN NULL ELSE connected_to END, \
             connection_id = CASE WHEN connected_to = $2 AND connection_id = $3 THEN NULL ELSE connection_id END \
             WHERE id = $4",
        )
        .bind(now)
        .bind(instance)
        .bind(connection_id as i64)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `instance` is alive at `now`. At its start (`starting`), it holds no
    /// connection yet: what an earlier run of it left recorded is forgotten.
    pub async fn record_instance_alive(
        &self,
        instance: &str,
        starting: bool,
        now: i64,
    ) -> Result<(), RegistryError> {
        let mut tx = self.pool.begin().await?;
        if starting {
            sqlx::query(
                "UPDATE devices SET connected_to = NULL, connection_id = NULL WHERE connected_to = $1",
            )
            .bind(instance)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO cloud_instances (id, seen_at) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(instance)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Devices connected to another instance than `instance`, one alive
    /// since `alive_since`: device id → the instance holding it.
    pub async fn connected_elsewhere(
        &self,
        instance: &str,
        alive_since: i64,
        device_id: Option<&str>,
    ) -> Result<Vec<(String, String)>, RegistryError> {
        Ok(sqlx::query_as(
            "SELECT d.id, d.connected_to FROM devices d \
             JOIN cloud_instances i ON i.id = d.connected_to \
             WHERE d.connected_to <> $1 AND i.seen_at >= $2 AND ($3 IS NULL OR d.id = $3)",
        )
        .bind(instance)
        .bind(alive_since)
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The auth audit log, newest first, of one device or of all.
    pub async fn auth_events(
        &self,
        device_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuthEvent>, RegistryError> {
        let events = sqlx::query_as(
            "SELECT id, device_id, at, event, detail, count FROM auth_events \
             WHERE $1 IS NULL OR device_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(events)
    }
}

async fn insert_auth_event(
    conn: &mut Connection,
    device_id: &str,
    event: AuthEventKind,
    detail: &str,
    now: i64,
) -> Result<AuthEvent, RegistryError> {
    upsert_auth_event(conn, device_id, event, detail, now, None).await
}

/// Inserts an event, or, with the `bucket` of an aggregation window, counts
/// one more on the device's event of this kind in that window, in one
/// statement (so simultaneous attempts share it). Without a bucket the row
/// is never a conflict: the unique index lets NULLs repeat.
async fn upsert_auth_event(
    conn: &mut Connection,
    device_id: &str,
    event: AuthEventKind,
    detail: &str,
    now: i64,
    bucket: Option<i64>,
) -> Result<AuthEvent, RegistryError> {
    Ok(sqlx::query_as(
        "INSERT INTO auth_events (device_id, at, event, detail, bucket) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (device_id, event, bucket) DO UPDATE \
         SET count = auth_events.count + 1, at = excluded.at, detail = excluded.detail \
         RETURNING id, device_id, at, event, detail, count",
    )
    .bind(device_id)
    .bind(now)
    .bind(event.as_str())
    .bind(detail)
    .bind(bucket)
    .fetch_one(conn)
    .await?)
}
