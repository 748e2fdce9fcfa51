//! Operators' `key=value` labels on devices. Checking a tag is the
//! operations layer's; this keeps them and answers which devices carry which.

use std::collections::{BTreeMap, HashMap};

use crate::store::database::Pool;
use crate::store::RegistryError;

/// One device's tags, by key.
pub type TagSet = BTreeMap<String, String>;

/// What [`DeviceTags::update`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum TagUpdate {
    /// The device's tags after the change.
    Updated(TagSet),
    UnknownDevice,
    /// The change would leave the device with more than the most allowed;
    /// nothing changed.
    TooMany,
}

/// Tags in the registry database.
#[derive(Debug, Clone)]
pub struct DeviceTags {
    pool: Pool,
}

impl DeviceTags {
    pub fn new(pool: Pool) -> Self {
        DeviceTags { pool }
    }

    /// Every tagged device's tags (for the device list).
    pub async fn all(&self) -> Result<HashMap<String, TagSet>, RegistryError> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT device_id, key, value FROM device_tags")
                .fetch_all(&self.pool)
                .await?;
        let mut tags: HashMap<String, TagSet> = HashMap::new();
        for (device_id, key, value) in rows {
            tags.entry(device_id).or_default().insert(key, value);
        }
        Ok(tags)
    }

    /// One device's tags (none for an unknown device).
    pub async fn of(&self, device_id: &str) -> Result<TagSet, RegistryError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM device_tags WHERE device_id = $1")
                .bind(device_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// Sets the tags in `set` and removes the keys in `remove` (`replace`:
    /// every other key too), in one transaction, leaving at most `max`.
    pub async fn update(
        &self,
        device_id: &str,
        set: &TagSet,
        remove: &[String],
        replace: bool,
        max: usize,
    ) -> Result<TagUpdate, RegistryError> {
        let mut tx = self.pool.begin().await?;
        // A write first: SQLite cannot turn a transaction that began by
        // reading into a writing one while others write; and the device's row
        // stays locked until the change is done, so changes of one device's
        // tags never interleave.
        let known = sqlx::query("UPDATE devices SET id = id WHERE id = $1")
            .bind(device_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !known {
            return Ok(TagUpdate::UnknownDevice);
        }
        if replace {
            sqlx::query("DELETE FROM device_tags WHERE device_id = $1")
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
        }
        for key in remove {
            sqlx::query("DELETE FROM device_tags WHERE device_id = $1 AND key = $2")
                .bind(device_id)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        for (key, value) in set {
            sqlx::query(
                "INSERT INTO device_tags (device_id, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (device_id, key) DO UPDATE SET value = excluded.value",
            )
            .bind(device_id)
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        }
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM device_tags WHERE device_id = $1")
                .bind(device_id)
                .fetch_all(&mut *tx)
                .await?;
        if rows.len() > max {
            return Ok(TagUpdate::TooMany);
        }
        tx.commit().await?;
        Ok(TagUpdate::Updated(rows.into_iter().collect()))
    }
}
