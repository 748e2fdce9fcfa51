//! The real `cloud serve` binary as a child process, so that a test can kill
//! it with SIGKILL, as a crash or the OOM killer would (no shutdown, no close
//! frames, the kernel closes its sockets), and start it again on the same
//! address with the same key and registry.
//!
//! The binary is built once per test process with `cargo build -p cloud
//! --bin cloud` (a no-op when it is up to date), into the target directory
//! this test was built in, so a test never runs a stale cloud.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cloud::client::ApiClient;
use protocol::keys::{self, PublicKey};
use tempfile::TempDir;
use testkit::CloudEndpoint;

use crate::stack::admin_api;

/// How long a starting cloud may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The cloud's signer id (its default).
const CLOUD_ID: &str = "cloud-dashboard";

/// A `cloud serve` child process on a fixed port of 127.0.0.1.
pub struct CloudProcess {
    pub addr: SocketAddr,
    /// Key, registry, admin token and the log, kept over restarts.
    dir: TempDir,
    public_key: PublicKey,
    /// Flags added to `cloud serve` (e.g. `--ping-interval-secs 1`).
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl CloudProcess {
    /// Starts `cloud serve` with a fresh key and registry on a free port and
    /// waits until it answers `/healthz`.
    pub async fn start(extra_args: &[&str]) -> CloudProcess {
        let dir = tempfile::tempdir().expect("temp dir for the cloud");
        let key = keys::generate();
        keys::write_private_key(&dir.path().join("cloud_private.pem"), &key).expect("cloud key");
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut cloud = CloudProcess {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dir,
            public_key: key.verifying_key(),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            child: None,
        };
        cloud.start_again().await;
        cloud
    }

    /// Kills the process with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again (same address, key and registry) and waits
    /// until it answers `/healthz`.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the cloud is still running");
        let path = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the cloud's log file");
        let child = Command::new(cloud_binary())
            .env_clear()
            .env("RUST_LOG", "info,sqlx=warn")
            .arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--private-key")
            .arg(path.join("cloud_private.pem"))
            .arg("--database")
            .arg(format!("sqlite://{}", path.join("cloud.db").display()))
            .arg("--admin-token-file")
            .arg(path.join("admin.token"))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning cloud serve");
        self.child = Some(child);
        self.wait_until_healthy().await;
    }

    /// What a bridge needs to reach this cloud.
    pub fn endpoint(&self) -> CloudEndpoint {
        CloudEndpoint {
            url: format!("ws://{}/ws/device", self.addr),
            cloud_id: CLOUD_ID.to_owned(),
            public_key: self.public_key,
        }
    }

    /// The operator API, with the admin token the cloud created.
    pub fn api(&self) -> ApiClient {
        admin_api(
            &format!("http://{}", self.addr),
            &self.dir.path().join("admin.token"),
        )
    }

    /// What the process has logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("cloud.log")
    }

    async fn wait_until_healthy(&mut self) {
        let url = format!("http://{}/healthz", self.addr);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("HTTP client");
        let give_up = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(response) = http.get(&url).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= give_up {
                panic!(
                    "cloud serve on {} did not start ({}); its log:\n{}",
                    self.addr,
                    match exited {
                        Some(status) => format!("exited with {status}"),
                        None => format!("no /healthz after {START_TIMEOUT:?}"),
                    },
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `target/debug/cloud`, built (or found up to date) once per process.
fn cloud_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| cargo_build(&["-p", "cloud", "--bin", "cloud"], "debug/cloud"))
        .clone()
}

/// `cargo build ARGS` of this workspace into this test's target directory
/// (a no-op when up to date); the path of what it built, `built` under it.
pub(crate) fn cargo_build(args: &[&str], built: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds e2e/");
    let target_dir = target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let what = format!("cargo build {}", args.join(" "));
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--quiet"])
        .args(args)
        .arg("--target-dir")
        .arg(&target_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let binary = target_dir.join(built);
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}

/// The target directory this test binary was built in
/// (`<target>/debug/deps/<test>`), else `CARGO_TARGET_DIR` or `target/`.
pub(crate) fn target_dir() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        let profile = deps.parent()?;
        (deps.file_name()? == "deps").then(|| profile.parent().map(Path::to_path_buf))?
    });
    from_exe
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}
