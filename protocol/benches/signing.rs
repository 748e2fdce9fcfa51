//! Cost of the three steps every message pays: canonicalize, sign, verify.

use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::SigningKey;
use protocol::{
    canonical_signing_bytes, parse_frame, sign, verify, Direction, Expectation, Message,
};
use serde_json::{json, Value};

fn message() -> Message {
    // A realistic reply: a containers.list answer with ten containers.
    let containers: Vec<Value> = (0..10)
        .map(|i| {
            json!({"id": format!("{i:064x}"), "names": [format!("/app-{i}")], "image": "busybox:latest",
                   "state": "running", "status": "Up 3 hours", "created": 1763780000 + i,
                   "ports": [{"private": 80, "public": 8080 + i, "type": "tcp"}]})
        })
        .collect();
    Message::result(json!("c-17"), json!({ "containers": containers }))
}

fn bench(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[1; 32]);
    let public = key.verifying_key();
    let now = 1_763_780_000_123;
    let msg = message();
    let signed = sign(
        &msg,
        &key,
        "device-001",
        "cloud-dashboard",
        Direction::DeviceToCloud,
        [7; 16],
        now,
    );
    let text = Value::Object(signed.clone()).to_string();
    let mut unsigned = signed.clone();
    unsigned["meta"]
        .as_object_mut()
        .unwrap()
        .remove("signature");

    c.bench_function("canonicalize (10-container reply)", |b| {
        b.iter(|| canonical_signing_bytes(&unsigned))
    });
    c.bench_function("sign (10-container reply)", |b| {
        b.iter(|| {
            sign(
                &msg,
                &key,
                "device-001",
                "cloud-dashboard",
                Direction::DeviceToCloud,
                [7; 16],
                now,
            )
        })
    });
    c.bench_function("parse + verify (10-container reply)", |b| {
        b.iter(|| {
            let frame = parse_frame(&text, 1 << 20).unwrap();
            verify(
                frame,
                &Expectation {
                    signer_id: "device-001",
                    keys: std::slice::from_ref(&public),
                    audience_id: "cloud-dashboard",
                    direction: Direction::DeviceToCloud,
                    skew_ms: 60_000,
                    now_ms: now,
                },
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
