//! The real `cloud serve` binary as a child process, measured from outside
//! as an operator would see it: the one built beside the bench's own
//! executable (`target/release/cloud` for `target/release/bench`), with a
//! fresh key and registry, and the settings a bench gives it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cloud::client::ApiClient;
use protocol::keys::{self, PublicKey};
use tempfile::TempDir;

use crate::gauge::Gauge;
use testkit::nats::NatsServer;
use testkit::{CloudEndpoint, PostgresServer};

use crate::procfs::{self, Usage};

/// How long a starting cloud may take to answer the API.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// An API call that takes this long means the cloud hung.
const HUNG: Duration = Duration::from_secs(120);
/// The cloud's signer id (its default).
const CLOUD_ID: &str = "cloud-dashboard";
/// The files every instance reads, in [`CloudFiles`].
const PRIVATE_KEY: &str = "cloud_private.pem";
const ADMIN_TOKEN: &str = "admin.token";

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

/// What every instance of one cloud shares (README, "Many cloud instances"):
/// its private key and admin token, in one directory, beside each
/// instance's log and, for a cloud of one, its SQLite registry. The
/// instances share `CLOUD_ID` too, by all keeping its default.
pub struct CloudFiles {
    dir: TempDir,
    public_key: PublicKey,
}

impl CloudFiles {
    /// A directory with a fresh key.
    pub fn new() -> anyhow::Result<Arc<CloudFiles>> {
        let dir = tempfile::tempdir().context("temp dir for the cloud")?;
        let key = keys::generate();
        keys::write_private_key(&dir.path().join(PRIVATE_KEY), &key)?;
        Ok(Arc::new(CloudFiles {
            dir,
            public_key: key.verifying_key(),
        }))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A `cloud serve` child on a free port of 127.0.0.1; killed on drop.
pub struct CloudChild {
    pub addr: SocketAddr,
    /// Its `CLOUD_INSTANCE`, which also names its log and its figures.
    pub name: String,
    files: Arc<CloudFiles>,
    child: Child,
}

impl CloudChild {
    /// Starts a cloud of one instance, on a SQLite registry of its own, with
    /// `settings` (environment variables of `cloud serve`, e.g.
    /// `("MAX_UNAUTHENTICATED", "50000")`) and waits until its API answers.
    pub async fn start(settings: &[(&str, String)]) -> anyhow::Result<CloudChild> {
        let files = CloudFiles::new()?;
        let database_url = format!("sqlite://{}", files.path("cloud.db").display());
        Self::start_instance(&files, "cloud", &database_url, settings).await
    }

    /// Starts the instance `name` of the cloud whose key and admin token are
    /// in `files`, its registry at `database_url`, with `settings`, and waits
    /// until its API answers. Instances sharing `files` are started one
    /// after the other: the first creates the admin token the others read.
    pub async fn start_instance(
        files: &Arc<CloudFiles>,
        name: &str,
        database_url: &str,
        settings: &[(&str, String)],
    ) -> anyhow::Result<CloudChild> {
        let binary = sibling_binary("cloud")?;
        let addr = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .context("no free port")?;
        let log = std::fs::File::create(files.path(&format!("{name}.log")))?;
        let child = Command::new(&binary)
            .env_clear()
            // Warnings only: a log line per connection would be part of
            // what is measured.
            .env("RUST_LOG", "warn")
            .env("CLOUD_INSTANCE", name)
            .env("DATABASE_URL", database_url)
            .envs(settings.iter().map(|(name, value)| (name, value)))
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--private-key")
            .arg(files.path(PRIVATE_KEY))
            .arg("--admin-token-file")
            .arg(files.path(ADMIN_TOKEN))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut cloud = CloudChild {
            addr,
            name: name.to_owned(),
            files: files.clone(),
            child,
        };
        cloud.wait_until_serving().await?;
        Ok(cloud)
    }

    /// One gauge of the cloud's `/metrics`, for reading over a run.
    pub fn gauge(&self, name: &'static str) -> Gauge {
        Gauge::new(name, format!("http://{}/metrics", self.addr))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where devices connect.
    pub fn endpoint(&self) -> CloudEndpoint {
        CloudEndpoint {
            url: format!("ws://{}/ws/device", self.addr),
            cloud_id: CLOUD_ID.to_owned(),
            public_key: self.files.public_key,
        }
    }

    /// The operator API, with the admin token the cloud created.
    pub fn api(&self) -> anyhow::Result<ApiClient> {
        let path = self.files.path(ADMIN_TOKEN);
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
        let log = std::fs::read_to_string(self.files.path(&format!("{}.log", self.name)))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{} exited ({status}); the end of its log:\n{}",
            self.name,
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
                    "{} on {} did not answer within {START_TIMEOUT:?}",
                    self.name,
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

/// The cloud a bench runs: one instance on SQLite, as a cloud of one runs,
/// or several sharing one fleet as behind a load balancer (README, "Many
/// cloud instances"): one PostgreSQL for the registry and one nats-server
/// between the instances, of their own (not the devices'). Stopped on drop,
/// the instances first.
pub struct Cloud {
    pub instances: Vec<CloudChild>,
    /// None for one instance.
    shared: Option<Shared>,
}

/// What several instances share, with the pids a bench measures.
struct Shared {
    database: PostgresServer,
    database_pid: u32,
    nats: NatsServer,
    nats_pid: u32,
}

impl Cloud {
    /// Starts `instances` instances (`cloud-1`, ...), each with `settings`,
    /// and returns once each one's API answers.
    pub async fn start(instances: usize, settings: &[(&str, String)]) -> anyhow::Result<Cloud> {
        if instances <= 1 {
            return Ok(Cloud {
                instances: vec![CloudChild::start(settings).await?],
                shared: None,
            });
        }
        let database = PostgresServer::start().await;
        // testkit tells the server's port only in its URL, `...:<port>/postgres`.
        let port = database
            .url()
            .rsplit_once(':')
            .and_then(|(_, port)| port.split('/').next().map(str::to_owned))
            .context("no port in the PostgreSQL URL")?;
        let database_pid = procfs::child("postgres", &port).context("no postgres child")?;
        let nats = NatsServer::start().await;
        let nats_pid = procfs::child("nats-server", &nats.port().to_string())
            .context("no nats-server child for the instances")?;
        let mut settings = settings.to_vec();
        settings.push(("CLOUD_NATS_URL", nats.url()));
        let files = CloudFiles::new()?;
        let mut children = Vec::new();
        for n in 1..=instances {
            let name = format!("cloud-{n}");
            children
                .push(CloudChild::start_instance(&files, &name, &database.url(), &settings).await?);
        }
        Ok(Cloud {
            instances: children,
            shared: Some(Shared {
                database,
                database_pid,
                nats,
                nats_pid,
            }),
        })
    }

    /// What a bench says of the cloud it runs.
    pub fn describe(instances: usize, settings: &[(&str, String)]) -> String {
        let how = match instances {
            0 | 1 => "the cloud runs".to_owned(),
            n => format!("{n} cloud instances (one PostgreSQL, one nats-server between them) run"),
        };
        format!("{how} with {}", describe(settings))
    }

    /// Fails if an instance, PostgreSQL or the instances' nats-server died.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for instance in &mut self.instances {
            instance.check_running()?;
        }
        if let Some(shared) = &self.shared {
            if !procfs::is_running(shared.database_pid) {
                bail!("PostgreSQL (on {}) died", shared.database.url());
            }
            if !procfs::is_running(shared.nats_pid) {
                bail!("the instances' nats-server (on {}) died", shared.nats.url());
            }
        }
        Ok(())
    }

    /// What each process of the cloud has used so far, by name. `cloud` is
    /// always the cloud's total, to set beside a cloud of one: the one
    /// instance, or with several their sum, then each of them (`cloud-1`,
    /// ...), `postgres` (with the processes it serves connections from) and
    /// `cloud_nats`.
    pub fn usages(&self) -> anyhow::Result<Vec<(String, Usage)>> {
        let mut usages = self
            .instances
            .iter()
            .map(|instance| Ok((instance.name.clone(), procfs::usage(instance.pid())?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(shared) = &self.shared {
            let sum = usages.iter().map(|(_, usage)| *usage).sum();
            usages.insert(0, ("cloud".to_owned(), sum));
            usages.push((
                "postgres".to_owned(),
                procfs::tree_usage(shared.database_pid)?,
            ));
            usages.push(("cloud_nats".to_owned(), procfs::usage(shared.nats_pid)?));
        }
        Ok(usages)
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
