//! Test support: a real cloud on `127.0.0.1:0` with a SQLite file in a
//! tempdir and its API as the admin, devices played by
//! `testkit::fake_device::FakeDevice`, and the browser's cookies and forms.
#![allow(dead_code)]

pub mod python;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use cloud::client::ApiClient;
use cloud::roles::Role;
use cloud::{AppState, CloudConfig, Registry};
use protocol::keys::{self, PrivateKey, PublicKey};
use serde_json::json;
use tempfile::TempDir;
use testkit::fake_device::{FakeDevice, RefusedUpgrade};
use testkit::{CloudEndpoint, PROMPTLY};
use tokio_util::sync::CancellationToken;

/// `name=value` of the cookie named `name` that `response` sets.
pub fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
}

/// The value of the hidden field `name` in `html`.
pub fn hidden_field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// Polls `condition` until it holds, failing the test after `PROMPTLY`.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    testkit::wait_until(what, PROMPTLY, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
}

pub struct TestCloud {
    pub addr: SocketAddr,
    pub state: AppState,
    pub token: String,
    pub cloud_id: String,
    pub cloud_key: PublicKey,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Shared by the instances of one fleet (`start_beside`).
    _dir: std::sync::Arc<TempDir>,
}

impl TestCloud {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut CloudConfig)) -> Self {
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let key_path = dir.path().join("keys/cloud_private.pem");
        std::fs::create_dir_all(key_path.parent().unwrap()).unwrap();
        keys::write_private_key(&key_path, &keys::generate()).unwrap();
        Self::start_in(dir, tweak).await
    }

    /// Another instance of this cloud, sharing the fleet: the same key,
    /// admin token and cloud id; `tweak` names it and gives it the shared
    /// database and NATS.
    pub async fn start_beside(&self, tweak: impl FnOnce(&mut CloudConfig)) -> Self {
        Self::start_in(self._dir.clone(), tweak).await
    }

    async fn start_in(dir: std::sync::Arc<TempDir>, tweak: impl FnOnce(&mut CloudConfig)) -> Self {
        let key_path = dir.path().join("keys/cloud_private.pem");
        let mut config = CloudConfig {
            private_key_path: key_path,
            database_url: format!("sqlite://{}", dir.path().join("data/cloud.db").display()),
            admin_token_file: dir.path().join("data/admin.token"),
            ..CloudConfig::default()
        };
        tweak(&mut config);
        let registry = Registry::open(&config.database_url).await.unwrap();
        let state = cloud::assemble(config.clone(), registry).await.unwrap();
        let token = std::fs::read_to_string(&config.admin_token_file)
            .unwrap()
            .trim()
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(cloud::serve(listener, state.clone(), shutdown.clone()));
        TestCloud {
            addr,
            cloud_key: state.devices().public_key(),
            state,
            token,
            cloud_id: config.cloud_id,
            http: reqwest::Client::new(),
            shutdown,
            server: Some(server),
            _dir: dir,
        }
    }

    /// Shuts the cloud down as SIGTERM would and waits for `serve` to return.
    pub async fn shut_down(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let server = self.server.take().expect("running");
        tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .expect("shutdown is bounded")
            .unwrap()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/device", self.addr)
    }

    /// What a device needs to reach this cloud.
    pub fn endpoint(&self) -> CloudEndpoint {
        CloudEndpoint {
            url: self.ws_url(),
            cloud_id: self.cloud_id.clone(),
            public_key: self.cloud_key,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The API as the admin.
    pub fn api(&self) -> ApiClient {
        self.api_as(&self.token)
    }

    /// The API with the bearer `token`, over `http`: its calls share that
    /// client's connections, as a test may configure them.
    pub fn api_as(&self, token: &str) -> ApiClient {
        ApiClient::with_http(self.http.clone(), &self.url(""), token)
    }

    /// Opens a connection for `id` with a fresh key and reads the challenge.
    pub async fn connect(&self, id: &str) -> FakeDevice {
        self.connect_with_key(id, keys::generate()).await
    }

    pub async fn connect_with_key(&self, id: &str, key: PrivateKey) -> FakeDevice {
        match self.try_connect(id, key, None).await {
            Ok(device) => device,
            Err(refused) => panic!("device WebSocket upgrade refused: {refused:?}"),
        }
    }

    /// A device that authenticated, was accepted by the operator, and heard so.
    pub async fn accepted_device(&self, id: &str) -> FakeDevice {
        let mut device = self.connect(id).await;
        assert_eq!(device.authenticate().await, json!({"status": "pending"}));
        self.api()
            .accept(id)
            .await
            .unwrap_or_else(|error| panic!("accepting {id}: {error}"));
        device.expect_status_notification("accepted").await;
        device
    }
}

impl Drop for TestCloud {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// Helpers of the attack tests (tests/attacks.rs): restarting a cloud on its
// data, the database's size on disk, and device WebSockets whose upgrade may
// be refused or that come through a proxy.

impl TestCloud {
    /// The directory holding the cloud's key, database and admin token.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> std::path::PathBuf {
        self.dir().join("data/cloud.db")
    }

    /// Bytes the database takes on disk: the file, its WAL and shared memory.
    pub fn database_bytes(&self) -> u64 {
        let path = self.database_path();
        ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let mut name = path.clone().into_os_string();
                name.push(suffix);
                std::fs::metadata(name).map_or(0, |m| m.len())
            })
            .sum()
    }

    /// Adds an admin account straight to the store (as `cloud operators
    /// add` would, without its audit entry).
    pub async fn add_operator(&self, name: &str, password: &str) {
        self.add_operator_with_role(name, password, Role::Admin)
            .await;
    }

    /// Adds an operator account with `role` straight to the store.
    pub async fn add_operator_with_role(&self, name: &str, password: &str, role: Role) {
        self.state
            .ops()
            .store()
            .accounts
            .add_operator(name, password, role, protocol::now_ms() as i64)
            .await
            .unwrap();
    }

    /// Shuts the cloud down as SIGTERM would and starts it again on the same
    /// data directory, key and admin token (on the same address if it can be
    /// bound again). Devices must reconnect.
    pub async fn restart(&mut self) {
        self.shut_down().await.unwrap();
        self.state.devices().registry().close().await;
        let config = self.state.ops().config().clone();
        let registry = Registry::open(&config.database_url).await.unwrap();
        let state = cloud::assemble(config.clone(), registry).await.unwrap();
        let token = std::fs::read_to_string(&config.admin_token_file)
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(token, self.token, "the admin token survives a restart");
        assert_eq!(
            state.devices().public_key(),
            self.cloud_key,
            "the key survives"
        );
        let listener = match tokio::net::TcpListener::bind(self.addr).await {
            Ok(listener) => listener,
            Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        self.addr = listener.local_addr().unwrap();
        self.shutdown = CancellationToken::new();
        self.server = Some(tokio::spawn(cloud::serve(
            listener,
            state.clone(),
            self.shutdown.clone(),
        )));
        self.state = state;
        // Pooled connections went with the old server.
        self.http = reqwest::Client::new();
    }

    /// Opens a device WebSocket for `id` and reads the challenge; the
    /// refused upgrade otherwise. With `forwarded_for`, the request carries
    /// `X-Forwarded-For` as a reverse proxy would send it.
    pub async fn try_connect(
        &self,
        id: &str,
        key: PrivateKey,
        forwarded_for: Option<&str>,
    ) -> Result<FakeDevice, RefusedUpgrade> {
        FakeDevice::connect(&self.endpoint(), id, key, forwarded_for).await
    }

    /// `try_connect` that must succeed.
    pub async fn connect_from(&self, id: &str, key: PrivateKey, forwarded_for: &str) -> FakeDevice {
        match self.try_connect(id, key, Some(forwarded_for)).await {
            Ok(device) => device,
            Err(refused) => panic!("upgrade from {forwarded_for} refused: {refused:?}"),
        }
    }
}

/// A fake device answering every call with `{"device", "method"}` until
/// its connection ends; each method it was called with goes to `called`.
pub fn answer_calls(
    mut device: FakeDevice,
    id: &str,
    called: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let id = id.to_owned();
    tokio::spawn(async move {
        loop {
            // Short reads: the device's own read gives up on a quiet cloud.
            let Ok(heard) =
                tokio::time::timeout(std::time::Duration::from_secs(1), device.recv_or_close())
                    .await
            else {
                continue;
            };
            match heard {
                Ok(protocol::Message::Request {
                    id: call, method, ..
                }) => {
                    let _ = called.send(method.clone());
                    let answer = serde_json::json!({ "device": id, "method": method });
                    device
                        .send_message(&protocol::Message::result(call, answer))
                        .await;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
}

/// How instance `cloud-N` of a shared fleet is set up: the PostgreSQL at
/// `database_url` and the NATS at `nats_url` (comma-separated servers).
pub fn instance_of(
    database_url: String,
    nats_url: String,
    n: usize,
) -> impl FnOnce(&mut CloudConfig) {
    move |config: &mut CloudConfig| {
        config.database_url = database_url;
        config.instance = format!("cloud-{n}");
        config.cloud_nats_url = Some(nats_url);
    }
}
