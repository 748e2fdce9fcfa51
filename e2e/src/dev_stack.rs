//! The Compose dev stack as a newcomer runs it: a fresh clone of the committed
//! repository, `./run-dev.sh` with a project prefix and port of its own (so a
//! developer's own stack is left alone), and `./run-dev.sh down` on drop.
//!
//! The clone lives at a fixed path, `target/dev-stack/clone`, and is brought to
//! exactly what a fresh clone of HEAD holds (checked out, every untracked file
//! removed) before each scenario; its release build goes to
//! `target/dev-stack/cargo`. So the build is made once and only redone for
//! what changed, across scenarios and runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cloud::client::ApiClient;

use crate::stack::admin_api;

/// A running copy of both stacks, taken down on drop.
pub struct DevStack {
    /// The fresh clone that `run-dev.sh` runs in.
    pub clone: PathBuf,
    /// Prefix of its compose projects, network and images.
    pub prefix: String,
    /// Host port of the cloud's API.
    pub port: u16,
    devices: usize,
    target_dir: PathBuf,
    down: bool,
    /// Held until this stack is gone (fields drop after `Drop::drop`).
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Only one stack at a time in a test process: each runs a release build and
/// several containers. (nextest runs `dev_stack` tests alone: `.config/nextest.toml`.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl DevStack {
    /// Brings the clone to HEAD and runs `DEVICES=<devices> ./run-dev.sh` there,
    /// with a project prefix named after `scenario`. Panics, with its output,
    /// if it fails.
    pub async fn up(scenario: &str, devices: usize) -> DevStack {
        let turn = ONE_AT_A_TIME.lock().await;
        let repo = repo_root();
        let work = target_dir(&repo).join("dev-stack");
        let clone = work.join("clone");
        tokio::task::spawn_blocking({
            let clone = clone.clone();
            move || checkout_head(&repo, &clone)
        })
        .await
        .expect("checking out HEAD");

        let stack = DevStack {
            clone,
            prefix: format!("devstack-e2e-{}-{scenario}", std::process::id()),
            port: free_port(),
            devices,
            target_dir: work.join("cargo"),
            down: false,
            _turn: turn,
        };
        stack.run_up().await;
        stack
    }

    /// Runs `./run-dev.sh` (again): it must succeed and print the dashboard URL.
    pub async fn run_up(&self) {
        let mut run_dev = self.run_dev(&[]);
        let output = tokio::task::spawn_blocking(move || run_dev.output())
            .await
            .expect("run-dev.sh task")
            .expect("running run-dev.sh");
        print_output("./run-dev.sh", &output);
        if !output.status.success() {
            self.print_logs();
            panic!("./run-dev.sh failed: {}", output.status);
        }
        let printed = String::from_utf8_lossy(&output.stdout);
        let url = format!("{}/", self.url());
        assert!(
            printed.contains(&url),
            "run-dev.sh prints the dashboard URL {url}"
        );
        let login = format!("admin / {}", self.admin_password());
        assert!(
            printed.contains(&login),
            "run-dev.sh prints the dev admin's credentials"
        );
    }

    /// The dev admin's password, which run-dev.sh keeps in data/dev/admin.password.
    pub fn admin_password(&self) -> String {
        let path = self.clone.join("data/dev/admin.password");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path)
                .expect("run-dev.sh wrote data/dev/admin.password")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the password file is private");
        std::fs::read_to_string(&path)
            .expect("the dev admin's password")
            .trim()
            .to_string()
    }

    /// `./run-dev.sh ARGS` in the clone, with this stack's settings.
    pub fn run_dev(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.clone.join("run-dev.sh"));
        command
            .args(args)
            .current_dir(&self.clone)
            .env("DEVBRIDGE_PREFIX", &self.prefix)
            .env("CLOUD_PORT", self.port.to_string())
            .env("DEVICES", self.devices.to_string())
            .env("CARGO_TARGET_DIR", &self.target_dir)
            // The stack's behaviour is under test, not its speed: a lightly
            // optimized static build takes about half the time of the full one.
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1")
            .env_remove("RUST_LOG");
        command
    }

    /// The cloud's URL, `http://127.0.0.1:PORT`: the dashboard at `/`, the
    /// API under `/api/v1`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The cloud's API with the admin token it wrote into its data folder.
    pub fn api(&self) -> ApiClient {
        admin_api(&self.url(), &self.clone.join("data/cloud/admin.token"))
    }

    /// The compose project of the cloud, or of a device (`device-001`, ...).
    pub fn project(&self, stack: &str) -> String {
        format!("{}-{stack}", self.prefix)
    }

    /// Full ids of the containers of one service of a compose project.
    pub fn containers(&self, stack: &str, service: &str) -> Vec<String> {
        let output = run_ok(Command::new("docker").args([
            "ps",
            "--quiet",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project(stack)),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]));
        output.lines().map(str::to_string).collect()
    }

    /// The one container of a service.
    pub fn container(&self, stack: &str, service: &str) -> String {
        let ids = self.containers(stack, service);
        assert_eq!(ids.len(), 1, "one {service} container in {stack}: {ids:?}");
        ids[0].clone()
    }

    /// Containers and networks whose names carry this stack's prefix.
    pub fn leftovers(&self) -> Vec<String> {
        let filter = format!("name={}", self.prefix);
        let containers = ["ps", "--all", "--filter", &filter, "--format", "{{.Names}}"];
        let networks = [
            "network",
            "ls",
            "--filter",
            &filter,
            "--format",
            "{{.Name}}",
        ];
        [containers, networks]
            .iter()
            .flat_map(|args| {
                run_ok(Command::new("docker").args(args))
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Runs `./run-dev.sh down`; panics if it fails.
    pub fn down(&mut self) {
        self.down = true;
        let output = self
            .run_dev(&["down"])
            .output()
            .expect("running run-dev.sh down");
        print_output("./run-dev.sh down", &output);
        assert!(
            output.status.success(),
            "./run-dev.sh down failed: {}",
            output.status
        );
    }

    fn print_logs(&self) {
        if let Ok(output) = self.run_dev(&["logs", "--tail=60"]).output() {
            print_output("./run-dev.sh logs", &output);
        }
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        if !self.down {
            let _ = self.run_dev(&["down"]).output();
        }
        // The images carry the test's prefix; their layers stay shared with others.
        let images: Vec<String> = ["cloud", "bridge", "worker", "nats"]
            .iter()
            .map(|name| format!("{}/{name}:latest", self.prefix))
            .collect();
        let _ = Command::new("docker").arg("rmi").args(&images).output();
    }
}

/// Makes `clone` hold what a fresh clone of `repo`'s HEAD holds: the commit
/// checked out, nothing untracked (no keys, no data). Files that did not change
/// keep their times, so cargo rebuilds only what changed.
fn checkout_head(repo: &Path, clone: &Path) {
    let git = |dir: &Path, args: &[&str]| run_ok(Command::new("git").arg("-C").arg(dir).args(args));
    let head = git(repo, &["rev-parse", "HEAD"]).trim().to_string();
    if !clone.join(".git").is_dir() {
        if clone.exists() {
            std::fs::remove_dir_all(clone).expect("removing a broken clone");
        }
        std::fs::create_dir_all(clone).expect("creating the clone folder");
        git(clone, &["init", "--quiet"]);
    }
    git(clone, &["fetch", "--quiet", &path_str(repo), "HEAD"]);
    let fetched = git(clone, &["rev-parse", "FETCH_HEAD"]).trim().to_string();
    assert_eq!(fetched, head, "HEAD moved while fetching; run again");
    git(
        clone,
        &["checkout", "--quiet", "--force", "--detach", &head],
    );
    git(clone, &["clean", "--quiet", "-ffdx"]);
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e sits in the repository")
        .to_path_buf()
}

fn target_dir(repo: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => repo.join(dir),
        None => repo.join("target"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Runs a command and returns its stdout; panics with its stderr when it fails.
fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("running {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Shows a command's output in the test's output (kept by the runner on failure).
fn print_output(what: &str, output: &Output) {
    println!(
        "--- {what} ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
