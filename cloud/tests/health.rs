//! `/readyz` tells whether the cloud can serve; `/healthz` only that it runs.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use support::TestCloud;
use tower::ServiceExt;

async fn probe(cloud: &TestCloud, path: &str) -> (StatusCode, Value) {
    let response = cloud::app(cloud.state.clone())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn ready_while_the_registry_answers() {
    let cloud = TestCloud::start().await;
    // Over a real socket, and without a token.
    let response = cloud.http.get(cloud.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ready"})
    );
}

#[tokio::test]
async fn not_ready_once_the_registry_database_is_closed() {
    let cloud = TestCloud::start().await;
    cloud.state.devices().registry().close().await;
    let (status, body) = probe(&cloud, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["reason"].as_str().unwrap().contains("database"),
        "{body}"
    );
    // Liveness does not depend on the database.
    assert_eq!(probe(&cloud, "/healthz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn not_ready_while_shutting_down() {
    let cloud = TestCloud::start().await;
    cloud.state.devices().close_all();
    let (status, body) = probe(&cloud, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"status": "not_ready", "reason": "shutting down"})
    );
}
