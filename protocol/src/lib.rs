//! Signed JSON-RPC v1: the wire protocol between the cloud and a device's bridge.
//!
//! Everything here is pure: parsing a frame, signing, verifying, the replay
//! guard and the [`peer`] take their inputs (bytes, keys, "now") as arguments
//! and touch no socket, broker or clock. The only I/O is reading and writing
//! key files in [`keys`], and [`now_ms`], the clock reading callers pass in.
#![forbid(unsafe_code)]

pub mod auth;
pub mod calls;
mod clock;
pub mod close_code;
pub mod cloud_keys;
pub mod error;
pub mod frame;
pub mod keys;
pub mod message;
pub mod method;
pub mod nats;
pub mod peer;
pub mod replay;
pub mod rotation;
pub mod sign;

pub use calls::CallTable;
pub use clock::now_ms;
pub use error::{ErrorCode, Refusal};
pub use frame::{
    find_unsafe_number, is_safe_number, parse_frame, DEFAULT_MAX_FRAME_BYTES, MAX_SAFE_INTEGER,
};
pub use message::{Direction, Message, Meta, RpcError, ANY_AUDIENCE};
pub use method::{check_method_name, is_valid_device_id};
pub use peer::{Peer, Refused, Remote, Side, Unverified};
pub use replay::ReplayGuard;
pub use sign::{
    canonical_signing_bytes, nonce_text, random_nonce, sign, verify, Expectation, Signer, Verified,
    ALGORITHM, DEFAULT_SKEW_MS, SIGNING_TAG,
};

/// WebSocket subprotocol both sides must agree on.
pub const SUBPROTOCOL: &str = "signed-jsonrpc.v1";
