//! The authentication handshake: its methods and their payloads.
//!
//! ```text
//! cloud  → device  auth.challenge       {challenge}                 (signed for anyone)
//! device → cloud   device.authenticate  {device_id, public_key, challenge, bridge_version, cloud_keys?}
//! cloud  → device    its result         {status}
//! cloud  → device  auth.status          {status}                    (an operator decided)
//! ```
//!
//! The cloud reads `device.authenticate` from a party that has proven nothing
//! yet, so its params are read strictly ([`AuthenticateParams::read`]).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::keys::{self, PublicKey};
use crate::message::Message;
use crate::method::{is_valid_device_id, MAX_DEVICE_ID_LEN};

/// Cloud → device notification opening the handshake.
pub const CHALLENGE: &str = "auth.challenge";
/// Cloud → device notification announcing a registry status change.
pub const STATUS: &str = "auth.status";
/// Default device → cloud method proving possession of the device key.
pub const DEFAULT_AUTHENTICATE: &str = "device.authenticate";

/// The params of `auth.challenge`: a single-use value the device signs back,
/// so that a recorded authentication is worth nothing on another connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub challenge: String,
}

impl Challenge {
    /// 32 random bytes, base64url without padding: one per connection.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Challenge {
            challenge: URL_SAFE_NO_PAD.encode(bytes),
        }
    }

    /// The `auth.challenge` notification carrying it.
    pub fn notification(&self) -> Message {
        Message::notification(CHALLENGE, to_value(self))
    }

    /// Reads the params of a verified `auth.challenge`.
    pub fn read(params: Option<Value>) -> Result<Self, String> {
        read(params)
    }
}

/// Where a device stands in the cloud's registry: pending until an operator
/// accepts or rejects its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthStatus {
    /// Its key is known but no operator has decided yet; it may only wait.
    Pending,
    Accepted,
    Rejected,
}

impl AuthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthStatus::Pending => "pending",
            AuthStatus::Accepted => "accepted",
            AuthStatus::Rejected => "rejected",
        }
    }
}

impl fmt::Display for AuthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuthStatus {
    /// The text that names no status.
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [
            AuthStatus::Pending,
            AuthStatus::Accepted,
            AuthStatus::Rejected,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
        .ok_or_else(|| format!("unknown auth status {text:?}"))
    }
}

/// The result of `device.authenticate` and the params of `auth.status`:
/// the device's status, as the cloud tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub status: AuthStatus,
}

impl StatusReport {
    /// The answer to the `device.authenticate` request `id`.
    pub fn result(self, id: Value) -> Message {
        Message::result(id, to_value(&self))
    }

    /// The `auth.status` notification carrying it.
    pub fn notification(self) -> Message {
        Message::notification(STATUS, to_value(&self))
    }

    /// Reads the result of a verified authentication, or the params of a
    /// verified `auth.status`.
    pub fn read(payload: Option<Value>) -> Result<Self, String> {
        read(payload)
    }
}

fn to_value(payload: &impl Serialize) -> Value {
    serde_json::to_value(payload).expect("a payload serializes")
}

/// A payload of a verified message; extra members are ignored, so that a
/// newer peer may add some.
fn read<T: DeserializeOwned>(payload: Option<Value>) -> Result<T, String> {
    serde_json::from_value(payload.unwrap_or(Value::Null)).map_err(|e| e.to_string())
}

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
    /// The fingerprints of the cloud keys the device trusts, the most
    /// recently trusted first (see [`crate::cloud_keys`]); optional, so that
    /// the cloud tells a device that does not say from one that trusts none.
    pub cloud_keys: Option<Vec<String>>,
}

impl AuthenticateParams {
    /// The params a device sends: its id and key, the challenge it answers,
    /// and the version of its bridge.
    pub fn new(device_id: &str, key: PublicKey, challenge: &str, bridge_version: &str) -> Self {
        AuthenticateParams {
            device_id: device_id.to_owned(),
            public_key_pem: keys::public_key_to_pem(&key),
            key,
            challenge: Some(challenge.to_owned()),
            bridge_version: Some(bridge_version.to_owned()),
            cloud_keys: None,
        }
    }

    /// Says which cloud keys the device trusts (see [`Self::cloud_keys`]).
    pub fn trusting(mut self, cloud_keys: &[PublicKey]) -> Self {
        self.cloud_keys = Some(cloud_keys.iter().map(keys::fingerprint).collect());
        self
    }

    /// The authentication request `method` (see [`DEFAULT_AUTHENTICATE`])
    /// carrying them, under `id`.
    pub fn request(&self, id: impl Into<Value>, method: &str) -> Message {
        let mut params = Map::new();
        params.insert("device_id".into(), self.device_id.clone().into());
        params.insert("public_key".into(), self.public_key_pem.clone().into());
        for (name, value) in [
            ("challenge", &self.challenge),
            ("bridge_version", &self.bridge_version),
        ] {
            if let Some(value) = value {
                params.insert(name.into(), value.clone().into());
            }
        }
        if let Some(cloud_keys) = &self.cloud_keys {
            params.insert("cloud_keys".into(), cloud_keys.clone().into());
        }
        Message::request(id, method, Value::Object(params))
    }

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
        let cloud_keys = crate::cloud_keys::read_fingerprints(params.get("cloud_keys"))?;
        Ok(AuthenticateParams {
            device_id,
            public_key_pem: keys::public_key_to_pem(&key),
            key,
            challenge: text("challenge"),
            bridge_version,
            cloud_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn what_a_device_sends_the_cloud_reads_back() {
        let key = keys::generate().verifying_key();
        let sent = AuthenticateParams::new("d-1", key, "c", "0.1.0");
        let Message::Request { id, method, params } = sent.request("auth-1", DEFAULT_AUTHENTICATE)
        else {
            panic!("not a request");
        };
        assert_eq!(
            (id, method.as_str()),
            (json!("auth-1"), DEFAULT_AUTHENTICATE)
        );
        assert_eq!(AuthenticateParams::read(params.as_ref(), 64), Ok(sent));
    }

    #[test]
    fn the_cloud_keys_a_device_trusts_are_read_back_when_it_says() {
        let key = keys::generate().verifying_key();
        let cloud = [
            keys::generate().verifying_key(),
            keys::generate().verifying_key(),
        ];
        let sent = AuthenticateParams::new("d-1", key, "c", "0.1.0").trusting(&cloud);
        let Message::Request { params, .. } = sent.request("auth-1", DEFAULT_AUTHENTICATE) else {
            panic!("not a request");
        };
        let read = AuthenticateParams::read(params.as_ref(), 64).unwrap();
        assert_eq!(
            read.cloud_keys,
            Some(cloud.iter().map(keys::fingerprint).collect())
        );
        let mut params = params.unwrap();
        params["cloud_keys"] = json!(["not a fingerprint"]);
        let error = AuthenticateParams::read(Some(&params), 64).unwrap_err();
        assert!(error.contains("cloud_keys"), "{error}");
    }

    #[test]
    fn challenges_are_fresh_and_read_back() {
        let challenge = Challenge::random();
        assert_ne!(challenge, Challenge::random());
        assert_eq!(challenge.challenge.len(), 43, "32 bytes of base64url");
        let Message::Notification { method, params } = challenge.notification() else {
            panic!("not a notification");
        };
        assert_eq!(method, CHALLENGE);
        assert_eq!(Challenge::read(params), Ok(challenge));
        assert!(Challenge::read(None).is_err());
        assert!(Challenge::read(Some(json!({"challenge": 3}))).is_err());
    }

    #[test]
    fn statuses_are_lowercase_on_the_wire_and_in_text() {
        for status in [
            AuthStatus::Pending,
            AuthStatus::Accepted,
            AuthStatus::Rejected,
        ] {
            let report = StatusReport { status };
            let wire = json!({ "status": status.as_str() });
            assert_eq!(
                report.notification(),
                Message::notification(STATUS, wire.clone())
            );
            assert_eq!(
                report.result(json!(7)),
                Message::result(json!(7), wire.clone())
            );
            assert_eq!(StatusReport::read(Some(wire)), Ok(report));
            assert_eq!(status.to_string().parse(), Ok(status));
        }
        let unknown = StatusReport::read(Some(json!({"status": "maybe"}))).unwrap_err();
        assert!(unknown.contains("unknown variant"), "{unknown}");
        assert!(StatusReport::read(Some(json!({}))).is_err());
        assert!(StatusReport::read(None).is_err());
        assert!("Accepted".parse::<AuthStatus>().is_err());
    }

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
