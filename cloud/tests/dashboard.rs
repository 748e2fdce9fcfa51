//! The dashboard over HTTP, without a browser: sign-in and its CSRF cookie,
//! redirects, CSRF on forms, security headers and the embedded assets. The
//! pages themselves are driven in a real browser in `e2e/tests/dashboard.rs`.

mod support;

use reqwest::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE,
};
use reqwest::redirect::Policy;
use reqwest::{Client, Response};
use support::{hidden_field, set_cookie, TestCloud};

const NAME: &str = "alice";
const PASSWORD: &str = "a long enough password";

async fn cloud_with_operator() -> TestCloud {
    let cloud = TestCloud::start().await;
    cloud.add_operator(NAME, PASSWORD).await;
    cloud
}

/// A client that shows redirects instead of following them.
fn browser() -> Client {
    Client::builder().redirect(Policy::none()).build().unwrap()
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The sign-in form's cookie and token.
async fn login_form(cloud: &TestCloud, http: &Client) -> (String, String) {
    let response = http.get(cloud.url("/login")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cookie = set_cookie(&response, "devbridge_login_csrf").expect("login cookie");
    let html = response.text().await.unwrap();
    (cookie, hidden_field(&html, "form_token"))
}

async fn post_login(
    cloud: &TestCloud,
    http: &Client,
    cookie: &str,
    token: &str,
    password: &str,
) -> Response {
    http.post(cloud.url("/login"))
        .header(COOKIE, cookie)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(&[
            ("form_token", token),
            ("next", "/audit"),
            ("name", NAME),
            ("password", password),
        ]))
        .send()
        .await
        .unwrap()
}

/// Signs in through the form; returns the session cookie and the page's CSRF token.
async fn signed_in(cloud: &TestCloud, http: &Client) -> (String, String) {
    let (cookie, token) = login_form(cloud, http).await;
    let response = post_login(cloud, http, &cookie, &token, PASSWORD).await;
    assert_eq!(response.status(), 303);
    let session = set_cookie(&response, cloud::http::auth::SESSION_COOKIE).expect("session");
    let page = http
        .get(cloud.url("/devices"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let marker = "<meta name=\"csrf-token\" content=\"";
    let start = html.find(marker).expect("csrf meta") + marker.len();
    let csrf = html[start..].split('"').next().unwrap().to_owned();
    (session, csrf)
}

#[tokio::test]
async fn pages_send_a_signed_out_browser_to_the_login_form_and_back() {
    let cloud = cloud_with_operator().await;
    let http = browser();
    let response = http.get(cloud.url("/devices?q=a")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()[LOCATION],
        "/login?next=%2Fdevices%3Fq%3Da"
    );

    let (cookie, token) = login_form(&cloud, &http).await;
    let response = post_login(&cloud, &http, &cookie, &token, PASSWORD).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[LOCATION], "/audit");
    let session = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("devbridge_session="))
        .expect("session cookie");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"));
}

#[tokio::test]
async fn the_login_form_refuses_a_missing_token_and_a_wrong_password_in_words() {
    let cloud = cloud_with_operator().await;
    let http = browser();
    let (cookie, token) = login_form(&cloud, &http).await;

    // Another site cannot post the form: it has no cookie to match.
    let forged = post_login(&cloud, &http, "", &token, PASSWORD).await;
    assert_eq!(forged.status(), 400);
    assert!(forged.text().await.unwrap().contains("form has expired"));

    let wrong = post_login(&cloud, &http, &cookie, &token, "not the password").await;
    assert_eq!(wrong.status(), 401);
    assert!(set_cookie(&wrong, "devbridge_session").is_none());
    assert!(wrong
        .text()
        .await
        .unwrap()
        .contains("Unknown operator or wrong password."));

    // The name's limit is 5 a minute; the sixth attempt is refused unseen.
    let mut last = None;
    for _ in 0..5 {
        last = Some(post_login(&cloud, &http, &cookie, &token, "still wrong").await);
    }
    let limited = last.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited
        .text()
        .await
        .unwrap()
        .contains("Too many sign-in attempts"));
}

#[tokio::test]
async fn dashboard_forms_need_the_session_csrf_token() {
    let cloud = cloud_with_operator().await;
    let http = browser();
    let (session, csrf) = signed_in(&cloud, &http).await;
    let post = |path: &'static str, body: String| {
        http.post(cloud.url(path))
            .header(COOKIE, &session)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };

    let refused = post("/devices/device-x/accept", form(&[("csrf_token", "nope")]))
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let unknown = post("/devices/device-x/accept", form(&[("csrf_token", &csrf)]))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404, "a checked form reaches the registry");

    let refused = post("/logout", form(&[("csrf_token", "")])).await.unwrap();
    assert_eq!(refused.status(), 403);
    let out = post("/logout", form(&[("csrf_token", &csrf)]))
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let after = http
        .get(cloud.url("/devices"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 303, "the session has ended");
}

#[tokio::test]
async fn pages_carry_a_strict_policy_and_assets_are_cacheable() {
    let cloud = cloud_with_operator().await;
    let http = browser();
    let (session, _) = signed_in(&cloud, &http).await;
    for path in ["/", "/devices", "/audit", "/login"] {
        let response = http
            .get(cloud.url(path))
            .header(COOKIE, &session)
            .send()
            .await
            .unwrap();
        let policy = response.headers()[CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(policy.starts_with("default-src 'self'"), "{path}: {policy}");
    }
    let script = http.get(cloud.url("/assets/app.js")).send().await.unwrap();
    assert_eq!(script.status(), 200);
    assert_eq!(
        script.headers()[CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert!(script.headers()[CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let missing = http.get(cloud.url("/assets/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_token_made_in_the_dashboard_is_shown_once_and_works_until_revoked() {
    let cloud = cloud_with_operator().await;
    let http = browser();
    let (session, csrf) = signed_in(&cloud, &http).await;
    let created = http
        .post(cloud.url("/tokens"))
        .header(COOKIE, &session)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(&[("csrf_token", &csrf), ("name", "ci-deploy")]))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let html = created.text().await.unwrap();
    let marker = "id=\"new-token-secret\">";
    let start = html.find(marker).expect("the secret") + marker.len();
    let secret = html[start..].split('<').next().unwrap().to_owned();
    assert!(secret.starts_with("dbt_"), "{secret}");

    let api = |token: String| {
        http.get(cloud.url("/api/v1/devices"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(api(secret.clone()).await.unwrap().status(), 200);
    let list = http
        .get(cloud.url("/tokens"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains("ci-deploy") && !list.contains(&secret));

    let id = cloud
        .state
        .ops()
        .team()
        .tokens(&cloud::ops::Caller::host())
        .await
        .unwrap()[0]
        .id;
    let revoked = http
        .post(cloud.url(&format!("/tokens/{id}/revoke")))
        .header(COOKIE, &session)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(&[("csrf_token", &csrf)]))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 303);
    assert_eq!(api(secret).await.unwrap().status(), 401);
}

#[tokio::test]
async fn a_filter_the_list_does_not_know_gets_a_page_that_says_so() {
    let cloud = cloud_with_operator().await;
    let http = browser();
    let (session, _) = signed_in(&cloud, &http).await;
    let response = http
        .get(cloud.url("/devices?state=sleeping"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = response.text().await.unwrap();
    assert!(html.contains("unknown state"), "{html}");
    assert!(html.contains("href=\"/devices\""), "{html}");
}

#[tokio::test]
async fn an_admin_requires_a_key_rotation_from_the_device_page() {
    let cloud = cloud_with_operator().await;
    // Offline: it is asked when it next connects.
    let key = protocol::keys::generate().verifying_key();
    cloud
        .api()
        .preauthorize("dev-1", &protocol::keys::public_key_to_pem(&key))
        .await
        .unwrap();
    let http = browser();
    let (session, csrf) = signed_in(&cloud, &http).await;
    let page = |session: String| {
        let request = http
            .get(cloud.url("/devices/dev-1"))
            .header(COOKIE, session);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    assert!(page(session.clone())
        .await
        .contains("/devices/dev-1/require-key-rotation"));
    let response = http
        .post(cloud.url("/devices/dev-1/require-key-rotation"))
        .header(COOKIE, &session)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(&[("csrf_token", &csrf)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert!(page(session).await.contains("id=\"key-rotation-required\""));
    let audit = cloud
        .api()
        .audit("action=device.require_key_rotation")
        .await
        .unwrap();
    assert_eq!(audit["entries"][0]["actor"], NAME);
}
