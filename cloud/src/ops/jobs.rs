//! Jobs: one method and params called on every accepted device a filter
//! matches, a bounded number at a time, each with its own timeout. Each
//! device's outcome is kept as it comes (`store::jobs`) and published on the
//! `job.<id>` topic; the job is audited once, with its tally, when it ends.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;
use utoipa::ToSchema;

use crate::store::jobs::{JobOutcome, JobRecord, NewJob};
use crate::store::{Action, DeviceStatus};
use protocol::now_ms;

use super::devices::{DeviceFilter, RpcRequest};
use super::{Caller, ErrorKind, OpError, Operations, Permission};

/// Jobs one instance runs at once.
pub const MAX_RUNNING: usize = 4;
/// Most devices one job calls.
pub const MAX_DEVICES: usize = 10_000;
/// Calls one job has in flight at once, unless it says.
const DEFAULT_CONCURRENCY: usize = 32;
const MAX_CONCURRENCY: usize = 256;
/// Outcomes are stored and published in groups of at most this many, or
/// after this long.
const GROUP: usize = 200;
const GROUP_PERIOD: Duration = Duration::from_millis(250);
/// A device's result is kept whole up to this size; a larger one is kept
/// as a note saying so (the device can be called alone for it).
const MAX_KEPT_RESULT_BYTES: usize = 16 * 1024;
/// What a live event says of each result: its start.
const SUMMARY_CHARS: usize = 160;
/// Jobs kept; older ones are forgotten as new ones start.
const JOBS_KEPT: i64 = 1000;
/// Outcomes one read returns at most.
pub const MAX_OUTCOMES_READ: i64 = 1000;

/// A job to start.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    #[schema(example = "containers.list")]
    pub method: String,
    /// A JSON object or array.
    #[serde(default)]
    pub params: Option<Value>,
    /// Which devices: the device list's filter. Only accepted devices are called.
    #[serde(default)]
    pub filter: DeviceFilter,
    /// Calls in flight at once (1 to 256; default 32).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 256)]
    pub concurrency: Option<usize>,
    /// How long each device has to answer; defaults to the cloud's RPC timeout.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
}

/// A job and how far it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: JobRecord,
    /// Devices that have an outcome so far.
    pub done: i64,
    /// How many devices ended in each outcome (`ok`, `offline`, `timed_out`, ...).
    pub tally: BTreeMap<String, i64>,
}

/// A job with outcomes after a point, for reading it or following it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetails {
    pub job: JobView,
    /// In order of arrival.
    pub outcomes: Vec<JobOutcome>,
    /// Pass as `after` to read the outcomes that come next.
    pub next: i64,
}

impl Operations {
    /// Starts a job; it runs on after this returns.
    pub async fn start_job(
        &self,
        caller: &Caller,
        request: JobRequest,
    ) -> Result<JobView, OpError> {
        let filter = request.filter.to_query();
        let needed = self.config().method_roles.needed_for(&request.method);
        self.auditor()
            .authorize(
                caller,
                Permission::Call(needed),
                "job",
                &filter,
                &request.method,
            )
            .await?;
        Self::check_stored_call(&request.method, request.params.as_ref())?;
        let timeout = self.call_timeout(request.timeout_ms)?;
        let concurrency = request.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            return Err(OpError::bad_request(format!(
                "concurrency is 1 to {MAX_CONCURRENCY}"
            )));
        }
        let devices: Vec<String> = self
            .devices(&request.filter)
            .await?
            .into_iter()
            .filter(|device| device.status == DeviceStatus::Accepted)
            .map(|device| device.id)
            .collect();
        if devices.len() > MAX_DEVICES {
            return Err(OpError::bad_request(format!(
                "the filter matches {} accepted devices; a job calls at most {MAX_DEVICES}",
                devices.len()
            )));
        }
        let permit = self
            .inner
            .running_jobs
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                OpError::new(
                    ErrorKind::Busy,
                    format!("{MAX_RUNNING} jobs run on this instance already; start this one when one has finished"),
                )
            })?;
        let jobs = &self.store().jobs;
        let id = jobs
            .create(
                &NewJob {
                    created_by: &caller.name,
                    instance: &self.config().instance,
                    method: &request.method,
                    params: request.params.as_ref(),
                    filter: &filter,
                    total: devices.len() as i64,
                },
                now_ms() as i64,
            )
            .await?;
        if let Err(e) = jobs.prune(JOBS_KEPT).await {
            tracing::warn!(error = %e, "cannot forget old jobs");
        }
        tracing::info!(job = id, method = %request.method, devices = devices.len(), operator = %caller.name, "job started");
        let run = JobRun {
            id,
            started_by: caller.name.clone(),
            request: RpcRequest {
                method: request.method,
                params: request.params,
                timeout_ms: Some(timeout.as_millis() as u64),
            },
            concurrency,
        };
        let ops = self.clone();
        tokio::spawn(async move { ops.run_job(run, devices, permit).await });
        self.job(id).await.map(|details| details.job)
    }

    /// A job with up to `limit` of its outcomes after `after`.
    pub async fn job(&self, id: i64) -> Result<JobDetails, OpError> {
        self.job_outcomes(id, 0, MAX_OUTCOMES_READ).await
    }

    pub async fn job_outcomes(
        &self,
        id: i64,
        after: i64,
        limit: i64,
    ) -> Result<JobDetails, OpError> {
        let jobs = &self.store().jobs;
        let job = jobs
            .job(id)
            .await?
            .ok_or_else(|| OpError::new(ErrorKind::UnknownJob, format!("there is no job {id}")))?;
        let tally: BTreeMap<String, i64> = jobs.tally(id).await?.into_iter().collect();
        let outcomes = jobs
            .outcomes(id, after.max(0), limit.clamp(1, MAX_OUTCOMES_READ))
            .await?;
        let next = outcomes.last().map_or(after.max(0), |outcome| outcome.seq);
        Ok(JobDetails {
            job: JobView {
                done: tally.values().sum(),
                job,
                tally,
            },
            outcomes,
            next,
        })
    }

    /// The latest jobs, newest first.
    pub async fn latest_jobs(&self, limit: i64) -> Result<Vec<JobRecord>, OpError> {
        Ok(self.store().jobs.latest(limit.clamp(1, 100)).await?)
    }

    async fn run_job(&self, run: JobRun, devices: Vec<String>, _permit: OwnedSemaphorePermit) {
        let started = Instant::now();
        let total = devices.len();
        // Each call a task of its own: signing a request is CPU work, and
        // calls polled within this one task would all sign on one core.
        let mut calls = futures::stream::iter(devices)
            .map(|device_id| {
                let request = RpcRequest {
                    method: run.request.method.clone(),
                    params: run.request.params.clone(),
                    timeout_ms: run.request.timeout_ms,
                };
                let ops = self.clone();
                let id = device_id.clone();
                let call = tokio::spawn(async move {
                    let started = Instant::now();
                    let outcome = ops.call_unaudited(&id, request).await;
                    (outcome, started.elapsed())
                });
                async move {
                    match call.await {
                        Ok((outcome, latency)) => (device_id, outcome, latency),
                        // A bug, which the runtime logged; the device still
                        // gets its outcome.
                        Err(_) => (
                            device_id,
                            Err(OpError::internal("the call's task failed")),
                            Duration::ZERO,
                        ),
                    }
                }
            })
            .buffer_unordered(run.concurrency);
        let mut tally: BTreeMap<String, i64> = BTreeMap::new();
        let mut group = Vec::new();
        let mut seq = 0;
        let mut deadline = tokio::time::Instant::now() + GROUP_PERIOD;
        loop {
            tokio::select! {
                next = calls.next() => {
                    let Some((device_id, outcome, latency)) = next else { break };
                    seq += 1;
                    let outcome = job_outcome(seq, device_id, outcome, latency);
                    *tally.entry(outcome.outcome.clone()).or_default() += 1;
                    group.push(outcome);
                    if group.len() < GROUP {
                        continue;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
            self.keep_outcomes(&run, &mut group, &tally, "running")
                .await;
            deadline = tokio::time::Instant::now() + GROUP_PERIOD;
        }
        self.keep_outcomes(&run, &mut group, &tally, "finished")
            .await;
        if let Err(e) = self
            .store()
            .jobs
            .finish(run.id, "finished", now_ms() as i64)
            .await
        {
            tracing::warn!(job = run.id, error = %e, "cannot record a job's end");
        }
        let ok = tally.get("ok").copied().unwrap_or(0);
        let summary = tally
            .iter()
            .map(|(outcome, count)| format!("{count} {outcome}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.auditor()
            .record(&Action {
                actor: &run.started_by,
                action: "job",
                target: &format!("job {}", run.id),
                outcome: if ok as usize == total {
                    "ok"
                } else {
                    "partial"
                },
                detail: &format!("{} on {total} devices: {summary}", run.request.method),
                latency_ms: Some(started.elapsed().as_millis() as i64),
            })
            .await;
        tracing::info!(job = run.id, devices = total, %summary, elapsed_ms = started.elapsed().as_millis() as u64, "job finished");
    }

    /// Stores a group of outcomes and publishes it (even empty: the tally
    /// and state are news too).
    async fn keep_outcomes(
        &self,
        run: &JobRun,
        group: &mut Vec<JobOutcome>,
        tally: &BTreeMap<String, i64>,
        state: &str,
    ) {
        if group.is_empty() && state == "running" {
            return;
        }
        if let Err(e) = self.store().jobs.record(run.id, group).await {
            tracing::warn!(job = run.id, error = %e, "cannot store a job's outcomes");
        }
        let outcomes: Vec<Value> = group
            .drain(..)
            .map(|outcome| {
                let text = outcome.result.to_string();
                let summary: String = text.chars().take(SUMMARY_CHARS).collect();
                json!({
                    "seq": outcome.seq,
                    "device_id": outcome.device_id,
                    "outcome": outcome.outcome,
                    "latency_ms": outcome.latency_ms,
                    "summary": summary,
                    "truncated": summary.len() < text.len(),
                })
            })
            .collect();
        self.device_layer().events().job(json!({
            "job": run.id,
            "state": state,
            "done": tally.values().sum::<i64>(),
            "tally": tally,
            "outcomes": outcomes,
        }));
    }
}

/// What a running job calls.
struct JobRun {
    id: i64,
    started_by: String,
    request: RpcRequest,
    concurrency: usize,
}

fn job_outcome(
    seq: i64,
    device_id: String,
    outcome: Result<Value, OpError>,
    latency: Duration,
) -> JobOutcome {
    let (kind, result) = match outcome {
        Ok(result) if result.to_string().len() > MAX_KEPT_RESULT_BYTES => (
            "ok".to_owned(),
            json!({ "note": format!("the result was over {MAX_KEPT_RESULT_BYTES} bytes; call the device alone for it") }),
        ),
        Ok(result) => ("ok".to_owned(), result),
        Err(e) => (e.kind.as_str().to_owned(), Value::from(e.message)),
    };
    JobOutcome {
        seq,
        device_id,
        outcome: kind,
        result,
        latency_ms: latency.as_millis() as i64,
        finished_at: now_ms() as i64,
    }
}
