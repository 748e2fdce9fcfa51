//! When the bridge gives a link up, at the real lengths of its settings (a
//! 20 s ping interval, a 10 s handshake), on tokio's paused clock: each wait
//! takes no time, and every instant below is exact. The session drives the
//! same `Liveness` over a real socket (see `connection.rs` for that, with
//! short settings on the real clock).

use std::time::Duration;

use bridge::{Due, Liveness};
use tokio::time::{advance, Instant};

const PING: Duration = Duration::from_secs(20);
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The next thing due, and how long after `start` it came.
async fn next(liveness: &mut Liveness, start: Instant) -> (Due, Duration) {
    let due = liveness.due().await;
    (due, start.elapsed())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn a_heard_cloud_gets_a_ping_every_interval_for_ever() {
    let start = Instant::now();
    let mut liveness = Liveness::start(PING, HANDSHAKE);
    liveness.authenticated();
    for n in 1..=10 {
        assert_eq!(next(&mut liveness, start).await, (Due::Ping, PING * n));
        // The pong comes back at once.
        liveness.heard();
    }
}

#[tokio::test(start_paused = true)]
async fn a_cloud_silent_for_more_than_two_intervals_is_given_up_at_the_third_ping() {
    let start = Instant::now();
    let mut liveness = Liveness::start(PING, HANDSHAKE);
    liveness.authenticated();
    assert_eq!(next(&mut liveness, start).await, (Due::Ping, secs(20)));
    assert_eq!(next(&mut liveness, start).await, (Due::Ping, secs(40)));
    assert_eq!(
        next(&mut liveness, start).await,
        (Due::CloudSilent, secs(60))
    );
}

#[tokio::test(start_paused = true)]
async fn anything_heard_counts_and_silence_is_counted_from_the_last_of_it() {
    let start = Instant::now();
    let mut liveness = Liveness::start(PING, HANDSHAKE);
    liveness.authenticated();
    assert_eq!(next(&mut liveness, start).await, (Due::Ping, secs(20)));
    // A request from the cloud, between two pings.
    advance(secs(5)).await;
    liveness.heard();
    assert_eq!(next(&mut liveness, start).await, (Due::Ping, secs(40)));
    assert_eq!(next(&mut liveness, start).await, (Due::Ping, secs(60)));
    assert_eq!(
        next(&mut liveness, start).await,
        (Due::CloudSilent, secs(80)),
        "silent since 25 s: more than 40 s only at the ping of 80 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_handshake_not_finished_in_time_is_given_up_at_its_deadline() {
    let start = Instant::now();
    let mut liveness = Liveness::start(PING, HANDSHAKE);
    // The challenge arrived, nothing after it.
    liveness.heard();
    assert_eq!(
        next(&mut liveness, start).await,
        (Due::HandshakeTimedOut, HANDSHAKE)
    );
}

#[tokio::test(start_paused = true)]
async fn a_handshake_finished_in_time_lifts_the_deadline() {
    let start = Instant::now();
    let mut liveness = Liveness::start(PING, HANDSHAKE);
    advance(HANDSHAKE - Duration::from_millis(1)).await;
    liveness.heard();
    liveness.authenticated();
    assert_eq!(next(&mut liveness, start).await, (Due::Ping, PING));
}

#[tokio::test(start_paused = true)]
async fn waiting_is_cancel_safe_inside_a_select() {
    let start = Instant::now();
    let mut liveness = Liveness::start(PING, HANDSHAKE);
    liveness.authenticated();
    // The session's select! drops `due()` whenever a frame wins; the ping
    // schedule must not slip for it.
    for _ in 0..19 {
        tokio::select! {
            _ = liveness.due() => panic!("nothing is due before 20 s"),
            _ = tokio::time::sleep(Duration::from_secs(1)) => liveness.heard(),
        }
    }
    assert_eq!(next(&mut liveness, start).await, (Due::Ping, PING));
}
