//! Live events for browsers and scripts (served on `/ws/events` by
//! `http::live_events`).
//!
//! One broadcast ring feeds every subscriber. Each subscriber reads at its own
//! pace, and at most [`QUEUE_PER_CLIENT`] events wait for it; a subscriber that
//! falls further behind skips ahead and is told how many it missed
//! (`{"type":"lagged","missed":n}`), so a slow browser never slows the
//! publisher or the other subscribers.
//!
//! When instances share the fleet, each event is also handed to the relay
//! (`device::cluster`), which publishes it to the other instances; what they
//! relay back is delivered here as if published here.

use std::sync::Arc;

// The text every subscriber sends, serialized once: the WebSocket's own
// cheaply cloned string type.
use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use protocol::now_ms;

/// Events that may wait for one subscriber before it is told it lagged.
pub const QUEUE_PER_CLIENT: usize = 256;

/// Events waiting to be relayed to the other instances; beyond it they are
/// dropped (and counted) rather than held.
pub const RELAY_QUEUE: usize = 4096;

/// Every kind of event, so that one relayed from another instance is known.
pub const KINDS: [&str; 11] = [
    "device.new_key",
    "device.status",
    "device.online",
    "device.offline",
    "device.deleted",
    "device.health",
    "device.container_event",
    "device.tags",
    "device.queued_call",
    "job.progress",
    "audit.entry",
];

/// What an event is about; subscribers choose by topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `devices`: every device's events.
    Devices,
    /// `device.<id>`: one device's events.
    Device(String),
    /// `audit`: each new audit log entry.
    Audit,
    /// `job.<id>`: one job's outcomes as they come.
    Job(i64),
}

impl Topic {
    pub fn parse(text: &str) -> Option<Topic> {
        match text {
            "devices" => Some(Topic::Devices),
            "audit" => Some(Topic::Audit),
            _ if text.starts_with("job.") => text["job.".len()..].parse().ok().map(Topic::Job),
            _ => text
                .strip_prefix("device.")
                .filter(|id| protocol::is_valid_device_id(id))
                .map(|id| Topic::Device(id.to_owned())),
        }
    }

    /// Whether `event` is about this topic.
    pub fn matches(&self, event: &LiveEvent) -> bool {
        match (self, &event.device_id) {
            (Topic::Audit, _) => event.kind.starts_with("audit."),
            (Topic::Job(id), _) => {
                event.kind.starts_with("job.") && event.data["job"].as_i64() == Some(*id)
            }
            (Topic::Devices, Some(_)) => true,
            (Topic::Device(id), Some(device_id)) => id == device_id,
            (_, None) => false,
        }
    }
}

/// The topic's name, as [`Topic::parse`] reads it.
impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topic::Devices => f.write_str("devices"),
            Topic::Audit => f.write_str("audit"),
            Topic::Device(id) => write!(f, "device.{id}"),
            Topic::Job(id) => write!(f, "job.{id}"),
        }
    }
}

/// One event, as subscribers receive it (serialized once, shared by all).
#[derive(Debug, Serialize)]
pub struct LiveEvent {
    /// `device.new_key`, `device.status`, `device.online`, `device.offline`,
    /// `device.deleted`, `device.health`, `device.container_event`, `audit.entry`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub at: u64,
    pub data: Value,
}

/// The cloud's event fan-out; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<(LiveEvent, Utf8Bytes)>>,
    /// The other instances' share of each event published here, if any.
    relay: Option<mpsc::Sender<Utf8Bytes>>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            sender: broadcast::channel(QUEUE_PER_CLIENT).0,
            relay: None,
        }
    }
}

impl EventHub {
    /// An event about one device.
    pub fn device(&self, kind: &'static str, device_id: &str, data: Value) {
        self.publish(LiveEvent {
            kind,
            device_id: Some(device_id.to_owned()),
            at: now_ms(),
            data,
        });
    }

    /// A job's progress; `data.job` is its id.
    pub fn job(&self, data: Value) {
        self.publish(LiveEvent {
            kind: "job.progress",
            device_id: None,
            at: now_ms(),
            data,
        });
    }

    /// A new audit log entry.
    pub fn audit(&self, entry: &crate::store::audit::AuditEntry) {
        self.publish(LiveEvent {
            kind: "audit.entry",
            device_id: None,
            at: now_ms(),
            data: json!(entry),
        });
    }

    /// A hub that also hands each event it publishes to `relay`, for the
    /// other instances; and the queue the relay reads.
    pub fn relayed() -> (Self, mpsc::Receiver<Utf8Bytes>) {
        let (relay, queue) = mpsc::channel(RELAY_QUEUE);
        let hub = EventHub {
            relay: Some(relay),
            ..EventHub::default()
        };
        (hub, queue)
    }

    fn publish(&self, event: LiveEvent) {
        let text: Utf8Bytes = serde_json::to_string(&event).unwrap_or_default().into();
        if let Some(relay) = &self.relay {
            if relay.try_send(text.clone()).is_err() {
                tracing::warn!(
                    kind = event.kind,
                    "the relay to other instances is behind; event not relayed"
                );
            }
        }
        // No subscriber is not an error: nobody is looking.
        let _ = self.sender.send(Arc::new((event, text)));
    }

    /// An event another instance published, delivered to the subscribers
    /// here (never relayed again); a text that is no event is dropped.
    pub fn deliver_relayed(&self, text: &str) {
        let event = serde_json::from_str::<RelayedEvent>(text)
            .map_err(|e| e.to_string())
            .and_then(LiveEvent::try_from);
        match event {
            Ok(event) => {
                let _ = self.sender.send(Arc::new((event, text.into())));
            }
            Err(e) => tracing::warn!(error = %e, "dropped a relayed event that is not one"),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<(LiveEvent, Utf8Bytes)>> {
        self.sender.subscribe()
    }
}

/// A [`LiveEvent`] as another instance relays it.
#[derive(serde::Deserialize)]
struct RelayedEvent {
    #[serde(rename = "type")]
    kind: String,
    device_id: Option<String>,
    at: u64,
    data: Value,
}

impl TryFrom<RelayedEvent> for LiveEvent {
    type Error = String;

    fn try_from(relayed: RelayedEvent) -> Result<Self, String> {
        let kind = KINDS
            .into_iter()
            .find(|known| *known == relayed.kind)
            .ok_or_else(|| format!("unknown event type {:?}", relayed.kind))?;
        Ok(LiveEvent {
            kind,
            device_id: relayed.device_id,
            at: relayed.at,
            data: relayed.data,
        })
    }
}
