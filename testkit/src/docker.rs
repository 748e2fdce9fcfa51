//! Docker for tests: a tiny busybox image built locally (nothing can be pulled
//! here) and containers started from it, force-removed on drop.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::OnceCell;

/// The test image: Debian's static busybox on `scratch`, its applets linked
/// into `/bin`, so `sh -c '...'` works.
pub const BUSYBOX_IMAGE: &str = "devbridge-test-busybox:latest";

/// Label on every test container, so leftovers can be found and removed:
/// `docker rm -f $(docker ps -aq --filter label=devbridge-test=1)`.
pub const TEST_LABEL: &str = "devbridge-test=1";

/// Where Debian's busybox-static package puts its binary.
const STATIC_BUSYBOX: &str = "/bin/busybox";

const DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["/bin/sh"]
"#;

/// A Docker client for the local engine, API version negotiated.
pub async fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_defaults()
        .expect("connecting to the local Docker engine")
        .negotiate_version()
        .await
        .expect("negotiating the Docker API version")
}

/// Builds the test image once per process and returns its tag.
pub async fn busybox_image() -> String {
    static BUILT: OnceCell<()> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            tokio::task::spawn_blocking(build_busybox_image)
                .await
                .expect("building the busybox image")
        })
        .await;
    BUSYBOX_IMAGE.to_string()
}

fn build_busybox_image() {
    let context = tempfile::tempdir().expect("temporary build context");
    assert!(
        Path::new(STATIC_BUSYBOX).is_file(),
        "{STATIC_BUSYBOX} is missing: apt-get install busybox-static"
    );
    std::fs::copy(STATIC_BUSYBOX, context.path().join("busybox")).expect("copying busybox");
    std::fs::write(context.path().join("Dockerfile"), DOCKERFILE).expect("writing the Dockerfile");
    docker_cli(&[
        "build",
        "--quiet",
        "--tag",
        BUSYBOX_IMAGE,
        &context.path().to_string_lossy(),
    ]);
}

/// A container started from the busybox image, force-removed on drop.
pub struct TestContainer {
    /// Unique per test: `devbridge-test-<pid>-<n>`.
    pub name: String,
    pub id: String,
}

impl TestContainer {
    /// Starts a container running `sh -c <shell_command>`, e.g.
    /// `"echo line-1; echo line-2 >&2; sleep 600"`.
    pub async fn start(shell_command: &str) -> TestContainer {
        Self::start_with_env(&[], shell_command).await
    }

    /// Like [`TestContainer::start`], with environment variables set.
    pub async fn start_with_env(env: &[(&str, &str)], shell_command: &str) -> TestContainer {
        Self::start_with(env, &[], shell_command).await
    }

    /// Like [`TestContainer::start`], with labels besides [`TEST_LABEL`], e.g.
    /// `com.docker.compose.project` and `com.docker.compose.service` to pass
    /// for a Compose service.
    pub async fn start_with_labels(labels: &[(&str, &str)], shell_command: &str) -> TestContainer {
        Self::start_with(&[], labels, shell_command).await
    }

    async fn start_with(
        env: &[(&str, &str)],
        labels: &[(&str, &str)],
        shell_command: &str,
    ) -> TestContainer {
        let image = busybox_image().await;
        let name = unique_name();
        let mut args: Vec<String> = ["run", "--detach", "--name", &name, "--label", TEST_LABEL]
            .map(String::from)
            .to_vec();
        for (key, value) in env {
            args.push("--env".into());
            args.push(format!("{key}={value}"));
        }
        for (key, value) in labels {
            args.push("--label".into());
            args.push(format!("{key}={value}"));
        }
        args.extend([image, "sh".into(), "-c".into(), shell_command.to_string()]);
        let id = tokio::task::spawn_blocking(move || {
            docker_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .expect("starting a test container");
        TestContainer { name, id }
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        // Best effort: a leftover is labelled and easy to find.
        let _ = Command::new("docker")
            .args(["rm", "--force", &self.id])
            .output();
    }
}

/// A container name no other test (in this or another process) uses.
pub fn unique_name() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "devbridge-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs the docker CLI and returns its trimmed stdout; panics with its stderr
/// when it fails.
fn docker_cli(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running docker {args:?}: {err}"));
    assert!(
        output.status.success(),
        "docker {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
