//! `idle`: N devices connect at once (a connect storm), are accepted through
//! the API and stay. Measures how long until all are live, the cloud's CPU
//! time over the storm, and its resident memory per live device; and the
//! resident memory of one real `bridge` process, live and idle meanwhile.
//! With several cloud instances the devices connect to them in turn, and
//! the cloud's figures are the instances' sums; PostgreSQL's and the
//! instances' nats-server's are beside them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::bridge_child::BridgeChild;
use crate::cloud_child::{self, Cloud, CloudChild};
use crate::latency::round;
use crate::procfs::{self, RssRecorder, Usage};
use crate::simulator::{Event, Fleet};

/// Devices of a smoke run.
const SMOKE_DEVICES: usize = 20;
/// Files each process keeps beside one socket per device (the registry,
/// the listener, the API's connections, ...).
const SPARE_FILES: u64 = 256;
/// Accept calls in flight at once, as a script accepting a fleet would.
const ACCEPTS_IN_FLIGHT: usize = 16;
/// Time for start-up allocations to settle before and after the storm.
const SETTLE: Duration = Duration::from_secs(2);
/// How often the cloud's memory is sampled, and progress printed.
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
const PROGRESS_PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Devices that connect at once, are accepted and stay (fewer if the
    /// file limit cannot be raised that far: one socket each in the bench
    /// and in the cloud).
    #[arg(long, default_value_t = 50_000)]
    pub devices: usize,
    /// Cloud instances sharing the fleet (one PostgreSQL, one nats-server
    /// between them); the devices connect to them in turn. 1: a cloud of
    /// one, on SQLite.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub instances: u64,
    /// 20 devices, a few seconds (for CI), on as many instances as asked.
    #[arg(long)]
    pub smoke: bool,
    /// Give up if the fleet is not all live after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub give_up_secs: u64,
}

pub async fn run(args: &IdleArgs) -> anyhow::Result<Map<String, Value>> {
    let devices = fleet_size(if args.smoke {
        SMOKE_DEVICES
    } else {
        args.devices
    })?;
    let limits = cloud_child::raised_limits();
    println!(
        "idle: {devices} devices from 127.0.0.1-254 at once; {}",
        Cloud::describe(args.instances as usize, &limits)
    );
    let mut cloud = Cloud::start(args.instances as usize, &limits).await?;
    let first = &cloud.instances[0];
    let api = first.api()?;
    // One real bridge, live and idle through the storm, for a device's side.
    let bridge = BridgeChild::start_live(&first.endpoint(), &api, "idle-bridge").await?;
    tokio::time::sleep(SETTLE).await;
    let cloud_before = cloud.usages()?;
    let bench_before = procfs::usage(std::process::id())?;

    let endpoints: Vec<_> = cloud.instances.iter().map(CloudChild::endpoint).collect();
    let fleet = Fleet::new(&endpoints, "idle", devices)?;

    // The first instance's memory (the cloud's, when it is one).
    let rss = RssRecorder::start(&first.name, first.pid(), SAMPLE_PERIOD);
    let started = Instant::now();
    let (events, mut heard) = mpsc::unbounded_channel();
    let fleet = fleet.storm(events);
    let accepts_in_flight = Arc::new(Semaphore::new(ACCEPTS_IN_FLIGHT));
    let mut accepts = JoinSet::new();
    let mut tally = Tally::default();
    let mut all_connected = None;
    let give_up = started + Duration::from_secs(args.give_up_secs);
    let mut progress = interval(PROGRESS_PERIOD);
    progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while tally.live < devices {
        tokio::select! {
            Some(event) = heard.recv() => {
                if let Some(id) = tally.add(event) {
                    let api = api.clone();
                    let permits = accepts_in_flight.clone();
                    accepts.spawn(async move {
                        let _permit = permits.acquire_owned().await;
                        api.accept(&id).await.with_context(|| format!("accepting {id}"))
                    });
                    if tally.connected.len() == devices {
                        all_connected = Some(started.elapsed());
                    }
                }
            }
            Some(accepted) = accepts.join_next() => {
                accepted??;
            }
            _ = progress.tick() => {
                cloud.check_running()?;
                println!("  {:>5.1} s: {tally}", started.elapsed().as_secs_f64());
            }
            _ = tokio::time::sleep_until(give_up) => {
                bail!("not all live after {} s: {tally}{}", args.give_up_secs, tally.reasons());
            }
        }
    }
    let storm = started.elapsed();
    let cloud_storm = cloud.usages()?;
    let all_connected = all_connected.unwrap_or(storm);

    // Idle for a moment: memory settles, and a device the cloud drops shows.
    tokio::time::sleep(SETTLE).await;
    while let Ok(event) = heard.try_recv() {
        tally.add(event);
    }
    if tally.live < devices {
        bail!("devices dropped while idle: {tally}{}", tally.reasons());
    }
    cloud.check_running()?;
    let cloud_after = cloud.usages()?;
    let bench_after = procfs::usage(std::process::id())?;
    let bridge_after = procfs::usage(bridge.pid())
        .with_context(|| format!("the real bridge {} died", bridge.id))?;
    rss.finish().await.write("idle")?;
    fleet.stop().await;
    while let Some(accepted) = accepts.join_next().await {
        accepted??;
    }
    println!(
        "idle: all {devices} connected after {:.1} s, live after {:.1} s; {tally}{}",
        all_connected.as_secs_f64(),
        storm.as_secs_f64(),
        tally.reasons()
    );

    let per_device = |before: u64, after: u64| after.saturating_sub(before) as f64 / devices as f64;
    let (total_before, total_after) = (cloud_total(&cloud_before), cloud_total(&cloud_after));
    let figures = [
        ("idle_devices", json!(devices)),
        ("idle_instances", json!(args.instances)),
        (
            "storm_connected_secs",
            json!(round(all_connected.as_secs_f64(), 2)),
        ),
        ("storm_secs", json!(round(storm.as_secs_f64(), 2))),
        ("storm_retries", json!(tally.retries)),
        (
            "idle_kib_per_device",
            json!(round(
                per_device(total_before.rss_kib, total_after.rss_kib),
                1
            )),
        ),
        ("bridge_idle_rss_kib", json!(bridge_after.rss_kib)),
        ("bridge_peak_rss_kib", json!(bridge_after.peak_rss_kib)),
        (
            "idle_bench_kib_per_device",
            json!(round(
                per_device(bench_before.rss_kib, bench_after.rss_kib),
                1
            )),
        ),
    ];
    let mut figures: Map<String, Value> = figures
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    // Each process of the cloud: `cloud` (the instances' sum), and with
    // several instances each of them, `postgres` and `cloud_nats`.
    for (((name, before), (_, storm)), (_, after)) in
        cloud_before.iter().zip(&cloud_storm).zip(&cloud_after)
    {
        let cpu_secs = round(storm.cpu_secs - before.cpu_secs, 2);
        figures.insert(format!("storm_{name}_cpu_secs"), json!(cpu_secs));
        figures.insert(format!("idle_{name}_rss_before_kib"), json!(before.rss_kib));
        figures.insert(format!("idle_{name}_rss_after_kib"), json!(after.rss_kib));
    }
    Ok(figures)
}

/// The cloud's total among its processes' usages (see [`Cloud::usages`]).
fn cloud_total(usages: &[(String, Usage)]) -> Usage {
    usages
        .iter()
        .find_map(|(name, usage)| (name == "cloud").then_some(*usage))
        .expect("the cloud's usages include its total")
}

/// Raises this process's file limit as far as it goes (the cloud, started
/// after, inherits it) and fits the fleet within it.
fn fleet_size(wanted: usize) -> anyhow::Result<usize> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the file limit")?;
    let fits = limit.saturating_sub(SPARE_FILES) as usize;
    if wanted > fits {
        if fits == 0 {
            bail!("the file limit ({limit}) leaves no room for devices");
        }
        eprintln!(
            "idle: WARNING the file limit is {limit} (the hard limit; raising it needs \
             CAP_SYS_RESOURCE): {fits} devices, not {wanted}"
        );
        return Ok(fits);
    }
    Ok(wanted)
}

/// What the fleet has reported so far.
#[derive(Default)]
struct Tally {
    /// Devices that have authenticated, and so wait for an operator.
    connected: HashSet<String>,
    live: usize,
    retries: usize,
    /// Why connections failed or ended, with how often.
    reasons: BTreeMap<String, usize>,
}

impl Tally {
    /// Counts `event`; the device's id if it is waiting for an operator for
    /// the first time.
    fn add(&mut self, event: Event) -> Option<String> {
        match event {
            Event::Pending(id) => return self.connected.insert(id.clone()).then_some(id),
            Event::Live => self.live += 1,
            Event::Retrying { was_live, reason } => {
                self.retries += 1;
                self.live -= usize::from(was_live);
                *self.reasons.entry(reason).or_default() += 1;
            }
        }
        None
    }

    /// Each reason a connection failed or ended, on a line of its own.
    fn reasons(&self) -> String {
        self.reasons
            .iter()
            .map(|(reason, count)| format!("\n    {count} × {reason}"))
            .collect()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connected, {} live, {} retries",
            self.connected.len(),
            self.live,
            self.retries
        )
    }
}
