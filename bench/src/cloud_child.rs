//! The real `cloud serve` binary as a child process, measured from outside
//! as an operator would see it: the one built beside the bench's own
//! executable (`target/release/cloud` for `target/release/bench`), with a
//! fresh key and registry, and the settings a bench gives it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cloud::client::ApiClient;
use protocol::keys::{self, PublicKey};
use tempfile::TempDir;
use testkit::CloudEndpoint;

/// How long a starting cloud may take to answer the API.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// An API call that takes this long means the cloud hung.
const HUNG: Duration = Duration::from_secs(120);
/// A scrape of `/metrics` that takes this long is a sample missed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// The cloud's signer id (its default).
const CLOUD_ID: &str = "cloud-dashboard";

/// Every admission limit that would turn away part of a fleet connecting at
/// once from loopback, and one device's message allowance (see the README's
/// Configuration), raised so far that none is what a bench measures.
const RAISED_LIMITS: [&str; 7] = [
    "MAX_CONNECTIONS",
    "MAX_UNAUTHENTICATED",
    "MAX_UNAUTHENTICATED_PER_ADDRESS",
    "HANDSHAKES_PER_ADDRESS_PER_MINUTE",
    "NEW_DEVICES_PER_ADDRESS_PER_HOUR",
    "MAX_PENDING_DEVICES",
    "REPLAY_CAP_PER_DEVICE",
];
const RAISED_TO: u32 = 1_000_000;

/// [`RAISED_LIMITS`] as settings for [`CloudChild::start`].
pub fn raised_limits() -> Vec<(&'static str, String)> {
    RAISED_LIMITS
        .iter()
        .map(|&name| (name, RAISED_TO.to_string()))
        .collect()
}

/// `NAME=value NAME=value ...`, for a bench to say how its cloud runs.
pub fn describe(settings: &[(&str, String)]) -> String {
    settings
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `cloud serve` child on a free port of 127.0.0.1; killed on drop.
pub struct CloudChild {
    pub addr: SocketAddr,
    /// Key, registry, admin token and the log.
    dir: TempDir,
    public_key: PublicKey,
    child: Child,
}

impl CloudChild {
    /// Starts the cloud with `settings` (environment variables of `cloud
    /// serve`, e.g. `("MAX_UNAUTHENTICATED", "50000")`) and waits until its
    /// API answers.
    pub async fn start(settings: &[(&str, String)]) -> anyhow::Result<CloudChild> {
        let binary = sibling_binary("cloud")?;
        let dir = tempfile::tempdir().context("temp dir for the cloud")?;
        let key = keys::generate();
        keys::write_private_key(&dir.path().join("cloud_private.pem"), &key)?;
        let addr = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .context("no free port")?;
        let log = std::fs::File::create(dir.path().join("cloud.log"))?;
        let child = Command::new(&binary)
            .env_clear()
            // Warnings only: a log line per connection would be part of
            // what is measured.
            .env("RUST_LOG", "warn")
            .envs(settings.iter().map(|(name, value)| (name, value)))
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--private-key")
            .arg(dir.path().join("cloud_private.pem"))
            .arg("--database")
            .arg(format!(
                "sqlite://{}",
                dir.path().join("cloud.db").display()
            ))
            .arg("--admin-token-file")
            .arg(dir.path().join("admin.token"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut cloud = CloudChild {
            addr,
            dir,
            public_key: key.verifying_key(),
            child,
        };
        cloud.wait_until_serving().await?;
        Ok(cloud)
    }

    /// One gauge of the cloud's `/metrics`, for reading over a run.
    pub fn gauge(&self, name: &'static str) -> Gauge {
        Gauge {
            name,
            url: format!("http://{}/metrics", self.addr),
            http: reqwest::Client::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where devices connect.
    pub fn endpoint(&self) -> CloudEndpoint {
        CloudEndpoint {
            url: format!("ws://{}/ws/device", self.addr),
            cloud_id: CLOUD_ID.to_owned(),
            public_key: self.public_key,
        }
    }

    /// The operator API, with the admin token the cloud created.
    pub fn api(&self) -> anyhow::Result<ApiClient> {
        let path = self.dir.path().join("admin.token");
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(ApiClient::new(
            &format!("http://{}", self.addr),
            &token,
            HUNG,
        ))
    }

    /// Fails, with the end of the cloud's log, if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!(self.exited(status)),
        }
    }

    fn exited(&self, status: ExitStatus) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("cloud.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "the cloud exited ({status}); the end of its log:\n{}",
            tail.join("\n")
        )
    }

    async fn wait_until_serving(&mut self) -> anyhow::Result<()> {
        let give_up = Instant::now() + START_TIMEOUT;
        loop {
            self.check_running()?;
            // The admin token exists once the registry is open.
            if let Ok(api) = self.api() {
                if api.devices().await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() >= give_up {
                bail!(
                    "the cloud on {} did not answer within {START_TIMEOUT:?}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for CloudChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gauge of a cloud's Prometheus exposition (`/metrics`).
pub struct Gauge {
    name: &'static str,
    url: String,
    http: reqwest::Client,
}

impl Gauge {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The gauge's value now; `None` if the cloud does not answer or does
    /// not show it.
    pub async fn read(&self) -> Option<u64> {
        let response = self
            .http
            .get(&self.url)
            .timeout(SCRAPE_TIMEOUT)
            .send()
            .await
            .ok()?;
        let text = response.error_for_status().ok()?.text().await.ok()?;
        text.lines().find_map(|line| {
            let value = line.strip_prefix(self.name)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }
}

/// The executable `name` beside this one: the bench and the binaries it
/// starts are built by the same `cargo build`.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the bench's own executable")?;
    let binary = exe.parent().unwrap_or(Path::new(".")).join(name);
    if !binary.is_file() {
        bail!(
            "{} is missing: build it with the bench (cargo build [--release] -p cloud -p bridge -p bench)",
            binary.display()
        );
    }
    Ok(binary)
}
