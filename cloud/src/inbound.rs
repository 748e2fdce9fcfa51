//! The checks every frame from a device passes before the cloud acts on it:
//! strict parse, signature and meta, replay guard, method name. What comes out
//! is the verified [`Message`](protocol::Message), never the raw text.

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

/// Verifies signature and meta, admits the nonce to the cloud-wide replay
/// guard, and checks the method name.
pub(crate) fn verify(
    frame: Map<String, Value>,
    expect: &Expectation,
    replay_guard: &Mutex<ReplayGuard>,
) -> Result<Verified, Refused> {
    let reply_to = request_id(&frame);
    let refused = |refusal| Refused {
        refusal,
        reply_to: reply_to.clone(),
    };
    let verified = protocol::verify(frame, expect).map_err(refused)?;
    {
        let mut guard = replay_guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard
            .admit(
                &verified.meta.signer_id,
                &verified.meta.nonce,
                verified.meta.timestamp,
                expect.now_ms,
            )
            .map_err(refused)?;
    }
    if let Some(method) = verified.message.method() {
        check_method_name(method).map_err(refused)?;
    }
    Ok(verified)
}
