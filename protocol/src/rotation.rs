//! Rotating a device's key on a live connection.
//!
//! ```text
//! device → cloud  device.rotate_key           {public_key, proof}   (signed with the CURRENT key)
//! cloud  → device   its result                {status: "rotated", fingerprint}
//! cloud  → device  device.rotate_key_required  {}                   (an operator asks for a rotation)
//! ```
//!
//! The request is signed with the key being replaced, which proves the
//! sender holds it; the `proof` is a signature by the NEW key, which proves
//! the sender holds that one too. The proof covers a domain-separated input
//! ([`proof_input`]) naming the device, the fingerprint of the key being
//! replaced, the new key and the request's own `meta.nonce`, so that it is
//! worth nothing in another request, for another device or from another key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::keys::{self, PrivateKey, PublicKey};
use crate::message::Message;

/// Device → cloud request replacing the device's key.
pub const ROTATE_KEY: &str = "device.rotate_key";
/// Cloud → device request: an operator requires the device to rotate its key.
pub const ROTATE_KEY_REQUIRED: &str = "device.rotate_key_required";

/// Prefix of the bytes a proof signs: never a prefix of another signed input
/// (messages are signed after `signed-jsonrpc.v1\n`).
pub const PROOF_TAG: &[u8] = b"signed-jsonrpc.v1 device.rotate_key proof\n";

/// Longest `public_key` read: an Ed25519 SPKI PEM is 113 bytes; room for
/// other line endings and surrounding whitespace, and no more.
pub const MAX_PUBLIC_KEY_PEM_BYTES: usize = 512;
/// An Ed25519 signature in base64url without padding.
const PROOF_CHARS: usize = 86;

/// The bytes the proof signs: [`PROOF_TAG`], then the RFC 8785 form of
/// `{device_id, old_fingerprint, new_public_key, nonce}` (the new key as
/// canonical SPKI PEM, the nonce as in `meta.nonce`).
pub fn proof_input(
    device_id: &str,
    old_fingerprint: &str,
    new_public_key_pem: &str,
    nonce: &str,
) -> Vec<u8> {
    let fields = json!({
        "device_id": device_id,
        "old_fingerprint": old_fingerprint,
        "new_public_key": new_public_key_pem,
        "nonce": nonce,
    });
    let mut bytes = PROOF_TAG.to_vec();
    serde_json_canonicalizer::to_writer(&fields, &mut bytes)
        .expect("a JSON object always canonicalizes");
    bytes
}

/// The params of `device.rotate_key`: `{public_key, proof}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateKeyParams {
    pub key: PublicKey,
    /// The key in its canonical PEM form.
    pub public_key_pem: String,
    pub proof: Signature,
}

/// Why a rotation is refused: the label (`data.reason`) and what an operator reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationRefusal {
    #[error("params: {0}")]
    Malformed(String),
    #[error("the new key is the current key")]
    SameKey,
    #[error("the proof does not verify with the new key for this device, key and request")]
    BadProof,
}

impl RotationRefusal {
    /// The stable label sent as `data.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            RotationRefusal::Malformed(_) => "bad_rotation_params",
            RotationRefusal::SameKey => "same_key",
            RotationRefusal::BadProof => "bad_rotation_proof",
        }
    }
}

impl RotateKeyParams {
    /// The params of a request whose `meta.nonce` will be `nonce`, by the
    /// device `device_id` replacing `current` with `next`.
    pub fn new(device_id: &str, current: &PublicKey, next: &PrivateKey, nonce: &str) -> Self {
        let key = next.verifying_key();
        let public_key_pem = keys::public_key_to_pem(&key);
        let input = proof_input(
            device_id,
            &keys::fingerprint(current),
            &public_key_pem,
            nonce,
        );
        RotateKeyParams {
            key,
            proof: next.sign(&input),
            public_key_pem,
        }
    }

    /// The `device.rotate_key` request carrying them, under `id`.
    pub fn request(&self, id: impl Into<Value>) -> Message {
        let params = json!({
            "public_key": self.public_key_pem,
            "proof": URL_SAFE_NO_PAD.encode(self.proof.to_bytes()),
        });
        Message::request(id, ROTATE_KEY, params)
    }

    /// Reads the params strictly: an object with exactly `public_key` (an
    /// Ed25519 SPKI PEM of at most [`MAX_PUBLIC_KEY_PEM_BYTES`]) and `proof`
    /// (64 bytes of base64url).
    pub fn read(params: Option<&Value>) -> Result<Self, RotationRefusal> {
        let malformed = |why: String| RotationRefusal::Malformed(why);
        let params = params
            .and_then(Value::as_object)
            .ok_or_else(|| malformed("must be an object with public_key and proof".into()))?;
        if let Some(other) = params
            .keys()
            .find(|name| !["public_key", "proof"].contains(&name.as_str()))
        {
            return Err(malformed(format!("unknown member {other:?}")));
        }
        let text = |name: &str| params.get(name).and_then(Value::as_str);
        let pem = text("public_key")
            .ok_or_else(|| malformed("public_key must be a PEM string".into()))?;
        if pem.len() > MAX_PUBLIC_KEY_PEM_BYTES {
            return Err(malformed(format!(
                "public_key must be at most {MAX_PUBLIC_KEY_PEM_BYTES} bytes"
            )));
        }
        let key = keys::public_key_from_pem(pem)
            .map_err(|e| malformed(format!("public_key is not an Ed25519 SPKI PEM key: {e}")))?;
        let proof = text("proof")
            .filter(|proof| proof.len() == PROOF_CHARS)
            .and_then(|proof| URL_SAFE_NO_PAD.decode(proof).ok())
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .map(|bytes| Signature::from_bytes(&bytes))
            .ok_or_else(|| malformed("proof must be 64 bytes of base64url".into()))?;
        Ok(RotateKeyParams {
            public_key_pem: keys::public_key_to_pem(&key),
            key,
            proof,
        })
    }

    /// Checks the rotation of `device_id` away from `current`, in the
    /// verified request whose `meta.nonce` is `nonce`.
    pub fn verify(
        &self,
        device_id: &str,
        current: &PublicKey,
        nonce: &str,
    ) -> Result<(), RotationRefusal> {
        if self.key == *current {
            return Err(RotationRefusal::SameKey);
        }
        let input = proof_input(
            device_id,
            &keys::fingerprint(current),
            &self.public_key_pem,
            nonce,
        );
        self.key
            .verify_strict(&input, &self.proof)
            .map_err(|_| RotationRefusal::BadProof)
    }
}

/// The result of a rotation: `{status: "rotated", fingerprint}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotated {
    pub status: RotatedStatus,
    /// The fingerprint of the key now registered.
    pub fingerprint: String,
}

/// The one status of [`Rotated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotatedStatus {
    Rotated,
}

impl Rotated {
    pub fn new(key: &PublicKey) -> Self {
        Rotated {
            status: RotatedStatus::Rotated,
            fingerprint: keys::fingerprint(key),
        }
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a result serializes")
    }

    /// Reads a verified result; extra members are ignored.
    pub fn read(result: Value) -> Result<Self, String> {
        serde_json::from_value(result).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "WlpaWlpaWlpaWlpaWlpaWg";

    fn rotation() -> (PublicKey, PrivateKey, RotateKeyParams) {
        let current = keys::generate().verifying_key();
        let next = keys::generate();
        let params = RotateKeyParams::new("d-1", &current, &next, NONCE);
        (current, next, params)
    }

    fn wire(params: &RotateKeyParams) -> Value {
        let Message::Request { params, .. } = params.request("d-1") else {
            panic!("a request")
        };
        params.expect("params")
    }

    #[test]
    fn what_a_device_sends_the_cloud_reads_and_verifies() {
        let (current, next, sent) = rotation();
        let read = RotateKeyParams::read(Some(&wire(&sent))).unwrap();
        assert_eq!(read, sent);
        assert_eq!(read.key, next.verifying_key());
        assert_eq!(read.verify("d-1", &current, NONCE), Ok(()));
    }

    #[test]
    fn a_proof_is_worth_nothing_for_another_device_key_or_request() {
        let (current, _, sent) = rotation();
        let other = keys::generate().verifying_key();
        for (device, key, nonce) in [
            ("d-2", &current, NONCE),
            ("d-1", &other, NONCE),
            ("d-1", &current, "AAAAAAAAAAAAAAAAAAAAAA"),
        ] {
            assert_eq!(
                sent.verify(device, key, nonce),
                Err(RotationRefusal::BadProof),
                "{device} {nonce}"
            );
        }
    }

    #[test]
    fn a_proof_by_another_key_than_the_new_one_is_refused() {
        let current = keys::generate().verifying_key();
        let mut sent = RotateKeyParams::new("d-1", &current, &keys::generate(), NONCE);
        sent.key = keys::generate().verifying_key();
        sent.public_key_pem = keys::public_key_to_pem(&sent.key);
        assert_eq!(
            sent.verify("d-1", &current, NONCE),
            Err(RotationRefusal::BadProof)
        );
    }

    #[test]
    fn the_current_key_is_no_new_key() {
        let current = keys::generate();
        let sent = RotateKeyParams::new("d-1", &current.verifying_key(), &current, NONCE);
        assert_eq!(
            sent.verify("d-1", &current.verifying_key(), NONCE),
            Err(RotationRefusal::SameKey)
        );
    }

    #[test]
    fn malformed_params_are_refused_with_what_is_wrong() {
        let (_, _, sent) = rotation();
        let good = wire(&sent);
        let with = |name: &str, value: Value| {
            let mut params = good.clone();
            params[name] = value;
            params
        };
        for (params, says) in [
            (json!("nope"), "must be an object"),
            (with("extra", json!(1)), "unknown member"),
            (with("public_key", json!(3)), "public_key must be"),
            (with("public_key", json!("x".repeat(513))), "at most 512"),
            (with("public_key", json!("not a key")), "not an Ed25519"),
            (with("proof", json!("AAAA")), "proof must be"),
            (
                with(
                    "proof",
                    json!(format!("{}=", &good["proof"].as_str().unwrap()[..85])),
                ),
                "proof must be",
            ),
        ] {
            let refusal = RotateKeyParams::read(Some(&params)).unwrap_err();
            assert_eq!(refusal.reason(), "bad_rotation_params");
            assert!(refusal.to_string().contains(says), "{params}: {refusal}");
        }
        assert!(RotateKeyParams::read(None).is_err());
    }

    #[test]
    fn the_result_reads_back() {
        let key = keys::generate().verifying_key();
        let result = Rotated::new(&key);
        assert_eq!(
            result.to_value(),
            json!({"status": "rotated", "fingerprint": keys::fingerprint(&key)})
        );
        assert_eq!(Rotated::read(result.to_value()), Ok(result));
        assert!(Rotated::read(json!({"status": "pending", "fingerprint": "x"})).is_err());
    }
}
