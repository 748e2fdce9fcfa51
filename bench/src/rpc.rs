//! `rpc`: calls through the HTTP API as an operator's scripts make them, to
//! many devices, through the whole stack (see [`crate::stack`]): the real
//! cloud, a real nats-server, real bridges and a real worker. The calls go
//! to the devices in turn, as a fleet's operators spread theirs, so that no
//! one device's allowance is what is measured. With several cloud
//! instances, the calls go to the instances in turn too, as a load balancer
//! in front of the API clients spreads them: most cross from the instance
//! called to the one holding the device.
//!
//! Two phases: calls one at a time, whose latency is what the floor is
//! compared to (`e2e_*`); then the load, K calls in flight (closed loop) or
//! a fixed rate (open loop), for calls a second, the latency under load
//! (`loaded_*`) and what each process spends. The latency distributions go
//! to `target/bench/rpc_latency.json` and `rpc_loaded_latency.json` (see
//! [`crate::latency::Latencies::write_distribution`]).

use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Map, Value};

use crate::latency::{round, PERCENTILES};
use crate::load::{self, Failure, Outcome};
use crate::stack::{in_turn, Stack};

/// Calls made, and thrown away, before measuring: connections, caches and
/// allocators warm up.
const WARM_UP: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, clap::Args)]
pub struct RpcArgs {
    /// Devices: real bridges in this process, each with its own key; the
    /// calls go to them in turn.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Cloud instances sharing the fleet (one PostgreSQL, one nats-server
    /// between them); the devices connect to them in turn, and the calls go
    /// to them in turn. 1: a cloud of one, on SQLite.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub instances: u64,
    /// Seconds of calls one at a time, for the latency the floor is
    /// compared to.
    #[arg(long, default_value_t = 10)]
    pub latency_secs: u64,
    /// Calls in flight at once under load (closed loop: each caller sends
    /// its next call as soon as its last one is answered).
    #[arg(long, default_value_t = 32)]
    pub in_flight: usize,
    /// Send this many calls a second under load instead, answered or not
    /// (open loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of calls under load.
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Call `containers.list {"all": true}`, through the Docker engine,
    /// instead of `rpc.discover` (the floor stays `rpc.discover`'s).
    #[arg(long)]
    pub containers: bool,
    /// 3 devices, 2 s one at a time, 3 s with 4 in flight (for CI), on as
    /// many instances as asked.
    #[arg(long)]
    pub smoke: bool,
}

impl RpcArgs {
    /// The sizes of this run: the smoke's, or the ones asked for.
    fn sizes(&self) -> RpcArgs {
        match self.smoke {
            true => RpcArgs {
                devices: 3,
                latency_secs: 2,
                in_flight: 4,
                secs: 3,
                ..self.clone()
            },
            false => self.clone(),
        }
    }
}

pub async fn run(args: &RpcArgs) -> anyhow::Result<Map<String, Value>> {
    let args = args.sizes();
    let (method, params) = match args.containers {
        true => ("containers.list", Some(json!({"all": true}))),
        false => ("rpc.discover", None),
    };
    let load = match args.rate {
        Some(rate) => format!("{rate} calls/s (open loop)"),
        None => format!("{} in flight (closed loop)", args.in_flight),
    };
    // Said beside the devices wherever they are, with several instances.
    let on_instances = match args.instances {
        1 => String::new(),
        n => format!(" on {n} cloud instances"),
    };
    let mut stack = Stack::start("rpc", args.devices, args.instances as usize).await?;
    let call = {
        let (apis, devices) = (stack.apis.clone(), stack.devices.clone());
        move |n: u64| {
            let (apis, devices, params) = (apis.clone(), devices.clone(), params.clone());
            async move {
                // Call n goes through instance n % N, to each device N times
                // in a row: once through every instance, so (N - 1) / N of
                // the calls cross to the instance holding the device (device
                // k connects to instance k % N). Calling device n % devices
                // instead would keep every call on the device's own instance
                // whenever N divides the devices.
                let api = in_turn(&apis, n);
                let device = in_turn(&devices, n / apis.len() as u64);
                let result = api
                    .rpc(device, method, params, None)
                    .await
                    .map_err(|error| Failure::Lost(format!("{method} on {device}: {error}")))?;
                check_answer(method, &result)
                    .map_err(|why| Failure::Mismatched(format!("{method} on {device}: {why}")))
            }
        }
    };

    let warm_up = load::closed_loop(args.in_flight, WARM_UP, call.clone()).await;
    if warm_up.first_failure.is_some() {
        warm_up.print_failures("rpc warm-up");
        bail!("calls failed while warming up");
    }
    println!(
        "rpc: {method} through the HTTP API over {} devices{on_instances}, one at a time for {} s",
        args.devices, args.latency_secs
    );
    let one_at_a_time =
        load::closed_loop(1, Duration::from_secs(args.latency_secs), call.clone()).await;
    println!("rpc: then {load} for {} s", args.secs);
    let before = stack.usages()?;
    let duration = Duration::from_secs(args.secs);
    let loaded = match args.rate {
        Some(rate) => load::open_loop(rate, duration, call).await,
        None => load::closed_loop(args.in_flight, duration, call).await,
    };
    let after = stack.usages()?;
    one_at_a_time.print_failures("rpc, one at a time");
    loaded.print_failures("rpc, under load");
    stack.stop().await?;

    for (file, outcome, how) in [
        ("rpc_latency", &one_at_a_time, "one at a time".to_owned()),
        ("rpc_loaded_latency", &loaded, load),
    ] {
        let what = format!(
            "{method} through the HTTP API, {how}, {} devices{on_instances}",
            args.devices
        );
        let path = outcome.latencies.write_distribution(file, &what)?;
        println!("rpc: latency distribution {how} in {}", path.display());
    }

    let mut figures = Map::new();
    figures.insert("rpc_method".into(), json!(method));
    figures.insert("rpc_devices".into(), json!(args.devices));
    figures.insert("rpc_instances".into(), json!(args.instances));
    match args.rate {
        Some(rate) => figures.insert("rpc_rate".into(), json!(rate)),
        None => figures.insert("rpc_in_flight".into(), json!(args.in_flight)),
    };
    let calls = one_at_a_time.calls() + loaded.calls();
    figures.insert("rpc_calls".into(), json!(calls));
    let failed = |count: fn(&Outcome) -> u64| count(&one_at_a_time) + count(&loaded);
    figures.insert("rpc_lost".into(), json!(failed(|outcome| outcome.lost)));
    figures.insert(
        "rpc_mismatched".into(),
        json!(failed(|outcome| outcome.mismatched)),
    );
    figures.extend(one_at_a_time.latencies.figures("e2e", &PERCENTILES));
    figures.insert(
        "calls_per_s".into(),
        json!(round(loaded.answered_per_sec(), 0)),
    );
    figures.extend(loaded.latencies.figures("loaded", &PERCENTILES));
    for ((name, before), (_, after)) in before.iter().zip(&after) {
        let cpu_secs = after.cpu_secs - before.cpu_secs;
        let per_call_us = cpu_secs * 1e6 / loaded.calls().max(1) as f64;
        figures.insert(format!("rpc_{name}_cpu_secs"), json!(round(cpu_secs, 2)));
        figures.insert(
            format!("rpc_{name}_cpu_us_per_call"),
            json!(round(per_call_us, 1)),
        );
        figures.insert(
            format!("rpc_{name}_peak_rss_kib"),
            json!(after.peak_rss_kib),
        );
    }
    Ok(figures)
}

/// Whether `result` is an answer to `method`: `rpc.discover` lists itself,
/// `containers.list` lists containers.
fn check_answer(method: &str, result: &Value) -> Result<(), String> {
    let fits = match method {
        "rpc.discover" => result["methods"]
            .as_array()
            .is_some_and(|methods| methods.contains(&json!("rpc.discover"))),
        _ => result["containers"].is_array(),
    };
    match fits {
        true => Ok(()),
        false => Err(format!("not an answer to {method}: {result}")),
    }
}
