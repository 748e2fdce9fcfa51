//! Three cloud instances sharing one fleet: a real PostgreSQL server, a real
//! 3-node NATS cluster (each instance on its own node, so every message
//! between them crosses a route), devices spread over the instances.

mod support;

use std::time::Duration;

use protocol::{close_code, Message};
use serde_json::{json, Value};
use support::{wait_until, TestCloud};
use testkit::fake_device::FakeDevice;
use testkit::nats::NatsCluster;
use testkit::{PostgresServer, PROMPTLY};

/// The shared parts and the instances (each named `cloud-N`).
struct Fleet {
    instances: Vec<TestCloud>,
    nats: NatsCluster,
    _database: PostgresServer,
}

async fn fleet_of_three() -> Fleet {
    let database = PostgresServer::start().await;
    let nats = NatsCluster::start(3).await;
    let configure = |n: usize| support::instance_of(database.url(), nats.nodes[n].url(), n);
    let first = TestCloud::start_with(configure(0)).await;
    let second = first.start_beside(configure(1)).await;
    let third = first.start_beside(configure(2)).await;
    Fleet {
        instances: vec![first, second, third],
        nats,
        _database: database,
    }
}

/// Connects `id` to `instance`, has `decider` accept it, and waits until the
/// device hears so.
async fn accepted_on(instance: &TestCloud, decider: &TestCloud, id: &str) -> FakeDevice {
    let mut device = instance.connect(id).await;
    assert_eq!(device.authenticate().await, json!({"status": "pending"}));
    decider.api().accept(id).await.unwrap();
    device.expect_status_notification("accepted").await;
    device
}

/// Calls `containers.list` through `caller`'s API until the call reaches
/// `device`, which answers `{"method": …, "from": id}`; returns the API's
/// answer. A device that has just connected is reachable from every
/// instance a moment later (its holder's subscription spreads through the
/// NATS cluster): until then a call is `offline`, and is made again.
async fn call_answered(caller: &TestCloud, device: &mut FakeDevice, id: &str) -> Value {
    let api = caller.api();
    for _ in 0..100 {
        let call = api.rpc(id, "containers.list", Some(json!({"all": true})), None);
        tokio::pin!(call);
        tokio::select! {
            early = &mut call => {
                let error = early.expect_err("an answer without the device");
                assert_eq!(error.kind(), Some("offline"), "{error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            request = device.recv() => {
                let Message::Request { id: call_id, method, .. } = request else {
                    panic!("expected a request, got {request:?}")
                };
                device
                    .send_message(&Message::result(call_id, json!({"method": method, "from": id})))
                    .await;
                return call
                    .await
                    .unwrap_or_else(|e| panic!("calling {id} through {}: {e}", caller.addr));
            }
        }
    }
    panic!("{id} never became reachable through {}", caller.addr)
}

#[tokio::test]
async fn a_call_from_every_instance_reaches_every_device() {
    let fleet = fleet_of_three().await;
    let mut devices = Vec::new();
    for (n, instance) in fleet.instances.iter().enumerate() {
        // Accepted through the next instance: the decision crosses to the holder.
        let decider = &fleet.instances[(n + 1) % 3];
        let id = format!("dev-{n}");
        devices.push((id.clone(), accepted_on(instance, decider, &id).await));
    }
    for caller in &fleet.instances {
        for (id, device) in devices.iter_mut() {
            let result = call_answered(caller, device, id).await;
            assert_eq!(result, json!({"method": "containers.list", "from": id}));
        }
    }
    // Every instance lists every device online, held where it connected.
    for viewer in &fleet.instances {
        let listed = viewer.api().devices().await.unwrap();
        for (n, (id, _)) in devices.iter().enumerate() {
            let device = listed["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == json!(id))
                .unwrap();
            assert_eq!(device["online"], json!(true), "{id} on {}", viewer.addr);
            assert_eq!(device["instance"], json!(format!("cloud-{n}")));
        }
    }
}

#[tokio::test]
async fn a_call_to_a_device_no_instance_holds_is_offline_and_an_unknown_id_unknown() {
    let fleet = fleet_of_three().await;
    let device = accepted_on(&fleet.instances[0], &fleet.instances[0], "dev-1").await;
    device.drop_connection();
    let caller = fleet.instances[1].api();
    wait_until("dev-1 is offline everywhere", || async {
        caller.device("dev-1").await.unwrap()["device"]["online"] == json!(false)
    })
    .await;
    let offline = caller.rpc("dev-1", "containers.list", None, None).await;
    assert_eq!(offline.unwrap_err().kind(), Some("offline"));
    let unknown = caller.rpc("dev-9", "containers.list", None, None).await;
    assert_eq!(unknown.unwrap_err().kind(), Some("unknown_device"));
}

#[tokio::test]
async fn reject_and_delete_on_one_instance_close_a_socket_held_by_another() {
    let fleet = fleet_of_three().await;
    let [first, second, third] = &fleet.instances[..] else {
        unreachable!()
    };
    let mut rejected = accepted_on(first, first, "dev-rejected").await;
    let mut deleted = accepted_on(first, first, "dev-deleted").await;
    second.api().reject("dev-rejected").await.unwrap();
    rejected.expect_status_notification("rejected").await;
    assert_eq!(rejected.expect_close().await.0, close_code::REJECTED);
    third.api().delete("dev-deleted").await.unwrap();
    assert_eq!(deleted.expect_close().await.0, close_code::DELETED);
}

#[tokio::test]
async fn a_device_connecting_to_a_second_instance_replaces_its_older_session() {
    let fleet = fleet_of_three().await;
    let [first, second, third] = &fleet.instances[..] else {
        unreachable!()
    };
    let mut older = accepted_on(first, first, "dev-1").await;
    let mut newer = second.connect_with_key("dev-1", older.key.clone()).await;
    assert_eq!(newer.authenticate().await, json!({"status": "accepted"}));
    assert_eq!(older.expect_close().await.0, close_code::REPLACED);
    // Calls from anywhere now reach the newer session.
    let result = call_answered(third, &mut newer, "dev-1").await;
    assert_eq!(result["from"], json!("dev-1"));
    let listed = third.api().device("dev-1").await.unwrap();
    assert_eq!(listed["device"]["instance"], json!("cloud-1"));
}

#[tokio::test]
async fn a_holder_shutting_down_fails_its_calls_as_disconnected_and_its_device_returns_elsewhere() {
    let mut fleet = fleet_of_three().await;
    let mut device = accepted_on(&fleet.instances[0], &fleet.instances[0], "dev-1").await;
    let caller = fleet.instances[1].api();
    let call = tokio::spawn(async move {
        caller
            .rpc(
                "dev-1",
                "containers.list",
                None,
                Some(Duration::from_secs(60)),
            )
            .await
    });
    // The call reached the device; its holder goes away before it answers.
    let Message::Request { .. } = device.recv().await else {
        panic!("expected the call")
    };
    fleet.instances[0].shut_down().await.unwrap();
    let failed = tokio::time::timeout(PROMPTLY, call)
        .await
        .expect("the call ends at once, not at its timeout")
        .unwrap();
    assert_eq!(failed.unwrap_err().kind(), Some("disconnected"));

    // The device comes back on another instance, still accepted, and calls
    // from the third reach it there.
    let key = device.key.clone();
    let mut device = fleet.instances[1].connect_with_key("dev-1", key).await;
    assert_eq!(device.authenticate().await, json!({"status": "accepted"}));
    let result = call_answered(&fleet.instances[2], &mut device, "dev-1").await;
    assert_eq!(result["from"], json!("dev-1"));
}

#[tokio::test]
async fn service_continues_when_the_nats_node_of_an_instance_dies() {
    let database = PostgresServer::start().await;
    let nats = NatsCluster::start(3).await;
    // Each instance knows the whole cluster, starting from a node of its own.
    let configure = |n: usize| {
        let mut nodes: Vec<String> = nats.nodes.iter().map(|node| node.url()).collect();
        nodes.rotate_left(n);
        support::instance_of(database.url(), nodes.join(","), n)
    };
    let first = TestCloud::start_with(configure(0)).await;
    let second = first.start_beside(configure(1)).await;
    let mut nats = nats;
    let mut device = accepted_on(&first, &first, "dev-1").await;
    assert_eq!(
        call_answered(&second, &mut device, "dev-1").await["from"],
        json!("dev-1")
    );
    nats.nodes[0].kill();
    // The first instance's client moves to another node; calls resume.
    testkit::wait_until("a call crosses again", Duration::from_secs(15), || {
        let api = second.api();
        async move {
            let probe = api.rpc(
                "dev-1",
                "containers.list",
                None,
                Some(Duration::from_millis(500)),
            );
            // Unanswered here: the probe only has to reach the device.
            probe
                .await
                .err()
                .filter(|e| e.kind() == Some("timed_out"))
                .map(drop)
        }
    })
    .await;
    // Drain the probes the device heard, then a call is answered end to end.
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(200), device.recv_or_close()).await
    {}
    assert_eq!(
        call_answered(&second, &mut device, "dev-1").await["from"],
        json!("dev-1")
    );
}

#[tokio::test]
async fn live_events_reach_subscribers_on_every_instance() {
    let fleet = fleet_of_three().await;
    let mut watchers = Vec::new();
    for instance in &fleet.instances {
        watchers.push(subscribe_events(instance).await);
    }
    let _device = accepted_on(&fleet.instances[2], &fleet.instances[0], "dev-1").await;
    for watcher in &mut watchers {
        // Each instance hears both, whichever published it; the one
        // published here may come before the one relayed from elsewhere.
        // `next_event` fails the test when one does not come in time.
        let mut kinds = Vec::new();
        while !(kinds.contains(&"device.online".to_string())
            && kinds.contains(&"device.status".to_string()))
        {
            let event = next_event(watcher).await;
            if event["device_id"] == json!("dev-1") {
                kinds.push(event["type"].as_str().unwrap().to_owned());
            }
        }
    }
    drop(fleet.nats);
}

type EventSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe_events(instance: &TestCloud) -> EventSocket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}/ws/events?topic=devices", instance.addr);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", instance.token).parse().unwrap(),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
}

async fn next_event(socket: &mut EventSocket) -> Value {
    use futures::StreamExt;
    loop {
        let frame = tokio::time::timeout(PROMPTLY, socket.next())
            .await
            .expect("an event in time")
            .expect("the event stream is open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn a_call_fails_with_disconnected_when_its_holder_falls_silent() {
    let database = PostgresServer::start().await;
    // One NATS node (so that no other is advertised to reconnect to), which
    // the holder reaches through a link the test cuts: the holder stays up,
    // but no answer and no beat of it can reach the caller any more.
    let nats = testkit::nats::NatsServer::start().await;
    let link = Link::to(nats.port()).await;
    let configure = |n: usize, nats_url: String| support::instance_of(database.url(), nats_url, n);
    let holder = TestCloud::start_with(configure(0, link.url())).await;
    let caller = holder.start_beside(configure(1, nats.url())).await;
    let mut device = accepted_on(&holder, &holder, "dev-1").await;
    // Reachable from the caller first: until the holder's subscription
    // reaches the broker, a call is `offline` and never gets to the device.
    call_answered(&caller, &mut device, "dev-1").await;
    let api = caller.api();
    let call = tokio::spawn(async move {
        api.rpc(
            "dev-1",
            "containers.list",
            None,
            Some(Duration::from_secs(60)),
        )
        .await
    });
    let Message::Request { .. } = device.recv().await else {
        panic!("expected the call")
    };
    link.cut();
    let failed = tokio::time::timeout(cloud::device::cluster::SILENCE + PROMPTLY, call)
        .await
        .expect("the call ends once its holder is silent, not at its timeout")
        .unwrap();
    assert_eq!(failed.unwrap_err().kind(), Some("disconnected"));
}

/// A TCP link to a local port that the test can cut, with every connection
/// through it (a network partition of one party).
struct Link {
    port: u16,
    forwarding: tokio::task::JoinHandle<()>,
    connections: std::sync::Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
}

impl Link {
    async fn to(target: u16) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let held = connections.clone();
        let forwarding = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                held.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Link {
            port,
            forwarding,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops every connection and accepts no more.
    fn cut(&self) {
        self.forwarding.abort();
        self.connections.lock().unwrap().abort_all();
    }
}

#[tokio::test]
async fn failed_sign_ins_spread_over_instances_meet_one_limit() {
    let fleet = fleet_of_three().await;
    fleet.instances[0]
        .add_operator("alice", "correct horse battery")
        .await;
    let limit = cloud::config::Limits::default().sign_in_failures_per_name_per_minute;
    let sign_in = |n: usize| {
        let instance = &fleet.instances[n % 3];
        instance
            .http
            .post(instance.url("/api/v1/login"))
            .json(&json!({"name": "alice", "password": "guess"}))
            .send()
    };
    // The limit's failures, each on the next instance, as a load balancer
    // would spread them.
    for n in 0..limit as usize {
        assert_eq!(sign_in(n).await.unwrap().status(), 401, "failure {n}");
    }
    for n in 0..3 {
        let refused = sign_in(n).await.unwrap();
        assert_eq!(refused.status(), 429, "on instance {n}, past the limit");
        assert!(refused.headers().contains_key("retry-after"));
    }
}

/// A device rotating its key on one instance: the registry the instances
/// share holds the new key, so another refuses the old key and takes the new.
#[tokio::test]
async fn a_key_rotated_on_one_instance_holds_on_every_instance() {
    let fleet = fleet_of_three().await;
    let [first, second, _] = &fleet.instances[..] else {
        unreachable!()
    };
    let mut device = accepted_on(first, first, "device-1").await;
    let old = device.key.clone();
    let next = protocol::keys::generate();
    let id = device.send_rotation(next.verifying_key(), &next).await;
    let rotated = device.expect_response(json!(id)).await.unwrap();
    assert_eq!(
        rotated["fingerprint"],
        protocol::keys::fingerprint(&next.verifying_key())
    );

    let mut stale = second.connect_with_key("device-1", old).await;
    assert_eq!(stale.authenticate().await["data"]["reason"], "key_mismatch");
    assert_eq!(stale.expect_close().await.0, close_code::KEY_MISMATCH);
    let mut moved = second.connect_with_key("device-1", next).await;
    assert_eq!(moved.authenticate().await, json!({"status": "accepted"}));
    call_answered(second, &mut moved, "device-1").await;
}

#[tokio::test]
async fn queued_calls_and_jobs_reach_devices_on_every_instance() {
    let fleet = fleet_of_three().await;
    let [first, second, third] = &fleet.instances[..] else {
        unreachable!("three instances")
    };
    // A job started on the first instance calls devices held by each one.
    let (called, _calls) = tokio::sync::mpsc::unbounded_channel();
    for (n, instance) in fleet.instances.iter().enumerate() {
        let id = format!("dev-{n}");
        support::answer_calls(accepted_on(instance, first, &id).await, &id, called.clone());
    }
    let api = first.api();
    // Each device is reachable from the first instance once its holder's
    // subscription has spread through the cluster.
    wait_until("every device answers through the first instance", || {
        let api = api.clone();
        async move {
            let mut answered = 0;
            for n in 0..3 {
                answered += usize::from(
                    api.rpc(&format!("dev-{n}"), "ping.me", None, None)
                        .await
                        .is_ok(),
                );
            }
            answered == 3
        }
    })
    .await;
    let started = api
        .send(
            reqwest::Method::POST,
            "/jobs",
            Some(&json!({"method": "containers.list"})),
        )
        .await
        .unwrap();
    let path = format!("/jobs/{}", started["job"]["id"]);
    wait_until("the job finishes", || {
        let (api, path) = (api.clone(), path.clone());
        async move { api.get(&path).await.unwrap()["job"]["state"] == "finished" }
    })
    .await;
    let job = api.get(&path).await.unwrap();
    assert_eq!(job["job"]["tally"], json!({"ok": 3}), "{job}");

    // A call queued on the second instance for a device that is offline is
    // sent by the instance the device comes back to.
    let key = protocol::keys::generate();
    second
        .api()
        .preauthorize(
            "van-1",
            &protocol::keys::public_key_to_pem(&key.verifying_key()),
        )
        .await
        .unwrap();
    let queued = second
        .api()
        .send(
            reqwest::Method::POST,
            "/devices/van-1/calls",
            Some(&json!({"method": "containers.list", "ttl_ms": 60_000})),
        )
        .await
        .unwrap();
    let id = queued["call"]["id"].as_i64().unwrap();
    let mut van = third.connect_with_key("van-1", key).await;
    assert_eq!(van.authenticate().await, json!({"status": "accepted"}));
    let Message::Request {
        id: call, method, ..
    } = van.recv().await
    else {
        panic!("the queued call is sent");
    };
    assert_eq!(method, "containers.list");
    van.send_message(&Message::result(call, json!({"from": "van-1"})))
        .await;
    let call_path = format!("/devices/van-1/calls/{id}");
    wait_until(
        "the queued call succeeds, as every instance sees it",
        || {
            let path = call_path.clone();
            let apis = [first.api(), second.api(), third.api()];
            async move {
                for api in apis {
                    if api.get(&path).await.unwrap()["call"]["state"] != "successful" {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), van.recv())
            .await
            .is_err(),
        "sent once, though three instances keep the queue"
    );
}
