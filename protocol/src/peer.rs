//! One end of a signed connection, without its I/O: each end drives it with
//! its own socket and clock.
//!
//! [`Side`] is this end: who signs here, which way frames flow toward it, and
//! the limits it holds them to. [`Peer`] is this end talking to one known
//! [`Remote`]. Every text frame it receives passes, in this order: the size
//! cap and the strict parse; `meta` and the signature (algorithm, signer,
//! signature, audience, direction, timestamp skew; see [`crate::verify`]);
//! the method name; and, when the receiver will act on the frame, the replay
//! checks: signed no earlier than the connection's authentication, with a
//! nonce the guard has not seen. What comes out is the verified message, or
//! a [`Refused`] carrying the signed error that answers it. [`Side::sign`] is
//! the one place that stamps `meta` on what is sent.
//!
//! Everything takes `&self`: a connection shared by many tasks receives on
//! one and signs on the others.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use serde_json::{Map, Value};

use crate::auth;
use crate::error::Refusal;
use crate::frame::{is_safe_number, parse_frame, DEFAULT_MAX_FRAME_BYTES};
use crate::keys::PublicKey;
use crate::message::{Direction, Message, RpcError, ANY_AUDIENCE};
use crate::method::check_method_name;
use crate::replay::ReplayGuard;
use crate::sign::{random_nonce, verify, Expectation, Signer, Verified, DEFAULT_SKEW_MS};

/// This end of every connection (see the module docs).
#[derive(Clone)]
pub struct Side {
    signer: Arc<Signer>,
    sends: Direction,
    hears: Direction,
    skew_ms: u64,
    max_frame_bytes: usize,
    /// See [`Side::reading_ids_despite_parse_errors`].
    reads_ids_despite_parse_errors: bool,
}

impl Side {
    /// The cloud's end: it hears devices.
    pub fn cloud(signer: Arc<Signer>) -> Self {
        Side::new(signer, Direction::CloudToDevice, Direction::DeviceToCloud)
    }

    /// A device's end: it hears the cloud.
    pub fn device(signer: Arc<Signer>) -> Self {
        Side::new(signer, Direction::DeviceToCloud, Direction::CloudToDevice)
    }

    fn new(signer: Arc<Signer>, sends: Direction, hears: Direction) -> Self {
        Side {
            signer,
            sends,
            hears,
            skew_ms: DEFAULT_SKEW_MS,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            reads_ids_despite_parse_errors: false,
        }
    }

    /// The clock skew allowed between signer and receiver, which is also the
    /// replay window ([`DEFAULT_SKEW_MS`] unless set).
    pub fn with_skew_ms(mut self, skew_ms: u64) -> Self {
        self.skew_ms = skew_ms;
        self
    }

    /// The largest text frame parsed ([`DEFAULT_MAX_FRAME_BYTES`] unless set).
    pub fn with_max_frame_bytes(mut self, max_frame_bytes: usize) -> Self {
        self.max_frame_bytes = max_frame_bytes;
        self
    }

    /// Answers a request that the strict parser refused for a duplicate key
    /// or an unsafe number under the request's id, read leniently, so that
    /// the sender hears which of its requests failed. Without this, such a
    /// refusal is answered with id null, as any unreadable frame is.
    pub fn reading_ids_despite_parse_errors(mut self) -> Self {
        self.reads_ids_despite_parse_errors = true;
        self
    }

    /// The id this end signs as.
    pub fn id(&self) -> &str {
        self.signer.id()
    }

    /// Signs `message` for `audience`, stamped `now_ms`.
    pub fn sign(&self, message: &Message, audience: &str, now_ms: u64) -> String {
        self.signer
            .sign_to_text(message, audience, self.sends, now_ms)
    }

    /// Parses a text frame from a party not known yet (see [`Peer::verify`]);
    /// a refusal is answered for anyone.
    pub fn parse(&self, text: &str, now_ms: u64) -> Result<Unverified, Refused> {
        self.parse_for(text, ANY_AUDIENCE, now_ms)
    }

    /// Refuses a binary frame from a party not known yet, answering for anyone.
    pub fn refuse_binary(&self, now_ms: u64) -> Refused {
        self.refuse(
            Refusal::BinaryFrame,
            Some(Value::Null),
            ANY_AUDIENCE,
            now_ms,
        )
    }

    /// This end talking to `remote`.
    pub fn peer(&self, remote: Remote) -> Peer {
        Peer::new(self.clone(), remote.id, vec![remote.key])
    }

    /// This end talking to `remote_id`, whose frames verify with any of
    /// `keys` (the most recently trusted first; at least one).
    pub fn peer_trusting(&self, remote_id: String, keys: Vec<PublicKey>) -> Peer {
        assert!(!keys.is_empty(), "a remote is trusted with some key");
        Peer::new(self.clone(), remote_id, keys)
    }

    fn parse_for(&self, text: &str, audience: &str, now_ms: u64) -> Result<Unverified, Refused> {
        self.parse_as(&self.signer, text, audience, now_ms)
    }

    /// Parses `text`, a refusal being signed by `signer`.
    fn parse_as(
        &self,
        signer: &Signer,
        text: &str,
        audience: &str,
        now_ms: u64,
    ) -> Result<Unverified, Refused> {
        parse_frame(text, self.max_frame_bytes)
            .map(Unverified)
            .map_err(|refusal| {
                let id = match self.reads_ids_despite_parse_errors {
                    true => request_id_despite(text, &refusal),
                    false => None,
                };
                self.refuse_as(
                    signer,
                    refusal,
                    Some(id.unwrap_or(Value::Null)),
                    audience,
                    now_ms,
                )
            })
    }

    fn refuse(
        &self,
        refusal: Refusal,
        reply_to: Option<Value>,
        audience: &str,
        now_ms: u64,
    ) -> Refused {
        self.refuse_as(&self.signer, refusal, reply_to, audience, now_ms)
    }

    fn refuse_as(
        &self,
        signer: &Signer,
        refusal: Refusal,
        reply_to: Option<Value>,
        audience: &str,
        now_ms: u64,
    ) -> Refused {
        let reply = reply_to.map(|id| {
            let error = Message::error(id, RpcError::refused(&refusal));
            signer.sign_to_text(&error, audience, self.sends, now_ms)
        });
        Refused { refusal, reply }
    }

    /// Whom `frame` must be addressed to. Only the challenge notification may
    /// be addressed to anyone: the cloud sends it before it knows who
    /// connected, and only a device hears one.
    fn audience_of(&self, frame: &Unverified) -> &str {
        if self.hears == Direction::CloudToDevice && frame.is_challenge() {
            ANY_AUDIENCE
        } else {
            self.id()
        }
    }
}

/// The other end of a connection: the only signer heard on it, and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub id: String,
    pub key: PublicKey,
}

/// This end talking to one [`Remote`] (see the module docs).
///
/// Keys may change while the connection lives: the remote's (a device
/// rotated its key; a device trusts one more cloud key) and this end's own
/// (see [`Peer::set_signer`]). Each is read for one frame at a time, never
/// held across an await.
pub struct Peer {
    side: Side,
    remote_id: String,
    remote_keys: RwLock<RemoteKeys>,
    /// Who signs here; starts as the [`Side`]'s signer.
    signer: RwLock<Arc<Signer>>,
    /// See [`Peer::authenticated`].
    authenticated_at: OnceLock<u64>,
}

/// The keys a remote's frames verify with.
#[derive(Debug, Clone)]
struct RemoteKeys {
    /// The most recently trusted first, so it is tried first.
    newest_first: Vec<PublicKey>,
    /// Set by [`Peer::replace_remote_key`]: the older keys are heard only
    /// until the first frame signed with the newest.
    superseded: bool,
}

impl Clone for Peer {
    fn clone(&self) -> Self {
        Peer {
            side: self.side.clone(),
            remote_id: self.remote_id.clone(),
            remote_keys: RwLock::new(read(&self.remote_keys).clone()),
            signer: RwLock::new(self.signer()),
            authenticated_at: self.authenticated_at.clone(),
        }
    }
}

impl Peer {
    fn new(side: Side, remote_id: String, newest_first: Vec<PublicKey>) -> Self {
        Peer {
            signer: RwLock::new(side.signer.clone()),
            side,
            remote_id,
            remote_keys: RwLock::new(RemoteKeys {
                newest_first,
                superseded: false,
            }),
            authenticated_at: OnceLock::new(),
        }
    }

    /// The one signer heard on this connection.
    pub fn remote_id(&self) -> &str {
        &self.remote_id
    }

    /// The keys the remote's frames verify with, the most recently trusted first.
    pub fn remote_keys(&self) -> Vec<PublicKey> {
        read(&self.remote_keys).newest_first.clone()
    }

    /// Trusts one more key of the remote, tried first from now on.
    pub fn trust_remote_key(&self, key: PublicKey) {
        let mut keys = write(&self.remote_keys);
        keys.newest_first.retain(|known| *known != key);
        keys.newest_first.insert(0, key);
    }

    /// Stops trusting `key`; the last key is never removed. Returns whether
    /// it was removed.
    pub fn distrust_remote_key(&self, key: &PublicKey) -> bool {
        let mut keys = write(&self.remote_keys);
        let others = keys.newest_first.iter().filter(|k| *k != key).count();
        if others == 0 || others == keys.newest_first.len() {
            return false;
        }
        keys.newest_first.retain(|known| known != key);
        true
    }

    /// The remote now signs with `key` instead (a device rotated its key).
    /// Frames it signed with its previous key before it learned of the
    /// change may still be on their way, so they are heard until the first
    /// frame signed with `key` arrives; after that, only `key` is.
    pub fn replace_remote_key(&self, key: PublicKey) {
        let mut keys = write(&self.remote_keys);
        let previous = keys.newest_first.first().copied();
        keys.newest_first = std::iter::once(key)
            .chain(previous.filter(|previous| *previous != key))
            .collect();
        keys.superseded = keys.newest_first.len() > 1;
    }

    /// Who signs here now.
    pub fn signer(&self) -> Arc<Signer> {
        read(&self.signer).clone()
    }

    /// Signs with `signer` from now on (this end's key was rotated); its id
    /// must be this end's.
    pub fn set_signer(&self, signer: Arc<Signer>) {
        debug_assert_eq!(signer.id(), self.side.id(), "a new key, not a new identity");
        *write(&self.signer) = signer;
    }

    /// Signs `message` for the remote, stamped `now_ms`.
    pub fn sign(&self, message: &Message, now_ms: u64) -> String {
        self.sign_with_nonce(message, random_nonce(), now_ms)
    }

    /// [`Peer::sign`] with a nonce the caller drew, because the message
    /// refers to it (see [`crate::rotation`]).
    pub fn sign_with_nonce(&self, message: &Message, nonce: [u8; 16], now_ms: u64) -> String {
        self.signer().sign_to_text_with_nonce(
            message,
            &self.remote_id,
            self.side.sends,
            nonce,
            now_ms,
        )
    }

    /// Records when this connection authenticated (by the timestamp of the
    /// message that proved it): from then on the replay checks refuse what
    /// was signed earlier, such as a frame recorded on an earlier connection,
    /// which a replay guard emptied by a restart would not know. The first
    /// call counts.
    pub fn authenticated(&self, at_ms: u64) {
        let _ = self.authenticated_at.set(at_ms);
    }

    /// Checks a received text frame (see the module docs). `guard` is for the
    /// replay checks: a receiver that acts on nothing the frame says (the
    /// cloud, for a device still pending) passes `None`, so that the frame
    /// takes no room in a guard shared with others.
    pub fn receive(
        &self,
        text: &str,
        now_ms: u64,
        guard: Option<&Mutex<ReplayGuard>>,
    ) -> Result<Verified, Refused> {
        let frame = self
            .side
            .parse_as(&self.signer(), text, &self.remote_id, now_ms)?;
        self.verify(frame, now_ms, guard)
    }

    /// [`Peer::receive`] of a frame parsed already, by [`Side::parse`] while
    /// the remote was not known yet: the cloud learns whom to expect from the
    /// authentication request itself.
    pub fn verify(
        &self,
        frame: Unverified,
        now_ms: u64,
        guard: Option<&Mutex<ReplayGuard>>,
    ) -> Result<Verified, Refused> {
        let reply_to = frame.reply_to();
        self.check(frame, now_ms, guard).map_err(|refusal| {
            self.side
                .refuse_as(&self.signer(), refusal, reply_to, &self.remote_id, now_ms)
        })
    }

    /// Refuses a binary frame, answering with id null.
    pub fn refuse_binary(&self, now_ms: u64) -> Refused {
        self.side.refuse_as(
            &self.signer(),
            Refusal::BinaryFrame,
            Some(Value::Null),
            &self.remote_id,
            now_ms,
        )
    }

    fn check(
        &self,
        frame: Unverified,
        now_ms: u64,
        guard: Option<&Mutex<ReplayGuard>>,
    ) -> Result<Verified, Refusal> {
        let keys = self.remote_keys();
        let expect = Expectation {
            signer_id: &self.remote_id,
            keys: &keys,
            audience_id: self.side.audience_of(&frame),
            direction: self.side.hears,
            skew_ms: self.side.skew_ms,
            now_ms,
        };
        let verified = verify(frame.0, &expect)?;
        if let Some(method) = verified.message.method() {
            check_method_name(method)?;
        }
        if let Some(guard) = guard {
            let meta = &verified.meta;
            if let Some(&authenticated_at) = self.authenticated_at.get() {
                if meta.timestamp < authenticated_at {
                    return Err(Refusal::OlderThanSession {
                        signed_at: meta.timestamp,
                        authenticated_at,
                    });
                }
            }
            guard.lock().unwrap_or_else(PoisonError::into_inner).admit(
                &meta.signer_id,
                &meta.nonce,
                meta.timestamp,
                now_ms,
            )?;
        }
        self.retire_superseded(&verified.key);
        Ok(verified)
    }

    /// The remote has used its newest key: the older ones are heard no more.
    fn retire_superseded(&self, used: &PublicKey) {
        if !read(&self.remote_keys).superseded {
            return;
        }
        let mut keys = write(&self.remote_keys);
        if keys.superseded && keys.newest_first.first() == Some(used) {
            keys.newest_first.truncate(1);
            keys.superseded = false;
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// A text frame that passed the strict parse and nothing else: nothing in it
/// may be acted upon; it may only be peeked at, to learn whom it claims to be
/// from or to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct Unverified(Map<String, Value>);

impl Unverified {
    /// A member of the frame, unverified.
    pub fn get(&self, member: &str) -> Option<&Value> {
        self.0.get(member)
    }

    /// The id a refusal of this frame is answered with: a request's (a string
    /// or a number); `None` for a notification or a response, which are never
    /// answered.
    pub fn reply_to(&self) -> Option<Value> {
        self.get("method")?;
        self.get("id")
            .filter(|id| id.is_string() || id.is_number())
            .cloned()
    }

    fn is_challenge(&self) -> bool {
        self.get("method").and_then(Value::as_str) == Some(auth::CHALLENGE)
            && self.get("id").is_none()
    }
}

/// A refused frame: why, and the signed error that answers it when it is
/// answered (a request, or a frame unreadable as any: id null, as JSON-RPC
/// answers parse errors).
#[derive(Debug)]
pub struct Refused {
    pub refusal: Refusal,
    pub reply: Option<String>,
}

/// The id of a request that the strict parser refused for a duplicate key or
/// an unsafe number, read leniently. `None` for anything else: an oversized
/// frame is not parsed at all, and an id that is itself duplicated or unsafe
/// cannot be answered faithfully.
fn request_id_despite(text: &str, refusal: &Refusal) -> Option<Value> {
    match refusal {
        Refusal::DuplicateKey(key) if key != "id" => {}
        Refusal::UnsafeNumber(_) => {}
        _ => return None,
    }
    let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    frame.get("method")?;
    let id = frame.get("id")?;
    let safe = match id {
        Value::String(_) => true,
        Value::Number(n) => n.is_i64() && is_safe_number(n),
        _ => false,
    };
    safe.then(|| id.clone())
}
