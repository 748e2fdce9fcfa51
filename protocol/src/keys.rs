//! Ed25519 key files (PKCS#8 private, SPKI public, PEM) and fingerprints.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

pub use ed25519_dalek::{SigningKey as PrivateKey, VerifyingKey as PublicKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "permissions {mode:04o} for private key {path} are too open; it must not be \
         accessible by others (run: chmod 600 {path})"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is not an Ed25519 {kind} key in PEM: {reason}")]
    Invalid {
        path: PathBuf,
        kind: &'static str,
        reason: String,
    },
}

pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// Reads a PKCS#8 PEM private key, refusing one that group or others can read.
pub fn read_private_key(path: &Path) -> Result<SigningKey, KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.into(),
                mode,
            });
        }
    }
    let pem = read(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Invalid {
        path: path.into(),
        kind: "private",
        reason: e.to_string(),
    })
}

pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = read(path)?;
    public_key_from_pem(&pem).map_err(|reason| KeyError::Invalid {
        path: path.into(),
        kind: "public",
        reason,
    })
}

/// Writes a private key readable by its owner only (0600), as ssh-keygen does.
pub fn write_private_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let pem = key
        .to_pkcs8_pem(Default::default())
        .expect("an Ed25519 key encodes as PKCS#8");
    let write_err = |source| KeyError::Write {
        path: path.into(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(write_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // An existing file keeps its old mode on open; tighten it.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(write_err)?;
    }
    file.write_all(pem.as_bytes()).map_err(write_err)
}

pub fn write_public_key(path: &Path, key: &VerifyingKey) -> Result<(), KeyError> {
    fs::write(path, public_key_to_pem(key)).map_err(|source| KeyError::Write {
        path: path.into(),
        source,
    })
}

pub fn public_key_to_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(Default::default())
        .expect("an Ed25519 key encodes as SPKI")
}

pub fn public_key_from_pem(pem: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| e.to_string())
}

/// `SHA256:` and the unpadded base64 of the SHA-256 of the raw 32-byte key,
/// the form `ssh-keygen -l` prints.
pub fn fingerprint(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("SHA256:{}", STANDARD_NO_PAD.encode(digest))
}

fn read(path: &Path) -> Result<String, KeyError> {
    fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_keys_are_written_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let key = generate();
        write_private_key(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_private_key(&path).unwrap().to_bytes(), key.to_bytes());
    }

    #[test]
    fn a_world_readable_private_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        write_private_key(&path, &generate()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_private_key(&path).unwrap_err();
        assert!(matches!(err, KeyError::TooOpen { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn public_keys_round_trip_through_pem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pem");
        let key = generate().verifying_key();
        write_public_key(&path, &key).unwrap();
        assert_eq!(read_public_key(&path).unwrap(), key);
        assert!(fs::read_to_string(&path)
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----"));
    }

    #[test]
    fn fingerprint_is_sha256_of_the_raw_key() {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let expected = STANDARD_NO_PAD.encode(Sha256::digest(key.as_bytes()));
        assert_eq!(fingerprint(&key), format!("SHA256:{expected}"));
    }
}
