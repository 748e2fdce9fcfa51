//! Operator accounts over the real HTTP API: sign-in, session cookies and
//! their CSRF tokens, rate-limited sign-in, API tokens, operator management
//! and the audit log.

mod support;

use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::TestCloud;
use testkit::fake_device::FakeDevice;

const PASSWORD: &str = "correct horse battery";

/// A signed-in browser: its cookie and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

async fn add_operator(cloud: &TestCloud, name: &str) {
    cloud.add_operator(name, PASSWORD).await;
}

async fn login(cloud: &TestCloud, name: &str, password: &str) -> reqwest::Response {
    cloud
        .http
        .post(cloud.url("/api/v1/login"))
        .json(&json!({ "name": name, "password": password }))
        .send()
        .await
        .unwrap()
}

async fn sign_in(cloud: &TestCloud, name: &str) -> Browser {
    let response = login(cloud, name, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    Browser {
        cookie: set_cookie.split(';').next().unwrap().to_owned(),
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
    }
}

/// A request with the browser's cookie, and its CSRF token if `csrf` is given.
async fn as_browser(
    cloud: &TestCloud,
    browser: &Browser,
    method: reqwest::Method,
    path: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = cloud
        .http
        .request(method, cloud.url(path))
        .header(COOKIE, &browser.cookie);
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn sign_in_sets_an_httponly_strict_cookie_that_opens_the_api() {
    let cloud = TestCloud::start().await;
    add_operator(&cloud, "alice").await;

    let response = login(&cloud, "alice", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("devbridge_session="), "{set_cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["operator"]["name"], "alice");
    let browser = Browser {
        cookie: set_cookie.split(';').next().unwrap().to_owned(),
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
    };

    let (status, me) = as_browser(
        &cloud,
        &browser,
        reqwest::Method::GET,
        "/api/v1/me",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["name"], "alice");
    assert_eq!(me["via"], "session");
    assert_eq!(me["csrf_token"], browser.csrf.as_str());

    // Reading needs no CSRF token.
    let (status, _) = as_browser(
        &cloud,
        &browser,
        reqwest::Method::GET,
        "/api/v1/devices",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_session_must_repeat_its_csrf_token_to_change_anything() {
    let cloud = TestCloud::start().await;
    add_operator(&cloud, "alice").await;
    add_operator(&cloud, "bob").await;
    let alice = sign_in(&cloud, "alice").await;
    let bob = sign_in(&cloud, "bob").await;
    let mut device = cloud.connect("dev-1").await;
    device.authenticate().await;

    let accept = "/api/v1/devices/dev-1/accept";
    for csrf in [None, Some("wrong"), Some(bob.csrf.as_str())] {
        let (status, body) =
            as_browser(&cloud, &alice, reqwest::Method::POST, accept, csrf, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{csrf:?}: {body}");
        assert_eq!(body["error"]["kind"], "csrf");
    }
    assert_eq!(
        cloud.api().device("dev-1").await.unwrap()["device"]["status"],
        "pending"
    );

    let (status, body) = as_browser(
        &cloud,
        &alice,
        reqwest::Method::POST,
        accept,
        Some(&alice.csrf),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device"]["status"], "accepted");
    device.expect_status_notification("accepted").await;
}

#[tokio::test]
async fn a_wrong_password_or_unknown_name_is_401_and_audited() {
    let cloud = TestCloud::start().await;
    add_operator(&cloud, "alice").await;

    for (name, password) in [("alice", "not the password"), ("mallory", PASSWORD)] {
        let response = login(&cloud, name, password).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().get(SET_COOKIE).is_none());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["kind"], "wrong_password");
    }
    let (status, audit) = cloud
        .api()
        .request(reqwest::Method::GET, "/audit?action=login", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let outcomes: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    // A name that is no operator's is not kept as an actor: strangers'
    // guesses share one entry.
    assert_eq!(
        outcomes,
        [("(unknown)", "wrong_password"), ("alice", "wrong_password")]
    );
    assert!(audit["entries"][0]["detail"]
        .as_str()
        .unwrap()
        .ends_with("name tried: mallory"));
}

#[tokio::test]
async fn sign_in_is_rate_limited_per_operator_name() {
    let cloud = TestCloud::start().await;
    add_operator(&cloud, "alice").await;
    add_operator(&cloud, "bob").await;

    for attempt in 1..=5 {
        let response = login(&cloud, "alice", "guess").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{attempt}");
    }
    // Even the right password is refused until the window passes.
    let response = login(&cloud, "alice", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "rate_limited");

    // Another operator is not locked out by alice's attacker.
    assert_eq!(
        login(&cloud, "bob", PASSWORD).await.status(),
        StatusCode::OK
    );
    let audit = cloud.api().audit("outcome=x&action=login").await.unwrap();
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["actor"] == "alice" && e["outcome"] == "rate_limited"));
}

#[tokio::test]
async fn sign_out_ends_the_session() {
    let cloud = TestCloud::start().await;
    add_operator(&cloud, "alice").await;
    let browser = sign_in(&cloud, "alice").await;

    // Signing out changes state, so it needs the CSRF token too.
    let (status, _) = as_browser(
        &cloud,
        &browser,
        reqwest::Method::POST,
        "/api/v1/logout",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let response = cloud
        .http
        .post(cloud.url("/api/v1/logout"))
        .header(COOKIE, &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cleared = response.headers()[SET_COOKIE].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    let (status, body) = as_browser(
        &cloud,
        &browser,
        reqwest::Method::GET,
        "/api/v1/me",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["kind"], "session_expired");
}

#[tokio::test]
async fn api_tokens_are_created_once_listed_without_secret_and_revoked_at_once() {
    let cloud = TestCloud::start().await;
    add_operator(&cloud, "alice").await;
    let browser = sign_in(&cloud, "alice").await;

    let (status, created) = as_browser(
        &cloud,
        &browser,
        reqwest::Method::POST,
        "/api/v1/tokens",
        Some(&browser.csrf),
        Some(json!({ "name": "ci-deploy" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("dbt_") && secret.len() > 40, "{secret}");
    let id = created["token"]["id"].as_i64().unwrap();

    let with_secret = cloud.api_as(&secret);
    let (status, me) = with_secret
        .request(reqwest::Method::GET, "/me", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["name"], "alice");
    assert_eq!(me["via"], "api_token");
    // A bearer token needs no CSRF token: no browser sends it by itself.
    let (status, _) = with_secret
        .request(reqwest::Method::POST, "/devices/nobody/accept", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    let api = cloud.api();
    let (status, list) = api
        .request(reqwest::Method::GET, "/tokens", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let listed = &list["tokens"][0];
    assert_eq!(listed["name"], "ci-deploy");
    assert_eq!(listed["operator"], "alice");
    assert!(listed["last_used_at"].is_i64());
    assert!(!list.to_string().contains(&secret), "secret listed: {list}");

    let (status, revoked) = api
        .request(reqwest::Method::DELETE, &format!("/tokens/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["token"]["revoked_at"].is_i64());
    let (status, body) = with_secret
        .request(reqwest::Method::GET, "/me", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["kind"], "unauthorized");

    let (status, body) = api
        .request(reqwest::Method::DELETE, "/tokens/999", None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(body["error"]["kind"], "unknown_token");
}

#[tokio::test]
async fn a_made_up_token_is_401_whatever_its_shape() {
    let cloud = TestCloud::start().await;
    for token in ["dbt_AAAA", "dbt_", "", "x y"] {
        let (status, _) = cloud
            .api_as(token)
            .request(reqwest::Method::GET, "/devices", None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
}

#[tokio::test]
async fn operators_are_managed_through_the_api_with_clear_refusals() {
    let cloud = TestCloud::start().await;
    add_operator(&cloud, "alice").await;
    let browser = sign_in(&cloud, "alice").await;

    let api = cloud.api();
    let add = async |name: &str, password: &str| {
        let body = json!({ "name": name, "password": password });
        api.request(reqwest::Method::POST, "/operators", Some(&body))
            .await
            .unwrap()
    };
    let (status, body) = add("bob", "short").await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at least 10"));
    let (status, body) = add("bad name!", PASSWORD).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = add("bob", PASSWORD).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["operator"]["name"], "bob");
    let (status, body) = add("bob", PASSWORD).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["kind"], "operator_exists");
    assert_eq!(
        login(&cloud, "bob", PASSWORD).await.status(),
        StatusCode::OK
    );

    let (status, body) = as_browser(
        &cloud,
        &browser,
        reqwest::Method::DELETE,
        "/api/v1/operators/alice",
        Some(&browser.csrf),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["kind"], "self_removal");

    let (status, _) = api
        .request(reqwest::Method::DELETE, "/operators/bob", None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    let list = api.get("/operators").await.unwrap();
    let names: Vec<&str> = list["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice"]);
    assert_eq!(
        login(&cloud, "bob", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn secrets_are_stored_only_as_digests_and_passwords_as_argon2id() {
    let cloud = TestCloud::start().await;
    add_operator(&cloud, "alice").await;
    let browser = sign_in(&cloud, "alice").await;
    let pool = cloud.state.devices().registry().pool();

    let hash: String = sqlx::query_scalar("SELECT password_hash FROM operators")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(PASSWORD));
    let session_secret = browser.cookie.split_once('=').unwrap().1;
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM operator_sessions")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], session_secret);
}

#[tokio::test]
async fn the_audit_log_has_decisions_rpcs_with_latency_and_device_events_filtered_and_paged() {
    let cloud = TestCloud::start().await;
    add_operator(&cloud, "alice").await;
    let browser = sign_in(&cloud, "alice").await;
    let mut device = cloud.connect("dev-1").await;
    device.authenticate().await;

    let call = |path: &'static str, body: Option<Value>| {
        as_browser(
            &cloud,
            &browser,
            reqwest::Method::POST,
            path,
            Some(&browser.csrf),
            body,
        )
    };
    let (status, _) = call("/api/v1/devices/dev-1/accept", None).await;
    assert_eq!(status, StatusCode::OK);
    device.expect_status_notification("accepted").await;

    // One call the device answers, one it fails, one to a device that isn't there.
    let (answered, _) = tokio::join!(
        call(
            "/api/v1/devices/dev-1/rpc",
            Some(json!({ "method": "system.health" }))
        ),
        answer_one(&mut device, Ok(json!({ "cpu_percent": 1.0 }))),
    );
    let (failed, _) = tokio::join!(
        call(
            "/api/v1/devices/dev-1/rpc",
            Some(json!({ "method": "nope.nothing" }))
        ),
        answer_one(
            &mut device,
            Err(protocol::RpcError::new(
                protocol::ErrorCode::MethodNotFound,
                "no such method"
            ))
        ),
    );
    let offline = call("/api/v1/devices/dev-2/rpc", Some(json!({ "method": "a" }))).await;
    assert_eq!(answered.0, StatusCode::OK, "{}", answered.1);
    assert_eq!(failed.0, StatusCode::BAD_GATEWAY, "{}", failed.1);
    assert_eq!(offline.0, StatusCode::NOT_FOUND, "{}", offline.1);

    let api = cloud.api();
    let (status, page) = api
        .request(
            reqwest::Method::GET,
            "/audit?source=operator&action=rpc",
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let entries = page["entries"].as_array().unwrap();
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["target"].as_str().unwrap(),
                e["detail"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("dev-2", "a", "unknown_device"),
            ("dev-1", "nope.nothing", "device_error"),
            ("dev-1", "system.health", "ok"),
        ]
    );
    assert!(entries
        .iter()
        .all(|e| e["actor"] == "alice" && e["latency_ms"].is_i64()));

    let accepts = api
        .audit("action=device.accept&target=dev-1")
        .await
        .unwrap();
    assert_eq!(accepts["total"], 1);
    assert_eq!(accepts["entries"][0]["actor"], "alice");

    let device_events = api.audit("source=device&actor=dev-1").await.unwrap();
    let actions: Vec<&str> = device_events["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["new_key"]);

    let failures = api.audit("failures_only=true").await.unwrap();
    assert_eq!(failures["total"], 2, "{failures}");

    // Pages: everything, then the same one entry at a time.
    let all = api.audit("limit=500").await.unwrap();
    let total = all["total"].as_i64().unwrap();
    assert_eq!(total as usize, all["entries"].as_array().unwrap().len());
    assert!(total >= 6, "{all}"); // login, accept, 3 rpcs, new_key
    for offset in 0..total {
        let one = api
            .audit(&format!("limit=1&offset={offset}"))
            .await
            .unwrap();
        assert_eq!(one["entries"][0], all["entries"][offset as usize]);
    }
}

/// Answers the next request the device receives.
async fn answer_one(device: &mut FakeDevice, answer: Result<Value, protocol::RpcError>) {
    let request = device.recv().await;
    let protocol::Message::Request { id, .. } = request else {
        panic!("expected a request, got {request:?}");
    };
    let reply = match answer {
        Ok(result) => protocol::Message::result(id, result),
        Err(error) => protocol::Message::error(id, error),
    };
    device.send_message(&reply).await;
}
