//! A bridge reaches a cloud behind a TLS-terminating proxy over `wss://`,
//! trusting only the CA it is given.

use std::time::Duration;

use e2e::stack::{wait_for_device, RunningCloud, RunningDevice, SOON};
use e2e::tls_proxy::TlsProxy;
use protocol::keys;
use testkit::wait_until;

#[tokio::test]
async fn a_bridge_trusting_the_proxy_certificate_registers_over_wss() {
    let cloud = RunningCloud::start().await;
    let proxy = TlsProxy::start(cloud.addr).await;
    let certificate = proxy.certificate.clone();
    let _device =
        RunningDevice::start_bridge_only("device-tls", keys::generate(), &cloud, |config| {
            config.cloud_url = proxy.wss_url();
            config.tls = bridge::tls::client_config(Some(vec![certificate])).unwrap();
        })
        .await;
    let pending = wait_for_device(
        &cloud.api(),
        "device-tls",
        "the device pending, over TLS",
        |d| d["status"] == "pending",
    )
    .await;
    assert_eq!(pending["online"], true);
    assert_eq!(proxy.failed_handshakes(), 0);
}

#[tokio::test]
async fn a_bridge_that_does_not_trust_the_certificate_never_reaches_the_cloud() {
    let cloud = RunningCloud::start().await;
    let proxy = TlsProxy::start(cloud.addr).await;
    // Default trust: Mozilla's roots, which did not sign the proxy's certificate.
    let _device =
        RunningDevice::start_bridge_only("device-untrusting", keys::generate(), &cloud, |config| {
            config.cloud_url = proxy.wss_url();
            config.reconnect_max = Duration::from_millis(100);
        })
        .await;
    wait_until("two refused TLS handshakes", SOON, || async {
        (proxy.failed_handshakes() >= 2).then_some(())
    })
    .await;
    let unknown = cloud
        .api()
        .device("device-untrusting")
        .await
        .expect_err("nothing reached the cloud");
    assert_eq!(unknown.status(), Some(404), "{unknown:?}");
}
