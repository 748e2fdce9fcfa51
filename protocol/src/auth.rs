//! The authentication handshake: its methods, and the params of
//! `device.authenticate` as a receiver reads them from a party that has
//! proven nothing yet.

use serde_json::Value;

use crate::keys::{self, PublicKey};
use crate::method::{is_valid_device_id, MAX_DEVICE_ID_LEN};

/// Cloud → device notification opening the handshake.
pub const CHALLENGE: &str = "auth.challenge";
/// Cloud → device notification announcing a registry status change.
pub const STATUS: &str = "auth.status";
/// Default device → cloud method proving possession of the device key.
pub const DEFAULT_AUTHENTICATE: &str = "device.authenticate";

/// The params of `device.authenticate`:
/// `{device_id, public_key, challenge, bridge_version}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticateParams {
    pub device_id: String,
    pub key: PublicKey,
    /// The key in its canonical PEM form, whatever padding the device sent.
    pub public_key_pem: String,
    pub challenge: Option<String>,
    pub bridge_version: Option<String>,
}

impl AuthenticateParams {
    /// Reads the params strictly: a valid device id, an Ed25519 SPKI PEM key,
    /// and a bridge version of at most `max_version` bytes of printable
    /// ASCII. The error says what is wrong, for the answer.
    pub fn read(params: Option<&Value>, max_version: usize) -> Result<Self, String> {
        let params = params.and_then(Value::as_object).ok_or(
            "params must be an object with device_id, public_key, challenge and bridge_version",
        )?;
        let text = |name: &str| params.get(name).and_then(Value::as_str).map(str::to_owned);
        let device_id = text("device_id").ok_or("params.device_id must be a string")?;
        if !is_valid_device_id(&device_id) {
            return Err(format!(
                "params.device_id must be 1 to {MAX_DEVICE_ID_LEN} characters of A-Z a-z 0-9 . _ -"
            ));
        }
        let presented = text("public_key").ok_or("params.public_key must be a PEM string")?;
        let key = keys::public_key_from_pem(&presented)
            .map_err(|e| format!("params.public_key is not an Ed25519 SPKI PEM key: {e}"))?;
        let bridge_version = text("bridge_version");
        if let Some(version) = &bridge_version {
            if version.len() > max_version || !version.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "params.bridge_version must be at most {max_version} printable ASCII characters"
                ));
            }
        }
        Ok(AuthenticateParams {
            device_id,
            public_key_pem: keys::public_key_to_pem(&key),
            key,
            challenge: text("challenge"),
            bridge_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_valid_params_and_keeps_the_key_canonical() {
        let key = keys::generate().verifying_key();
        let pem = keys::public_key_to_pem(&key);
        let padded = format!("\n\n{pem}\n");
        let params = json!({"device_id": "d-1", "public_key": padded, "challenge": "c",
                            "bridge_version": "0.1.0"});
        let read = AuthenticateParams::read(Some(&params), 64).unwrap();
        assert_eq!(
            (
                read.device_id.as_str(),
                read.key,
                read.public_key_pem.as_str()
            ),
            ("d-1", key, pem.as_str())
        );
    }

    #[test]
    fn refuses_bad_ids_keys_and_versions() {
        let pem = keys::public_key_to_pem(&keys::generate().verifying_key());
        for (params, says) in [
            (json!("not an object"), "must be an object"),
            (json!({"device_id": "a/b", "public_key": pem}), "device_id"),
            (
                json!({"device_id": "d", "public_key": "nope"}),
                "public_key",
            ),
            (
                json!({"device_id": "d", "public_key": pem, "bridge_version": "x".repeat(65)}),
                "bridge_version",
            ),
            (
                json!({"device_id": "d", "public_key": pem, "bridge_version": "1.0\n"}),
                "bridge_version",
            ),
        ] {
            let error = AuthenticateParams::read(Some(&params), 64).unwrap_err();
            assert!(error.contains(says), "{params}: {error}");
        }
    }
}
