//! `bench`: the whole stack measured beside the floor of what its parts
//! allow, each run's figures merged into `target/bench/report.json`.

mod bridge_child;
mod cloud_child;
mod floor;
mod gauge;
mod idle;
mod job;
mod latency;
mod load;
mod procfs;
mod report;
mod rpc;
mod simulator;
mod soak;
mod stack;

use anyhow::bail;
use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};

use latency::round;

/// Benchmarks of the device bridge, against the floor of what its parts allow.
///
/// Every run merges its figures into target/bench/report.json and writes
/// the series the plots read (target/bench/*_latency.json, *_rss.json).
/// Build the cloud with the bench: `cargo build --release -p cloud -p bench`
/// (the bench runs the `cloud` binary beside its own). A run fails when a
/// call is lost or answered wrongly, or a process dies; speed is reported,
/// never asserted.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Clone, Subcommand)]
enum Bench {
    /// What the parts of one call allow, in this process: bare WebSocket,
    /// NATS and HTTP round trips, and signing and verifying the call's
    /// messages.
    Floor(floor::FloorArgs),
    /// Calls through the HTTP API to many devices, through the real cloud,
    /// nats-server, bridges and worker: latency one call at a time and
    /// under load, calls a second, CPU and memory of each process (runs
    /// `floor` first, for the ratio).
    Rpc(rpc::RpcArgs),
    /// A connect storm: N devices connect at once, are accepted and stay;
    /// the cloud's memory per device and the time until all are live.
    Idle(idle::IdleArgs),
    /// One job (`POST /jobs`) calling every device of a simulated fleet,
    /// beside the same calls made by a client through the API.
    Job(job::JobArgs),
    /// Minutes of calls across many devices: no call may be lost or
    /// answered with another's answer; the cloud's memory over time.
    Soak(soak::SoakArgs),
    /// The standard set, each with its defaults: floor (5,000 round trips of
    /// each kind), rpc (100 devices; 10 s one call at a time, then 30 s with
    /// 32 in flight), idle (50,000 devices), soak (100 devices, 16 in
    /// flight, 5 minutes), job (10,000 devices, 256 in flight); about 12
    /// minutes in all on 2 cores.
    All {
        /// Each with tiny sizes, a few seconds each (for CI).
        #[arg(long)]
        smoke: bool,
    },
}

/// Figures that must be zero: a run with any of them is a failed run.
const MUST_BE_ZERO: [&str; 4] = ["rpc_lost", "rpc_mismatched", "soak_lost", "soak_mismatched"];

/// The goals the figures are held to, shown beside them.
const GOALS: [(&str, &str); 7] = [
    ("e2e_over_floor_p50", "≤ 1.3"),
    ("e2e_p99_over_p50", "≤ 3"),
    ("loaded_p99_over_p50", "≤ 3"),
    ("calls_per_s", "≥ 6000"),
    ("idle_kib_per_device", "≤ 16"),
    ("storm_secs", "≤ 60"),
    ("bridge_idle_rss_kib", "≤ 10240"),
];

// The allocator the cloud uses, so that the simulated fleet in this process
// leaves the cloud as much of the machine as it can (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The bench's worker serves no device stack: its warning
                // that it protects none says nothing here.
                .unwrap_or_else(|_| "warn,worker::methods=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut sections = Vec::new();
    let mut outcome = Ok(());
    for bench in plan(cli.bench) {
        let name = bench.name();
        println!("\n== {name} ==");
        match run(&bench).await {
            Ok(figures) => {
                report::merge(figures.clone())?;
                sections.push((name, figures));
            }
            Err(error) => {
                outcome = Err(error.context(format!("the {name} bench failed")));
                break;
            }
        }
    }
    let figures: Map<String, Value> = sections
        .iter()
        .flat_map(|(_, figures)| figures.clone())
        .collect();
    let ratios = ratios(&figures);
    if !ratios.is_empty() {
        report::merge(ratios.clone())?;
        sections.push(("goals", ratios));
    }
    print_summary(&sections);
    outcome?;
    let failed: Vec<String> = MUST_BE_ZERO
        .iter()
        .filter_map(|&name| {
            let value = figures.get(name)?;
            (value != &json!(0)).then(|| format!("{name} = {value}"))
        })
        .collect();
    if !failed.is_empty() {
        bail!("calls went wrong: {}", failed.join(", "));
    }
    Ok(())
}

impl Bench {
    fn name(&self) -> &'static str {
        match self {
            Bench::Floor(_) => "floor",
            Bench::Rpc(_) => "rpc",
            Bench::Idle(_) => "idle",
            Bench::Soak(_) => "soak",
            Bench::Job(_) => "job",
            Bench::All { .. } => "all",
        }
    }
}

/// The benches a command runs, in order: `rpc` needs the floor measured in
/// the same run, and `all` is the standard set.
fn plan(bench: Bench) -> Vec<Bench> {
    match bench {
        Bench::Rpc(args) => vec![standard("floor", args.smoke), Bench::Rpc(args)],
        Bench::All { smoke } => ["floor", "rpc", "idle", "soak", "job"]
            .into_iter()
            .map(|name| standard(name, smoke))
            .collect(),
        bench => vec![bench],
    }
}

/// The bench `name` with its default sizes (or the smoke's), as its flags'
/// defaults say.
fn standard(name: &str, smoke: bool) -> Bench {
    let smoke = smoke.then_some("--smoke");
    Cli::parse_from(["bench", name].into_iter().chain(smoke)).bench
}

async fn run(bench: &Bench) -> anyhow::Result<Map<String, Value>> {
    match bench {
        Bench::Floor(args) => floor::run(args).await,
        Bench::Rpc(args) => rpc::run(args).await,
        Bench::Idle(args) => idle::run(args).await,
        Bench::Soak(args) => soak::run(args).await,
        Bench::Job(args) => job::run(args).await,
        Bench::All { .. } => unreachable!("`all` is planned as the benches it runs"),
    }
}

/// The ratios the goals are stated in, from figures of the same run.
fn ratios(figures: &Map<String, Value>) -> Map<String, Value> {
    let figure = |name: &str| figures.get(name).and_then(Value::as_f64);
    [
        ("e2e_over_floor_p50", "e2e_p50_us", "floor_p50_us"),
        ("e2e_p99_over_p50", "e2e_p99_us", "e2e_p50_us"),
        ("loaded_p99_over_p50", "loaded_p99_us", "loaded_p50_us"),
    ]
    .into_iter()
    .filter_map(|(ratio, over, under)| {
        let value = figure(over)? / figure(under)?;
        Some((ratio.to_owned(), json!(round(value, 2))))
    })
    .collect()
}

/// One table of every figure of this run, by bench, each beside its goal.
fn print_summary(sections: &[(&str, Map<String, Value>)]) {
    let Some(width) = sections
        .iter()
        .flat_map(|(_, figures)| figures.keys().map(String::len))
        .max()
    else {
        return;
    };
    // Figures are indented under their bench's name.
    println!(
        "\n{:indented$}  {:>14}  goal",
        "figure",
        "value",
        indented = width + 2
    );
    for (bench, figures) in sections {
        println!("{bench}");
        for (name, value) in figures {
            let goal = match GOALS.iter().find(|(goal_of, _)| goal_of == name) {
                Some((_, goal)) => goal,
                None if MUST_BE_ZERO.contains(&name.as_str()) => "0",
                None => "",
            };
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            println!("  {name:width$}  {value:>14}  {goal}");
        }
    }
    let report = report::dir().join("report.json");
    let report = std::fs::canonicalize(&report).unwrap_or(report);
    println!("\nreport: {}", report.display());
}
