//! The cloud rotates its own key across a fleet: devices are asked to trust
//! the next key, each session then signs with it, and once the next key is
//! the cloud's only one the old one is retired from every device. A device
//! offline during the push gets it when it comes back; none is lost. The
//! real cloud (restarted with each step's keys, as an operator would), real
//! bridges keeping their trusted keys in files, real WebSockets.

use std::path::{Path, PathBuf};

use e2e::stack::{RunningCloud, RunningDevice, SOON};
use futures::StreamExt;
use protocol::keys::{self, PublicKey};
use serde_json::{json, Value};
use testkit::fake_device::FakeDevice;
use testkit::wait_until;
use tokio_util::task::AbortOnDropHandle;

/// Answers `rpc.test.echo` with its params.
async fn echo_worker(device: &RunningDevice) -> AbortOnDropHandle<()> {
    let nats = device.nats_client().await;
    let mut requests = nats.subscribe("rpc.test.echo").await.unwrap();
    nats.flush().await.unwrap();
    AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let call: Value = serde_json::from_slice(&request.payload).unwrap();
            let answer = json!({"jsonrpc": "2.0", "id": call["id"], "result": call["params"]});
            if let Some(reply) = request.reply {
                let _ = nats.publish(reply, answer.to_string().into()).await;
            }
        }
    }))
}

struct Device {
    running: RunningDevice,
    cloud_keys_file: PathBuf,
    _worker: AbortOnDropHandle<()>,
}

/// A device trusting the cloud's current key, kept in a file in `dir`;
/// accepted and answering.
async fn accepted_device(id: &str, cloud: &RunningCloud, dir: &Path) -> Device {
    let cloud_keys_file = dir.join(format!("{id}-cloud_public.pem"));
    keys::write_public_keys_atomically(&cloud_keys_file, &[cloud.public_key()]).unwrap();
    let file = cloud_keys_file.clone();
    let running = RunningDevice::start_bridge_only(id, keys::generate(), cloud, |config| {
        config.cloud_keys_file = Some(file)
    })
    .await;
    let worker = echo_worker(&running).await;
    let api = cloud.api();
    wait_until("device registered", SOON, || async {
        api.device(id).await.ok()
    })
    .await;
    api.accept(id).await.expect("accept");
    answers(cloud, id).await;
    Device {
        running,
        cloud_keys_file,
        _worker: worker,
    }
}

/// Waits until the device answers a call.
async fn answers(cloud: &RunningCloud, id: &str) {
    let api = cloud.api();
    wait_until("the device answers", SOON, || async {
        let echo = api
            .rpc(id, "test.echo", Some(json!({"id": id})), None)
            .await
            .ok()?;
        (echo == json!({"id": id})).then_some(())
    })
    .await;
}

/// Waits until the device trusts exactly `keys` (its file says so) and
/// the cloud records `newest` as the newest key it trusts.
async fn wait_until_trusting(cloud: &RunningCloud, device: &Device, keys: &[PublicKey]) {
    let id = device.running.id.clone();
    let newest = keys::fingerprint(&keys[0]);
    wait_until(
        &format!("{id} trusts {newest} and no other"),
        SOON,
        || async {
            let trusted = keys::read_public_keys(&device.cloud_keys_file).ok()?;
            let record = cloud
                .state()
                .devices()
                .registry()
                .device(&id)
                .await
                .ok()??;
            (trusted == keys && record.cloud_key_fingerprint.as_deref() == Some(&newest))
                .then_some(())
        },
    )
    .await;
}

fn write_key(dir: &Path, name: &str) -> (PathBuf, PublicKey) {
    let path = dir.join(name);
    let key = keys::generate();
    keys::write_private_key(&path, &key).unwrap();
    (path, key.verifying_key())
}

#[tokio::test]
async fn the_cloud_key_is_rotated_across_the_fleet_and_no_device_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = RunningCloud::start().await;
    let old = cloud.public_key();
    let mut devices = Vec::new();
    for id in ["device-001", "device-002", "device-003"] {
        devices.push(accepted_device(id, &cloud, dir.path()).await);
    }
    for device in &devices {
        wait_until_trusting(&cloud, device, &[old]).await;
    }

    // Step 1: the cloud gets a next key; the online devices are asked to
    // trust it, and their sessions then sign with it. One is offline.
    devices[2].running.stop_bridge().await;
    let (next_path, next) = write_key(dir.path(), "cloud_next.pem");
    cloud.config.next_private_key_path = Some(next_path.clone());
    cloud.restart().await;
    for device in &devices[..2] {
        wait_until_trusting(&cloud, device, &[next, old]).await;
        answers(&cloud, &device.running.id).await;
    }
    let offline = cloud
        .state()
        .devices()
        .registry()
        .device("device-003")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(offline.cloud_key_fingerprint, Some(keys::fingerprint(&old)));

    // The offline device comes back and is brought along.
    devices[2].running.start_bridge().await;
    wait_until_trusting(&cloud, &devices[2], &[next, old]).await;
    answers(&cloud, "device-003").await;

    // Step 2, once every device trusts it: the next key is the cloud's key,
    // and the old one is retired from every device.
    cloud.config.private_key_path = next_path;
    cloud.config.next_private_key_path = None;
    cloud.config.retired_key_fingerprints = vec![keys::fingerprint(&old)];
    cloud.restart().await;
    assert_eq!(cloud.public_key(), next);
    for device in &devices {
        wait_until_trusting(&cloud, device, &[next]).await;
        answers(&cloud, &device.running.id).await;
    }

    // A bridge started again reads what it was told to trust.
    devices[0].running.stop_bridge().await;
    devices[0].running.start_bridge().await;
    answers(&cloud, "device-001").await;
}

#[tokio::test]
async fn a_session_is_signed_with_the_newest_cloud_key_its_device_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let (next_path, next) = write_key(dir.path(), "cloud_next.pem");
    let cloud =
        RunningCloud::start_with(|config| config.next_private_key_path = Some(next_path)).await;
    let current = cloud.public_key();

    // A device that trusts the next key hears it from the answer on: it is
    // made to hear nothing else once the challenge (signed with the current
    // key, before the cloud knows who connected) is in.
    let mut trusting = FakeDevice::connect(&cloud.endpoint(), "trusting", keys::generate(), None)
        .await
        .unwrap();
    trusting.hear_cloud_keys(&[next]);
    let answer = trusting.authenticate_trusting(&[next, current]).await;
    assert_eq!(answer["status"], "pending", "{answer}");

    // A device that does not say (an older bridge) hears the current key.
    let mut older = FakeDevice::connect(&cloud.endpoint(), "older", keys::generate(), None)
        .await
        .unwrap();
    assert_eq!(older.authenticate().await["status"], "pending");

    let registry = cloud.state().devices().registry();
    let newest = |id: &'static str| async move {
        registry
            .device(id)
            .await
            .unwrap()
            .unwrap()
            .cloud_key_fingerprint
    };
    assert_eq!(newest("trusting").await, Some(keys::fingerprint(&next)));
    assert_eq!(newest("older").await, Some(keys::fingerprint(&current)));
}
