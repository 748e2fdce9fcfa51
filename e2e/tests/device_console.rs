//! The device page in a real headless Chromium, against the real cloud, a
//! real device (nats-server, bridge, worker) and the real Docker engine: the
//! system the device runs, its container events arriving live, and the RPC
//! console — any method `rpc.discover` lists, as far as the caller's role
//! allows, through the same call route, role check and audit as every button.

use cloud::roles::Role;
use e2e::browser::Browser;
use e2e::dashboard::{accepted_device, add_account, sign_in_as, url, SHOWN};
use e2e::stack::RunningCloud;
use fantoccini::Locator;
use testkit::docker::TestContainer;

/// Chooses `method` in the console's method list, as a person picking it would.
async fn choose_method(browser: &Browser, method: &str) {
    browser
        .wait_for(&format!("#console-method option[value='{method}']"), SHOWN)
        .await;
    let select = browser
        .client
        .find(Locator::Css("#console-method"))
        .await
        .expect("the method list");
    select
        .select_by_value(method)
        .await
        .unwrap_or_else(|e| panic!("choosing {method}: {e}"));
}

/// The methods the console offers.
async fn offered_methods(browser: &Browser) -> Vec<String> {
    let value = browser
        .script(
            "return [...document.querySelectorAll('#console-method option')].map(o => o.value);",
        )
        .await;
    serde_json::from_value(value).expect("a list of method names")
}

/// Types `params` into the console and calls.
async fn call(browser: &Browser, params: &str) {
    browser.fill("#console-params", params).await;
    browser.click("#console-call").await;
}

#[tokio::test]
async fn an_operator_sees_the_system_watches_container_events_arrive_and_uses_the_console() {
    let cloud = RunningCloud::start().await;
    add_account(&cloud, "otto", Role::Operator).await;
    let _device = accepted_device(&cloud, "dev-1").await;
    let browser = Browser::start().await;
    sign_in_as(&browser, &cloud, "otto", "/devices/dev-1").await;

    // System information, as the device's Docker engine describes its host.
    let host = testkit::docker::docker()
        .await
        .info()
        .await
        .expect("Docker describes its host");
    let kernel = host.kernel_version.expect("a kernel version");
    browser
        .wait_for_text("#system-kernel", &kernel, SHOWN)
        .await;
    let hostname = host.name.expect("a hostname");
    assert_eq!(browser.text("#system-hostname").await, Some(hostname));
    let architecture = host.architecture.expect("an architecture");
    assert_eq!(
        browser.text("#system-architecture").await,
        Some(architecture)
    );
    let os = browser.text("#system-os").await.unwrap_or_default();
    assert!(
        os.contains(&host.operating_system.expect("an OS name")),
        "{os}"
    );

    // A container started while the page is open appears in its events, live.
    let container =
        TestContainer::start("trap 'exit 0' TERM; while true; do sleep 0.2; done").await;
    let started = "#container-events-body tr:first-child";
    testkit::wait_until("the container's start event", SHOWN, || async {
        let rows = browser.text("#container-events-body").await?;
        rows.lines()
            .any(|row| row.contains(&container.name) && row.contains("start"))
            .then_some(())
    })
    .await;
    assert!(
        browser
            .text(started)
            .await
            .is_some_and(|row| row.contains(&container.name)),
        "the newest event comes first"
    );
    browser.screenshot("device-system-and-events").await;

    // The console: containers.inspect has no button on the page.
    browser.click("#console-details summary").await;
    choose_method(&browser, "containers.inspect").await;
    browser
        .wait_for_text("#console-param-names", "Params: container", SHOWN)
        .await;
    let offered = offered_methods(&browser).await;
    for method in ["containers.stop", "system.info", "rpc.discover"] {
        assert!(
            offered.contains(&method.to_owned()),
            "{method} in {offered:?}"
        );
    }
    call(
        &browser,
        &format!(r#"{{"container": "{}"}}"#, container.name),
    )
    .await;
    browser
        .wait_for_text("#console-message", "containers.inspect answered", SHOWN)
        .await;
    let result = browser
        .wait_for_text("#console-result", &container.id, SHOWN)
        .await;
    assert!(result.contains("\"state\""), "{result}");
    browser.screenshot("device-console-answer").await;

    // The device's refusal comes back as its kind and message.
    call(&browser, r#"{"container": "../etc"}"#).await;
    let refused = browser
        .wait_for_text("#console-message", "device_error:", SHOWN)
        .await;
    assert!(refused.contains("invalid container reference"), "{refused}");
    // Params that are not a JSON object or array never leave the page.
    for (params, says) in [
        (r#"{"container": "#, "not JSON"),
        (r#""web""#, "must be a JSON object or array"),
    ] {
        call(&browser, params).await;
        browser.wait_for_text("#console-message", says, SHOWN).await;
    }
    let oversize = format!(r#"{{"pad": "{}"}}"#, "x".repeat(70 * 1024));
    browser
        .script(&format!(
            "document.getElementById('console-params').value = {}; return null;",
            serde_json::to_string(&oversize).unwrap()
        ))
        .await;
    browser.click("#console-call").await;
    browser
        .wait_for_text("#console-message", "at most 65536", SHOWN)
        .await;

    // The console's calls are the operator's calls in the audit log.
    let audit = cloud
        .api()
        .audit("actor=otto&action=rpc")
        .await
        .expect("the audit log");
    let inspected: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["detail"] == "containers.inspect")
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(inspected, ["device_error", "ok"], "{audit}");

    // Stopping the container is listed too, newest first.
    drop(container);
    testkit::wait_until("the container's removal events", SHOWN, || async {
        browser
            .text(started)
            .await
            .filter(|row| row.contains("destroy") || row.contains("die"))
    })
    .await;
    browser.close().await;
}

#[tokio::test]
async fn a_viewer_is_offered_only_the_methods_its_role_may_call() {
    let cloud = RunningCloud::start().await;
    add_account(&cloud, "vera", Role::Viewer).await;
    let _device = accepted_device(&cloud, "dev-1").await;
    let browser = Browser::start().await;
    sign_in_as(&browser, &cloud, "vera", "/devices/dev-1").await;
    browser.goto(&url(&cloud, "/devices/dev-1")).await;

    browser.click("#console-details summary").await;
    choose_method(&browser, "system.health").await;
    browser
        .wait_for_text("#console-message", "need a higher role", SHOWN)
        .await;
    let offered = offered_methods(&browser).await;
    assert_eq!(
        offered,
        [
            "containers.inspect",
            "containers.list",
            "containers.logs",
            "rpc.discover",
            "system.health",
            "system.info",
        ]
    );
    browser
        .wait_for_text("#console-param-names", "takes no params", SHOWN)
        .await;
    call(&browser, "{}").await;
    browser
        .wait_for_text("#console-result", "uptime_secs", SHOWN)
        .await;
    browser.screenshot("device-console-viewer").await;
    browser.close().await;
}
