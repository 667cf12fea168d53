//! ACME storage in etcd (`certificatesResolvers.<name>.acme.storageEtcd`), shared by every
//! controller configured with the same endpoints and `rootKey`.
//!
//! Key layout (one key per object, so controllers writing different certificates never clobber
//! each other; values are JSON):
//! - `<rootKey>/<resolver>/account`: the account (directory URL and credentials);
//! - `<rootKey>/<resolver>/certificates/<domains>`: one certificate with its key, `<domains>`
//!   being the main name then the SANs, comma-separated;
//! - `<rootKey>/<resolver>/locks/<domains>`: present while a controller orders that certificate,
//!   attached to the lease that controller keeps alive.
//!
//! Lock lifecycle: [`EtcdStore::try_lock`] grants a lease (`lockTTL`) and creates the lock key
//! with it in one transaction unless the key exists (then the lease is revoked and the caller
//! waits); while held, the lease is renewed in the background and [`EtcdLock::lost`] fires if it
//! may have expired, so the order stops. The certificate is written only while the lock key still
//! carries the lease (a controller that lost its lock cannot overwrite the next holder's
//! result). Release revokes the lease, which deletes the key; a crashed holder's key disappears
//! when its lease expires. The connection is made lazily and dropped after any error.

use std::time::Duration;

use tokio::sync::watch;

use super::{ResolverData, StorageError, StoredAccount, StoredCertificate};
use crate::{
    config::AcmeEtcdStorageConfig,
    provider::kv::etcd::{
        EtcdError,
        client::{EtcdClient, EtcdTarget, KeepAlive},
    },
};

/// `lockTTL` when unset.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);

/// Shortest `lockTTL` accepted: etcd rounds shorter leases up anyway, and renewals every third
/// of the TTL must fit round trips.
pub const MIN_LOCK_TTL: Duration = Duration::from_secs(5);

/// Start-up checks of `storageEtcd`; errors name the option (`option` is its path).
pub fn validate(config: &AcmeEtcdStorageConfig, option: &str) -> Result<(), String> {
    target(config, option.to_owned()).check()?;
    if config.root_key.trim_matches('/').is_empty() {
        return Err(format!("{option}.rootKey must not be empty"));
    }
    if let Some(ttl) = config.lock_ttl
        && ttl < MIN_LOCK_TTL
    {
        return Err(format!(
            "{option}.lockTTL: {ttl:?} is too short (at least {}s)",
            MIN_LOCK_TTL.as_secs()
        ));
    }
    if let Some(tls) = &config.tls {
        crate::provider::client_tls::client_config(tls, &format!("{option}.tls"))?;
    }
    Ok(())
}

fn target(config: &AcmeEtcdStorageConfig, option: String) -> EtcdTarget {
    EtcdTarget::new(
        &config.endpoints,
        config.tls.clone(),
        config
            .username
            .clone()
            .map(|u| (u, config.password.clone().unwrap_or_default())),
        option,
    )
}

/// The key layout under one `rootKey` (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(root_key: &str) -> Self {
        Self {
            root: root_key.trim_matches('/').to_owned(),
        }
    }

    pub fn account(&self, resolver: &str) -> String {
        format!("{}/{resolver}/account", self.root)
    }

    /// Prefix of every certificate of `resolver`.
    pub fn certificates(&self, resolver: &str) -> String {
        format!("{}/{resolver}/certificates/", self.root)
    }

    pub fn certificate(&self, resolver: &str, domains: &[String]) -> String {
        format!("{}{}", self.certificates(resolver), domains.join(","))
    }

    pub fn lock(&self, resolver: &str, domains: &[String]) -> String {
        format!("{}/{resolver}/locks/{}", self.root, domains.join(","))
    }
}

/// One resolver's connection to the shared storage.
pub struct EtcdStore {
    target: EtcdTarget,
    keys: Keys,
    lock_ttl: Duration,
    /// Written into lock keys, so an operator can see who orders (`etcdctl get --prefix`).
    owner: String,
    client: Option<EtcdClient>,
}

impl EtcdStore {
    pub fn new(config: &AcmeEtcdStorageConfig, option: String) -> Self {
        Self {
            target: target(config, option),
            keys: Keys::new(&config.root_key),
            lock_ttl: config.lock_ttl.unwrap_or(DEFAULT_LOCK_TTL),
            owner: format!(
                "switchyard-controller pid {} ({:016x})",
                std::process::id(),
                fastrand::u64(..)
            ),
            client: None,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "etcd {} {}/",
            self.target.endpoints.join(","),
            self.keys.root
        )
    }

    fn error(&mut self, source: EtcdError) -> StorageError {
        // The next call reconnects (etcd restarted, another endpoint is up, …).
        self.client = None;
        StorageError::Etcd {
            store: self.describe(),
            source,
        }
    }

    async fn client(&mut self) -> Result<EtcdClient, StorageError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        match EtcdClient::connect(&self.target).await {
            Ok(c) => {
                self.client = Some(c.clone());
                Ok(c)
            }
            Err(e) => Err(self.error(e)),
        }
    }

    /// The account and every certificate of `resolver`. A value that does not decode is
    /// reported and skipped (the certificate is ordered again); it costs nothing else.
    pub async fn load(&mut self, resolver: &str) -> Result<ResolverData, StorageError> {
        let client = self.client().await?;
        let account_key = self.keys.account(resolver);
        let account = match client.get(&account_key).await {
            Ok(v) => v,
            Err(e) => return Err(self.error(e)),
        };
        let certificates = match client.get_prefix(&self.keys.certificates(resolver)).await {
            Ok(v) => v,
            Err(e) => return Err(self.error(e)),
        };
        let account = account.and_then(|bytes| decode(&account_key, &bytes));
        let certificates = certificates
            .iter()
            .filter_map(|(key, bytes)| decode(key, bytes))
            .collect();
        Ok(ResolverData {
            account,
            certificates,
        })
    }

    pub async fn certificate(
        &mut self,
        resolver: &str,
        domains: &[String],
    ) -> Result<Option<StoredCertificate>, StorageError> {
        let client = self.client().await?;
        let key = self.keys.certificate(resolver, domains);
        match client.get(&key).await {
            Ok(v) => Ok(v.and_then(|bytes| decode(&key, &bytes))),
            Err(e) => Err(self.error(e)),
        }
    }

    pub async fn put_account(
        &mut self,
        resolver: &str,
        account: Option<&StoredAccount>,
    ) -> Result<(), StorageError> {
        let client = self.client().await?;
        let key = self.keys.account(resolver);
        let result = match account {
            Some(a) => {
                let value = self.encode(&key, a)?;
                client.put(&key, value).await
            }
            None => client.delete(&key).await,
        };
        result.map_err(|e| self.error(e))
    }

    /// Writes the certificate only while `lock` still holds its key: `false` when it did not.
    pub async fn put_certificate(
        &mut self,
        resolver: &str,
        certificate: &StoredCertificate,
        lock: &EtcdLock,
    ) -> Result<bool, StorageError> {
        let key = self.keys.certificate(resolver, &certificate.domains);
        let value = self.encode(&key, certificate)?;
        let client = self.client().await?;
        client
            .put_while_leased(&lock.key, lock.lease, &key, value)
            .await
            .map_err(|e| self.error(e))
    }

    /// Takes the lock for `domains`, or `None` when another controller holds it.
    pub async fn try_lock(
        &mut self,
        resolver: &str,
        domains: &[String],
    ) -> Result<Option<EtcdLock>, StorageError> {
        let client = self.client().await?;
        let key = self.keys.lock(resolver, domains);
        // Cheap check first: waiting controllers poll, and need no lease to see a held lock.
        match client.get(&key).await {
            Ok(Some(holder)) => {
                tracing::debug!(%key, holder = %String::from_utf8_lossy(&holder), "ACME order lock is held");
                return Ok(None);
            }
            Ok(None) => {}
            Err(e) => return Err(self.error(e)),
        }
        let (lease, ttl) = match client.grant(self.lock_ttl).await {
            Ok(l) => l,
            Err(e) => return Err(self.error(e)),
        };
        // Renew from the start: the transaction may take a while on a busy cluster.
        let keep_alive = client.keep_alive(lease, ttl);
        match client
            .create_with_lease(&key, self.owner.clone().into_bytes(), lease)
            .await
        {
            Ok(true) => Ok(Some(EtcdLock {
                client,
                key,
                lease,
                keep_alive,
            })),
            Ok(false) => {
                drop(keep_alive);
                if let Err(e) = client.revoke(lease).await {
                    tracing::debug!(lease, error = %e, "cannot revoke an unused lease; it expires by itself");
                }
                Ok(None)
            }
            Err(e) => {
                drop(keep_alive);
                let _ = client.revoke(lease).await;
                Err(self.error(e))
            }
        }
    }

    fn encode<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, StorageError> {
        serde_json::to_vec(value).map_err(|source| StorageError::EncodeKey {
            store: self.describe(),
            key: key.to_owned(),
            source,
        })
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Option<T> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(%key, error = %e, "ACME storage: the value does not decode; ignored");
            None
        }
    }
}

/// A held order lock (see the module's lifecycle note).
pub struct EtcdLock {
    client: EtcdClient,
    key: String,
    lease: i64,
    keep_alive: KeepAlive,
}

impl EtcdLock {
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.keep_alive.lost()
    }

    /// Revokes the lease (deleting the lock key). On failure the lease expires by itself.
    pub async fn release(self) {
        let Self {
            client,
            key,
            lease,
            keep_alive,
        } = self;
        drop(keep_alive);
        if let Err(e) = client.revoke(lease).await {
            tracing::warn!(%key, error = %e, "cannot release the ACME order lock; it expires with its lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> AcmeEtcdStorageConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn keys_are_per_resolver_and_per_domain_set() {
        let keys = Keys::new("/switchyard/acme/");
        let domains = vec!["a.test".to_owned(), "b.test".to_owned()];
        assert_eq!(keys.account("le"), "switchyard/acme/le/account");
        assert_eq!(
            keys.certificate("le", &domains),
            "switchyard/acme/le/certificates/a.test,b.test"
        );
        assert!(
            keys.certificate("le", &domains)
                .starts_with(&keys.certificates("le"))
        );
        assert_eq!(
            keys.lock("le", &domains),
            "switchyard/acme/le/locks/a.test,b.test"
        );
        // Another SAN set is another certificate, another lock.
        let other = vec!["a.test".to_owned()];
        assert_ne!(
            keys.certificate("le", &other),
            keys.certificate("le", &domains)
        );
        assert_ne!(keys.lock("le", &other), keys.lock("le", &domains));
        // Another resolver's prefix does not contain this one's keys.
        assert!(
            !keys
                .certificate("le", &domains)
                .starts_with(&keys.certificates("l"))
        );
    }

    #[test]
    fn options_are_checked_and_named() {
        let option = "certificatesResolvers.le.acme.storageEtcd";
        let ok = config("endpoints: ['127.0.0.1:2379']\nlockTTL: 10s\n");
        assert!(validate(&ok, option).is_ok());
        assert_eq!(ok.root_key, "switchyard/acme");
        let short = config("lockTTL: 1s\n");
        assert!(
            validate(&short, option)
                .unwrap_err()
                .starts_with(&format!("{option}.lockTTL"))
        );
        let root = config("rootKey: /\n");
        assert!(validate(&root, option).unwrap_err().contains("rootKey"));
        let none = config("endpoints: []\n");
        assert!(validate(&none, option).unwrap_err().contains("endpoints"));
        let ca = config("tls:\n  ca: /nonexistent/ca.pem\n");
        assert!(
            validate(&ca, option)
                .unwrap_err()
                .starts_with(&format!("{option}.tls.ca"))
        );
        assert!(serde_yaml::from_str::<AcmeEtcdStorageConfig>("endpoint: x\n").is_err());
    }

    #[test]
    fn values_that_do_not_decode_are_skipped() {
        assert!(decode::<StoredCertificate>("k", b"{not json").is_none());
        let c = StoredCertificate {
            domains: vec!["a.test".into()],
            certificate: "C".into(),
            key: "K".into(),
            not_after_unix: 1,
        };
        let bytes = serde_json::to_vec(&c).unwrap();
        assert_eq!(decode::<StoredCertificate>("k", &bytes), Some(c));
    }
}
