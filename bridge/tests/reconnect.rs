//! How long the bridge waits before connecting again: the policy alone, with
//! a chosen jitter and no clock.

use std::time::Duration;

use bridge::Reconnect;

const MIN: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(20);
const REJECTED: Duration = Duration::from_secs(600);

/// The policy with every jitter draw `draw` (a draw is in [0, 1]).
fn reconnect(draw: f64) -> Reconnect<impl FnMut() -> f64> {
    Reconnect::new(MIN, MAX, REJECTED, move || draw)
}

fn secs(waits: impl IntoIterator<Item = Duration>) -> Vec<f64> {
    waits.into_iter().map(|wait| wait.as_secs_f64()).collect()
}

#[test]
fn waits_double_from_the_minimum_up_to_the_maximum() {
    let mut policy = reconnect(1.0);
    let waits = (0..7).map(|_| policy.after_close(false));
    assert_eq!(secs(waits), [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]);
}

#[test]
fn jitter_draws_each_wait_from_the_upper_half_of_its_step_never_below_the_minimum() {
    let mut policy = reconnect(0.0);
    let waits = (0..7).map(|_| policy.after_close(false));
    assert_eq!(secs(waits), [1.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]);

    let mut policy = reconnect(0.5);
    let waits = (0..7).map(|_| policy.after_close(false));
    assert_eq!(secs(waits), [1.0, 1.5, 3.0, 6.0, 12.0, 15.0, 15.0]);
}

#[test]
fn every_wait_stays_within_the_minimum_and_the_maximum_whatever_the_jitter() {
    // Bounds the steps do not reach evenly by doubling.
    let (min, max) = (Duration::from_millis(50), Duration::from_millis(333));
    let draws = [0.0, 0.999, 0.25, 1.0, 0.5, 0.001, 0.75];
    let mut next = draws.iter().copied().cycle();
    let mut policy = Reconnect::new(min, max, REJECTED, move || next.next().unwrap());
    for attempt in 0..100 {
        // Now and then a connection authenticates, and the waits start over.
        let wait = policy.after_close(attempt % 17 == 16);
        assert!(
            (min..=max).contains(&wait),
            "attempt {attempt}: {wait:?} outside [{min:?}, {max:?}]"
        );
    }
}

#[test]
fn a_connection_that_authenticated_starts_the_waits_over() {
    let mut policy = reconnect(1.0);
    let waits =
        [false, false, false, true, false].map(|authenticated| policy.after_close(authenticated));
    assert_eq!(secs(waits), [1.0, 2.0, 4.0, 1.0, 2.0]);
}

#[test]
fn a_rejected_device_waits_the_rejected_backoff_then_the_waits_start_over() {
    let mut policy = reconnect(1.0);
    for _ in 0..10 {
        policy.after_close(false);
    }
    assert_eq!(policy.after_close(false), MAX);
    assert_eq!(policy.after_rejection(), REJECTED, "not the backoff's cap");
    assert_eq!(policy.after_close(false), MIN, "the waits start over");
    assert_eq!(policy.after_rejection(), REJECTED, "every time");
}
