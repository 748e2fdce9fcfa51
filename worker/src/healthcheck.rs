//! `worker healthcheck`: one `rpc.discover` round trip through the device's
//! NATS, the path every cloud request takes. It passes when a worker is
//! connected and serving; Docker faults are reported per call, not here.
//! Container images have no shell, so the binary carries its own check.

use std::time::Duration;

use anyhow::{ensure, Context};
use protocol::nats::RPC_PREFIX;
use worker::methods::DISCOVER_METHOD;
use worker::NatsLogin;

/// Succeeds when a worker answers `rpc.discover` on `nats_url` within
/// `timeout`, asked as the worker's own NATS user.
pub async fn run(
    nats_url: &str,
    login: Option<&NatsLogin>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let check = async {
        let nats = worker::nats_options("worker-healthcheck", login)
            .connect(nats_url)
            .await
            .with_context(|| format!("cannot connect to NATS at {nats_url}"))?;
        let request = serde_json::json!({
            "jsonrpc": "2.0",
            "id": "healthcheck",
            "method": DISCOVER_METHOD,
        });
        let reply = nats
            .request(
                format!("{RPC_PREFIX}{DISCOVER_METHOD}"),
                request.to_string().into(),
            )
            .await
            .context("no worker answered rpc.discover")?;
        let answer: serde_json::Value =
            serde_json::from_slice(&reply.payload).context("the answer is not JSON")?;
        ensure!(
            answer["result"]["methods"].is_array(),
            "unexpected answer: {answer}"
        );
        anyhow::Ok(())
    };
    tokio::time::timeout(timeout, check)
        .await
        .context("the check timed out")??;
    println!("ok");
    Ok(())
}
