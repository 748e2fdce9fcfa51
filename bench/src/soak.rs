//! `soak`: minutes of calls through the HTTP API across many devices
//! (closed loop, through the whole stack: see [`crate::stack`]), counting
//! every call that was not answered with its own answer, while the cloud's
//! resident memory is sampled each second (`target/bench/soak_rss.json`).
//!
//! How a mix-up would show: each call is `bench.echo` with params naming a
//! marker no other call carries (this run's random tag and the call's
//! number) and the device called. The worker answers with those params, the
//! bridge signs them back, and the cloud must hand the answer to the HTTP
//! request that made the call; an answer that differs from the call's own
//! params by a byte (another call's marker, another device's name) is
//! counted mismatched. A call that gets no answer, or an error instead, is
//! counted lost.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::latency::{round, PERCENTILES};
use crate::load::{self, Failure};
use crate::procfs::RssRecorder;
use crate::stack::{in_turn, Stack, ECHO_METHOD};

/// How often the cloud's memory is sampled.
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// When memory should stay flat: once the replay guard forgets as many
/// nonces as it learns (a message's nonce is kept until its timestamp leaves
/// the skew window), and caches, pools and the allocator have grown to what
/// the load needs. A run too short for that takes its middle.
const WARM_UP: Duration = Duration::from_millis(protocol::DEFAULT_SKEW_MS + 10_000);
/// The cloud's gauge of the nonces its replay guard remembers.
const REMEMBERED_NONCES: &str = "devbridge_replay_guard_nonces";

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Devices the calls go to in turn.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Calls in flight at once (closed loop).
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Seconds of calls.
    #[arg(long, default_value_t = 300)]
    pub secs: u64,
    /// 3 devices, 4 calls in flight, 5 s (for CI).
    #[arg(long)]
    pub smoke: bool,
}

impl SoakArgs {
    /// The sizes of this run: the smoke's, or the ones asked for.
    fn sizes(&self) -> SoakArgs {
        match self.smoke {
            true => SoakArgs {
                devices: 3,
                in_flight: 4,
                secs: 5,
                smoke: true,
            },
            false => self.clone(),
        }
    }
}

pub async fn run(args: &SoakArgs) -> anyhow::Result<Map<String, Value>> {
    let args = args.sizes();
    // One cloud instance: the memory sampled is the one cloud's.
    let stack = Stack::start("soak", args.devices, 1).await?;
    println!(
        "soak: {ECHO_METHOD} through the HTTP API, {} in flight over {} devices, for {} s",
        args.in_flight, args.devices, args.secs
    );
    let tag = format!("{:016x}", rand::random::<u64>());
    let call = {
        let (api, devices) = (stack.api.clone(), stack.devices.clone());
        move |n: u64| {
            let (api, devices, tag) = (api.clone(), devices.clone(), tag.clone());
            async move {
                let device = in_turn(&devices, n);
                let params = json!({ "marker": format!("{tag}-{n}"), "device": device });
                let answer = api
                    .rpc(device, ECHO_METHOD, Some(params.clone()), None)
                    .await
                    .map_err(|error| Failure::Lost(format!("call {n} to {device}: {error}")))?;
                match answer == params {
                    true => Ok(()),
                    false => Err(Failure::Mismatched(format!(
                        "call {n} sent {params}, got {answer}"
                    ))),
                }
            }
        }
    };
    // Each accepted answer leaves its nonce in the replay guard until its
    // timestamp leaves the skew window: memory that follows the call rate.
    let cloud = &stack.cloud.instances[0];
    let rss = RssRecorder::start_with_gauge(
        "cloud",
        cloud.pid(),
        SAMPLE_PERIOD,
        Some(cloud.gauge(REMEMBERED_NONCES)),
    );
    let outcome = load::closed_loop(args.in_flight, Duration::from_secs(args.secs), call).await;
    let series = rss.finish().await;
    if series
        .gauge
        .as_ref()
        .is_none_or(|gauge| gauge.points.is_empty())
    {
        anyhow::bail!("the cloud's /metrics never showed {REMEMBERED_NONCES}");
    }
    outcome.print_failures("soak");
    stack.stop().await?;
    let path = series.write("soak")?;
    println!("soak: the cloud's memory over time in {}", path.display());

    let warm_from = WARM_UP.as_secs_f64().min(args.secs as f64 / 2.0);
    let kib_at = |secs: f64| {
        series
            .points
            .iter()
            .find(|&&(at, _)| at >= secs)
            .map(|&(_, kib)| kib)
    };
    let peak = series.points.iter().map(|&(_, kib)| kib).max();
    let mut figures = Map::new();
    figures.insert("soak_devices".into(), json!(args.devices));
    figures.insert("soak_secs".into(), json!(args.secs));
    figures.insert("soak_calls".into(), json!(outcome.calls()));
    figures.insert("soak_lost".into(), json!(outcome.lost));
    figures.insert("soak_mismatched".into(), json!(outcome.mismatched));
    figures.insert(
        "soak_calls_per_s".into(),
        json!(round(outcome.answered_per_sec(), 0)),
    );
    figures.extend(outcome.latencies.figures("soak", &PERCENTILES));
    figures.insert("soak_rss_start_kib".into(), json!(series.first_kib()));
    figures.insert("soak_warm_up_secs".into(), json!(warm_from));
    figures.insert("soak_rss_warm_kib".into(), json!(kib_at(warm_from)));
    figures.insert("soak_rss_end_kib".into(), json!(series.last_kib()));
    figures.insert("soak_rss_peak_kib".into(), json!(peak));
    let nonces = series.gauge.as_ref().and_then(|gauge| gauge.points.last());
    if let (Some(&(_, nonces)), Some(start), Some(end)) =
        (nonces, series.first_kib(), series.last_kib())
    {
        figures.insert("soak_remembered_nonces_end".into(), json!(nonces));
        if nonces > 0 {
            let growth_bytes = end.saturating_sub(start) as f64 * 1024.0;
            figures.insert(
                "soak_rss_growth_bytes_per_nonce".into(),
                json!(round(growth_bytes / nonces as f64, 0)),
            );
        }
    }
    Ok(figures)
}
