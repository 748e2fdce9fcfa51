//! A real PostgreSQL server for a test (Debian's `postgresql` package), in a
//! temporary directory on a free loopback port, stopped on drop.
//!
//! Each server is its own cluster (`initdb`, about a second), so tests share
//! nothing and need no server set up beforehand. PostgreSQL refuses to run
//! as root: under root it runs as the `postgres` user the package creates.
//! Durability is off (`fsync`), as nothing here outlives the test.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// How long a starting server may take to accept queries.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The superuser `initdb` creates; it signs in without a password (trust).
const USER: &str = "devbridge";

/// A running PostgreSQL server with one database, `postgres`.
pub struct PostgresServer {
    port: u16,
    child: Option<Child>,
    bin_dir: PathBuf,
    /// The cluster's files, its socket and its log.
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Creates a cluster and starts its server; returns once it answers.
    pub async fn start() -> PostgresServer {
        let bin_dir = postgres_bin_dir();
        let dir = tempfile::tempdir().expect("temporary directory for PostgreSQL");
        let server = PostgresServer {
            port: free_port(),
            child: None,
            bin_dir,
            dir,
        };
        let owner = server_user();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(server.dir.path(), Some(uid), Some(gid))
                .expect("handing the cluster's directory to the postgres user");
        }
        let output = server
            .command("initdb", owner)
            .args([
                "-A",
                "trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "-D",
            ])
            .arg(server.data_dir())
            .output()
            .expect("running initdb (apt-get install postgresql)");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut server = server;
        server.spawn(owner).await;
        server
    }

    /// `postgres://devbridge@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn command(&self, program: &str, owner: Option<(u32, u32)>) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        if let Some((uid, gid)) = owner {
            command.uid(uid).gid(gid);
        }
        command.stdin(Stdio::null());
        command
    }

    async fn spawn(&mut self, owner: Option<(u32, u32)>) {
        let log = std::fs::File::create(self.log_path()).expect("PostgreSQL's log file");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(self.log_path(), Some(uid), Some(gid)).expect("log owner");
        }
        let child = self
            .command("postgres", owner)
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-k",
            ])
            .arg(self.dir.path())
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "shared_buffers=32MB"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning postgres");
        self.child = Some(child);
        self.wait_until_ready().await;
    }

    /// Polls `pg_isready`: the port opens before the server takes queries.
    async fn wait_until_ready(&mut self) {
        let give_up = Instant::now() + START_TIMEOUT;
        loop {
            let ready = Command::new(self.bin_dir.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= give_up {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                panic!(
                    "PostgreSQL on port {} did not start; its log:\n{log}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: an immediate shutdown that also ends its backends
            // (SIGKILL would leave them behind for a moment).
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// Debian installs each major version in /usr/lib/postgresql/<major>/bin;
/// the newest is taken (`POSTGRES_BIN_DIR` overrides).
fn postgres_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("POSTGRES_BIN_DIR") {
        return dir.into();
    }
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root).ok().and_then(|versions| {
        versions
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .max()
    });
    match newest {
        Some(major) => root.join(major.to_string()).join("bin"),
        None => panic!("PostgreSQL is not installed (apt-get install postgresql)"),
    }
}

/// Under root, the `postgres` user's uid and gid; otherwise none (the server
/// runs as whoever runs the test).
fn server_user() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("running id");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect(
            "PostgreSQL refuses root, and there is no postgres user (apt-get install postgresql)",
        )
    };
    Some((id("-u"), id("-g")))
}

/// The database a store test runs on: a fresh SQLite file, or a fresh
/// PostgreSQL server; dropped with the test.
pub enum TestDatabase {
    Sqlite(tempfile::TempDir),
    Postgres(PostgresServer),
}

impl TestDatabase {
    pub async fn sqlite() -> TestDatabase {
        TestDatabase::Sqlite(tempfile::tempdir().expect("temporary directory for SQLite"))
    }

    pub async fn postgres() -> TestDatabase {
        TestDatabase::Postgres(PostgresServer::start().await)
    }

    /// The URL the cloud opens (its `DATABASE_URL`).
    pub fn url(&self) -> String {
        match self {
            TestDatabase::Sqlite(dir) => {
                format!("sqlite://{}", dir.path().join("cloud.db").display())
            }
            TestDatabase::Postgres(server) => server.url(),
        }
    }
}
