//! CPU time and memory of a process, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/status` (Linux), and its resident memory over time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::gauge::Gauge;

/// Clock ticks per second of `utime` and `stime`: `USER_HZ`, which Linux
/// fixes at 100 for user space on every architecture it runs this on.
const TICKS_PER_SEC: f64 = 100.0;

/// What a process has used so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User and system CPU time of all its threads since it started.
    pub cpu_secs: f64,
    /// Resident memory now.
    pub rss_kib: u64,
    /// The most resident memory it has had.
    pub peak_rss_kib: u64,
}

/// What process `pid` has used so far.
pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    // Fields 14 and 15 of stat(5): its own user and system time.
    read_usage(pid, &[14, 15])
}

/// What process `pid` and every process under it have used so far, summed:
/// PostgreSQL serves each connection from a process of its own. The CPU
/// time counts the processes that have exited too (fields 16 and 17 of
/// stat(5): the time of the children a process has waited for). Memory is
/// their proportional set sizes (`Pss`), each page they share (PostgreSQL's
/// shared buffers, its code) divided among them, so that the sum counts it
/// once; its peak is not known, so `peak_rss_kib` is that sum too.
pub fn tree_usage(pid: u32) -> anyhow::Result<Usage> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")?
        .filter_map(|entry| {
            let process: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let parent = stat_fields(process).ok()?.get(1)?.parse().ok()?;
            Some((process, parent))
        })
        .collect();
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        tree.extend(
            parents
                .iter()
                .filter(|&&(_, of)| of == parent)
                .map(|&(child, _)| child),
        );
        next += 1;
    }
    let mut total = Usage::default();
    for (n, &process) in tree.iter().enumerate() {
        let usage = read_usage(process, &[14, 15, 16, 17]).and_then(|usage| {
            let pss = proportional_kib(process)?;
            Ok(Usage {
                rss_kib: pss,
                peak_rss_kib: pss,
                ..usage
            })
        });
        total = total
            + match usage {
                Ok(usage) => usage,
                // A child that exits meanwhile is counted in its parent's time.
                Err(_) if n > 0 => Usage::default(),
                Err(error) => return Err(error),
            };
    }
    Ok(total)
}

/// The proportional set size of process `pid`, in KiB.
fn proportional_kib(pid: u32) -> anyhow::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("process {pid} is gone"))?;
    let line = rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .with_context(|| format!("no Pss in /proc/{pid}/smaps_rollup"))?;
    Ok(line.split_whitespace().next().unwrap_or_default().parse()?)
}

/// What process `pid` has used: the CPU time of the stat(5) fields
/// `ticks`, and its memory.
fn read_usage(pid: u32, ticks: &[usize]) -> anyhow::Result<Usage> {
    let stat = stat_fields(pid)?;
    let mut cpu_ticks = 0;
    for &field in ticks {
        // Counted from the state (field 3).
        let text = stat.get(field - 3).context("short /proc stat")?;
        cpu_ticks += text.parse::<u64>()?;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
        let value = line.split_whitespace().next().unwrap_or_default();
        Ok(value.parse()?)
    };
    Ok(Usage {
        cpu_secs: cpu_ticks as f64 / TICKS_PER_SEC,
        rss_kib: kib("VmRSS:")?,
        peak_rss_kib: kib("VmHWM:")?,
    })
}

/// Processes' usage together: their CPU time, their memory now, and the
/// sum of their peaks (an upper bound: they need not peak at once).
impl std::ops::Add for Usage {
    type Output = Usage;

    fn add(self, other: Usage) -> Usage {
        Usage {
            cpu_secs: self.cpu_secs + other.cpu_secs,
            rss_kib: self.rss_kib + other.rss_kib,
            peak_rss_kib: self.peak_rss_kib + other.peak_rss_kib,
        }
    }
}

impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(usages: I) -> Usage {
        usages.fold(Usage::default(), std::ops::Add::add)
    }
}

/// Whether process `pid` exists and has not exited (a zombie has).
pub fn is_running(pid: u32) -> bool {
    stat_fields(pid).is_ok_and(|fields| {
        fields
            .first()
            .is_some_and(|state| !matches!(state.as_str(), "Z" | "X"))
    })
}

/// The child of this process running the executable `name` with the
/// argument `argument`, for a child started by code that does not say its
/// pid.
pub fn child(name: &str, argument: &str) -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let parent = stat_fields(pid).ok()?.get(1)?.clone();
        let found = comm.trim_end() == name
            && parent == me
            && command_line
                .split(|&byte| byte == 0)
                .any(|arg| arg == argument.as_bytes());
        found.then_some(pid)
    })
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces and parentheses), from the state on.
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    let (_, after_name) = stat.rsplit_once(')').context("unreadable /proc stat")?;
    Ok(after_name.split_whitespace().map(str::to_owned).collect())
}

/// The resident memory of one process over time, as the plots read it from
/// `target/bench/<bench>_rss.json`: `{"process", "points": [[seconds, KiB],
/// ...]}`, and a gauge of the process's own sampled beside it, if one was
/// asked for: `"gauge": {"name", "points": [[seconds, value], ...]}`.
#[derive(Debug, Serialize)]
pub struct RssSeries {
    pub process: String,
    pub points: Vec<(f64, u64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gauge: Option<GaugeSeries>,
}

/// A gauge's values over time.
#[derive(Debug, Serialize)]
pub struct GaugeSeries {
    pub name: String,
    pub points: Vec<(f64, u64)>,
}

impl RssSeries {
    pub fn first_kib(&self) -> Option<u64> {
        self.points.first().map(|&(_, kib)| kib)
    }

    pub fn last_kib(&self) -> Option<u64> {
        self.points.last().map(|&(_, kib)| kib)
    }

    /// Writes `target/bench/<bench>_rss.json`.
    pub fn write(&self, bench: &str) -> anyhow::Result<PathBuf> {
        let dir = crate::report::dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{bench}_rss.json"));
        std::fs::write(&path, serde_json::to_string(self)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

/// Samples a process's resident memory at a fixed period, from when it is
/// started until [`RssRecorder::finish`].
pub struct RssRecorder {
    stop: CancellationToken,
    task: JoinHandle<RssSeries>,
}

impl RssRecorder {
    /// Starts sampling `pid` (called `process` in the series) every `period`.
    pub fn start(process: &str, pid: u32, period: Duration) -> RssRecorder {
        Self::start_with_gauge(process, pid, period, None)
    }

    /// The same, reading `gauge` at each sample too: what the memory may be
    /// following.
    pub fn start_with_gauge(
        process: &str,
        pid: u32,
        period: Duration,
        gauge: Option<Gauge>,
    ) -> RssRecorder {
        let stop = CancellationToken::new();
        let mut series = RssSeries {
            process: process.to_owned(),
            points: Vec::new(),
            gauge: gauge.as_ref().map(|gauge| GaugeSeries {
                name: gauge.name().to_owned(),
                points: Vec::new(),
            }),
        };
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let started = Instant::now();
                let mut ticks = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = ticks.tick() => {}
                    }
                    let Ok(now) = usage(pid) else { break };
                    let at = started.elapsed().as_secs_f64();
                    series.points.push((at, now.rss_kib));
                    if let (Some(gauge), Some(values)) = (&gauge, &mut series.gauge) {
                        if let Some(value) = gauge.read().await {
                            values.points.push((at, value));
                        }
                    }
                }
                series
            }
        });
        RssRecorder { stop, task }
    }

    /// Stops sampling and hands back what was sampled.
    pub async fn finish(self) -> RssSeries {
        self.stop.cancel();
        self.task.await.expect("the sampling task never panics")
    }
}
