//! The example second worker (`worker/examples/example_worker.rs`) as a
//! child process on a device's NATS, as its container runs it beside the
//! real worker. The example is built once per test process with `cargo
//! build -p worker --example example_worker` (a no-op when up to date), into
//! the target directory this test was built in.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use tempfile::TempDir;

use crate::cloud_process::cargo_build;

/// A running `example_worker`; killed on drop.
pub struct ExampleWorker {
    child: Child,
    /// Holds its log.
    dir: TempDir,
}

impl ExampleWorker {
    /// Starts the example on the NATS at `nats_url` with `args` added
    /// (e.g. `--event`); it connects in the background.
    pub fn start(nats_url: &str, args: &[&str]) -> ExampleWorker {
        let dir = tempfile::tempdir().expect("temp dir for the example worker");
        let log = std::fs::File::create(dir.path().join("example_worker.log"))
            .expect("the example worker's log file");
        let child = Command::new(example_binary())
            .env_clear()
            .env("RUST_LOG", "info,async_nats=warn")
            .arg("--nats-url")
            .arg(nats_url)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning example_worker");
        ExampleWorker { child, dir }
    }

    /// The example's binary, to run `example_worker healthcheck` with.
    pub fn binary(&self) -> PathBuf {
        example_binary()
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("example_worker.log")).unwrap_or_default()
    }
}

impl Drop for ExampleWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/debug/examples/example_worker`, built once per process.
fn example_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            cargo_build(
                &["-p", "worker", "--example", "example_worker"],
                "debug/examples/example_worker",
            )
        })
        .clone()
}
