//! The CLI's fleet operations: tags, calls to every device a filter
//! matches (a job, followed as it runs) and calls queued for offline
//! devices. Everything goes through the API.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::{device_path, ApiClient};

use super::ClientArgs;

/// How often a followed job is read again.
const FOLLOW_PERIOD: Duration = Duration::from_millis(300);

/// Which devices: the device list's filter.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Devices carrying these tags: key=value or key, comma-separated
    /// (site=berlin,env).
    #[arg(long)]
    pub tag: Option<String>,
    /// pending, accepted, rejected, online or offline.
    #[arg(long)]
    pub state: Option<String>,
    /// Part of the device id.
    #[arg(long = "id-contains")]
    pub id_contains: Option<String>,
}

impl FilterArgs {
    pub fn is_empty(&self) -> bool {
        self.tag.is_none() && self.state.is_none() && self.id_contains.is_none()
    }

    /// The filter as the API's JSON (`{"tag", "state", "q"}`).
    fn to_json(&self) -> Value {
        json!({ "tag": self.tag, "state": self.state, "q": self.id_contains })
    }

    /// The filter as the device list's query string.
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("tag", &self.tag),
            ("state", &self.state),
            ("q", &self.id_contains),
        ] {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
        query.finish()
    }
}

/// `cloud devices tag ID key=value…`: sets tags (keeps the others).
pub async fn tag(client: &ApiClient, id: &str, assignments: &[String]) -> anyhow::Result<()> {
    let mut patch = Map::new();
    for word in assignments {
        let (key, value) = word
            .split_once('=')
            .with_context(|| format!("{word:?} is not key=value (e.g. site=berlin)"))?;
        patch.insert(key.to_owned(), Value::from(value));
    }
    print_tags(id, &patch_tags(client, id, patch).await?);
    Ok(())
}

/// `cloud devices untag ID key…`: removes tags.
pub async fn untag(client: &ApiClient, id: &str, keys: &[String]) -> anyhow::Result<()> {
    let patch = keys.iter().map(|key| (key.clone(), Value::Null)).collect();
    print_tags(id, &patch_tags(client, id, patch).await?);
    Ok(())
}

async fn patch_tags(
    client: &ApiClient,
    id: &str,
    patch: Map<String, Value>,
) -> anyhow::Result<Value> {
    let path = device_path(id, "/tags");
    Ok(client
        .send(Method::PATCH, &path, Some(&Value::Object(patch)))
        .await?)
}

fn print_tags(id: &str, answer: &Value) {
    println!("{id}: {}", tags_text(&answer["tags"]));
}

/// `site=berlin,env=prod`, or `-` for none.
pub fn tags_text(tags: &Value) -> String {
    let text = tags
        .as_object()
        .map(|tags| {
            tags.iter()
                .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    if text.is_empty() {
        "-".into()
    } else {
        text
    }
}

/// `cloud rpc --tag … METHOD`: starts a job and prints each device's
/// outcome as it comes; fails unless every device answered.
pub async fn job(
    client: &ApiClient,
    filter: &FilterArgs,
    method: &str,
    params: Option<Value>,
    concurrency: Option<usize>,
    timeout_ms: Option<u64>,
) -> anyhow::Result<()> {
    let request = json!({
        "method": method,
        "params": params,
        "filter": filter.to_json(),
        "concurrency": concurrency,
        "timeout_ms": timeout_ms,
    });
    let started = client.send(Method::POST, "/jobs", Some(&request)).await?;
    let id = started["job"]["id"]
        .as_i64()
        .context("the cloud's answer names no job")?;
    let total = started["job"]["total"].as_i64().unwrap_or(0);
    eprintln!("job {id}: {method} on {total} devices");
    let mut after = 0;
    loop {
        let answer = client.get(&format!("/jobs/{id}?after={after}")).await?;
        for outcome in answer["outcomes"].as_array().into_iter().flatten() {
            let result = match &outcome["result"] {
                Value::String(message) => message.clone(),
                other => other.to_string(),
            };
            println!(
                "{}\t{}\t{}",
                outcome["device_id"].as_str().unwrap_or("?"),
                outcome["outcome"].as_str().unwrap_or("?"),
                result
            );
        }
        after = answer["next"].as_i64().unwrap_or(after);
        let job = &answer["job"];
        let more_to_read = answer["outcomes"].as_array().is_some_and(|o| !o.is_empty());
        if job["state"] != "running" && !more_to_read {
            let ok = job["tally"]["ok"].as_i64().unwrap_or(0);
            eprintln!(
                "job {id} {}: {}",
                job["state"].as_str().unwrap_or("?"),
                job["tally"]
            );
            if ok < total {
                bail!("{} of {total} devices did not answer ok", total - ok);
            }
            return Ok(());
        }
        if !more_to_read {
            tokio::time::sleep(FOLLOW_PERIOD).await;
        }
    }
}

/// `cloud rpc DEVICE METHOD --ttl …`: queues the call; prints it.
pub async fn queue_call(
    client: &ApiClient,
    device: &str,
    method: &str,
    params: Option<Value>,
    ttl: Duration,
    idempotency_key: Option<&str>,
    timeout_ms: Option<u64>,
) -> anyhow::Result<()> {
    let request = json!({
        "method": method,
        "params": params,
        "ttl_ms": ttl.as_millis() as u64,
        "idempotency_key": idempotency_key,
        "timeout_ms": timeout_ms,
    });
    let path = device_path(device, "/calls");
    let answer = client.send(Method::POST, &path, Some(&request)).await?;
    println!("{}", serde_json::to_string_pretty(&answer["call"])?);
    Ok(())
}

/// `cloud calls DEVICE [ID]`.
#[derive(Debug, Args)]
pub struct CallsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub device: String,
    /// One call, in full.
    pub call: Option<i64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn calls(args: CallsArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    if let Some(call) = args.call {
        let answer = client
            .get(&device_path(&args.device, &format!("/calls/{call}")))
            .await?;
        println!("{}", serde_json::to_string_pretty(&answer["call"])?);
        return Ok(());
    }
    let answer = client.get(&device_path(&args.device, "/calls")).await?;
    let calls = answer["calls"].as_array().cloned().unwrap_or_default();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&calls)?);
        return Ok(());
    }
    let rows = calls.iter().map(|call| {
        vec![
            call["id"].to_string(),
            call["method"].as_str().unwrap_or("?").to_owned(),
            call["state"].as_str().unwrap_or("?").to_owned(),
            call["outcome"].as_str().unwrap_or("-").to_owned(),
            call["created_by"].as_str().unwrap_or("?").to_owned(),
        ]
    });
    print!(
        "{}",
        super::table(&["ID", "METHOD", "STATE", "OUTCOME", "BY"], rows)
    );
    if calls.is_empty() {
        println!("(no queued calls)");
    }
    Ok(())
}

/// `cloud jobs [ID]`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// One job with every device's outcome.
    pub job: Option<i64>,
}

pub async fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    if let Some(job) = args.job {
        let answer = client.get(&format!("/jobs/{job}")).await?;
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let answer = client.get("/jobs").await?;
    let rows = answer["jobs"].as_array().into_iter().flatten().map(|job| {
        vec![
            job["id"].to_string(),
            job["method"].as_str().unwrap_or("?").to_owned(),
            job["filter"].as_str().unwrap_or("").to_owned(),
            job["total"].to_string(),
            job["state"].as_str().unwrap_or("?").to_owned(),
            job["created_by"].as_str().unwrap_or("?").to_owned(),
        ]
    });
    print!(
        "{}",
        super::table(&["ID", "METHOD", "FILTER", "DEVICES", "STATE", "BY"], rows)
    );
    Ok(())
}
