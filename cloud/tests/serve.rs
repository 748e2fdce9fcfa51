//! The server as `cloud serve` runs it: start-up from config, liveness by
//! ping, and a bounded graceful shutdown.

mod support;

use std::time::Duration;

use cloud::CloudConfig;
use protocol::keys;
use support::{wait_until, TestCloud};
use tokio_util::sync::CancellationToken;

fn config_in(dir: &std::path::Path) -> CloudConfig {
    CloudConfig {
        private_key_path: dir.join("cloud_private.pem"),
        database_url: format!("sqlite://{}", dir.join("new/dir/cloud.db").display()),
        admin_token_file: dir.join("other/admin.token"),
        ..CloudConfig::default()
    }
}

#[tokio::test]
async fn run_creates_the_database_and_the_admin_token_then_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    keys::write_private_key(&config.private_key_path, &keys::generate()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(cloud::run(listener, config.clone(), shutdown.clone()));

    let health = format!("http://{addr}/healthz");
    wait_until("the cloud answers /healthz", || async {
        reqwest::get(&health).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(dir.path().join("new/dir/cloud.db").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config.admin_token_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("shutdown is bounded")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn run_refuses_a_private_key_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    keys::write_private_key(&config.private_key_path, &keys::generate()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let loose = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(&config.private_key_path, loose).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let error = cloud::run(listener, config, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("chmod 600"), "{error:#}");
    }
}

#[tokio::test]
async fn shutdown_closes_device_connections_with_1001() {
    let mut cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    cloud.shut_down().await.unwrap();
    assert_eq!(device.expect_close().await.0, 1001);
}

#[tokio::test]
async fn a_device_that_answers_pings_stays_and_one_that_does_not_is_dropped() {
    let interval = Duration::from_millis(200);
    let cloud = TestCloud::start_with(|c| c.ping_interval = interval).await;
    let mut device = cloud.accepted_device("dev-1").await;

    assert!(device.answer_pings_for(6 * interval).await >= 3);
    assert!(cloud.state.devices().fleet().is_online("dev-1"));

    // Not reading the socket means not answering pings.
    wait_until("the silent device is dropped", || async {
        !cloud.state.devices().fleet().is_online("dev-1")
    })
    .await;
    // The close frame (4007) may be lost: tungstenite first tries to write the
    // pongs it owes, and the cloud has already hung up.
    assert!(matches!(
        device.read_until_closed().await,
        None | Some(protocol::close_code::UNRESPONSIVE)
    ));
}
