//! Events to devices (`POST /devices/{id}/events`, `cloud devices notify`):
//! the device hears a signed notification with the event's name and params;
//! an event reaches a device another instance holds (a real PostgreSQL and a
//! real 2-node NATS cluster); a device sent too many is refused for a while
//! without holding up the others.

mod support;

use protocol::Message;
use serde_json::json;
use support::{wait_until, TestCloud};
use testkit::fake_device::FakeDevice;
use testkit::nats::NatsCluster;
use testkit::PostgresServer;

/// The next message `device` hears: the event `event` with `params`.
async fn expect_event(device: &mut FakeDevice, event: &str, params: serde_json::Value) {
    // `recv` verifies the cloud's signature, as a bridge does.
    match device.recv().await {
        Message::Notification {
            method,
            params: heard,
        } => {
            assert_eq!(method, event);
            assert_eq!(heard, Some(params));
        }
        other => panic!("expected the event {event}, got {other:?}"),
    }
}

#[tokio::test]
async fn an_event_reaches_the_device_as_a_signed_notification_from_the_api_and_the_cli() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;

    let sent = cloud
        .api()
        .notify("dev-1", "example.notice", Some(json!({"text": "hi"})))
        .await
        .unwrap();
    assert_eq!(sent, json!({"status": "sent"}));
    expect_event(&mut device, "example.notice", json!({"text": "hi"})).await;

    // Not blocking: the cloud answering it runs on this test's runtime.
    let cli = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cloud"))
            .args(args)
            .arg(format!("--url={}", cloud.url("")))
            .arg(format!("--token={}", cloud.token))
            .env_remove("CLOUD_URL")
            .env_remove("CLOUD_TOKEN")
            .output()
    };
    let output = cli(&[
        "devices",
        "notify",
        "dev-1",
        "example.notice",
        "--params",
        r#"{"n": 2}"#,
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout.trim(), "sent example.notice to dev-1");
    expect_event(&mut device, "example.notice", json!({"n": 2})).await;

    let output = cli(&[
        "devices",
        "notify",
        "dev-1",
        "example.notice",
        "--params",
        "{",
    ])
    .await
    .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--params is not valid JSON"),
        "{output:?}"
    );
    let output = cli(&["devices", "notify", "dev-1", "auth.status"])
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("protocol's own"),
        "{output:?}"
    );
    // Nothing more reached the device: the next message it hears is a new event.
    cloud
        .api()
        .notify("dev-1", "example.last", None)
        .await
        .unwrap();
    match device.recv().await {
        Message::Notification { method, params } => {
            assert_eq!((method.as_str(), params), ("example.last", None));
        }
        other => panic!("expected example.last, got {other:?}"),
    }
}

#[tokio::test]
async fn a_device_sent_too_many_events_is_refused_for_a_while_and_others_are_not() {
    let cloud = TestCloud::start().await;
    let _busy = cloud.accepted_device("busy").await;
    let mut quiet = cloud.accepted_device("quiet").await;
    let api = cloud.api();
    let mut refused = None;
    // The burst is 20; the allowance refills at 10 a second, far slower than
    // this loop sends.
    for n in 0..40 {
        if let Err(error) = api
            .notify("busy", "example.tick", Some(json!({"n": n})))
            .await
        {
            refused = Some(error);
            break;
        }
    }
    let refused = refused.expect("a refusal within 40 events");
    assert_eq!(
        (refused.status(), refused.kind()),
        (Some(429), Some("rate_limited"))
    );
    assert!(refused.to_string().contains("events a second"), "{refused}");
    api.notify("quiet", "example.tick", None).await.unwrap();
    match quiet.recv().await {
        Message::Notification { method, .. } => assert_eq!(method, "example.tick"),
        other => panic!("expected the event, got {other:?}"),
    }
}

#[tokio::test]
async fn an_event_reaches_a_device_held_by_another_instance_and_is_offline_when_none_holds_it() {
    let database = PostgresServer::start().await;
    let nats = NatsCluster::start(2).await;
    let configure = |n: usize| support::instance_of(database.url(), nats.nodes[n].url(), n);
    let holder = TestCloud::start_with(configure(0)).await;
    let other = holder.start_beside(configure(1)).await;

    // Pending on the holder: refused as not accepted through the other.
    let mut device = holder.connect("dev-1").await;
    assert_eq!(device.authenticate().await, json!({"status": "pending"}));
    let api = other.api();
    wait_until(
        "dev-1 to be reachable through the other instance",
        || async {
            let refused = api.notify("dev-1", "example.notice", None).await;
            refused.is_err_and(|e| e.kind() == Some("not_accepted"))
        },
    )
    .await;

    api.accept("dev-1").await.unwrap();
    device.expect_status_notification("accepted").await;
    let sent = api
        .notify("dev-1", "example.notice", Some(json!({"via": "cloud-1"})))
        .await
        .unwrap();
    assert_eq!(sent, json!({"status": "sent"}));
    expect_event(&mut device, "example.notice", json!({"via": "cloud-1"})).await;
    let audit = api
        .audit("action=device.notify&target=dev-1")
        .await
        .unwrap();
    assert_eq!(audit["entries"][0]["outcome"], "ok", "{audit}");

    device.drop_connection();
    wait_until("dev-1 to be offline everywhere", || async {
        api.device("dev-1").await.unwrap()["device"]["online"] == json!(false)
    })
    .await;
    let offline = api.notify("dev-1", "example.notice", None).await;
    let error = offline.unwrap_err();
    assert_eq!((error.status(), error.kind()), (Some(503), Some("offline")));
}
