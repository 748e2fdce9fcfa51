//! Calls from the device to the cloud: a NATS request on `cloud.call.<method>`,
//! which the bridge signs, sends over its WebSocket, and answers with the
//! cloud's verified JSON-RPC response.

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use protocol::nats::{BridgeStatus, LinkState, BRIDGE_STATUS, CLOUD_CALL_PREFIX};
use protocol::{check_method_name, Refusal, RpcError};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The method every worker can call to prove the device → cloud path works.
pub const PING_METHOD: &str = "cloud.ping";

/// Why a call to the cloud gave no result.
#[derive(Debug, thiserror::Error)]
pub enum CloudCallError {
    #[error("invalid method name: {0}")]
    BadMethodName(#[from] Refusal),
    /// Nothing subscribes to `cloud.call.*`: the bridge is not running.
    #[error("no bridge is listening for cloud calls")]
    NoBridge,
    #[error("the cloud did not answer in time")]
    TimedOut,
    /// The cloud (or the bridge on its behalf) answered with an error.
    #[error("the cloud answered with error {}: {}", .0.code, .0.message)]
    Rpc(RpcError),
    #[error("unreadable answer from the bridge: {0}")]
    BadReply(String),
    #[error("NATS request failed: {0}")]
    Nats(async_nats::RequestError),
}

/// Calls `method` on the cloud with `params` and returns its result.
pub async fn call_cloud(
    nats: &Client,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<Value, CloudCallError> {
    check_method_name(method)?;
    let request = async_nats::Request::new()
        .payload(params.to_string().into())
        .timeout(Some(timeout));
    let reply = nats
        .send_request(format!("{CLOUD_CALL_PREFIX}{method}"), request)
        .await
        .map_err(|err| match err.kind() {
            RequestErrorKind::NoResponders => CloudCallError::NoBridge,
            RequestErrorKind::TimedOut => CloudCallError::TimedOut,
            _ => CloudCallError::Nats(err),
        })?;
    read_response(&reply.payload)
}

/// Calls `cloud.ping` with no params.
pub async fn ping_cloud(nats: &Client, timeout: Duration) -> Result<Value, CloudCallError> {
    call_cloud(nats, PING_METHOD, json!({}), timeout).await
}

/// The `result` of a JSON-RPC response, or its `error`.
fn read_response(payload: &[u8]) -> Result<Value, CloudCallError> {
    #[derive(Deserialize)]
    struct Response {
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        error: Option<RpcError>,
    }
    let response: Response = serde_json::from_slice(payload)
        .map_err(|err| CloudCallError::BadReply(format!("not a JSON-RPC response: {err}")))?;
    match (response.result, response.error) {
        (_, Some(error)) => Err(CloudCallError::Rpc(error)),
        (Some(result), None) => Ok(result),
        // A present `"result": null` deserializes as None too: a null result.
        (None, None) => match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(object)) if object.contains_key("result") => Ok(Value::Null),
            _ => Err(CloudCallError::BadReply(
                "response has neither result nor error".into(),
            )),
        },
    }
}

/// Pings the cloud once at start-up and each time the bridge announces it went
/// live, logging the answer: proof that the device → cloud path works.
pub(crate) async fn ping_when_bridge_live(
    nats: &Client,
    timeout: Duration,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut statuses = nats.subscribe(BRIDGE_STATUS).await?;
    // The bridge may have gone live before this worker started.
    ping_and_log(nats, timeout, &shutdown).await;
    let mut last_state = None;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = futures::StreamExt::next(&mut statuses) => match message {
                Some(message) => message,
                None => return Ok(()),
            },
        };
        let status: BridgeStatus = match serde_json::from_slice(&message.payload) {
            Ok(status) => status,
            Err(err) => {
                warn!(error = %err, "unreadable bridge.status message");
                continue;
            }
        };
        info!(state = ?status.state, "bridge status");
        if status.state == LinkState::Live && last_state != Some(LinkState::Live) {
            ping_and_log(nats, timeout, &shutdown).await;
        }
        last_state = Some(status.state);
    }
}

async fn ping_and_log(nats: &Client, timeout: Duration, shutdown: &CancellationToken) {
    let answer = tokio::select! {
        _ = shutdown.cancelled() => return,
        answer = ping_cloud(nats, timeout) => answer,
    };
    match answer {
        Ok(answer) => info!(%answer, "cloud answered ping"),
        Err(CloudCallError::NoBridge) => info!("no bridge yet; will ping when it is live"),
        Err(err) => warn!(error = %err, "cloud ping failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_returned() {
        let result = read_response(br#"{"jsonrpc":"2.0","id":1,"result":{"pong":true}}"#);
        assert_eq!(result.unwrap(), json!({"pong": true}));
    }

    #[test]
    fn a_null_result_is_a_result() {
        let result = read_response(br#"{"jsonrpc":"2.0","id":1,"result":null}"#);
        assert_eq!(result.unwrap(), Value::Null);
    }

    #[test]
    fn an_error_is_returned_as_rpc_error() {
        let result = read_response(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32002,"message":"timed out"}}"#,
        );
        match result {
            Err(CloudCallError::Rpc(error)) => {
                assert_eq!(error.code, -32002);
                assert_eq!(error.message, "timed out");
            }
            other => panic!("expected an RPC error, got {other:?}"),
        }
    }

    #[test]
    fn garbage_is_a_bad_reply() {
        assert!(matches!(
            read_response(b"nope"),
            Err(CloudCallError::BadReply(_))
        ));
        assert!(matches!(
            read_response(br#"{"jsonrpc":"2.0","id":1}"#),
            Err(CloudCallError::BadReply(_))
        ));
    }

    #[tokio::test]
    async fn a_bad_method_name_is_refused_before_any_io() {
        // The client is never connected: the name check comes first.
        let nats = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap();
        let err = call_cloud(&nats, "cloud.>", json!({}), Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(err, CloudCallError::BadMethodName(_)), "{err:?}");
    }
}
