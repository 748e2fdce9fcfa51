//! `GET /ws/device`: upgrades a device's connection and hands it to a session.
//!
//! Buffers are kept small because a cloud holds tens of thousands of these.

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocol::SUBPROTOCOL;

use super::connection;
use super::Devices;
use crate::client_address::ClientAddress;

/// Socket read chunk; a message larger than this is assembled as it arrives.
/// Every connection keeps one, idle or not: 2 KiB holds a call's answer
/// (about 500 bytes for `rpc.discover`) and costs an idle device 2 KiB less
/// than 4 did (BENCHMARKS.md).
const READ_BUFFER_BYTES: usize = 2 * 1024;
/// The transport's hard cap is this many times the protocol's frame limit, so
/// that a frame just over the limit is refused with an error, not a cut socket.
const TRANSPORT_CAP_FACTOR: usize = 4;

/// Refuses the upgrade (before any WebSocket exists) when the client address
/// is over its handshake rate (429) or no unauthenticated slot is free (503).
pub(crate) async fn upgrade(
    State(state): State<Devices>,
    ClientAddress(address): ClientAddress,
    ws: WebSocketUpgrade,
) -> Response {
    let offered = ws
        .requested_protocols()
        .any(|p| p.as_bytes() == SUBPROTOCOL.as_bytes());
    if !offered {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "the WebSocket subprotocol {SUBPROTOCOL} is required \
                 (send it in Sec-WebSocket-Protocol)\n"
            ),
        )
            .into_response();
    }
    let slot = match state.admission().open_device_socket(address) {
        Ok(slot) => slot,
        Err(refused) => {
            tracing::info!(%address, reason = refused.reason, "{}", refused.message);
            state.metrics().handshake_refused(refused.reason);
            let status = if refused.reason == "too_many_handshakes" {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return (status, format!("{}\n", refused.message)).into_response();
        }
    };
    let transport_cap = TRANSPORT_CAP_FACTOR * state.config().max_frame_bytes;
    let tracker = state.session_tracker().clone();
    ws.protocols([SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER_BYTES)
        // Written straight to the socket: no per-connection write buffer to keep.
        .write_buffer_size(0)
        .max_message_size(transport_cap)
        .max_frame_size(transport_cap)
        .on_failed_upgrade(|error| tracing::info!(%error, "device WebSocket upgrade failed"))
        .on_upgrade(move |socket| {
            tracker.track_future(connection::run_connection(state, socket, address, slot))
        })
}
