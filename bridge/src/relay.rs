//! A verified cloud request, relayed to the workers over NATS `rpc.<method>`.

use std::time::Duration;

use async_nats::connection::State as ConnectionState;
use async_nats::{HeaderMap, RequestErrorKind};
use protocol::nats::Relayed;
use protocol::{parse_frame, ErrorCode, Message, RpcError};
use serde_json::Value;

/// Sends a relayed request to whichever worker serves its method and returns
/// the outcome as a JSON-RPC result or error. The id is the caller's concern.
pub async fn call_worker(
    nats: &async_nats::Client,
    request: Relayed,
    timeout: Duration,
    max_reply_bytes: usize,
) -> Result<Value, RpcError> {
    let method = request.method().to_owned();
    let mut headers = HeaderMap::new();
    for (name, value) in request.headers.iter().flat_map(|headers| headers.pairs()) {
        headers.insert(name, value);
    }
    // async-nats keeps a request waiting through a lost connection until its
    // timeout, which would blame the worker: say at once that the bus is down.
    if nats.connection_state() != ConnectionState::Connected {
        return Err(bus_down());
    }
    let sent = nats.send_request(
        request.subject,
        async_nats::Request::new()
            .payload(request.payload.into())
            .headers(headers)
            .timeout(Some(timeout)),
    );
    let reply = tokio::select! {
        reply = sent => reply,
        () = disconnected(nats) => return Err(bus_down()),
    };
    let reply = reply.map_err(|error| match error.kind() {
        RequestErrorKind::NoResponders => RpcError::new(
            ErrorCode::MethodNotFound,
            format!("method not found: no worker serves {method:?}"),
        ),
        RequestErrorKind::TimedOut => RpcError::new(
            ErrorCode::TimedOut,
            format!(
                "worker did not answer {method:?} within {} ms",
                timeout.as_millis()
            ),
        ),
        _ => RpcError::new(
            ErrorCode::Unavailable,
            format!("device message bus unavailable: {error}"),
        ),
    })?;
    worker_outcome(&reply.payload, max_reply_bytes)
}

/// How often a request in flight checks that the NATS connection still holds.
const BUS_CHECK_PERIOD: Duration = Duration::from_millis(100);

fn bus_down() -> RpcError {
    RpcError::new(
        ErrorCode::Unavailable,
        "device message bus unavailable: the bridge is not connected to the device's NATS",
    )
}

/// Resolves once the NATS connection is lost.
async fn disconnected(nats: &async_nats::Client) {
    loop {
        tokio::time::sleep(BUS_CHECK_PERIOD).await;
        if nats.connection_state() != ConnectionState::Connected {
            return;
        }
    }
}

/// Reads a worker's JSON-RPC response strictly, so that the bridge never signs
/// something the cloud would refuse (an unsafe number, a duplicate key).
pub fn worker_outcome(payload: &[u8], max_bytes: usize) -> Result<Value, RpcError> {
    let invalid = |why: String| {
        RpcError::new(
            ErrorCode::InternalError,
            format!("invalid worker reply: {why}"),
        )
    };
    let text = std::str::from_utf8(payload).map_err(|e| invalid(e.to_string()))?;
    let map = parse_frame(text, max_bytes).map_err(|e| invalid(e.to_string()))?;
    match Message::from_value(map).map_err(|e| invalid(e.to_string()))? {
        Message::Response { result, .. } => result,
        _ => Err(invalid("not a JSON-RPC response".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_results_and_errors_pass_through() {
        let ok = br#"{"jsonrpc":"2.0","id":"c-1","result":{"containers":[]}}"#;
        assert_eq!(
            worker_outcome(ok, 1024),
            Ok(serde_json::json!({"containers": []}))
        );
        let err = br#"{"jsonrpc":"2.0","id":"c-1","error":{"code":-32602,"message":"no such container: x"}}"#;
        assert_eq!(
            worker_outcome(err, 1024).unwrap_err().message,
            "no such container: x"
        );
    }

    #[test]
    fn a_worker_reply_the_cloud_would_refuse_becomes_an_internal_error() {
        let unsafe_number = br#"{"jsonrpc":"2.0","id":1,"result":{"n":9007199254740993}}"#;
        let err = worker_outcome(unsafe_number, 1024).unwrap_err();
        assert_eq!(err.code, ErrorCode::InternalError.code());
        assert!(err.message.contains("2^53"), "{}", err.message);
    }
}
