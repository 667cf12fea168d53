//! ACME storage: one JSON file (Traefik's `acme.json` idea, our own layout) holding, per resolver,
//! the account credentials and the certificates with their keys. Written atomically (temp file,
//! fsync, rename) with mode 0600; several resolvers may share one file. A file that does not
//! parse is moved aside (`<file>.corrupt`) rather than overwritten, and the resolver starts empty.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The whole file.
pub type StorageFile = BTreeMap<String, ResolverData>;

/// What one resolver keeps.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolverData {
    /// The account (directory URL + credentials as instant-acme serializes them).
    #[serde(default)]
    pub account: Option<StoredAccount>,
    #[serde(default)]
    pub certificates: Vec<StoredCertificate>,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAccount {
    /// The `caServer` this account belongs to; another one means a new account.
    pub directory: String,
    pub credentials: serde_json::Value,
}

/// A certificate with its key (PEM).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredCertificate {
    /// Main domain first, then SANs.
    pub domains: Vec<String>,
    pub certificate: String,
    pub key: String,
    pub not_after_unix: i64,
}

impl std::fmt::Debug for StoredCertificate {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCertificate")
            .field("domains", &self.domains)
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

/// Storage failures; each names the file.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("ACME storage {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ACME storage {path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ACME storage {path}: cannot encode: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads the file; a missing file is empty. A corrupt one is moved aside (reported) and read as
/// empty, so the controller still starts and orders what it needs.
pub fn load(path: &Path) -> Result<StorageFile, StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StorageFile::new()),
        Err(source) => {
            return Err(StorageError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(StorageFile::new());
    }
    match serde_json::from_slice(&bytes) {
        Ok(file) => Ok(file),
        Err(e) => {
            let aside = path.with_extension("json.corrupt");
            tracing::error!(path = %path.display(), aside = %aside.display(), error = %e, "ACME storage does not parse; moved aside, starting empty");
            let _ = std::fs::rename(path, &aside);
            Ok(StorageFile::new())
        }
    }
}

/// Writes the file atomically with mode 0600.
pub fn save(path: &Path, file: &StorageFile) -> Result<(), StorageError> {
    let write_err = |source| StorageError::Write {
        path: path.to_owned(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(file).map_err(|source| StorageError::Encode {
        path: path.to_owned(),
        source,
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(write_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(write_err)?;
        }
        f.write_all(&bytes).map_err(write_err)?;
        f.sync_all().map_err(write_err)?;
    }
    std::fs::rename(&tmp, path).map_err(write_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_mode_0600_and_corrupt_file_moved_aside() {
        let dir = std::env::temp_dir().join(format!("sy-acme-store-{}", fastrand::u64(..)));
        let path = dir.join("acme.json");
        assert!(load(&path).unwrap().is_empty());
        let mut file = StorageFile::new();
        file.entry("le".into())
            .or_default()
            .certificates
            .push(StoredCertificate {
                domains: vec!["a.test".into()],
                certificate: "C".into(),
                key: "K".into(),
                not_after_unix: 9,
            });
        save(&path, &file).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = load(&path).unwrap();
        assert_eq!(back["le"].certificates, file["le"].certificates);
        assert!(!format!("{:?}", back["le"].certificates).contains('K'));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).unwrap().is_empty());
        assert!(dir.join("acme.json.corrupt").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
