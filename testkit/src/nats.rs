//! A real `nats-server` for a test, on a free loopback port, killed on drop.
//! It can be restarted on the same port, so clients' reconnects can be tested.

use std::net::{Ipv4Addr, SocketAddr};

use crate::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `nats-server` child process.
pub struct NatsServer {
    port: u16,
    /// A configuration file (users, permissions) the server reads, if any.
    config: Option<PathBuf>,
    /// Further command-line arguments (a cluster node's routes).
    args: Vec<String>,
    child: Option<Child>,
    /// Holds the server's log file, shown when it fails to start.
    log_dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server` on a free port of 127.0.0.1 and waits until it
    /// accepts connections.
    pub async fn start() -> NatsServer {
        Self::start_with(None).await
    }

    /// Starts `nats-server` with the configuration file `config` (the port is
    /// still a free one of 127.0.0.1, whatever the file says).
    pub async fn start_with_config(config: PathBuf) -> NatsServer {
        Self::start_with(Some(config)).await
    }

    async fn start_with(config: Option<PathBuf>) -> NatsServer {
        let mut server = NatsServer::new(config, Vec::new());
        server.spawn().await;
        server
    }

    fn new(config: Option<PathBuf>, args: Vec<String>) -> NatsServer {
        NatsServer {
            port: free_port(),
            config,
            args,
            child: None,
            log_dir: tempfile::tempdir().expect("temporary directory for the nats-server log"),
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A plain client connected to this server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .unwrap_or_else(|err| panic!("connecting to nats-server at {}: {err}", self.url()))
    }

    /// Kills the server and starts it again on the same port, waiting until it
    /// accepts connections. Clients see a dropped connection and reconnect.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Kills the server with SIGKILL, as a crash would (no goodbye to its
    /// clients), and waits for it to exit; [`NatsServer::start_again`] brings
    /// it back on the same port.
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Starts the killed (or stopped) server again on the same port and waits
    /// until it accepts connections.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server is still running");
        self.spawn().await;
    }

    /// Kills the server and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.log_dir.path().join("nats-server.log")
    }

    async fn spawn(&mut self) {
        if let Err(failure) = self.try_spawn().await {
            panic!("{failure}");
        }
    }

    /// Starts the server; why it did not, with its log, otherwise.
    async fn try_spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new(nats_server_binary());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .arg("-l")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning nats-server (apt-get install nats-server)");
        self.child = Some(child);
        self.wait_until_accepting().await
    }

    /// Polls a TCP connect; nats-server listens only once it is ready.
    async fn wait_until_accepting(&mut self) -> Result<(), String> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let give_up = Instant::now() + START_TIMEOUT;
        loop {
            let connect = tokio::net::TcpStream::connect(address);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= give_up {
                self.stop();
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                return Err(format!(
                    "nats-server on port {} did not start ({}); its log:\n{log}",
                    self.port,
                    match exited {
                        Some(status) => format!("exited with {status}"),
                        None => format!("not accepting after {START_TIMEOUT:?}"),
                    }
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `nats-server` from PATH, else Debian's location.
fn nats_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// A cluster of real `nats-server`s on loopback, each routed to every other,
/// as the cloud instances share in production; killed on drop.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until each has a route to every other.
    /// Ports are found free and then taken, so another test may take one in
    /// between: then the whole cluster starts again on new ones.
    pub async fn start(size: usize) -> NatsCluster {
        const ATTEMPTS: usize = 3;
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            match Self::try_start(size).await {
                Ok(cluster) => {
                    cluster.wait_until_routed().await;
                    return cluster;
                }
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "the NATS cluster did not start in {ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        )
    }

    async fn try_start(size: usize) -> Result<NatsCluster, String> {
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (n, route_port) in route_ports.iter().enumerate() {
            let args = vec![
                "--name".into(),
                format!("node-{n}"),
                "--cluster_name".into(),
                "devbridge-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{route_port}"),
                "--routes".into(),
                routes.clone(),
            ];
            let mut node = NatsServer::new(None, args);
            node.try_spawn().await?;
            nodes.push(node);
        }
        Ok(NatsCluster { nodes })
    }

    /// Every node's client URL, comma-separated: what a client of the whole
    /// cluster is given.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A message published on each node reaches a subscriber on every
    /// other: then every route is up.
    async fn wait_until_routed(&self) {
        let give_up = Instant::now() + START_TIMEOUT;
        for (n, publisher) in self.nodes.iter().enumerate() {
            let publisher = publisher.client().await;
            for (m, node) in self.nodes.iter().enumerate() {
                if m == n {
                    continue;
                }
                let subscriber_client = node.client().await;
                let subject = format!("routed.{n}.{m}");
                let mut subscriber = subscriber_client.subscribe(subject.clone()).await.unwrap();
                subscriber_client.flush().await.unwrap();
                loop {
                    publisher
                        .publish(subject.clone(), "?".into())
                        .await
                        .unwrap();
                    publisher.flush().await.unwrap();
                    let heard = tokio::time::timeout(
                        Duration::from_millis(100),
                        futures::StreamExt::next(&mut subscriber),
                    )
                    .await;
                    if let Ok(Some(_)) = heard {
                        break;
                    }
                    assert!(
                        Instant::now() < give_up,
                        "nats node {n} has no route to node {m}"
                    );
                }
            }
        }
    }
}
