//! The checks every frame from a device passes before the cloud acts on it:
//! strict parse, signature and meta, method name, and for an accepted
//! device's session the replay checks. What comes out is the verified
//! [`Message`](protocol::Message), never the raw text.

use std::sync::Mutex;

use protocol::{check_method_name, parse_frame, Expectation, Refusal, ReplayGuard, Verified};
use serde_json::{Map, Value};

/// A refused frame and the id to answer it with.
#[derive(Debug)]
pub(crate) struct Refused {
    pub refusal: Refusal,
    /// The request's id; JSON null when the frame could not be read at all
    /// (as JSON-RPC answers parse errors); `None` for notifications and
    /// responses, which are never answered.
    pub reply_to: Option<Value>,
}

impl Refused {
    /// A frame whose bytes could not be trusted to say which id it carries.
    fn unreadable(refusal: Refusal) -> Self {
        Refused {
            refusal,
            reply_to: Some(Value::Null),
        }
    }
}

pub(crate) fn binary_frame() -> Refused {
    Refused::unreadable(Refusal::BinaryFrame)
}

/// Strictly parses a text frame (size limit, no batches, no duplicate keys,
/// no unsafe numbers).
pub(crate) fn parse(text: &str, max_frame_bytes: usize) -> Result<Map<String, Value>, Refused> {
    parse_frame(text, max_frame_bytes).map_err(Refused::unreadable)
}

/// The id a refusal of this frame is answered with: only requests are.
pub(crate) fn request_id(frame: &Map<String, Value>) -> Option<Value> {
    match (frame.get("id"), frame.get("method")) {
        (Some(id), Some(_)) if id.is_string() || id.is_number() => Some(id.clone()),
        _ => None,
    }
}

/// Verifies signature and meta and checks the method name.
pub(crate) fn verify(frame: Map<String, Value>, expect: &Expectation) -> Result<Verified, Refused> {
    let reply_to = request_id(&frame);
    let refused = |refusal| Refused {
        refusal,
        reply_to: reply_to.clone(),
    };
    let verified = protocol::verify(frame, expect).map_err(refused)?;
    if let Some(method) = verified.message.method() {
        check_method_name(method).map_err(refused)?;
    }
    Ok(verified)
}

/// The replay checks of a verified frame on an accepted device's connection:
/// it was signed no earlier than the connection's authentication (so nothing
/// recorded on an earlier connection, even before a restart of the cloud,
/// is heard again), and its nonce is new to the cloud-wide replay guard,
/// which then remembers it under the device's proven key.
pub(crate) fn admit(
    verified: &Verified,
    authenticated_at: u64,
    now_ms: u64,
    replay_guard: &Mutex<ReplayGuard>,
) -> Result<(), Refusal> {
    let meta = &verified.meta;
    if meta.timestamp < authenticated_at {
        return Err(Refusal::OlderThanSession {
            signed_at: meta.timestamp,
            authenticated_at,
        });
    }
    replay_guard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .admit(&meta.signer_id, &meta.nonce, meta.timestamp, now_ms)
}
