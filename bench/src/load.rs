//! Driving calls for a while: a closed loop (K calls in flight, each caller
//! sending its next call as soon as its last one is answered) or an open loop
//! (calls sent at a fixed rate, whether or not earlier ones were answered).
//! Answered calls have their latency recorded; the others are counted by
//! what went wrong.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::latency::Latencies;

/// Why a call does not count as answered.
#[derive(Debug)]
pub enum Failure {
    /// No answer, or an error instead of one.
    Lost(String),
    /// An answer, but not the one to this call.
    Mismatched(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Lost(why) => write!(f, "lost: {why}"),
            Failure::Mismatched(why) => write!(f, "mismatched: {why}"),
        }
    }
}

/// What a run of calls came to.
#[derive(Default)]
pub struct Outcome {
    /// Of the answered calls.
    pub latencies: Latencies,
    pub lost: u64,
    pub mismatched: u64,
    /// From the first call sent to the last one finished.
    pub elapsed: Duration,
    /// The first failure, to say what went wrong.
    pub first_failure: Option<Failure>,
}

impl Outcome {
    pub fn answered(&self) -> u64 {
        self.latencies.count()
    }

    pub fn calls(&self) -> u64 {
        self.answered() + self.lost + self.mismatched
    }

    /// Answered calls per second.
    pub fn answered_per_sec(&self) -> f64 {
        self.answered() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Prints what went wrong, if anything did.
    pub fn print_failures(&self, bench: &str) {
        if let Some(failure) = &self.first_failure {
            eprintln!(
                "{bench}: {} calls lost, {} mismatched; the first {failure}",
                self.lost, self.mismatched
            );
        }
    }

    fn count(&mut self, latency: Duration, result: Result<(), Failure>) {
        match result {
            Ok(()) => self.latencies.record(latency),
            Err(failure) => {
                match failure {
                    Failure::Lost(_) => self.lost += 1,
                    Failure::Mismatched(_) => self.mismatched += 1,
                }
                self.first_failure.get_or_insert(failure);
            }
        }
    }

    fn add(&mut self, other: Outcome) {
        self.latencies.add(&other.latencies);
        self.lost += other.lost;
        self.mismatched += other.mismatched;
        if let Some(failure) = other.first_failure {
            self.first_failure.get_or_insert(failure);
        }
    }
}

/// Makes call number `n` (0, 1, 2, ... across all callers).
pub trait Call: Fn(u64) -> Self::Answer + Clone + Send + Sync + 'static {
    type Answer: Future<Output = Result<(), Failure>> + Send;
}

impl<F, A> Call for F
where
    F: Fn(u64) -> A + Clone + Send + Sync + 'static,
    A: Future<Output = Result<(), Failure>> + Send,
{
    type Answer = A;
}

/// Keeps `in_flight` calls going for `duration`; each latency is from the
/// call's sending to its answer.
pub async fn closed_loop(in_flight: usize, duration: Duration, call: impl Call) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + duration;
    let mut callers = JoinSet::new();
    for _ in 0..in_flight {
        let (next, call) = (next.clone(), call.clone());
        callers.spawn(async move {
            let mut outcome = Outcome::default();
            while Instant::now() < end {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let result = call(n).await;
                outcome.count(sent.elapsed(), result);
            }
            outcome
        });
    }
    let mut outcome = Outcome::default();
    while let Some(caller) = callers.join_next().await {
        outcome.add(caller.expect("a caller never panics"));
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// Sends `rate` calls a second for `duration`. Each latency is from the
/// moment the call was due, so that a late send counts against the answer
/// instead of hiding it.
pub async fn open_loop(rate: f64, duration: Duration, call: impl Call) -> Outcome {
    let period = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let end = started + duration;
    let mut calls = JoinSet::new();
    let mut outcome = Outcome::default();
    for n in 0.. {
        let due = started + period.mul_f64(n as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let call = call.clone();
        calls.spawn(async move { (call(n).await, due.elapsed()) });
        while let Some(done) = calls.try_join_next() {
            let (result, latency) = done.expect("a call never panics");
            outcome.count(latency, result);
        }
    }
    while let Some(done) = calls.join_next().await {
        let (result, latency) = done.expect("a call never panics");
        outcome.count(latency, result);
    }
    outcome.elapsed = started.elapsed();
    outcome
}
