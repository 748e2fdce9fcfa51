//! `floor`: what the parts of one call allow, measured in this process on
//! loopback, one round trip at a time, with the bytes of a real
//! `rpc.discover` call: a bare WebSocket round trip (tokio-tungstenite with
//! the cloud's and the bridge's buffer settings), a bare NATS request-reply
//! (one replying subscriber on a real nats-server), a bare HTTP round trip to
//! an axum route through the API client, and the cost of signing,
//! canonicalizing and verifying the call's request and response as the
//! cloud and the bridge do.
//!
//! The floor of one call is what it cannot do without: an HTTP round trip,
//! a WebSocket round trip, a NATS round trip, two signatures and two
//! verifications (p50 of each).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Json;
use cloud::client::ApiClient;
use futures::{SinkExt, StreamExt};
use protocol::nats::Relayed;
use protocol::{
    canonical_signing_bytes, keys, now_ms, parse_frame, Message, Peer, Remote, Side, Signer,
    DEFAULT_MAX_FRAME_BYTES,
};
use serde_json::{json, Map, Value};
use testkit::nats::NatsServer;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as Frame;
use worker::WorkerConfig;

use crate::latency::{round, Latencies, PERCENTILES};

/// Round trips of a smoke run.
const SMOKE_ROUND_TRIPS: u32 = 200;
/// Round trips made before measuring: connections, caches and allocators
/// warm up.
const WARM_UP: u32 = 100;
/// p50, p90 and p99.
const FLOOR_PERCENTILES: &[(&str, f64)] = PERCENTILES.split_at(3).0;
/// The ids a real call carries: the cloud's default signer id, the first
/// call id a cloud session hands out.
const CLOUD_ID: &str = "cloud-dashboard";
const DEVICE_ID: &str = "floor-device";
const CALL_ID: &str = "c-1";
const METHOD: &str = "rpc.discover";

#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    /// Round trips of each kind, one at a time (and operations of each
    /// signing step).
    #[arg(long, default_value_t = 5_000)]
    pub round_trips: u32,
    /// 200 round trips of each kind (for CI).
    #[arg(long)]
    pub smoke: bool,
}

pub async fn run(args: &FloorArgs) -> anyhow::Result<Map<String, Value>> {
    let times = match args.smoke {
        true => SMOKE_ROUND_TRIPS,
        false => args.round_trips,
    };
    let call = RealCall::new().await?;
    let (request_bytes, response_bytes) = (call.request_frame.len(), call.response_frame.len());
    println!(
        "floor: {times} round trips of each kind, one at a time, carrying a real {METHOD} \
         call (request frame {request_bytes} bytes, response frame {response_bytes} bytes)"
    );
    let in_floor = [
        ("ws_rtt", websocket_round_trips(&call, times).await?),
        ("nats_rtt", nats_round_trips(&call, times).await?),
        ("http_rtt", http_round_trips(&call, times).await?),
        ("sign_request", call.sign_request(times).await?),
        ("verify_request", call.verify_request(times).await?),
        ("sign_response", call.sign_response(times).await?),
        ("verify_response", call.verify_response(times).await?),
    ];
    // Part of signing and of verifying, shown on its own.
    let canonicalizing = [
        (
            "canonicalize_request",
            canonicalize(&call.request_frame, times).await?,
        ),
        (
            "canonicalize_response",
            canonicalize(&call.response_frame, times).await?,
        ),
    ];
    let floor_us: f64 = in_floor
        .iter()
        .map(|(_, latencies)| latencies.percentile_us(50.0))
        .sum();
    let mut figures = Map::new();
    figures.insert("floor_round_trips".into(), json!(times));
    figures.insert("floor_request_bytes".into(), json!(request_bytes));
    figures.insert("floor_response_bytes".into(), json!(response_bytes));
    for (name, latencies) in in_floor.iter().chain(&canonicalizing) {
        figures.extend(latencies.figures(name, FLOOR_PERCENTILES));
    }
    figures.insert("floor_p50_us".into(), json!(round(floor_us, 1)));
    Ok(figures)
}

/// Runs `round_trip` `WARM_UP` times, then `times` times timed.
async fn timed(
    times: u32,
    mut round_trip: impl AsyncFnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Latencies> {
    for _ in 0..WARM_UP {
        round_trip().await?;
    }
    let mut latencies = Latencies::default();
    for _ in 0..times {
        let started = Instant::now();
        round_trip().await?;
        latencies.record(started.elapsed());
    }
    Ok(latencies)
}

/// One `rpc.discover` call as the parts make it: the request the cloud
/// signs, the request the bridge relays to the worker, the worker's answer,
/// and the response the bridge signs.
struct RealCall {
    /// The cloud's end, talking to the device.
    cloud: Peer,
    /// The device's end, talking to the cloud.
    device: Peer,
    request: Message,
    request_frame: String,
    relayed: Relayed,
    worker_answer: String,
    /// What the API answers the operator with.
    result: Value,
    response: Message,
    response_frame: String,
}

impl RealCall {
    async fn new() -> anyhow::Result<RealCall> {
        let cloud_signer = Signer::new(CLOUD_ID, keys::generate());
        let device_signer = Signer::new(DEVICE_ID, keys::generate());
        let cloud = Side::cloud(Arc::new(cloud_signer.clone())).peer(Remote {
            id: DEVICE_ID.into(),
            key: device_signer.public_key(),
        });
        let device = Side::device(Arc::new(device_signer)).peer(Remote {
            id: CLOUD_ID.into(),
            key: cloud_signer.public_key(),
        });
        let request = Message::Request {
            id: json!(CALL_ID),
            method: METHOD.into(),
            params: None,
        };
        let request_frame = cloud.sign(&request, now_ms());
        let relayed = Relayed::request(CLOUD_ID, json!(CALL_ID), METHOD, None)?;
        // The real worker's answer; rpc.discover needs no Docker engine.
        let docker = worker::connect_docker(None)?;
        let methods = worker::rpc_module(docker, &WorkerConfig::default());
        let (answer, _) = methods.raw_json_request(&relayed.payload, 1).await?;
        let worker_answer = answer.get().to_owned();
        // The bridge reads the worker's answer strictly, then signs it.
        let result =
            match Message::from_value(parse_frame(&worker_answer, DEFAULT_MAX_FRAME_BYTES)?)? {
                Message::Response {
                    result: Ok(result), ..
                } => result,
                other => bail!("the worker answered {METHOD} with {other:?}"),
            };
        let response = Message::Response {
            id: json!(CALL_ID),
            result: Ok(result.clone()),
        };
        let response_frame = device.sign(&response, now_ms());
        Ok(RealCall {
            cloud,
            device,
            request,
            request_frame,
            relayed,
            worker_answer,
            result,
            response,
            response_frame,
        })
    }

    async fn sign_request(&self, times: u32) -> anyhow::Result<Latencies> {
        timed(times, async || {
            std::hint::black_box(self.cloud.sign(&self.request, now_ms()));
            Ok(())
        })
        .await
    }

    /// Parse, signature and meta checks, as the bridge receives a request
    /// (the replay guard's bookkeeping, one map insertion, aside).
    async fn verify_request(&self, times: u32) -> anyhow::Result<Latencies> {
        timed(times, async || {
            self.device
                .receive(&self.request_frame, now_ms(), None)
                .map_err(|refused| refused.refusal)?;
            Ok(())
        })
        .await
    }

    async fn sign_response(&self, times: u32) -> anyhow::Result<Latencies> {
        timed(times, async || {
            std::hint::black_box(self.device.sign(&self.response, now_ms()));
            Ok(())
        })
        .await
    }

    async fn verify_response(&self, times: u32) -> anyhow::Result<Latencies> {
        timed(times, async || {
            self.cloud
                .receive(&self.response_frame, now_ms(), None)
                .map_err(|refused| refused.refusal)?;
            Ok(())
        })
        .await
    }
}

/// The RFC 8785 form of a frame without its signature: the bytes signed.
async fn canonicalize(frame: &str, times: u32) -> anyhow::Result<Latencies> {
    let mut unsigned = parse_frame(frame, DEFAULT_MAX_FRAME_BYTES)?;
    unsigned["meta"]
        .as_object_mut()
        .context("a signed frame has meta")?
        .remove("signature");
    timed(times, async || {
        std::hint::black_box(canonical_signing_bytes(&unsigned));
        Ok(())
    })
    .await
}

/// The cloud's request frame out, the device's response frame back, over a
/// WebSocket whose server end has the cloud's `/ws/device` settings (4 KiB
/// read buffer, writes unbuffered) and whose client end the bridge's (8 KiB,
/// unbuffered), both without Nagle's delay.
async fn websocket_round_trips(call: &RealCall, times: u32) -> anyhow::Result<Latencies> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}", listener.local_addr()?);
    let response = call.response_frame.clone();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0);
        let mut socket = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
        while let Some(frame) = socket.next().await {
            if let Frame::Text(_) = frame? {
                socket.send(Frame::text(response.clone())).await?;
            }
        }
        anyhow::Ok(())
    });
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    let latencies = timed(times, async || {
        socket.send(Frame::text(call.request_frame.clone())).await?;
        match socket.next().await.context("the echo server closed")?? {
            Frame::Text(_) => Ok(()),
            other => bail!("the echo server answered {other:?}"),
        }
    })
    .await?;
    socket.close(None).await?;
    server.await??;
    Ok(latencies)
}

/// The relayed request out, the worker's answer back, through a real
/// nats-server to one subscriber that replies at once.
async fn nats_round_trips(call: &RealCall, times: u32) -> anyhow::Result<Latencies> {
    let server = NatsServer::start().await;
    let replier = server.client().await;
    let requester = server.client().await;
    let mut requests = replier.subscribe(call.relayed.subject.clone()).await?;
    // The subscription exists at the server only once the replier's PING has
    // been answered; a request sent before that finds no responders.
    replier.flush().await?;
    let answer = call.worker_answer.clone();
    let replying = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let reply = request.reply.context("a request without a reply subject")?;
            replier.publish(reply, answer.clone().into()).await?;
        }
        anyhow::Ok(())
    });
    let latencies = timed(times, async || {
        let payload = call.relayed.payload.clone();
        requester
            .request(call.relayed.subject.clone(), payload.into())
            .await?;
        Ok(())
    })
    .await?;
    replying.abort();
    Ok(latencies)
}

/// The API client's call, answered at once by an axum route with the real
/// call's result.
async fn http_round_trips(call: &RealCall, times: u32) -> anyhow::Result<Latencies> {
    let answer = json!({ "result": call.result });
    let app = axum::Router::new().route(
        "/api/v1/devices/{id}/rpc",
        post(move || {
            let answer = answer.clone();
            async move { Json(answer) }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    // As the cloud's server does, without Nagle's delay.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let api = ApiClient::new(&url, "floor-token", Duration::from_secs(10));
    let latencies = timed(times, async || {
        api.rpc(DEVICE_ID, METHOD, None, None).await?;
        Ok(())
    })
    .await;
    server.abort();
    latencies
}
