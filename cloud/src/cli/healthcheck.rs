//! `cloud healthcheck`: asks the cloud running beside it for `/healthz` and
//! exits 0 when it answers "ok". Container images of the cloud have no shell or
//! curl, so the binary carries its own health check.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context};

/// Flags of `cloud healthcheck`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    /// The address `cloud serve` listens on (the same variable): the check
    /// asks that port, on loopback when the address is 0.0.0.0 or [::].
    #[arg(long, env = "CLOUD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// How long the cloud has to answer, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    pub timeout_ms: u64,
}

/// Succeeds when `/healthz` answers 200 with `"status": "ok"`.
pub async fn run(args: HealthcheckArgs) -> anyhow::Result<()> {
    let url = format!("http://{}/healthz", probe_address(args.listen));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()?;
    let response = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("no answer from {url}"))?;
    let status = response.status();
    ensure!(status.is_success(), "{url} answered {status}");
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("{url} answered with invalid JSON"))?;
    ensure!(body["status"] == "ok", "{url} answered {body}");
    println!("ok");
    Ok(())
}

/// Where to reach a server listening on `listen` from the same host.
fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_probed_on_loopback() {
        let probe = |listen: &str| probe_address(listen.parse().unwrap()).to_string();
        assert_eq!(probe("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(probe("[::]:9000"), "[::1]:9000");
        assert_eq!(probe("10.1.2.3:8080"), "10.1.2.3:8080");
    }
}
