//! The SQLite registry on its own: never re-keyed, bounded event history.

use cloud::registry::{DeviceStatus, Registry, DEVICE_EVENTS_KEPT};
use serde_json::json;

async fn open() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("a/b/cloud.db").display());
    let registry = Registry::open(&url).await.unwrap();
    (dir, registry)
}

#[tokio::test]
async fn a_registered_id_keeps_its_first_key() {
    let (_dir, registry) = open().await;
    let new_key = registry
        .register_new_key("dev-1", "PEM-1", "SHA256:one", Some("1.0"), 1)
        .await
        .unwrap()
        .expect("registered");
    assert_eq!(
        (new_key.event.as_str(), new_key.detail.as_str()),
        ("new_key", "SHA256:one")
    );
    assert!(registry
        .register_new_key("dev-1", "PEM-2", "SHA256:two", Some("2.0"), 2)
        .await
        .unwrap()
        .is_none());
    let device = registry.device("dev-1").await.unwrap().unwrap();
    assert_eq!(
        (device.public_key.as_str(), device.status),
        ("PEM-1", DeviceStatus::Pending)
    );
    let events = registry.auth_events(Some("dev-1"), 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "new_key");
}

#[tokio::test]
async fn only_the_latest_container_events_are_kept() {
    let (_dir, registry) = open().await;
    registry
        .register_new_key("dev-1", "PEM", "SHA256:x", None, 0)
        .await
        .unwrap();
    let total = DEVICE_EVENTS_KEPT + 5;
    for n in 0..total {
        registry
            .add_device_event("dev-1", "device.container_event", &json!({ "n": n }), n)
            .await
            .unwrap();
    }
    let events = registry.device_events("dev-1", 5000).await.unwrap();
    assert_eq!(events.len() as i64, DEVICE_EVENTS_KEPT);
    assert_eq!(events[0].payload, json!({ "n": total - 1 }));
    assert_eq!(events.last().unwrap().payload, json!({ "n": 5 }));
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.db");
    let registry = Registry::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    registry
        .register_new_key("dev-1", "PEM", "SHA256:x", None, 1)
        .await
        .unwrap();
    for file in ["cloud.db", "cloud.db-wal"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
}
