//! The operations layer: everything an operator can do to the fleet (decide
//! on a device, remove it, call it), to the team (operators, API tokens) and
//! to their own session. Each operation checks its input, acts through the
//! store and the device layer, records itself in the audit log and answers
//! with one error type, [`OpError`]. The API, the dashboard and the CLI only
//! translate to and from it.

pub mod admin_token;
mod auditor;
pub mod caller;
pub mod devices;
mod error;
pub mod jobs;
pub mod keys;
mod login_limiter;
pub mod notify;
pub mod queued_calls;
pub mod sign_in;
pub mod tags;
pub mod team;

use std::sync::Arc;

use crate::config::CloudConfig;
use crate::device::Devices;
use crate::store::Store;
use login_limiter::LoginLimiter;
use team::Team;

pub use auditor::Auditor;
pub use caller::{Caller, Credential, Permission, ADMIN_TOKEN_ACTOR, HOST_ACTOR};
pub use error::{ErrorKind, OpError};

/// The operations, with what they act on; a cheap, cloneable handle.
#[derive(Clone)]
pub struct Operations {
    inner: Arc<Shared>,
}

struct Shared {
    config: Arc<CloudConfig>,
    store: Store,
    devices: Devices,
    auditor: Auditor,
    team: Team,
    login_limiter: LoginLimiter,
    /// How often each device may be sent an event ([`notify`]).
    event_limiter: notify::EventLimiter,
    /// The host's break-glass bearer token (see [`admin_token`]).
    admin_token: String,
    /// Devices this instance is sending queued calls to.
    sending: Arc<queued_calls::Sending>,
    /// Jobs running on this instance.
    running_jobs: Arc<tokio::sync::Semaphore>,
}

impl Operations {
    pub fn new(
        config: Arc<CloudConfig>,
        store: Store,
        devices: Devices,
        admin_token: String,
    ) -> Self {
        let auditor = Auditor::new(store.audit.clone(), devices.events().clone());
        Operations {
            inner: Arc::new(Shared {
                team: Team::new(store.accounts.clone(), auditor.clone()),
                login_limiter: LoginLimiter::new(&config.limits),
                event_limiter: notify::EventLimiter::default(),
                config,
                store,
                devices,
                auditor,
                admin_token,
                sending: Arc::default(),
                running_jobs: Arc::new(tokio::sync::Semaphore::new(jobs::MAX_RUNNING)),
            }),
        }
    }

    pub fn config(&self) -> &CloudConfig {
        &self.inner.config
    }

    /// Operators and their API tokens.
    pub fn team(&self) -> &Team {
        &self.inner.team
    }

    pub fn auditor(&self) -> &Auditor {
        &self.inner.auditor
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn device_layer(&self) -> &Devices {
        &self.inner.devices
    }

    fn event_limiter(&self) -> &notify::EventLimiter {
        &self.inner.event_limiter
    }
}
