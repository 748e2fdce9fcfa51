//! Signing and verifying a message: Ed25519 over the tag `signed-jsonrpc.v1\n`
//! followed by the RFC 8785 canonical form of the message without
//! `meta.signature`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rand::RngCore;
use serde_json::{Map, Value};

use crate::error::Refusal;
use crate::message::{Direction, Message, Meta};

/// Domain-separation tag prepended to the canonical bytes before signing.
pub const SIGNING_TAG: &[u8] = b"signed-jsonrpc.v1\n";
/// The only signature algorithm of v1.
pub const ALGORITHM: &str = "ed25519";
/// Default allowed clock skew between signer and receiver.
pub const DEFAULT_SKEW_MS: u64 = 60_000;

/// The bytes a signature covers: the tag, then the JCS form of `unsigned`
/// (a whole message whose `meta` has no `signature`).
pub fn canonical_signing_bytes(unsigned: &Map<String, Value>) -> Vec<u8> {
    let mut bytes = SIGNING_TAG.to_vec();
    serde_json_canonicalizer::to_writer(unsigned, &mut bytes)
        .expect("a JSON map always canonicalizes");
    bytes
}

/// Signs `message` as `signer_id` for `audience_id`; pure (nonce and now given).
pub fn sign(
    message: &Message,
    key: &SigningKey,
    signer_id: &str,
    audience_id: &str,
    direction: Direction,
    nonce: [u8; 16],
    now_ms: u64,
) -> Map<String, Value> {
    let mut meta = Meta {
        signer_id: signer_id.to_owned(),
        audience_id: audience_id.to_owned(),
        direction,
        nonce: nonce_text(&nonce),
        timestamp: now_ms,
        algorithm: ALGORITHM.to_owned(),
        signature: String::new(),
    };
    let mut map = message.to_value();
    map.insert("meta".into(), meta_value(&meta));
    let signature = key.sign(&canonical_signing_bytes(&map));
    meta.signature = URL_SAFE_NO_PAD.encode(signature.to_bytes());
    map.insert("meta".into(), meta_value(&meta));
    map
}

fn meta_value(meta: &Meta) -> Value {
    serde_json::to_value(meta).expect("meta serializes")
}

/// A signing identity: an id and its private key.
#[derive(Clone)]
pub struct Signer {
    id: String,
    key: SigningKey,
}

impl Signer {
    pub fn new(id: impl Into<String>, key: SigningKey) -> Self {
        Signer { id: id.into(), key }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs with a fresh random nonce and returns the frame text.
    pub fn sign_to_text(
        &self,
        message: &Message,
        audience_id: &str,
        direction: Direction,
        now_ms: u64,
    ) -> String {
        self.sign_to_text_with_nonce(message, audience_id, direction, random_nonce(), now_ms)
    }

    /// Signs with `nonce`, which the sender drew (see [`random_nonce`]) because
    /// something inside the message refers to it; returns the frame text.
    pub fn sign_to_text_with_nonce(
        &self,
        message: &Message,
        audience_id: &str,
        direction: Direction,
        nonce: [u8; 16],
        now_ms: u64,
    ) -> String {
        let map = sign(
            message,
            &self.key,
            &self.id,
            audience_id,
            direction,
            nonce,
            now_ms,
        );
        Value::Object(map).to_string()
    }
}

/// A fresh nonce from the operating system's random generator.
pub fn random_nonce() -> [u8; 16] {
    let mut nonce = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// The text form of a nonce in `meta.nonce`: base64url without padding.
pub fn nonce_text(nonce: &[u8; 16]) -> String {
    URL_SAFE_NO_PAD.encode(nonce)
}

/// What the receiver requires of a message.
#[derive(Debug, Clone, Copy)]
pub struct Expectation<'a> {
    /// The only signer this receiver accepts here.
    pub signer_id: &'a str,
    /// The keys that signer may sign with, the most recently trusted first:
    /// a signature by any of them verifies.
    pub keys: &'a [VerifyingKey],
    /// The receiver's own id (or `*` for the cloud's opening challenge).
    pub audience_id: &'a str,
    /// The direction that flows toward the receiver.
    pub direction: Direction,
    pub skew_ms: u64,
    pub now_ms: u64,
}

/// A message that passed every check but the replay guard, which the caller
/// applies to `meta` next.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub message: Message,
    pub meta: Meta,
    /// The key whose signature verified (one of [`Expectation::keys`]).
    pub key: VerifyingKey,
}

/// Verifies a parsed frame (see [`crate::parse_frame`]).
pub fn verify(mut frame: Map<String, Value>, expect: &Expectation) -> Result<Verified, Refusal> {
    let raw_meta = frame.remove("meta").ok_or(Refusal::MissingMeta)?;
    let mut meta: Meta =
        serde_json::from_value(raw_meta).map_err(|e| Refusal::BadMeta(e.to_string()))?;
    let message = Message::from_value(frame.clone())?;

    if meta.algorithm != ALGORITHM {
        return Err(Refusal::UnsupportedAlgorithm(meta.algorithm));
    }
    if meta.signer_id != expect.signer_id {
        return Err(Refusal::WrongSigner {
            expected: expect.signer_id.to_owned(),
            found: meta.signer_id,
        });
    }
    let nonce = URL_SAFE_NO_PAD
        .decode(&meta.nonce)
        .map_err(|_| Refusal::BadMeta("nonce is not base64url".into()))?;
    if nonce.len() != 16 {
        return Err(Refusal::BadMeta("nonce must be 16 bytes".into()));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(&meta.signature)
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .map(|bytes| Signature::from_bytes(&bytes))
        .ok_or_else(|| Refusal::BadMeta("signature must be 64 bytes of base64url".into()))?;
    let signature_text = std::mem::take(&mut meta.signature);
    frame.insert("meta".into(), meta_value(&meta));
    let signed = canonical_signing_bytes(&frame);
    let key = *expect
        .keys
        .iter()
        .find(|key| key.verify_strict(&signed, &signature).is_ok())
        .ok_or(Refusal::BadSignature)?;
    meta.signature = signature_text;

    if meta.audience_id != expect.audience_id {
        return Err(Refusal::WrongAudience {
            expected: expect.audience_id.to_owned(),
            found: meta.audience_id,
        });
    }
    if meta.direction != expect.direction {
        return Err(Refusal::WrongDirection {
            expected: expect.direction.as_str().to_owned(),
            found: meta.direction.as_str().to_owned(),
        });
    }
    if meta.timestamp + expect.skew_ms < expect.now_ms {
        return Err(Refusal::Stale {
            age_ms: expect.now_ms - meta.timestamp,
            skew_ms: expect.skew_ms,
        });
    }
    if meta.timestamp > expect.now_ms + expect.skew_ms {
        return Err(Refusal::Future {
            ahead_ms: meta.timestamp - expect.now_ms,
            skew_ms: expect.skew_ms,
        });
    }
    Ok(Verified { message, meta, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_frame;
    use serde_json::json;

    const NOW: u64 = 1_763_780_000_123;

    fn cloud_key() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    fn signed(message: &Message) -> Map<String, Value> {
        sign(
            message,
            &cloud_key(),
            "cloud-dashboard",
            "device-001",
            Direction::CloudToDevice,
            [9; 16],
            NOW,
        )
    }

    fn check(frame: Map<String, Value>) -> Result<Verified, Refusal> {
        let key = cloud_key().verifying_key();
        verify(
            frame,
            &Expectation {
                signer_id: "cloud-dashboard",
                keys: std::slice::from_ref(&key),
                audience_id: "device-001",
                direction: Direction::CloudToDevice,
                skew_ms: 60_000,
                now_ms: NOW,
            },
        )
    }

    fn list() -> Message {
        Message::request("c-17", "containers.list", json!({"all": true}))
    }

    #[test]
    fn a_signed_message_verifies_through_text() {
        let text = Value::Object(signed(&list())).to_string();
        let verified = check(parse_frame(&text, 1 << 20).unwrap()).unwrap();
        assert_eq!(verified.message, list());
        assert_eq!(verified.meta.signer_id, "cloud-dashboard");
    }

    #[test]
    fn every_byte_of_payload_and_meta_is_covered() {
        let mut frame = signed(&list());
        frame["params"]["all"] = json!(false);
        assert_eq!(check(frame), Err(Refusal::BadSignature));

        for (field, value) in [
            ("nonce", json!("AAAAAAAAAAAAAAAAAAAAAA")),
            ("audience_id", json!("device-002")),
            ("direction", json!("device_to_cloud")),
            ("timestamp", json!(NOW + 1)),
        ] {
            let mut frame = signed(&list());
            frame["meta"][field] = value;
            assert_eq!(check(frame), Err(Refusal::BadSignature), "{field}");
        }
    }

    #[test]
    fn member_order_and_whitespace_do_not_matter() {
        let frame = signed(&list());
        let mut text = String::from("{ ");
        let mut entries: Vec<_> = frame.iter().collect();
        entries.reverse();
        for (i, (k, v)) in entries.iter().enumerate() {
            if i > 0 {
                text.push_str(" ,\n ");
            }
            text.push_str(&format!(
                "{} : {}",
                json!(k),
                serde_json::to_string_pretty(v).unwrap()
            ));
        }
        text.push('}');
        assert!(check(parse_frame(&text, 1 << 20).unwrap()).is_ok());
    }

    #[test]
    fn each_meta_rule_is_enforced() {
        let other = SigningKey::from_bytes(&[2; 32]);
        let by = |key: &SigningKey, signer: &str, audience: &str, dir, ts| {
            sign(&list(), key, signer, audience, dir, [3; 16], ts)
        };
        let c2d = Direction::CloudToDevice;
        let k = cloud_key();
        let reason = |f| check(f).unwrap_err().reason();
        assert_eq!(
            reason(by(&other, "cloud-dashboard", "device-001", c2d, NOW)),
            "bad_signature"
        );
        assert_eq!(
            reason(by(&k, "mallory", "device-001", c2d, NOW)),
            "wrong_signer"
        );
        assert_eq!(
            reason(by(&k, "cloud-dashboard", "device-002", c2d, NOW)),
            "wrong_audience"
        );
        assert_eq!(
            reason(by(&k, "cloud-dashboard", "*", c2d, NOW)),
            "wrong_audience"
        );
        assert_eq!(
            reason(by(
                &k,
                "cloud-dashboard",
                "device-001",
                Direction::DeviceToCloud,
                NOW
            )),
            "wrong_direction"
        );
        assert_eq!(
            reason(by(&k, "cloud-dashboard", "device-001", c2d, NOW - 60_001)),
            "stale"
        );
        assert_eq!(
            reason(by(&k, "cloud-dashboard", "device-001", c2d, NOW + 60_001)),
            "future"
        );
        assert!(check(by(&k, "cloud-dashboard", "device-001", c2d, NOW - 60_000)).is_ok());
        assert!(check(by(&k, "cloud-dashboard", "device-001", c2d, NOW + 60_000)).is_ok());
    }

    #[test]
    fn missing_or_foreign_meta_is_refused() {
        let mut frame = signed(&list());
        frame.remove("meta");
        assert_eq!(check(frame), Err(Refusal::MissingMeta));

        let mut frame = signed(&list());
        frame["meta"]["algorithm"] = json!("hmac-sha256");
        assert_eq!(check(frame).unwrap_err().reason(), "unsupported_algorithm");

        let mut frame = signed(&list());
        frame["meta"]["extra"] = json!(1);
        assert_eq!(check(frame).unwrap_err().reason(), "bad_meta");
    }
}
