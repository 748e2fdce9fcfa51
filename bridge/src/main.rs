//! `bridge`: parses configuration, connects to the device-local NATS and runs
//! the bridge until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bridge::{Bridge, BridgeConfig};
use clap::Parser;
use protocol::{keys, Signer};
use tokio_util::sync::CancellationToken;

/// Keeps one signed WebSocket to the cloud and relays it to the device's NATS.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "`bridge healthcheck` exits 0 while a running bridge is authenticated to the cloud (see --state-file).\n\
                  `bridge rotate-key` has the running bridge replace the device's key (see `bridge rotate-key --help`)."
)]
struct Args {
    /// The cloud's device endpoint (`wss://` over the internet).
    #[arg(
        long,
        env = "CLOUD_URL",
        default_value = "ws://127.0.0.1:8080/ws/device"
    )]
    cloud_url: String,
    /// PEM file of the CA certificates a `wss://` cloud must chain to; without
    /// it, Mozilla's root certificates.
    #[arg(long, env = "CLOUD_CA_PATH")]
    cloud_ca: Option<PathBuf>,
    /// This device's id, as operators will see it.
    #[arg(long, env = "DEVICE_ID")]
    device_id: String,
    /// This device's Ed25519 private key (PKCS#8 PEM, mode 0600). Its
    /// directory must be writable for the key to be rotated: the new key is
    /// written beside it, as `<file>.next`, then renamed over it.
    #[arg(
        long,
        env = "DEVICE_PRIVATE_KEY_PATH",
        default_value = "keys/device/device_private.pem"
    )]
    device_private_key: PathBuf,
    /// The cloud's Ed25519 public keys (SPKI PEM): a file of one or more PEM
    /// blocks, or a directory of `*.pem` files; at most 8. Kept up to date
    /// (so it must be writable) when the cloud rotates its key.
    #[arg(
        long,
        env = "CLOUD_PUBLIC_KEY_PATH",
        default_value = "keys/device/cloud_public.pem"
    )]
    cloud_public_key: PathBuf,
    /// The cloud's signer id.
    #[arg(long, env = "CLOUD_ID", default_value = "cloud-dashboard")]
    cloud_id: String,
    /// The device-local NATS broker.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// NATS user to sign in as (the device stack's broker has one per service).
    #[arg(long, env = "NATS_USER", requires = "nats_password_file")]
    nats_user: Option<String>,
    /// File holding the NATS user's password (mode 0600).
    #[arg(long, env = "NATS_PASSWORD_FILE", requires = "nats_user")]
    nats_password_file: Option<PathBuf>,
    /// Method of the authentication request.
    #[arg(long, env = "AUTH_RPC_METHOD", default_value = protocol::auth::DEFAULT_AUTHENTICATE)]
    auth_rpc_method: String,
    /// Allowed clock skew between cloud and device, in seconds.
    #[arg(long, env = "CLOCK_SKEW_SECS", default_value_t = protocol::DEFAULT_SKEW_MS / 1000)]
    clock_skew_secs: u64,
    /// Time a worker has to answer a cloud request, in milliseconds.
    #[arg(long, env = "WORKER_TIMEOUT_MS", default_value_t = 25_000)]
    worker_timeout_ms: u64,
    /// Time the cloud has to answer a device call, in milliseconds.
    #[arg(long, env = "CLOUD_CALL_TIMEOUT_MS", default_value_t = 15_000)]
    cloud_call_timeout_ms: u64,
    /// WebSocket ping period in seconds; a cloud silent for two periods is dropped.
    #[arg(long, env = "PING_INTERVAL_SECS", default_value_t = 20)]
    ping_interval_secs: u64,
    /// Largest frame accepted from the cloud, in bytes.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = protocol::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Longest wait between reconnect attempts, in seconds.
    #[arg(long, env = "RECONNECT_MAX_SECS", default_value_t = 30)]
    reconnect_max_secs: u64,
    /// Wait after the cloud rejected this device, in seconds.
    #[arg(long, env = "REJECTED_BACKOFF_SECS", default_value_t = 600)]
    rejected_backoff_secs: u64,
    /// File to write the link state to on each change, for `bridge healthcheck`.
    #[arg(long, env = "BRIDGE_STATE_FILE")]
    state_file: Option<PathBuf>,
}

// Container images have no shell, so the binary carries its own check.
/// Exits 0 while the running bridge is authenticated to the cloud (pending or
/// live), as it last wrote to its state file.
#[derive(Parser, Debug)]
#[command(name = "bridge healthcheck", bin_name = "bridge healthcheck")]
struct HealthcheckArgs {
    /// The running bridge's state file.
    #[arg(long, env = "BRIDGE_STATE_FILE")]
    state_file: PathBuf,
}

/// Has the running bridge replace the device's key on its live connection:
/// it writes a new key beside the key file, proves it to the cloud with both
/// keys, and once the cloud confirms, renames it over the key file. The
/// request goes over the device's NATS, as the bridge's own user.
#[derive(Parser, Debug)]
#[command(name = "bridge rotate-key", bin_name = "bridge rotate-key")]
struct RotateKeyArgs {
    /// The device-local NATS broker the running bridge is connected to.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// NATS user to sign in as: the bridge's own.
    #[arg(long, env = "NATS_USER", requires = "nats_password_file")]
    nats_user: Option<String>,
    /// File holding the NATS user's password (mode 0600).
    #[arg(long, env = "NATS_PASSWORD_FILE", requires = "nats_user")]
    nats_password_file: Option<PathBuf>,
    /// How long to wait for the outcome, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

async fn rotate_key(args: RotateKeyArgs) -> anyhow::Result<()> {
    let nats = nats_options(
        "bridge rotate-key",
        &args.nats_user,
        &args.nats_password_file,
    )?
    .connection_timeout(Duration::from_secs(args.timeout_secs))
    .connect(&args.nats_url)
    .await
    .with_context(|| format!("cannot connect to NATS at {}", args.nats_url))?;
    let asked = nats.request(protocol::nats::BRIDGE_ROTATE_KEY, Default::default());
    let answer = tokio::time::timeout(Duration::from_secs(args.timeout_secs), asked)
        .await
        .context("the bridge did not answer in time")?
        .context("no running bridge answered on this NATS")?;
    let text = std::str::from_utf8(&answer.payload).context("the bridge's answer is not UTF-8")?;
    let answer = protocol::parse_frame(text, protocol::DEFAULT_MAX_FRAME_BYTES)
        .ok()
        .and_then(|frame| protocol::Message::from_value(frame).ok());
    match answer {
        Some(protocol::Message::Response {
            result: Ok(result), ..
        }) => {
            let rotated = protocol::rotation::Rotated::read(result)
                .map_err(|e| anyhow::anyhow!("unexpected answer from the bridge: {e}"))?;
            println!("rotated; the device key is now {}", rotated.fingerprint);
            Ok(())
        }
        Some(protocol::Message::Response {
            result: Err(error), ..
        }) => {
            anyhow::bail!("the key was not rotated: {}", error.message)
        }
        _ => anyhow::bail!("unexpected answer from the bridge: {text}"),
    }
}

/// NATS options as `name`, signed in as `user` with the password in
/// `password_file` when given.
fn nats_options(
    name: &str,
    user: &Option<String>,
    password_file: &Option<PathBuf>,
) -> anyhow::Result<async_nats::ConnectOptions> {
    let mut options = async_nats::ConnectOptions::new().name(name);
    if let (Some(user), Some(path)) = (user, password_file) {
        let password = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the NATS password file {}", path.display()))?;
        options = options
            .user_and_password(user.clone(), password.trim().to_owned())
            .custom_inbox_prefix(protocol::nats::inbox_prefix(user));
    }
    Ok(options)
}

fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    let path = &args.state_file;
    let state = bridge::read_state_file(path)
        .with_context(|| format!("cannot read the link state from {}", path.display()))?;
    anyhow::ensure!(state.is_connected(), "link state is {state:?}");
    println!("{state:?}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before parsing the bridge's flags: these need few of them (no DEVICE_ID).
    let subcommand = std::env::args_os().nth(1);
    if subcommand.as_ref().is_some_and(|arg| arg == "healthcheck") {
        return healthcheck(HealthcheckArgs::parse_from(std::env::args_os().skip(1)));
    }
    if subcommand.as_ref().is_some_and(|arg| arg == "rotate-key") {
        return rotate_key(RotateKeyArgs::parse_from(std::env::args_os().skip(1))).await;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        protocol::is_valid_device_id(&args.device_id),
        "DEVICE_ID {:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
        args.device_id
    );
    tracing::info!(version = env!("CARGO_PKG_VERSION"), device_id = %args.device_id, cloud_url = %args.cloud_url, nats_url = %args.nats_url, "bridge starting");

    let device_key = keys::read_private_key(&args.device_private_key)?;
    let cloud_keys = keys::read_public_keys(&args.cloud_public_key)?;
    tracing::info!(fingerprint = %keys::fingerprint(&device_key.verifying_key()), "device key loaded");
    let mut config = BridgeConfig::new(
        args.cloud_url,
        Signer::new(args.device_id, device_key),
        args.cloud_id,
        cloud_keys[0],
    );
    config.cloud_keys = cloud_keys;
    config.cloud_keys_file = Some(args.cloud_public_key.clone());
    if let Some(path) = &args.cloud_ca {
        config.tls = bridge::tls::client_config(Some(bridge::tls::read_ca_file(path)?))?;
    }
    config.auth_method = args.auth_rpc_method;
    config.skew = Duration::from_secs(args.clock_skew_secs);
    config.worker_timeout = Duration::from_millis(args.worker_timeout_ms);
    config.cloud_call_timeout = Duration::from_millis(args.cloud_call_timeout_ms);
    config.ping_interval = Duration::from_secs(args.ping_interval_secs);
    config.max_frame_bytes = args.max_frame_bytes;
    config.reconnect_max = Duration::from_secs(args.reconnect_max_secs);
    config.rejected_backoff = Duration::from_secs(args.rejected_backoff_secs);
    config.state_file = args.state_file;
    config.key_file = Some(args.device_private_key);

    let nats = nats_options("bridge", &args.nats_user, &args.nats_password_file)?
        .retry_on_initial_connect()
        .connect(&args.nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", args.nats_url))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    Bridge::new(config, nats).run(shutdown).await
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
