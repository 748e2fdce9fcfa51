//! Live events on `/ws/events`: what subscribers see, by topic; who may
//! subscribe; and a slow subscriber lags alone.

mod support;

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use support::TestCloud;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type EventStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn subscribe_with(
    cloud: &TestCloud,
    query: &str,
    headers: &[(&'static str, String)],
) -> Result<EventStream, tokio_tungstenite::tungstenite::Error> {
    let url = format!("ws://{}/ws/events?{query}", cloud.addr);
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

async fn subscribe(cloud: &TestCloud, query: &str) -> EventStream {
    let bearer = ("authorization", format!("Bearer {}", cloud.token));
    subscribe_with(cloud, query, &[bearer]).await.unwrap()
}

/// The next event, within a deadline.
async fn next_event(events: &mut EventStream) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event within 10 s")
            .expect("stream open")
            .expect("frame");
        if let WsMessage::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

async fn http_status_of_refusal(
    cloud: &TestCloud,
    query: &str,
    headers: &[(&'static str, String)],
) -> u16 {
    match subscribe_with(cloud, query, headers).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_subscriber_sees_a_new_key_the_device_online_its_acceptance_and_offline() {
    let cloud = TestCloud::start().await;
    let mut events = subscribe(&cloud, "topic=devices").await;

    let mut device = cloud.connect("dev-1").await;
    device.authenticate().await;
    let new_key = next_event(&mut events).await;
    assert_eq!(new_key["type"], "device.new_key");
    assert_eq!(new_key["device_id"], "dev-1");
    assert_eq!(
        new_key["data"]["fingerprint"],
        device.fingerprint().as_str()
    );
    let online = next_event(&mut events).await;
    assert_eq!(online["type"], "device.online");
    assert_eq!(online["data"]["status"], "pending");

    let (status, _) = cloud
        .api()
        .request(Method::POST, "/devices/dev-1/accept", Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let accepted = next_event(&mut events).await;
    assert_eq!(accepted["type"], "device.status");
    assert_eq!(accepted["data"]["status"], "accepted");

    device.drop_connection();
    let offline = next_event(&mut events).await;
    assert_eq!(offline["type"], "device.offline");
    assert_eq!(offline["device_id"], "dev-1");
}

#[tokio::test]
async fn a_device_topic_carries_only_that_device_and_the_audit_topic_only_audit_entries() {
    let cloud = TestCloud::start().await;
    let mut one = subscribe(&cloud, "topic=device.dev-1").await;
    let mut audit = subscribe(&cloud, "topic=audit").await;

    let mut other = cloud.connect("dev-2").await;
    other.authenticate().await;
    let mut device = cloud.connect("dev-1").await;
    device.authenticate().await;
    // Device auth events reach the audit topic as the audit log shows them.
    let mut live = Vec::new();
    for expected in ["dev-2", "dev-1"] {
        let entry = next_event(&mut audit).await;
        assert_eq!(entry["type"], "audit.entry");
        assert_eq!(entry["data"]["action"], "new_key");
        assert_eq!(entry["data"]["actor"], expected);
        live.push(entry["data"].clone());
    }
    let page = cloud.api().audit("source=device").await.unwrap();
    assert_eq!(page["entries"][0], live[1]);
    assert_eq!(page["entries"][1], live[0]);
    let first = next_event(&mut one).await;
    assert_eq!(first["type"], "device.new_key");
    assert_eq!(first["device_id"], "dev-1");
    assert_eq!(next_event(&mut one).await["type"], "device.online");

    cloud.api().accept("dev-1").await.unwrap();
    let entry = next_event(&mut audit).await;
    assert_eq!(entry["type"], "audit.entry");
    assert_eq!(entry["data"]["action"], "device.accept");
    assert_eq!(entry["data"]["target"], "dev-1");
    assert_eq!(entry["data"]["actor"], "admin-token");
    assert_eq!(next_event(&mut one).await["type"], "device.status");

    // Health reported by the device reaches its topic.
    device
        .send_message(&protocol::Message::Notification {
            method: "device.health".into(),
            params: Some(json!({ "cpu_percent": 12.5 })),
        })
        .await;
    let health = next_event(&mut one).await;
    assert_eq!(health["type"], "device.health");
    assert_eq!(health["data"]["cpu_percent"], 12.5);
}

#[tokio::test]
async fn subscribing_needs_credentials_a_known_topic_and_the_same_origin() {
    let cloud = TestCloud::start().await;
    assert_eq!(
        http_status_of_refusal(&cloud, "topic=devices", &[]).await,
        401
    );
    let bad_bearer = ("authorization", "Bearer nope".to_string());
    assert_eq!(
        http_status_of_refusal(&cloud, "topic=devices", &[bad_bearer]).await,
        401
    );
    let bearer = ("authorization", format!("Bearer {}", cloud.token));
    for query in [
        "",
        "topic=everything",
        "topic=device.",
        "topic=device.a%20b",
    ] {
        assert_eq!(
            http_status_of_refusal(&cloud, query, std::slice::from_ref(&bearer)).await,
            400,
            "{query}"
        );
    }
    let elsewhere = ("origin", "https://evil.example".to_string());
    assert_eq!(
        http_status_of_refusal(&cloud, "topic=devices", &[bearer.clone(), elsewhere]).await,
        403
    );
    let same = ("origin", format!("http://{}", cloud.addr));
    assert!(subscribe_with(&cloud, "topic=devices", &[bearer, same])
        .await
        .is_ok());
}

#[tokio::test]
async fn a_browser_session_subscribes_with_its_cookie() {
    let cloud = TestCloud::start().await;
    cloud.add_operator("alice", "correct horse battery").await;
    let response = cloud
        .http
        .post(cloud.url("/api/v1/login"))
        .json(&json!({ "name": "alice", "password": "correct horse battery" }))
        .send()
        .await
        .unwrap();
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let headers = [
        ("cookie", cookie),
        ("origin", format!("http://{}", cloud.addr)),
    ];
    let mut events = subscribe_with(&cloud, "topic=devices", &headers)
        .await
        .unwrap();
    let mut device = cloud.connect("dev-1").await;
    device.authenticate().await;
    assert_eq!(next_event(&mut events).await["type"], "device.new_key");
}

/// One subscriber stops reading; the publisher and a reading subscriber go on
/// at full pace, and the stalled one learns, when it reads again, how many it missed.
#[tokio::test]
async fn a_stalled_subscriber_lags_alone_and_is_told_so() {
    let cloud = TestCloud::start().await;
    let mut stalled = subscribe(&cloud, "topic=devices").await;
    let mut reader = subscribe(&cloud, "topic=devices").await;
    // Big events, so the stalled socket's buffers fill and its queue overflows.
    let padding = "x".repeat(32 * 1024);
    let total = 2000;
    let batch = 100;
    for start in (0..total).step_by(batch) {
        for n in start..start + batch {
            cloud.state.devices().events().device(
                "device.health",
                "dev-1",
                json!({ "n": n, "pad": padding }),
            );
        }
        // The reader paces the publisher: it must get every event of the batch.
        for n in start..start + batch {
            let event = next_event(&mut reader).await;
            assert_eq!(event["data"]["n"], n, "the reader lost events");
        }
    }

    let mut received = 0;
    let missed = loop {
        let event = next_event(&mut stalled).await;
        if event["type"] == "lagged" {
            break event["missed"].as_u64().unwrap();
        }
        received += 1;
    };
    assert!(missed > 0);
    assert!(received < total, "{received}");
    // It carries on with the newest events after the gap.
    let after = next_event(&mut stalled).await;
    assert_eq!(after["type"], "device.health");
    assert!(after["data"]["n"].as_u64().unwrap() as usize > received);
    stalled.close(None).await.ok();
}
