//! The cloud keys this bridge trusts, shared by every connection, and kept
//! on disk when the bridge has a file (or directory) of them: the cloud adds
//! its next key with `device.trust_cloud_key` and retires an old one with
//! `device.distrust_cloud_key` (see [`protocol::cloud_keys`]). Every change
//! is written (atomically) before it is acknowledged, so a bridge that
//! restarts trusts what the cloud was told it trusts.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use protocol::keys::{self, KeyError, PublicKey, MAX_TRUSTED_KEYS};
use protocol::{ErrorCode, RpcError};
use serde_json::json;

pub(crate) struct CloudTrust {
    /// The most recently trusted first: tried first.
    keys: Mutex<Vec<PublicKey>>,
    /// Where the set is kept: a file of PEM blocks, or a directory of
    /// `*.pem` files; none for a set given in memory.
    file: Option<PathBuf>,
}

impl CloudTrust {
    pub(crate) fn new(keys: Vec<PublicKey>, file: Option<PathBuf>) -> Self {
        CloudTrust {
            keys: Mutex::new(keys),
            file,
        }
    }

    pub(crate) fn keys(&self) -> Vec<PublicKey> {
        self.lock().clone()
    }

    /// Trusts `key` too, tried first from now on; the set trusted now.
    pub(crate) fn trust(&self, key: PublicKey) -> Result<Vec<PublicKey>, RpcError> {
        let mut keys = self.lock();
        if keys.contains(&key) {
            return Ok(keys.clone());
        }
        if keys.len() >= MAX_TRUSTED_KEYS {
            return Err(refused(
                "trusted_keys_full",
                format!(
                    "this device trusts {MAX_TRUSTED_KEYS} cloud keys already; distrust one first"
                ),
            ));
        }
        let mut updated = keys.clone();
        updated.insert(0, key);
        self.persist(&updated)?;
        tracing::info!(fingerprint = %keys::fingerprint(&key), "now trusting one more cloud key");
        *keys = updated;
        Ok(keys.clone())
    }

    /// Stops trusting the key of `fingerprint`, unless it is the last one or
    /// `signed_with`, the key that signed this very request; the set trusted
    /// now. A key not trusted is not an error: the request may be a retry.
    pub(crate) fn distrust(
        &self,
        fingerprint: &str,
        signed_with: &PublicKey,
    ) -> Result<Vec<PublicKey>, RpcError> {
        let mut keys = self.lock();
        let Some(key) = keys
            .iter()
            .find(|k| keys::fingerprint(k) == fingerprint)
            .copied()
        else {
            return Ok(keys.clone());
        };
        if key == *signed_with {
            return Err(refused(
                "signing_key",
                "the key that signed this request cannot be distrusted by it",
            ));
        }
        if keys.len() == 1 {
            return Err(refused(
                "last_key",
                "the last trusted cloud key is never distrusted",
            ));
        }
        let updated: Vec<_> = keys.iter().copied().filter(|k| *k != key).collect();
        self.persist(&updated)?;
        tracing::info!(%fingerprint, "no longer trusting a cloud key");
        *keys = updated;
        Ok(keys.clone())
    }

    fn persist(&self, keys: &[PublicKey]) -> Result<(), RpcError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let written = match file.is_dir() {
            true => write_directory(file, keys),
            false => keys::write_public_keys_atomically(file, keys),
        };
        written.map_err(|error| {
            tracing::error!(%error, "cannot keep the trusted cloud keys");
            RpcError::new(
                ErrorCode::InternalError,
                format!("cannot keep the trusted cloud keys: {error}"),
            )
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PublicKey>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn refused(reason: &str, message: impl Into<String>) -> RpcError {
    let mut error = RpcError::new(ErrorCode::Refused, message);
    error.data = Some(json!({ "reason": reason }));
    error
}

/// Makes the directory's `*.pem` files hold exactly `keys`: a file whose
/// keys are all trusted stays as it is, one holding a key no longer trusted
/// is rewritten without it (or removed), and a key in no file gets a file of
/// its own, written last, so that it reads as the most recent.
fn write_directory(dir: &Path, keys: &[PublicKey]) -> Result<(), KeyError> {
    let mut kept = Vec::new();
    for entry in fs::read_dir(dir).map_err(|source| KeyError::Read {
        path: dir.into(),
        source,
    })? {
        let path = entry
            .map_err(|source| KeyError::Read {
                path: dir.into(),
                source,
            })?
            .path();
        if path.extension().is_none_or(|ext| ext != "pem") {
            continue;
        }
        let held = keys::read_public_keys(&path)?;
        let trusted: Vec<_> = held.iter().copied().filter(|k| keys.contains(k)).collect();
        if trusted.is_empty() {
            fs::remove_file(&path).map_err(|source| KeyError::Write { path, source })?;
        } else if trusted.len() < held.len() {
            keys::write_public_keys_atomically(&path, &trusted)?;
        }
        kept.extend(trusted);
    }
    for key in keys.iter().rev().filter(|key| !kept.contains(key)) {
        let name = keys::fingerprint(key)
            .trim_start_matches("SHA256:")
            .replace(['/', '+'], "_");
        keys::write_public_keys_atomically(&dir.join(format!("cloud-{name}.pem")), &[*key])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PublicKey {
        keys::PrivateKey::from_bytes(&[seed; 32]).verifying_key()
    }

    #[test]
    fn a_file_of_keys_follows_what_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cloud_public.pem");
        keys::write_public_keys_atomically(&file, &[key(1)]).unwrap();
        let trust = CloudTrust::new(vec![key(1)], Some(file.clone()));
        assert_eq!(trust.trust(key(2)).unwrap(), [key(2), key(1)]);
        assert_eq!(keys::read_public_keys(&file).unwrap(), [key(2), key(1)]);
        assert_eq!(
            trust
                .distrust(&keys::fingerprint(&key(1)), &key(2))
                .unwrap(),
            [key(2)]
        );
        assert_eq!(keys::read_public_keys(&file).unwrap(), [key(2)]);
    }

    #[test]
    fn a_directory_of_keys_follows_what_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        keys::write_public_keys_atomically(&dir.path().join("first.pem"), &[key(1), key(3)])
            .unwrap();
        let trust = CloudTrust::new(vec![key(1), key(3)], Some(dir.path().into()));
        trust.trust(key(2)).unwrap();
        assert_eq!(
            keys::read_public_keys(dir.path()).unwrap()[0],
            key(2),
            "the newest first"
        );
        trust
            .distrust(&keys::fingerprint(&key(1)), &key(2))
            .unwrap();
        trust
            .distrust(&keys::fingerprint(&key(3)), &key(2))
            .unwrap();
        assert_eq!(keys::read_public_keys(dir.path()).unwrap(), [key(2)]);
        assert!(!dir.path().join("first.pem").exists());
    }

    #[test]
    fn the_signing_key_and_the_last_key_stay_and_the_set_is_bounded() {
        let trust = CloudTrust::new(vec![key(1)], None);
        let last = trust
            .distrust(&keys::fingerprint(&key(1)), &key(9))
            .unwrap_err();
        assert_eq!(last.data, Some(json!({"reason": "last_key"})));
        trust.trust(key(2)).unwrap();
        let signing = trust
            .distrust(&keys::fingerprint(&key(2)), &key(2))
            .unwrap_err();
        assert_eq!(signing.data, Some(json!({"reason": "signing_key"})));
        assert_eq!(
            trust
                .distrust(&keys::fingerprint(&key(7)), &key(2))
                .unwrap()
                .len(),
            2
        );
        for seed in 3..=8 {
            trust.trust(key(seed)).unwrap();
        }
        let full = trust.trust(key(9)).unwrap_err();
        assert_eq!(full.data, Some(json!({"reason": "trusted_keys_full"})));
        assert_eq!(trust.keys().len(), MAX_TRUSTED_KEYS);
    }
}
