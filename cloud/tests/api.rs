//! The REST API's shape and its bearer token; `app()` driven in-process with
//! `tower::ServiceExt::oneshot` where no socket is needed.

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use support::TestCloud;
use tower::ServiceExt;

#[tokio::test]
async fn the_api_needs_the_admin_token() {
    let cloud = TestCloud::start().await;
    let app = cloud::app(cloud.state.clone());
    for authorization in [
        None,
        Some("Bearer wrong-token"),
        Some("Basic YWRtaW46YWRtaW4="),
    ] {
        let mut request = Request::get("/api/v1/devices");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{authorization:?}"
        );
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["kind"], "unauthorized");
    }

    let response = app
        .oneshot(
            Request::get("/api/v1/devices")
                .header("authorization", format!("Bearer {}", cloud.token))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_api_over_a_real_socket_refuses_a_wrong_token() {
    let cloud = TestCloud::start().await;
    let (status, _) = cloud
        .api_as("not-the-token")
        .request(
            Method::POST,
            "/devices/dev-1/rpc",
            Some(&json!({"method": "a.b"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
    let response = cloud
        .http
        .get(cloud.url("/api/v1/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn healthz_needs_no_token() {
    let cloud = TestCloud::start().await;
    let response = cloud::app(cloud.state.clone())
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn devices_are_listed_pending_first_with_their_live_state() {
    let cloud = TestCloud::start().await;
    let _accepted = cloud.accepted_device("a-accepted").await;
    let mut pending = cloud.connect("z-pending").await;
    pending.authenticate().await;

    let (status, body) = cloud
        .api()
        .request(Method::GET, "/devices", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let devices = body["devices"].as_array().unwrap();
    let ids: Vec<&str> = devices.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["z-pending", "a-accepted"]);
    for field in [
        "id",
        "status",
        "fingerprint",
        "public_key",
        "first_seen",
        "last_seen",
        "online",
        "bridge_version",
        "last_health",
        "last_health_at",
    ] {
        assert!(devices[0].get(field).is_some(), "missing {field}");
    }
    assert_eq!(devices[0]["online"], true);
    assert_eq!(devices[1]["status"], "accepted");
}

#[tokio::test]
async fn operator_actions_on_unknown_devices_are_404() {
    let cloud = TestCloud::start().await;
    let api = cloud.api();
    for (method, path, body) in [
        (Method::POST, "/devices/nobody/accept", Some(json!({}))),
        (Method::POST, "/devices/nobody/reject", Some(json!({}))),
        (Method::DELETE, "/devices/nobody", None),
        (Method::GET, "/devices/nobody", None),
    ] {
        let (status, _) = api.request(method, path, body.as_ref()).await.unwrap();
        assert_eq!(status, 404, "{path}");
    }
}

#[tokio::test]
async fn the_auth_log_records_every_step() {
    let cloud = TestCloud::start().await;
    let key = {
        let device = cloud.accepted_device("dev-1").await;
        device.key.clone()
    };
    let mut again = cloud.connect_with_key("dev-1", key).await;
    again.authenticate().await;
    let api = cloud.api();
    api.reject("dev-1").await.unwrap();
    api.delete("dev-1").await.unwrap();

    let (status, body) = api
        .request(Method::GET, "/auth-events?device_id=dev-1", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let events: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "new_key",
            "accepted",
            "authenticated",
            "rejected",
            "deleted"
        ]
    );
    let all = api.get("/auth-events").await.unwrap();
    assert_eq!(all["events"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn devices_are_filtered_by_state_and_by_part_of_the_id() {
    let cloud = TestCloud::start().await;
    let _accepted = cloud.accepted_device("Kiosk-01").await;
    let mut pending = cloud.connect("kiosk-02").await;
    pending.authenticate().await;
    let mut gone = cloud.connect("gateway-1").await;
    gone.authenticate().await;
    gone.drop_connection();
    support::wait_until("gateway-1 offline", || async {
        cloud.api().device("gateway-1").await.unwrap()["device"]["online"] == false
    })
    .await;

    let api = cloud.api();
    let ids = |body: &Value| -> Vec<String> {
        body["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    for (query, expected) in [
        ("", vec!["gateway-1", "kiosk-02", "Kiosk-01"]),
        ("?state=pending", vec!["gateway-1", "kiosk-02"]),
        ("?state=accepted", vec!["Kiosk-01"]),
        ("?state=rejected", vec![]),
        ("?state=online", vec!["kiosk-02", "Kiosk-01"]),
        ("?state=offline", vec!["gateway-1"]),
        ("?q=KIOSK", vec!["kiosk-02", "Kiosk-01"]),
        ("?q=kiosk&state=pending", vec!["kiosk-02"]),
        ("?q=nothing", vec![]),
    ] {
        let (status, body) = api
            .request(Method::GET, &format!("/devices{query}"), None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(ids(&body), expected, "{query}");
    }
    let (status, body) = api
        .request(Method::GET, "/devices?state=sleeping", None)
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["error"]["kind"], "bad_request");
}
