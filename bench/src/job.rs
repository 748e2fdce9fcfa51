//! `job`: one call to every device of a simulated fleet, as one job
//! (`POST /api/v1/jobs`), followed to its end; beside it the floor of the
//! same calls made by a client itself, through the API, as many in flight as
//! the job has. Every device must answer `ok` with its own id in both, or
//! the run fails.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use reqwest::Method;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cloud_child::{self, Cloud};
use crate::latency::round;
use crate::simulator::{Event, Fleet};

/// Devices of a smoke run: the size the job's test holds it to.
const SMOKE_DEVICES: usize = 1000;
/// Id prefix of the simulated devices, also the job's filter.
const PREFIX: &str = "job";
/// What the simulated devices are called with.
const METHOD: &str = "bench.echo";
/// Preauthorizations in flight at once.
const REGISTRATIONS_IN_FLIGHT: usize = 16;
/// How often the followed job is read.
const FOLLOW_PERIOD: Duration = Duration::from_millis(100);
/// How long the fleet may take to be live.
const GIVE_UP: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// Simulated devices the job calls.
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Calls in flight at once, in the job and in the floor.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// 1,000 devices (for CI).
    #[arg(long)]
    pub smoke: bool,
}

pub async fn run(args: &JobArgs) -> anyhow::Result<Map<String, Value>> {
    let devices = if args.smoke {
        SMOKE_DEVICES
    } else {
        args.devices
    };
    rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the file limit")?;
    let limits = cloud_child::raised_limits();
    println!(
        "job: {METHOD} on {devices} simulated devices, {} in flight; {}",
        args.concurrency,
        Cloud::describe(1, &limits)
    );
    let mut cloud = Cloud::start(1, &limits).await?;
    let first = &cloud.instances[0];
    let api = first.api()?;
    let fleet = Fleet::new(&[first.endpoint()], PREFIX, devices)?;
    // Preauthorized: each is live on its first connection.
    futures::stream::iter(fleet.keys())
        .map(|(id, pem)| {
            let api = api.clone();
            async move {
                api.preauthorize(&id, &pem)
                    .await
                    .with_context(|| format!("preauthorizing {id}"))
            }
        })
        .buffer_unordered(REGISTRATIONS_IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    let (events, mut heard) = mpsc::unbounded_channel();
    let fleet = fleet.storm(events);
    let mut live = 0;
    let give_up = Instant::now() + GIVE_UP;
    while live < devices {
        tokio::select! {
            Some(event) = heard.recv() => match event {
                Event::Live => live += 1,
                Event::Retrying { was_live: true, .. } => live -= 1,
                _ => {}
            },
            _ = tokio::time::sleep_until(give_up) => bail!("only {live} of {devices} devices live"),
        }
    }
    println!("job: {devices} devices live");

    let filter = json!({ "q": format!("{PREFIX}-"), "state": "online" });
    let started = Instant::now();
    let answer = api
        .send(
            Method::POST,
            "/jobs",
            Some(&json!({ "method": METHOD, "filter": filter, "concurrency": args.concurrency })),
        )
        .await?;
    let id = answer["job"]["id"].as_i64().context("no job id")?;
    let mut outcomes = Vec::new();
    let mut after = 0;
    let job = loop {
        let answer = api.get(&format!("/jobs/{id}?after={after}")).await?;
        let page = answer["outcomes"].as_array().cloned().unwrap_or_default();
        after = answer["next"].as_i64().unwrap_or(after);
        let more = !page.is_empty();
        outcomes.extend(page);
        if answer["job"]["state"] != "running" && !more {
            break answer["job"].clone();
        }
        if !more {
            tokio::time::sleep(FOLLOW_PERIOD).await;
        }
    };
    let job_secs = started.elapsed().as_secs_f64();
    // From the job's start to its end, as the cloud recorded them: without
    // the bench's reading of it.
    let cloud_secs = (job["finished_at"].as_i64().unwrap_or(0)
        - job["created_at"].as_i64().unwrap_or(0)) as f64
        / 1000.0;
    cloud.check_running()?;
    check_outcomes(&outcomes, devices)?;
    if job["total"] != json!(devices) || job["tally"]["ok"] != json!(devices) {
        bail!("job {id} ended as {job}");
    }
    println!(
        "job: {devices} devices answered in {job_secs:.2} s ({:.0} calls/s); {cloud_secs:.2} s from start to end in the cloud",
        devices as f64 / job_secs
    );

    // The floor: the same calls, made by a client through the API.
    let ids: Vec<String> = (1..=devices).map(|i| format!("{PREFIX}-{i:05}")).collect();
    let started = Instant::now();
    let answers: Vec<Value> = futures::stream::iter(ids)
        .map(|device| {
            let api = api.clone();
            async move {
                let result = api
                    .rpc(&device, METHOD, None, None)
                    .await
                    .with_context(|| format!("calling {device}"))?;
                anyhow::Ok(json!({ "device_id": device, "outcome": "ok", "result": result }))
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect()
        .await?;
    let floor_secs = started.elapsed().as_secs_f64();
    check_outcomes(&answers, devices)?;
    println!(
        "job: the same calls through the API, {} in flight: {floor_secs:.2} s ({:.0} calls/s)",
        args.concurrency,
        devices as f64 / floor_secs
    );
    fleet.stop().await;
    Ok([
        ("job_devices", json!(devices)),
        ("job_concurrency", json!(args.concurrency)),
        ("job_secs", json!(round(job_secs, 2))),
        ("job_cloud_secs", json!(round(cloud_secs, 2))),
        (
            "job_calls_per_s",
            json!(round(devices as f64 / job_secs, 0)),
        ),
        ("job_api_fanout_secs", json!(round(floor_secs, 2))),
        (
            "job_api_fanout_calls_per_s",
            json!(round(devices as f64 / floor_secs, 0)),
        ),
        (
            "job_over_api_fanout",
            json!(round(job_secs / floor_secs, 2)),
        ),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect())
}

/// Every device answered once, `ok`, with its own id.
fn check_outcomes(outcomes: &[Value], devices: usize) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    for outcome in outcomes {
        let device = outcome["device_id"].as_str().unwrap_or_default();
        if outcome["outcome"] != "ok" || outcome["result"]["device"] != device {
            bail!("a wrong outcome: {outcome}");
        }
        if !seen.insert(device.to_owned()) {
            bail!("{device} has two outcomes");
        }
    }
    if seen.len() != devices {
        bail!("{} of {devices} devices have an outcome", seen.len());
    }
    Ok(())
}
