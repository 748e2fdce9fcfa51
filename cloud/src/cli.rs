//! The `cloud` command line: `serve`, and operator commands that talk to a
//! running cloud over its HTTP API.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::config::ServeArgs;

#[derive(Debug, Parser)]
#[command(
    name = "cloud",
    version,
    about = "Signed JSON-RPC device cloud: server and operator CLI"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the cloud: the device WebSocket endpoint and the HTTP API.
    Serve(ServeArgs),
    /// List, accept, reject or delete devices.
    Devices(DevicesArgs),
    /// Call a JSON-RPC method on an accepted, connected device.
    Rpc(RpcArgs),
    /// Exit 0 if the cloud on this host answers /healthz (for container health checks).
    Healthcheck(crate::healthcheck::HealthcheckArgs),
}

/// How to reach a running cloud.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the cloud's HTTP API.
    #[arg(
        long,
        env = "CLOUD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Admin bearer token (instead of --token-file).
    #[arg(long, env = "CLOUD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the admin bearer token.
    #[arg(
        long,
        env = "CLOUD_ADMIN_TOKEN_FILE",
        default_value = "data/admin.token",
        global = true
    )]
    pub token_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct DevicesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: DevicesCommand,
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List devices, pending ones first.
    List {
        /// Print the devices as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Accept a device's key: it goes live at once if connected.
    Accept { id: String },
    /// Reject a device: it is cut off and kept out.
    Reject { id: String },
    /// Forget a device (its next connection registers as pending again).
    Delete { id: String },
}

#[derive(Debug, Args)]
pub struct RpcArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Device id.
    pub device: String,
    /// Method, e.g. containers.list.
    pub method: String,
    /// Params as a JSON object or array, e.g. '{"all": true}'.
    pub params: Option<String>,
    /// How long the device has to answer, in milliseconds (default: the cloud's).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
}

/// A client of the cloud's HTTP API.
struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl ApiClient {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let token = match &args.token {
            Some(token) => token.clone(),
            None => std::fs::read_to_string(&args.token_file)
                .with_context(|| {
                    format!(
                        "cannot read the admin token from {} (pass --token or --token-file)",
                        args.token_file.display()
                    )
                })?
                .trim()
                .to_string(),
        };
        Ok(ApiClient {
            // The server bounds RPCs itself; this only guards against a hung server.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()?,
            base: args.url.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the cloud at {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        if status.is_success() {
            if text.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).context("the cloud answered with invalid JSON");
        }
        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let kind = error["error"]["kind"].as_str().unwrap_or("http_error");
        let message = error["error"]["message"].as_str().unwrap_or(&text);
        match error["error"].get("rpc_error") {
            Some(rpc_error) => bail!("{kind} ({status}): {message}\n{rpc_error:#}"),
            None => bail!("{kind} ({status}): {message}"),
        }
    }
}

pub async fn devices(args: DevicesArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client)?;
    let path = |id: &str, action: &str| format!("/devices/{}{action}", encode_path_segment(id));
    match args.command {
        DevicesCommand::List { json } => {
            let answer = client.send(reqwest::Method::GET, "/devices", None).await?;
            let devices = answer["devices"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else {
                print!("{}", device_table(&devices, now_ms()));
            }
        }
        DevicesCommand::Accept { id } => {
            let answer = client
                .send(reqwest::Method::POST, &path(&id, "/accept"), None)
                .await?;
            println!(
                "accepted {id} ({})",
                answer["device"]["fingerprint"].as_str().unwrap_or("?")
            );
        }
        DevicesCommand::Reject { id } => {
            let answer = client
                .send(reqwest::Method::POST, &path(&id, "/reject"), None)
                .await?;
            println!(
                "rejected {id} ({})",
                answer["device"]["fingerprint"].as_str().unwrap_or("?")
            );
        }
        DevicesCommand::Delete { id } => {
            client
                .send(reqwest::Method::DELETE, &path(&id, ""), None)
                .await?;
            println!("deleted {id}");
        }
    }
    Ok(())
}

pub async fn rpc(args: RpcArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client)?;
    let mut body = serde_json::json!({ "method": args.method });
    if let Some(params) = &args.params {
        let params: Value =
            serde_json::from_str(params).context("PARAMS_JSON is not valid JSON")?;
        body["params"] = params;
    }
    if let Some(timeout_ms) = args.timeout_ms {
        body["timeout_ms"] = timeout_ms.into();
    }
    let path = format!("/devices/{}/rpc", encode_path_segment(&args.device));
    let answer = client
        .send(reqwest::Method::POST, &path, Some(body))
        .await?;
    println!("{}", serde_json::to_string_pretty(&answer["result"])?);
    Ok(())
}

/// A readable table: id, status, online, fingerprint, last seen, bridge version.
fn device_table(devices: &[Value], now_ms: i64) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "STATUS".into(),
        "ONLINE".into(),
        "FINGERPRINT".into(),
        "LAST SEEN".into(),
        "BRIDGE".into(),
    ]];
    for device in devices {
        let text = |field: &str| device[field].as_str().unwrap_or("-").to_string();
        rows.push([
            text("id"),
            text("status"),
            if device["online"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
            .into(),
            text("fingerprint"),
            device["last_seen"]
                .as_i64()
                .map_or("-".into(), |at| ago(now_ms - at)),
            text("bridge_version"),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if devices.is_empty() {
        out.push_str("(no devices)\n");
    }
    out
}

/// "5s ago", "3m ago", "2h ago", "4d ago".
fn ago(ms: i64) -> String {
    let secs = (ms / 1000).max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Device ids are plain (`[A-Za-z0-9._-]`), but the CLI takes any input:
/// percent-encode everything else.
fn encode_path_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_aligns_columns_and_says_how_long_ago() {
        let devices = [
            json!({"id": "dev-1", "status": "pending", "online": true,
                   "fingerprint": "SHA256:abc", "last_seen": 95_000, "bridge_version": "0.1.0"}),
            json!({"id": "device-0002", "status": "accepted", "online": false,
                   "fingerprint": "SHA256:defg", "last_seen": 100_000 - 7_200_000,
                   "bridge_version": null}),
        ];
        let table = device_table(&devices, 100_000);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID           STATUS    ONLINE"));
        assert!(lines[1].contains("dev-1        pending   yes"));
        assert!(lines[1].contains("5s ago"));
        assert!(lines[2].contains("2h ago"));
        assert!(lines[2].ends_with('-'));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_path_segment("dev-1.a_b"), "dev-1.a_b");
        assert_eq!(encode_path_segment("a/b c"), "a%2Fb%20c");
    }
}
