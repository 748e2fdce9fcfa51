//! The device's key and its rotation on disk.
//!
//! A rotation goes: the new key is written to `<key file>.next` (atomically,
//! mode 0600); `device.rotate_key` is sent on the live session; once the
//! cloud confirms, `.next` is renamed over the key file. The old key file is
//! kept until then, so a crash at any point leaves a key the cloud accepts:
//!
//! - before the cloud switched: the key file is still registered, and `.next`
//!   is there; once live again, the rotation resumes with that `.next`;
//! - after the cloud switched, before the rename: the key file is refused
//!   `key_mismatch`; the bridge then authenticates with `.next` and, once
//!   accepted, renames it over the key file.
//!
//! Requests to rotate arrive on the device-local NATS ([`BRIDGE_ROTATE_KEY`],
//! sent by `bridge rotate-key`) and from the cloud
//! (`device.rotate_key_required`); both go to the live session
//! (`crate::session`), which sends the request on its own connection, so that
//! nothing else on it stops.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use protocol::keys::{self, KeyError, PrivateKey};
use protocol::nats::BRIDGE_ROTATE_KEY;
use protocol::{ErrorCode, Message, RpcError, Signer};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::outbound::{LiveLink, Outbound};

/// The device's signing identity, shared by every connection of the bridge:
/// it changes when a rotation completes, and while an interrupted one is
/// being finished.
pub(crate) struct DeviceIdentity {
    device_id: String,
    /// The key file, if the bridge has one: without it (a key given in
    /// memory) the key cannot be rotated.
    key_file: Option<PathBuf>,
    current: Mutex<Current>,
}

struct Current {
    signer: Arc<Signer>,
    /// Whether `signer` is the `.next` key, tried because the key file was
    /// refused `key_mismatch` (a rotation the cloud completed and the bridge
    /// did not).
    from_next_file: bool,
}

impl DeviceIdentity {
    pub(crate) fn new(signer: Signer, key_file: Option<PathBuf>) -> Self {
        DeviceIdentity {
            device_id: signer.id().to_owned(),
            key_file,
            current: Mutex::new(Current {
                signer: Arc::new(signer),
                from_next_file: false,
            }),
        }
    }

    /// The key to authenticate and sign with now.
    pub(crate) fn signer(&self) -> Arc<Signer> {
        self.lock().signer.clone()
    }

    /// Whether the key can be rotated: the bridge has a key file.
    pub(crate) fn rotatable(&self) -> bool {
        self.key_file.is_some()
    }

    /// `<key file>.next`, the key being rotated to, if there is a key file.
    pub(crate) fn next_file(&self) -> Option<PathBuf> {
        self.key_file.as_deref().map(next_path)
    }

    /// Whether a rotation was begun and not finished: `.next` exists.
    pub(crate) fn has_next(&self) -> bool {
        self.next_file().is_some_and(|path| path.exists())
    }

    /// The key to rotate to: `.next` if a rotation was begun, or a new one,
    /// written to `.next` first (atomically, 0600) so that it survives a crash.
    pub(crate) fn next_key(&self) -> Result<PrivateKey, KeyError> {
        let path = self
            .next_file()
            .expect("rotations are started only with a key file");
        if path.exists() {
            return keys::read_private_key(&path);
        }
        let key = keys::generate();
        keys::write_private_key_atomically(&path, &key)?;
        tracing::info!(path = %path.display(), fingerprint = %keys::fingerprint(&key.verifying_key()), "new device key written; rotating to it");
        Ok(key)
    }

    /// The cloud confirmed the rotation to `next`: it becomes the key file
    /// and the key every later connection authenticates with.
    pub(crate) fn rotated(&self, next: Signer) -> Result<(), KeyError> {
        let mut current = self.lock();
        if let Some(key_file) = &self.key_file {
            keys::replace(&next_path(key_file), key_file)?;
        }
        *current = Current {
            signer: Arc::new(next),
            from_next_file: false,
        };
        Ok(())
    }

    /// The cloud refused the current key as not the one registered. If a
    /// rotation was interrupted after the cloud switched, the `.next` key is
    /// the registered one: the next connection tries it, and if that is
    /// refused too, the key file again (read anew: it may have changed).
    /// Returns whether the key changed.
    pub(crate) fn key_mismatch(&self) -> bool {
        let (Some(key_file), Some(next_file)) = (&self.key_file, self.next_file()) else {
            return false;
        };
        let mut current = self.lock();
        let mut candidates = vec![(key_file.clone(), false)];
        if !current.from_next_file {
            candidates.insert(0, (next_file, true));
        }
        for (path, from_next_file) in candidates {
            if !path.exists() {
                continue;
            }
            let key = match keys::read_private_key(&path) {
                Ok(key) => key,
                Err(error) => {
                    tracing::error!(%error, "cannot read another key to try");
                    continue;
                }
            };
            if key.verifying_key() == current.signer.public_key() {
                continue;
            }
            tracing::warn!(path = %path.display(), fingerprint = %keys::fingerprint(&key.verifying_key()), "the cloud refused this key; trying another");
            *current = Current {
                signer: Arc::new(Signer::new(self.device_id.clone(), key)),
                from_next_file,
            };
            return true;
        }
        false
    }

    /// The cloud accepted the current key (pending or accepted): if it is
    /// the `.next` key, the interrupted rotation is finished by renaming it
    /// over the key file.
    pub(crate) fn authenticated(&self) {
        let mut current = self.lock();
        let (true, Some(key_file)) = (current.from_next_file, &self.key_file) else {
            return;
        };
        match keys::replace(&next_path(key_file), key_file) {
            Ok(()) => {
                current.from_next_file = false;
                tracing::info!(key_file = %key_file.display(), "finished an interrupted key rotation: the new key is the key file now");
            }
            Err(error) => tracing::error!(%error, "cannot finish the interrupted key rotation"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `<key file>.next`.
pub fn next_path(key_file: &Path) -> PathBuf {
    let mut name = key_file.file_name().unwrap_or_default().to_owned();
    name.push(".next");
    key_file.with_file_name(name)
}

/// Serves [`BRIDGE_ROTATE_KEY`] until shutdown: each request is handed to
/// the live session, and answered with its outcome.
pub(crate) async fn serve_rotate_requests(
    nats: async_nats::Client,
    live: LiveLink,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut requests = nats.subscribe(BRIDGE_ROTATE_KEY).await?;
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            request = requests.next() => match request {
                Some(request) => request,
                None => return Ok(()),
            },
        };
        let Some(reply_to) = request.reply else {
            tracing::warn!("rotate-key request without a reply subject; dropped");
            continue;
        };
        let nats = nats.clone();
        let session = live.lock().expect("live link lock").clone();
        tokio::spawn(async move {
            let outcome = match session {
                None => Err(RpcError::new(
                    ErrorCode::Unavailable,
                    "bridge is not live on the cloud; the key is rotated once it is",
                )),
                Some(session) => rotate_on(&session).await,
            };
            let response = Message::Response {
                id: Value::Null,
                result: outcome.map(|fingerprint| {
                    protocol::rotation::Rotated {
                        status: protocol::rotation::RotatedStatus::Rotated,
                        fingerprint,
                    }
                    .to_value()
                }),
            };
            if let Err(error) = nats.publish(reply_to, response.to_text().into()).await {
                tracing::warn!(%error, "cannot answer a rotate-key request");
            }
        });
    }
}

/// Asks the live session to rotate and waits for the outcome.
async fn rotate_on(session: &tokio::sync::mpsc::Sender<Outbound>) -> Result<String, RpcError> {
    let lost = || {
        RpcError::new(
            ErrorCode::Unavailable,
            "connection to the cloud closed during the rotation; it resumes on the next",
        )
    };
    let (reply, outcome) = oneshot::channel();
    session
        .send(Outbound::RotateKey { reply: Some(reply) })
        .await
        .map_err(|_| lost())?;
    outcome.await.map_err(|_| lost())?
}
