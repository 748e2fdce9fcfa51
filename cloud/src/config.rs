//! `cloud serve` settings: the clap flags (each also an environment variable)
//! and the [`CloudConfig`] they become, parsed once and passed down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::roles::MethodRoles;

/// This build's version, logged at start and shown by `/healthz`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Settings of a running cloud. The library never reads the environment;
/// `main` builds this from [`ServeArgs`], tests build it directly.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// Our id: the audience devices sign for, and the signer of what we send.
    pub cloud_id: String,
    /// PKCS#8 PEM Ed25519 key signing everything the cloud sends (mode 0600).
    pub private_key_path: PathBuf,
    /// The key the cloud is rotating to, if any: offered to every accepted
    /// device (`device.trust_cloud_key`), and signing each session whose
    /// device trusts it (README, "Rotating keys").
    pub next_private_key_path: Option<PathBuf>,
    /// Fingerprints of retired cloud keys: devices that trust one are told
    /// to stop (`device.distrust_cloud_key`).
    pub retired_key_fingerprints: Vec<String>,
    /// The registry's database: `sqlite://data/cloud.db` (one instance) or
    /// `postgres://user:password@host/database` (shared by several).
    pub database_url: String,
    /// This instance's name among those sharing the fleet: shown beside each
    /// device it holds, and how the others address it.
    pub instance: String,
    /// The NATS the instances share the fleet through (comma-separated
    /// servers of one cluster); none for a cloud of one instance.
    pub cloud_nats_url: Option<String>,
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
    /// The least role that may call each device method.
    pub method_roles: MethodRoles,
    /// What strangers, pending devices and devices can make the cloud hold.
    pub limits: Limits,
}

/// Bounds on everything a party without a proven key (or a device) can make
/// the cloud hold: connections, handshakes, registrations, stored text and
/// the audit log. The defaults are far above what a real fleet does.
#[derive(Debug, Clone)]
pub struct Limits {
    /// TCP connections served at once (devices, browsers, scripts); beyond
    /// it a new connection is closed at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Device WebSockets that have not authenticated yet, in all.
    pub max_unauthenticated: usize,
    /// ... and from one client address.
    pub max_unauthenticated_per_address: usize,
    /// Device handshakes one client address may start per minute.
    pub handshakes_per_address_per_minute: u32,
    /// New (pending) device ids one client address may register per hour.
    pub new_devices_per_address_per_hour: u32,
    /// Pending devices the registry holds at most; beyond it new ids are refused.
    pub max_pending_devices: i64,
    /// A pending device not seen for this long is forgotten, freeing its place.
    pub pending_expiry: Duration,
    /// Messages a pending device may send per minute; beyond it the cloud
    /// closes its connection.
    pub pending_messages_per_minute: u32,
    /// Connections a pending or rejected device may open per minute.
    pub pending_reconnects_per_minute: u32,
    /// Longest `bridge_version` a device may report, in bytes.
    pub max_bridge_version_bytes: usize,
    /// Largest health report stored, in bytes of JSON.
    pub max_health_bytes: usize,
    /// Largest container event stored, in bytes of JSON.
    pub max_container_event_bytes: usize,
    /// Audit log entries (operator actions and device auth events) are kept
    /// this long ...
    pub audit_retention: Duration,
    /// ... and at most this many of each.
    pub audit_max_rows: i64,
    /// Failed sign-ins per minute for one name from one client address.
    pub sign_in_failures_per_name_per_minute: u32,
    /// Failed sign-ins per minute from one client address.
    pub sign_in_failures_per_address_per_minute: u32,
    /// Reverse proxies whose `X-Forwarded-For` names the client address.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            header_read_timeout: Duration::from_secs(10),
            max_unauthenticated: 2_000,
            max_unauthenticated_per_address: 64,
            handshakes_per_address_per_minute: 600,
            new_devices_per_address_per_hour: 100,
            max_pending_devices: 1_000,
            pending_expiry: Duration::from_secs(7 * 24 * 3600),
            pending_messages_per_minute: 12,
            pending_reconnects_per_minute: 6,
            max_bridge_version_bytes: 64,
            max_health_bytes: 16 * 1024,
            max_container_event_bytes: 4 * 1024,
            audit_retention: Duration::from_secs(365 * 24 * 3600),
            audit_max_rows: 1_000_000,
            sign_in_failures_per_name_per_minute: 5,
            sign_in_failures_per_address_per_minute: 30,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            cloud_id: "cloud-dashboard".into(),
            private_key_path: "keys/cloud/cloud_private.pem".into(),
            next_private_key_path: None,
            retired_key_fingerprints: Vec::new(),
            database_url: "sqlite://data/cloud.db".into(),
            instance: "cloud".into(),
            cloud_nats_url: None,
            admin_token_file: "data/admin.token".into(),
            skew: Duration::from_millis(protocol::DEFAULT_SKEW_MS),
            max_frame_bytes: protocol::DEFAULT_MAX_FRAME_BYTES,
            rpc_timeout: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            auth_rpc_method: protocol::auth::DEFAULT_AUTHENTICATE.into(),
            replay_per_device: 15_000,
            secure_cookies: false,
            method_roles: MethodRoles::default(),
            limits: Limits::default(),
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
    /// The cloud's next Ed25519 private key, while rotating to it: devices
    /// are asked to trust it, and then hear it.
    #[arg(long = "next-private-key", env = "CLOUD_NEXT_PRIVATE_KEY_PATH")]
    pub next_private_key_path: Option<PathBuf>,
    /// Fingerprints (`SHA256:…`, comma-separated) of retired cloud keys that
    /// devices are told to stop trusting.
    #[arg(
        long = "retired-key",
        env = "CLOUD_RETIRED_KEY_FINGERPRINTS",
        value_delimiter = ','
    )]
    pub retired_key_fingerprints: Vec<String>,
    /// Registry database URL: `sqlite://PATH` (the file and its directory are
    /// created if missing) or `postgres://USER:PASSWORD@HOST/DATABASE`.
    #[arg(
        long = "database",
        env = "DATABASE_URL",
        default_value = "sqlite://data/cloud.db"
    )]
    pub database_url: String,
    /// This instance's name among those sharing the fleet (default: the host name).
    #[arg(long, env = "CLOUD_INSTANCE")]
    pub instance: Option<String>,
    /// NATS servers the instances share the fleet through, comma-separated
    /// (one cluster); unset for a single instance.
    #[arg(long, env = "CLOUD_NATS_URL")]
    pub cloud_nats_url: Option<String>,
    /// File holding the admin bearer token; created (0600) with a random token if missing.
    #[arg(
        long,
        env = "CLOUD_ADMIN_TOKEN_FILE",
        default_value = "data/admin.token"
    )]
    pub admin_token_file: PathBuf,
    /// Allowed clock skew between devices and the cloud, in seconds.
    #[arg(long, env = "CLOCK_SKEW_SECS", default_value_t = protocol::DEFAULT_SKEW_MS / 1000)]
    pub skew_secs: u64,
    /// Largest accepted frame in bytes; larger frames are refused with an error.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = protocol::DEFAULT_MAX_FRAME_BYTES)]
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
    /// The least role that may call each device method: comma-separated
    /// `pattern=role` rules, the first match wins; a pattern is a method name
    /// or a prefix ending in `*`; unmatched methods need `operator`.
    #[arg(long, env = "METHOD_ROLES", default_value = crate::roles::DEFAULT_METHOD_ROLES)]
    pub method_roles: MethodRoles,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Flags of `cloud serve` that bound what strangers and devices can make the
/// cloud hold (see [`Limits`]).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// TCP connections served at once; beyond it new ones are closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Device WebSockets not yet authenticated, in all.
    #[arg(long, env = "MAX_UNAUTHENTICATED", default_value_t = 2_000)]
    pub max_unauthenticated: usize,
    /// Device WebSockets not yet authenticated, from one client address.
    #[arg(long, env = "MAX_UNAUTHENTICATED_PER_ADDRESS", default_value_t = 64)]
    pub max_unauthenticated_per_address: usize,
    /// Device handshakes one client address may start per minute.
    #[arg(long, env = "HANDSHAKES_PER_ADDRESS_PER_MINUTE", default_value_t = 600)]
    pub handshakes_per_address_per_minute: u32,
    /// New device ids one client address may register (as pending) per hour.
    #[arg(long, env = "NEW_DEVICES_PER_ADDRESS_PER_HOUR", default_value_t = 100)]
    pub new_devices_per_address_per_hour: u32,
    /// Pending devices the registry holds at most.
    #[arg(long, env = "MAX_PENDING_DEVICES", default_value_t = 1_000)]
    pub max_pending_devices: i64,
    /// Days after which a pending device not seen since is forgotten.
    #[arg(long, env = "PENDING_EXPIRY_DAYS", default_value_t = 7)]
    pub pending_expiry_days: u64,
    /// Messages a pending device may send per minute before it is cut off.
    #[arg(long, env = "PENDING_MESSAGES_PER_MINUTE", default_value_t = 12)]
    pub pending_messages_per_minute: u32,
    /// Connections a pending or rejected device may open per minute.
    #[arg(long, env = "PENDING_RECONNECTS_PER_MINUTE", default_value_t = 6)]
    pub pending_reconnects_per_minute: u32,
    /// Longest bridge version a device may report, in bytes.
    #[arg(long, env = "MAX_BRIDGE_VERSION_BYTES", default_value_t = 64)]
    pub max_bridge_version_bytes: usize,
    /// Largest health report stored, in bytes of JSON.
    #[arg(long, env = "MAX_HEALTH_BYTES", default_value_t = 16 * 1024)]
    pub max_health_bytes: usize,
    /// Largest container event stored, in bytes of JSON.
    #[arg(long, env = "MAX_CONTAINER_EVENT_BYTES", default_value_t = 4 * 1024)]
    pub max_container_event_bytes: usize,
    /// Days the audit log keeps an entry.
    #[arg(long, env = "AUDIT_RETENTION_DAYS", default_value_t = 365)]
    pub audit_retention_days: u64,
    /// Most entries the audit log keeps (of operator actions, and of device
    /// auth events).
    #[arg(long, env = "AUDIT_MAX_ROWS", default_value_t = 1_000_000)]
    pub audit_max_rows: i64,
    /// Failed sign-ins per minute for one name from one client address.
    #[arg(
        long,
        env = "SIGN_IN_FAILURES_PER_NAME_PER_MINUTE",
        default_value_t = 5
    )]
    pub sign_in_failures_per_name_per_minute: u32,
    /// Failed sign-ins per minute from one client address.
    #[arg(
        long,
        env = "SIGN_IN_FAILURES_PER_ADDRESS_PER_MINUTE",
        default_value_t = 30
    )]
    pub sign_in_failures_per_address_per_minute: u32,
    /// Reverse proxies (addresses or CIDR ranges, comma-separated) whose
    /// X-Forwarded-For names the client.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
}

impl LimitArgs {
    pub fn into_limits(self) -> Limits {
        Limits {
            max_connections: self.max_connections.max(1),
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs.max(1)),
            max_unauthenticated: self.max_unauthenticated.max(1),
            max_unauthenticated_per_address: self.max_unauthenticated_per_address.max(1),
            handshakes_per_address_per_minute: self.handshakes_per_address_per_minute.max(1),
            new_devices_per_address_per_hour: self.new_devices_per_address_per_hour.max(1),
            max_pending_devices: self.max_pending_devices.max(0),
            pending_expiry: Duration::from_secs(self.pending_expiry_days.max(1) * 24 * 3600),
            pending_messages_per_minute: self.pending_messages_per_minute.max(1),
            pending_reconnects_per_minute: self.pending_reconnects_per_minute.max(1),
            max_bridge_version_bytes: self.max_bridge_version_bytes,
            max_health_bytes: self.max_health_bytes,
            max_container_event_bytes: self.max_container_event_bytes,
            audit_retention: Duration::from_secs(self.audit_retention_days.max(1) * 24 * 3600),
            audit_max_rows: self.audit_max_rows.max(1),
            sign_in_failures_per_name_per_minute: self.sign_in_failures_per_name_per_minute.max(1),
            sign_in_failures_per_address_per_minute: self
                .sign_in_failures_per_address_per_minute
                .max(1),
            trusted_proxies: self.trusted_proxies,
        }
    }
}

impl ServeArgs {
    pub fn into_config(self) -> CloudConfig {
        CloudConfig {
            cloud_id: self.cloud_id,
            private_key_path: self.private_key_path,
            next_private_key_path: self.next_private_key_path,
            retired_key_fingerprints: self.retired_key_fingerprints,
            database_url: self.database_url,
            instance: self.instance.unwrap_or_else(host_name),
            cloud_nats_url: self.cloud_nats_url,
            admin_token_file: self.admin_token_file,
            skew: Duration::from_secs(self.skew_secs),
            max_frame_bytes: self.max_frame_bytes,
            rpc_timeout: Duration::from_millis(self.rpc_timeout_ms),
            auth_timeout: Duration::from_secs(self.auth_timeout_secs),
            ping_interval: Duration::from_secs(self.ping_interval_secs.max(1)),
            auth_rpc_method: self.auth_rpc_method,
            replay_per_device: self.replay_per_device.max(1),
            secure_cookies: self.secure_cookies,
            method_roles: self.method_roles,
            limits: self.limits.into_limits(),
        }
    }
}

/// The machine's name (a container's is its id or its compose name), for
/// an instance given none.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "cloud".into())
}
