//! What HTTP handlers hold: the operations, and the device layer for the
//! endpoints that serve it (`/ws/device`, `/metrics`).

use axum::extract::FromRef;

use crate::client_address::TrustedProxies;
use crate::device::Devices;
use crate::ops::Operations;

/// A cheap, cloneable handle for the router.
#[derive(Clone)]
pub struct AppState {
    ops: Operations,
    devices: Devices,
}

impl AppState {
    pub fn new(ops: Operations, devices: Devices) -> Self {
        AppState { ops, devices }
    }

    pub fn ops(&self) -> &Operations {
        &self.ops
    }

    pub fn devices(&self) -> &Devices {
        &self.devices
    }
}

impl FromRef<AppState> for Devices {
    fn from_ref(state: &AppState) -> Self {
        state.devices.clone()
    }
}

/// Whose `X-Forwarded-For` the client address extractor believes.
impl FromRef<AppState> for TrustedProxies {
    fn from_ref(state: &AppState) -> Self {
        TrustedProxies(state.ops.config().limits.trusted_proxies.clone())
    }
}
