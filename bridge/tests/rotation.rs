//! The bridge rotates the device key on its live connection: asked by
//! `bridge rotate-key` (the real binary, over the device's NATS) or by the
//! cloud (`device.rotate_key_required`). The cloud is played by testkit's
//! `FakeCloud`, which checks the request and the proof as the cloud does.

mod support;

use std::path::{Path, PathBuf};

use bridge::rotation::next_path;
use protocol::auth::AuthStatus;
use protocol::keys;
use protocol::rotation::{RotateKeyParams, Rotated, ROTATE_KEY, ROTATE_KEY_REQUIRED};
use protocol::{ErrorCode, Message, RpcError, Verified};
use serde_json::json;
use support::{live, served, DEVICE_ID};
use testkit::fake_cloud::DeviceLink;
use testkit::PROMPTLY;

/// A key file holding a fresh key, in `dir`.
fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("device_private.pem");
    keys::write_private_key(&path, &keys::generate()).unwrap();
    path
}

/// Runs `bridge rotate-key` against the NATS at `nats_url`: its exit
/// status and output.
fn rotate_key_command(nats_url: String) -> tokio::task::JoinHandle<std::process::Output> {
    tokio::spawn(async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_bridge"))
            .args([
                "rotate-key",
                "--nats-url",
                &nats_url,
                "--timeout-secs",
                "10",
            ])
            .env_remove("NATS_USER")
            .env_remove("NATS_PASSWORD_FILE")
            .output()
            .await
            .unwrap()
    })
}

/// Receives the bridge's `device.rotate_key` and checks it as the cloud
/// does: signed with `current`, proved by the key it names.
async fn expect_rotation(
    link: &mut DeviceLink,
    current: &keys::PublicKey,
) -> (Verified, RotateKeyParams) {
    let verified = link.recv().await;
    let Message::Request { method, params, .. } = &verified.message else {
        panic!("expected device.rotate_key, got {:?}", verified.message)
    };
    assert_eq!(method, ROTATE_KEY);
    assert_eq!(verified.key, *current, "signed with the key being replaced");
    let params = RotateKeyParams::read(params.as_ref()).unwrap();
    params
        .verify(DEVICE_ID, current, &verified.meta.nonce)
        .expect("the proof verifies");
    (verified, params)
}

fn id_of(verified: &Verified) -> serde_json::Value {
    match &verified.message {
        Message::Request { id, .. } => id.clone(),
        other => panic!("not a request: {other:?}"),
    }
}

#[tokio::test]
async fn the_rotate_key_command_rotates_on_the_live_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path());
    let old = keys::read_private_key(&path).unwrap();
    let (s, mut link) = live(|config| {
        config.signer = protocol::Signer::new(DEVICE_ID, old.clone());
        config.key_file = Some(path.clone());
    })
    .await;

    let command = rotate_key_command(s.nats.url());
    let (request, params) = expect_rotation(&mut link, &old.verifying_key()).await;
    let next = keys::read_private_key(&next_path(&path)).unwrap();
    assert_eq!(
        params.key,
        next.verifying_key(),
        "the new key waits in .next"
    );
    assert_eq!(
        keys::read_private_key(&path).unwrap().to_bytes(),
        old.to_bytes(),
        "kept until confirmed"
    );

    link.device_rotated(params.key);
    link.respond(id_of(&request), Ok(Rotated::new(&params.key).to_value()));
    let output = command.await.unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let new = keys::fingerprint(&next.verifying_key());
    assert!(printed.contains(&new), "{printed}");
    assert_eq!(
        keys::read_private_key(&path).unwrap().to_bytes(),
        next.to_bytes()
    );
    assert!(!next_path(&path).exists());

    // The same connection goes on, signed with the new key.
    let answer = link.call("c-1", "containers.list", json!({})).await;
    assert_eq!(answer, served("containers.list"));
    assert_eq!(
        link.recv_within(std::time::Duration::from_millis(100))
            .await,
        None
    );
}

#[tokio::test]
async fn a_refused_rotation_keeps_the_old_key_and_forgets_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path());
    let old = keys::read_private_key(&path).unwrap();
    let (s, mut link) = live(|config| {
        config.signer = protocol::Signer::new(DEVICE_ID, old.clone());
        config.key_file = Some(path.clone());
    })
    .await;

    let command = rotate_key_command(s.nats.url());
    let (request, _) = expect_rotation(&mut link, &old.verifying_key()).await;
    let mut refused = RpcError::new(
        ErrorCode::Refused,
        "key rotation refused: the proof does not verify",
    );
    refused.data = Some(json!({"reason": "bad_rotation_proof"}));
    link.respond(id_of(&request), Err(refused));
    let output = command.await.unwrap();
    assert!(!output.status.success());
    let printed = String::from_utf8_lossy(&output.stderr);
    assert!(printed.contains("the proof does not verify"), "{printed}");
    assert_eq!(
        keys::read_private_key(&path).unwrap().to_bytes(),
        old.to_bytes()
    );
    assert!(!next_path(&path).exists(), "the refused key is forgotten");

    let answer = link.call("c-1", "containers.list", json!({})).await;
    assert_eq!(answer, served("containers.list"));
}

#[tokio::test]
async fn the_cloud_may_require_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path());
    let old = keys::read_private_key(&path).unwrap();
    let (_s, mut link) = live(|config| {
        config.signer = protocol::Signer::new(DEVICE_ID, old.clone());
        config.key_file = Some(path.clone());
    })
    .await;

    let answer = link.call("c-1", ROTATE_KEY_REQUIRED, json!({})).await;
    assert_eq!(answer, Ok(json!({"status": "rotating"})));
    let (request, params) = expect_rotation(&mut link, &old.verifying_key()).await;
    link.device_rotated(params.key);
    link.respond(id_of(&request), Ok(Rotated::new(&params.key).to_value()));
    testkit::wait_until("the new key is the key file", PROMPTLY, || async {
        let now = keys::read_private_key(&path).ok()?;
        (now.verifying_key() == params.key && !next_path(&path).exists()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_bridge_without_a_key_file_cannot_rotate() {
    let (_s, mut link) = live(|_| {}).await;
    let answer = link.call("c-1", ROTATE_KEY_REQUIRED, json!({})).await;
    let error = answer.unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable.code());
    assert!(error.message.contains("no key file"), "{error:?}");
}

#[tokio::test]
async fn the_rotate_key_command_says_when_the_bridge_is_not_live() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path());
    let mut s = support::scenario(|config| config.key_file = Some(path.clone())).await;
    let _link = s.cloud.connect_device(AuthStatus::Pending).await;
    let output = rotate_key_command(s.nats.url()).await.unwrap();
    assert!(!output.status.success());
    let printed = String::from_utf8_lossy(&output.stderr);
    assert!(printed.contains("not live"), "{printed}");
    assert!(!next_path(&path).exists());
}
