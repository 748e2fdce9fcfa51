//! The bridge's connection state, announced to workers on `bridge.status` and,
//! when configured, written to a state file for a container health check.

use std::path::Path;

use protocol::nats::{BridgeStatus, LinkState, BRIDGE_STATUS};

use crate::config::BridgeConfig;

pub async fn announce(nats: &async_nats::Client, config: &BridgeConfig, state: LinkState) {
    let status = BridgeStatus {
        state,
        device_id: config.device_id().to_owned(),
        at_ms: protocol::now_ms(),
    };
    let payload = serde_json::to_string(&status).expect("a bridge status serializes");
    if let Some(path) = &config.state_file {
        if let Err(error) = write_state_file(path, &payload).await {
            tracing::warn!(path = %path.display(), %error, "cannot write the state file");
        }
    }
    if let Err(error) = nats.publish(BRIDGE_STATUS, payload.into()).await {
        tracing::warn!(%error, "cannot publish bridge.status");
    }
}

/// Writes beside the file and renames, so a reader never sees half a state.
async fn write_state_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    tokio::fs::write(&partial, contents).await?;
    tokio::fs::rename(&partial, path).await
}

/// The state last written to `path` by a running bridge.
pub fn read_state_file(path: &Path) -> std::io::Result<LinkState> {
    let text = std::fs::read_to_string(path)?;
    let written: BridgeStatus = serde_json::from_str(&text)
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
    Ok(written.state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_state_file_holds_the_last_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        for state in [LinkState::Connecting, LinkState::Pending, LinkState::Live] {
            let payload = serde_json::json!({"state": state, "device_id": "d-1", "at_ms": 1});
            write_state_file(&path, &payload.to_string()).await.unwrap();
            assert_eq!(read_state_file(&path).unwrap(), state);
        }
        assert!(read_state_file(&dir.path().join("missing")).is_err());
    }
}
