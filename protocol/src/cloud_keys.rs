//! Rotating the cloud's key: which cloud keys a device trusts, and the
//! requests that change them.
//!
//! ```text
//! device → cloud  device.authenticate        {…, cloud_keys: [fingerprint, …]}   (optional: what it trusts)
//! cloud  → device device.trust_cloud_key     {public_key}   → {status: "trusted", cloud_keys}
//! cloud  → device device.distrust_cloud_key  {fingerprint}  → {status: "distrusted", cloud_keys}
//! ```
//!
//! A device verifies the cloud's frames with any key it trusts (see
//! [`crate::Peer::trust_remote_key`]), so both requests are heard only when
//! signed by a key it trusts already. A device never distrusts its last key,
//! nor the key the request was signed with.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::keys::{self, PublicKey, MAX_TRUSTED_KEYS};
use crate::message::Message;
use crate::rotation::MAX_PUBLIC_KEY_PEM_BYTES;

/// Cloud → device request: trust one more cloud key.
pub const TRUST_CLOUD_KEY: &str = "device.trust_cloud_key";
/// Cloud → device request: stop trusting a cloud key.
pub const DISTRUST_CLOUD_KEY: &str = "device.distrust_cloud_key";

/// Whether `text` is a key fingerprint ([`keys::fingerprint`]): `SHA256:`
/// and 43 characters of unpadded standard base64.
pub fn is_fingerprint(text: &str) -> bool {
    text.strip_prefix("SHA256:").is_some_and(|digest| {
        digest.len() == 43
            && digest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    })
}

/// Reads the optional `cloud_keys` of `device.authenticate`: at most
/// [`MAX_TRUSTED_KEYS`] fingerprints.
pub fn read_fingerprints(value: Option<&Value>) -> Result<Option<Vec<String>>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let refused = || {
        format!("params.cloud_keys must be an array of at most {MAX_TRUSTED_KEYS} key fingerprints")
    };
    let list = value.as_array().ok_or_else(refused)?;
    if list.len() > MAX_TRUSTED_KEYS {
        return Err(refused());
    }
    list.iter()
        .map(|item| {
            item.as_str()
                .filter(|text| is_fingerprint(text))
                .map(str::to_owned)
                .ok_or_else(refused)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The params of `device.trust_cloud_key`: `{public_key}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustCloudKey {
    pub key: PublicKey,
}

impl TrustCloudKey {
    /// The request carrying it, under `id`.
    pub fn request(&self, id: impl Into<Value>) -> Message {
        let params = json!({ "public_key": keys::public_key_to_pem(&self.key) });
        Message::request(id, TRUST_CLOUD_KEY, params)
    }

    /// Reads the params strictly: exactly `public_key`, an Ed25519 SPKI PEM
    /// of at most [`MAX_PUBLIC_KEY_PEM_BYTES`].
    pub fn read(params: Option<&Value>) -> Result<Self, String> {
        let pem = only_member(params, "public_key")?;
        if pem.len() > MAX_PUBLIC_KEY_PEM_BYTES {
            return Err(format!(
                "params.public_key must be at most {MAX_PUBLIC_KEY_PEM_BYTES} bytes"
            ));
        }
        let key = keys::public_key_from_pem(pem)
            .map_err(|e| format!("params.public_key is not an Ed25519 SPKI PEM key: {e}"))?;
        Ok(TrustCloudKey { key })
    }
}

/// The params of `device.distrust_cloud_key`: `{fingerprint}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistrustCloudKey {
    pub fingerprint: String,
}

impl DistrustCloudKey {
    /// The request carrying it, under `id`.
    pub fn request(&self, id: impl Into<Value>) -> Message {
        let params = json!({ "fingerprint": self.fingerprint });
        Message::request(id, DISTRUST_CLOUD_KEY, params)
    }

    /// Reads the params strictly: exactly `fingerprint`, a key fingerprint.
    pub fn read(params: Option<&Value>) -> Result<Self, String> {
        let fingerprint = only_member(params, "fingerprint")?;
        if !is_fingerprint(fingerprint) {
            return Err("params.fingerprint must be SHA256: and 43 characters of base64".into());
        }
        Ok(DistrustCloudKey {
            fingerprint: fingerprint.to_owned(),
        })
    }
}

/// What a device answers either request with: the cloud keys it trusts now,
/// the most recently trusted first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedCloudKeys {
    /// `trusted` or `distrusted`.
    pub status: String,
    pub cloud_keys: Vec<String>,
}

impl TrustedCloudKeys {
    pub fn new(status: &str, keys: &[PublicKey]) -> Self {
        TrustedCloudKeys {
            status: status.to_owned(),
            cloud_keys: keys.iter().map(keys::fingerprint).collect(),
        }
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a result serializes")
    }

    /// Reads a verified answer; extra members are ignored.
    pub fn read(result: Value) -> Result<Self, String> {
        serde_json::from_value(result).map_err(|e| e.to_string())
    }
}

/// The one string member `name` of an object of params.
fn only_member<'a>(params: Option<&'a Value>, name: &str) -> Result<&'a str, String> {
    let params = params
        .and_then(Value::as_object)
        .ok_or_else(|| format!("params must be an object with {name}"))?;
    if let Some(other) = params.keys().find(|member| *member != name) {
        return Err(format!("params: unknown member {other:?}"));
    }
    params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("params.{name} must be a string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_recognised() {
        let fingerprint = keys::fingerprint(&keys::generate().verifying_key());
        assert!(is_fingerprint(&fingerprint));
        for not in [
            "",
            "SHA256:",
            "sha256:x",
            &fingerprint[..49],
            &format!("{fingerprint}="),
        ] {
            assert!(!is_fingerprint(not), "{not}");
        }
        let list = json!([fingerprint]);
        assert_eq!(
            read_fingerprints(Some(&list)),
            Ok(Some(vec![fingerprint.clone()]))
        );
        assert_eq!(read_fingerprints(None), Ok(None));
        assert!(read_fingerprints(Some(&json!(vec![fingerprint.clone(); 9]))).is_err());
        assert!(read_fingerprints(Some(&json!(["nope"]))).is_err());
        assert!(read_fingerprints(Some(&json!(fingerprint))).is_err());
    }

    #[test]
    fn requests_read_back_and_refuse_anything_else() {
        let key = keys::generate().verifying_key();
        let trust = TrustCloudKey { key };
        let Message::Request { method, params, .. } = trust.request("c-1") else {
            panic!("a request")
        };
        assert_eq!(method, TRUST_CLOUD_KEY);
        assert_eq!(TrustCloudKey::read(params.as_ref()), Ok(trust));
        let distrust = DistrustCloudKey {
            fingerprint: keys::fingerprint(&key),
        };
        let Message::Request { params, .. } = distrust.request("c-2") else {
            panic!("a request")
        };
        assert_eq!(DistrustCloudKey::read(params.as_ref()), Ok(distrust));

        for params in [
            json!({}),
            json!({"public_key": "x".repeat(513)}),
            json!({"public_key": "not a key"}),
            json!({"public_key": keys::public_key_to_pem(&key), "more": 1}),
        ] {
            assert!(TrustCloudKey::read(Some(&params)).is_err(), "{params}");
        }
        for params in [json!({"fingerprint": "SHA256:short"}), json!([])] {
            assert!(DistrustCloudKey::read(Some(&params)).is_err(), "{params}");
        }
    }
}
