//! Fleet operations in a real headless Chromium, against the real cloud and
//! real devices (nats-server, bridge, worker, Docker): tags put on devices
//! and a tag filter that is a URL; a job on the filtered devices whose
//! outcomes arrive on its page as they come; and a call queued for an
//! offline device that completes, live, when the device comes back.

use cloud::roles::Role;
use e2e::browser::Browser;
use e2e::dashboard::{accepted_device, add_account, sign_in_as, url, SHOWN};
use e2e::stack::{wait_for_device, RunningCloud};
use protocol::{keys, Message};
use serde_json::json;
use testkit::fake_device::FakeDevice;

/// Replaces a device's tags through its page's form.
async fn tag_on_its_page(browser: &Browser, cloud: &RunningCloud, id: &str, tags: &str) {
    browser.goto(&url(cloud, &format!("/devices/{id}"))).await;
    browser.wait_for("#tags-form", SHOWN).await;
    browser.fill("#tags-input", tags).await;
    browser.click("#tags-save").await;
    let first = tags.split_whitespace().next().unwrap();
    browser.wait_for_text("#device-tags", first, SHOWN).await;
}

/// The device ids the list shows.
async fn listed(browser: &Browser) -> Vec<String> {
    let ids = browser
        .script("return [...document.querySelectorAll('#devices-table tr.device')].map(r => r.dataset.deviceId);")
        .await;
    serde_json::from_value(ids).expect("device ids")
}

#[tokio::test]
async fn an_operator_tags_devices_filters_by_tag_and_watches_a_job_arrive() {
    let cloud = RunningCloud::start().await;
    add_account(&cloud, "otto", Role::Operator).await;
    let _berlin = accepted_device(&cloud, "dev-berlin").await;
    let _paris = accepted_device(&cloud, "dev-paris").await;
    // A device that answers only when the test says: its outcome must
    // arrive on the job's page after the page is shown.
    let mut late =
        FakeDevice::connect(&cloud.endpoint(), "dev-berlin-late", keys::generate(), None)
            .await
            .expect("connected");
    late.authenticate().await;
    cloud
        .api()
        .accept("dev-berlin-late")
        .await
        .expect("accepted");
    late.expect_status_notification("accepted").await;

    let browser = Browser::start().await;
    sign_in_as(&browser, &cloud, "otto", "/devices").await;
    tag_on_its_page(&browser, &cloud, "dev-berlin", "site=berlin env=prod").await;
    // The late device's page would call it (system facts, containers): it is
    // tagged through the API, so that the job's call is the first it hears.
    let tagged = cloud
        .api()
        .send(
            reqwest::Method::PATCH,
            "/devices/dev-berlin-late/tags",
            Some(&json!({"site": "berlin"})),
        )
        .await
        .expect("tagged");
    assert_eq!(tagged["tags"], json!({"site": "berlin"}));
    tag_on_its_page(&browser, &cloud, "dev-paris", "site=paris").await;

    // A saved view is a bookmark: the filter is the URL.
    browser
        .goto(&url(&cloud, "/devices?tag=site%3Dberlin"))
        .await;
    browser.wait_for("#devices-table", SHOWN).await;
    assert_eq!(listed(&browser).await, ["dev-berlin", "dev-berlin-late"]);
    assert_eq!(
        browser
            .script("return document.querySelector('#filter-tag').value;")
            .await,
        "site=berlin"
    );
    // Typing a filter redraws the list and the URL.
    browser.fill("#filter-tag", "site=berlin,env=prod").await;
    testkit::wait_until("the list to follow the filter", SHOWN, || async {
        (listed(&browser).await == ["dev-berlin"]).then_some(())
    })
    .await;
    assert!(browser
        .path()
        .await
        .contains("tag=site%3Dberlin%2Cenv%3Dprod"));
    browser.fill("#filter-tag", "site=berlin").await;
    testkit::wait_until("both berlin devices", SHOWN, || async {
        (listed(&browser).await.len() == 2).then_some(())
    })
    .await;

    // The job runs on what the list shows.
    browser.click("#run-job summary").await;
    browser.fill("#job-method", "containers.list").await;
    browser.fill("#job-params", r#"{"all": true}"#).await;
    browser.click("#job-start").await;
    browser.wait_for("#job-head", SHOWN).await;
    assert!(browser.path().await.starts_with("/jobs/"));
    let Message::Request {
        id: call, method, ..
    } = late.recv().await
    else {
        panic!("the late device is called");
    };
    assert_eq!(method, "containers.list");
    // The real device's outcome is on the page; the late one is not yet.
    browser
        .wait_for(
            "#job-outcomes tr[data-device-id='dev-berlin'].outcome-ok",
            SHOWN,
        )
        .await;
    assert_eq!(browser.text("#job-done").await.as_deref(), Some("1"));
    assert_eq!(browser.text("#job-total").await.as_deref(), Some("2"));
    assert!(browser
        .text("#job-outcomes")
        .await
        .is_some_and(|table| !table.contains("dev-paris")));
    late.send_message(&Message::result(call, json!([{"name": "late-container"}])))
        .await;
    // Arrives without a reload.
    browser
        .wait_for_text(
            "#job-outcomes tr[data-device-id='dev-berlin-late']",
            "late-container",
            SHOWN,
        )
        .await;
    browser.wait_for_text("#job-state", "finished", SHOWN).await;
    assert_eq!(browser.text("#job-done").await.as_deref(), Some("2"));
    browser.screenshot("fleet_job").await;
    // Kept, and listed with the filter as people read it.
    browser.click("nav a[href='/jobs']").await;
    let listed = browser
        .wait_for_text("#jobs-table tbody tr", "containers.list", SHOWN)
        .await;
    assert!(
        listed.contains("tag site=berlin") && listed.contains("finished"),
        "{listed}"
    );
    browser.close().await;
}

#[tokio::test]
async fn a_call_queued_for_an_offline_device_completes_live_when_it_comes_back() {
    let cloud = RunningCloud::start().await;
    add_account(&cloud, "otto", Role::Operator).await;
    let mut device = accepted_device(&cloud, "dev-van").await;
    device.stop_bridge().await;
    let api = cloud.api();
    wait_for_device(&api, "dev-van", "the device to be offline", |d| {
        d["online"] == false
    })
    .await;

    let browser = Browser::start().await;
    sign_in_as(&browser, &cloud, "otto", "/devices/dev-van").await;
    browser.click("#queue-call summary").await;
    browser.fill("#queue-method", "containers.list").await;
    browser.fill("#queue-params", r#"{"all": true}"#).await;
    browser.click("#queue-submit").await;
    browser
        .wait_for_text("#queued-calls-table .queued-call", "queued", SHOWN)
        .await;

    // The device comes back: the call is sent and its answer appears.
    device.start_bridge().await;
    browser
        .wait_for_text("#queued-calls-table .queued-call", "successful", SHOWN)
        .await;
    let row = browser
        .text("#queued-calls-table .queued-call")
        .await
        .unwrap();
    assert!(
        row.contains("containers.list") && row.contains("otto"),
        "{row}"
    );
    let calls = api.get("/devices/dev-van/calls").await.unwrap();
    let call = &calls["calls"][0];
    assert_eq!(call["state"], "successful");
    assert!(
        call["result"]["containers"].is_array(),
        "the device's container list: {call}"
    );
    browser.close().await;
}
