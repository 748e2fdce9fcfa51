//! Signed frames for tests, whichever side signs them: valid by default, then
//! changed before signing (signer, key, audience, direction, time) or
//! tampered with after, so that a test sends exactly the frame it means to.
//! What a fake sends as a real end would, its `Peer` signs; these are the
//! frames a test holds on to, sends twice or forges.

use std::time::Duration;

use protocol::keys::PrivateKey;
use protocol::{Direction, Message};
use serde_json::{Map, Value};

/// A frame in the making: `message` signed now by `signer_id` with `key` for
/// `audience`, in `direction`; change any of that before [`FrameBuilder::sign`].
pub struct FrameBuilder {
    message: Message,
    signer_id: String,
    key: PrivateKey,
    audience: String,
    direction: Direction,
    timestamp_ms: u64,
}

impl FrameBuilder {
    pub fn new(
        message: Message,
        signer_id: &str,
        key: PrivateKey,
        audience: &str,
        direction: Direction,
    ) -> Self {
        FrameBuilder {
            message,
            signer_id: signer_id.to_owned(),
            key,
            audience: audience.to_owned(),
            direction,
            timestamp_ms: protocol::now_ms(),
        }
    }

    pub fn audience(mut self, audience: &str) -> Self {
        self.audience = audience.to_owned();
        self
    }

    pub fn direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// Signed `age` ago.
    pub fn aged(mut self, age: Duration) -> Self {
        self.timestamp_ms = protocol::now_ms() - age.as_millis() as u64;
        self
    }

    /// Signed by a clock `ahead` of now.
    pub fn ahead(mut self, ahead: Duration) -> Self {
        self.timestamp_ms = protocol::now_ms() + ahead.as_millis() as u64;
        self
    }

    /// Signed under another signer id (with the same key).
    pub fn signer_id(mut self, id: &str) -> Self {
        self.signer_id = id.to_owned();
        self
    }

    /// Signed with another key (under the same signer id).
    pub fn key(mut self, key: PrivateKey) -> Self {
        self.key = key;
        self
    }

    /// Signs with a fresh random nonce.
    pub fn sign(self) -> SignedFrame {
        let frame = protocol::sign(
            &self.message,
            &self.key,
            &self.signer_id,
            &self.audience,
            self.direction,
            rand::random(),
            self.timestamp_ms,
        );
        SignedFrame(Value::Object(frame))
    }
}

/// A signed frame, which a test can send as is or tamper with after signing.
#[derive(Debug, Clone)]
pub struct SignedFrame(Value);

impl SignedFrame {
    /// The frame text (compact JSON).
    pub fn text(&self) -> String {
        self.0.to_string()
    }

    /// The member at a JSON pointer such as `/meta/nonce`.
    pub fn get(&self, pointer: &str) -> Option<&Value> {
        self.0.pointer(pointer)
    }

    /// Sets (or adds) the member at a JSON pointer such as `/params/all` or
    /// `/meta/audience_id`, after signing.
    pub fn tampered(mut self, pointer: &str, value: Value) -> Self {
        let (parent, last) = split_pointer(pointer);
        self.parent_mut(parent).insert(last.to_owned(), value);
        self
    }

    /// Removes the member at a JSON pointer, after signing.
    pub fn without(mut self, pointer: &str) -> Self {
        let (parent, last) = split_pointer(pointer);
        self.parent_mut(parent).remove(last);
        self
    }

    fn parent_mut(&mut self, parent: &str) -> &mut Map<String, Value> {
        self.0
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("{parent:?} is not an object in the frame"))
    }
}

fn split_pointer(pointer: &str) -> (&str, &str) {
    pointer
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("{pointer:?} is not a JSON pointer"))
}
