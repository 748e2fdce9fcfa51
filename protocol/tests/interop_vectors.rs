//! The committed interop vectors: another implementation of the protocol can
//! check itself against these files; this test checks ours. Where `openssl` is
//! installed, it also verifies each signature independently of our code.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::SigningKey;
use protocol::{
    canonical_signing_bytes, keys, parse_frame, sign, verify, Expectation, Message, Meta,
};
use serde_json::Value;

fn vectors() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "vectors missing in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            (path, value)
        })
        .collect()
}

#[test]
fn canonical_bytes_and_signatures_match_the_vectors() {
    for (path, v) in vectors() {
        let key = SigningKey::from_pkcs8_pem(v["private_key_pkcs8_pem"].as_str().unwrap()).unwrap();
        let public = keys::public_key_from_pem(v["public_key_pem"].as_str().unwrap()).unwrap();
        assert_eq!(key.verifying_key(), public, "{}", path.display());

        let unsigned = v["unsigned_message"].as_object().unwrap();
        let bytes = canonical_signing_bytes(unsigned);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            v["signed_bytes_utf8"].as_str().unwrap(),
            "{}",
            path.display()
        );

        // Re-signing the same message with the same nonce and time gives the same signature.
        let mut frame = v["signed_message"].as_object().unwrap().clone();
        let meta: Meta = serde_json::from_value(frame.remove("meta").unwrap()).unwrap();
        let message = Message::from_value(frame).unwrap();
        let nonce: [u8; 16] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&meta.nonce)
            .unwrap()
            .try_into()
            .unwrap();
        let resigned = sign(
            &message,
            &key,
            &meta.signer_id,
            &meta.audience_id,
            meta.direction,
            nonce,
            meta.timestamp,
        );
        assert_eq!(
            resigned["meta"]["signature"],
            v["signature"],
            "{}",
            path.display()
        );

        let text = v["signed_message"].to_string();
        let verified = verify(
            parse_frame(&text, 1 << 20).unwrap(),
            &Expectation {
                signer_id: &meta.signer_id,
                keys: std::slice::from_ref(&public),
                audience_id: &meta.audience_id,
                direction: meta.direction,
                skew_ms: 60_000,
                now_ms: meta.timestamp,
            },
        );
        assert!(verified.is_ok(), "{}: {verified:?}", path.display());
    }
}

#[test]
fn openssl_agrees_with_the_vector_signatures() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not installed; independent check skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (path, v) in vectors() {
        let public = dir.path().join("public.pem");
        let data = dir.path().join("data");
        let signature = dir.path().join("sig");
        std::fs::write(&public, v["public_key_pem"].as_str().unwrap()).unwrap();
        std::fs::write(&data, v["signed_bytes_utf8"].as_str().unwrap()).unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v["signature"].as_str().unwrap())
            .unwrap();
        std::fs::write(&signature, raw).unwrap();
        let out = Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(&public)
            .arg("-in")
            .arg(&data)
            .arg("-sigfile")
            .arg(&signature)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: openssl says {}",
            path.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
