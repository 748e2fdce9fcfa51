//! What the cloud keeps: the device registry, operator accounts and the audit
//! log, in one database (SQLite or PostgreSQL, see `database.rs`). Row types live here, apart from the API's
//! views of them; nothing in this layer knows of HTTP, sessions or the fleet.

pub mod accounts;
pub mod audit;
pub mod database;
pub mod housekeeping;
pub mod jobs;
pub mod queued_calls;
pub mod registry;
pub mod tags;

pub use crate::roles::Role;
pub use accounts::{AccountError, Accounts, ApiToken, Operator, SessionInfo};
pub use audit::{Action, AuditEntry, AuditFilter, AuditLog, AuditPage};
pub use jobs::Jobs;
pub use queued_calls::QueuedCalls;
pub use registry::{DeviceRecord, DeviceStatus, Registry, RegistryError};
pub use tags::{DeviceTags, TagSet};

/// The three stores over one database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub registry: Registry,
    pub accounts: Accounts,
    pub audit: AuditLog,
    pub tags: DeviceTags,
    pub jobs: Jobs,
    pub queued_calls: QueuedCalls,
}

impl Store {
    /// Opens (creating if need be) and migrates the database at `url`.
    pub async fn open(url: &str) -> Result<Self, RegistryError> {
        Ok(Store::over(Registry::open(url).await?))
    }

    /// The accounts and audit log that share `registry`'s database.
    pub fn over(registry: Registry) -> Self {
        Store {
            accounts: Accounts::new(registry.pool().clone()),
            audit: AuditLog::new(registry.pool().clone()),
            tags: DeviceTags::new(registry.pool().clone()),
            jobs: Jobs::new(registry.pool().clone()),
            queued_calls: QueuedCalls::new(registry.pool().clone()),
            registry,
        }
    }
}
