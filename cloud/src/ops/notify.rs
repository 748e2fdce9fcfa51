//! Events to devices: the cloud sends a device a signed JSON-RPC
//! notification that needs no answer, which the bridge publishes on the
//! device's NATS as `rpc.<event>` for the workers that subscribe to it
//! (`PROTOCOL.md`, "Events to devices"). An event is checked like a call:
//! its name against `METHOD_ROLES` as a method's would be, its params for
//! shape and size; and it is audited (`device.notify`) like a call.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::Action;

use super::{Caller, ErrorKind, OpError, Operations, Permission};

/// The audit log's name for an event sent to a device.
pub const NOTIFY_ACTION: &str = "device.notify";
/// Largest params of one event, in bytes of JSON: well under what the
/// device's NATS carries in one message (1 MB by default), so that an event
/// the cloud accepts is one the bridge can publish.
pub const MAX_EVENT_PARAMS_BYTES: usize = 64 * 1024;
/// Events one device may be sent per second, on each cloud instance…
const EVENTS_PER_DEVICE_PER_SECOND: u32 = 10;
/// …and at once after a quiet spell.
const EVENT_BURST_PER_DEVICE: u32 = 20;
/// Above this many devices remembered, the limiter forgets the quiet ones.
const LIMITER_KEYS_KEPT: usize = 10_000;
/// Names an event may not take: the bridge reads `auth.*` notifications as
/// the protocol's own (`auth.status` would tell it it was rejected).
const RESERVED_EVENT_PREFIXES: [&str; 1] = ["auth."];

/// `POST /devices/{id}/events`: an event for one device.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// Dotted name, as a method's: workers subscribe to `rpc.<event>`.
    #[schema(example = "example.notice")]
    pub event: String,
    /// A JSON object or array, at most 64 KiB.
    #[serde(default)]
    pub params: Option<Value>,
}

/// The answer to an event the device's connection took.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventSent {
    /// Always `sent`: handed to the device's connection. Workers do not
    /// acknowledge events; one with no subscriber on the device is dropped.
    #[schema(example = "sent")]
    pub status: &'static str,
}

/// How often each device may be sent an event.
pub(super) struct EventLimiter {
    per_device: DefaultKeyedRateLimiter<String>,
}

impl Default for EventLimiter {
    fn default() -> Self {
        let rate = NonZeroU32::new(EVENTS_PER_DEVICE_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(EVENT_BURST_PER_DEVICE).unwrap_or(NonZeroU32::MIN);
        EventLimiter {
            per_device: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        }
    }
}

impl EventLimiter {
    /// Takes one event of `device_id`'s allowance; `Err(wait)` when none is left.
    fn take(&self, device_id: &str) -> Result<(), Duration> {
        if self.per_device.len() > LIMITER_KEYS_KEPT {
            self.per_device.retain_recent();
        }
        self.per_device
            .check_key(&device_id.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

impl Operations {
    /// Sends the event `event` with `params` to device `device_id` for
    /// `caller`: `Ok` once the device's connection (here or on another
    /// instance) has taken it. Refused `offline` when no instance holds the
    /// device; audited as [`NOTIFY_ACTION`] with the event's name.
    pub async fn notify_device(
        &self,
        caller: &Caller,
        device_id: &str,
        event: &str,
        params: Option<Value>,
    ) -> Result<EventSent, OpError> {
        let named = protocol::check_method_name(event).is_ok();
        // A bad name is not written into the audit log as it came.
        let detail = if named { event } else { "(bad event name)" };
        let needed = self.config().method_roles.needed_for(event);
        self.auditor()
            .authorize(
                caller,
                Permission::Call(needed),
                NOTIFY_ACTION,
                device_id,
                detail,
            )
            .await?;
        let started = Instant::now();
        let outcome = self.notify_unaudited(device_id, event, params).await;
        self.auditor()
            .record(&Action {
                actor: &caller.name,
                action: NOTIFY_ACTION,
                target: device_id,
                outcome: outcome.as_ref().map_or_else(|e| e.kind.as_str(), |_| "ok"),
                detail,
                latency_ms: Some(started.elapsed().as_millis() as i64),
            })
            .await;
        if outcome.is_ok() {
            tracing::info!(%device_id, %event, operator = %caller.name, "event sent to device");
        }
        outcome.map(|()| EventSent { status: "sent" })
    }

    async fn notify_unaudited(
        &self,
        device_id: &str,
        event: &str,
        params: Option<Value>,
    ) -> Result<(), OpError> {
        check_event(event, params.as_ref())?;
        if !protocol::is_valid_device_id(device_id) {
            return Err(OpError::unknown_device(device_id));
        }
        if let Err(wait) = self.event_limiter().take(device_id) {
            let mut error = OpError::new(
                ErrorKind::RateLimited,
                format!(
                    "at most {EVENTS_PER_DEVICE_PER_SECOND} events a second to one device; \
                     try again in {} ms",
                    wait.as_millis()
                ),
            );
            error.retry_after = Some(wait);
            return Err(error);
        }
        Ok(self
            .device_layer()
            .fleet()
            .notify(device_id, event, params)
            .await?)
    }
}

/// An event's name and params, checked before anything is sent.
fn check_event(event: &str, params: Option<&Value>) -> Result<(), OpError> {
    protocol::check_method_name(event)
        .map_err(|refusal| OpError::bad_request(format!("bad event name: {refusal}")))?;
    if let Some(prefix) = RESERVED_EVENT_PREFIXES
        .iter()
        .find(|prefix| event.starts_with(*prefix))
    {
        return Err(OpError::bad_request(format!(
            "bad event name: {prefix}* names are the protocol's own notifications"
        )));
    }
    if let Some(params) = params {
        // Serializing a `Value` into memory cannot fail.
        let size = serde_json::to_vec(params).map_or(usize::MAX, |json| json.len());
        if size > MAX_EVENT_PARAMS_BYTES {
            return Err(OpError::bad_request(format!(
                "event params are {size} bytes of JSON; at most {MAX_EVENT_PARAMS_BYTES}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bad_or_reserved_name_and_oversize_params_are_refused_saying_why() {
        assert!(check_event("example.notice", Some(&json!({"a": 1}))).is_ok());
        assert!(check_event("example.notice", None).is_ok());
        for (event, says) in [
            ("rpc.>", "bad event name"),
            ("", "bad event name"),
            ("a..b", "bad event name"),
            ("auth.status", "protocol's own"),
        ] {
            let error = check_event(event, None).unwrap_err();
            assert_eq!(error.kind, ErrorKind::BadRequest, "{event:?}");
            assert!(error.message.contains(says), "{event:?}: {}", error.message);
        }
        let big = json!({ "blob": "x".repeat(MAX_EVENT_PARAMS_BYTES) });
        let error = check_event("example.notice", Some(&big)).unwrap_err();
        assert!(error.message.contains("at most 65536"), "{}", error.message);
    }

    #[test]
    fn a_device_gets_its_burst_then_waits_and_others_are_not_held_up() {
        let limiter = EventLimiter::default();
        for _ in 0..EVENT_BURST_PER_DEVICE {
            limiter.take("busy").unwrap();
        }
        let wait = limiter.take("busy").unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        limiter.take("quiet").unwrap();
    }
}
