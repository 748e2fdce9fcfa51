//! What the cloud keeps: the device registry, operator accounts and the audit
//! log, in one database (SQLite or PostgreSQL, see `database.rs`). Row types live here, apart from the API's
//! views of them; nothing in this layer knows of HTTP, sessions or the fleet.

pub mod accounts;
pub mod audit;
pub mod database;
pub mod housekeeping;
pub mod registry;

pub use crate::roles::Role;
pub use accounts::{AccountError, Accounts, ApiToken, Operator, SessionInfo};
pub use audit::{Action, AuditEntry, AuditFilter, AuditLog, AuditPage};
pub use registry::{DeviceRecord, DeviceStatus, Registry, RegistryError};

/// The three stores over one database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub registry: Registry,
    pub accounts: Accounts,
    pub audit: AuditLog,
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
            registry,
        }
    }
}
