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

/// Writes a private key as [`write_private_key`] does, but so that `path`
/// holds either nothing or the whole key whatever happens meanwhile (a crash,
/// a full disk): into a temporary file beside it, flushed to disk, then
/// renamed over `path`.
pub fn write_private_key_atomically(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let partial = partial_path(path);
    write_private_key(&partial, key)?;
    let durable = fs::File::open(&partial).and_then(|file| file.sync_all());
    durable.map_err(|source| KeyError::Write {
        path: partial.clone(),
        source,
    })?;
    replace(&partial, path)
}

/// Renames `from` over `to` and flushes the directory, so that the rename
/// itself survives a crash; `to` holds its old or its new contents, never
/// neither.
pub fn replace(from: &Path, to: &Path) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write {
        path: to.into(),
        source,
    };
    fs::rename(from, to).map_err(write_err)?;
    let directory = match to.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    fs::File::open(directory)
        .and_then(|dir| dir.sync_all())
        .map_err(write_err)
}

/// Where [`write_private_key_atomically`] writes before renaming.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    path.with_file_name(name)
}

/// Most public keys [`read_public_keys`] takes: a peer trusted with more is
/// more likely misconfigured than rotating.
pub const MAX_TRUSTED_KEYS: usize = 8;

const PUBLIC_KEY_END: &str = "-----END PUBLIC KEY-----";

/// Reads a set of SPKI PEM public keys, as listed: from a file of one or
/// more PEM blocks (in their order), or from a directory's `*.pem` files (the
/// most recently modified first). At least one and at most
/// [`MAX_TRUSTED_KEYS`]; a key listed twice counts once.
pub fn read_public_keys(path: &Path) -> Result<Vec<VerifyingKey>, KeyError> {
    let invalid = |reason: String| KeyError::Invalid {
        path: path.into(),
        kind: "public",
        reason,
    };
    let is_dir = fs::metadata(path)
        .map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?
        .is_dir();
    let files = match is_dir {
        false => vec![path.to_owned()],
        true => pem_files_newest_first(path)?,
    };
    let mut keys: Vec<VerifyingKey> = Vec::new();
    for file in files {
        for block in pem_blocks(&read(&file)?) {
            let key = public_key_from_pem(block).map_err(|reason| KeyError::Invalid {
                path: file.clone(),
                kind: "public",
                reason,
            })?;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    if keys.is_empty() {
        return Err(invalid("no public key in it".into()));
    }
    if keys.len() > MAX_TRUSTED_KEYS {
        return Err(invalid(format!(
            "{} keys; at most {MAX_TRUSTED_KEYS} may be trusted",
            keys.len()
        )));
    }
    Ok(keys)
}

/// Writes `keys` to `path` as PEM blocks in their order, atomically (see
/// [`write_private_key_atomically`]), readable by others: they are public.
pub fn write_public_keys_atomically(path: &Path, keys: &[VerifyingKey]) -> Result<(), KeyError> {
    let partial = partial_path(path);
    let text: String = keys.iter().map(public_key_to_pem).collect();
    let write_err = |source| KeyError::Write {
        path: partial.clone(),
        source,
    };
    let mut file = fs::File::create(&partial).map_err(write_err)?;
    file.write_all(text.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    replace(&partial, path)
}

/// The PEM blocks of `text`, each up to and with its END line.
fn pem_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find(PUBLIC_KEY_END) {
        let (block, after) = rest.split_at(end + PUBLIC_KEY_END.len());
        blocks.push(block);
        rest = after;
    }
    if !rest.trim().is_empty() {
        // Whatever follows the last block is read as one, to be refused
        // with the parser's reason.
        blocks.push(rest);
    }
    blocks
}

/// A directory's `*.pem` files, the most recently modified first.
fn pem_files_newest_first(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let read_err = |source| KeyError::Read {
        path: dir.into(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "pem") && path.is_file() {
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(read_err)?;
            files.push((modified, path));
        }
    }
    files.sort_by(|a, b| b.cmp(a));
    Ok(files.into_iter().map(|(_, path)| path).collect())
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
    fn an_atomic_write_replaces_the_whole_key_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem.next");
        write_private_key_atomically(&path, &generate()).unwrap();
        let key = generate();
        write_private_key_atomically(&path, &key).unwrap();
        assert_eq!(read_private_key(&path).unwrap().to_bytes(), key.to_bytes());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["k.pem.next"]);
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
    fn a_set_of_public_keys_is_read_from_a_file_or_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = [1u8, 2, 3].map(|seed| SigningKey::from_bytes(&[seed; 32]).verifying_key());
        let file = dir.path().join("cloud_public.pem");
        write_public_keys_atomically(&file, &[b, a, b]).unwrap();
        assert_eq!(
            read_public_keys(&file).unwrap(),
            [b, a],
            "in order, once each"
        );

        let keys = dir.path().join("keys");
        fs::create_dir(&keys).unwrap();
        write_public_key(&keys.join("old.pem"), &a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_public_keys_atomically(&keys.join("new.pem"), &[c]).unwrap();
        fs::write(keys.join("notes.txt"), "not a key").unwrap();
        assert_eq!(read_public_keys(&keys).unwrap(), [c, a], "the newest first");
    }

    #[test]
    fn a_set_of_public_keys_is_bounded_and_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cloud_public.pem");
        let many: Vec<_> = (0..=MAX_TRUSTED_KEYS as u8)
            .map(|seed| SigningKey::from_bytes(&[seed; 32]).verifying_key())
            .collect();
        write_public_keys_atomically(&file, &many).unwrap();
        let error = read_public_keys(&file).unwrap_err().to_string();
        assert!(error.contains("at most 8"), "{error}");
        fs::write(&file, "").unwrap();
        let error = read_public_keys(&file).unwrap_err().to_string();
        assert!(error.contains("no public key"), "{error}");
        let one = public_key_to_pem(&many[0]);
        fs::write(&file, format!("{one}garbage")).unwrap();
        assert!(read_public_keys(&file).is_err());
        fs::write(&file, format!("{one}\n\n")).unwrap();
        assert_eq!(read_public_keys(&file).unwrap(), [many[0]]);
    }

    #[test]
    fn fingerprint_is_sha256_of_the_raw_key() {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let expected = STANDARD_NO_PAD.encode(Sha256::digest(key.as_bytes()));
        assert_eq!(fingerprint(&key), format!("SHA256:{expected}"));
    }
}
