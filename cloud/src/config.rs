//! `cloud serve` settings: the clap flags (each also an environment variable)
//! and the [`CloudConfig`] they become, parsed once and passed down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of a running cloud. The library never reads the environment;
/// `main` builds this from [`ServeArgs`], tests build it directly.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// Our id: the audience devices sign for, and the signer of what we send.
    pub cloud_id: String,
    /// PKCS#8 PEM Ed25519 key signing everything the cloud sends (mode 0600).
    pub private_key_path: PathBuf,
    /// SQLite URL of the registry, e.g. `sqlite://data/cloud.db`.
    pub database_url: String,
    /// File holding the admin bearer token; created with a random one if missing.
    pub admin_token_file: PathBuf,
    /// Allowed clock skew between a device and the cloud.
    pub skew: Duration,
    /// Largest text frame the protocol accepts; bigger ones are refused with an
    /// error and the connection carries on (the transport cuts at 4×).
    pub max_frame_bytes: usize,
    /// Default time a cloud → device call waits for its answer.
    pub rpc_timeout: Duration,
    /// Time a new connection has to authenticate.
    pub auth_timeout: Duration,
    /// WebSocket ping period; a peer silent for two periods is dropped.
    pub ping_interval: Duration,
    /// Method a device calls to authenticate.
    pub auth_rpc_method: String,
    /// Most nonces the replay guard keeps for one device: with the default
    /// 60 s window, 15,000 is 250 messages a second sustained. A device beyond
    /// it is refused (`too_many_messages`) until its old nonces expire; the
    /// others are not affected.
    pub replay_per_device: usize,
    /// Marks the session cookie `Secure`: set it when browsers reach the
    /// cloud over HTTPS.
    pub secure_cookies: bool,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            cloud_id: "cloud-dashboard".into(),
            private_key_path: "keys/cloud/cloud_private.pem".into(),
            database_url: "sqlite://data/cloud.db".into(),
            admin_token_file: "data/admin.token".into(),
            skew: Duration::from_secs(60),
            max_frame_bytes: 4 * 1024 * 1024,
            rpc_timeout: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            auth_rpc_method: protocol::auth::DEFAULT_AUTHENTICATE.into(),
            replay_per_device: 15_000,
            secure_cookies: false,
        }
    }
}

impl CloudConfig {
    /// The longest timeout an API caller may ask for: the HTTP timeout layer
    /// sits above it so that an RPC always answers for itself.
    pub fn max_rpc_timeout(&self) -> Duration {
        self.rpc_timeout.max(Duration::from_secs(300))
    }
}

/// Flags of `cloud serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on for devices (/ws/device) and the HTTP API.
    #[arg(long, env = "CLOUD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The cloud's id: devices sign for this audience.
    #[arg(long, env = "CLOUD_ID", default_value = "cloud-dashboard")]
    pub cloud_id: String,
    /// The cloud's Ed25519 private key (PKCS#8 PEM, must not be readable by others).
    #[arg(
        long = "private-key",
        env = "CLOUD_PRIVATE_KEY_PATH",
        default_value = "keys/cloud/cloud_private.pem"
    )]
    pub private_key_path: PathBuf,
    /// Registry database URL; the file and its directory are created if missing.
    #[arg(
        long = "database",
        env = "DATABASE_URL",
        default_value = "sqlite://data/cloud.db"
    )]
    pub database_url: String,
    /// File holding the admin bearer token; created (0600) with a random token if missing.
    #[arg(
        long,
        env = "CLOUD_ADMIN_TOKEN_FILE",
        default_value = "data/admin.token"
    )]
    pub admin_token_file: PathBuf,
    /// Allowed clock skew between devices and the cloud, in seconds.
    #[arg(long, env = "CLOCK_SKEW_SECS", default_value_t = 60)]
    pub skew_secs: u64,
    /// Largest accepted frame in bytes; larger frames are refused with an error.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_frame_bytes: usize,
    /// Default timeout of a cloud → device RPC, in milliseconds.
    #[arg(long, env = "RPC_TIMEOUT_MS", default_value_t = 30_000)]
    pub rpc_timeout_ms: u64,
    /// Time a new device connection has to authenticate, in seconds.
    #[arg(long, env = "AUTH_TIMEOUT_SECS", default_value_t = 10)]
    pub auth_timeout_secs: u64,
    /// WebSocket ping period in seconds; a device silent for two periods is dropped.
    #[arg(long, env = "PING_INTERVAL_SECS", default_value_t = 20)]
    pub ping_interval_secs: u64,
    /// JSON-RPC method devices call to authenticate.
    #[arg(long, env = "AUTH_RPC_METHOD", default_value = protocol::auth::DEFAULT_AUTHENTICATE)]
    pub auth_rpc_method: String,
    /// Most messages one device may send within the clock-skew window (the
    /// replay guard remembers each nonce that long); beyond it they are refused.
    #[arg(long, env = "REPLAY_CAP_PER_DEVICE", default_value_t = 15_000)]
    pub replay_per_device: usize,
    /// Send the session cookie only over HTTPS (set when a TLS proxy fronts the cloud).
    #[arg(long, env = "SESSION_COOKIE_SECURE", default_value_t = false)]
    pub secure_cookies: bool,
}

impl ServeArgs {
    pub fn into_config(self) -> CloudConfig {
        CloudConfig {
            cloud_id: self.cloud_id,
            private_key_path: self.private_key_path,
            database_url: self.database_url,
            admin_token_file: self.admin_token_file,
            skew: Duration::from_secs(self.skew_secs),
            max_frame_bytes: self.max_frame_bytes,
            rpc_timeout: Duration::from_millis(self.rpc_timeout_ms),
            auth_timeout: Duration::from_secs(self.auth_timeout_secs),
            ping_interval: Duration::from_secs(self.ping_interval_secs.max(1)),
            auth_rpc_method: self.auth_rpc_method,
            replay_per_device: self.replay_per_device.max(1),
            secure_cookies: self.secure_cookies,
        }
    }
}
