//! Every worker method with any params, as a caller on the device's NATS
//! could send them: the worker answers each with a result or a JSON-RPC
//! error and never panics. Docker is an address where nothing listens, so
//! the params are checked for real and nothing is ever started or stopped.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use worker::bollard::{self, Docker};
use worker::jsonrpsee::RpcModule;

/// One runtime and module for every input: building them is the slow part.
static WORKER: OnceLock<(tokio::runtime::Runtime, RpcModule<()>)> = OnceLock::new();

const METHODS: [&str; 8] = [
    "containers.list",
    "containers.inspect",
    "containers.logs",
    "containers.start",
    "containers.stop",
    "containers.restart",
    "system.health",
    "rpc.discover",
];

fuzz_target!(|input: (u8, &str)| {
    let (which, params) = input;
    let Ok(params) = serde_json::from_str::<serde_json::Value>(params) else {
        return;
    };
    let method = METHODS[usize::from(which) % METHODS.len()];
    let request = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (runtime, module) = WORKER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let docker = runtime.block_on(async {
            Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION)
                .expect("client")
        });
        let module = worker::rpc_module(docker, &worker::WorkerConfig::default());
        (runtime, module)
    });
    runtime.block_on(async {
        let (answer, _) = module
            .raw_json_request(&request.to_string(), 1)
            .await
            .expect("the module answers");
        let answer: serde_json::Value = serde_json::from_str(answer.get()).expect("JSON");
        assert!(answer.get("result").is_some() || answer.get("error").is_some());
    });
});
