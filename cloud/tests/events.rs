//! Live events on `/ws/events`: what subscribers see, by topic; who may
//! subscribe; a slow subscriber lags alone; topics named in the query (repeated
//! or comma-separated) or changed in-band, each starting with a snapshot of
//! the current state; and what a client may send is bounded, a socket that
//! sends more closed with the reason while the others carry on.

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

/// A socket subscribed to the query's topics, past the snapshot each
/// `devices` or `device.<id>` topic starts with.
async fn subscribe(cloud: &TestCloud, query: &str) -> EventStream {
    let bearer = ("authorization", format!("Bearer {}", cloud.token));
    let mut events = subscribe_with(cloud, query, &[bearer]).await.unwrap();
    let with_snapshot = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("topic="))
        .flat_map(|topics| topics.split(','))
        .filter(|topic| *topic == "devices" || topic.starts_with("device."))
        .count();
    for _ in 0..with_snapshot {
        assert_eq!(next_event(&mut events).await["type"], "snapshot");
    }
    events
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
        "topic=everything",
        "topic=device.",
        "topic=device.a%20b",
        "topic=devices,",
        "topic=devices,everything",
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
    assert!(
        subscribe_with(&cloud, "topic=devices", &[bearer.clone(), same])
            .await
            .is_ok()
    );
    // No topic yet is allowed: the socket subscribes in-band.
    assert!(subscribe_with(&cloud, "", &[bearer]).await.is_ok());
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
    assert_eq!(next_event(&mut events).await["type"], "snapshot");
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

/// Sends a client message as text.
async fn send(events: &mut EventStream, message: Value) {
    use futures::SinkExt;
    events
        .send(WsMessage::text(message.to_string()))
        .await
        .expect("the socket takes a message");
}

/// Publishes a `device.health` event about `device_id` carrying `n`.
fn publish(cloud: &TestCloud, device_id: &str, n: u64) {
    cloud
        .state
        .devices()
        .events()
        .device("device.health", device_id, json!({ "n": n }));
}

/// The close frame the server ends the socket with (after any messages).
async fn close_frame(events: &mut EventStream) -> (u16, String) {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the socket closes within 10 s");
        match frame {
            Some(Ok(WsMessage::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Some(Ok(WsMessage::Close(None))) => panic!("closed without a reason"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn comma_separated_topics_are_each_followed() {
    let cloud = TestCloud::start().await;
    let mut events = subscribe(&cloud, "topic=device.dev-1,audit").await;
    publish(&cloud, "dev-2", 0); // neither topic
    publish(&cloud, "dev-1", 1);
    let health = next_event(&mut events).await;
    assert_eq!(health["device_id"], "dev-1");
    assert_eq!(health["data"]["n"], 1);
    let mut device = cloud.connect("dev-1").await;
    device.authenticate().await;
    // The device's own events and its audit entry both arrive.
    let mut kinds = Vec::new();
    while !(kinds.contains(&"audit.entry".to_owned())
        && kinds.contains(&"device.new_key".to_owned()))
    {
        kinds.push(
            next_event(&mut events).await["type"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
}

#[tokio::test]
async fn a_snapshot_of_the_current_state_comes_before_the_live_events() {
    let cloud = TestCloud::start().await;
    let _online = cloud.accepted_device("dev-1").await;
    let mut pending = cloud.connect("dev-2").await;
    pending.authenticate().await;
    pending.drop_connection();
    testkit::wait_until("dev-2 offline", testkit::PROMPTLY, || async {
        let device = cloud.api().device("dev-2").await.ok()?;
        (device["device"]["online"] == false).then_some(())
    })
    .await;

    let bearer = ("authorization", format!("Bearer {}", cloud.token));
    let mut events = subscribe_with(&cloud, "topic=devices&topic=device.dev-1", &[bearer])
        .await
        .unwrap();
    publish(&cloud, "dev-1", 7);

    let all = next_event(&mut events).await;
    assert_eq!(all["type"], "snapshot");
    assert_eq!(all["topic"], "devices");
    assert_eq!(all["total"], 2);
    assert_eq!(all["truncated"], false);
    let state_of = |id: &str| {
        all["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} in {all}"))
    };
    assert_eq!(state_of("dev-1")["status"], "accepted");
    assert_eq!(state_of("dev-1")["online"], true);
    assert_eq!(state_of("dev-2")["status"], "pending");
    assert_eq!(state_of("dev-2")["online"], false);

    let one = next_event(&mut events).await;
    assert_eq!(one["type"], "snapshot");
    assert_eq!(one["topic"], "device.dev-1");
    assert_eq!(one["device"]["id"], "dev-1");
    assert_eq!(one["device"]["status"], "accepted");
    assert_eq!(one["device"]["online"], true);

    let live = next_event(&mut events).await;
    assert_eq!(live["type"], "device.health");
    assert_eq!(live["data"]["n"], 7);
}

#[tokio::test]
async fn subscribe_and_unsubscribe_in_band_change_what_arrives() {
    let cloud = TestCloud::start().await;
    let _device = cloud.accepted_device("dev-1").await;
    // No topic at the start: nothing arrives until it subscribes.
    let mut events = subscribe(&cloud, "").await;
    publish(&cloud, "dev-1", 1);

    send(
        &mut events,
        json!({ "subscribe": ["device.dev-1", "device.dev-9"] }),
    )
    .await;
    let ack = next_event(&mut events).await;
    assert_eq!(ack["type"], "subscribed");
    assert_eq!(ack["topics"], json!(["device.dev-1", "device.dev-9"]));
    assert_eq!(ack["now"], json!(["device.dev-1", "device.dev-9"]));
    let known = next_event(&mut events).await;
    assert_eq!(known["type"], "snapshot");
    assert_eq!(known["device"]["status"], "accepted");
    // A device not registered (yet) has no state, but may be followed.
    let unknown = next_event(&mut events).await;
    assert_eq!(unknown["type"], "snapshot");
    assert_eq!(unknown["topic"], "device.dev-9");
    assert_eq!(unknown["device"], Value::Null);

    publish(&cloud, "dev-1", 2);
    assert_eq!(next_event(&mut events).await["data"]["n"], 2);
    publish(&cloud, "dev-9", 3);
    assert_eq!(next_event(&mut events).await["data"]["n"], 3);

    send(&mut events, json!({ "unsubscribe": ["device.dev-1"] })).await;
    let ack = next_event(&mut events).await;
    assert_eq!(ack["type"], "unsubscribed");
    assert_eq!(ack["topics"], json!(["device.dev-1"]));
    assert_eq!(ack["now"], json!(["device.dev-9"]));
    publish(&cloud, "dev-1", 4); // no longer followed
    publish(&cloud, "dev-9", 5);
    let next = next_event(&mut events).await;
    assert_eq!(next["device_id"], "dev-9");
    assert_eq!(next["data"]["n"], 5);

    // Subscribing to `devices` again sends its snapshot, then its events.
    send(&mut events, json!({ "subscribe": ["devices"] })).await;
    assert_eq!(next_event(&mut events).await["type"], "subscribed");
    let snapshot = next_event(&mut events).await;
    assert_eq!(snapshot["topic"], "devices");
    assert_eq!(snapshot["devices"][0]["id"], "dev-1");
    publish(&cloud, "dev-1", 6);
    // `devices` carries every device's events, the cloud's own among them
    // (its device's connection and status): the one published here comes.
    let health = loop {
        let event = next_event(&mut events).await;
        if event["type"] == "device.health" {
            break event;
        }
    };
    assert_eq!(health["data"]["n"], 6);
}

#[tokio::test]
async fn bad_requests_are_answered_with_the_reason_and_the_socket_stays() {
    let cloud = TestCloud::start().await;
    let mut events = subscribe(&cloud, "topic=device.dev-1").await;
    let refusals = [
        (json!("subscribe"), "not a message this socket understands"),
        (
            json!({ "subscribe": "devices" }),
            "not a message this socket understands",
        ),
        (
            json!({ "subscribe": ["devices"], "unsubscribe": ["audit"] }),
            "either",
        ),
        (json!({ "follow": ["devices"] }), "unknown field"),
        (
            json!({ "subscribe": ["devices", "everything"] }),
            "unknown topic \"everything\"",
        ),
    ];
    for (message, says) in refusals {
        send(&mut events, message.clone()).await;
        let answer = next_event(&mut events).await;
        assert_eq!(answer["type"], "error", "{message}");
        let text = answer["message"].as_str().unwrap();
        assert!(text.contains(says), "{message}: {text}");
    }
    // The bad topic is named, and nothing of that message took effect.
    send(&mut events, json!({ "subscribe": ["audit", "device."] })).await;
    let answer = next_event(&mut events).await;
    assert_eq!(answer["topic"], "device.");
    // Not JSON at all.
    {
        use futures::SinkExt;
        events.send(WsMessage::text("{subscribe")).await.unwrap();
    }
    let answer = next_event(&mut events).await;
    assert_eq!(answer["type"], "error");
    // Past the cap on topics: refused whole, the socket keeps what it had.
    let many: Vec<String> = (0..64).map(|n| format!("device.d{n}")).collect();
    send(&mut events, json!({ "subscribe": many })).await;
    let answer = next_event(&mut events).await;
    assert_eq!(answer["type"], "error");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("at most 64 topics"),
        "{answer}"
    );
    publish(&cloud, "d0", 0);
    publish(&cloud, "dev-1", 1);
    let still = next_event(&mut events).await;
    assert_eq!(still["device_id"], "dev-1");
    assert_eq!(still["data"]["n"], 1);
}

/// Each way of abusing a socket closes it with its reason, while a
/// bystander's socket keeps receiving.
#[tokio::test]
async fn an_abusive_socket_is_closed_with_the_reason_and_a_bystander_carries_on() {
    let cloud = TestCloud::start().await;
    let mut bystander = subscribe(&cloud, "topic=device.dev-1").await;
    let mut published = 0;

    let mut oversize = subscribe(&cloud, "").await;
    let padding = "x".repeat(5000);
    send(
        &mut oversize,
        json!({ "subscribe": ["devices"], "pad": padding }),
    )
    .await;
    let (code, reason) = close_frame(&mut oversize).await;
    assert_eq!(code, 1009);
    assert_eq!(reason, "message too large: at most 4096 bytes");

    let mut binary = subscribe(&cloud, "").await;
    {
        use futures::SinkExt;
        binary
            .send(WsMessage::binary(b"{\"subscribe\":[]}".to_vec()))
            .await
            .unwrap();
    }
    let (code, reason) = close_frame(&mut binary).await;
    assert_eq!(code, 1003);
    assert!(
        reason.contains("binary messages are not accepted"),
        "{reason}"
    );

    let mut chatty = subscribe(&cloud, "").await;
    for _ in 0..100 {
        use futures::SinkExt;
        if chatty
            .send(WsMessage::text(
                json!({ "unsubscribe": ["audit"] }).to_string(),
            ))
            .await
            .is_err()
        {
            break; // closed already
        }
    }
    let (code, reason) = close_frame(&mut chatty).await;
    assert_eq!(code, 1008);
    assert!(
        reason.starts_with("too many messages: at most 5 a second"),
        "{reason}"
    );

    for _ in 0..3 {
        publish(&cloud, "dev-1", published);
        assert_eq!(next_event(&mut bystander).await["data"]["n"], published);
        published += 1;
    }
}
