//! NATS transport for the methods: one queue subscription per served method on
//! `rpc.<method>`, each request answered from its own task.
//!
//! Subscribing per method, not to `rpc.>`, is what lets the bridge turn "no
//! responders" into "method not found": an unserved method has no subscriber.

use std::time::{Duration, Instant};

use async_nats::{Client, Message, PublishErrorKind};
use futures::StreamExt;
use jsonrpsee::Methods;
use protocol::nats::{HEADER_REQUEST_ID, HEADER_SIGNER, RPC_PREFIX, WORKER_QUEUE_GROUP};
use protocol::{check_method_name, ErrorCode, Refusal, RpcError};
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// The NATS user a worker signs in as (the device stack's broker refuses
/// clients without one; see `scripts/ensure-device-nats.sh`).
#[derive(Debug, Clone)]
pub struct NatsLogin {
    pub user: String,
    pub password: String,
}

/// Options of a connection named `name`, signed in as `login` if given, with
/// that user's own reply inbox.
pub fn nats_options(name: &str, login: Option<&NatsLogin>) -> async_nats::ConnectOptions {
    let options = async_nats::ConnectOptions::new().name(name);
    match login {
        Some(login) => options
            .user_and_password(login.user.clone(), login.password.clone())
            .custom_inbox_prefix(protocol::nats::inbox_prefix(&login.user)),
        None => options,
    }
}

/// Connects to NATS the way a worker must: in the background if the server is
/// not up yet, and reconnecting forever after it goes away. async-nats restores
/// the subscriptions after each reconnect, so [`serve`] needs no restart.
pub async fn connect_nats(
    url: &str,
    login: Option<&NatsLogin>,
) -> Result<Client, async_nats::ConnectError> {
    nats_options("worker", login)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move { info!(%event, "nats connection event") })
        .connect(url)
        .await
}

/// How long requests in flight may finish after shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("method {0:?} cannot be served on NATS: {1}")]
    BadMethodName(String, Refusal),
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
}

/// Serves every method of `methods` until `shutdown` is cancelled (or the NATS
/// client closes), then stops taking requests and gives those in flight a
/// bounded grace period.
pub async fn serve(
    nats: Client,
    methods: impl Into<Methods>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let methods: Methods = methods.into();
    let mut names: Vec<&'static str> = methods.method_names().collect();
    names.sort_unstable();

    let mut subscriptions = Vec::with_capacity(names.len());
    for name in &names {
        check_method_name(name)
            .map_err(|refusal| ServeError::BadMethodName(name.to_string(), refusal))?;
        let subject = format!("{RPC_PREFIX}{name}");
        let subscription = nats
            .queue_subscribe(subject.clone(), WORKER_QUEUE_GROUP.to_string())
            .await
            .map_err(|source| ServeError::Subscribe { subject, source })?;
        subscriptions.push(subscription);
    }
    info!(methods = ?names, queue_group = WORKER_QUEUE_GROUP, "serving methods on NATS");

    let mut requests = futures::stream::select_all(subscriptions);
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            message = requests.next() => match message {
                Some(message) => {
                    in_flight.spawn(handle_message(nats.clone(), methods.clone(), message));
                }
                None => {
                    warn!("all method subscriptions closed; the NATS client is gone");
                    break;
                }
            },
            Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(err) = finished {
                    error!(error = %err, "request task failed");
                }
            }
        }
    }

    // Unsubscribe first, so the queue group sends new requests to other workers.
    drop(requests);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            abandoned = in_flight.len(),
            "requests still running after the shutdown grace period"
        );
        in_flight.abort_all();
    }
    // Push out the replies just published.
    if let Err(err) = nats.flush().await {
        debug!(error = %err, "flushing NATS at shutdown");
    }
    Ok(())
}

/// Answers one message; a message without a reply subject is a notification,
/// run for its effect and not answered.
async fn handle_message(nats: Client, methods: Methods, message: Message) {
    let method = message
        .subject
        .strip_prefix(RPC_PREFIX)
        .unwrap_or(&message.subject)
        .to_string();
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str().to_string())
            .unwrap_or_default()
    };
    let signer = header(HEADER_SIGNER);
    let request_id = header(HEADER_REQUEST_ID);
    let started = Instant::now();

    let answer = answer(&methods, &method, &message.payload).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match &answer.error_code {
        // No signer: a caller on the device itself, such as the container
        // health check every few seconds; routine, so not at info.
        None if signer.is_empty() => debug!(%method, elapsed_ms, "local rpc answered"),
        None => info!(%method, %signer, %request_id, elapsed_ms, "rpc answered"),
        Some(code) => {
            info!(%method, %signer, %request_id, elapsed_ms, error_code = code, "rpc answered with an error")
        }
    }

    let Some(reply) = message.reply else {
        return;
    };
    match nats.publish(reply.clone(), answer.body.into()).await {
        Ok(()) => {}
        Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
            // Say why instead of leaving the caller to time out.
            let too_large = error_response(
                answer.id,
                ErrorCode::InternalError,
                format!(
                    "the answer is larger than NATS carries ({err}); ask for less, e.g. a smaller tail"
                ),
            );
            if let Err(err) = nats.publish(reply, too_large.body.into()).await {
                warn!(%method, error = %err, "publishing the reply failed");
            }
        }
        Err(err) => warn!(%method, error = %err, "publishing the reply failed"),
    }
}

/// A JSON-RPC response ready to send.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The caller's id, as the caller sent it (null when it sent none).
    id: Value,
    /// `Some(code)` when the response is an error.
    error_code: Option<i64>,
    body: String,
}

/// Calls `method` with the JSON-RPC request in `payload` and returns the
/// response text, carrying the caller's id unchanged.
///
/// `method` is the one named by the subject; a request naming another one is
/// refused, so subject and payload cannot disagree about what runs.
pub(crate) async fn answer(methods: &Methods, method: &str, payload: &[u8]) -> Answer {
    let request: Value = match serde_json::from_slice(payload) {
        Ok(request) => request,
        Err(err) => {
            return error_response(
                Value::Null,
                ErrorCode::ParseError,
                format!("parse error: {err}"),
            )
        }
    };
    let Value::Object(mut request) = request else {
        return error_response(
            Value::Null,
            ErrorCode::InvalidRequest,
            "a request must be one JSON object",
        );
    };
    let id = request.remove("id").unwrap_or(Value::Null);
    if request.get("jsonrpc") != Some(&json!("2.0")) {
        return error_response(id, ErrorCode::InvalidRequest, r#"jsonrpc must be "2.0""#);
    }
    match request.get("method").and_then(Value::as_str) {
        Some(named) if named == method => {}
        Some(named) => {
            return error_response(
                id,
                ErrorCode::InvalidRequest,
                format!("method {named:?} does not match the subject {RPC_PREFIX}{method}"),
            )
        }
        None => return error_response(id, ErrorCode::InvalidRequest, "method must be a string"),
    }
    // jsonrpsee accepts only some id shapes (no negative or fractional numbers);
    // it gets a stand-in and the caller's id goes back into the response.
    request.insert("id".into(), json!(0));

    let response = match methods
        .raw_json_request(&Value::Object(request).to_string(), 1)
        .await
    {
        Ok((response, _subscription)) => response,
        Err(err) => {
            return error_response(
                id,
                ErrorCode::InvalidRequest,
                format!("invalid request: {err}"),
            )
        }
    };
    let mut response: Map<String, Value> = match serde_json::from_str(response.get()) {
        Ok(response) => response,
        Err(err) => {
            return error_response(
                id,
                ErrorCode::InternalError,
                format!("unreadable response: {err}"),
            )
        }
    };
    response.insert("id".into(), id.clone());
    let error_code = response.get("error").map(|error| {
        error
            .get("code")
            .and_then(Value::as_i64)
            .unwrap_or_default()
    });
    Answer {
        id,
        error_code,
        body: Value::Object(response).to_string(),
    }
}

fn error_response(id: Value, code: ErrorCode, message: impl Into<String>) -> Answer {
    let error = RpcError::new(code, message);
    let body = json!({"jsonrpc": "2.0", "id": id, "error": error}).to_string();
    Answer {
        id,
        error_code: Some(code.code()),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonrpsee::RpcModule;

    fn echo_methods() -> Methods {
        let mut module = RpcModule::new(());
        module
            .register_method("test.echo", |params, _, _| {
                params.parse::<Value>().unwrap_or(Value::Null)
            })
            .unwrap();
        module.into()
    }

    async fn answer_json(method: &str, payload: &str) -> Value {
        let answer = answer(&echo_methods(), method, payload.as_bytes()).await;
        serde_json::from_str(&answer.body).unwrap()
    }

    #[tokio::test]
    async fn the_result_carries_the_callers_id_whatever_its_shape() {
        for id in [
            json!("c-17"),
            json!(-3),
            json!(1.5),
            json!(null),
            json!(9007199254740991u64),
        ] {
            let request =
                json!({"jsonrpc": "2.0", "id": id, "method": "test.echo", "params": {"a": 1}});
            let response = answer_json("test.echo", &request.to_string()).await;
            assert_eq!(
                response,
                json!({"jsonrpc": "2.0", "id": id, "result": {"a": 1}}),
                "{id}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_without_id_is_run_and_answered_with_a_null_id() {
        let response = answer_json("test.echo", r#"{"jsonrpc":"2.0","method":"test.echo"}"#).await;
        assert_eq!(response["id"], Value::Null);
        assert_eq!(response["result"], Value::Null);
    }

    #[tokio::test]
    async fn malformed_requests_get_the_right_error_codes() {
        let cases = [
            ("{not json", ErrorCode::ParseError, Value::Null),
            ("[1,2]", ErrorCode::InvalidRequest, Value::Null),
            (
                r#"{"id":1,"method":"test.echo"}"#,
                ErrorCode::InvalidRequest,
                json!(1),
            ),
            (
                r#"{"jsonrpc":"2.0","id":2}"#,
                ErrorCode::InvalidRequest,
                json!(2),
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"method":"other.method"}"#,
                ErrorCode::InvalidRequest,
                json!(3),
            ),
        ];
        for (payload, code, id) in cases {
            let response = answer_json("test.echo", payload).await;
            assert_eq!(response["error"]["code"], json!(code.code()), "{payload}");
            assert_eq!(response["id"], id, "{payload}");
            assert_eq!(response["jsonrpc"], "2.0");
        }
    }

    #[tokio::test]
    async fn an_unknown_method_is_method_not_found() {
        let response = answer_json(
            "no.such",
            r#"{"jsonrpc":"2.0","id":"x","method":"no.such"}"#,
        )
        .await;
        assert_eq!(
            response["error"]["code"],
            json!(ErrorCode::MethodNotFound.code())
        );
        assert_eq!(response["id"], "x");
    }
}
