//! The operator CLI (the real `cloud` binary) against a running cloud.

mod support;

use protocol::Message;
use serde_json::{json, Value};
use support::TestCloud;
use tokio::process::Command;

/// Runs `cloud ARGS --url ... --token ...`; returns (success, stdout, stderr).
async fn cloud_cli(cloud: &TestCloud, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(args)
        .args(["--url", &cloud.url(""), "--token", &cloud.token])
        .env_remove("CLOUD_URL")
        .env_remove("CLOUD_TOKEN")
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn devices_list_accept_and_rpc() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.connect("dev-1").await;
    device.authenticate().await;

    let (ok, stdout, stderr) = cloud_cli(&cloud, &["devices", "list", "--json"]).await;
    assert!(ok, "{stderr}");
    let devices: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(devices[0]["id"], "dev-1");
    assert_eq!(devices[0]["status"], "pending");
    assert_eq!(devices[0]["online"], true);

    let (ok, stdout, stderr) = cloud_cli(&cloud, &["devices", "list"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("ID"), "{stdout}");
    assert!(
        stdout.contains("dev-1") && stdout.contains(&device.fingerprint()),
        "{stdout}"
    );

    let (ok, stdout, stderr) = cloud_cli(&cloud, &["devices", "accept", "dev-1"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("accepted dev-1"), "{stdout}");
    device.expect_status_notification("accepted").await;

    // The device answers one call, echoing what it was asked.
    let responder = tokio::spawn(async move {
        let Message::Request { id, method, params } = device.recv().await else {
            panic!("expected a request");
        };
        let answer = json!({"method": method, "params": params});
        device.send_message(&Message::result(id, answer)).await;
        device
    });
    let (ok, stdout, stderr) = cloud_cli(
        &cloud,
        &[
            "rpc",
            "dev-1",
            "containers.list",
            r#"{"all":true}"#,
            "--timeout-ms",
            "5000",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        result,
        json!({"method": "containers.list", "params": {"all": true}})
    );
    responder.await.unwrap();
}

#[tokio::test]
async fn rpc_errors_are_printed_and_exit_non_zero() {
    let cloud = TestCloud::start().await;
    let (ok, stdout, stderr) = cloud_cli(&cloud, &["rpc", "nobody", "containers.list"]).await;
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("unknown_device"), "{stderr}");
}

#[tokio::test]
async fn a_wrong_token_is_reported() {
    let cloud = TestCloud::start().await;
    let output = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args([
            "devices",
            "list",
            "--url",
            &cloud.url(""),
            "--token",
            "wrong",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unauthorized"));
}
