//! The device-local NATS contract (bridge ⇄ workers): subjects, headers and
//! what travels on them. Names and payloads only: this crate does not talk
//! to NATS.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Refusal;
use crate::message::Message;
use crate::method::check_method_name;

/// Prefix of a verified cloud request, relayed to workers: `rpc.<method>`.
pub const RPC_PREFIX: &str = "rpc.";
/// Prefix of a device → cloud call: `cloud.call.<method>`.
pub const CLOUD_CALL_PREFIX: &str = "cloud.call.";
/// Prefix of a device → cloud notification: `cloud.notify.<method>`.
pub const CLOUD_NOTIFY_PREFIX: &str = "cloud.notify.";
/// Where the bridge announces its connection state ([`BridgeStatus`]).
pub const BRIDGE_STATUS: &str = "bridge.status";
/// Where the running bridge takes requests to rotate the device's key
/// (`bridge rotate-key`); an empty payload, answered with a JSON-RPC response
/// whose result is `{status: "rotated", fingerprint}`. Only the bridge's own
/// NATS user may publish here (`scripts/ensure-device-nats.sh`).
pub const BRIDGE_ROTATE_KEY: &str = "bridge.rotate_key";
/// Queue group workers share, so each request is served once.
pub const WORKER_QUEUE_GROUP: &str = "workers";
/// Header carrying the verified signer of a relayed request.
pub const HEADER_SIGNER: &str = "Signer-Id";
/// Header carrying the JSON-RPC id of a relayed request, for logs.
pub const HEADER_REQUEST_ID: &str = "Request-Id";

/// The reply inbox prefix of a NATS client signed in as `user`: each user
/// has its own, so the broker's permissions can keep one from reading
/// another's answers (see `scripts/ensure-device-nats.sh`).
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// A verified cloud message as the bridge hands it to the workers: on
/// `rpc.<method>`, the JSON-RPC text without `meta`, and for a request the
/// headers saying who signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    pub subject: String,
    pub payload: String,
    /// Present on a request, absent on a notification.
    pub headers: Option<RequestHeaders>,
}

impl Relayed {
    /// The cloud request `id` for `method`, verified as signed by `signer_id`.
    pub fn request(
        signer_id: &str,
        id: Value,
        method: &str,
        params: Option<Value>,
    ) -> Result<Self, Refusal> {
        let headers = RequestHeaders::new(signer_id, &id);
        // Workers get a string id, the `Request-Id` header's: the cloud may
        // use any id JSON-RPC allows, and not every JSON-RPC server reads
        // every one (jsonrpsee refuses negative and fractional numbers). The
        // bridge answers the cloud with the cloud's own id.
        let request = Message::Request {
            id: Value::String(headers.request_id.clone()),
            method: method.to_owned(),
            params,
        };
        Ok(Relayed {
            headers: Some(headers),
            ..Relayed::new(method, &request)?
        })
    }

    /// A verified cloud notification for `method`.
    pub fn notification(method: &str, params: Option<Value>) -> Result<Self, Refusal> {
        let notification = Message::Notification {
            method: method.to_owned(),
            params,
        };
        Relayed::new(method, &notification)
    }

    /// A method name becomes a subject only once checked: a wildcard or an
    /// empty token would reach subscribers it was never meant for.
    fn new(method: &str, message: &Message) -> Result<Self, Refusal> {
        check_method_name(method)?;
        Ok(Relayed {
            subject: format!("{RPC_PREFIX}{method}"),
            payload: message.to_text(),
            headers: None,
        })
    }

    /// The method, as the subject names it.
    pub fn method(&self) -> &str {
        &self.subject[RPC_PREFIX.len()..]
    }
}

/// The headers of a relayed cloud request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHeaders {
    /// Who signed the request (the cloud's id).
    pub signer_id: String,
    /// Its JSON-RPC id: a string id as is, any other as its JSON text.
    pub request_id: String,
}

impl RequestHeaders {
    pub fn new(signer_id: &str, id: &Value) -> Self {
        RequestHeaders {
            signer_id: signer_id.to_owned(),
            request_id: id.as_str().map_or_else(|| id.to_string(), str::to_owned),
        }
    }

    /// `(name, value)` pairs, for whichever NATS client sends them.
    pub fn pairs(&self) -> [(&'static str, &str); 2] {
        [
            (HEADER_SIGNER, &self.signer_id),
            (HEADER_REQUEST_ID, &self.request_id),
        ]
    }

    /// Reads them back through `header`, a lookup by name; a missing one is
    /// empty (a caller on the device itself sends none).
    pub fn read<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Self {
        let value = |name| header(name).unwrap_or_default().to_owned();
        RequestHeaders {
            signer_id: value(HEADER_SIGNER),
            request_id: value(HEADER_REQUEST_ID),
        }
    }
}

/// The bridge's connection to the cloud, as it announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connecting,
    /// Authenticated, waiting for an operator to accept the key.
    Pending,
    Live,
    Disconnected,
    /// The cloud refused this device; the bridge waits long before retrying.
    Rejected,
}

impl LinkState {
    /// Authenticated to the cloud (pending or live): the link works, whatever
    /// an operator decides.
    pub fn is_connected(self) -> bool {
        matches!(self, LinkState::Pending | LinkState::Live)
    }
}

/// What the bridge publishes on `bridge.status` at each change of its link
/// state (and writes to its state file, for `bridge healthcheck`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeStatus {
    pub state: LinkState,
    pub device_id: String,
    /// When the state changed, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_relayed_request_carries_the_message_without_meta_and_who_signed_it() {
        let relayed = Relayed::request(
            "cloud-dashboard",
            json!("c-17"),
            "containers.list",
            Some(json!({"all": true})),
        )
        .unwrap();
        assert_eq!(relayed.subject, "rpc.containers.list");
        assert_eq!(relayed.method(), "containers.list");
        assert_eq!(
            serde_json::from_str::<Value>(&relayed.payload).unwrap(),
            json!({"jsonrpc": "2.0", "id": "c-17", "method": "containers.list", "params": {"all": true}})
        );
        let headers = relayed.headers.unwrap();
        assert_eq!(
            headers.pairs(),
            [("Signer-Id", "cloud-dashboard"), ("Request-Id", "c-17")]
        );
        let pairs = headers.pairs();
        let lookup = |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(RequestHeaders::read(lookup), headers);
    }

    #[test]
    fn workers_get_a_string_id_whatever_id_the_cloud_chose() {
        for (id, text) in [(json!(-3), "-3"), (json!(1.5), "1.5"), (json!(17), "17")] {
            let relayed = Relayed::request("cloud", id, "rpc.discover", None).unwrap();
            let payload: Value = serde_json::from_str(&relayed.payload).unwrap();
            assert_eq!(payload["id"], json!(text));
            assert_eq!(relayed.headers.unwrap().request_id, text);
        }
    }

    #[test]
    fn a_number_id_travels_as_its_json_text_and_missing_headers_read_empty() {
        let headers = RequestHeaders::new("cloud", &json!(17));
        assert_eq!(headers.request_id, "17");
        assert_eq!(RequestHeaders::read(|_| None), RequestHeaders::default());
    }

    #[test]
    fn a_notification_has_no_headers_and_a_bad_method_name_no_subject() {
        let relayed = Relayed::notification("device.hello", None).unwrap();
        assert_eq!(relayed.subject, "rpc.device.hello");
        assert_eq!(relayed.headers, None);
        for method in ["rpc.>", "a.*", ""] {
            let refused = Relayed::request("cloud", json!(1), method, None).unwrap_err();
            assert_eq!(refused.reason(), "bad_method_name");
            assert!(Relayed::notification(method, None).is_err());
        }
    }

    #[test]
    fn a_bridge_status_reads_back_and_only_authenticated_states_are_connected() {
        let status = BridgeStatus {
            state: LinkState::Pending,
            device_id: "d-1".into(),
            at_ms: 1,
        };
        let text = serde_json::to_string(&status).unwrap();
        assert_eq!(text, r#"{"state":"pending","device_id":"d-1","at_ms":1}"#);
        assert_eq!(serde_json::from_str::<BridgeStatus>(&text).unwrap(), status);
        let connected: Vec<LinkState> = [
            LinkState::Connecting,
            LinkState::Pending,
            LinkState::Live,
            LinkState::Disconnected,
            LinkState::Rejected,
        ]
        .into_iter()
        .filter(|state| state.is_connected())
        .collect();
        assert_eq!(connected, [LinkState::Pending, LinkState::Live]);
    }
}
