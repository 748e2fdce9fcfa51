//! One signed round trip through the whole stack, as an operator sees it:
//! HTTP API → cloud → signed WebSocket → bridge → NATS → worker → back.
//! `cargo bench -p e2e --bench round_trip`

use criterion::{criterion_group, criterion_main, Criterion};
use e2e::stack::{RunningCloud, RunningDevice};
use serde_json::json;

fn round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (cloud, _device) = runtime.block_on(async {
        // The bench sends far more than the 250 messages a second a device
        // may sustain by default; lift that cap so it measures the path.
        let cloud = RunningCloud::start_with(|config| config.replay_per_device = 1_000_000).await;
        let device = RunningDevice::start("bench-device", &cloud).await;
        let api = cloud.api();
        api.wait_for_device("bench-device", "pending", |d| d["status"] == "pending")
            .await;
        api.accept("bench-device").await;
        testkit::wait_until("device live", e2e::stack::SOON, || async {
            (api.rpc("bench-device", "rpc.discover", json!({}))
                .await
                .status
                == 200)
                .then_some(())
        })
        .await;
        (cloud, device)
    });
    let api = cloud.api();
    let mut group = c.benchmark_group("signed round trip via the API");
    group.bench_function("rpc.discover (no Docker)", |b| {
        b.to_async(&runtime).iter(|| async {
            let reply = api.rpc("bench-device", "rpc.discover", json!({})).await;
            assert_eq!(reply.status, 200);
        })
    });
    group.bench_function("containers.list (Docker)", |b| {
        b.to_async(&runtime).iter(|| async {
            let reply = api
                .rpc("bench-device", "containers.list", json!({"all": true}))
                .await;
            assert_eq!(reply.status, 200);
        })
    });
    group.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
