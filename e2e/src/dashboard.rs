//! What the browser scenarios share: operator accounts made as `cloud
//! operators add` makes them, signing in through the form, and a device
//! accepted and live before the page opens.

use std::time::Duration;

use cloud::roles::Role;

use crate::browser::Browser;
use crate::stack::{wait_for_device, RunningCloud, RunningDevice};

/// Every account's password in the browser scenarios.
pub const PASSWORD: &str = "correct horse battery staple";

/// How long a page may take to show what it should; generous, since
/// browsers and a Docker engine share two cores in CI.
pub const SHOWN: Duration = Duration::from_secs(30);

/// An operator account with [`PASSWORD`], as `cloud operators add` on the host makes it.
pub async fn add_account(cloud: &RunningCloud, name: &str, role: Role) {
    cloud
        .state()
        .ops()
        .store()
        .accounts
        .add_operator(name, PASSWORD, role, protocol::now_ms() as i64)
        .await
        .expect("an operator account");
}

/// `http://<cloud>/<path>`.
pub fn url(cloud: &RunningCloud, path: &str) -> String {
    format!("http://{}{path}", cloud.addr)
}

/// Signs in as `name` (with [`PASSWORD`]) through the form, starting from
/// `path`; ends on `path`.
pub async fn sign_in_as(browser: &Browser, cloud: &RunningCloud, name: &str, path: &str) {
    sign_in_with(browser, cloud, name, PASSWORD, path).await;
}

/// Signs in as `name` with `password` through the form, starting from
/// `path`; ends on `path`.
pub async fn sign_in_with(
    browser: &Browser,
    cloud: &RunningCloud,
    name: &str,
    password: &str,
    path: &str,
) {
    browser.goto(&url(cloud, path)).await;
    browser.wait_for("#login-form", SHOWN).await;
    browser.fill("#name", name).await;
    browser.fill("#password", password).await;
    browser.click("#login-form button[type=submit]").await;
    browser.wait_for("body[data-page] .whoami", SHOWN).await;
    assert_eq!(browser.path().await, path);
}

/// A device whose key an admin accepted through the API, online with its worker.
pub async fn accepted_device(cloud: &RunningCloud, id: &str) -> RunningDevice {
    let device = RunningDevice::start(id, cloud).await;
    let api = cloud.api();
    wait_for_device(&api, id, "the device's key to arrive", |d| {
        d["status"] == "pending"
    })
    .await;
    api.accept(id).await.expect("accepted");
    wait_for_device(&api, id, "the device to be live", |d| {
        d["status"] == "accepted" && d["online"] == true
    })
    .await;
    device
}
