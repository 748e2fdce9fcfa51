//! Prometheus metrics, served at `/metrics` (see `http::metrics`) in the
//! OpenMetrics text format.
//!
//! Counters and the latency histogram live in a [`Metrics`] held by the app
//! state, never in a global recorder, so that several clouds in one process
//! (as in tests) keep their own. What can be read when scraped is read then
//! (devices by status, live connections, refused frames), so it cannot drift.
//!
//! Every label takes values from a fixed set: no device ids, no method names
//! (those come from API callers and would grow without bound; the audit log
//! has them).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::call_error::CallErrorKind;
use crate::store::registry::DeviceStatus;

/// The media type of the OpenMetrics text format, which Prometheus scrapes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Every metric's name starts with this and `_`.
const PREFIX: &str = "devbridge";
/// RPC latency buckets in seconds: a local round trip takes milliseconds, a
/// slow worker seconds, and the longest allowed timeout is 300 s.
const RPC_SECONDS_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Failures shown at 0 before the first one happens (a kind left out here
/// still appears with its first call).
const RPC_FAILURES: [CallErrorKind; 8] = [
    CallErrorKind::UnknownDevice,
    CallErrorKind::NotAccepted,
    CallErrorKind::Offline,
    CallErrorKind::TimedOut,
    CallErrorKind::Disconnected,
    CallErrorKind::DeviceError,
    CallErrorKind::BadRequest,
    CallErrorKind::Internal,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// The cloud's long-lived metrics (see the module docs).
pub struct Metrics {
    registry: Registry,
    rpc: RpcMetrics,
    handshakes_refused: Family<ReasonLabel, Counter>,
}

/// The RPC metrics, a cheap clone for the fleet that makes the calls.
#[derive(Clone)]
pub(crate) struct RpcMetrics {
    calls: Family<OutcomeLabel, Counter>,
    seconds: Family<OutcomeLabel, Histogram>,
}

impl RpcMetrics {
    /// Counts one finished call: `None` if it succeeded, else why it failed.
    pub(crate) fn observe(&self, failure: Option<CallErrorKind>, elapsed: Duration) {
        let label = OutcomeLabel {
            outcome: failure.map_or("ok", CallErrorKind::as_str),
        };
        self.calls.get_or_create(&label).inc();
        self.seconds
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let calls = Family::<OutcomeLabel, Counter>::default();
        let outcomes = std::iter::once("ok").chain(RPC_FAILURES.map(CallErrorKind::as_str));
        for outcome in outcomes {
            let _ = calls.get_or_create(&OutcomeLabel { outcome });
        }
        registry.register(
            "rpc_calls",
            "Calls from the cloud to devices, by outcome (ok, or the API's error kind)",
            calls.clone(),
        );
        let seconds = Family::<OutcomeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(RPC_SECONDS_BUCKETS)
        });
        registry.register_with_unit(
            "rpc_duration",
            "Time from the call to its outcome, by outcome",
            Unit::Seconds,
            seconds.clone(),
        );
        let handshakes_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "handshakes_refused",
            "Device connections that ended in the handshake, by reason",
            handshakes_refused.clone(),
        );
        Metrics {
            registry,
            rpc: RpcMetrics { calls, seconds },
            handshakes_refused,
        }
    }
}

/// What a scrape reads from the rest of the cloud.
pub struct Snapshot {
    /// Devices by status, or `None` if the registry did not answer.
    pub devices: Option<Vec<(DeviceStatus, i64)>>,
    /// Live connections of pending and of accepted devices.
    pub connections: [(DeviceStatus, usize); 2],
    pub refusals: HashMap<&'static str, u64>,
    /// Device connections that have not authenticated yet.
    pub unauthenticated: usize,
    /// Nonces the cloud-wide replay guard holds.
    pub remembered_nonces: usize,
}

impl Metrics {
    pub(crate) fn rpc(&self) -> RpcMetrics {
        self.rpc.clone()
    }

    /// Counts a connection that ended before a session started. `reason` is
    /// one of a fixed set (`auth_timeout`, `rejected`, `key_mismatch`, a
    /// refusal reason of the authentication request, ...).
    pub(crate) fn handshake_refused(&self, reason: &'static str) {
        self.handshakes_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The whole exposition: the long-lived metrics, then those read now.
    pub fn encode(&self, snapshot: Snapshot) -> Result<String, fmt::Error> {
        let mut scraped = Registry::with_prefix(PREFIX);
        if let Some(counts) = snapshot.devices {
            let devices = Family::<StatusLabel, Gauge>::default();
            for status in [
                DeviceStatus::Pending,
                DeviceStatus::Accepted,
                DeviceStatus::Rejected,
            ] {
                let count = counts
                    .iter()
                    .find(|(s, _)| *s == status)
                    .map_or(0, |(_, n)| *n);
                devices
                    .get_or_create(&StatusLabel {
                        status: status.as_str(),
                    })
                    .set(count);
            }
            // Left out when the registry does not answer: no value beats a stale one.
            scraped.register("devices", "Registered devices, by status", devices);
        }
        let connections = Family::<StatusLabel, Gauge>::default();
        for (status, count) in snapshot.connections {
            connections
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        scraped.register(
            "device_connections",
            "Authenticated device connections, by the device's status",
            connections,
        );
        for (name, help, value) in [
            (
                "unauthenticated_device_connections",
                "Device connections that have not authenticated yet (MAX_UNAUTHENTICATED bounds them)",
                snapshot.unauthenticated,
            ),
            (
                "replay_guard_nonces",
                "Nonces of accepted devices the replay guard remembers",
                snapshot.remembered_nonces,
            ),
        ] {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            scraped.register(name, help, gauge);
        }
        let refused = Family::<ReasonLabel, Counter>::default();
        for (reason, count) in snapshot.refusals {
            refused.get_or_create(&ReasonLabel { reason }).inc_by(count);
        }
        scraped.register(
            "frames_refused",
            "Frames from devices refused, by reason: failed wire or signature checks, \
             and refused authentication requests",
            refused,
        );

        let mut text = String::new();
        encode_registry(&mut text, &self.registry)?;
        encode_registry(&mut text, &scraped)?;
        encode_eof(&mut text)?;
        Ok(text)
    }
}
