//! Everything a call crosses, started for a bench: the real cloud (the
//! binary, as child processes: one instance, or several sharing the fleet,
//! see [`Cloud`]), one real nats-server, devices made of real
//! bridges in this process (each with its own key and id, all on that one
//! nats-server, as if each had its own), accepted through the API, and one
//! real worker serving them all.
//!
//! Besides the worker's own methods, the worker serves `bench.echo`, which
//! answers with its params: a call can carry a marker of its own and see
//! it come back, through the whole path.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bridge::{Bridge, BridgeConfig};
use cloud::client::ApiClient;
use futures::StreamExt;
use protocol::{keys, Signer};
use serde_json::Value;
use testkit::nats::NatsServer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use worker::jsonrpsee::types::Params;
use worker::jsonrpsee::RpcModule;
use worker::WorkerConfig;

use crate::cloud_child::{self, Cloud};
use crate::procfs::{self, Usage};

/// The method that answers with its params.
pub const ECHO_METHOD: &str = "bench.echo";

/// How long the fleet may take to connect, be accepted and answer.
const FLEET_READY: Duration = Duration::from_secs(120);
/// Accept calls in flight at once, as a script accepting a fleet would.
const ACCEPTS_IN_FLIGHT: usize = 16;

/// The running stack; stopped (and its processes killed) on drop.
pub struct Stack {
    pub cloud: Cloud,
    /// The operator API, as the admin, of the first instance.
    pub api: ApiClient,
    /// The same, of each instance.
    pub apis: Arc<[ApiClient]>,
    /// The devices' ids, all accepted and live.
    pub devices: Arc<[String]>,
    nats: NatsServer,
    nats_pid: u32,
    shutdown: CancellationToken,
    /// The worker and the bridges: each runs until shutdown.
    parts: JoinSet<anyhow::Result<()>>,
}

impl Stack {
    /// Starts the stack with `devices` devices named `<bench>-00001`, ...,
    /// and a cloud of `instances` instances, each device connecting to them
    /// in turn; returns once each device has answered a call.
    pub async fn start(bench: &str, devices: usize, instances: usize) -> anyhow::Result<Stack> {
        let limits = cloud_child::raised_limits();
        println!(
            "{bench}: {devices} devices from 127.0.0.1; {}",
            Cloud::describe(instances, &limits)
        );
        let cloud = Cloud::start(instances, &limits).await?;
        let apis = cloud
            .instances
            .iter()
            .map(|instance| instance.api())
            .collect::<anyhow::Result<Arc<[_]>>>()?;
        let api = apis[0].clone();
        let nats = NatsServer::start().await;
        let nats_pid = procfs::child("nats-server", &nats.port().to_string())
            .context("no nats-server child")?;
        let shutdown = CancellationToken::new();
        let mut parts = JoinSet::new();
        parts.spawn(serve_worker(connect(&nats).await?, shutdown.clone()));
        let devices: Arc<[String]> = (1..=devices).map(|n| format!("{bench}-{n:05}")).collect();
        for (n, id) in devices.iter().enumerate() {
            let endpoint = in_turn(&cloud.instances, n as u64).endpoint();
            let config = BridgeConfig::new(
                endpoint.url,
                Signer::new(id, keys::generate()),
                endpoint.cloud_id,
                endpoint.public_key,
            );
            parts.spawn(Bridge::new(config, connect(&nats).await?).run(shutdown.clone()));
        }
        let stack = Stack {
            cloud,
            api,
            apis,
            devices,
            nats,
            nats_pid,
            shutdown,
            parts,
        };
        stack.accept_fleet().await?;
        Ok(stack)
    }

    /// What each process of the stack has used so far, by name: the
    /// cloud's (see [`Cloud::usages`]), the devices' nats-server and this
    /// bench. Fails first if a process died, saying which.
    pub fn usages(&mut self) -> anyhow::Result<Vec<(String, Usage)>> {
        self.check_running()?;
        let mut usages = self.cloud.usages()?;
        usages.push(("nats".to_owned(), procfs::usage(self.nats_pid)?));
        usages.push(("bench".to_owned(), procfs::usage(std::process::id())?));
        Ok(usages)
    }

    /// Fails if a process died or a part of the stack stopped.
    fn check_running(&mut self) -> anyhow::Result<()> {
        self.cloud.check_running()?;
        if !procfs::is_running(self.nats_pid) {
            bail!("the devices' nats-server (on {}) died", self.nats.url());
        }
        if let Some(stopped) = self.parts.try_join_next() {
            stopped?.context("a bridge or the worker stopped")?;
            bail!("a bridge or the worker stopped");
        }
        Ok(())
    }

    /// Checks that everything ran to the end, then stops it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.check_running()?;
        self.shutdown.cancel();
        while let Some(part) = self.parts.join_next().await {
            part??;
        }
        Ok(())
    }

    /// Accepts every device once it is pending, then waits until each one
    /// answers a call.
    async fn accept_fleet(&self) -> anyhow::Result<()> {
        let api = &self.api;
        let count = self.devices.len();
        testkit::wait_until("every device pending", FLEET_READY, || async {
            let listed = api.devices().await.ok()?;
            let pending = listed["devices"]
                .as_array()?
                .iter()
                .filter(|device| device["status"] == "pending" && device["online"] == true)
                .count();
            (pending == count).then_some(())
        })
        .await;
        let accepted: Vec<_> = futures::stream::iter(self.devices.iter())
            .map(|id| async move {
                api.accept(id)
                    .await
                    .with_context(|| format!("accepting {id}"))
            })
            .buffer_unordered(ACCEPTS_IN_FLIGHT)
            .collect()
            .await;
        accepted.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        futures::stream::iter(self.devices.iter())
            .for_each_concurrent(ACCEPTS_IN_FLIGHT, |id| async move {
                testkit::wait_until("every device live", FLEET_READY, || async {
                    api.rpc(id, "rpc.discover", None, None).await.ok()
                })
                .await;
            })
            .await;
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The one of `items` that number `n` goes to: each in turn, so that the
/// load is spread evenly (calls over the devices; devices and calls over
/// the cloud's instances, as a load balancer spreads them).
pub fn in_turn<T>(items: &[T], n: u64) -> &T {
    &items[(n % items.len() as u64) as usize]
}

/// The worker's methods (which need the Docker engine only when called) and
/// `bench.echo`, served on NATS until `shutdown`.
async fn serve_worker(nats: async_nats::Client, shutdown: CancellationToken) -> anyhow::Result<()> {
    let docker = worker::connect_docker(None).context("no Docker client")?;
    let mut methods = worker::rpc_module(docker, &WorkerConfig::default());
    let mut echo = RpcModule::new(());
    echo.register_method(ECHO_METHOD, |params: Params, _, _| params.parse::<Value>())?;
    methods.merge(echo)?;
    worker::serve(nats, methods, shutdown).await?;
    Ok(())
}

async fn connect(nats: &NatsServer) -> anyhow::Result<async_nats::Client> {
    async_nats::connect(nats.url())
        .await
        .with_context(|| format!("cannot connect to nats-server at {}", nats.url()))
}
