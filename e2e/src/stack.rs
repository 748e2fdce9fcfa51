//! The real components, started in-process for a scenario: a cloud on
//! 127.0.0.1 with its SQLite file in a temp dir, and devices made of a real
//! nats-server, bridge and worker (backed by the real Docker engine).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bridge::{Bridge, BridgeConfig, BridgeStats};
use cloud::client::ApiClient;
use cloud::{AppState, CloudConfig};
use protocol::keys::{self, PrivateKey};
use protocol::Signer;
use serde_json::Value;
use tempfile::TempDir;
use testkit::nats::NatsServer;
use testkit::{wait_until, CloudEndpoint};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a scenario waits for something that should happen at once.
pub const SOON: Duration = Duration::from_secs(15);

/// A real cloud, restartable on the same address with the same registry.
pub struct RunningCloud {
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub config: CloudConfig,
    state: AppState,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningCloud {
    pub async fn start() -> RunningCloud {
        Self::start_with(|_| {}).await
    }

    /// Starts with a fresh key and registry; `adjust` may change the config.
    pub async fn start_with(adjust: impl FnOnce(&mut CloudConfig)) -> RunningCloud {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_path = dir.path().join("cloud_private.pem");
        keys::write_private_key(&key_path, &keys::generate()).expect("cloud key");
        let mut config = CloudConfig {
            private_key_path: key_path,
            database_url: format!("sqlite://{}", dir.path().join("cloud.db").display()),
            admin_token_file: dir.path().join("admin.token"),
            ..CloudConfig::default()
        };
        adjust(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, dir, config).await
    }

    async fn serve(listener: TcpListener, dir: TempDir, config: CloudConfig) -> RunningCloud {
        let addr = listener.local_addr().expect("address");
        let (state, shutdown, task) = Self::spawn(listener, &config).await;
        RunningCloud {
            addr,
            dir,
            config,
            state,
            shutdown,
            task,
        }
    }

    /// Opens the registry and serves on `listener` until the token is cancelled.
    async fn spawn(
        listener: TcpListener,
        config: &CloudConfig,
    ) -> (AppState, CancellationToken, JoinHandle<anyhow::Result<()>>) {
        let registry = cloud::Registry::open(&config.database_url)
            .await
            .expect("registry");
        let state = cloud::assemble(config.clone(), registry)
            .await
            .expect("cloud state");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(cloud::serve(listener, state.clone(), shutdown.clone()));
        (state, shutdown, task)
    }

    /// Stops the cloud (devices see their sockets close) and starts it again
    /// on the same address, with the same key and registry.
    pub async fn restart(&mut self) {
        self.shutdown.cancel();
        (&mut self.task)
            .await
            .expect("cloud task")
            .expect("cloud stopped cleanly");
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the same address");
        (self.state, self.shutdown, self.task) = Self::spawn(listener, &self.config).await;
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn public_key(&self) -> keys::PublicKey {
        self.state.devices().public_key()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/device", self.addr)
    }

    /// What a bridge needs to reach this cloud.
    pub fn endpoint(&self) -> CloudEndpoint {
        CloudEndpoint {
            url: self.ws_url(),
            cloud_id: self.config.cloud_id.clone(),
            public_key: self.public_key(),
        }
    }

    /// The operator API, with the admin token.
    pub fn api(&self) -> ApiClient {
        admin_api(
            &format!("http://{}", self.addr),
            &self.config.admin_token_file,
        )
    }
}

impl Drop for RunningCloud {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An API call that takes this long means the cloud hung: every call a
/// scenario makes is bounded by the cloud well within it.
const HUNG_CLOUD: Duration = Duration::from_secs(120);

/// The API of the cloud at `url` (`http://host:port`), as the admin whose
/// token the cloud wrote to `token_file`.
pub fn admin_api(url: &str, token_file: &Path) -> ApiClient {
    let token = std::fs::read_to_string(token_file)
        .unwrap_or_else(|error| panic!("the admin token in {}: {error}", token_file.display()));
    ApiClient::new(url, &token, HUNG_CLOUD)
}

/// Waits until the device's registry entry (`device` of `GET
/// /devices/{id}`) satisfies `check`; returns it.
pub async fn wait_for_device(
    api: &ApiClient,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(what, SOON, || async {
        let device = api.device(id).await.ok()?["device"].clone();
        check(&device).then_some(device)
    })
    .await
}

/// One device: its own nats-server, a bridge and (optionally) a worker.
pub struct RunningDevice {
    pub id: String,
    pub key: PrivateKey,
    pub nats: NatsServer,
    pub bridge_stats: Arc<BridgeStats>,
    /// What the bridge was started with, to start it again.
    bridge_config: BridgeConfig,
    bridge: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    worker: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
}

impl RunningDevice {
    /// A device with a fresh key, a bridge pointed at `cloud` and a worker.
    pub async fn start(id: &str, cloud: &RunningCloud) -> RunningDevice {
        let mut device = Self::start_bridge_only(id, keys::generate(), cloud, |_| {}).await;
        device.start_worker().await;
        device
    }

    pub async fn start_bridge_only(
        id: &str,
        key: PrivateKey,
        cloud: &RunningCloud,
        adjust: impl FnOnce(&mut BridgeConfig),
    ) -> RunningDevice {
        Self::start_bridge_to(id, key, cloud.endpoint(), adjust).await
    }

    /// As [`RunningDevice::start_bridge_only`], for a bridge pointed at any
    /// cloud (say, a `cloud serve` child process).
    pub async fn start_bridge_to(
        id: &str,
        key: PrivateKey,
        cloud: CloudEndpoint,
        adjust: impl FnOnce(&mut BridgeConfig),
    ) -> RunningDevice {
        let nats = NatsServer::start().await;
        let mut config = BridgeConfig::new(
            cloud.url,
            Signer::new(id, key.clone()),
            cloud.cloud_id,
            cloud.public_key,
        );
        config.reconnect_min = Duration::from_millis(50);
        config.reconnect_max = Duration::from_millis(500);
        config.ping_interval = Duration::from_secs(5);
        adjust(&mut config);
        let mut device = RunningDevice {
            id: id.to_owned(),
            key,
            nats,
            bridge_stats: Arc::default(),
            bridge_config: config,
            bridge: None,
            worker: None,
        };
        device.start_bridge().await;
        device
    }

    /// A device whose key is kept in `key_file` (a fresh one, written now),
    /// as the `bridge` binary keeps it, so that it can be rotated; no worker.
    pub async fn start_with_key_file(
        id: &str,
        cloud: &RunningCloud,
        key_file: PathBuf,
    ) -> RunningDevice {
        let key = keys::generate();
        keys::write_private_key(&key_file, &key).expect("device key file");
        Self::start_bridge_only(id, key, cloud, |config| config.key_file = Some(key_file)).await
    }

    /// Starts the bridge again after [`RunningDevice::stop_bridge`], with the
    /// key in its key file if it has one (as the `bridge` binary starts).
    pub async fn start_bridge(&mut self) {
        assert!(self.bridge.is_none(), "the bridge is running");
        let mut config = self.bridge_config.clone();
        if let Some(key_file) = &config.key_file {
            self.key = keys::read_private_key(key_file).expect("the device key file");
            config.signer = Signer::new(self.id.clone(), self.key.clone());
        }
        if let Some(cloud_keys_file) = &config.cloud_keys_file {
            config.cloud_keys =
                keys::read_public_keys(cloud_keys_file).expect("the cloud keys file");
        }
        let bridge = Bridge::new(config, connect(&self.nats.url()).await);
        self.bridge_stats = bridge.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bridge.run(shutdown.clone()));
        self.bridge = Some((shutdown, task));
    }

    pub async fn start_worker(&mut self) {
        let docker = worker::connect_docker(None).expect("docker");
        self.start_worker_with_docker(docker).await;
    }

    /// Starts a worker (replacing a stopped or killed one) that talks to
    /// `docker`, which may be an engine that is not there.
    pub async fn start_worker_with_docker(&mut self, docker: bollard::Docker) {
        let config = worker::WorkerConfig {
            health_interval: Duration::from_millis(300),
            ..worker::WorkerConfig::default()
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker::run(
            connect(&self.nats.url()).await,
            docker,
            config,
            shutdown.clone(),
        ));
        self.worker = Some((shutdown, task));
    }

    /// Stops the bridge as a device losing power would: its socket just closes.
    pub async fn stop_bridge(&mut self) {
        if let Some((shutdown, task)) = self.bridge.take() {
            task.abort();
            shutdown.cancel();
            let _ = task.await;
        }
    }

    /// Kills the worker as a crash would: its task is aborted at once, with
    /// the requests it was serving (no grace period, no answers), and its
    /// NATS connection goes with it.
    pub async fn kill_worker(&mut self) {
        if let Some((_shutdown, task)) = self.worker.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// A NATS client on this device's broker, as another worker would have.
    pub async fn nats_client(&self) -> async_nats::Client {
        connect(&self.nats.url()).await
    }
}

impl Drop for RunningDevice {
    fn drop(&mut self) {
        for (shutdown, task) in self.bridge.iter().chain(self.worker.iter()) {
            shutdown.cancel();
            task.abort();
        }
    }
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(url)
        .await
        .expect("NATS connection")
}
