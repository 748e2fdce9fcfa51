//! Live events for browsers and scripts (served on `/ws/events` by
//! `http::live_events`).
//!
//! One broadcast ring feeds every subscriber. Each subscriber reads at its own
//! pace, and at most [`QUEUE_PER_CLIENT`] events wait for it; a subscriber that
//! falls further behind skips ahead and is told how many it missed
//! (`{"type":"lagged","missed":n}`), so a slow browser never slows the
//! publisher or the other subscribers.

use std::sync::Arc;

// The text every subscriber sends, serialized once: the WebSocket's own
// cheaply cloned string type.
use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use protocol::now_ms;

/// Events that may wait for one subscriber before it is told it lagged.
pub const QUEUE_PER_CLIENT: usize = 256;

/// What an event is about; subscribers choose by topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `devices`: every device's events.
    Devices,
    /// `device.<id>`: one device's events.
    Device(String),
    /// `audit`: each new audit log entry.
    Audit,
}

impl Topic {
    pub fn parse(text: &str) -> Option<Topic> {
        match text {
            "devices" => Some(Topic::Devices),
            "audit" => Some(Topic::Audit),
            _ => text
                .strip_prefix("device.")
                .filter(|id| protocol::is_valid_device_id(id))
                .map(|id| Topic::Device(id.to_owned())),
        }
    }

    pub fn matches(&self, event: &LiveEvent) -> bool {
        match (self, &event.device_id) {
            (Topic::Audit, _) => event.kind.starts_with("audit."),
            (Topic::Devices, Some(_)) => true,
            (Topic::Device(id), Some(device_id)) => id == device_id,
            (_, None) => false,
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
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            sender: broadcast::channel(QUEUE_PER_CLIENT).0,
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

    /// A new audit log entry.
    pub fn audit(&self, entry: &crate::store::audit::AuditEntry) {
        self.publish(LiveEvent {
            kind: "audit.entry",
            device_id: None,
            at: now_ms(),
            data: json!(entry),
        });
    }

    fn publish(&self, event: LiveEvent) {
        let text = serde_json::to_string(&event).unwrap_or_default();
        // No subscriber is not an error: nobody is looking.
        let _ = self.sender.send(Arc::new((event, text.into())));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<(LiveEvent, Utf8Bytes)>> {
        self.sender.subscribe()
    }
}
