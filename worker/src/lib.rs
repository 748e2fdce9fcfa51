//! The Docker-backed worker: JSON-RPC methods over the Docker API, served on the
//! device-local NATS (`rpc.<method>`), plus reports the worker sends to the cloud
//! on its own (periodic health, container events) and calls it makes to the cloud.
//!
//! The methods live in an in-process [`jsonrpsee::RpcModule`] ([`rpc_module`]),
//! so they can be tested without NATS; [`serve`] is only the transport.
#![forbid(unsafe_code)]

pub mod cloud;
pub mod config;
mod engine;
mod error;
pub mod methods;
pub mod report;
pub mod serve;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use cloud::{call_cloud, ping_cloud, CloudCallError};
pub use config::WorkerConfig;
pub use engine::connect_docker;
pub use methods::rpc_module;
pub use serve::{connect_nats, nats_options, serve, NatsLogin, ServeError};

// The crates whose types this API uses, so callers need not match versions.
pub use {bollard, jsonrpsee};

/// Runs the worker until `shutdown` is cancelled: serves the methods, publishes
/// health and container events, and pings the cloud whenever the bridge goes live.
///
/// A failure of one part (say, subscribing) stops the others and is returned.
pub async fn run(
    nats: async_nats::Client,
    docker: bollard::Docker,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Answers go out as NATS messages: a log answer is cut to fit the
    // server's max_payload (known once connected; 1 MB until then).
    let limit_of = nats.clone();
    let methods: jsonrpsee::Methods =
        methods::rpc_module_with_answer_limit(docker.clone(), &config, move || {
            limit_of.max_payload()
        })
        .into();
    // A part that fails stops the others, so the worker exits instead of half-running.
    let stop = shutdown.child_token();
    let stop_on_error = |result: anyhow::Result<()>| {
        if result.is_err() {
            stop.cancel();
        }
        result
    };
    let (served, watched, (), ()) = tokio::join!(
        async {
            let result = serve(nats.clone(), methods.clone(), stop.clone()).await;
            stop_on_error(result.context("serving methods over NATS"))
        },
        async {
            let result =
                cloud::ping_when_bridge_live(&nats, config.cloud_call_timeout, stop.clone()).await;
            stop_on_error(result.context("watching bridge.status"))
        },
        report::publish_health(
            nats.clone(),
            methods.clone(),
            config.health_interval,
            stop.clone()
        ),
        report::forward_container_events(nats.clone(), docker, stop.clone()),
    );
    served.and(watched)
}
