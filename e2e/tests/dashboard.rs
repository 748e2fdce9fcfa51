//! The operator dashboard in a real headless Chromium, against the real cloud,
//! a real device (nats-server, bridge, worker) and the real Docker engine.
//! Each step waits for what a person would see; screenshots of every page go
//! to `target/screenshots/`, and page load times are printed.

use std::time::{Duration, Instant};

use e2e::browser::Browser;
use e2e::stack::{RunningCloud, RunningDevice};
use protocol::keys;
use serde_json::json;
use testkit::docker::{TestContainer, BUSYBOX_IMAGE};

const OPERATOR: &str = "olivia";
const PASSWORD: &str = "correct horse battery staple";
/// How long a page may take to show what it should; generous, since two
/// browsers and a Docker engine share two cores in CI.
const SHOWN: Duration = Duration::from_secs(30);

async fn cloud_with_operator() -> RunningCloud {
    let cloud = RunningCloud::start().await;
    cloud
        .state()
        .ops()
        .store()
        .accounts
        .add_operator(OPERATOR, PASSWORD, protocol::now_ms() as i64)
        .await
        .expect("an operator account");
    cloud
}

fn url(cloud: &RunningCloud, path: &str) -> String {
    format!("http://{}{path}", cloud.addr)
}

/// Signs in through the form, starting from `path`; ends on `path`.
async fn sign_in(browser: &Browser, cloud: &RunningCloud, path: &str) {
    browser.goto(&url(cloud, path)).await;
    browser.wait_for("#login-form", SHOWN).await;
    browser.fill("#name", OPERATOR).await;
    browser.fill("#password", PASSWORD).await;
    browser.click("#login-form button[type=submit]").await;
    browser.wait_for("body[data-page] .whoami", SHOWN).await;
    assert_eq!(browser.path().await, path);
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

    // An API token: its secret is shown once.
    browser.click("nav a[href='/tokens']").await;
    browser.fill("#token-name", "ci-deploy").await;
    browser.click("#create-token button[type=submit]").await;
    let secret = browser
        .wait_for_text("#new-token-secret", "dbt_", SHOWN)
        .await;
    browser.screenshot("09-tokens").await;
    let reply = reqwest::Client::new()
        .get(url(&cloud, "/api/v1/devices"))
        .bearer_auth(secret.trim())
        .send()
        .await
        .expect("an API call");
    assert_eq!(reply.status(), 200);

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
    assert_eq!(browser.path().await, "/devices?q=no-such-device&state=");
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
    first
        .state()
        .ops()
        .store()
        .accounts
        .add_operator(OPERATOR, PASSWORD, protocol::now_ms() as i64)
        .await
        .expect("an operator account");
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
