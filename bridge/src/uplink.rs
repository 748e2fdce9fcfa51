//! Device → cloud traffic from the workers: `cloud.call.<method>` requests and
//! `cloud.notify.<method>` notifications, handed to the live session.

use std::time::Duration;

use futures::StreamExt;
use protocol::nats::{CLOUD_CALL_PREFIX, CLOUD_NOTIFY_PREFIX};
use protocol::{check_method_name, ErrorCode, Message, RpcError};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::outbound::{LiveLink, Outbound};

/// Serves `cloud.call.>` until shutdown; each call in its own task.
pub async fn serve_calls(
    nats: async_nats::Client,
    live: LiveLink,
    timeout: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut calls = nats.subscribe(format!("{CLOUD_CALL_PREFIX}>")).await?;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = calls.next() => match message {
                Some(message) => message,
                None => return Ok(()),
            },
        };
        let Some(reply_to) = message.reply.clone() else {
            tracing::warn!(subject = %message.subject, "cloud call without a reply subject; dropped");
            continue;
        };
        let nats = nats.clone();
        let session = current(&live);
        tokio::spawn(async move {
            let method = message
                .subject
                .as_str()
                .trim_start_matches(CLOUD_CALL_PREFIX)
                .to_owned();
            let outcome = match (params_of(&message.payload), session) {
                (Err(error), _) => Err(error),
                (Ok(_), None) => Err(RpcError::new(
                    ErrorCode::Unavailable,
                    "bridge is not connected to the cloud",
                )),
                (Ok(params), Some(session)) => call_cloud(&session, method, params, timeout).await,
            };
            let response = Message::Response {
                id: Value::Null,
                result: outcome,
            };
            if let Err(error) = nats.publish(reply_to, response.to_text().into()).await {
                tracing::warn!(%error, "cannot answer a cloud call");
            }
        });
    }
}

/// Forwards `cloud.notify.>` while live; drops them (with a log) otherwise,
/// since a notification has no one waiting for it.
pub async fn serve_notifications(
    nats: async_nats::Client,
    live: LiveLink,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut notifications = nats.subscribe(format!("{CLOUD_NOTIFY_PREFIX}>")).await?;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = notifications.next() => match message {
                Some(message) => message,
                None => return Ok(()),
            },
        };
        let method = message
            .subject
            .as_str()
            .trim_start_matches(CLOUD_NOTIFY_PREFIX)
            .to_owned();
        let params = match params_of(&message.payload) {
            Ok(params) => params,
            Err(error) => {
                tracing::warn!(%method, error = %error.message, "notification dropped");
                continue;
            }
        };
        if let Err(refusal) = check_method_name(&method) {
            tracing::warn!(%refusal, "notification dropped");
            continue;
        }
        match current(&live) {
            Some(session) => {
                if session
                    .try_send(Outbound::Notify {
                        method: method.clone(),
                        params,
                    })
                    .is_err()
                {
                    tracing::warn!(%method, "uplink queue full; notification dropped");
                }
            }
            None => tracing::debug!(%method, "not live; notification dropped"),
        }
    }
}

async fn call_cloud(
    session: &mpsc::Sender<Outbound>,
    method: String,
    params: Option<Value>,
    timeout: Duration,
) -> Result<Value, RpcError> {
    check_method_name(&method).map_err(|refusal| RpcError::refused(&refusal))?;
    let (reply, answer) = oneshot::channel();
    let lost = || RpcError::new(ErrorCode::Unavailable, "connection to the cloud closed");
    session
        .send(Outbound::Call {
            method: method.clone(),
            params,
            reply,
        })
        .await
        .map_err(|_| lost())?;
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Err(lost()),
        Err(_) => Err(RpcError::new(
            ErrorCode::TimedOut,
            format!(
                "cloud did not answer {method:?} within {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

fn current(live: &LiveLink) -> Option<mpsc::Sender<Outbound>> {
    live.lock().expect("live link lock").clone()
}

/// A worker's payload is the params: empty, a JSON object or an array.
fn params_of(payload: &[u8]) -> Result<Option<Value>, RpcError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let invalid = |why: String| RpcError::new(ErrorCode::InvalidParams, why);
    let text = std::str::from_utf8(payload).map_err(|e| invalid(e.to_string()))?;
    let map = protocol::parse_frame(&format!("{{\"params\":{text}}}"), usize::MAX)
        .map_err(|refusal| invalid(refusal.to_string()))?;
    match map.get("params") {
        Some(params @ (Value::Object(_) | Value::Array(_))) => Ok(Some(params.clone())),
        _ => Err(invalid("params must be a JSON object or array".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_empty_an_object_or_an_array() {
        assert_eq!(params_of(b""), Ok(None));
        assert_eq!(
            params_of(br#"{"a":1}"#),
            Ok(Some(serde_json::json!({"a": 1})))
        );
        assert!(params_of(b"3").is_err());
        assert!(params_of(br#"{"a":1,"a":2}"#).is_err());
        assert!(params_of(br#"{"n":9007199254740993}"#).is_err());
    }
}
