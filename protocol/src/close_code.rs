//! WebSocket close codes the cloud ends a device connection with (4000–4999
//! is the range RFC 6455 leaves to applications). Part of the protocol: the
//! bridge reads them to decide how long to back off.

/// The device is rejected by an operator (at authentication or while connected).
pub const REJECTED: u16 = 4001;
/// The device id is registered with a different public key.
pub const KEY_MISMATCH: u16 = 4002;
/// Authentication failed (bad signature, wrong challenge, bad params).
pub const AUTH_FAILED: u16 = 4003;
/// A newer connection of the same device authenticated and took over.
pub const REPLACED: u16 = 4004;
/// An operator deleted the device while it was connected.
pub const DELETED: u16 = 4005;
/// The device did not authenticate within the auth timeout.
pub const AUTH_TIMEOUT: u16 = 4006;
/// The device stopped answering pings, or stopped reading its socket.
pub const UNRESPONSIVE: u16 = 4007;
/// The cloud is shutting down (standard "going away").
pub const GOING_AWAY: u16 = 1001;
/// The cloud could not serve the connection (registry unavailable); retry later.
pub const INTERNAL_ERROR: u16 = 1011;
/// A limit on connections, new devices or unaccepted devices was reached
/// (standard "try again later"); the reason says which.
pub const TRY_AGAIN_LATER: u16 = 1013;
