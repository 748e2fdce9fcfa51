//! Cloud → device calls through the REST API and what each failure looks
//! like; device → cloud notifications landing in the registry.

mod support;

use std::time::{Duration, Instant};

use cloud::client::ApiClient;
use protocol::{ErrorCode, Message, RpcError};
use reqwest::Method;
use serde_json::{json, Value};
use support::{wait_until, TestCloud};

/// `POST /devices/{id}/rpc` with `body`: the status and the answer.
async fn api_rpc(api: &ApiClient, id: &str, body: Value) -> (u16, Value) {
    api.request(Method::POST, &format!("/devices/{id}/rpc"), Some(&body))
        .await
        .unwrap()
}

#[tokio::test]
async fn an_api_rpc_reaches_the_device_and_its_answer_comes_back() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let call = {
        let api = cloud.api();
        let body = json!({"method": "containers.list", "params": {"all": true}});
        tokio::spawn(async move { api_rpc(&api, "dev-1", body).await })
    };
    let Message::Request { id, method, params } = device.recv().await else {
        panic!("expected a request");
    };
    assert_eq!(
        (method.as_str(), params),
        ("containers.list", Some(json!({"all": true})))
    );
    device
        .send_message(&Message::result(
            id,
            json!([{"id": "abc", "state": "running"}]),
        ))
        .await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"result": [{"id": "abc", "state": "running"}]}));
}

#[tokio::test]
async fn a_device_error_is_passed_through() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let call = {
        let state = cloud.state.clone();
        tokio::spawn(async move {
            state
                .devices()
                .fleet()
                .call(
                    "dev-1",
                    "containers.logs",
                    Some(json!({"container": "x"})),
                    Duration::from_secs(5),
                )
                .await
        })
    };
    let Message::Request { id, .. } = device.recv().await else {
        panic!("expected a request");
    };
    let error = RpcError::new(ErrorCode::InvalidParams, "no such container: x");
    device
        .send_message(&Message::error(id, error.clone()))
        .await;
    let failure = call.await.unwrap().unwrap_err();
    assert_eq!(failure.kind(), cloud::CallErrorKind::DeviceError);
    assert!(matches!(failure, cloud::CallError::Device(e) if e == error));
}

#[tokio::test]
async fn the_api_maps_device_errors_to_502_with_the_rpc_error() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let answer = tokio::spawn(async move {
        let Message::Request { id, .. } = device.recv().await else {
            panic!("expected a request");
        };
        device
            .send_message(&Message::error(
                id,
                RpcError::new(ErrorCode::MethodNotFound, "nope"),
            ))
            .await;
        device
    });
    let (status, body) = api_rpc(&cloud.api(), "dev-1", json!({"method": "x.y"})).await;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["kind"], "device_error");
    assert_eq!(body["error"]["rpc_error"]["code"], -32601);
    assert_eq!(body["error"]["rpc_error"]["message"], "nope");
    answer.await.unwrap();
}

#[tokio::test]
async fn unknown_device_is_404() {
    let cloud = TestCloud::start().await;
    let (status, body) = api_rpc(&cloud.api(), "nobody", json!({"method": "a.b"})).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["kind"], "unknown_device");
}

#[tokio::test]
async fn pending_device_is_409() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.connect("dev-1").await;
    device.authenticate().await;
    let (status, body) = api_rpc(&cloud.api(), "dev-1", json!({"method": "a.b"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["kind"], "not_accepted");
}

#[tokio::test]
async fn offline_device_is_503() {
    let cloud = TestCloud::start().await;
    let device = cloud.accepted_device("dev-1").await;
    device.drop_connection();
    wait_until("the device is offline", || async {
        !cloud.state.devices().fleet().is_online("dev-1")
    })
    .await;
    let api = cloud.api();
    let (status, body) = api_rpc(&api, "dev-1", json!({"method": "a.b"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["kind"], "offline");
    assert_eq!(
        api.device("dev-1").await.unwrap()["device"]["online"],
        false
    );
}

#[tokio::test]
async fn a_device_that_never_answers_is_504_within_the_timeout() {
    let cloud = TestCloud::start().await;
    let _device = cloud.accepted_device("dev-1").await;
    let started = Instant::now();
    let body = json!({"method": "a.b", "timeout_ms": 300});
    let (status, body) = api_rpc(&cloud.api(), "dev-1", body).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["kind"], "timed_out");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_late_answer_is_dropped_and_the_connection_carries_on() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let timed_out = cloud
        .state
        .devices()
        .fleet()
        .call("dev-1", "slow.call", None, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(timed_out.kind(), cloud::CallErrorKind::TimedOut);
    let Message::Request { id, .. } = device.recv().await else {
        panic!("expected the request");
    };
    device
        .send_message(&Message::result(id, json!("late")))
        .await;
    device.ping_cloud().await;
}

#[tokio::test]
async fn a_device_that_disconnects_mid_call_fails_it_promptly() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let call = {
        let state = cloud.state.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = state
                .devices()
                .fleet()
                .call("dev-1", "containers.list", None, Duration::from_secs(20))
                .await;
            (outcome, started.elapsed())
        })
    };
    let Message::Request { .. } = device.recv().await else {
        panic!("expected a request");
    };
    device.drop_connection();
    let (outcome, elapsed) = call.await.unwrap();
    assert_eq!(
        outcome.unwrap_err().kind(),
        cloud::CallErrorKind::Disconnected
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn a_disconnect_mid_call_is_502_disconnected_through_the_api() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let dropper = tokio::spawn(async move {
        let Message::Request { .. } = device.recv().await else {
            panic!("expected a request");
        };
        device.drop_connection();
    });
    let body = json!({"method": "a.b", "timeout_ms": 20000});
    let (status, body) = api_rpc(&cloud.api(), "dev-1", body).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["kind"], "disconnected");
    dropper.await.unwrap();
}

#[tokio::test]
async fn bad_requests_are_400() {
    let cloud = TestCloud::start().await;
    let _device = cloud.accepted_device("dev-1").await;
    let api = cloud.api();
    for body in [
        json!({"method": "rpc.>"}),
        json!({"method": "a.b", "params": 3}),
        json!({"method": "a.b", "params": {"n": 9007199254740993u64}}),
        json!({"method": "a.b", "timeout_ms": 0}),
        json!({"params": {}}),
        json!({"method": "a.b", "surprise": 1}),
    ] {
        let (status, answer) = api_rpc(&api, "dev-1", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["kind"], "bad_request", "{body} → {answer}");
    }
}

#[tokio::test]
async fn health_and_container_events_land_in_the_registry() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let health = json!({"cpu_percent": 12.5, "memory": {"used": 1024}});
    device
        .send_message(&Message::notification("device.health", health.clone()))
        .await;
    device
        .send_message(&Message::notification(
            "device.container_event",
            json!({"action": "start", "id": "abc"}),
        ))
        .await;
    // A response to the ping proves both notifications were handled before it.
    device.ping_cloud().await;
    let api = cloud.api();
    let shown = api.device("dev-1").await.unwrap();
    assert_eq!(shown["device"]["last_health"], health);
    assert!(shown["device"]["last_health_at"].is_i64());
    assert_eq!(shown["container_events"][0]["payload"]["action"], "start");
    let list = api.devices().await.unwrap();
    assert_eq!(list["devices"][0]["last_health"], health);
}

#[tokio::test]
async fn the_last_hour_of_health_reports_is_kept_for_the_chart() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let api = cloud.api();
    let pool = cloud.state.devices().registry().pool();
    // Moves every stored sample back in time, as if that long had passed.
    let age_samples = |ms: i64| async move {
        sqlx::query("UPDATE device_health SET at = at - ?")
            .bind(ms)
            .execute(pool)
            .await
            .unwrap();
    };
    let sample_period = cloud::store::registry::HEALTH_SAMPLE_PERIOD.as_millis() as i64;
    let cpus = |body: &Value| -> Vec<f64> {
        body["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["health"]["cpu_percent"].as_f64().unwrap())
            .collect()
    };
    for (cpu, then_wait) in [(10.0, true), (20.0, false), (25.0, true), (30.0, true)] {
        let health = json!({ "cpu_percent": cpu });
        device
            .send_message(&Message::notification("device.health", health.clone()))
            .await;
        device.ping_cloud().await;
        // The latest report is always shown, even one the chart skips.
        assert_eq!(
            api.device("dev-1").await.unwrap()["device"]["last_health"],
            health
        );
        if then_wait {
            age_samples(sample_period + 1).await;
        }
    }
    let (status, body) = api
        .request(Method::GET, "/devices/dev-1/health", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        cpus(&body),
        [10.0, 20.0, 30.0],
        "25 came within a sample period of 20"
    );
    let samples = body["samples"].as_array().unwrap();
    assert!(samples
        .windows(2)
        .all(|w| w[0]["at"].as_i64() <= w[1]["at"].as_i64()));

    // Reports older than an hour are pruned when the next one arrives.
    let an_hour_ago = protocol::now_ms() as i64 - 3_600_001;
    sqlx::query("UPDATE device_health SET at = ? WHERE health LIKE '%10.0%'")
        .bind(an_hour_ago)
        .execute(pool)
        .await
        .unwrap();
    device
        .send_message(&Message::notification(
            "device.health",
            json!({ "cpu_percent": 40.0 }),
        ))
        .await;
    device.ping_cloud().await;
    let body = api.get("/devices/dev-1/health").await.unwrap();
    assert_eq!(cpus(&body), [20.0, 30.0, 40.0]);

    let (status, body) = api
        .request(Method::GET, "/devices/nobody/health", None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(body["error"]["kind"], "unknown_device");
}
