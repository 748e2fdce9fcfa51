//! The sending side of one device connection: a bounded queue drained by a
//! single writer task that owns the socket's sink, and a stop token.
//!
//! Nobody else awaits the socket: handlers enqueue and move on, so a slow
//! device only ever slows itself. Closing is a request (code and reason) that
//! the writer carries out after the frames queued before it.

use std::sync::Mutex;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures::stream::SplitSink;
use futures::SinkExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use protocol::close_code;

/// Frames queued for one device before senders must wait.
pub const OUTBOX_CAPACITY: usize = 64;
/// Time the writer may spend on the close frame once the connection stops.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the writer task sends.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A signed JSON-RPC frame.
    Text(String),
    Ping,
}

/// The connection's outbox (see the module docs).
#[derive(Debug)]
pub(crate) struct Link {
    outbox: mpsc::Sender<Outgoing>,
    /// Cancelled when the connection must end, by either side.
    stop: CancellationToken,
    /// The whole cloud's shutdown (the parent of `stop`).
    shutdown: CancellationToken,
    /// The close frame to send, set by whoever asked first to close.
    close_frame: Mutex<Option<(u16, &'static str)>>,
    /// How long a sender waits on a full outbox before the device counts as
    /// not reading its socket.
    send_timeout: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LinkClosed;

impl Link {
    pub(crate) fn new(
        shutdown: &CancellationToken,
        send_timeout: Duration,
    ) -> (Link, mpsc::Receiver<Outgoing>) {
        let (outbox, receiver) = mpsc::channel(OUTBOX_CAPACITY);
        let link = Link {
            outbox,
            stop: shutdown.child_token(),
            shutdown: shutdown.clone(),
            close_frame: Mutex::new(None),
            send_timeout,
        };
        (link, receiver)
    }

    /// Queues a frame, waiting while the outbox is full, but not forever: a
    /// device that stops reading is closed.
    pub(crate) async fn send(&self, text: String) -> Result<(), LinkClosed> {
        if self.stop.is_cancelled() {
            return Err(LinkClosed);
        }
        tokio::select! {
            sent = tokio::time::timeout(self.send_timeout, self.outbox.send(Outgoing::Text(text))) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(LinkClosed),
                Err(_) => {
                    tracing::warn!("device is not reading its socket; closing");
                    self.close(close_code::UNRESPONSIVE, "not reading");
                    Err(LinkClosed)
                }
            },
            _ = self.stop.cancelled() => Err(LinkClosed),
        }
    }

    /// Queues a ping unless the outbox is full (then the device is busy anyway).
    pub(crate) fn ping(&self) {
        let _ = self.outbox.try_send(Outgoing::Ping);
    }

    /// Asks the writer to close with `code` after the frames already queued.
    /// The first request wins.
    pub(crate) fn close(&self, code: u16, reason: &'static str) {
        {
            let mut frame = self
                .close_frame
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            frame.get_or_insert((code, reason));
        }
        self.stop.cancel();
    }

    pub(crate) fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    fn take_close_frame(&self) -> Option<(u16, &'static str)> {
        self.close_frame
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// The writer task: sends queued frames in order until the connection stops,
/// then the close frame, if one was asked for.
pub(crate) async fn write_loop(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut outbox: mpsc::Receiver<Outgoing>,
    link: std::sync::Arc<Link>,
) {
    loop {
        // Biased: frames queued before a close request go out before the close.
        let next = tokio::select! {
            biased;
            next = outbox.recv() => next,
            _ = link.stop.cancelled() => None,
        };
        let Some(next) = next else { break };
        let message = match next {
            Outgoing::Text(text) => WsMessage::Text(Utf8Bytes::from(text)),
            Outgoing::Ping => WsMessage::Ping(Default::default()),
        };
        if let Err(e) = sink.send(message).await {
            tracing::debug!(error = %e, "device socket write failed");
            link.stop.cancel();
            return;
        }
    }
    let close = link.take_close_frame().or_else(|| {
        link.shutdown
            .is_cancelled()
            .then_some((close_code::GOING_AWAY, "cloud shutting down"))
    });
    if let Some((code, reason)) = close {
        let frame = WsMessage::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.send(frame)).await;
    }
}
