//! Wire types: a JSON-RPC 2.0 message and the `meta` block that signs it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ErrorCode, Refusal};

/// Audience of the one message sent before the cloud knows who connected.
pub const ANY_AUDIENCE: &str = "*";

/// Which way a message flows; a receiver accepts only the one toward itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    CloudToDevice,
    DeviceToCloud,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::CloudToDevice => "cloud_to_device",
            Direction::DeviceToCloud => "device_to_cloud",
        }
    }
}

/// The `meta` member every message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub signer_id: String,
    pub audience_id: String,
    pub direction: Direction,
    /// 16 random bytes, base64url without padding.
    pub nonce: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    pub algorithm: String,
    /// 64 bytes, base64url without padding; absent while signing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature: String,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError {
            code: code.code(),
            message: message.into(),
            data: None,
        }
    }

    pub fn refused(refusal: &Refusal) -> Self {
        RpcError {
            code: refusal.error_code().code(),
            message: format!("refused: {refusal}"),
            data: Some(serde_json::json!({ "reason": refusal.reason() })),
        }
    }
}

/// One JSON-RPC 2.0 message, without its `meta`.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        id: Value,
        method: String,
        params: Option<Value>,
    },
    Notification {
        method: String,
        params: Option<Value>,
    },
    Response {
        id: Value,
        result: Result<Value, RpcError>,
    },
}

impl Message {
    pub fn request(id: impl Into<Value>, method: impl Into<String>, params: Value) -> Self {
        Message::Request {
            id: id.into(),
            method: method.into(),
            params: Some(params),
        }
    }

    pub fn notification(method: impl Into<String>, params: Value) -> Self {
        Message::Notification {
            method: method.into(),
            params: Some(params),
        }
    }

    pub fn result(id: Value, result: Value) -> Self {
        Message::Response {
            id,
            result: Ok(result),
        }
    }

    pub fn error(id: Value, error: RpcError) -> Self {
        Message::Response {
            id,
            result: Err(error),
        }
    }

    /// The method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method, .. } => Some(method),
            Message::Response { .. } => None,
        }
    }

    /// The id a request is answered with; None for notifications and responses.
    pub fn request_id(&self) -> Option<&Value> {
        match self {
            Message::Request { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The JSON-RPC object, without `meta`.
    pub fn to_value(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("jsonrpc".into(), "2.0".into());
        match self {
            Message::Request { id, method, params } => {
                map.insert("id".into(), id.clone());
                map.insert("method".into(), method.clone().into());
                if let Some(params) = params {
                    map.insert("params".into(), params.clone());
                }
            }
            Message::Notification { method, params } => {
                map.insert("method".into(), method.clone().into());
                if let Some(params) = params {
                    map.insert("params".into(), params.clone());
                }
            }
            Message::Response { id, result } => {
                map.insert("id".into(), id.clone());
                match result {
                    Ok(value) => map.insert("result".into(), value.clone()),
                    Err(error) => map.insert(
                        "error".into(),
                        serde_json::to_value(error).expect("an RpcError serializes"),
                    ),
                };
            }
        }
        map
    }

    /// The JSON-RPC object as compact text, without `meta`: what a message is
    /// on the device-local NATS, where nothing is signed.
    pub fn to_text(&self) -> String {
        Value::Object(self.to_value()).to_string()
    }

    /// Reads a JSON-RPC 2.0 object; `meta` must already be removed. Unknown
    /// members are refused so that nothing unsigned-by-intent rides along.
    pub fn from_value(mut map: Map<String, Value>) -> Result<Self, Refusal> {
        let bad = |why: &str| Refusal::NotJsonRpc(why.to_string());
        if map.remove("jsonrpc") != Some(Value::String("2.0".into())) {
            return Err(bad("\"jsonrpc\" must be \"2.0\""));
        }
        let id = map.remove("id");
        if let Some(id) = &id {
            if !(id.is_string() || id.is_number() || id.is_null()) {
                return Err(bad("\"id\" must be a string or a number"));
            }
        }
        let method = map.remove("method");
        let params = map.remove("params");
        let result = map.remove("result");
        let error = map.remove("error");
        if let Some(key) = map.keys().next() {
            return Err(Refusal::NotJsonRpc(format!("unexpected member {key:?}")));
        }
        if let Some(params) = &params {
            if !(params.is_object() || params.is_array()) {
                return Err(bad("\"params\" must be an object or an array"));
            }
        }
        match (method, id, result, error) {
            (Some(Value::String(method)), id, None, None) => Ok(match id {
                Some(id) => Message::Request { id, method, params },
                None => Message::Notification { method, params },
            }),
            (Some(_), _, None, None) => Err(bad("\"method\" must be a string")),
            (None, Some(id), Some(result), None) if params.is_none() => Ok(Message::Response {
                id,
                result: Ok(result),
            }),
            (None, Some(id), None, Some(error)) if params.is_none() => {
                let error: RpcError = serde_json::from_value(error)
                    .map_err(|e| Refusal::NotJsonRpc(format!("invalid error object: {e}")))?;
                Ok(Message::Response {
                    id,
                    result: Err(error),
                })
            }
            _ => Err(bad(
                "expected a request, a notification, or a response with exactly one of result and error",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Message, Refusal> {
        Message::from_value(v.as_object().unwrap().clone())
    }

    #[test]
    fn round_trips_each_kind() {
        for message in [
            Message::request("c-1", "containers.list", json!({"all": true})),
            Message::notification("device.health", json!({"cpu": 1.5})),
            Message::result(json!(7), json!([1, 2])),
            Message::error(json!("x"), RpcError::new(ErrorCode::TimedOut, "slow")),
        ] {
            assert_eq!(Message::from_value(message.to_value()).unwrap(), message);
        }
    }

    #[test]
    fn refuses_what_is_not_jsonrpc() {
        assert!(parse(json!({"method": "a"})).is_err());
        assert!(parse(json!({"jsonrpc": "1.0", "method": "a"})).is_err());
        assert!(parse(json!({"jsonrpc": "2.0", "method": 3})).is_err());
        assert!(parse(json!({"jsonrpc": "2.0", "method": "a", "extra": 1})).is_err());
        assert!(parse(json!({"jsonrpc": "2.0", "id": 1, "result": 1, "error": {}})).is_err());
        assert!(parse(json!({"jsonrpc": "2.0", "id": {}, "method": "a"})).is_err());
        assert!(parse(json!({"jsonrpc": "2.0", "method": "a", "params": 3})).is_err());
    }
}
