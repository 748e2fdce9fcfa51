//! Measures the cloud's memory per live device connection: starts the release
//! `cloud` binary, connects N real bridges (sharing one nats-server), accepts
//! them, and reads the cloud's resident memory before and after.
//! `cargo build --release -p cloud && cargo run --release -p e2e --example cloud_memory -- 2000`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bridge::{Bridge, BridgeConfig};
use protocol::{keys, Signer};
use serde_json::Value;
use testkit::nats::NatsServer;
use tokio_util::sync::CancellationToken;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    line.split_whitespace()
        .nth(1)
        .expect("value")
        .parse()
        .expect("number")
}

#[tokio::main]
async fn main() {
    let devices: usize = std::env::args()
        .nth(1)
        .map_or(1000, |n| n.parse().expect("N"));
    let binary = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "target/release/cloud".into());
    let dir = tempfile::tempdir().expect("temp dir");
    let key_path = dir.path().join("cloud_private.pem");
    let cloud_key = keys::generate();
    keys::write_private_key(&key_path, &cloud_key).expect("key");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cloud = Command::new(&binary)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--private-key",
        ])
        .arg(&key_path)
        .arg("--database")
        .arg(format!(
            "sqlite://{}",
            dir.path().join("cloud.db").display()
        ))
        .arg("--admin-token-file")
        .arg(dir.path().join("admin.token"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/api/v1");
    testkit::wait_until("cloud up", Duration::from_secs(10), || async {
        http.get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let token = std::fs::read_to_string(dir.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await; // let start-up allocations settle
    let before = rss_kib(cloud.id());

    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    for i in 0..devices {
        let mut config = BridgeConfig::new(
            format!("ws://127.0.0.1:{port}/ws/device"),
            Signer::new(format!("mem-{i:05}"), keys::generate()),
            "cloud-dashboard".into(),
            cloud_key.verifying_key(),
        );
        config.ping_interval = Duration::from_secs(60);
        tokio::spawn(Bridge::new(config, client.clone()).run(shutdown.clone()));
    }
    let list = || async {
        let reply = http
            .get(format!("{base}/devices"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?;
        let body: Value = reply.json().await.ok()?;
        body["devices"].as_array().cloned()
    };
    testkit::wait_until("all devices pending", Duration::from_secs(300), || async {
        list().await.filter(|d| d.len() == devices)
    })
    .await;
    for i in 0..devices {
        http.post(format!("{base}/devices/mem-{i:05}/accept"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
    }
    testkit::wait_until("all devices online", Duration::from_secs(300), || async {
        list()
            .await
            .filter(|d| d.iter().filter(|d| d["online"] == true).count() == devices)
    })
    .await;
    let connect_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(cloud.id());
    println!(
        "{devices} live devices: cloud RSS {before} KiB -> {after} KiB, {:.1} KiB per connection; all live after {:.1} s",
        (after.saturating_sub(before)) as f64 / devices as f64,
        connect_time.as_secs_f64()
    );
    shutdown.cancel();
    let _ = cloud.kill();
    let _ = cloud.wait();
}
