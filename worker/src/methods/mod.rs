//! The worker's JSON-RPC methods, registered in one in-process module that any
//! transport (NATS in production, direct calls in tests) can drive.

mod containers;
mod health;
mod info;
mod logs;

use std::collections::BTreeMap;
use std::sync::Arc;

use bollard::Docker;
use jsonrpsee::types::{ErrorObjectOwned, Params};
use jsonrpsee::RpcModule;
use protocol::ErrorCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::WorkerConfig;
use crate::engine::Engine;
use crate::error::rpc_error;

pub use containers::PROTECTED_SERVICES;
pub use logs::{LogCollector, LogLine, LogStream, Logs, MAX_TAIL};

/// Name of the method that lists the methods served here.
pub const DISCOVER_METHOD: &str = "rpc.discover";

/// The largest answer the transport carries, in bytes, asked at each call: a
/// NATS server states its `max_payload` on connect, and another server after a
/// reconnect may state another.
type AnswerLimit = Arc<dyn Fn() -> usize + Send + Sync>;

/// Room left in a transport's limit for the JSON-RPC response around a
/// method's result: `{"jsonrpc":"2.0","id":…,"result":…}` is 31 bytes plus the
/// caller's id, so ids up to about 990 bytes fit. (An answer that still does
/// not fit is refused by the transport with an error, not dropped.)
pub const RESPONSE_ENVELOPE_RESERVE: usize = 1024;

/// What every method handler can reach.
pub(crate) struct MethodContext {
    engine: Engine,
    host: health::HostProbe,
    /// Cap on the serialized size of one `containers.logs` answer.
    log_max_bytes: usize,
    /// What the transport carries, when it has a limit.
    answer_limit: Option<AnswerLimit>,
    /// The device stack's Compose project, whose own containers
    /// `containers.stop` refuses.
    stack_project: Option<String>,
}

impl MethodContext {
    /// The size a `containers.logs` result may have: `log_max_bytes`, and
    /// less when the transport's limit (minus the response envelope) is lower.
    fn log_answer_cap(&self) -> usize {
        let transport = self.answer_limit.as_ref().map_or(usize::MAX, |limit| {
            limit().saturating_sub(RESPONSE_ENVELOPE_RESERVE)
        });
        self.log_max_bytes.min(transport)
    }
}

/// Builds the module serving `containers.*`, `system.health`, `system.info`
/// and `rpc.discover`,
/// for a transport without a size limit (in-process calls).
pub fn rpc_module(docker: Docker, config: &WorkerConfig) -> RpcModule<()> {
    build_module(docker, config, None)
}

/// Like [`rpc_module`], for a transport that carries answers of at most
/// `answer_limit()` bytes (over NATS: `|| client.max_payload()`):
/// `containers.logs` truncates its answer to fit.
pub fn rpc_module_with_answer_limit(
    docker: Docker,
    config: &WorkerConfig,
    answer_limit: impl Fn() -> usize + Send + Sync + 'static,
) -> RpcModule<()> {
    build_module(docker, config, Some(Arc::new(answer_limit)))
}

fn build_module(
    docker: Docker,
    config: &WorkerConfig,
    answer_limit: Option<AnswerLimit>,
) -> RpcModule<()> {
    match &config.stack_project {
        Some(project) => info!(
            stack_project = %project,
            "containers.stop refuses this stack's bridge, nats and worker containers"
        ),
        None => warn!(
            "STACK_PROJECT is not set: containers.stop will stop this stack's own bridge, \
             nats and worker containers too"
        ),
    }
    let context = MethodContext {
        engine: Engine::new(docker),
        host: health::HostProbe::new(),
        log_max_bytes: config.log_max_bytes,
        answer_limit,
        stack_project: config.stack_project.clone(),
    };
    let mut module = Methods {
        module: RpcModule::new(context),
        params: BTreeMap::new(),
    };
    module.register("containers.list", containers::list);
    module.register("containers.inspect", containers::inspect);
    module.register("containers.start", containers::start);
    module.register("containers.stop", containers::stop);
    module.register("containers.restart", containers::restart);
    module.register("containers.logs", logs::logs);
    module.register("system.health", health::system_health);
    module.register("system.info", info::system_info);

    let Methods {
        mut module,
        mut params,
    } = module;
    let mut names: Vec<&'static str> = module.method_names().collect();
    names.push(DISCOVER_METHOD);
    names.sort_unstable();
    params.insert(DISCOVER_METHOD, &[]);
    let discovered = Discovered {
        methods: names,
        params,
    };
    module
        .register_method(DISCOVER_METHOD, move |_, _, _| {
            Ok::<_, ErrorObjectOwned>(discovered.clone())
        })
        .expect("rpc.discover is registered once");
    module.remove_context()
}

/// The answer of `rpc.discover`.
#[derive(Debug, Clone, Serialize)]
struct Discovered {
    methods: Vec<&'static str>,
    /// The names of each method's params (an object's members), for
    /// people and consoles; a method whose params are not named is absent.
    params: BTreeMap<&'static str, &'static [&'static str]>,
}

/// The module being built, and the param names of each method registered.
struct Methods {
    module: RpcModule<MethodContext>,
    params: BTreeMap<&'static str, &'static [&'static str]>,
}

impl Methods {
    /// Registers an async handler taking the method's parsed params.
    fn register<P, R, F, Fut>(&mut self, name: &'static str, handler: F)
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Clone + Send + 'static,
        F: Fn(Arc<MethodContext>, P) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R, ErrorObjectOwned>> + Send + 'static,
    {
        self.module
            .register_async_method(name, move |params, context, _| {
                let handler = handler.clone();
                async move { handler(context, parse_params(&params)?).await }
            })
            .unwrap_or_else(|_| panic!("method {name} is registered once"));
        if let Some(fields) = param_names::<P>() {
            self.params.insert(name, fields);
        }
    }
}

/// The member names of a params struct, as serde reads them (so they never
/// drift from the code): a deserializer that only notes the fields the
/// struct asks for, then stops. `None` for params that are not a struct.
fn param_names<P: DeserializeOwned>() -> Option<&'static [&'static str]> {
    use serde::de::{self, Visitor};

    #[derive(Debug)]
    struct Noted;
    impl std::fmt::Display for Noted {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names noted")
        }
    }
    impl std::error::Error for Noted {}
    impl de::Error for Noted {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Noted
        }
    }

    struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);
    impl<'de> de::Deserializer<'de> for FieldNames<'_> {
        type Error = Noted;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Noted> {
            Err(Noted)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Noted> {
            *self.0 = Some(fields);
            Err(Noted)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields = None;
    let _ = P::deserialize(FieldNames(&mut fields));
    fields
}

/// Parses params that must be an object or absent (`null` and absent mean `{}`),
/// so a method with only optional params can be called with none.
pub(crate) fn parse_params<P: DeserializeOwned>(params: &Params) -> Result<P, ErrorObjectOwned> {
    let text = match params.as_str().map(str::trim) {
        None | Some("null") => "{}",
        Some(text) => text,
    };
    if !text.starts_with('{') {
        return Err(rpc_error(
            ErrorCode::InvalidParams,
            "params must be an object (named params)",
        ));
    }
    serde_json::from_str(text)
        .map_err(|err| rpc_error(ErrorCode::InvalidParams, format!("invalid params: {err}")))
}

/// A container reference as Docker accepts it: an id or a name, optionally
/// with the leading `/` Docker lists names with. Checked because it becomes part
/// of a Docker API URL path, where `/` or `?` would address something else.
pub(crate) fn check_container_ref(container: &str) -> Result<&str, ErrorObjectOwned> {
    let name = container.strip_prefix('/').unwrap_or(container);
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if first_ok && rest_ok {
        Ok(name)
    } else {
        Err(rpc_error(
            ErrorCode::InvalidParams,
            format!("invalid container reference {container:?}: expected a container id or name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Example {
        container: String,
        #[serde(default)]
        all: bool,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct AllOptional {
        #[serde(default)]
        all: bool,
    }

    fn params(text: Option<&'static str>) -> Params<'static> {
        Params::new(text)
    }

    #[test]
    fn absent_and_null_params_mean_an_empty_object() {
        let absent: AllOptional = parse_params(&params(None)).unwrap();
        let null: AllOptional = parse_params(&params(Some("null"))).unwrap();
        assert_eq!(absent, AllOptional { all: false });
        assert_eq!(null, AllOptional { all: false });
    }

    #[test]
    fn object_params_are_parsed() {
        let parsed: Example =
            parse_params(&params(Some(r#"{"container":"web","all":true}"#))).unwrap();
        assert_eq!(
            parsed,
            Example {
                container: "web".into(),
                all: true
            }
        );
    }

    #[test]
    fn wrong_params_are_invalid_params_saying_what_is_wrong() {
        let cases = [
            (Some(r#"["web"]"#), "must be an object"),
            (Some("5"), "must be an object"),
            (None, "missing field `container`"),
            (
                Some(r#"{"container":"web","tial":3}"#),
                "unknown field `tial`",
            ),
            (Some(r#"{"container":7}"#), "invalid type"),
        ];
        for (text, expected) in cases {
            let err = parse_params::<Example>(&params(text)).unwrap_err();
            assert_eq!(
                i64::from(err.code()),
                ErrorCode::InvalidParams.code(),
                "{text:?}"
            );
            assert!(
                err.message().contains(expected),
                "{text:?}: {}",
                err.message()
            );
        }
    }

    #[test]
    fn container_refs_are_ids_or_names_only() {
        for ok in ["web", "/web", "my_app-1.2", "0123abcdef"] {
            assert!(check_container_ref(ok).is_ok(), "{ok}");
        }
        assert_eq!(check_container_ref("/web").unwrap(), "web");
        for bad in ["", "/", "../images/x", "a/b", "a?b", "-a", "a b", "é"] {
            assert!(check_container_ref(bad).is_err(), "{bad:?}");
        }
    }

    /// A module whose Docker engine refuses connections (nothing on port 1).
    fn module_without_docker() -> RpcModule<()> {
        let docker =
            Docker::connect_with_http("http://127.0.0.1:1", 5, bollard::API_DEFAULT_VERSION)
                .expect("an HTTP client needs no engine to be built");
        rpc_module(docker, &WorkerConfig::default())
    }

    async fn call(module: &RpcModule<()>, request: &str) -> serde_json::Value {
        let (response, _) = module.raw_json_request(request, 1).await.unwrap();
        serde_json::from_str(response.get()).unwrap()
    }

    #[tokio::test]
    async fn an_unreachable_docker_is_unavailable_not_a_crash() {
        let module = module_without_docker();
        let response = call(
            &module,
            r#"{"jsonrpc":"2.0","id":1,"method":"containers.list"}"#,
        )
        .await;
        assert_eq!(response["error"]["code"], ErrorCode::Unavailable.code());
        let message = response["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("docker unavailable: "), "{message}");
    }

    #[tokio::test]
    async fn health_is_reported_without_docker_and_says_why() {
        let module = module_without_docker();
        let response = call(
            &module,
            r#"{"jsonrpc":"2.0","id":1,"method":"system.health"}"#,
        )
        .await;
        let health = &response["result"];
        assert!(
            health["memory"]["total_bytes"].as_u64().unwrap() > 0,
            "{response}"
        );
        assert_eq!(health["containers_running"], serde_json::Value::Null);
        assert!(health["docker_error"]
            .as_str()
            .unwrap()
            .starts_with("docker unavailable"));
    }

    #[tokio::test]
    async fn discover_lists_every_method_sorted() {
        let module = module_without_docker();
        let response = call(
            &module,
            r#"{"jsonrpc":"2.0","id":1,"method":"rpc.discover"}"#,
        )
        .await;
        assert_eq!(
            response["result"]["methods"],
            serde_json::json!([
                "containers.inspect",
                "containers.list",
                "containers.logs",
                "containers.restart",
                "containers.start",
                "containers.stop",
                "rpc.discover",
                "system.health",
                "system.info",
            ])
        );
        // Each method's param names, as its params type declares them.
        let params = &response["result"]["params"];
        assert_eq!(params["containers.list"], json!(["all"]));
        assert_eq!(
            params["containers.stop"],
            json!(["container", "timeout_secs"])
        );
        assert_eq!(params["system.info"], json!([]));
        assert_eq!(params["rpc.discover"], json!([]));
        let logs = params["containers.logs"].as_array().unwrap();
        for name in ["container", "tail", "since", "until", "timestamps"] {
            assert!(logs.contains(&json!(name)), "{name} in {logs:?}");
        }
    }

    #[tokio::test]
    async fn system_info_is_answered_without_docker_and_says_why() {
        let module = module_without_docker();
        let response = call(
            &module,
            r#"{"jsonrpc":"2.0","id":1,"method":"system.info"}"#,
        )
        .await;
        let info = &response["result"];
        assert_eq!(info["source"], "worker", "{response}");
        assert!(info["kernel_version"]
            .as_str()
            .is_some_and(|k| !k.is_empty()));
        assert!(info["architecture"].as_str().is_some_and(|a| !a.is_empty()));
        assert_eq!(info["docker_version"], serde_json::Value::Null);
        assert!(info["docker_error"]
            .as_str()
            .unwrap()
            .starts_with("docker unavailable"));
    }

    #[tokio::test]
    async fn a_tail_over_the_maximum_is_refused_saying_the_maximum() {
        let module = module_without_docker();
        let request = |tail: u64| {
            json!({"jsonrpc": "2.0", "id": 1, "method": "containers.logs",
                   "params": {"container": "web", "tail": tail}})
            .to_string()
        };
        let response = call(&module, &request(MAX_TAIL + 1)).await;
        assert_eq!(response["error"]["code"], ErrorCode::InvalidParams.code());
        let message = response["error"]["message"].as_str().unwrap();
        assert!(message.contains("maximum of 10000 lines"), "{message}");
        // At the maximum, the call gets as far as Docker (absent here).
        let response = call(&module, &request(MAX_TAIL)).await;
        assert_eq!(response["error"]["code"], ErrorCode::Unavailable.code());
    }

    fn context(log_max_bytes: usize, answer_limit: Option<usize>) -> MethodContext {
        let docker =
            Docker::connect_with_http("http://127.0.0.1:1", 5, bollard::API_DEFAULT_VERSION)
                .unwrap();
        MethodContext {
            engine: Engine::new(docker),
            host: health::HostProbe::new(),
            log_max_bytes,
            answer_limit: answer_limit.map(|limit| Arc::new(move || limit) as AnswerLimit),
            stack_project: None,
        }
    }

    #[test]
    fn a_log_answer_fits_both_log_max_bytes_and_the_transport() {
        // In-process: log_max_bytes alone.
        assert_eq!(context(512 * 1024, None).log_answer_cap(), 512 * 1024);
        // NATS's 1 MB leaves log_max_bytes the lower.
        assert_eq!(
            context(512 * 1024, Some(1024 * 1024)).log_answer_cap(),
            512 * 1024
        );
        // A log_max_bytes above max_payload is cut to fit, envelope included.
        assert_eq!(
            context(8 * 1024 * 1024, Some(1024 * 1024)).log_answer_cap(),
            1024 * 1024 - RESPONSE_ENVELOPE_RESERVE
        );
        // A tiny max_payload leaves no room at all rather than wrapping around.
        assert_eq!(context(512 * 1024, Some(100)).log_answer_cap(), 0);
    }

    #[tokio::test]
    async fn a_bad_container_reference_is_refused_before_docker_is_asked() {
        let module = module_without_docker();
        let response = call(
            &module,
            r#"{"jsonrpc":"2.0","id":1,"method":"containers.inspect","params":{"container":"../images/json"}}"#,
        )
        .await;
        assert_eq!(response["error"]["code"], ErrorCode::InvalidParams.code());
    }
}
