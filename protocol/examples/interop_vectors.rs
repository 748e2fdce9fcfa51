//! Writes the interop test vectors in `protocol/tests/vectors/`:
//! `cargo run -p protocol --example interop_vectors -- protocol/tests/vectors`.
//! Ed25519 is deterministic, so the output is the same on every run.

use std::path::PathBuf;

use ed25519_dalek::SigningKey;
use protocol::{canonical_signing_bytes, keys, sign, Direction, Message, RpcError};
use serde_json::{json, Value};

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: interop_vectors DIR"));
    let cloud = SigningKey::from_bytes(&[0x11; 32]);
    let device = SigningKey::from_bytes(&[0x22; 32]);
    let ts = 1_763_780_000_123;
    let cases: Vec<(&str, &SigningKey, Message, &str, &str, Direction)> = vec![
        (
            "request_containers_list",
            &cloud,
            Message::request("c-17", "containers.list", json!({"all": true})),
            "cloud-dashboard",
            "device-001",
            Direction::CloudToDevice,
        ),
        (
            "notification_health_numbers_and_unicode",
            &device,
            Message::notification(
                "device.health",
                json!({"cpu_percent": 12.5, "tiny": 1e-7, "neg": -0.0, "max_safe": 9007199254740991_u64,
                       "load": [0.1, 0.25, 1.0], "note": "café ☕ \u{1F600} \"quoted\"\n", "z": null, "a": false}),
            ),
            "device-001",
            "cloud-dashboard",
            Direction::DeviceToCloud,
        ),
        (
            "response_error",
            &device,
            Message::error(
                json!(42),
                RpcError {
                    code: -32601,
                    message: "method not found".into(),
                    data: None,
                },
            ),
            "device-001",
            "cloud-dashboard",
            Direction::DeviceToCloud,
        ),
    ];
    for (name, key, message, signer, audience, direction) in cases {
        let signed = sign(&message, key, signer, audience, direction, [0x5a; 16], ts);
        let mut unsigned = signed.clone();
        unsigned["meta"]
            .as_object_mut()
            .expect("meta")
            .remove("signature");
        let canonical = canonical_signing_bytes(&unsigned);
        let vector = json!({
            "description": "Ed25519 over the tag and the RFC 8785 form of the message without meta.signature",
            "private_key_pkcs8_pem": ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_pem(key, Default::default()).expect("pem").to_string(),
            "public_key_pem": keys::public_key_to_pem(&key.verifying_key()),
            "unsigned_message": Value::Object(unsigned),
            "signed_bytes_utf8": String::from_utf8(canonical).expect("utf8"),
            "signature": signed["meta"]["signature"],
            "signed_message": Value::Object(signed),
        });
        let path = dir.join(format!("{name}.json"));
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&vector).expect("json") + "\n",
        )
        .expect("write");
        println!("{}", path.display());
    }
}
