//! ACME storage, per resolver: the account credentials and the certificates with their keys.
//!
//! Two backends behind [`Store`]: a JSON file (the default; Traefik's `acme.json` idea, our own
//! layout), written atomically (temp file, fsync, rename) with mode 0600, which several
//! resolvers of one controller may share — a file that does not parse is moved aside
//! (`<file>.corrupt`) rather than overwritten, and the resolver starts empty; or etcd
//! ([`etcd`], `storageEtcd`), shared by several controllers, where each order runs under a
//! [`Lock`] held with an etcd lease. A file is never shared between controllers, so its lock is
//! a no-op.

pub mod etcd;

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;

use crate::{config::AcmeConfig, provider::kv::etcd::EtcdError};

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

/// Storage failures; each names the file or the store.
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
    #[error("ACME storage {store}: {source}")]
    Etcd {
        store: String,
        #[source]
        source: EtcdError,
    },
    #[error("ACME storage {store}: cannot encode {key}: {source}")]
    EncodeKey {
        store: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Where one resolver keeps its data.
pub enum Store {
    File(PathBuf),
    Etcd(Box<etcd::EtcdStore>),
}

/// Held while a certificate is ordered; see [`Store::lock`].
pub enum Lock {
    /// File storage belongs to one controller: nothing to coordinate.
    Unshared,
    Etcd(etcd::EtcdLock),
}

impl Lock {
    /// Turns `true` when the lock is, or may be, lost (never for [`Lock::Unshared`]).
    pub fn lost(&self) -> Option<watch::Receiver<bool>> {
        match self {
            Lock::Unshared => None,
            Lock::Etcd(l) => Some(l.lost()),
        }
    }

    /// Releases the lock (errors are logged: the lease expires by itself).
    pub async fn release(self) {
        if let Lock::Etcd(l) = self {
            l.release().await;
        }
    }
}

impl Store {
    /// The backend `certificatesResolvers.<name>.acme` (`option`) asks for.
    pub fn new(acme: &AcmeConfig, option: &str) -> Self {
        match &acme.storage_etcd {
            Some(e) => Store::Etcd(Box::new(etcd::EtcdStore::new(
                e,
                format!("{option}.storageEtcd"),
            ))),
            None => Store::File(
                acme.storage
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("acme.json")),
            ),
        }
    }

    /// Shared with other controllers (re-read periodically, orders locked).
    pub fn shared(&self) -> bool {
        matches!(self, Store::Etcd(_))
    }

    /// For logs.
    pub fn describe(&self) -> String {
        match self {
            Store::File(p) => p.display().to_string(),
            Store::Etcd(e) => e.describe(),
        }
    }

    /// Everything `resolver` has stored.
    pub async fn load(&mut self, resolver: &str) -> Result<ResolverData, StorageError> {
        match self {
            Store::File(path) => Ok(load(path)?.remove(resolver).unwrap_or_default()),
            Store::Etcd(e) => e.load(resolver).await,
        }
    }

    /// The stored certificate for exactly these domains, if any.
    pub async fn certificate(
        &mut self,
        resolver: &str,
        domains: &[String],
    ) -> Result<Option<StoredCertificate>, StorageError> {
        match self {
            Store::File(_) => Ok(self
                .load(resolver)
                .await?
                .certificates
                .into_iter()
                .find(|c| c.domains == domains)),
            Store::Etcd(e) => e.certificate(resolver, domains).await,
        }
    }

    /// Takes the lock for ordering these domains: `None` when another controller holds it.
    pub async fn lock(
        &mut self,
        resolver: &str,
        domains: &[String],
    ) -> Result<Option<Lock>, StorageError> {
        match self {
            Store::File(_) => Ok(Some(Lock::Unshared)),
            Store::Etcd(e) => Ok(e.try_lock(resolver, domains).await?.map(Lock::Etcd)),
        }
    }

    /// Stores a certificate (replacing the one for the same domains) while `lock` is held:
    /// `false` when the lock was lost meanwhile and nothing was written.
    pub async fn put_certificate(
        &mut self,
        resolver: &str,
        certificate: &StoredCertificate,
        lock: &Lock,
    ) -> Result<bool, StorageError> {
        match (self, lock) {
            (Store::Etcd(e), Lock::Etcd(l)) => e.put_certificate(resolver, certificate, l).await,
            (Store::Etcd(_), Lock::Unshared) => {
                debug_assert!(false, "etcd storage written without its lock");
                Ok(false)
            }
            (Store::File(path), _) => {
                let mut file = load(path)?;
                let data = file.entry(resolver.to_owned()).or_default();
                match data
                    .certificates
                    .iter_mut()
                    .find(|c| c.domains == certificate.domains)
                {
                    Some(c) => *c = certificate.clone(),
                    None => data.certificates.push(certificate.clone()),
                }
                save(path, &file)?;
                Ok(true)
            }
        }
    }

    /// Stores (or, with `None`, forgets) the resolver's account.
    pub async fn put_account(
        &mut self,
        resolver: &str,
        account: Option<StoredAccount>,
    ) -> Result<(), StorageError> {
        match self {
            Store::File(path) => {
                let mut file = load(path)?;
                file.entry(resolver.to_owned()).or_default().account = account;
                save(path, &file)
            }
            Store::Etcd(e) => e.put_account(resolver, account.as_ref()).await,
        }
    }
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
