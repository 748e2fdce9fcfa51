//! What the worker tells the cloud without being asked: its health every
//! `health_interval`, and container events from Docker's event stream, both as
//! `cloud.notify.<topic>` notifications the bridge signs and forwards.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::Client;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use jsonrpsee::Methods;
use protocol::nats::CLOUD_NOTIFY_PREFIX;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error::error_chain;

/// Topic of the periodic health report; the payload is `system.health`'s answer.
pub const HEALTH_TOPIC: &str = "device.health";
/// Topic of one Docker container event.
pub const CONTAINER_EVENT_TOPIC: &str = "device.container_event";

/// The container events worth telling the cloud about.
pub const CONTAINER_EVENT_ACTIONS: &[&str] = &[
    "start",
    "stop",
    "die",
    "restart",
    "create",
    "destroy",
    "pause",
    "unpause",
    "health_status",
];

/// Publishes `system.health` on `cloud.notify.device.health` now and then every
/// `interval`, until `shutdown`.
pub(crate) async fn publish_health(
    nats: Client,
    methods: Methods,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let subject = format!("{CLOUD_NOTIFY_PREFIX}{HEALTH_TOPIC}");
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let health = tokio::select! {
            _ = shutdown.cancelled() => return,
            health = methods.call::<_, Value>("system.health", serde_json::Map::new()) => health,
        };
        match health {
            Ok(health) => {
                if let Err(err) = nats
                    .publish(subject.clone(), health.to_string().into())
                    .await
                {
                    warn!(error = %err, "publishing health failed");
                }
            }
            Err(err) => warn!(error = %err, "sampling health failed"),
        }
    }
}

/// Follows Docker's container events and publishes each on
/// `cloud.notify.device.container_event`, until `shutdown`. When the event
/// stream breaks it is opened again, with exponential backoff, forever; it
/// resumes from the last event seen, so events in between are not lost.
pub(crate) async fn forward_container_events(
    nats: Client,
    docker: Docker,
    shutdown: CancellationToken,
) {
    // Events are replayed from here on (re)connecting; Docker keeps recent ones.
    let mut since = EventTime::now();
    let mut backoff = reconnect_backoff();
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = follow_events(&nats, &docker, &mut since, &mut backoff) => outcome,
        };
        let delay = backoff.next().unwrap_or(RECONNECT_MAX_DELAY);
        match outcome {
            Ok(()) => warn!(retry_in = ?delay, "docker event stream ended; reopening"),
            Err(err) => {
                warn!(error = %error_chain(&err), retry_in = ?delay, "docker event stream broke; reopening")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(30);

fn reconnect_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(RECONNECT_MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Reads the event stream until it ends or fails.
async fn follow_events(
    nats: &Client,
    docker: &Docker,
    since: &mut EventTime,
    backoff: &mut ExponentialBackoff,
) -> Result<(), bollard::errors::Error> {
    // Proves the engine answers (and suits the API version to it) before the
    // stream is opened; only then is the backoff reset.
    docker.clone().negotiate_version().await?;
    *backoff = reconnect_backoff();

    let filters = HashMap::from([
        ("type", vec!["container"]),
        ("event", CONTAINER_EVENT_ACTIONS.to_vec()),
    ]);
    let options = EventsOptionsBuilder::new()
        .since(&since.to_docker_since())
        .filters(&filters)
        .build();
    let subject = format!("{CLOUD_NOTIFY_PREFIX}{CONTAINER_EVENT_TOPIC}");
    let mut events = docker.events(Some(options));
    while let Some(event) = events.next().await {
        let event = event?;
        // `since` is inclusive, so a replay may repeat the last event seen.
        let time = EventTime::of(&event);
        if time.is_some_and(|time| time <= *since) {
            continue;
        }
        if let Some(time) = time {
            *since = time;
        }
        let Some(payload) = container_event_payload(&event) else {
            continue;
        };
        debug!(%payload, "container event");
        if let Err(err) = nats
            .publish(subject.clone(), payload.to_string().into())
            .await
        {
            warn!(error = %err, "publishing a container event failed");
        }
    }
    Ok(())
}

/// When a Docker event happened, in nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EventTime(i64);

impl EventTime {
    fn now() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since_epoch| since_epoch.as_nanos())
            .unwrap_or_default();
        EventTime(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    fn of(event: &EventMessage) -> Option<Self> {
        event.time_nano.map(EventTime)
    }

    /// Docker's `since` format: seconds and nanoseconds.
    fn to_docker_since(self) -> String {
        format!(
            "{}.{:09}",
            self.0.div_euclid(1_000_000_000),
            self.0.rem_euclid(1_000_000_000)
        )
    }
}

/// The notification payload for a container event:
/// `{"action", "container_id", "name", "image", "time"}` (time in seconds since
/// the Unix epoch). A `health_status: healthy` action becomes action
/// `health_status` with `"health": "healthy"`. None for anything that is not
/// about a container.
pub fn container_event_payload(event: &EventMessage) -> Option<Value> {
    let action = event.action.as_deref()?;
    let actor = event.actor.as_ref()?;
    let container_id = actor.id.as_deref()?;
    let attribute = |key: &str| {
        actor
            .attributes
            .as_ref()
            .and_then(|attributes| attributes.get(key))
            .cloned()
    };
    let mut payload = json!({
        "container_id": container_id,
        "name": attribute("name"),
        "image": attribute("image"),
        "time": event.time,
    });
    match action.split_once(':') {
        Some((action, detail)) => {
            payload["action"] = json!(action.trim());
            if action.trim() == "health_status" {
                payload["health"] = json!(detail.trim());
            }
        }
        None => payload["action"] = json!(action),
    }
    Some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{EventActor, EventMessageTypeEnum};

    fn event(action: &str) -> EventMessage {
        EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("abc123".into()),
                attributes: Some(HashMap::from([
                    ("name".to_string(), "web".to_string()),
                    ("image".to_string(), "nginx:1".to_string()),
                ])),
            }),
            time: Some(1_700_000_000),
            time_nano: Some(1_700_000_000_123_456_789),
            ..Default::default()
        }
    }

    #[test]
    fn a_container_event_becomes_the_notification_payload() {
        assert_eq!(
            container_event_payload(&event("start")),
            Some(json!({
                "action": "start",
                "container_id": "abc123",
                "name": "web",
                "image": "nginx:1",
                "time": 1_700_000_000,
            }))
        );
    }

    #[test]
    fn health_status_is_split_into_action_and_health() {
        let payload = container_event_payload(&event("health_status: unhealthy")).unwrap();
        assert_eq!(payload["action"], "health_status");
        assert_eq!(payload["health"], "unhealthy");
    }

    #[test]
    fn an_event_without_actor_is_skipped() {
        let mut event = event("start");
        event.actor = None;
        assert_eq!(container_event_payload(&event), None);
    }

    #[test]
    fn since_is_written_as_seconds_dot_nanoseconds() {
        assert_eq!(
            EventTime(1_700_000_000_000_000_042).to_docker_since(),
            "1700000000.000000042"
        );
    }

    #[test]
    fn the_subjects_follow_the_notify_prefix() {
        assert_eq!(
            format!("{CLOUD_NOTIFY_PREFIX}{HEALTH_TOPIC}"),
            "cloud.notify.device.health"
        );
        assert_eq!(
            format!("{CLOUD_NOTIFY_PREFIX}{CONTAINER_EVENT_TOPIC}"),
            "cloud.notify.device.container_event"
        );
    }
}
