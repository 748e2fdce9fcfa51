//! A device replaces its key on its live connection (`device.rotate_key`):
//! the real cloud, real bridges keeping their keys in files, real WebSockets
//! and a real nats-server per device. Workers are a small echo responder on
//! the device's NATS, slow enough that calls are in flight while the key
//! changes.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bridge::rotation::next_path;
use cloud::ops::Caller;
use e2e::stack::{wait_for_device, RunningCloud, RunningDevice, SOON};
use futures::StreamExt;
use protocol::keys::{self, PrivateKey};
use protocol::nats::BRIDGE_ROTATE_KEY;
use protocol::{close_code, Message};
use serde_json::{json, Value};
use testkit::fake_device::FakeDevice;
use testkit::wait_until;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// How long the echo worker takes to answer: calls overlap the rotation.
const ECHO_DELAY: Duration = Duration::from_millis(40);

/// Answers `rpc.test.echo` with its params, after [`ECHO_DELAY`].
async fn echo_worker(device: &RunningDevice) -> AbortOnDropHandle<()> {
    let nats = device.nats_client().await;
    let mut requests = nats.subscribe("rpc.test.echo").await.unwrap();
    nats.flush().await.unwrap();
    AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let nats = nats.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ECHO_DELAY).await;
                let call: Value = serde_json::from_slice(&request.payload).unwrap();
                let answer = json!({"jsonrpc": "2.0", "id": call["id"], "result": call["params"]});
                if let Some(reply) = request.reply {
                    let _ = nats.publish(reply, answer.to_string().into()).await;
                }
            });
        }
    }))
}

/// A device with its key in a file under `dir`, accepted, online, with an
/// echo worker answering.
async fn rotatable_device(
    id: &str,
    cloud: &RunningCloud,
    dir: &Path,
) -> (RunningDevice, AbortOnDropHandle<()>) {
    let device = RunningDevice::start_with_key_file(id, cloud, dir.join(format!("{id}.pem"))).await;
    let worker = echo_worker(&device).await;
    let api = cloud.api();
    wait_for_device(&api, id, "device pending", |d| d["status"] == "pending").await;
    api.accept(id).await.expect("accept");
    wait_for_echo(cloud, id).await;
    (device, worker)
}

async fn wait_for_echo(cloud: &RunningCloud, id: &str) {
    let api = cloud.api();
    wait_until("the device answers", SOON, || async {
        api.rpc(id, "test.echo", Some(json!({"n": 0})), None)
            .await
            .ok()
    })
    .await;
}

/// Calls the device from `parallel` tasks until `stop`; counts the calls
/// that succeeded and collects the failures.
fn keep_calling(
    cloud: &RunningCloud,
    id: &str,
    parallel: usize,
    stop: CancellationToken,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<Vec<String>>) {
    let answered = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for caller in 0..parallel {
        let (api, id, stop, answered) =
            (cloud.api(), id.to_owned(), stop.clone(), answered.clone());
        callers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                let params = json!({"caller": caller, "n": n});
                match api.rpc(&id, "test.echo", Some(params.clone()), None).await {
                    Ok(echo) if echo == params => {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(other) => failures.push(format!("{params} echoed as {other}")),
                    Err(error) => failures.push(format!("{params}: {error}")),
                }
            }
            failures
        }));
    }
    let failures = tokio::spawn(async move {
        let mut all = Vec::new();
        for caller in callers {
            all.extend(caller.await.unwrap());
        }
        all
    });
    (answered, failures)
}

/// Asks the running bridge to rotate, as `bridge rotate-key` does; the
/// bridge's answer.
async fn ask_bridge_to_rotate(device: &RunningDevice) -> Message {
    let nats = device.nats_client().await;
    let answer = tokio::time::timeout(SOON, nats.request(BRIDGE_ROTATE_KEY, Default::default()))
        .await
        .expect("the bridge answers in time")
        .expect("the bridge answers");
    serde_json::from_slice::<Value>(&answer.payload)
        .ok()
        .and_then(|value| Message::from_value(value.as_object()?.clone()).ok())
        .expect("a JSON-RPC response")
}

fn fingerprint_of(key_file: &Path) -> String {
    keys::fingerprint(&keys::read_private_key(key_file).unwrap().verifying_key())
}

/// The cloud's registered fingerprint of `id`.
async fn registered(cloud: &RunningCloud, id: &str) -> String {
    let device = cloud.api().device(id).await.unwrap();
    device["device"]["fingerprint"].as_str().unwrap().to_owned()
}

/// A connection presenting `key` for `id` is refused `key_mismatch` (4002).
async fn assert_refused_key(cloud: &RunningCloud, id: &str, key: PrivateKey) {
    let mut stranger = FakeDevice::connect(&cloud.endpoint(), id, key, None)
        .await
        .unwrap();
    let answer = stranger.authenticate().await;
    assert_eq!(answer["data"]["reason"], "key_mismatch", "{answer}");
    assert_eq!(stranger.expect_close().await.0, close_code::KEY_MISMATCH);
}

/// Waits until the device's key file, and nothing beside it, holds the key
/// the cloud has registered; returns its fingerprint.
async fn wait_until_settled(cloud: &RunningCloud, id: &str, key_file: &Path) -> String {
    wait_until("the key file holds the registered key", SOON, || async {
        let registered = registered(cloud, id).await;
        let settled = !next_path(key_file).exists() && fingerprint_of(key_file) == registered;
        settled.then_some(registered)
    })
    .await
}

/// Waits until the device has rotated away from `before` and settled on
/// the new key; returns its fingerprint.
async fn wait_until_rotated_from(
    cloud: &RunningCloud,
    id: &str,
    key_file: &Path,
    before: &str,
) -> String {
    wait_until("the device rotated its key", SOON, || async {
        (registered(cloud, id).await != before).then_some(())
    })
    .await;
    wait_until_settled(cloud, id, key_file).await
}

#[tokio::test]
async fn a_device_rotates_its_key_while_calls_to_it_continue() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = RunningCloud::start().await;
    let (mut device, _worker) = rotatable_device("device-001", &cloud, dir.path()).await;
    let key_file = dir.path().join("device-001.pem");
    let old_key = device.key.clone();
    let old = keys::fingerprint(&old_key.verifying_key());
    assert_eq!(registered(&cloud, "device-001").await, old);

    let stop = CancellationToken::new();
    let (answered, failures) = keep_calling(&cloud, "device-001", 4, stop.clone());
    wait_until("calls before the rotation", SOON, || async {
        (answered.load(Ordering::SeqCst) >= 20).then_some(())
    })
    .await;
    let before = answered.load(Ordering::SeqCst);

    let Message::Response { result, .. } = ask_bridge_to_rotate(&device).await else {
        panic!("a response")
    };
    let result = result.expect("rotated");
    let new = fingerprint_of(&key_file);
    assert_eq!(result, json!({"status": "rotated", "fingerprint": new}));
    assert_ne!(new, old);
    assert!(
        !next_path(&key_file).exists(),
        "the new key was renamed over the key file"
    );
    assert_eq!(registered(&cloud, "device-001").await, new);

    let during = answered.load(Ordering::SeqCst);
    wait_until("calls after the rotation", SOON, || async {
        (answered.load(Ordering::SeqCst) >= during + 20).then_some(())
    })
    .await;
    stop.cancel();
    let failures = failures.await.unwrap();
    assert!(failures.is_empty(), "calls failed: {failures:#?}");
    // The callers never pause, so calls were in flight while the key
    // changed (a rotation may take less time than one call, so no count is
    // asked of it): none failed, and as many again were answered after.
    assert!(before >= 20, "calls before the rotation: {before}");

    // The connection was never dropped: the rotation happened on the one
    // it registered and was accepted on.
    let details = cloud.api().device("device-001").await.unwrap();
    let events: Vec<&str> = details["auth_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["key_rotated", "accepted", "new_key"]);
    let rotated = &details["auth_events"][0];
    assert_eq!(rotated["event"], "key_rotated");
    assert_eq!(rotated["detail"], format!("{old} replaced by {new}"));
    let audit = cloud.api().audit("action=key_rotated").await.unwrap();
    assert_eq!(audit["entries"][0]["target"], "device-001", "{audit}");

    // The old key is refused from now on; the bridge, restarted, uses the new.
    assert_refused_key(&cloud, "device-001", old_key).await;
    device.stop_bridge().await;
    device.start_bridge().await;
    wait_for_echo(&cloud, "device-001").await;
    assert_eq!(
        keys::fingerprint(&device.key.verifying_key()),
        registered(&cloud, "device-001").await
    );
}

#[tokio::test]
async fn a_rotation_interrupted_after_the_new_key_was_written_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = RunningCloud::start().await;
    let (mut device, _worker) = rotatable_device("device-001", &cloud, dir.path()).await;
    let key_file = dir.path().join("device-001.pem");
    let old = fingerprint_of(&key_file);

    // What a crash right after writing `.next` leaves.
    device.stop_bridge().await;
    let next = keys::generate();
    keys::write_private_key(&next_path(&key_file), &next).unwrap();
    device.start_bridge().await;

    let new = wait_until_settled(&cloud, "device-001", &key_file).await;
    assert_eq!(new, keys::fingerprint(&next.verifying_key()));
    assert_ne!(new, old);
    wait_for_echo(&cloud, "device-001").await;
}

#[tokio::test]
async fn a_rotation_interrupted_after_the_cloud_switched_finishes_with_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = RunningCloud::start().await;
    let (mut device, _worker) = rotatable_device("device-001", &cloud, dir.path()).await;
    let key_file = dir.path().join("device-001.pem");

    // What a crash after the cloud switched, before the rename, leaves: the
    // cloud has the key in `.next`; the key file still holds the old one.
    device.stop_bridge().await;
    let next = keys::generate();
    keys::write_private_key(&next_path(&key_file), &next).unwrap();
    let old_key = keys::read_private_key(&key_file).unwrap();
    let mut before_crash = FakeDevice::connect(&cloud.endpoint(), "device-001", old_key, None)
        .await
        .unwrap();
    assert_eq!(before_crash.authenticate().await["status"], "accepted");
    let id = before_crash
        .send_rotation(next.verifying_key(), &next)
        .await;
    before_crash
        .expect_response(json!(id))
        .await
        .expect("rotated");
    drop(before_crash);
    let new = keys::fingerprint(&next.verifying_key());
    assert_eq!(registered(&cloud, "device-001").await, new);

    // The bridge's key file is refused; it tries `.next`, which is accepted,
    // and makes it the key file.
    device.start_bridge().await;
    wait_for_echo(&cloud, "device-001").await;
    assert_eq!(
        wait_until_settled(&cloud, "device-001", &key_file).await,
        new
    );
}

#[tokio::test]
async fn a_bridge_stopped_at_any_point_of_a_rotation_connects_again() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = RunningCloud::start().await;
    let (mut device, _worker) = rotatable_device("device-001", &cloud, dir.path()).await;
    let key_file = dir.path().join("device-001.pem");
    let nats = device.nats_client().await;

    // Stopped as power loss would, at points spread over the rotation.
    for delay_us in [0, 200, 500, 1_000, 2_000, 5_000, 10_000, 50_000] {
        let old = fingerprint_of(&key_file);
        let nats = nats.clone();
        let _asked = tokio::spawn(async move {
            let _ = nats.request(BRIDGE_ROTATE_KEY, Default::default()).await;
        });
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        device.stop_bridge().await;

        device.start_bridge().await;
        wait_for_echo(&cloud, "device-001").await;
        let settled = wait_until_settled(&cloud, "device-001", &key_file).await;
        eprintln!(
            "stopped after {delay_us} µs: {}",
            if settled == old {
                "not rotated"
            } else {
                "rotated"
            }
        );
    }
}

#[tokio::test]
async fn a_rotation_proved_by_the_wrong_key_is_refused_and_devices_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = RunningCloud::start().await;
    let api = cloud.api();
    let (_bystander, _worker) = rotatable_device("bystander", &cloud, dir.path()).await;

    let key = keys::generate();
    let mut device = FakeDevice::connect(&cloud.endpoint(), "fake-001", key.clone(), None)
        .await
        .unwrap();
    assert_eq!(device.authenticate().await["status"], "pending");
    let pending = device
        .send_rotation(keys::generate().verifying_key(), &keys::generate())
        .await;
    let refused = device.expect_response(json!(pending)).await.unwrap_err();
    assert_eq!(
        refused.code, -32004,
        "a pending device may not rotate: {refused:?}"
    );
    api.accept("fake-001").await.unwrap();
    device.expect_status_notification("accepted").await;
    let registered_before = registered(&cloud, "fake-001").await;

    let next = keys::generate();
    let wrong_prover = device
        .send_rotation(next.verifying_key(), &keys::generate())
        .await;
    let error = device
        .expect_refusal(json!(wrong_prover), "bad_rotation_proof")
        .await;
    assert!(error.message.contains("proof does not verify"), "{error:?}");
    let same = device.send_rotation(key.verifying_key(), &key).await;
    device.expect_refusal(json!(same), "same_key").await;
    let id = device.new_request_id();
    let malformed = Message::request(
        id.as_str(),
        protocol::rotation::ROTATE_KEY,
        json!({"public_key": "not a key", "proof": "AAAA"}),
    );
    device.send_message(&malformed).await;
    let error = device
        .expect_refusal(json!(id), "bad_rotation_params")
        .await;
    assert_eq!(error.code, -32602);

    // Nothing changed: the device and the bystander go on.
    assert_eq!(registered(&cloud, "fake-001").await, registered_before);
    device.ping_cloud().await;
    wait_for_echo(&cloud, "bystander").await;
    let events = api.device("fake-001").await.unwrap()["auth_events"].clone();
    assert_eq!(events[0]["event"], "key_rotation_refused", "{events}");
    assert_eq!(
        events[0]["count"], 3,
        "refusals share a row an hour: {events}"
    );

    // And a rotation proved by the new key is taken, on the same connection.
    let good = device.send_rotation(next.verifying_key(), &next).await;
    let rotated = device.expect_response(json!(good)).await.unwrap();
    let new = keys::fingerprint(&next.verifying_key());
    assert_eq!(rotated, json!({"status": "rotated", "fingerprint": new}));
    device.use_key(next);
    device.ping_cloud().await;
    assert_eq!(registered(&cloud, "fake-001").await, new);
    // The old key is heard no more on this connection once the new one was.
    device.use_key(key.clone());
    let id = device.new_request_id();
    device
        .send_message(&Message::request(id.as_str(), "cloud.ping", json!({})))
        .await;
    device.expect_refusal(json!(id), "bad_signature").await;
    assert_refused_key(&cloud, "fake-001", key).await;
}

#[tokio::test]
async fn an_admin_requires_a_rotation_of_an_online_and_of_an_offline_device() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = RunningCloud::start().await;
    let ops = cloud.state().ops();
    let (_online, _worker) = rotatable_device("online", &cloud, dir.path()).await;
    let (mut offline, _worker2) = rotatable_device("offline", &cloud, dir.path()).await;

    let before = registered(&cloud, "online").await;
    let required = ops
        .require_rotation(&Caller::host(), "online")
        .await
        .unwrap();
    assert!(required.asked_now);
    assert_eq!(required.fingerprint, before);
    wait_until_rotated_from(&cloud, "online", &dir.path().join("online.pem"), &before).await;
    let record = cloud
        .state()
        .devices()
        .registry()
        .device("online")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.key_rotation_required_at, None,
        "done, so no longer required"
    );

    offline.stop_bridge().await;
    wait_for_device(&cloud.api(), "offline", "device offline", |d| {
        d["online"] == false
    })
    .await;
    let before = registered(&cloud, "offline").await;
    let required = ops
        .require_rotation(&Caller::host(), "offline")
        .await
        .unwrap();
    assert!(!required.asked_now);
    let record = cloud
        .state()
        .devices()
        .registry()
        .device("offline")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.key_rotation_required_at, Some(required.required_at));
    offline.start_bridge().await;
    wait_until_rotated_from(&cloud, "offline", &dir.path().join("offline.pem"), &before).await;
    wait_for_echo(&cloud, "offline").await;

    let unknown = ops
        .require_rotation(&Caller::host(), "nobody")
        .await
        .unwrap_err();
    assert_eq!(unknown.kind.as_str(), "unknown_device");
}
