//! The bridge alone, with a real nats-server and real WebSockets: the cloud is
//! played by `testkit::fake_cloud` (a test peer speaking wire protocol v1),
//! and workers by a spy subscriber, so that every frame can be chosen, broken
//! on purpose, and checked on both sides.

// Each test file uses a part of this module.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge::{Bridge, BridgeConfig, BridgeStats};
use futures::StreamExt;
use protocol::auth::AuthStatus;
use protocol::keys::{self, PublicKey};
use protocol::nats::{HEADER_REQUEST_ID, HEADER_SIGNER};
use protocol::{RpcError, Signer};
use serde_json::{json, Value};
use testkit::fake_cloud::{DeviceLink, FakeCloud};
use testkit::nats::NatsServer;
use testkit::{wait_until, PROMPTLY};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub const DEVICE_ID: &str = "device-001";

/// A message as a worker on `rpc.>` received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub subject: String,
    pub signer: Option<String>,
    pub request_id: Option<String>,
    pub payload: Value,
}

/// Stands in for a worker, so that "the worker is never invoked" can be
/// asserted: a plain async-nats subscriber on `rpc.>` that records every
/// message it receives and answers requests with a JSON-RPC result echoing the
/// method, `{"method": <method>}`.
pub struct Spy {
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: AbortOnDropHandle<()>,
}

impl Spy {
    async fn start(nats: async_nats::Client) -> Spy {
        let mut messages = nats.subscribe("rpc.>").await.expect("spy subscribes");
        nats.flush()
            .await
            .expect("spy subscription reaches the server");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                let payload: Value =
                    serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
                let header = |name: &str| {
                    let headers = message.headers.as_ref()?;
                    Some(headers.get(name)?.as_str().to_owned())
                };
                log.lock().unwrap().push(Seen {
                    subject: message.subject.to_string(),
                    signer: header(HEADER_SIGNER),
                    request_id: header(HEADER_REQUEST_ID),
                    payload: payload.clone(),
                });
                if let Some(reply) = message.reply {
                    let answer = json!({
                        "jsonrpc": "2.0",
                        "id": payload["id"],
                        "result": {"method": payload["method"]},
                    });
                    let _ = nats.publish(reply, answer.to_string().into()).await;
                }
            }
        });
        Spy {
            seen,
            _task: AbortOnDropHandle::new(task),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub struct Scenario {
    pub nats: NatsServer,
    pub cloud: FakeCloud,
    /// A client for what workers do besides serving: cloud calls, notifications.
    pub client: async_nats::Client,
    spy: Option<Spy>,
    /// Every `state` announced on `bridge.status`, in order.
    statuses: Arc<Mutex<Vec<String>>>,
    pub stats: Arc<BridgeStats>,
    pub device_key: PublicKey,
    shutdown: CancellationToken,
    _statuses_task: AbortOnDropHandle<()>,
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts nats-server, the spy worker, the fake cloud and a bridge whose
/// config `tweak` adjusts (reconnects are fast unless it says otherwise).
pub async fn scenario(tweak: impl FnOnce(&mut BridgeConfig)) -> Scenario {
    start(true, tweak).await
}

/// As [`scenario`], with no worker at all on `rpc.>`.
pub async fn scenario_without_workers(tweak: impl FnOnce(&mut BridgeConfig)) -> Scenario {
    start(false, tweak).await
}

async fn start(with_spy: bool, tweak: impl FnOnce(&mut BridgeConfig)) -> Scenario {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let spy = match with_spy {
        true => Some(Spy::start(nats.client().await).await),
        false => None,
    };
    let statuses: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut announcements = client.subscribe("bridge.status").await.unwrap();
    client.flush().await.unwrap();
    let log = statuses.clone();
    let statuses_task = tokio::spawn(async move {
        while let Some(message) = announcements.next().await {
            let status: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
            assert_eq!(status["device_id"], DEVICE_ID);
            let state = status["state"].as_str().unwrap_or("?").to_owned();
            log.lock().unwrap().push(state);
        }
    });

    let cloud = FakeCloud::start().await;
    let endpoint = cloud.endpoint();
    let device_key = keys::generate();
    let mut config = BridgeConfig::new(
        endpoint.url,
        Signer::new(DEVICE_ID, device_key.clone()),
        endpoint.cloud_id,
        endpoint.public_key,
    );
    config.reconnect_min = Duration::from_millis(50);
    config.reconnect_max = Duration::from_millis(200);
    tweak(&mut config);
    let bridge = Bridge::new(config, nats.client().await);
    let stats = bridge.stats();
    let shutdown = CancellationToken::new();
    tokio::spawn(bridge.run(shutdown.clone()));
    Scenario {
        nats,
        cloud,
        client,
        spy,
        statuses,
        stats,
        device_key: device_key.verifying_key(),
        shutdown,
        _statuses_task: AbortOnDropHandle::new(statuses_task),
    }
}

/// A scenario whose bridge is connected, authenticated and live: it has
/// announced `live`, so device → cloud traffic is forwarded from now on.
pub async fn live(tweak: impl FnOnce(&mut BridgeConfig)) -> (Scenario, DeviceLink) {
    let mut s = scenario(tweak).await;
    let link = s.cloud.connect_device(AuthStatus::Accepted).await;
    wait_until("the bridge to announce live", PROMPTLY, || async {
        (s.statuses().last().map(String::as_str) == Some("live")).then_some(())
    })
    .await;
    (s, link)
}

impl Scenario {
    pub fn spy(&self) -> &Spy {
        self.spy.as_ref().expect("this scenario has a spy worker")
    }

    pub fn refusals(&self, reason: &str) -> u64 {
        self.stats.refusals().get(reason).copied().unwrap_or(0)
    }

    pub fn all_refusals(&self) -> u64 {
        self.stats.refusals().values().sum()
    }

    pub fn statuses(&self) -> Vec<String> {
        self.statuses.lock().unwrap().clone()
    }

    /// A worker's `cloud.call.<method>` request, as the NATS requester sees it.
    pub async fn cloud_call(&self, method: &str, timeout: Duration) -> Value {
        let reply = self
            .client
            .send_request(
                format!("cloud.call.{method}"),
                async_nats::Request::new()
                    .payload("{}".into())
                    .timeout(Some(timeout)),
            )
            .await
            .unwrap_or_else(|error| panic!("cloud.call.{method} got no reply: {error}"));
        serde_json::from_slice(&reply.payload).expect("the bridge replies JSON")
    }
}

/// `result` of a request the spy served.
pub fn served(method: &str) -> Result<Value, RpcError> {
    Ok(json!({ "method": method }))
}
