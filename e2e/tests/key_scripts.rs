//! `scripts/ensure-cloud-keys.sh` and `scripts/ensure-device-keys.sh`: the keys
//! they make (with openssl) are the ones the binaries read, laid out as the
//! design says, and a second run keeps them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use protocol::keys;

fn run_script(root: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../scripts")
                .join(script),
        )
        .env("CLOUD_KEYS_DIR", root.join("keys/cloud"))
        .env("CLOUD_PUBLIC_KEY", root.join("keys/cloud/cloud_public.pem"))
        .arg(root.join("keys/device"))
        .output()
        .expect("run script");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_scripts_make_readable_keys_once_and_copy_only_the_cloud_public_key() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    run_script(root, "ensure-cloud-keys.sh");
    let printed = run_script(root, "ensure-device-keys.sh");

    let cloud = keys::read_private_key(&root.join("keys/cloud/cloud_private.pem")).unwrap();
    let device = keys::read_private_key(&root.join("keys/device/device_private.pem")).unwrap();
    assert_eq!(
        keys::read_public_key(&root.join("keys/cloud/cloud_public.pem")).unwrap(),
        cloud.verifying_key()
    );
    assert_eq!(
        keys::read_public_key(&root.join("keys/device/cloud_public.pem")).unwrap(),
        cloud.verifying_key()
    );
    assert_eq!(
        keys::read_public_key(&root.join("keys/device/device_public.pem")).unwrap(),
        device.verifying_key()
    );
    assert!(
        !root.join("keys/device/cloud_private.pem").exists(),
        "a device never holds the cloud's private key"
    );
    for private in [
        "keys/cloud/cloud_private.pem",
        "keys/device/device_private.pem",
    ] {
        let mode = std::fs::metadata(root.join(private))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{private}");
    }
    let fingerprint = keys::fingerprint(&device.verifying_key());
    assert!(
        printed.contains(&fingerprint),
        "the script prints the fingerprint operators will see: {printed}"
    );

    run_script(root, "ensure-cloud-keys.sh");
    run_script(root, "ensure-device-keys.sh");
    let again = keys::read_private_key(&root.join("keys/device/device_private.pem")).unwrap();
    assert_eq!(
        again.to_bytes(),
        device.to_bytes(),
        "an existing key is kept"
    );
}
