//! NATS transport for the methods: one queue subscription per served method on
//! `rpc.<method>`, each request answered from its own task.
//!
//! Subscribing per method, not to `rpc.>`, is what lets the bridge turn "no
//! responders" into "method not found": an unserved method has no subscriber.
//!
//! A request goes to jsonrpsee as it came off NATS, and jsonrpsee's answer
//! goes back as jsonrpsee wrote it. jsonrpsee reads requests whose id is a
//! string, null or an integer from 0 to 2^64−1; anything else (a negative or
//! fractional id, no id at all, no JSON) it cannot read, and the worker
//! answers it with an error saying why.

use std::time::{Duration, Instant};

use async_nats::{Client, Message, PublishErrorKind};
use futures::StreamExt;
use jsonrpsee::Methods;
use protocol::nats::{HEADER_REQUEST_ID, HEADER_SIGNER, RPC_PREFIX, WORKER_QUEUE_GROUP};
use protocol::{check_method_name, ErrorCode, Refusal, RpcError};
use serde_json::{json, Value};
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
    for &name in &names {
        // The worker's own names, checked before they become subjects: one
        // with a wildcard would take requests meant for other methods.
        check_method_name(name)
            .map_err(|refusal| ServeError::BadMethodName(name.to_string(), refusal))?;
        let subject = format!("{RPC_PREFIX}{name}");
        let subscription = nats
            .queue_subscribe(subject.clone(), WORKER_QUEUE_GROUP.to_string())
            .await
            .map_err(|source| ServeError::Subscribe { subject, source })?;
        let served = only(&methods, name);
        subscriptions.push(subscription.map(move |message| (served.clone(), message)));
    }
    info!(methods = ?names, queue_group = WORKER_QUEUE_GROUP, "serving methods on NATS");

    let mut requests = futures::stream::select_all(subscriptions);
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            request = requests.next() => match request {
                Some((served, message)) => {
                    in_flight.spawn(handle_message(nats.clone(), served, message));
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

/// `methods` cut down to the one method `name`: all that a request on
/// `rpc.<name>` can run. The subject, not the method a request names, decides
/// what runs, because the broker grants publishing per subject: the bridge
/// may publish on every `rpc.>`, but the worker's own user only on
/// `rpc.rpc.discover`, for its health check (`scripts/ensure-device-nats.sh`),
/// and a thief of that password must not run `containers.stop` through it.
/// A request naming another method is "method not found" on that subject.
fn only(methods: &Methods, name: &'static str) -> Methods {
    let callback = methods
        .method(name)
        .expect("a name listed by the methods")
        .clone();
    let mut only = Methods::new();
    only.verify_and_insert(name, callback)
        .expect("one method, inserted once");
    only
}

/// Answers one message with what `served` (its subject's method) answers. One
/// without a reply subject is run for its effect and not answered.
async fn handle_message(nats: Client, served: Methods, message: Message) {
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

    let answer = answer(&served, &message.payload).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match answer.refused {
        // No signer: a caller on the device itself, such as the container
        // health check every few seconds; routine, so not at info.
        None if signer.is_empty() => debug!(%method, elapsed_ms, "local rpc answered"),
        None => info!(%method, %signer, %request_id, elapsed_ms, "rpc answered"),
        Some(code) => {
            info!(%method, %signer, %request_id, elapsed_ms, error_code = code.code(), "rpc refused: not a request jsonrpsee reads")
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
                caller_id(&message.payload),
                ErrorCode::InternalError,
                format!(
                    "the answer is larger than NATS carries ({err}); ask for less, e.g. a smaller tail"
                ),
            );
            if let Err(err) = nats.publish(reply, too_large.into()).await {
                warn!(%method, error = %err, "publishing the reply failed");
            }
        }
        Err(err) => warn!(%method, error = %err, "publishing the reply failed"),
    }
}

/// A JSON-RPC response ready to send.
struct Answer {
    body: String,
    /// The error code when jsonrpsee could not read the request and the worker
    /// answered for it; jsonrpsee's own answers, results and errors alike, go
    /// out unread.
    refused: Option<ErrorCode>,
}

/// jsonrpsee's answer to the request in `payload`, or the worker's error when
/// jsonrpsee cannot read it as a request.
async fn answer(methods: &Methods, payload: &[u8]) -> Answer {
    let Ok(request) = std::str::from_utf8(payload) else {
        return refusal(payload, ErrorCode::ParseError, "parse error: not UTF-8");
    };
    match methods.raw_json_request(request, 1).await {
        Ok((response, _subscription)) => Answer {
            body: Box::<str>::from(response).into_string(),
            refused: None,
        },
        // jsonrpsee reads the request with serde_json: a syntax error is one in
        // the JSON itself, any other error one in the request's shape.
        Err(err) if err.is_syntax() || err.is_eof() => refusal(
            payload,
            ErrorCode::ParseError,
            format!("parse error: {err}"),
        ),
        Err(err) => refusal(
            payload,
            ErrorCode::InvalidRequest,
            format!("invalid request: {err}"),
        ),
    }
}

fn refusal(payload: &[u8], code: ErrorCode, message: impl Into<String>) -> Answer {
    Answer {
        body: error_response(caller_id(payload), code, message),
        refused: Some(code),
    }
}

/// The id of the request in `payload`, read leniently to answer a request the
/// worker cannot serve as JSON-RPC asks (with the caller's id); null when
/// there is none to read.
fn caller_id(payload: &[u8]) -> Value {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(mut request)) => request.remove("id").unwrap_or_default(),
        _ => Value::Null,
    }
}

fn error_response(id: Value, code: ErrorCode, message: impl Into<String>) -> String {
    let error = RpcError::new(code, message);
    json!({"jsonrpc": "2.0", "id": id, "error": error}).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use jsonrpsee::RpcModule;

    /// `test.echo` answers its params; `test.count` counts its calls in `runs`.
    fn test_methods(runs: Arc<AtomicUsize>) -> Methods {
        let mut module = RpcModule::new(());
        module
            .register_method("test.echo", |params, _, _| {
                params.parse::<Value>().unwrap_or(Value::Null)
            })
            .unwrap();
        module
            .register_method("test.count", move |_, _, _| {
                runs.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        module.into()
    }

    fn echo_methods() -> Methods {
        test_methods(Arc::default())
    }

    async fn answer_json(payload: &str) -> Value {
        let answer = answer(&echo_methods(), payload.as_bytes()).await;
        serde_json::from_str(&answer.body).unwrap()
    }

    #[tokio::test]
    async fn jsonrpsees_answer_goes_out_as_it_wrote_it_with_the_callers_id() {
        let methods = echo_methods();
        for id in [
            r#""c-17""#,
            r#""quote \" and \u00e9""#,
            "null",
            "0",
            "9007199254740991",
        ] {
            let request =
                format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"test.echo","params":{{"a":1}}}}"#);
            let answer = answer(&methods, request.as_bytes()).await;
            let (written, _) = methods.raw_json_request(&request, 1).await.unwrap();
            assert_eq!(answer.body, written.get(), "{id}");
            assert_eq!(answer.refused, None);
            let id: Value = serde_json::from_str(id).unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(&answer.body).unwrap(),
                json!({"jsonrpc": "2.0", "id": id, "result": {"a": 1}}),
                "{id}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_jsonrpsee_cannot_read_is_refused_with_the_callers_id_and_not_run() {
        let runs = Arc::new(AtomicUsize::new(0));
        let methods = test_methods(runs.clone());
        // jsonrpsee reads no negative or fractional id, and no request without one.
        for (id, request) in [
            (
                json!(-3),
                r#"{"jsonrpc":"2.0","id":-3,"method":"test.count"}"#,
            ),
            (
                json!(1.5),
                r#"{"jsonrpc":"2.0","id":1.5,"method":"test.count"}"#,
            ),
            (Value::Null, r#"{"jsonrpc":"2.0","method":"test.count"}"#),
        ] {
            let answer = answer(&methods, request.as_bytes()).await;
            let response: Value = serde_json::from_str(&answer.body).unwrap();
            assert_eq!(
                response["error"]["code"],
                json!(ErrorCode::InvalidRequest.code()),
                "{request}"
            );
            assert_eq!(response["id"], id, "{request}");
            assert_eq!(answer.refused, Some(ErrorCode::InvalidRequest));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 0);
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
        ];
        for (payload, code, id) in cases {
            let response = answer_json(payload).await;
            assert_eq!(response["error"]["code"], json!(code.code()), "{payload}");
            assert_eq!(response["id"], id, "{payload}");
            assert_eq!(response["jsonrpc"], "2.0");
        }
        let not_utf8 = answer(&echo_methods(), b"{\"jsonrpc\":\"2.0\",\"id\":\"\xff\"}").await;
        assert_eq!(not_utf8.refused, Some(ErrorCode::ParseError));
    }

    #[tokio::test]
    async fn an_unknown_method_is_method_not_found() {
        let response = answer_json(r#"{"jsonrpc":"2.0","id":"x","method":"no.such"}"#).await;
        assert_eq!(
            response["error"]["code"],
            json!(ErrorCode::MethodNotFound.code())
        );
        assert_eq!(response["id"], "x");
    }

    #[tokio::test]
    async fn the_subject_decides_what_runs_not_the_method_a_request_names() {
        let runs = Arc::new(AtomicUsize::new(0));
        let on_echo = only(&test_methods(runs.clone()), "test.echo");
        let answer = answer(
            &on_echo,
            br#"{"jsonrpc":"2.0","id":3,"method":"test.count"}"#,
        )
        .await;
        let response: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(
            response["error"]["code"],
            json!(ErrorCode::MethodNotFound.code())
        );
        assert_eq!(response["id"], 3);
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }
}
