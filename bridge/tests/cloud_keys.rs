//! The bridge trusts a set of cloud keys, which the cloud changes with
//! `device.trust_cloud_key` and `device.distrust_cloud_key`, each heard only
//! when signed by a key the bridge trusts already, and kept on disk. The
//! cloud is played by testkit's `FakeCloud`.

mod support;

use std::path::PathBuf;

use protocol::auth::AuthStatus;
use protocol::cloud_keys::{DISTRUST_CLOUD_KEY, TRUST_CLOUD_KEY};
use protocol::keys::{self, PrivateKey, PublicKey};
use protocol::{Message, RpcError};
use serde_json::{json, Value};
use support::{scenario, served};
use testkit::fake_cloud::DeviceLink;

/// A live bridge keeping its trusted cloud keys in a file (holding the fake
/// cloud's key); the link, and the fingerprints it said it trusts.
async fn live_with_keys_file(
    dir: &std::path::Path,
) -> (support::Scenario, DeviceLink, PathBuf, Option<Vec<String>>) {
    let file = dir.join("cloud_public.pem");
    let mut s = scenario(|config| {
        keys::write_public_keys_atomically(&file, &config.cloud_keys).unwrap();
        config.cloud_keys_file = Some(file.clone());
    })
    .await;
    let mut link = s.cloud.accept().await;
    let authenticated = link.handshake(AuthStatus::Accepted).await;
    (s, link, file, authenticated.params.cloud_keys)
}

/// Sends a request signed by `key` as the cloud; the bridge's answer.
async fn call_signed_by(
    link: &mut DeviceLink,
    key: &PrivateKey,
    id: &str,
    method: &str,
    params: Value,
) -> Result<Value, RpcError> {
    let frame = link
        .frame(Message::request(id, method, params))
        .key(key.clone())
        .sign();
    link.send(&frame);
    let (answered, outcome) = link.recv_response().await;
    assert_eq!(answered, json!(id));
    outcome
}

fn fingerprints(keys: &[PublicKey]) -> Vec<String> {
    keys.iter().map(keys::fingerprint).collect()
}

#[tokio::test]
async fn the_cloud_adds_its_next_key_then_retires_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut link, file, said) = live_with_keys_file(dir.path()).await;
    let old = keys::read_public_keys(&file).unwrap()[0];
    assert_eq!(
        said,
        Some(fingerprints(&[old])),
        "device.authenticate says what it trusts"
    );

    let next = keys::generate();
    let trusted = link
        .call(
            "c-1",
            TRUST_CLOUD_KEY,
            json!({"public_key": keys::public_key_to_pem(&next.verifying_key())}),
        )
        .await
        .unwrap();
    let both = [next.verifying_key(), old];
    assert_eq!(
        trusted,
        json!({"status": "trusted", "cloud_keys": fingerprints(&both)})
    );
    assert_eq!(
        keys::read_public_keys(&file).unwrap(),
        both,
        "kept on disk, the newest first"
    );

    // The new key is heard at once, on this connection.
    let listed = call_signed_by(&mut link, &next, "c-2", "containers.list", json!({})).await;
    assert_eq!(listed, served("containers.list"));

    // The old key is retired by a request signed with the new one.
    let old_fingerprint = keys::fingerprint(&old);
    let distrusted = call_signed_by(
        &mut link,
        &next,
        "c-3",
        DISTRUST_CLOUD_KEY,
        json!({"fingerprint": old_fingerprint}),
    )
    .await
    .unwrap();
    assert_eq!(
        distrusted,
        json!({"status": "distrusted", "cloud_keys": fingerprints(&[next.verifying_key()])})
    );
    assert_eq!(
        keys::read_public_keys(&file).unwrap(),
        [next.verifying_key()]
    );
    link.send(&link.request("c-4", "containers.list", json!({})));
    let (_, refused) = link.recv_response().await;
    assert_eq!(
        refused.unwrap_err().data,
        Some(json!({"reason": "bad_signature"}))
    );
}

#[tokio::test]
async fn a_trust_request_not_signed_by_a_trusted_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut link, file, _) = live_with_keys_file(dir.path()).await;
    let before = keys::read_public_keys(&file).unwrap();

    let intruder = keys::generate();
    let pem = keys::public_key_to_pem(&intruder.verifying_key());
    let refused = call_signed_by(
        &mut link,
        &intruder,
        "c-1",
        TRUST_CLOUD_KEY,
        json!({"public_key": pem}),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.data, Some(json!({"reason": "bad_signature"})));
    assert_eq!(keys::read_public_keys(&file).unwrap(), before);
    let still_refused = call_signed_by(&mut link, &intruder, "c-2", "containers.list", json!({}))
        .await
        .unwrap_err();
    assert_eq!(still_refused.data, Some(json!({"reason": "bad_signature"})));
    assert!(s.spy().seen().is_empty(), "nothing reached a worker");
}

#[tokio::test]
async fn the_last_key_and_the_signing_key_are_never_distrusted() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut link, file, _) = live_with_keys_file(dir.path()).await;
    let old = keys::read_public_keys(&file).unwrap()[0];
    let distrust = |key: &PublicKey| json!({"fingerprint": keys::fingerprint(key)});

    // The only key is also the one signing the request.
    let only = link
        .call("c-1", DISTRUST_CLOUD_KEY, distrust(&old))
        .await
        .unwrap_err();
    assert_eq!(
        only.data,
        Some(json!({"reason": "signing_key"})),
        "{only:?}"
    );
    let next = keys::generate();
    let pem = keys::public_key_to_pem(&next.verifying_key());
    link.call("c-2", TRUST_CLOUD_KEY, json!({"public_key": pem}))
        .await
        .unwrap();
    let signing = link
        .call("c-3", DISTRUST_CLOUD_KEY, distrust(&old))
        .await
        .unwrap_err();
    assert_eq!(signing.data, Some(json!({"reason": "signing_key"})));
    let malformed = link
        .call("c-4", TRUST_CLOUD_KEY, json!({"public_key": "not a key"}))
        .await
        .unwrap_err();
    assert_eq!(malformed.code, -32602);
    assert_eq!(
        keys::read_public_keys(&file).unwrap(),
        [next.verifying_key(), old]
    );
}
