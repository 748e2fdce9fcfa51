//! A TCP proxy on 127.0.0.1 that a test controls, to put network faults on
//! the path between two parts: it forwards, goes silent (passes nothing in
//! either direction, not even a close, while keeping both sockets open: a
//! half-open path only application pings can detect), or cuts every
//! connection with a reset.
//!
//! While silent, a new connection is accepted (the kernel completes the
//! handshake) but nothing reaches the upstream, as if the packets were lost:
//! a client's connect then waits on its own timeout. When the path forwards
//! again, whatever was held is delivered, in order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the path does with the bytes it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMode {
    Forward,
    /// Nothing passes; both sockets stay open.
    Silent,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<PathMode>,
    /// Cancelled by [`FaultProxy::cut`]: the connections opened before it.
    generation: Arc<Mutex<CancellationToken>>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1, forwarding each connection to
    /// `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("fault proxy address");
        let (mode, _) = watch::channel(PathMode::Forward);
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let mode = mode.clone();
            let generation = generation.clone();
            let accepted = accepted.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let cut = lock(&generation).clone();
                    tokio::spawn(relay(client, upstream, mode.subscribe(), cut));
                }
            }
        });
        FaultProxy {
            addr,
            mode,
            generation,
            accepted,
            task,
        }
    }

    /// `ws://127.0.0.1:<port>/ws/device`: a cloud's device endpoint, through
    /// this proxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/device", self.addr)
    }

    /// Forwards again, delivering what was held.
    pub fn forward(&self) {
        self.mode.send_replace(PathMode::Forward);
    }

    /// Stops forwarding in both directions, keeping every socket open.
    pub fn go_silent(&self) {
        self.mode.send_replace(PathMode::Silent);
    }

    pub fn mode(&self) -> PathMode {
        *self.mode.borrow()
    }

    /// Resets every connection open now, on both sides; later connections
    /// are served as the mode says.
    pub fn cut(&self) {
        let mut generation = lock(&self.generation);
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        lock(&self.generation).cancel();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits until the path forwards; `false` if the proxy is gone.
async fn forwarding(mode: &mut watch::Receiver<PathMode>) -> bool {
    mode.wait_for(|mode| *mode == PathMode::Forward)
        .await
        .is_ok()
}

/// One client connection: connects upstream once the path forwards, then
/// pumps both ways until both ends have closed, or a cut resets them.
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<PathMode>,
    cut: CancellationToken,
) {
    let server = tokio::select! {
        _ = cut.cancelled() => return reset(&client),
        server = async {
            if !forwarding(&mut mode).await {
                return None;
            }
            TcpStream::connect(upstream).await.ok()
        } => match server {
            Some(server) => server,
            None => return, // upstream down: the client sees its socket close
        },
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let cut_off = tokio::select! {
        _ = cut.cancelled() => true,
        _ = async {
            tokio::join!(
                pump(&mut client_read, &mut server_write, mode.clone()),
                pump(&mut server_read, &mut client_write, mode.clone()),
            )
        } => false,
    };
    if cut_off {
        // Whole again, so that dropping sends no FIN before the reset.
        for (read, write) in [(client_read, client_write), (server_read, server_write)] {
            if let Ok(socket) = read.reunite(write) {
                reset(&socket);
            }
        }
    }
}

/// Makes the socket's close a reset (RST) rather than an orderly FIN.
fn reset(socket: &TcpStream) {
    let _ = socket.set_zero_linger();
}

/// Copies `from` to `to` while the path forwards; while it is silent, reads
/// nothing and holds what it read, the end of the stream included.
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    mut mode: watch::Receiver<PathMode>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if !forwarding(&mut mode).await {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if !forwarding(&mut mode).await {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
    if forwarding(&mut mode).await {
        let _ = to.shutdown().await;
    }
}
