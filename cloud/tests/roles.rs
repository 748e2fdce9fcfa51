//! Roles over the real HTTP API, with a connected device: what a viewer, an
//! operator and an admin may do, that refusals are `403 forbidden` and
//! audited, that a token never does more than its operator, and devices an
//! admin preauthorizes.

mod support;

use cloud::client::ApiClient;
use cloud::roles::Role;
use protocol::{keys, Message};
use reqwest::Method;
use serde_json::{json, Value};
use support::TestCloud;

const PASSWORD: &str = "correct horse battery";

/// An API client acting as a new operator with `role`, through a token of
/// their own.
async fn client_with_role(cloud: &TestCloud, name: &str, role: Role) -> ApiClient {
    cloud.add_operator_with_role(name, PASSWORD, role).await;
    let operator = cloud
        .state
        .ops()
        .store()
        .accounts
        .operator(name)
        .await
        .unwrap()
        .unwrap();
    let (_, secret) = cloud
        .state
        .ops()
        .store()
        .accounts
        .create_token(&operator, "test", role, protocol::now_ms() as i64)
        .await
        .unwrap();
    cloud.api_as(&secret)
}

/// `method` on the device through `api`; the device answers `{"ok": true}`
/// if the call reaches it. Returns the status and the API's answer.
async fn call_through(
    api: &ApiClient,
    device: &mut testkit::fake_device::FakeDevice,
    id: &str,
    method: &str,
) -> (u16, Value) {
    let call = {
        let (api, path) = (api.clone(), format!("/devices/{id}/rpc"));
        let body = json!({ "method": method, "timeout_ms": 5_000 });
        tokio::spawn(async move { api.request(Method::POST, &path, Some(&body)).await.unwrap() })
    };
    // A refused call never reaches the device: answer only what arrives.
    let answered = tokio::time::timeout(std::time::Duration::from_secs(2), device.recv()).await;
    if let Ok(Message::Request {
        id, method: got, ..
    }) = answered
    {
        assert_eq!(got, method);
        device
            .send_message(&Message::result(id, json!({ "ok": true })))
            .await;
    }
    call.await.unwrap()
}

async fn forbidden_entries(cloud: &TestCloud, actor: &str) -> Vec<Value> {
    let page = cloud
        .api()
        .audit(&format!("actor={actor}&failures_only=true"))
        .await
        .unwrap();
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "forbidden")
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_viewer_reads_and_calls_read_only_methods_but_cannot_stop_a_container() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let viewer = client_with_role(&cloud, "vera", Role::Viewer).await;

    assert_eq!(viewer.devices().await.unwrap()["devices"][0]["id"], "dev-1");
    assert!(viewer.audit("limit=5").await.is_ok());
    let (status, answer) = call_through(&viewer, &mut device, "dev-1", "containers.list").await;
    assert_eq!(
        (status, answer["result"].clone()),
        (200, json!({"ok": true}))
    );

    let (status, answer) = call_through(&viewer, &mut device, "dev-1", "containers.stop").await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["kind"], "forbidden");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("operator role"),
        "the refusal says what is needed: {answer}"
    );
    let refused = forbidden_entries(&cloud, "vera").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["action"], "rpc");
    assert_eq!(refused[0]["target"], "dev-1");
    assert!(refused[0]["detail"]
        .as_str()
        .unwrap()
        .starts_with("containers.stop"));

    // Deciding on keys and managing the team are refused too.
    let accept = viewer.accept("dev-1").await.unwrap_err();
    assert_eq!(
        (accept.status(), accept.kind()),
        (Some(403), Some("forbidden"))
    );
    let (status, _) = viewer
        .request(Method::GET, "/operators", None)
        .await
        .unwrap();
    assert_eq!(status, 403);
    // The device carries on for those who may call it.
    let (status, _) = call_through(&cloud.api(), &mut device, "dev-1", "containers.stop").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_operator_calls_every_method_but_cannot_decide_on_keys_or_manage_the_team() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let pending = cloud.connect("dev-2").await;
    let operator = client_with_role(&cloud, "otto", Role::Operator).await;

    let (status, _) = call_through(&operator, &mut device, "dev-1", "containers.stop").await;
    assert_eq!(status, 200);
    for refused in [
        operator.accept("dev-2").await.unwrap_err(),
        operator.reject("dev-2").await.unwrap_err(),
        operator.delete("dev-1").await.unwrap_err(),
        operator.require_rotation("dev-1").await.unwrap_err(),
        operator
            .preauthorize(
                "dev-3",
                &keys::public_key_to_pem(&keys::generate().verifying_key()),
            )
            .await
            .unwrap_err(),
    ] {
        assert_eq!(
            (refused.status(), refused.kind()),
            (Some(403), Some("forbidden"))
        );
    }
    let body = json!({ "name": "eve", "role": "admin" });
    let (status, answer) = operator
        .request(Method::POST, "/operators", Some(&body))
        .await
        .unwrap();
    assert_eq!(
        (status, answer["error"]["kind"].clone()),
        (403, json!("forbidden"))
    );
    assert_eq!(forbidden_entries(&cloud, "otto").await.len(), 6);
    drop(pending);
}

#[tokio::test]
async fn a_token_acts_with_the_lower_of_its_role_and_its_operators() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.accepted_device("dev-1").await;
    let operator = client_with_role(&cloud, "otto", Role::Operator).await;

    // No token above its creator.
    let refused = operator
        .create_token("root", Some("admin"))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.status(), refused.kind()),
        (Some(403), Some("forbidden"))
    );
    // A viewer token of an operator can only read.
    let created = operator
        .create_token("dashboard", Some("viewer"))
        .await
        .unwrap();
    assert_eq!(created["token"]["role"], "viewer");
    let weak = cloud.api_as(created["secret"].as_str().unwrap());
    let (status, _) = call_through(&weak, &mut device, "dev-1", "containers.stop").await;
    assert_eq!(status, 403);
    assert_eq!(weak.get("/me").await.unwrap()["role"], "viewer");

    // Demoting the operator demotes their tokens at their next request.
    let (status, _) = call_through(&operator, &mut device, "dev-1", "containers.stop").await;
    assert_eq!(status, 200);
    let body = json!({ "role": "viewer" });
    let (status, answer) = cloud
        .api()
        .request(Method::PUT, "/operators/otto/role", Some(&body))
        .await
        .unwrap();
    assert_eq!(
        (status, answer["operator"]["role"].clone()),
        (200, json!("viewer"))
    );
    let (status, _) = call_through(&operator, &mut device, "dev-1", "containers.stop").await;
    assert_eq!(status, 403);
    // Others' tokens are not theirs to see or revoke.
    let admins = client_with_role(&cloud, "ada", Role::Admin).await;
    let listed = operator.tokens().await.unwrap()["tokens"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(listed, 2, "otto sees only his own two tokens");
    let adas = admins.tokens().await.unwrap()["tokens"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(adas, 3, "an admin sees everyone's");
    let adas_token = admins.tokens().await.unwrap()["tokens"][0]["id"]
        .as_i64()
        .unwrap();
    let refused = operator.revoke_token(adas_token).await.unwrap_err();
    assert_eq!(refused.kind(), Some("forbidden"));
}

#[tokio::test]
async fn the_method_roles_setting_decides_which_methods_a_viewer_may_call() {
    let cloud = TestCloud::start_with(|config| {
        config.method_roles = "containers.stop=viewer,containers.list=admin,*=operator"
            .parse()
            .unwrap();
    })
    .await;
    let mut device = cloud.accepted_device("dev-1").await;
    let viewer = client_with_role(&cloud, "vera", Role::Viewer).await;
    let (status, _) = call_through(&viewer, &mut device, "dev-1", "containers.stop").await;
    assert_eq!(status, 200);
    let (status, _) = call_through(&viewer, &mut device, "dev-1", "containers.list").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn an_admin_manages_operators_with_made_up_passwords_shown_once() {
    let cloud = TestCloud::start().await;
    let admin = client_with_role(&cloud, "ada", Role::Admin).await;

    let body = json!({ "name": "bob", "role": "viewer" });
    let (status, added) = admin
        .request(Method::POST, "/operators", Some(&body))
        .await
        .unwrap();
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["operator"]["role"], "viewer");
    let password = added["password"].as_str().unwrap().to_owned();
    assert!(
        password.len() >= 20,
        "a made-up password is long: {password}"
    );
    let signed_in = |password: String| {
        let http = cloud.http.clone();
        let url = cloud.url("/api/v1/login");
        async move {
            http.post(url)
                .json(&json!({ "name": "bob", "password": password }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(signed_in(password.clone()).await, 200);

    let (status, reset) = admin
        .request(Method::POST, "/operators/bob/password", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let new_password = reset["password"].as_str().unwrap().to_owned();
    assert_ne!(new_password, password);
    assert_eq!(signed_in(password).await, 401, "the old password is gone");
    assert_eq!(signed_in(new_password).await, 200);

    // Nobody changes their own role or removes themselves.
    let body = json!({ "role": "viewer" });
    let (status, _) = admin
        .request(Method::PUT, "/operators/ada/role", Some(&body))
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, _) = admin
        .request(Method::DELETE, "/operators/ada", None)
        .await
        .unwrap();
    assert_eq!(status, 409);
    let (status, _) = admin
        .request(Method::DELETE, "/operators/bob", None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    let (_, listed) = admin
        .request(Method::GET, "/operators", None)
        .await
        .unwrap();
    let names: Vec<_> = listed["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ada"]);
}

#[tokio::test]
async fn an_operator_changes_their_own_password_and_ends_their_own_sessions() {
    let cloud = TestCloud::start().await;
    cloud
        .add_operator_with_role("vera", PASSWORD, Role::Viewer)
        .await;
    let login = |password: &'static str| {
        let http = cloud.http.clone();
        let url = cloud.url("/api/v1/login");
        async move {
            let response = http
                .post(url)
                .header("user-agent", "TestBrowser/1.0")
                .json(&json!({ "name": "vera", "password": password }))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let cookie = response
                .headers()
                .get("set-cookie")
                .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned());
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (
                status,
                cookie,
                body["csrf_token"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    let as_session =
        |cookie: String, csrf: String, method: Method, path: &str, body: Option<Value>| {
            let mut request = cloud
                .http
                .request(method, cloud.url(&format!("/api/v1{path}")))
                .header("cookie", cookie)
                .header("x-csrf-token", csrf);
            if let Some(body) = body {
                request = request.json(&body);
            }
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
        };
    let (_, first, first_csrf) = login(PASSWORD).await;
    let (_, second, second_csrf) = login(PASSWORD).await;
    let (first, second) = (first.unwrap(), second.unwrap());

    let (status, listed) = as_session(
        first.clone(),
        first_csrf.clone(),
        Method::GET,
        "/me/sessions",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let sessions = listed["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2);
    assert!(sessions[0]["client"]
        .as_str()
        .unwrap()
        .contains("TestBrowser/1.0"));
    // End the second session from the first.
    let (_, second_seen) = as_session(
        second.clone(),
        second_csrf.clone(),
        Method::GET,
        "/me/sessions",
        None,
    )
    .await;
    let second_id = second_seen["sessions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = as_session(
        first.clone(),
        first_csrf.clone(),
        Method::DELETE,
        &format!("/me/sessions/{second_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = as_session(second, second_csrf, Method::GET, "/me/sessions", None).await;
    assert_eq!(status, 401, "the revoked session is over");

    let wrong = json!({ "current": "not my password", "new": "a brand new password" });
    let (status, answer) = as_session(
        first.clone(),
        first_csrf.clone(),
        Method::POST,
        "/me/password",
        Some(wrong),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["kind"].clone()),
        (401, json!("wrong_password"))
    );
    let right = json!({ "current": PASSWORD, "new": "a brand new password" });
    let (status, _) = as_session(
        first.clone(),
        first_csrf.clone(),
        Method::POST,
        "/me/password",
        Some(right),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = as_session(first, first_csrf, Method::GET, "/me/sessions", None).await;
    assert_eq!(status, 401, "changing the password ends the sessions");
    assert_eq!(login(PASSWORD).await.0, 401);
    assert_eq!(login("a brand new password").await.0, 200);
}

#[tokio::test]
async fn a_preauthorized_device_is_live_on_its_first_connection() {
    let cloud = TestCloud::start().await;
    let key = keys::generate();
    let pem = keys::public_key_to_pem(&key.verifying_key());
    let answer = cloud.api().preauthorize("dev-9", &pem).await.unwrap();
    assert_eq!(answer["device"]["status"], "accepted");
    assert_eq!(answer["device"]["last_seen"], 0);
    assert_eq!(answer["device"]["preauthorized_by"], "admin-token");

    let mut device = cloud.connect_with_key("dev-9", key).await;
    assert_eq!(device.authenticate().await, json!({"status": "accepted"}));
    let (status, _) = call_through(&cloud.api(), &mut device, "dev-9", "system.health").await;
    assert_eq!(status, 200);
    let events = cloud
        .api()
        .get("/auth-events?device_id=dev-9")
        .await
        .unwrap();
    let details: Vec<_> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap(),
                e["detail"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("authenticated") && d.contains("preauthorized by admin-token")),
        "{details:?}"
    );

    // Another key under that id is refused, and the device is unaffected.
    let mut impostor = cloud.connect("dev-9").await;
    let refusal = impostor.authenticate().await;
    assert_eq!(refusal["data"]["reason"], "key_mismatch", "{refusal}");
    let (status, _) = call_through(&cloud.api(), &mut device, "dev-9", "system.health").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn preauthorizing_refuses_known_ids_and_what_is_not_a_key() {
    let cloud = TestCloud::start().await;
    let _pending = {
        let mut device = cloud.connect("dev-1").await;
        device.authenticate().await;
        device
    };
    let pem = keys::public_key_to_pem(&keys::generate().verifying_key());
    let exists = cloud.api().preauthorize("dev-1", &pem).await.unwrap_err();
    assert_eq!(
        (exists.status(), exists.kind()),
        (Some(409), Some("device_exists"))
    );
    for (id, key) in [
        ("dev-2", "not a key"),
        ("dev/2", pem.as_str()),
        ("dev-2", &"A".repeat(5_000)),
    ] {
        let refused = cloud.api().preauthorize(id, key).await.unwrap_err();
        assert_eq!(
            (refused.status(), refused.kind()),
            (Some(400), Some("bad_request")),
            "{id}"
        );
    }
    assert_eq!(
        cloud.api().devices().await.unwrap()["devices"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
