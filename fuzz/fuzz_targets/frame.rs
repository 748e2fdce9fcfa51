//! A text frame from a peer: the strict parser, then signature and meta
//! verification, as both the cloud and the bridge run them on every frame.
//! Property: whatever is accepted re-signs and verifies again, unchanged.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use protocol::{parse_frame, verify, Direction, Expectation, Signer};

/// The key, ids and clock of the interop vectors in protocol/tests/vectors,
/// so that the seeds verify and mutations explore around valid frames.
const SEED: [u8; 32] = [0x11; 32];
const NOW_MS: u64 = 1_763_780_000_123;

fuzz_target!(|text: &str| {
    let key = SigningKey::from_bytes(&SEED);
    let public = key.verifying_key();
    let expect = Expectation {
        signer_id: "cloud-dashboard",
        keys: std::slice::from_ref(&public),
        audience_id: "device-001",
        direction: Direction::CloudToDevice,
        skew_ms: 60_000,
        now_ms: NOW_MS,
    };
    let Ok(frame) = parse_frame(text, 1 << 20) else {
        return;
    };
    let Ok(verified) = verify(frame, &expect) else {
        return;
    };
    if let Some(method) = verified.message.method() {
        let _ = protocol::check_method_name(method);
    }
    let signer = Signer::new("cloud-dashboard", key);
    let again = signer.sign_to_text(
        &verified.message,
        "device-001",
        Direction::CloudToDevice,
        NOW_MS,
    );
    let reparsed = parse_frame(&again, usize::MAX).expect("what we sign parses");
    let reverified = verify(reparsed, &expect).expect("what we sign verifies");
    assert_eq!(reverified.message, verified.message);
});
