//! When a link to the cloud is given up: a handshake not finished by its
//! deadline, or a cloud not heard for more than two ping intervals. Only the
//! clock decides, and it is tokio's, so the tests run these rules at their
//! real lengths on tokio's paused clock.

use std::time::Duration;

use tokio::time::{interval_at, sleep_until, Instant, Interval, MissedTickBehavior};

/// Pings unanswered, in intervals, before the cloud counts as gone. One
/// interval of silence is a ping on its way; more than two is a dead link.
const SILENT_INTERVALS: u32 = 2;

/// What is due on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send a ping: the cloud's pong (or anything else it sends) proves the
    /// link.
    Ping,
    /// The handshake did not finish in time.
    HandshakeTimedOut,
    /// Nothing heard from the cloud for more than two ping intervals.
    CloudSilent,
}

impl Due {
    /// Why the link was given up, as the bridge's log and status say it.
    pub fn reason(self) -> &'static str {
        match self {
            Due::Ping => "ping due",
            Due::HandshakeTimedOut => "authentication handshake timed out",
            Due::CloudSilent => "cloud stopped answering pings",
        }
    }
}

/// One link's clock, from the moment the WebSocket opened.
#[derive(Debug)]
pub struct Liveness {
    ping_interval: Duration,
    pings: Interval,
    last_heard: Instant,
    /// Until the cloud has answered the authentication request.
    handshake_deadline: Option<Instant>,
}

impl Liveness {
    /// A link that opened now: its handshake must finish within
    /// `handshake_timeout`; a ping goes every `ping_interval`.
    pub fn start(ping_interval: Duration, handshake_timeout: Duration) -> Liveness {
        let now = Instant::now();
        let mut pings = interval_at(now + ping_interval, ping_interval);
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Liveness {
            ping_interval,
            pings,
            last_heard: now,
            handshake_deadline: Some(now + handshake_timeout),
        }
    }

    /// Something arrived from the cloud: a frame of any kind, pongs included.
    pub fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// The cloud answered the authentication request: no more deadline.
    pub fn authenticated(&mut self) {
        self.handshake_deadline = None;
    }

    /// Waits until something is due. Cancel-safe: a `select!` may drop it
    /// for another branch and call it again.
    pub async fn due(&mut self) -> Due {
        let deadline = self.handshake_deadline;
        let handshake = async move {
            match deadline {
                Some(deadline) => sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = handshake => Due::HandshakeTimedOut,
            _ = self.pings.tick() => {
                if self.last_heard.elapsed() > self.ping_interval * SILENT_INTERVALS {
                    Due::CloudSilent
                } else {
                    Due::Ping
                }
            }
        }
    }
}
