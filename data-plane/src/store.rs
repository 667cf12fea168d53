//! Last-known-good snapshots on disk, so a proxy restarted while the controller is away serves at
//! once. Two generations are kept: `snapshot.current` and `snapshot.previous`.
//!
//! Lifecycle of a save: write `snapshot.tmp` (mode 0600, fsync) → rename `current` to `previous`
//! → rename `tmp` to `current` → fsync the directory. A crash at any point leaves at least one
//! complete file. Each file is `MAGIC`, the hex SHA-256 of the payload, a newline, and the payload
//! (an encoded `VersionedSnapshot`); a file whose checksum does not match is reported and never
//! served.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use prost::Message;
use sha2::{Digest, Sha256};
use switchyard_shared::{chunk, pb};
use thiserror::Error;

const MAGIC: &[u8] = b"SWITCHYARD-SNAPSHOT 1\n";
const CURRENT: &str = "snapshot.current";
const PREVIOUS: &str = "snapshot.previous";
const TMP: &str = "snapshot.tmp";

/// A state file that cannot be used.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt state file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (and creates, mode 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every stored generation, newest first, each decoded or with the reason it cannot be.
    /// Missing files are skipped silently.
    #[cfg(test)]
    pub fn load_all(&self) -> Vec<Result<pb::VersionedSnapshot, StoreError>> {
        self.load_each()
            .map(|stored| {
                let stored = stored?;
                pb::VersionedSnapshot::decode(stored.payload.as_slice())
                    .map_err(|e| stored.corrupt(&format!("undecodable: {e}")))
            })
            .collect()
    }

    /// Every stored generation, newest first, read one at a time as the caller asks (at boot the
    /// previous generation is not even read when the current one applies), each with its
    /// checksum verified or with the reason it cannot be used. Missing files are skipped silently.
    pub fn load_each(&self) -> impl Iterator<Item = Result<Stored, StoreError>> + '_ {
        [CURRENT, PREVIOUS].into_iter().filter_map(|name| {
            let path = self.dir.join(name);
            match fs::read(&path) {
                Ok(bytes) => Some(verified(path, bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => Some(Err(StoreError::Io { path, source })),
            }
        })
    }

    /// The payload of the current generation (an encoded `VersionedSnapshot`), not checked:
    /// the proxy rebuilds a delta's snapshot from it and checks what it rebuilt, so damage in
    /// what the rebuild copies is found there (and damage elsewhere changes nothing served).
    pub fn current_payload(&self) -> Result<Vec<u8>, StoreError> {
        let path = self.dir.join(CURRENT);
        let mut bytes = fs::read(&path).map_err(io(&path))?;
        let (_, payload) = split(&path, &bytes)?;
        bytes.drain(..payload);
        Ok(bytes)
    }

    /// Persists a snapshot as the new current generation.
    pub fn save(&self, snapshot: &pb::VersionedSnapshot) -> Result<(), StoreError> {
        self.save_encoded(&snapshot.encode_to_vec())
    }

    /// [`Store::save`] of a snapshot already encoded (`VersionedSnapshot::encode_to_vec`).
    pub fn save_encoded(&self, payload: &[u8]) -> Result<(), StoreError> {
        self.stage_encoded(payload)?;
        self.commit_staged()
    }

    /// First half of [`Store::save_encoded`]: writes and syncs the new generation beside the
    /// current one without making it current (the slow part, which the proxy overlaps with the
    /// table build). Staging again replaces what was staged; one apply stages at a time.
    pub fn stage_encoded(&self, payload: &[u8]) -> Result<(), StoreError> {
        let tmp = self.dir.join(TMP);
        {
            let mut options = fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp).map_err(io(&tmp))?;
            file.write_all(MAGIC).map_err(io(&tmp))?;
            file.write_all(hex::encode(Sha256::digest(payload)).as_bytes())
                .map_err(io(&tmp))?;
            file.write_all(b"\n").map_err(io(&tmp))?;
            file.write_all(payload).map_err(io(&tmp))?;
            file.sync_all().map_err(io(&tmp))?;
        }
        Ok(())
    }

    /// Second half of [`Store::save_encoded`]: the staged generation becomes current and the
    /// current one previous (two renames and a directory sync).
    pub fn commit_staged(&self) -> Result<(), StoreError> {
        let tmp = self.dir.join(TMP);
        let current = self.dir.join(CURRENT);
        let previous = self.dir.join(PREVIOUS);
        if current.exists() {
            fs::rename(&current, &previous).map_err(io(&previous))?;
        }
        fs::rename(&tmp, &current).map_err(io(&current))?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// A stored generation whose checksum matches.
#[derive(Debug)]
pub struct Stored {
    pub path: PathBuf,
    /// An encoded `VersionedSnapshot`, as the controller sent it.
    pub payload: Vec<u8>,
}

impl Stored {
    /// The version the payload announces (its content is checked against it when applied).
    pub fn version(&self) -> Result<String, StoreError> {
        chunk::announced_version(&self.payload)
            .map_err(|e| self.corrupt(&format!("undecodable: {e}")))
    }

    fn corrupt(&self, reason: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_owned(),
        }
    }
}

/// The payload of the state file `bytes` read from `path`, once its header and checksum check.
fn verified(path: PathBuf, mut bytes: Vec<u8>) -> Result<Stored, StoreError> {
    let (sum, payload) = split(&path, &bytes)?;
    if hex::encode(Sha256::digest(&bytes[payload..])).as_bytes() != sum {
        return Err(StoreError::Corrupt {
            path,
            reason: "checksum mismatch".into(),
        });
    }
    bytes.drain(..payload);
    Ok(Stored {
        path,
        payload: bytes,
    })
}

/// The checksum a state file announces, and where its payload starts.
fn split<'a>(path: &Path, bytes: &'a [u8]) -> Result<(&'a [u8], usize), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| corrupt("not a switchyard snapshot file (bad header)"))?;
    if rest.len() < 65 || rest[64] != b'\n' {
        return Err(corrupt("truncated checksum"));
    }
    Ok((&rest[..64], MAGIC.len() + 65))
}

/// `map_err` for an I/O error on `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: &str) -> pb::VersionedSnapshot {
        pb::VersionedSnapshot {
            version: version.into(),
            generation: 1,
            created_at_unix_ms: 0,
            snapshot: Some(pb::Snapshot::default()),
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sy-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn keeps_two_generations_newest_first() {
        let dir = temp_dir("gen");
        let store = Store::open(&dir).unwrap();
        assert!(store.load_all().is_empty());
        store.save(&snapshot("a")).unwrap();
        store.save(&snapshot("b")).unwrap();
        store.save(&snapshot("c")).unwrap();
        let all: Vec<_> = store
            .load_all()
            .into_iter()
            .map(|r| r.unwrap().version)
            .collect();
        assert_eq!(all, vec!["c", "b"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(CURRENT))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = fs::remove_dir_all(&dir);
    }

    /// A staged generation is not served until committed (a NACKed snapshot stays staged only).
    #[test]
    fn staged_generation_counts_only_once_committed() {
        let dir = temp_dir("stage");
        let store = Store::open(&dir).unwrap();
        store.save(&snapshot("a")).unwrap();
        store.stage_encoded(&snapshot("b").encode_to_vec()).unwrap();
        let versions = |store: &Store| -> Vec<String> {
            store
                .load_all()
                .into_iter()
                .map(|r| r.unwrap().version)
                .collect()
        };
        assert_eq!(versions(&store), vec!["a"]);
        // Staging again replaces what was staged.
        store.stage_encoded(&snapshot("c").encode_to_vec()).unwrap();
        store.commit_staged().unwrap();
        assert_eq!(versions(&store), vec!["c", "a"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn flipped_byte_is_detected() {
        let dir = temp_dir("flip");
        let store = Store::open(&dir).unwrap();
        store.save(&snapshot("a")).unwrap();
        store.save(&snapshot("b")).unwrap();
        let path = dir.join(CURRENT);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let all = store.load_all();
        let err = all[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert_eq!(all[1].as_ref().unwrap().version, "a");
        fs::write(&path, b"garbage").unwrap();
        assert!(store.load_all()[0].as_ref().is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
