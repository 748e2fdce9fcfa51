//! Operations on a device's key after it was accepted: requiring the device
//! to rotate it. The rotation itself is the device's (`device.rotate_key`,
//! `crate::device::served`); this records that an operator wants one and asks
//! the device for it.

use protocol::now_ms;
use protocol::rotation::ROTATE_KEY_REQUIRED;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::device::CallError;

use super::{Caller, OpError, Operations, Permission};

/// How long an admin's request waits for the device to take the rotation
/// up; a device slower than that is asked again when it next connects.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The audit log's name of [`Operations::require_rotation`].
const REQUIRE_ROTATION: &str = "device.require_key_rotation";

/// What [`Operations::require_rotation`] did.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotationRequired {
    pub device_id: String,
    /// The key to be replaced; the device view shows another fingerprint
    /// once the device has rotated.
    pub fingerprint: String,
    /// When the rotation was required (ms since the epoch).
    pub required_at: i64,
    /// Whether the device was asked now (online and accepted, and it took
    /// the request up); otherwise it is asked when it next connects.
    pub asked_now: bool,
}

impl Operations {
    /// Requires the device `id` to rotate its key (admins only): kept in the
    /// registry until the device has rotated, and asked of the device at
    /// once when it is online and accepted, or else when it next connects.
    pub async fn require_rotation(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<RotationRequired, OpError> {
        self.auditor()
            .authorize(caller, Permission::DecideKeys, REQUIRE_ROTATION, id, "")
            .await?;
        let required_at = now_ms() as i64;
        let record = self
            .store()
            .registry
            .require_key_rotation(id, required_at)
            .await?;
        let outcome = if record.is_some() {
            "ok"
        } else {
            "unknown_device"
        };
        self.auditor()
            .record_simple(&caller.name, REQUIRE_ROTATION, outcome, id)
            .await;
        let record = record.ok_or_else(|| OpError::unknown_device(id))?;
        tracing::info!(device_id = %id, operator = %caller.name, fingerprint = %record.fingerprint, "key rotation required");
        let asked = self
            .device_layer()
            .fleet()
            .call(
                id,
                ROTATE_KEY_REQUIRED,
                Some(json!({})),
                ASK_TIMEOUT.min(self.config().rpc_timeout),
            )
            .await;
        let asked_now = match asked {
            Ok(_) => true,
            Err(CallError::NotAccepted(_) | CallError::Offline) => false,
            Err(error) => {
                tracing::warn!(device_id = %id, %error, "device did not take up the key rotation; it is asked again when it next connects");
                false
            }
        };
        Ok(RotationRequired {
            device_id: record.id,
            fingerprint: record.fingerprint,
            required_at,
            asked_now,
        })
    }
}
