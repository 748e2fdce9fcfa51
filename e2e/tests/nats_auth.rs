//! The device stack's broker with the users `scripts/ensure-device-nats.sh`
//! makes, on a real nats-server: a client without credentials is refused, the
//! worker's user may not speak for the bridge nor read the cloud's requests
//! beyond its own methods, and a real worker and bridge still do their work
//! with their users.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerError};
use futures::StreamExt;
use serde_json::{json, Value};
use testkit::nats::NatsServer;
use testkit::PROMPTLY;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use worker::{NatsLogin, WorkerConfig};

/// How long a test waits to see that something does not happen.
const A_MOMENT: Duration = Duration::from_millis(500);

/// The users and configuration the script makes, in a fresh folder.
struct Users {
    dir: tempfile::TempDir,
}

impl Users {
    fn new() -> Users {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-device-nats.sh");
        let made = Command::new(script).arg(dir.path()).output().unwrap();
        assert!(made.status.success(), "{made:?}");
        Users { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    fn login(&self, user: &str) -> NatsLogin {
        let password = std::fs::read_to_string(self.dir.path().join(format!("{user}.password")));
        NatsLogin {
            user: user.into(),
            password: password.unwrap().trim().into(),
        }
    }
}

/// A client signed in as `user`, and the errors the server sends it.
async fn connect_as(
    server: &NatsServer,
    login: &NatsLogin,
) -> (Client, mpsc::UnboundedReceiver<String>) {
    let (errors, received) = mpsc::unbounded_channel();
    let client = worker::nats_options("test", Some(login))
        .event_callback(move |event| {
            let errors = errors.clone();
            async move {
                if let Event::ServerError(ServerError::Other(error)) = event {
                    let _ = errors.send(error);
                }
            }
        })
        .connect(server.url())
        .await
        .unwrap();
    (client, received)
}

async fn expect_server_error(errors: &mut mpsc::UnboundedReceiver<String>, says: &str) {
    let error = tokio::time::timeout(PROMPTLY, errors.recv())
        .await
        .unwrap_or_else(|_| panic!("the server said nothing; expected {says:?}"))
        .unwrap();
    assert!(
        error.to_lowercase().contains(&says.to_lowercase()),
        "{error:?} does not say {says:?}"
    );
}

#[tokio::test]
async fn a_client_without_credentials_or_with_a_wrong_password_is_refused() {
    let users = Users::new();
    let server = NatsServer::start_with_config(users.config()).await;
    let anonymous = ConnectOptions::new().connect(server.url()).await;
    let error = anonymous.expect_err("a client without a user is refused");
    assert!(
        error.to_string().to_lowercase().contains("authorization"),
        "{error}"
    );
    let wrong = NatsLogin {
        password: "guessed".into(),
        ..users.login("worker")
    };
    let refused = worker::nats_options("test", Some(&wrong))
        .connect(server.url())
        .await;
    assert!(refused.is_err(), "a wrong password is refused");
    // And the right one is let in.
    let (client, _) = connect_as(&server, &users.login("worker")).await;
    client.flush().await.unwrap();
}

#[tokio::test]
async fn the_worker_may_not_announce_the_bridge_status_nor_read_every_request() {
    let users = Users::new();
    let server = NatsServer::start_with_config(users.config()).await;
    let (bridge, _) = connect_as(&server, &users.login("bridge")).await;
    let (worker, mut errors) = connect_as(&server, &users.login("worker")).await;
    // What the worker hears of bridge.status, to see a forged one not arrive.
    let mut statuses = worker.subscribe("bridge.status").await.unwrap();
    // A flush is a round trip: the server has the subscription after it.
    worker.flush().await.unwrap();

    worker
        .publish("bridge.status", r#"{"state":"live"}"#.into())
        .await
        .unwrap();
    expect_server_error(&mut errors, "permissions violation for publish").await;
    assert!(
        tokio::time::timeout(A_MOMENT, statuses.next())
            .await
            .is_err(),
        "the forged status reached no one"
    );

    let mut everything = worker.subscribe("rpc.>").await.unwrap();
    expect_server_error(&mut errors, "permissions violation for subscription").await;
    bridge
        .publish("rpc.containers.list", json!({}).to_string().into())
        .await
        .unwrap();
    assert!(tokio::time::timeout(A_MOMENT, everything.next())
        .await
        .map_or(true, |message| message.is_none()));

    // A method outside the worker's list, even in its queue group, is refused too.
    let _other = worker
        .queue_subscribe("rpc.shell.exec", "workers".into())
        .await
        .unwrap();
    expect_server_error(&mut errors, "permissions violation for subscription").await;

    // What the worker may do still works: the bridge hears its notification.
    let mut notes = bridge.subscribe("cloud.notify.>").await.unwrap();
    bridge.flush().await.unwrap();
    // Published again until heard (a loaded machine may delay the first):
    // a permission that refused it would refuse every one.
    let heard = tokio::time::timeout(2 * PROMPTLY, async {
        loop {
            worker
                .publish("cloud.notify.device.health", r#"{"cpu":1}"#.into())
                .await
                .unwrap();
            worker.flush().await.unwrap();
            if let Ok(Some(note)) = tokio::time::timeout(A_MOMENT, notes.next()).await {
                break note;
            }
        }
    })
    .await
    .expect("the bridge hears the worker's notification");
    assert_eq!(heard.subject.as_str(), "cloud.notify.device.health");
}

/// The bridge's user reads only the bridge's subjects: not the worker's
/// answers to others, nor anything it has no business with.
#[tokio::test]
async fn the_bridge_may_not_serve_methods_nor_read_other_inboxes() {
    let users = Users::new();
    let server = NatsServer::start_with_config(users.config()).await;
    let (bridge, mut errors) = connect_as(&server, &users.login("bridge")).await;
    let _serving = bridge
        .queue_subscribe("rpc.containers.list", "workers".into())
        .await
        .unwrap();
    expect_server_error(&mut errors, "permissions violation for subscription").await;
    let _snooping = bridge.subscribe("_INBOX_worker.>").await.unwrap();
    expect_server_error(&mut errors, "permissions violation for subscription").await;
}

/// Only the bridge's own user may ask the bridge to rotate the device key
/// (`bridge rotate-key`): a worker may neither ask nor listen.
#[tokio::test]
async fn only_the_bridge_user_may_ask_for_a_key_rotation() {
    let users = Users::new();
    let server = NatsServer::start_with_config(users.config()).await;
    let (bridge, _) = connect_as(&server, &users.login("bridge")).await;
    let (cli, _) = connect_as(&server, &users.login("bridge")).await;
    let (worker, mut errors) = connect_as(&server, &users.login("worker")).await;
    let mut served = bridge
        .subscribe(protocol::nats::BRIDGE_ROTATE_KEY)
        .await
        .unwrap();
    bridge.flush().await.unwrap();

    worker
        .publish(protocol::nats::BRIDGE_ROTATE_KEY, "".into())
        .await
        .unwrap();
    expect_server_error(&mut errors, "permissions violation for publish").await;
    let _listening = worker
        .subscribe(protocol::nats::BRIDGE_ROTATE_KEY)
        .await
        .unwrap();
    expect_server_error(&mut errors, "permissions violation for subscription").await;

    let answer = tokio::spawn(async move {
        let request = served.next().await.expect("the bridge hears the request");
        bridge
            .publish(request.reply.unwrap(), "rotated".into())
            .await
            .unwrap();
        bridge.flush().await.unwrap();
    });
    let reply = tokio::time::timeout(
        PROMPTLY,
        cli.request(protocol::nats::BRIDGE_ROTATE_KEY, "".into()),
    )
    .await
    .expect("answered in time")
    .expect("answered");
    assert_eq!(&reply.payload[..], b"rotated");
    answer.await.unwrap();
}

/// A real worker signed in as `worker` serves every method it announces, and
/// its health check (as the worker's user) passes: the script's list of
/// methods and the worker's own cannot drift apart unnoticed.
#[tokio::test]
async fn a_real_worker_serves_every_method_it_announces_through_the_broker() {
    let users = Users::new();
    let server = NatsServer::start_with_config(users.config()).await;
    let worker_login = users.login("worker");
    let nats = worker::connect_nats(&server.url(), Some(&worker_login))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker::run(
        nats,
        testkit::docker::docker().await,
        WorkerConfig::default(),
        shutdown.clone(),
    ));
    let (bridge, mut errors) = connect_as(&server, &users.login("bridge")).await;

    let ask = |method: &str, params: Value| {
        let bridge = bridge.clone();
        let subject = format!("rpc.{method}");
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        async move {
            let reply = tokio::time::timeout(
                PROMPTLY,
                bridge.request(subject.clone(), body.to_string().into()),
            )
            .await
            .unwrap_or_else(|_| panic!("{subject} did not answer"))
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };
    // Subscriptions are restored in the background; wait for the first answer.
    let discovered = loop {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "rpc.discover"});
        if let Ok(Ok(reply)) = tokio::time::timeout(
            PROMPTLY,
            bridge.request("rpc.rpc.discover", body.to_string().into()),
        )
        .await
        {
            break serde_json::from_slice::<Value>(&reply.payload).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let methods: Vec<String> = discovered["result"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    assert!(methods.len() >= 8, "{discovered}");
    for method in &methods {
        // Params that every method answers at once, with a result or an error:
        // either proves the worker's subscription was allowed.
        let answer = ask(method, json!({"container": "no-such-container-here"})).await;
        assert!(
            answer.get("result").is_some() || answer.get("error").is_some(),
            "{method}: {answer}"
        );
    }
    assert!(errors.try_recv().is_err(), "the bridge broke no permission");

    // The worker's health check asks rpc.discover as the worker's user.
    let health = worker::nats_options("worker-healthcheck", Some(&worker_login))
        .connect(server.url())
        .await
        .unwrap();
    let body = json!({"jsonrpc": "2.0", "id": "healthcheck", "method": "rpc.discover"});
    let reply = tokio::time::timeout(
        PROMPTLY,
        health.request("rpc.rpc.discover", body.to_string().into()),
    )
    .await
    .unwrap()
    .unwrap();
    let answer: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(answer["result"]["methods"].is_array(), "{answer}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
