//! Simulated devices, light enough for an idle fleet of tens of thousands in
//! one process: each is one task holding one WebSocket (small buffers) and
//! the protocol's [`Peer`], driven as the bridge drives it: challenge →
//! `device.authenticate` → status, then it reads on, which answers the
//! cloud's pings (tungstenite does as it reads). It relays nothing (no NATS,
//! no worker): it answers each cloud request itself with
//! `{"device": <its id>, "method": <the method>}`, signed. A connection that fails or ends is tried again with the
//! bridge's own backoff, so a storm the cloud turns partly away heals as a
//! real fleet's would.
//!
//! Each device binds a source address among 127.0.0.1–127.0.0.254, so that
//! tens of thousands of connections do not exhaust one address's ports.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bridge::Reconnect;
use futures::{SinkExt, StreamExt};
use protocol::auth::{self, AuthStatus, AuthenticateParams, Challenge, StatusReport};
use protocol::keys;
use protocol::{now_ms, Message, Peer, Remote, Side, Signer};
use serde_json::{json, Value};
use testkit::CloudEndpoint;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::stack::in_turn;

/// Socket read chunk: the cloud's messages to an idle device (challenge,
/// status) are a few hundred bytes; a larger one is assembled as it arrives.
const READ_BUFFER_BYTES: usize = 2 * 1024;
/// The bridge's defaults (`BridgeConfig::new`): time to connect and
/// authenticate, and the reconnect backoff.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
const REJECTED_BACKOFF: Duration = Duration::from_secs(600);
/// What a simulated device reports as its bridge version.
const VERSION: &str = concat!("bench-", env!("CARGO_PKG_VERSION"));
/// The id of the authentication request, the only request a device sends.
const AUTH_REQUEST_ID: &str = "auth-1";
/// Source addresses 127.0.0.1 ..= 127.0.0.254.
const SOURCE_ADDRESSES: usize = 254;

/// What a device reports as it goes.
#[derive(Debug)]
pub enum Event {
    /// Authenticated with a new key: it waits for an operator to accept it.
    Pending(String),
    /// Accepted: live on its connection.
    Live,
    /// Its connection could not be made, or ended; it will try again.
    Retrying { was_live: bool, reason: String },
}

/// Simulated devices, made and not yet connected.
pub struct Fleet {
    /// The cloud's instances, which the devices connect to in turn.
    targets: Vec<Arc<Target>>,
    devices: Vec<Device>,
}

/// A fleet connected (or connecting), until stopped.
pub struct RunningFleet {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Fleet {
    /// `count` devices, `{prefix}-00001` on, each with its own key, made
    /// here so that the storm is connections only; they connect to the
    /// `clouds` (instances of one cloud) in turn.
    pub fn new(clouds: &[CloudEndpoint], prefix: &str, count: usize) -> anyhow::Result<Fleet> {
        let devices = (0..count)
            .map(|i| Device {
                signer: Arc::new(Signer::new(
                    format!("{prefix}-{:05}", i + 1),
                    keys::generate(),
                )),
                source: Ipv4Addr::new(127, 0, 0, (1 + i % SOURCE_ADDRESSES) as u8),
            })
            .collect();
        let targets = clouds
            .iter()
            .map(|cloud| Ok(Arc::new(Target::new(cloud)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Fleet { targets, devices })
    }

    /// Each device's id and public key (SPKI PEM), to preauthorize them.
    pub fn keys(&self) -> Vec<(String, String)> {
        self.devices
            .iter()
            .map(|device| {
                let id = device.signer.id().to_owned();
                (id, keys::public_key_to_pem(&device.signer.public_key()))
            })
            .collect()
    }

    /// Connects every device at once: a connect storm. Each reports what
    /// happens to it on `events`.
    pub fn storm(self, events: mpsc::UnboundedSender<Event>) -> RunningFleet {
        let running = RunningFleet {
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        for (k, device) in self.devices.into_iter().enumerate() {
            let stop = running.stop.clone();
            let target = in_turn(&self.targets, k as u64).clone();
            running
                .tasks
                .spawn(device.run(target, events.clone(), stop));
        }
        running.tasks.close();
        running
    }
}

impl RunningFleet {
    /// Disconnects every device.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

/// Where the devices connect, resolved once for all of them.
struct Target {
    addr: SocketAddr,
    url: String,
    remote: Remote,
}

impl Target {
    fn new(cloud: &CloudEndpoint) -> anyhow::Result<Self> {
        let request = cloud
            .url
            .as_str()
            .into_client_request()
            .with_context(|| format!("bad device URL {}", cloud.url))?;
        let authority = request
            .uri()
            .authority()
            .ok_or_else(|| anyhow!("no host:port in {}", cloud.url))?;
        let addr = authority
            .as_str()
            .parse()
            .with_context(|| format!("the simulator connects to an IP address, not {authority}"))?;
        Ok(Target {
            addr,
            url: cloud.url.clone(),
            remote: Remote {
                id: cloud.cloud_id.clone(),
                key: cloud.public_key,
            },
        })
    }
}

struct Device {
    signer: Arc<Signer>,
    source: Ipv4Addr,
}

/// How a connection ended.
struct Ended {
    was_live: bool,
    rejected: bool,
    reason: String,
}

impl Device {
    /// Connects and stays, reconnecting as the bridge does, until `stop`.
    async fn run(
        self,
        target: Arc<Target>,
        events: mpsc::UnboundedSender<Event>,
        stop: CancellationToken,
    ) {
        let mut reconnect = Reconnect::new(
            RECONNECT_MIN,
            RECONNECT_MAX,
            REJECTED_BACKOFF,
            rand::random::<f64>,
        );
        loop {
            let ended = tokio::select! {
                _ = stop.cancelled() => return,
                ended = self.connection(&target, &events) => ended,
            };
            let wait = match ended.rejected {
                true => reconnect.after_rejection(),
                false => reconnect.after_close(ended.was_live),
            };
            let _ = events.send(Event::Retrying {
                was_live: ended.was_live,
                reason: ended.reason,
            });
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One connection, from connecting until it ends.
    async fn connection(&self, target: &Target, events: &mpsc::UnboundedSender<Event>) -> Ended {
        let peer = Side::device(self.signer.clone()).peer(target.remote.clone());
        let mut ws =
            match tokio::time::timeout(CONNECT_TIMEOUT, self.handshake(target, &peer)).await {
                Ok(Ok(ws)) => ws,
                Ok(Err(error)) => return Ended::failed(format!("{error:#}")),
                Err(_) => return Ended::failed("connecting and authenticating timed out".into()),
            };
        let mut was_live = false;
        loop {
            let heard = match next_heard(&mut ws, &peer).await {
                Ok(heard) => heard,
                Err(error) => {
                    return Ended {
                        was_live,
                        rejected: false,
                        reason: format!("{error:#}"),
                    }
                }
            };
            let status = match heard {
                Heard::Status(status) => status,
                Heard::Request { id, method } => {
                    let answer = Message::result(
                        id,
                        json!({ "device": self.signer.id(), "method": method }),
                    );
                    if let Err(error) = ws.send(Frame::text(peer.sign(&answer, now_ms()))).await {
                        return Ended {
                            was_live,
                            rejected: false,
                            reason: format!("answering: {error}"),
                        };
                    }
                    continue;
                }
            };
            match status {
                AuthStatus::Pending => {
                    let _ = events.send(Event::Pending(self.signer.id().to_owned()));
                }
                AuthStatus::Accepted if !was_live => {
                    was_live = true;
                    let _ = events.send(Event::Live);
                }
                AuthStatus::Accepted => {}
                AuthStatus::Rejected => {
                    return Ended {
                        was_live,
                        rejected: true,
                        reason: "rejected by the cloud".into(),
                    }
                }
            }
        }
    }

    /// Connects from this device's source address, upgrades, answers the
    /// challenge; the socket, with the authentication's answer still to read.
    async fn handshake(
        &self,
        target: &Target,
        peer: &Peer,
    ) -> anyhow::Result<WebSocketStream<TcpStream>> {
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::from((self.source, 0)))
            .with_context(|| format!("cannot bind {}", self.source))?;
        let stream = socket
            .connect(target.addr)
            .await
            .map_err(|e| anyhow!("connect: {e}"))?;
        let mut request = target.url.as_str().into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(protocol::SUBPROTOCOL),
        );
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                // tungstenite's errors say their source already.
                .map_err(|e| anyhow!("upgrade: {e}"))?;
        let challenge = match hear(peer, &next_text(&mut ws).await?)? {
            Message::Notification { method, params } if method == auth::CHALLENGE => {
                Challenge::read(params).map_err(|e| anyhow!("unreadable challenge: {e}"))?
            }
            other => bail!("expected auth.challenge, got {:?}", other.method()),
        };
        let params = AuthenticateParams::new(
            self.signer.id(),
            self.signer.public_key(),
            &challenge.challenge,
            VERSION,
        );
        let request = params.request(AUTH_REQUEST_ID, auth::DEFAULT_AUTHENTICATE);
        ws.send(Frame::text(peer.sign(&request, now_ms()))).await?;
        Ok(ws)
    }
}

impl Ended {
    fn failed(reason: String) -> Self {
        Ended {
            was_live: false,
            rejected: false,
            reason,
        }
    }
}

/// What the cloud tells a simulated device.
enum Heard {
    /// The authentication's answer or an `auth.status`.
    Status(AuthStatus),
    /// A call, to answer.
    Request { id: Value, method: String },
}

/// The next status the cloud tells, or a request it makes.
async fn next_heard(ws: &mut WebSocketStream<TcpStream>, peer: &Peer) -> anyhow::Result<Heard> {
    let report = match hear(peer, &next_text(ws).await?)? {
        Message::Request { id, method, .. } => return Ok(Heard::Request { id, method }),
        Message::Response { id, result } if id == AUTH_REQUEST_ID => {
            let result = result.map_err(|e| anyhow!("authentication refused: {}", e.message))?;
            StatusReport::read(Some(result))
        }
        Message::Notification { method, params } if method == auth::STATUS => {
            StatusReport::read(params)
        }
        other => bail!("unexpected message {:?}", other.method()),
    };
    Ok(Heard::Status(
        report
            .map_err(|e| anyhow!("unreadable status: {e}"))?
            .status,
    ))
}

/// A cloud frame, checked as a device checks it. No replay guard: a
/// simulated device acts on nothing but its own status, and a guard per
/// device would cost more memory than the rest of it.
fn hear(peer: &Peer, text: &str) -> anyhow::Result<Message> {
    peer.receive(text, now_ms(), None)
        .map(|verified| verified.message)
        .map_err(|refused| anyhow!("refused a frame from the cloud: {}", refused.refusal))
}

/// The next text frame; pings are answered and skipped.
async fn next_text(ws: &mut WebSocketStream<TcpStream>) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Frame::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
            Some(Ok(Frame::Close(frame))) => {
                bail!(
                    "the cloud closed the connection ({})",
                    frame.map_or_else(|| "no code".into(), |f| format!("{} {}", f.code, f.reason))
                )
            }
            Some(Ok(other)) => bail!("unexpected frame {other:?}"),
            Some(Err(error)) => bail!("connection: {error}"),
            None => bail!("the connection ended"),
        }
    }
}
