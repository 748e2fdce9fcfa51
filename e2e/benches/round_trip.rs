//! One signed round trip through the whole stack, as an operator sees it:
//! HTTP API → cloud → signed WebSocket → bridge → NATS → worker → back.
//! `cargo bench -p e2e --bench round_trip`

use criterion::{criterion_group, criterion_main, Criterion};
use e2e::stack::{wait_for_device, RunningCloud, RunningDevice};
use serde_json::json;

fn round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (cloud, _device) = runtime.block_on(async {
        // The bench sends far more than the 250 messages a second a device
        // may sustain by default; lift that cap so it measures the path.
        let cloud = RunningCloud::start_with(|config| config.replay_per_device = 1_000_000).await;
        let device = RunningDevice::start("bench-device", &cloud).await;
        let api = cloud.api();
        wait_for_device(&api, "bench-device", "pending", |d| {
            d["status"] == "pending"
        })
        .await;
        api.accept("bench-device").await.expect("accept");
        testkit::wait_until("device live", e2e::stack::SOON, || async {
            api.rpc("bench-device", "rpc.discover", None, None)
                .await
                .ok()
        })
        .await;
        (cloud, device)
    });
    let api = cloud.api();
    let mut group = c.benchmark_group("signed round trip via the API");
    group.bench_function("rpc.discover (no Docker)", |b| {
        b.to_async(&runtime).iter(|| async {
            api.rpc("bench-device", "rpc.discover", None, None)
                .await
                .expect("rpc.discover");
        })
    });
    group.bench_function("containers.list (Docker)", |b| {
        b.to_async(&runtime).iter(|| async {
            api.rpc(
                "bench-device",
                "containers.list",
                Some(json!({"all": true})),
                None,
            )
            .await
            .expect("containers.list");
        })
    });
    group.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
