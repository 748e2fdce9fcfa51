//! The link's life: the states announced on `bridge.status`, reconnecting by
//! itself, and backing off longer after the cloud rejects the device.

mod support;

use std::time::Duration;

use bridge::BridgeConfig;
use protocol::auth::AuthStatus;
use protocol::close_code::REJECTED;
use serde_json::json;
use support::{live, scenario, served, Scenario};
use testkit::{wait_until, PROMPTLY};
use tokio::time::Instant;

// ----- bridge.status ---------------------------------------------------------------

#[tokio::test]
async fn bridge_status_announces_connecting_then_live() {
    let mut s = scenario(|_| {}).await;
    let _link = s.cloud.connect_device(AuthStatus::Accepted).await;
    let states = wait_until("live on bridge.status", PROMPTLY, || async {
        let states = s.statuses();
        states.contains(&"live".to_owned()).then_some(states)
    })
    .await;
    assert_eq!(states, ["connecting", "live"]);
}

#[tokio::test]
async fn bridge_status_announces_pending_before_live() {
    let mut s = scenario(|_| {}).await;
    let link = s.cloud.connect_device(AuthStatus::Pending).await;
    wait_until("pending on bridge.status", PROMPTLY, || async {
        (s.statuses() == ["connecting", "pending"]).then_some(())
    })
    .await;

    link.send_status(AuthStatus::Accepted);
    let states = wait_until("live on bridge.status", PROMPTLY, || async {
        let states = s.statuses();
        states.contains(&"live".to_owned()).then_some(states)
    })
    .await;
    assert_eq!(states, ["connecting", "pending", "live"]);
}

// ----- reconnecting -----------------------------------------------------------------

#[tokio::test]
async fn reconnects_by_itself_when_the_cloud_drops_the_connection() {
    let (mut s, link) = live(|_| {}).await;
    link.drop_connection();

    let mut link = s.cloud.connect_device(AuthStatus::Accepted).await;
    let outcome = link.call("again", "containers.list", json!({})).await;
    assert_eq!(outcome, served("containers.list"));
    assert_eq!(s.cloud.connections(), 2);
}

#[tokio::test]
async fn reconnects_by_itself_when_the_cloud_restarts_on_the_same_port() {
    let (mut s, _link) = live(|_| {}).await;
    let url = s.cloud.url();
    s.cloud.restart().await;
    assert_eq!(s.cloud.url(), url);

    let mut link = s.cloud.connect_device(AuthStatus::Accepted).await;
    let outcome = link.call("again", "containers.list", json!({})).await;
    assert_eq!(outcome, served("containers.list"));
}

/// Backoff settings for the rejection tests: plain reconnects within 100 ms,
/// a rejection waits 2 s. Margins are generous; the point is the difference.
fn rejection_backoff(c: &mut BridgeConfig) {
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(100);
    c.rejected_backoff = Duration::from_secs(2);
}

async fn assert_backs_off_for_rejection(s: &mut Scenario, rejected_at: Instant) {
    assert!(
        s.cloud
            .accept_within(Duration::from_secs(1))
            .await
            .is_none(),
        "no new connection within the first second after a rejection"
    );
    let _next = s.cloud.accept().await;
    let waited = rejected_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "reconnected {waited:?} after the rejection; rejected_backoff is 2 s"
    );
}

#[tokio::test]
async fn a_rejected_device_backs_off_longer_than_a_dropped_one() {
    let (mut s, link) = live(rejection_backoff).await;

    let dropped = Instant::now();
    link.drop_connection();
    let mut link = s.cloud.accept().await;
    assert!(
        dropped.elapsed() < Duration::from_secs(1),
        "a plain drop reconnects fast ({:?})",
        dropped.elapsed()
    );

    let challenge = link.send_challenge();
    let auth = link.recv_authenticate(&challenge).await;
    let rejected_at = Instant::now();
    link.answer_authenticate(&auth, AuthStatus::Rejected);
    link.closed().await;
    assert_backs_off_for_rejection(&mut s, rejected_at).await;
    assert!(s.statuses().contains(&"rejected".to_owned()));
}

#[tokio::test]
async fn close_code_4001_while_live_backs_off_long() {
    let (mut s, mut link) = live(rejection_backoff).await;
    let rejected_at = Instant::now();
    link.close(REJECTED, "device rejected by an operator");
    link.closed().await;
    assert_backs_off_for_rejection(&mut s, rejected_at).await;
}

#[tokio::test]
async fn a_cloud_that_stops_answering_is_given_up_and_connected_to_again() {
    let interval = Duration::from_millis(200);
    let (mut s, link) = live(|c| c.ping_interval = interval).await;
    let silent_at = Instant::now();
    link.go_silent();
    let mut next = s.cloud.accept().await;
    let waited = silent_at.elapsed();
    assert!(
        waited >= 2 * interval,
        "gave the link up {waited:?} after the cloud went silent: sooner than 2 × {interval:?}"
    );
    next.handshake(AuthStatus::Accepted).await;
    let outcome = next.call("after", "containers.list", json!({})).await;
    assert_eq!(outcome, served("containers.list"));
}

#[tokio::test]
async fn a_cloud_that_never_challenges_is_given_up_and_connected_to_again() {
    let timeout = Duration::from_millis(300);
    let mut s = scenario(|c| c.connect_timeout = timeout).await;
    let _mute = s.cloud.accept().await;
    let connected_at = Instant::now();
    let mut next = s.cloud.accept().await;
    assert!(
        connected_at.elapsed() >= timeout - Duration::from_millis(50),
        "connected again {:?} after a cloud that never challenged; connect_timeout is {timeout:?}",
        connected_at.elapsed()
    );
    next.handshake(AuthStatus::Accepted).await;
    let outcome = next.call("after", "containers.list", json!({})).await;
    assert_eq!(outcome, served("containers.list"));
}
