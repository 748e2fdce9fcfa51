//! The bridge's configuration, parsed once in `main` and passed down.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::keys::PublicKey;
use protocol::{Peer, Side, Signer};

#[derive(Clone)]
pub struct BridgeConfig {
    /// `wss://host/ws/device` (or `ws://` on a trusted network) of the cloud.
    pub cloud_url: String,
    /// Whom a `wss://` cloud may be: Mozilla's roots unless an operator named
    /// a CA file (see [`crate::tls`]).
    pub tls: Arc<rustls::ClientConfig>,
    /// This device's id and key; `signer.id()` is the device id.
    pub signer: Signer,
    /// The file the key was read from. With it, the key can be rotated
    /// (the new one is written beside it, `<key_file>.next`), and a rotation
    /// interrupted by a crash is finished (see [`crate::rotation`]).
    pub key_file: Option<PathBuf>,
    /// The cloud's id, the only signer accepted on the WebSocket.
    pub cloud_id: String,
    /// The cloud's public keys, the most recently trusted first: a frame
    /// signed with any of them is the cloud's (copies; devices never hold a
    /// private key of the cloud's). At least one.
    pub cloud_keys: Vec<PublicKey>,
    /// Where the cloud keys were read from (a file of PEM blocks or a
    /// directory of `*.pem`), kept up to date when the cloud adds or retires
    /// one (see [`crate::cloud_trust`]).
    pub cloud_keys_file: Option<PathBuf>,
    /// Method of the authentication request (`device.authenticate`).
    pub auth_method: String,
    /// Allowed clock skew for timestamps, and the replay window.
    pub skew: Duration,
    /// Largest text frame accepted from the cloud.
    pub max_frame_bytes: usize,
    /// How long a worker may take to answer a relayed cloud request.
    pub worker_timeout: Duration,
    /// How long the cloud may take to answer a device → cloud call.
    pub cloud_call_timeout: Duration,
    /// WebSocket ping period; a cloud silent for two periods is dropped.
    pub ping_interval: Duration,
    /// Time allowed for connecting and for the authentication handshake.
    pub connect_timeout: Duration,
    /// Reconnect backoff bounds (exponential with jitter in between).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Wait after the cloud rejected this device, before trying again.
    pub rejected_backoff: Duration,
    /// A file the link state is written to on each change, so a container
    /// health check (`bridge healthcheck`) can read it; none by default.
    pub state_file: Option<PathBuf>,
}

impl BridgeConfig {
    /// Defaults for everything but identity and endpoints.
    pub fn new(cloud_url: String, signer: Signer, cloud_id: String, cloud_key: PublicKey) -> Self {
        BridgeConfig {
            cloud_url,
            tls: crate::tls::client_config(None).expect("Mozilla's roots make a valid TLS config"),
            signer,
            key_file: None,
            cloud_id,
            cloud_keys: vec![cloud_key],
            cloud_keys_file: None,
            auth_method: protocol::auth::DEFAULT_AUTHENTICATE.to_owned(),
            skew: Duration::from_millis(protocol::DEFAULT_SKEW_MS),
            max_frame_bytes: protocol::DEFAULT_MAX_FRAME_BYTES,
            worker_timeout: Duration::from_secs(25),
            cloud_call_timeout: Duration::from_secs(15),
            ping_interval: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            rejected_backoff: Duration::from_secs(600),
            state_file: None,
        }
    }

    pub fn device_id(&self) -> &str {
        self.signer.id()
    }

    /// This device's end of a connection to the cloud, the one signer it
    /// hears (with any of `cloud_keys`), signing as `signer` (this device,
    /// with its current key).
    pub(crate) fn peer(&self, signer: Arc<Signer>, cloud_keys: Vec<PublicKey>) -> Peer {
        Side::device(signer)
            .with_skew_ms(self.skew.as_millis() as u64)
            .with_max_frame_bytes(self.max_frame_bytes)
            // A cloud that signed a request with a duplicate key or an unsafe
            // number hears which request was refused.
            .reading_ids_despite_parse_errors()
            .peer_trusting(self.cloud_id.clone(), cloud_keys)
    }
}
