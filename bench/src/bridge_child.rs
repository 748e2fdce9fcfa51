//! One real `bridge` binary as a child process, as it runs in a device's
//! container: its own key file, the cloud's public key file, a nats-server
//! of its own. The simulated fleets share one process, so this is the one
//! bridge whose memory the bench can read alone.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use bridge::read_state_file;
use cloud::client::ApiClient;
use protocol::keys;
use protocol::nats::LinkState;
use tempfile::TempDir;
use testkit::nats::NatsServer;
use testkit::CloudEndpoint;

use crate::cloud_child::sibling_binary;

/// How long the bridge may take to connect, and then to go live once accepted.
const LINK_TIMEOUT: Duration = Duration::from_secs(60);

/// A `bridge` child; killed on drop, with its nats-server.
pub struct BridgeChild {
    pub id: String,
    /// Keys, the state file and the log.
    dir: TempDir,
    child: Child,
    _nats: NatsServer,
}

impl BridgeChild {
    /// Starts a bridge named `id` against `cloud`, accepts it through `api`
    /// and returns once it is live.
    pub async fn start_live(
        cloud: &CloudEndpoint,
        api: &ApiClient,
        id: &str,
    ) -> anyhow::Result<BridgeChild> {
        let binary = sibling_binary("bridge")?;
        let nats = NatsServer::start().await;
        let dir = tempfile::tempdir().context("temp dir for the bridge")?;
        let path = |name: &str| dir.path().join(name);
        keys::write_private_key(&path("device_private.pem"), &keys::generate())?;
        keys::write_public_key(&path("cloud_public.pem"), &cloud.public_key)?;
        let log = std::fs::File::create(path("bridge.log"))?;
        let child = Command::new(&binary)
            .env_clear()
            .env("RUST_LOG", "warn")
            .env("CLOUD_URL", &cloud.url)
            .env("CLOUD_ID", &cloud.cloud_id)
            .env("DEVICE_ID", id)
            .env("DEVICE_PRIVATE_KEY_PATH", path("device_private.pem"))
            .env("CLOUD_PUBLIC_KEY_PATH", path("cloud_public.pem"))
            .env("NATS_URL", nats.url())
            .env("BRIDGE_STATE_FILE", path("state.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let bridge = BridgeChild {
            id: id.to_owned(),
            dir,
            child,
            _nats: nats,
        };
        bridge.wait_for(LinkState::Pending).await?;
        api.accept(id)
            .await
            .with_context(|| format!("accepting {id}"))?;
        bridge.wait_for(LinkState::Live).await?;
        Ok(bridge)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    async fn wait_for(&self, state: LinkState) -> anyhow::Result<()> {
        let file = self.state_file();
        let reached = tokio::time::timeout(LINK_TIMEOUT, async {
            while read_state_file(&file).ok() != Some(state) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        reached.with_context(|| {
            let log = std::fs::read_to_string(self.dir.path().join("bridge.log"));
            format!(
                "bridge {} not {state:?} after {} s; its log:\n{}",
                self.id,
                LINK_TIMEOUT.as_secs(),
                log.unwrap_or_default()
            )
        })
    }
}

impl Drop for BridgeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
