//! The operator dashboard in a real headless Chromium, against the real cloud,
//! a real device (nats-server, bridge, worker) and the real Docker engine.
//! Each step waits for what a person would see; screenshots of every page go
//! to `target/screenshots/`, and page load times are printed. Each role sees
//! only what it may do: viewers read, operators also call the methods that
//! change containers, admins also decide on keys and manage the team.

use std::time::Instant;

use cloud::roles::Role;
use e2e::browser::Browser;
use e2e::dashboard::{
    accepted_device, add_account, sign_in_as, sign_in_with, url, PASSWORD, SHOWN,
};
use e2e::stack::{RunningCloud, RunningDevice};
use fantoccini::Locator;
use protocol::keys;
use reqwest::header::{COOKIE, SET_COOKIE, USER_AGENT};
use serde_json::{json, Value};
use testkit::docker::{TestContainer, BUSYBOX_IMAGE};

/// The admin most scenarios sign in as.
const OPERATOR: &str = "olivia";

/// A cloud with [`OPERATOR`] as its admin.
async fn cloud_with_operator() -> RunningCloud {
    let cloud = RunningCloud::start().await;
    add_account(&cloud, OPERATOR, Role::Admin).await;
    cloud
}

/// Signs in as [`OPERATOR`] through the form, starting from `path`; ends on `path`.
async fn sign_in(browser: &Browser, cloud: &RunningCloud, path: &str) {
    sign_in_as(browser, cloud, OPERATOR, path).await;
}

/// How many elements match `css` on the current page.
async fn count(browser: &Browser, css: &str) -> usize {
    browser
        .client
        .find_all(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("finding {css:?}: {e}"))
        .len()
}

/// Waits until nothing matches `css` (a row removed, a button hidden).
async fn wait_for_none(browser: &Browser, css: &str) {
    testkit::wait_until(&format!("{css:?} to go"), SHOWN, || async {
        (count(browser, css).await == 0).then_some(())
    })
    .await;
}

/// Confirms the dialog a `data-confirm` form or button opened, once it says `needle`.
async fn confirm(browser: &Browser, needle: &str) {
    browser.wait_for_text("#confirm-text", needle, SHOWN).await;
    browser.click("#confirm-ok").await;
}

/// A session started through `POST /api/v1/login` as another browser
/// would: its cookie header and its answer; the status if refused.
async fn api_session(
    cloud: &RunningCloud,
    name: &str,
    password: &str,
    user_agent: &str,
) -> Result<(String, Value), u16> {
    let reply = reqwest::Client::new()
        .post(url(cloud, "/api/v1/login"))
        .header(USER_AGENT, user_agent)
        .json(&json!({ "name": name, "password": password }))
        .send()
        .await
        .expect("a sign-in");
    if reply.status() != 200 {
        return Err(reply.status().as_u16());
    }
    let cookie = reply
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("devbridge_session="))
        .and_then(|value| value.split(';').next())
        .expect("a session cookie")
        .to_owned();
    Ok((cookie, reply.json().await.expect("a JSON answer")))
}

/// The status of `GET /api/v1/me` with a session cookie: 200 while it lives.
async fn me_status(cloud: &RunningCloud, cookie: &str) -> u16 {
    reqwest::Client::new()
        .get(url(cloud, "/api/v1/me"))
        .header(COOKIE, cookie)
        .send()
        .await
        .expect("an API call")
        .status()
        .as_u16()
}

/// Whether Docker says the container runs.
async fn docker_running(name: &str) -> bool {
    let output = tokio::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", name])
        .output()
        .await
        .expect("docker inspect");
    String::from_utf8_lossy(&output.stdout).trim() == "true"
}

#[tokio::test]
async fn an_operator_signs_in_through_the_form_and_a_wrong_password_is_told() {
    let cloud = cloud_with_operator().await;
    let browser = Browser::start().await;

    // A page asked for while signed out leads to the form, and back after it.
    browser.goto(&url(&cloud, "/audit")).await;
    browser.wait_for("#login-form", SHOWN).await;
    assert_eq!(browser.path().await, "/login?next=%2Faudit");

    browser.fill("#name", OPERATOR).await;
    browser.fill("#password", "not my password").await;
    browser.click("#login-form button[type=submit]").await;
    browser
        .wait_for_text("#login-error", "Unknown operator or wrong password.", SHOWN)
        .await;
    browser.screenshot("01-login-wrong-password").await;

    browser.fill("#password", PASSWORD).await;
    browser.click("#login-form button[type=submit]").await;
    browser
        .wait_for_text(".whoami", &format!("Signed in as {OPERATOR}"), SHOWN)
        .await;
    assert_eq!(browser.path().await, "/audit");
    // The failed and the successful sign-in are both in the log.
    let log = browser.wait_for_text("#audit-body", "ok", SHOWN).await;
    assert!(log.contains("wrong_password"), "{log}");

    // An API token: its secret is shown once. An admin may give it any
    // role up to their own; this one only reads.
    browser.click("nav a[href='/tokens']").await;
    assert_eq!(count(&browser, "#token-role option").await, 3);
    browser.fill("#token-name", "ci-deploy").await;
    browser
        .client
        .find(Locator::Css("#token-role"))
        .await
        .expect("the role select")
        .select_by_value("viewer")
        .await
        .expect("choosing viewer");
    browser.click("#create-token button[type=submit]").await;
    let secret = browser
        .wait_for_text("#new-token-secret", "dbt_", SHOWN)
        .await;
    let listed = browser
        .wait_for_text("#tokens-table", "ci-deploy", SHOWN)
        .await;
    assert!(listed.contains("viewer"), "the role column: {listed}");
    browser.screenshot("09-tokens").await;
    let http = reqwest::Client::new();
    let reply = http
        .get(url(&cloud, "/api/v1/devices"))
        .bearer_auth(secret.trim())
        .send()
        .await
        .expect("an API call");
    assert_eq!(reply.status(), 200);
    let me: Value = http
        .get(url(&cloud, "/api/v1/me"))
        .bearer_auth(secret.trim())
        .send()
        .await
        .expect("an API call")
        .json()
        .await
        .expect("JSON");
    assert_eq!(me["role"], "viewer", "{me}");

    browser.click(".topbar form button[type=submit]").await;
    browser.wait_for("#login-form", SHOWN).await;
    browser.goto(&url(&cloud, "/devices")).await;
    browser.wait_for("#login-form", SHOWN).await;
    browser.close().await;
}

#[tokio::test]
async fn an_operator_accepts_a_new_device_and_reads_its_container_logs_live() {
    let cloud = cloud_with_operator().await;
    let browser = Browser::start().await;
    sign_in(&browser, &cloud, "/devices").await;
    browser
        .wait_for_text("#no-devices", "No device has connected yet", SHOWN)
        .await;
    // The live socket is open before the device comes, so its key must
    // arrive as an event; the marker shows the page was never reloaded.
    browser.wait_for("#live[data-state=on]", SHOWN).await;
    browser
        .script("window.samePage = 'yes'; return null;")
        .await;

    let device = RunningDevice::start("device-web-1", &cloud).await;
    let row = "tr[data-device-id='device-web-1']";
    let text = browser.wait_for_text(row, "pending", SHOWN).await;
    assert_eq!(
        browser.script("return window.samePage;").await,
        json!("yes")
    );
    let fingerprint = keys::fingerprint(&device.key.verifying_key());
    assert!(text.contains(&fingerprint), "{text}");
    browser
        .wait_for_text("#pending-callout", "waits for your decision", SHOWN)
        .await;
    browser.screenshot("02-devices-pending").await;

    browser
        .click("button[aria-label='Accept device-web-1']")
        .await;
    browser
        .wait_for_text(&format!("{row} .badge.status"), "accepted", SHOWN)
        .await;
    browser
        .wait_for_text(&format!("{row} .badge.online"), "online", SHOWN)
        .await;
    // Health reports fill the row without a reload.
    wait_for_health(&browser, row).await;
    browser.screenshot("03-devices-accepted").await;

    // The filter narrows the table as one types.
    browser.fill("#filter-q", "no-such-device").await;
    browser
        .wait_for_text("#no-devices", "No device matches this filter", SHOWN)
        .await;
    assert_eq!(
        browser.path().await,
        "/devices?q=no-such-device&state=&tag="
    );
    browser.fill("#filter-q", "web-1").await;
    browser.wait_for(row, SHOWN).await;

    let devices_wall = browser.goto(&url(&cloud, "/devices")).await;
    let devices_timing = browser.page_timing().await;
    browser.wait_for(row, SHOWN).await;

    let container = TestContainer::start(
        "echo hello-from-busybox; echo a-warning >&2; \
         while true; do if [ -f /go ]; then echo after-page-open; rm /go; fi; sleep 0.2; done",
    )
    .await;

    // Stops at once on SIGTERM, so that stopping it from the page is quick.
    let stoppable =
        TestContainer::start("trap 'exit 0' TERM; while true; do sleep 0.2; done").await;

    // The device page: the container table comes from the worker and Docker.
    let started = Instant::now();
    browser.click(&format!("{row} a.device-link")).await;
    let container_row = format!("tr[data-container='{}']", container.name);
    let listed = browser
        .wait_for_text(&container_row, "running", SHOWN)
        .await;
    let device_table_shown = started.elapsed();
    assert!(listed.contains(BUSYBOX_IMAGE), "{listed}");
    assert_eq!(
        browser.text("#fingerprint").await.as_deref(),
        Some(fingerprint.as_str())
    );
    wait_until_chart_drawn(&browser).await;
    browser.screenshot("04-device").await;
    // Stop and start again, each after a confirmation.
    let stoppable_row = format!("tr[data-container='{}']", stoppable.name);
    for (action, done, state) in [
        ("stop", "Stop of", "exited"),
        ("start", "Start of", "running"),
    ] {
        browser
            .click(&format!("{stoppable_row} button[data-action={action}]"))
            .await;
        browser
            .wait_for_text("#confirm-text", &stoppable.name, SHOWN)
            .await;
        browser.click("#confirm-ok").await;
        browser
            .wait_for_text("#containers-message", done, SHOWN)
            .await;
        browser.wait_for_text(&stoppable_row, state, SHOWN).await;
    }

    let device_url = url(&cloud, "/devices/device-web-1");
    let device_wall = browser.goto(&device_url).await;
    let device_timing = browser.page_timing().await;
    browser.wait_for(&container_row, SHOWN).await;

    // Its logs: the lines it printed, stderr marked as such.
    browser.click(&format!("{container_row} a.logs-link")).await;
    browser
        .wait_for_text("#log-lines", "hello-from-busybox", SHOWN)
        .await;
    browser
        .wait_for_text("#log-lines .line.stderr", "a-warning", SHOWN)
        .await;

    // Follow mode shows a line written after the page opened, once.
    browser.click("#log-follow").await;
    browser
        .wait_for_text("#log-status", "Following", SHOWN)
        .await;
    let exec = tokio::process::Command::new("docker")
        .args(["exec", &container.name, "touch", "/go"])
        .status()
        .await
        .expect("docker exec");
    assert!(exec.success());
    let lines = browser
        .wait_for_text("#log-lines", "after-page-open", SHOWN)
        .await;
    assert_eq!(lines.matches("hello-from-busybox").count(), 1, "{lines}");
    assert_eq!(lines.matches("after-page-open").count(), 1, "{lines}");
    browser.screenshot("05-logs-follow").await;

    // The audit log lists the accept and the RPCs the pages made.
    browser.click("nav a[href='/audit']").await;
    let audit = browser
        .wait_for_text("#audit-body", "device.accept", SHOWN)
        .await;
    for expected in [
        "containers.list",
        "containers.logs",
        OPERATOR,
        "device-web-1",
    ] {
        assert!(audit.contains(expected), "{expected} in {audit}");
    }
    // New entries arrive live on the first page.
    browser.wait_for("#live[data-state=on]", SHOWN).await;
    cloud
        .api()
        .rpc("device-web-1", "system.health", None, None)
        .await
        .expect("system.health");
    browser
        .wait_for_text("#audit-body tr:first-child", "system.health", SHOWN)
        .await;
    browser.screenshot("06-audit").await;

    // A device that goes away is said to be offline, in words.
    let mut device = device;
    browser.goto(&device_url).await;
    browser.wait_for(&container_row, SHOWN).await;
    browser.wait_for("#live[data-state=on]", SHOWN).await;
    device.stop_bridge().await;
    browser
        .wait_for_text("#device-online", "offline", SHOWN)
        .await;
    browser
        .wait_for_text("#containers-message", "The device is offline", SHOWN)
        .await;
    browser.screenshot("07-device-offline").await;

    // Deleting asks first, in a dialog.
    browser.click("#device-head button.delete").await;
    browser
        .wait_for_text("#confirm-text", "Delete device-web-1?", SHOWN)
        .await;
    browser.screenshot("08-delete-confirmation").await;
    browser.click("#confirm-ok").await;
    browser
        .wait_for_text("#no-devices", "No device has connected yet", SHOWN)
        .await;
    let deleted = cloud
        .api()
        .device("device-web-1")
        .await
        .expect_err("the device is gone");
    assert_eq!(deleted.status(), Some(404), "{deleted:?}");

    println!(
        "devices page: goto {devices_wall:?} wall-clock; first byte {:.0} ms, \
         DOMContentLoaded {:.0} ms, load {:.0} ms",
        devices_timing.response_start, devices_timing.dom_content_loaded, devices_timing.load
    );
    println!(
        "device page: goto {device_wall:?} wall-clock; first byte {:.0} ms, \
         DOMContentLoaded {:.0} ms, load {:.0} ms; container table shown {device_table_shown:?} after the click",
        device_timing.response_start, device_timing.dom_content_loaded, device_timing.load
    );
    browser.close().await;
}

/// Waits until a device row shows a CPU figure.
async fn wait_for_health(browser: &Browser, row: &str) {
    testkit::wait_until("a health figure in the row", SHOWN, || async {
        let text = browser.text(row).await?;
        text.contains(" %").then_some(())
    })
    .await;
}

/// Waits until the health chart has a CPU line.
async fn wait_until_chart_drawn(browser: &Browser) {
    browser
        .wait_for("#health-chart svg polyline.cpu", SHOWN)
        .await;
}

#[tokio::test]
async fn live_updates_reach_the_dashboard_whichever_instance_serves_it() {
    // Two instances sharing one fleet: a real PostgreSQL and the NATS
    // between them. The browser is on the first; the device on the second.
    let database = testkit::PostgresServer::start().await;
    let cloud_nats = testkit::nats::NatsServer::start().await;
    let shared = |instance: &'static str| {
        let (database_url, nats_url) = (database.url(), cloud_nats.url());
        move |config: &mut cloud::CloudConfig| {
            config.database_url = database_url;
            config.cloud_nats_url = Some(nats_url);
            config.instance = instance.into();
        }
    };
    let first = RunningCloud::start_with(shared("cloud-1")).await;
    let second = RunningCloud::start_with(|config| {
        shared("cloud-2")(config);
        // The same cloud: one key, one admin token.
        config.private_key_path = first.config.private_key_path.clone();
        config.admin_token_file = first.config.admin_token_file.clone();
    })
    .await;
    add_account(&first, OPERATOR, Role::Admin).await;
    let browser = Browser::start().await;
    sign_in(&browser, &first, "/devices").await;
    browser.wait_for("#live[data-state=on]", SHOWN).await;
    browser
        .script("window.samePage = 'yes'; return null;")
        .await;

    let _device =
        RunningDevice::start_bridge_only("device-far", keys::generate(), &second, |_| {}).await;
    let row = "tr[data-device-id='device-far']";
    browser.wait_for_text(row, "pending", SHOWN).await;
    // Accepted on the other instance: the page here follows.
    second.api().accept("device-far").await.expect("accepted");
    browser
        .wait_for_text(&format!("{row} .badge.status"), "accepted", SHOWN)
        .await;
    browser
        .wait_for_text(&format!("{row} .badge.online"), "online", SHOWN)
        .await;
    assert_eq!(
        browser.script("return window.samePage;").await,
        json!("yes"),
        "every update came live, without a reload"
    );
    browser.screenshot("10-devices-across-instances").await;
    browser.close().await;
}

#[tokio::test]
async fn a_viewer_reads_but_is_offered_no_change_and_a_forged_stop_is_refused_and_audited() {
    let cloud = cloud_with_operator().await;
    add_account(&cloud, "vera", Role::Viewer).await;
    let _device = accepted_device(&cloud, "device-viewed").await;
    let container = TestContainer::start(
        "echo hello-to-a-viewer; trap 'exit 0' TERM; while true; do sleep 0.2; done",
    )
    .await;
    let browser = Browser::start().await;
    sign_in_as(&browser, &cloud, "vera", "/devices").await;

    // The list, with no decision to offer and no team to manage.
    let row = "tr[data-device-id='device-viewed']";
    browser.wait_for_text(row, "accepted", SHOWN).await;
    assert_eq!(count(&browser, &format!("{row} button")).await, 0);
    assert_eq!(count(&browser, "#preauthorize-form").await, 0);
    assert_eq!(count(&browser, "nav a[href='/operators']").await, 0);
    assert_eq!(count(&browser, "nav a[href='/account']").await, 1);
    assert_eq!(
        browser.text("#whoami-role").await.as_deref(),
        Some("viewer")
    );

    // The device page lists the containers with their logs, and no button
    // that changes one.
    browser.click(&format!("{row} a.device-link")).await;
    let container_row = format!("tr[data-container='{}']", container.name);
    browser
        .wait_for_text(&container_row, "running", SHOWN)
        .await;
    assert_eq!(count(&browser, "#device-head button").await, 0);
    assert_eq!(count(&browser, &format!("{container_row} button")).await, 0);
    assert_eq!(count(&browser, "#containers-body button").await, 0);
    browser.screenshot("11-device-as-viewer").await;

    // A stop forged from the page, with this session's CSRF token, is
    // refused by the cloud, and the container keeps running.
    let forged = browser
        .client
        .execute_async(
            "const [device, container, done] = arguments;\
             const csrf = document.querySelector('meta[name=\"csrf-token\"]').content;\
             fetch(`/api/v1/devices/${device}/rpc`, {\
               method: 'POST', credentials: 'same-origin',\
               headers: { 'content-type': 'application/json', 'x-csrf-token': csrf },\
               body: JSON.stringify({ method: 'containers.stop', params: { container } }),\
             }).then(async (r) => done({ status: r.status, body: await r.json() }),\
                     (e) => done({ status: 0, body: String(e) }));",
            vec![json!("device-viewed"), json!(container.name)],
        )
        .await
        .expect("the forged request ran");
    assert_eq!(forged["status"], 403, "{forged}");
    assert_eq!(forged["body"]["error"]["kind"], "forbidden", "{forged}");
    assert!(
        docker_running(&container.name).await,
        "the container was stopped"
    );

    // The refusal is in the audit log, which a viewer reads too.
    browser
        .goto(&url(&cloud, "/audit?action=rpc&failures_only=true"))
        .await;
    let audit = browser
        .wait_for_text("#audit-body", "forbidden", SHOWN)
        .await;
    assert!(
        audit.contains("vera") && audit.contains("containers.stop"),
        "{audit}"
    );
    browser.screenshot("12-audit-refused-stop").await;

    // The logs of a container are a viewer's to read.
    browser.goto(&url(&cloud, "/devices/device-viewed")).await;
    let logs_link = format!("{container_row} a.logs-link");
    browser.wait_for(&logs_link, SHOWN).await;
    browser.click(&logs_link).await;
    browser
        .wait_for_text("#log-lines", "hello-to-a-viewer", SHOWN)
        .await;

    // The team is not a viewer's to see, nor a token above their role to make.
    browser.goto(&url(&cloud, "/operators")).await;
    browser
        .wait_for_text("h1", "Only admins manage operators", SHOWN)
        .await;
    browser.goto(&url(&cloud, "/tokens")).await;
    browser.wait_for("#token-role", SHOWN).await;
    assert_eq!(count(&browser, "#token-role option").await, 1);
    assert_eq!(
        browser.text("#token-role option").await.as_deref(),
        Some("viewer")
    );
    browser.close().await;
}

#[tokio::test]
async fn an_operator_stops_a_container_but_is_offered_no_key_decision_nor_the_team() {
    let cloud = cloud_with_operator().await;
    add_account(&cloud, "otto", Role::Operator).await;
    let _device = accepted_device(&cloud, "device-operated").await;
    let stoppable =
        TestContainer::start("trap 'exit 0' TERM; while true; do sleep 0.2; done").await;
    let browser = Browser::start().await;
    sign_in_as(&browser, &cloud, "otto", "/devices").await;

    let row = "tr[data-device-id='device-operated']";
    browser.wait_for_text(row, "accepted", SHOWN).await;
    assert_eq!(count(&browser, &format!("{row} button")).await, 0);
    assert_eq!(count(&browser, "#preauthorize-form").await, 0);
    assert_eq!(count(&browser, "nav a[href='/operators']").await, 0);
    assert_eq!(
        browser.text("#whoami-role").await.as_deref(),
        Some("operator")
    );

    browser.click(&format!("{row} a.device-link")).await;
    let stoppable_row = format!("tr[data-container='{}']", stoppable.name);
    browser
        .wait_for_text(&stoppable_row, "running", SHOWN)
        .await;
    assert_eq!(count(&browser, "#device-head button").await, 0);
    browser
        .click(&format!("{stoppable_row} button[data-action=stop]"))
        .await;
    confirm(&browser, &stoppable.name).await;
    browser
        .wait_for_text("#containers-message", "Stop of", SHOWN)
        .await;
    browser.wait_for_text(&stoppable_row, "exited", SHOWN).await;
    assert!(!docker_running(&stoppable.name).await);
    // Stopped, it offers Start.
    browser
        .wait_for(&format!("{stoppable_row} button[data-action=start]"), SHOWN)
        .await;
    browser.screenshot("13-device-as-operator").await;
    browser.close().await;
}

#[tokio::test]
async fn an_admin_adds_an_operator_changes_their_role_resets_their_password_and_removes_them() {
    let cloud = cloud_with_operator().await;
    let browser = Browser::start().await;
    sign_in(&browser, &cloud, "/devices").await;
    browser.click("nav a[href='/operators']").await;
    browser.wait_for("#add-operator", SHOWN).await;
    // Not one's own role, password or account.
    let own_row = format!("tr[data-operator='{OPERATOR}']");
    browser.wait_for_text(&own_row, "(you)", SHOWN).await;
    assert_eq!(count(&browser, &format!("{own_row} button")).await, 0);

    // Added with a made-up password, shown once and never in a URL.
    browser.fill("#operator-name", "nina").await;
    browser.click("#add-operator button[type=submit]").await;
    let callout = browser
        .wait_for_text("#new-password", "shown this once", SHOWN)
        .await;
    assert!(callout.contains("Operator nina added"), "{callout}");
    let password = browser
        .text("#new-password-secret")
        .await
        .expect("the new password");
    assert!(password.len() >= 10, "{password}");
    assert_eq!(browser.path().await, "/operators");
    let nina = "tr[data-operator='nina']";
    let select = format!("{nina} select[name=role]");
    let chosen = browser
        .script(&format!(
            "return document.querySelector(\"{select}\").value;"
        ))
        .await;
    assert_eq!(chosen, json!("viewer"));
    browser.screenshot("14-operator-added").await;
    let (old_session, signed_in) = api_session(&cloud, "nina", &password, "nina-laptop/1")
        .await
        .expect("nina signs in with the password shown");
    assert_eq!(signed_in["operator"]["role"], "viewer", "{signed_in}");
    browser.goto(&url(&cloud, "/operators")).await;
    browser.wait_for(nina, SHOWN).await;
    assert_eq!(count(&browser, "#new-password").await, 0);
    let source = browser.client.source().await.expect("the page source");
    assert!(!source.contains(&password), "the password was shown twice");

    // Made an operator.
    browser
        .client
        .find(Locator::Css(&select))
        .await
        .expect("nina's role select")
        .select_by_value("operator")
        .await
        .expect("choosing operator");
    browser
        .click("button[aria-label='Change the role of nina']")
        .await;
    browser
        .wait_for_text("#operators-notice", "nina is now an operator", SHOWN)
        .await;
    let listed = cloud.api().get("/operators").await.expect("the operators");
    let role_of_nina = listed["operators"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|o| o["name"] == "nina")
        .map(|o| o["role"].clone());
    assert_eq!(role_of_nina, Some(json!("operator")), "{listed}");

    // A new password, shown once; her sessions end, the old password fails.
    browser
        .click("button[aria-label='Reset the password of nina']")
        .await;
    confirm(&browser, "Reset the password of nina?").await;
    let callout = browser
        .wait_for_text("#new-password", "every session of theirs has ended", SHOWN)
        .await;
    let new_password = browser
        .text("#new-password-secret")
        .await
        .expect("the new password");
    assert!(callout.contains(&new_password));
    assert_ne!(new_password, password);
    assert_eq!(me_status(&cloud, &old_session).await, 401);
    assert_eq!(
        api_session(&cloud, "nina", &password, "nina-laptop/1")
            .await
            .map(drop),
        Err(401)
    );
    let (_, signed_in) = api_session(&cloud, "nina", &new_password, "nina-laptop/1")
        .await
        .expect("nina signs in with the new password");
    assert_eq!(signed_in["operator"]["role"], "operator", "{signed_in}");
    browser.screenshot("15-password-reset").await;

    // Removed, after a confirmation.
    browser.click("button[aria-label='Remove nina']").await;
    confirm(&browser, "Remove nina?").await;
    wait_for_none(&browser, nina).await;
    assert_eq!(
        api_session(&cloud, "nina", &new_password, "nina-laptop/1")
            .await
            .map(drop),
        Err(401)
    );
    // The audit log has each change.
    let audit = cloud
        .api()
        .audit("target=nina")
        .await
        .expect("the audit log");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["outcome"] == "ok")
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "operator.add",
        "operator.role",
        "operator.password",
        "operator.remove",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    browser.close().await;
}

#[tokio::test]
async fn an_admin_preauthorizes_a_device_which_is_live_as_soon_as_it_connects() {
    let cloud = cloud_with_operator().await;
    let browser = Browser::start().await;
    sign_in(&browser, &cloud, "/devices").await;
    browser.wait_for("#live[data-state=on]", SHOWN).await;

    // A key that is not one is refused in a sentence, the form kept.
    browser.click("details.preauthorize summary").await;
    browser.fill("#preauthorize-id", "device-pre").await;
    browser.fill("#preauthorize-key", "not a key").await;
    browser
        .click("#preauthorize-form button[type=submit]")
        .await;
    browser
        .wait_for_text("#preauthorize-error", "Ed25519 public key", SHOWN)
        .await;
    let kept = browser
        .script("return document.getElementById('preauthorize-id').value;")
        .await;
    assert_eq!(kept, json!("device-pre"));

    // The key read from a file, as the device's scripts wrote it.
    let key = keys::generate();
    let key_file = cloud.dir.path().join("device-pre.pub.pem");
    keys::write_public_key(&key_file, &key.verifying_key()).expect("the public key file");
    browser
        .client
        .find(Locator::Css("#preauthorize-file"))
        .await
        .expect("the file input")
        .send_keys(&key_file.display().to_string())
        .await
        .expect("choosing the file");
    browser
        .wait_for_text("#preauthorize-file-message", "Read the key", SHOWN)
        .await;
    let pasted = browser
        .script("return document.getElementById('preauthorize-key').value;")
        .await;
    assert_eq!(
        pasted.as_str().map(str::trim),
        Some(keys::public_key_to_pem(&key.verifying_key()).trim())
    );
    browser.screenshot("16-preauthorize").await;
    browser
        .click("#preauthorize-form button[type=submit]")
        .await;

    // Its page: accepted before it ever connected.
    browser
        .wait_for_text("#preauthorized-by", OPERATOR, SHOWN)
        .await;
    assert_eq!(browser.path().await, "/devices/device-pre");
    assert_eq!(
        browser.text("#device-status").await.as_deref(),
        Some("accepted")
    );
    assert_eq!(
        browser.text("#last-seen").await.as_deref(),
        Some("never connected")
    );
    assert_eq!(
        browser.text("#fingerprint").await.as_deref(),
        Some(keys::fingerprint(&key.verifying_key()).as_str())
    );

    // In the list, said so; the same id twice is refused in a sentence.
    browser.goto(&url(&cloud, "/devices")).await;
    let row = "tr[data-device-id='device-pre']";
    let listed = browser
        .wait_for_text(row, &format!("preauthorized by {OPERATOR}"), SHOWN)
        .await;
    assert!(listed.contains("never connected"), "{listed}");
    browser.click("details.preauthorize summary").await;
    browser.fill("#preauthorize-id", "device-pre").await;
    browser
        .fill(
            "#preauthorize-key",
            &keys::public_key_to_pem(&keys::generate().verifying_key()),
        )
        .await;
    browser
        .click("#preauthorize-form button[type=submit]")
        .await;
    browser
        .wait_for_text("#preauthorize-error", "registered already", SHOWN)
        .await;

    // The device connects with that key and is live at once, no accept
    // needed; the list follows without a reload.
    browser.goto(&url(&cloud, "/devices")).await;
    browser.wait_for("#live[data-state=on]", SHOWN).await;
    let _device = RunningDevice::start_bridge_only("device-pre", key, &cloud, |_| {}).await;
    browser
        .wait_for_text(&format!("{row} .badge.online"), "online", SHOWN)
        .await;
    let live = browser
        .wait_for_text(&format!("{row} .badge.status"), "accepted", SHOWN)
        .await;
    assert_eq!(live, "accepted");
    let device = cloud.api().device("device-pre").await.expect("the device");
    assert_eq!(device["device"]["status"], "accepted", "{device}");
    assert_eq!(device["device"]["online"], true, "{device}");
    browser.screenshot("17-preauthorized-live").await;
    browser.close().await;
}

#[tokio::test]
async fn an_operator_ends_another_session_and_changes_their_password() {
    let cloud = cloud_with_operator().await;
    let (other_session, _) = api_session(&cloud, OPERATOR, PASSWORD, "other-browser/2.0")
        .await
        .expect("a second session");
    let browser = Browser::start().await;
    sign_in(&browser, &cloud, "/account").await;

    // Both sessions, this browser's marked.
    browser.wait_for("#sessions-table", SHOWN).await;
    assert_eq!(count(&browser, "#sessions-table tbody tr").await, 2);
    let current = browser
        .text("#sessions-table tr.current")
        .await
        .expect("the current session marked");
    assert!(current.contains("this browser"), "{current}");
    assert!(!current.contains("other-browser"), "{current}");
    let other = browser
        .text("#sessions-table tbody tr:not(.current)")
        .await
        .expect("the other session");
    assert!(other.contains("other-browser/2.0"), "{other}");
    browser.screenshot("18-account").await;

    // Ending the other signs it out at once; this one lives on.
    browser
        .click("#sessions-table tbody tr:not(.current) button.end-session")
        .await;
    confirm(&browser, "other-browser/2.0").await;
    wait_for_none(&browser, "#sessions-table tbody tr:not(.current)").await;
    assert_eq!(browser.path().await, "/account");
    assert_eq!(me_status(&cloud, &other_session).await, 401);

    // A wrong current password, or a mistyped repetition, is told.
    let new_password = "a new and longer passphrase";
    for (current, again, says) in [
        (
            "not my password",
            new_password,
            "The current password is wrong.",
        ),
        (PASSWORD, "a new and longer passphrasf", "differ"),
    ] {
        browser.fill("#current-password", current).await;
        browser.fill("#new-password", new_password).await;
        browser.fill("#new-password-again", again).await;
        browser.click("#change-password button[type=submit]").await;
        browser.wait_for_text("#account-error", says, SHOWN).await;
    }

    // Changed: the session has ended, and the sign-in form says why.
    browser.fill("#current-password", PASSWORD).await;
    browser.fill("#new-password", new_password).await;
    browser.fill("#new-password-again", new_password).await;
    browser.click("#change-password button[type=submit]").await;
    browser
        .wait_for_text("#login-notice", "Your password has changed", SHOWN)
        .await;
    browser.screenshot("19-password-changed").await;
    browser.goto(&url(&cloud, "/account")).await;
    browser.wait_for("#login-form", SHOWN).await;
    assert_eq!(
        api_session(&cloud, OPERATOR, PASSWORD, "other-browser/2.0")
            .await
            .map(drop),
        Err(401)
    );
    sign_in_with(&browser, &cloud, OPERATOR, new_password, "/account").await;

    // Ending this browser's own session signs it out here.
    browser
        .click("#sessions-table tr.current button.end-session")
        .await;
    confirm(&browser, "You are signed out here").await;
    browser
        .wait_for_text("#login-notice", "You ended this session", SHOWN)
        .await;
    browser.goto(&url(&cloud, "/account")).await;
    browser.wait_for("#login-form", SHOWN).await;
    browser.close().await;
}

/// A form post of a session: its cookie, and the form's fields.
async fn post_form(
    cloud: &RunningCloud,
    cookie: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
        .post(url(cloud, path))
        .header(COOKIE, cookie)
        .form(fields)
        .send()
        .await
        .expect("a form post")
}

#[tokio::test]
async fn the_team_and_account_forms_need_the_session_csrf_token_and_the_role() {
    let cloud = cloud_with_operator().await;
    add_account(&cloud, "vera", Role::Viewer).await;
    let (admin, answer) = api_session(&cloud, OPERATOR, PASSWORD, "test")
        .await
        .expect("the admin's session");
    let admin_csrf = answer["csrf_token"]
        .as_str()
        .expect("a CSRF token")
        .to_owned();
    let key = keys::public_key_to_pem(&keys::generate().verifying_key());

    // Without the token (as another site would post), nothing happens.
    for (path, fields) in [
        ("/operators", vec![("name", "mallory"), ("role", "admin")]),
        ("/operators/vera/role", vec![("role", "admin")]),
        ("/operators/vera/password", vec![]),
        ("/operators/vera/remove", vec![]),
        (
            "/devices",
            vec![("id", "device-forged"), ("public_key", key.as_str())],
        ),
        (
            "/account/password",
            vec![
                ("current", PASSWORD),
                ("new", "chosen by another site"),
                ("again", "chosen by another site"),
            ],
        ),
    ] {
        let mut forged = fields.clone();
        forged.push(("csrf_token", "not-the-token"));
        let reply = post_form(&cloud, &admin, path, &forged).await;
        assert_eq!(reply.status(), 403, "{path}");
    }
    assert_eq!(
        me_status(&cloud, &admin).await,
        200,
        "the password is unchanged"
    );
    let operators = cloud.api().get("/operators").await.expect("the operators");
    assert_eq!(
        operators["operators"].as_array().map(Vec::len),
        Some(2),
        "{operators}"
    );
    assert_eq!(operators["operators"][1]["role"], "viewer", "{operators}");
    let forged_device = cloud.api().device("device-forged").await;
    assert_eq!(
        forged_device.expect_err("not registered").status(),
        Some(404)
    );

    // With the token but as a viewer, the team and the keys are refused.
    let (viewer, answer) = api_session(&cloud, "vera", PASSWORD, "test")
        .await
        .expect("the viewer's session");
    let viewer_csrf = answer["csrf_token"]
        .as_str()
        .expect("a CSRF token")
        .to_owned();
    let reply = post_form(
        &cloud,
        &viewer,
        "/operators",
        &[
            ("csrf_token", &viewer_csrf),
            ("name", "mallory"),
            ("role", "admin"),
        ],
    )
    .await;
    assert_eq!(reply.status(), 403);
    let reply = post_form(
        &cloud,
        &viewer,
        "/devices",
        &[
            ("csrf_token", &viewer_csrf),
            ("id", "device-forged"),
            ("public_key", &key),
        ],
    )
    .await;
    assert_eq!(reply.status(), 403);
    let page = reply.text().await.expect("a page");
    assert!(page.contains("needs the admin role"), "{page}");
    assert_eq!(
        cloud.api().get("/operators").await.expect("the operators")["operators"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // The admin's own token works, and the same form goes through.
    let reply = post_form(
        &cloud,
        &admin,
        "/devices",
        &[
            ("csrf_token", &admin_csrf),
            ("id", "device-forged"),
            ("public_key", &key),
        ],
    )
    .await;
    assert_eq!(reply.status(), 303);
    assert_eq!(
        reply
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some("/devices/device-forged")
    );
}
