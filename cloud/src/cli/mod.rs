//! The `cloud` command line: `serve`; operator commands that talk to a
//! running cloud over its HTTP API (`devices`, `rpc`, `audit`, `tokens`); and
//! `operators`, which edits the accounts in the database directly, so that the
//! first operator can be created on the cloud's host.

pub mod fleet;
pub mod healthcheck;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::client::ApiClient;
use crate::config::ServeArgs;
use crate::events::EventHub;
use crate::ops::team::Team;
use crate::ops::Auditor;
use crate::ops::Caller;
use crate::roles::Role;
use crate::store::Store;

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
    // Boxed: the server's settings dwarf every other command's.
    Serve(Box<ServeArgs>),
    /// List, accept, reject or delete devices.
    Devices(DevicesArgs),
    /// Call a JSON-RPC method on a device, on every device a filter matches
    /// (--tag, --state: a job), or queue it for an offline device (--ttl).
    Rpc(RpcArgs),
    /// List the latest jobs, or show one with every device's outcome.
    Jobs(fleet::JobsArgs),
    /// List a device's queued calls, or show one.
    Calls(fleet::CallsArgs),
    /// Read the audit log: operator actions and device auth events.
    Audit(AuditArgs),
    /// Create, list or revoke API tokens.
    Tokens(TokensArgs),
    /// Add, list or remove operator accounts (on the cloud's host: edits the database).
    Operators(OperatorsArgs),
    /// Exit 0 if the cloud on this host answers /healthz (for container health checks).
    Healthcheck(crate::cli::healthcheck::HealthcheckArgs),
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
    /// Bearer token: an operator's API token (`cloud tokens create`) or the
    /// admin token; instead of --token-file.
    #[arg(long, env = "CLOUD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the bearer token (the cloud writes its admin token there).
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
        #[command(flatten)]
        filter: fleet::FilterArgs,
    },
    /// Set tags on a device: key=value… (its other tags stay).
    Tag {
        id: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        tags: Vec<String>,
    },
    /// Remove tags from a device.
    Untag {
        id: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Register a device's id and public key before it first connects: that
    /// connection is accepted at once (admins).
    Preauthorize {
        id: String,
        /// The device's public key file (SPKI PEM, e.g. device_public.pem).
        #[arg(long)]
        key: std::path::PathBuf,
    },
    /// Accept a device's key: it goes live at once if connected.
    Accept { id: String },
    /// Require a device to rotate its key (admins): asked at once if it is
    /// online, else when it next connects.
    RequireRotation { id: String },
    /// Reject a device: it is cut off and kept out.
    Reject { id: String },
    /// Forget a device (its next connection registers as pending again).
    Delete { id: String },
    /// Send a device an event: a signed notification, no answer, which the
    /// bridge publishes on the device's NATS as rpc.EVENT for the workers
    /// that subscribe to it.
    Notify {
        id: String,
        /// Event name, dotted like a method's, e.g. example.notice.
        event: String,
        /// Params as a JSON object or array, e.g. '{"text": "hello"}'.
        #[arg(long)]
        params: Option<String>,
    },
    /// Show one device: state, key, health and its recent auth events.
    Show {
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only `operator` actions or `device` auth events.
    #[arg(long)]
    pub source: Option<String>,
    /// Only this operator's actions (or this device's events).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this action, e.g. rpc, login, device.accept, new_key.
    #[arg(long)]
    pub action: Option<String>,
    /// Only entries about this device (or token, operator).
    #[arg(long)]
    pub target: Option<String>,
    /// Only entries whose outcome is not ok.
    #[arg(long)]
    pub failures: bool,
    /// Entries to show, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Entries to skip, for the next page.
    #[arg(long, default_value_t = 0)]
    pub offset: i64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TokensCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token for the calling operator; its secret is printed once.
    Create {
        name: String,
        /// What the token may do: viewer, operator or admin, at most the
        /// caller's role (default: the caller's).
        #[arg(long)]
        role: Option<Role>,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once.
    Revoke { id: i64 },
}

#[derive(Debug, Args)]
pub struct OperatorsArgs {
    /// Registry database URL (the same the cloud serves from).
    #[arg(
        long = "database",
        env = "DATABASE_URL",
        default_value = "sqlite://data/cloud.db",
        global = true
    )]
    pub database_url: String,
    #[command(subcommand)]
    pub command: OperatorsCommand,
}

#[derive(Debug, Subcommand)]
pub enum OperatorsCommand {
    /// Add an operator. Without --password-stdin a strong password is made
    /// up and printed once.
    Add {
        name: String,
        /// viewer, operator or admin. The host makes admins unless told otherwise.
        #[arg(long, default_value = "admin")]
        role: Role,
        /// Read the password from standard input (first line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change an operator's role (viewer, operator or admin).
    Role { name: String, role: Role },
    /// List operators.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an operator with their sessions and API tokens.
    Remove { name: String },
    /// Set an operator's password (ends their sessions).
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Args)]
pub struct RpcArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// DEVICE METHOD [PARAMS]; with a filter (--tag, --state, --id-contains)
    /// METHOD [PARAMS]. METHOD e.g. containers.list; PARAMS a JSON object or
    /// array, e.g. '{"all": true}'.
    #[arg(required = true, num_args = 1..=3, value_name = "DEVICE METHOD [PARAMS]")]
    pub words: Vec<String>,
    /// Call every accepted device the filter matches, as one job.
    #[command(flatten)]
    pub filter: fleet::FilterArgs,
    /// How long the device has to answer, in milliseconds (default: the cloud's).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// A job's calls in flight at once (default 32).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Queue the call until the device is online, for at most this long
    /// (e.g. 30m, 2h, 7d); prints the queued call.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// With --ttl: names this submission, so running the command again does
    /// not call twice.
    #[arg(long, requires = "ttl")]
    pub idempotency_key: Option<String>,
}

/// The server bounds every call itself; this only guards against a hung server.
const HUNG_SERVER_TIMEOUT: Duration = Duration::from_secs(600);

impl ClientArgs {
    /// The API client these arguments name.
    fn client(&self) -> anyhow::Result<ApiClient> {
        let token = match &self.token {
            Some(token) => token.clone(),
            None => std::fs::read_to_string(&self.token_file).with_context(|| {
                format!(
                    "cannot read the admin token from {} (pass --token or --token-file)",
                    self.token_file.display()
                )
            })?,
        };
        Ok(ApiClient::new(&self.url, &token, HUNG_SERVER_TIMEOUT))
    }
}

pub async fn devices(args: DevicesArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    match args.command {
        DevicesCommand::Tag { id, tags } => fleet::tag(&client, &id, &tags).await?,
        DevicesCommand::Untag { id, keys } => fleet::untag(&client, &id, &keys).await?,
        DevicesCommand::List { json, filter } => {
            let answer = client
                .get(&format!("/devices?{}", filter.to_query()))
                .await?;
            let devices = answer["devices"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else {
                print!("{}", device_table(&devices, now_ms()));
            }
        }
        DevicesCommand::Preauthorize { id, key } => {
            let pem = read_small_file(&key)?;
            let answer = client.preauthorize(&id, &pem).await?;
            println!(
                "preauthorized {id} ({})",
                answer["device"]["fingerprint"].as_str().unwrap_or("?")
            );
        }
        DevicesCommand::RequireRotation { id } => {
            let answer = client.require_rotation(&id).await?;
            let when = if answer["asked_now"] == true {
                "asked now"
            } else {
                "to be asked when it next connects"
            };
            println!("{id} must rotate its key ({when})");
        }
        DevicesCommand::Accept { id } => {
            let answer = client.accept(&id).await?;
            println!(
                "accepted {id} ({})",
                answer["device"]["fingerprint"].as_str().unwrap_or("?")
            );
        }
        DevicesCommand::Reject { id } => {
            let answer = client.reject(&id).await?;
            println!(
                "rejected {id} ({})",
                answer["device"]["fingerprint"].as_str().unwrap_or("?")
            );
        }
        DevicesCommand::Delete { id } => {
            client.delete(&id).await?;
            println!("deleted {id}");
        }
        DevicesCommand::Notify { id, event, params } => {
            let params = match params {
                Some(params) => {
                    Some(serde_json::from_str(&params).context("--params is not valid JSON")?)
                }
                None => None,
            };
            let answer = client.notify(&id, &event, params).await?;
            println!(
                "{} {event} to {id}",
                answer["status"].as_str().unwrap_or("sent")
            );
        }
        DevicesCommand::Show { id, json } => {
            let answer = client.device(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print!("{}", device_details(&answer, now_ms()));
            }
        }
    }
    Ok(())
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, value) in [
        ("source", &args.source),
        ("actor", &args.actor),
        ("action", &args.action),
        ("target", &args.target),
    ] {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    if args.failures {
        query.append_pair("failures_only", "true");
    }
    query.append_pair("limit", &args.limit.to_string());
    query.append_pair("offset", &args.offset.to_string());
    let answer = client.audit(&query.finish()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let entries = answer["entries"].as_array().cloned().unwrap_or_default();
    let rows = entries.iter().map(|e| {
        let text = |field: &str| e[field].as_str().unwrap_or("").to_string();
        vec![
            e["at"].as_i64().map_or("-".into(), |at| ago(now_ms() - at)),
            text("actor"),
            text("action"),
            text("target"),
            text("outcome"),
            text("detail"),
            e["latency_ms"]
                .as_i64()
                .map_or(String::new(), |ms| format!("{ms} ms")),
        ]
    });
    print!(
        "{}",
        table(
            &["WHEN", "WHO", "ACTION", "TARGET", "OUTCOME", "DETAIL", "LATENCY"],
            rows
        )
    );
    let total = answer["total"].as_i64().unwrap_or(0);
    let shown = args.offset + entries.len() as i64;
    if shown < total {
        println!("({shown} of {total}; --offset {shown} for more)");
    }
    Ok(())
}

pub async fn tokens(args: TokensArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    match args.command {
        TokensCommand::Create { name, role } => {
            let answer = client.create_token(&name, role.map(Role::as_str)).await?;
            eprintln!(
                "created token {} ({name}); it is shown only now:",
                answer["token"]["id"]
            );
            println!("{}", answer["secret"].as_str().unwrap_or(""));
        }
        TokensCommand::List { json } => {
            let answer = client.tokens().await?;
            let tokens = answer["tokens"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
                return Ok(());
            }
            let when = |v: &Value| v.as_i64().map_or("-".into(), |at| ago(now_ms() - at));
            let rows = tokens.iter().map(|t| {
                vec![
                    t["id"].to_string(),
                    t["name"].as_str().unwrap_or("").into(),
                    t["operator"].as_str().unwrap_or("").into(),
                    t["role"].as_str().unwrap_or("").into(),
                    when(&t["created_at"]),
                    when(&t["last_used_at"]),
                    if t["revoked_at"].is_null() {
                        "active".into()
                    } else {
                        "revoked".into()
                    },
                ]
            });
            print!(
                "{}",
                table(
                    &[
                        "ID",
                        "NAME",
                        "OPERATOR",
                        "ROLE",
                        "CREATED",
                        "LAST USED",
                        "STATE"
                    ],
                    rows
                )
            );
        }
        TokensCommand::Revoke { id } => {
            client.revoke_token(id).await?;
            println!("revoked token {id}");
        }
    }
    Ok(())
}

pub async fn operators(args: OperatorsArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.database_url)
        .await
        .with_context(|| format!("cannot open the database {}", args.database_url))?;
    // Changes made on the host are audited like the API's; nobody listens live.
    let team = Team::new(
        store.accounts,
        Auditor::new(store.audit, EventHub::default()),
    );
    let host = Caller::host();
    match args.command {
        OperatorsCommand::Add {
            name,
            role,
            password_stdin,
        } => {
            let chosen = password_stdin.then(read_password).transpose()?;
            let (_, password) = team
                .add_operator(&host, &name, role, chosen.as_deref())
                .await?;
            if chosen.is_none() {
                println!("added {role} {name} with password: {password}");
            } else {
                println!("added {role} {name}");
            }
        }
        OperatorsCommand::Role { name, role } => {
            team.set_role(&host, &name, role).await?;
            println!("{name} is now {role}");
        }
        OperatorsCommand::List { json } => {
            let operators = team.operators(&host).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&operators)?);
                return Ok(());
            }
            let rows = operators.iter().map(|o| {
                vec![
                    o.name.clone(),
                    o.role.to_string(),
                    ago(now_ms() - o.created_at),
                ]
            });
            print!("{}", table(&["NAME", "ROLE", "CREATED"], rows));
        }
        OperatorsCommand::Remove { name } => {
            team.remove_operator(&host, &name).await?;
            println!("removed operator {name}");
        }
        OperatorsCommand::Passwd {
            name,
            password_stdin,
        } => {
            let chosen = password_stdin.then(read_password).transpose()?;
            let password = team.reset_password(&host, &name, chosen.as_deref()).await?;
            if chosen.is_none() {
                println!("new password of {name}: {password}");
            } else {
                println!("password of {name} changed");
            }
        }
    }
    Ok(())
}

/// The first line of stdin, or a made-up password (and true).
/// A key file's text; anything over 64 KiB is no key.
fn read_small_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(64 * 1024)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text)
}

/// The first line of standard input.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// `cloud devices show` as text.
fn device_details(answer: &Value, now_ms: i64) -> String {
    let device = &answer["device"];
    let text = |field: &str| device[field].as_str().unwrap_or("-").to_string();
    let mut out = String::new();
    let mut line = |label: &str, value: String| out.push_str(&format!("{label:<14}{value}\n"));
    line("id", text("id"));
    line("status", text("status"));
    line("online", online(device));
    line("fingerprint", text("fingerprint"));
    line("bridge", text("bridge_version"));
    line(
        "last seen",
        device["last_seen"]
            .as_i64()
            .map_or("-".into(), |at| ago(now_ms - at)),
    );
    let health = &device["last_health"];
    if health.is_object() {
        line(
            "health",
            format!(
                "cpu {:.0}%, load {}, {} containers running",
                health["cpu_percent"].as_f64().unwrap_or(0.0),
                health["load"][0].as_f64().unwrap_or(0.0),
                health["containers_running"]
            ),
        );
    }
    out.push_str("\nauth events:\n");
    let events = answer["auth_events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rows = events.iter().take(10).map(|e| {
        vec![
            e["at"].as_i64().map_or("-".into(), |at| ago(now_ms - at)),
            e["event"].as_str().unwrap_or("").into(),
            e["detail"].as_str().unwrap_or("").into(),
        ]
    });
    out.push_str(&table(&["WHEN", "EVENT", "DETAIL"], rows));
    out
}

pub async fn rpc(args: RpcArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    let job = !args.filter.is_empty();
    let (device, method, params) = match (job, args.words.as_slice()) {
        (true, [method]) => (None, method, None),
        (true, [method, params]) => (None, method, Some(params)),
        (false, [device, method]) => (Some(device), method, None),
        (false, [device, method, params]) => (Some(device), method, Some(params)),
        (true, _) => anyhow::bail!("with a filter, give METHOD [PARAMS] (no device)"),
        (false, _) => {
            anyhow::bail!("give DEVICE METHOD [PARAMS], or a filter such as --tag site=berlin")
        }
    };
    let params = match params {
        Some(params) => Some(serde_json::from_str(params).with_context(|| match job {
            true => "PARAMS is not valid JSON (with a filter, give METHOD [PARAMS], no device)",
            false => "PARAMS is not valid JSON",
        })?),
        None => None,
    };
    let Some(device) = device else {
        if args.ttl.is_some() {
            anyhow::bail!("--ttl queues a call for one device; a job calls the devices online now");
        }
        return fleet::job(
            &client,
            &args.filter,
            method,
            params,
            args.concurrency,
            args.timeout_ms,
        )
        .await;
    };
    if let Some(ttl) = args.ttl {
        return fleet::queue_call(
            &client,
            device,
            method,
            params,
            ttl,
            args.idempotency_key.as_deref(),
            args.timeout_ms,
        )
        .await;
    }
    let timeout = args.timeout_ms.map(Duration::from_millis);
    let result = client.rpc(device, method, params, timeout).await?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

/// `no`, or the instance holding the device's connection (`yes` from a
/// cloud too old to say).
fn online(device: &Value) -> String {
    match (device["online"].as_bool(), device["instance"].as_str()) {
        (Some(true), Some(instance)) => instance.to_owned(),
        (Some(true), None) => "yes".into(),
        _ => "no".into(),
    }
}

/// A readable table: id, status, online (on which instance), fingerprint,
/// last seen, bridge version.
fn device_table(devices: &[Value], now_ms: i64) -> String {
    let rows = devices.iter().map(|device| {
        let text = |field: &str| device[field].as_str().unwrap_or("-").to_string();
        vec![
            text("id"),
            text("status"),
            online(device),
            text("fingerprint"),
            device["last_seen"]
                .as_i64()
                .map_or("-".into(), |at| ago(now_ms - at)),
            text("bridge_version"),
            fleet::tags_text(&device["tags"]),
        ]
    });
    let mut out = table(
        &[
            "ID",
            "STATUS",
            "ONLINE",
            "FINGERPRINT",
            "LAST SEEN",
            "BRIDGE",
            "TAGS",
        ],
        rows,
    );
    if devices.is_empty() {
        out.push_str("(no devices)\n");
    }
    out
}

/// Left-aligned columns, two spaces apart, headers first.
fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut rows: Vec<Vec<String>> =
        std::iter::once(headers.iter().map(|h| h.to_string()).collect())
            .chain(rows)
            .collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|column| {
            rows.iter()
                .map(|row| row.get(column).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &mut rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
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

fn now_ms() -> i64 {
    protocol::now_ms() as i64
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
            json!({"id": "device-0003", "status": "accepted", "online": true,
                   "instance": "cloud-2", "fingerprint": "SHA256:h", "last_seen": 99_000}),
            json!({"id": "device-0002", "status": "accepted", "online": false,
                   "fingerprint": "SHA256:defg", "last_seen": 100_000 - 7_200_000,
                   "bridge_version": null}),
        ];
        let table = device_table(&devices, 100_000);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("ID           STATUS    ONLINE"));
        assert!(lines[1].contains("dev-1        pending   yes"));
        assert!(lines[1].contains("5s ago"));
        assert!(lines[2].contains("device-0003  accepted  cloud-2"));
        assert!(lines[3].contains("2h ago"));
        assert!(lines[3].ends_with('-'));
    }
}
