//! ACME certificate resolvers, run once for the whole fleet by the controller.
//!
//! Lifecycle: the aggregator computes, with every compile, which certificates the routers want
//! ([`demand::demands`]) and hands them to the manager; the manager restores certificates from
//! storage, orders what is missing or due for renewal (one order at a time), publishes each
//! challenge in the snapshot (HTTP-01 tokens, TLS-ALPN-01 certificates) and tells the CA to
//! validate only once the connected proxies acknowledged a snapshot carrying it. Issued
//! certificates are stored (0600 JSON file, or etcd) and flow into every snapshot through
//! [`merge`].
//! A failed order is retried with exponential backoff and never removes a certificate that is
//! still served. The manager owns no socket the request path depends on: when the CA is down,
//! nothing changes on the proxies.
//!
//! Several controllers share certificates through etcd storage (`storageEtcd`): each order runs
//! under a per-certificate lock held with an etcd lease. A controller that finds the lock taken
//! waits and retries; once it holds the lock it re-reads the certificate and adopts it when
//! another controller already issued it (no second order). A lost lease stops the order. Shared
//! storage is also re-read every [`SHARED_SYNC_INTERVAL`], so certificates another controller
//! issued or renewed reach this controller's snapshots. A storage file belongs to one controller.

pub mod client;
pub mod demand;
pub mod storage;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use switchyard_shared::{
    pb,
    snapshot::{AcmeHttpChallenge, AcmeTlsChallenge, Certificate, Snapshot},
};
use thiserror::Error;
use tokio::sync::watch;

pub use demand::{Demand, demands};

use crate::{
    compile::tls::parse_certificate,
    config::{AcmeConfig, StaticConfig},
    publish::Published,
    server::fleet::Fleet,
};
use client::{ChallengeKind, OrderError};
use storage::{Lock, Store, StoredCertificate};

/// Checked against `renewBefore` at most this often by default.
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// Longest wait between two attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// Bound on one whole order (account, challenges, validation, issuance).
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);

/// Shared storage is re-read this often (certificates issued or renewed elsewhere).
pub const SHARED_SYNC_INTERVAL: Duration = Duration::from_secs(10);

/// A certificate whose lock another controller holds is tried again after this long.
const LOCK_RETRY: Duration = Duration::from_secs(1);

/// How long to wait for the proxies to acknowledge a snapshot carrying a challenge.
const DISTRIBUTION_TIMEOUT: Duration = Duration::from_secs(20);

/// A resolver that cannot be started; names the option.
#[derive(Debug, Error)]
pub enum AcmeError {
    #[error("certificatesResolvers.{resolver}.acme: {message}")]
    Config { resolver: String, message: String },
}

/// Start-up checks of `certificatesResolvers` (called by `StaticConfig::validate`).
pub fn validate_config(config: &StaticConfig) -> Result<(), String> {
    for (name, resolver) in &config.certificates_resolvers {
        let prefix = format!("certificatesResolvers.{name}");
        if resolver.tailscale.is_some() {
            return Err(format!("{prefix}.tailscale: not supported"));
        }
        let Some(acme) = &resolver.acme else {
            return Err(format!("{prefix}: `acme` is required"));
        };
        let prefix = format!("{prefix}.acme");
        if let Some(key) = acme.other.keys().next() {
            return Err(format!("{prefix}.{key}: not supported"));
        }
        if acme.dns_challenge.is_some() {
            return Err(format!(
                "{prefix}.dnsChallenge: not supported (use httpChallenge or tlsChallenge)"
            ));
        }
        match (&acme.http_challenge, &acme.tls_challenge) {
            (None, None) => {
                return Err(format!(
                    "{prefix}: set httpChallenge.entryPoint or tlsChallenge"
                ));
            }
            (Some(http), _) if !config.entry_points.contains_key(&http.entry_point) => {
                return Err(format!(
                    "{prefix}.httpChallenge.entryPoint: entry point `{}` does not exist",
                    http.entry_point
                ));
            }
            _ => {}
        }
        key_algorithm(acme).map_err(|e| format!("{prefix}.keyType: {e}"))?;
        if let Some(etcd) = &acme.storage_etcd {
            if acme.storage.is_some() {
                return Err(format!(
                    "{prefix}: set either storage (a file) or storageEtcd, not both"
                ));
            }
            if name.contains('/') || name.contains(',') {
                return Err(format!(
                    "{prefix}.storageEtcd: the resolver name `{name}` cannot be part of etcd keys (no `/` or `,`)"
                ));
            }
            storage::etcd::validate(etcd, &format!("{prefix}.storageEtcd"))?;
        }
        if !acme.ca_server.starts_with("https://") && !acme.ca_server.starts_with("http://") {
            return Err(format!(
                "{prefix}.caServer: `{}` is not an http(s) URL",
                acme.ca_server
            ));
        }
    }
    Ok(())
}

fn key_algorithm(acme: &AcmeConfig) -> Result<&'static rcgen::SignatureAlgorithm, String> {
    match acme.key_type.as_deref().unwrap_or("EC256") {
        "EC256" => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
        "EC384" => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
        other => Err(format!(
            "`{other}` is not supported (EC256 or EC384; RSA keys are not)"
        )),
    }
}

/// Traefik's renewal window for a certificate lifetime (`certificatesDuration`, hours).
fn renew_before(acme: &AcmeConfig) -> Duration {
    if let Some(d) = acme.renew_before {
        return d;
    }
    let hours = acme.certificates_duration.unwrap_or(2160);
    let h = Duration::from_secs(3600);
    match hours {
        h_ if h_ >= 365 * 24 => h * 24 * 30 * 4,
        h_ if h_ >= 90 * 24 => h * 24 * 30,
        h_ if h_ >= 7 * 24 => h * 24,
        h_ if h_ >= 24 => h * 6,
        _ => Duration::from_secs(20 * 60),
    }
}

/// One resolver, ready to run.
#[derive(Clone)]
struct Resolver {
    name: String,
    directory: String,
    email: Option<String>,
    kind: ChallengeKind,
    http_entry_point: String,
    key_alg: &'static rcgen::SignatureAlgorithm,
    renew_before: Duration,
    check_interval: Duration,
    tls: rustls::ClientConfig,
}

/// What the ACME manager adds to every snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcmeOutput {
    pub certificates: Vec<Certificate>,
    pub http_challenges: Vec<AcmeHttpChallenge>,
    pub tls_challenges: Vec<AcmeTlsChallenge>,
}

/// Adds the resolvers' certificates and challenges to a compiled snapshot (keeping the lists
/// sorted, so the version stays a pure function of the content).
pub fn merge<R>(snapshot: &mut Snapshot<R>, output: &AcmeOutput) {
    if !output.certificates.is_empty() {
        snapshot
            .certificates
            .extend(output.certificates.iter().cloned());
        snapshot
            .certificates
            .sort_by(|a, b| a.names.cmp(&b.names).then(a.cert_pem.cmp(&b.cert_pem)));
        snapshot.certificates.dedup();
    }
    snapshot.http_challenges = output.http_challenges.clone();
    snapshot
        .http_challenges
        .sort_by(|a, b| a.token.cmp(&b.token));
    snapshot.tls_challenges = output.tls_challenges.clone();
    snapshot
        .tls_challenges
        .sort_by(|a, b| a.domain.cmp(&b.domain));
}

/// The controller's side of the manager.
#[derive(Clone)]
pub struct AcmeHandle {
    demands: Arc<watch::Sender<Vec<Demand>>>,
    output: watch::Receiver<Arc<AcmeOutput>>,
    status: Arc<Mutex<Vec<pb::AcmeCertificateStatus>>>,
    resolvers: BTreeSet<String>,
}

impl AcmeHandle {
    /// Resolver names, for [`demands`].
    pub fn resolvers(&self) -> &BTreeSet<String> {
        &self.resolvers
    }

    /// Hands the current demands to the manager (no-op when unchanged).
    pub fn set_demands(&self, demands: Vec<Demand>) {
        self.demands.send_if_modified(|current| {
            if *current == demands {
                return false;
            }
            *current = demands;
            true
        });
    }

    /// The manager's current output; `changed()` fires when certificates or challenges change.
    pub fn output(&self) -> watch::Receiver<Arc<AcmeOutput>> {
        self.output.clone()
    }

    /// Per-certificate status for `GetVersion`.
    pub fn status(&self) -> Vec<pb::AcmeCertificateStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Starts the manager when resolvers are configured.
pub fn start(
    config: &StaticConfig,
    snapshots: watch::Receiver<Arc<Published>>,
    fleet: Arc<Fleet>,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<AcmeHandle>, AcmeError> {
    if config.certificates_resolvers.is_empty() {
        return Ok(None);
    }
    let mut resolvers = BTreeMap::new();
    let mut stores = BTreeMap::new();
    for (name, r) in &config.certificates_resolvers {
        let fail = |message: String| AcmeError::Config {
            resolver: name.clone(),
            message,
        };
        let Some(acme) = &r.acme else { continue };
        let prefix = format!("certificatesResolvers.{name}.acme");
        stores.insert(name.clone(), Store::new(acme, &prefix));
        let system = acme
            .ca_system_cert_pool
            .unwrap_or(acme.ca_certificates.is_empty());
        let tls = client::client_config(&acme.ca_certificates, system, &prefix).map_err(fail)?;
        let (kind, http_entry_point) = match &acme.http_challenge {
            Some(h) => (ChallengeKind::Http01, h.entry_point.clone()),
            None => (ChallengeKind::TlsAlpn01, String::new()),
        };
        resolvers.insert(
            name.clone(),
            Resolver {
                name: name.clone(),
                directory: acme.ca_server.clone(),
                email: acme.email.clone().filter(|e| !e.is_empty()),
                kind,
                http_entry_point,
                key_alg: key_algorithm(acme).map_err(fail)?,
                renew_before: renew_before(acme),
                check_interval: acme
                    .renew_check_interval
                    .unwrap_or(DEFAULT_CHECK_INTERVAL)
                    .max(Duration::from_millis(100)),
                tls,
            },
        );
    }
    let (demands_tx, demands_rx) = watch::channel(Vec::new());
    let (output_tx, output_rx) = watch::channel(Arc::new(AcmeOutput::default()));
    let status = Arc::new(Mutex::new(Vec::new()));
    let names = resolvers.keys().cloned().collect();
    let manager = Manager {
        resolvers,
        stores,
        entries: BTreeMap::new(),
        accounts: BTreeMap::new(),
        demands: demands_rx,
        output: output_tx,
        challenges: AcmeOutput::default(),
        status: status.clone(),
        snapshots,
        fleet,
    };
    tokio::spawn(manager.run(shutdown));
    Ok(Some(AcmeHandle {
        demands: Arc::new(demands_tx),
        output: output_rx,
        status,
        resolvers: names,
    }))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    switchyard_shared::time::now_unix_ms()
}

/// What the manager knows about one certificate.
#[derive(Debug, Default)]
struct Entry {
    stored: Option<StoredCertificate>,
    /// Parsed form of `stored`, as the snapshot carries it.
    served: Option<Certificate>,
    last_error: Option<String>,
    last_attempt_ms: i64,
    /// No attempt before this (unix ms): backoff after failures, spacing after successes.
    not_before_ms: i64,
    failures: u32,
}

struct Manager {
    resolvers: BTreeMap<String, Resolver>,
    /// Each resolver's storage.
    stores: BTreeMap<String, Store>,
    /// Every certificate known (stored or demanded), keyed by demand.
    entries: BTreeMap<Demand, Entry>,
    /// Accounts restored or created, per resolver.
    accounts: BTreeMap<String, instant_acme::Account>,
    demands: watch::Receiver<Vec<Demand>>,
    output: watch::Sender<Arc<AcmeOutput>>,
    /// Challenges currently published.
    challenges: AcmeOutput,
    status: Arc<Mutex<Vec<pb::AcmeCertificateStatus>>>,
    snapshots: watch::Receiver<Arc<Published>>,
    fleet: Arc<Fleet>,
}

impl Manager {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.sync_storage(false).await;
        let shared = self.stores.values().any(Store::shared);
        let sync_every = SHARED_SYNC_INTERVAL.as_millis() as i64;
        let mut next_sync = now_ms() + sync_every;
        self.refresh();
        loop {
            if shared && now_ms() >= next_sync {
                self.sync_storage(true).await;
                next_sync = now_ms() + sync_every;
            }
            let demanded: Vec<Demand> = self.demands.borrow_and_update().clone();
            let now = now_ms();
            let mut next_wake = now + self.max_sleep_ms();
            if shared {
                next_wake = next_wake.min(next_sync);
            }
            let mut due: Option<Demand> = None;
            for d in &demanded {
                let Some(resolver) = self.resolvers.get(&d.resolver) else {
                    continue;
                };
                let entry = self.entries.entry(d.clone()).or_default();
                let at = due_at(entry, resolver);
                if at <= now {
                    due.get_or_insert_with(|| d.clone());
                } else {
                    next_wake = next_wake.min(at);
                }
            }
            self.refresh();
            if let Some(d) = due {
                self.attempt(&d).await;
                self.refresh();
                if *shutdown.borrow() {
                    return;
                }
                continue;
            }
            let sleep = Duration::from_millis((next_wake - now).max(10) as u64);
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = self.demands.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    fn max_sleep_ms(&self) -> i64 {
        self.resolvers
            .values()
            .map(|r| r.check_interval.as_millis() as i64)
            .min()
            .unwrap_or(3_600_000)
    }

    /// Reads storage and serves every stored certificate newer than the one in memory: every
    /// store at start, then (`shared_only`) the shared ones periodically. A store that cannot
    /// be read changes nothing; it is tried again at the next sync (shared) or never (a file,
    /// which starts empty as before).
    async fn sync_storage(&mut self, shared_only: bool) {
        let names: Vec<String> = self
            .stores
            .iter()
            .filter(|(_, s)| !shared_only || s.shared())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some(store) = self.stores.get_mut(&name) else {
                continue;
            };
            let described = store.describe();
            let data = match store.load(&name).await {
                Ok(data) => data,
                Err(e) => {
                    tracing::error!(resolver = %name, error = %e, "cannot read ACME storage; certificates in memory are kept");
                    continue;
                }
            };
            let stored = data.certificates.len();
            let adopted = data
                .certificates
                .into_iter()
                .filter(|c| self.adopt(&name, c.clone()))
                .count();
            if !shared_only {
                tracing::info!(resolver = %name, storage = %described, certificates = stored, "ACME storage loaded");
            } else if adopted > 0 {
                tracing::info!(resolver = %name, storage = %described, certificates = adopted, "certificates issued by another controller adopted");
            }
        }
    }

    /// Serves `stored` when it is newer than what this controller has; `true` when adopted.
    fn adopt(&mut self, resolver: &str, stored: StoredCertificate) -> bool {
        let demand = Demand {
            resolver: resolver.to_owned(),
            domains: stored.domains.clone(),
        };
        let entry = self.entries.entry(demand).or_default();
        if !newer(entry.stored.as_ref(), &stored) {
            return false;
        }
        let source = format!("acme:{resolver}");
        match parse_certificate(&stored.certificate, &stored.key, &source) {
            Ok(served) => {
                entry.served = Some(served);
                entry.stored = Some(stored);
                entry.last_error = None;
                entry.failures = 0;
                true
            }
            Err(e) => {
                tracing::warn!(resolver, domains = ?stored.domains, error = %e, "stored ACME certificate is unusable; it will be ordered again");
                false
            }
        }
    }

    /// Publishes the output (certificates of demanded entries + challenges) and the status.
    fn refresh(&mut self) {
        let demanded: BTreeSet<Demand> = self.demands.borrow().iter().cloned().collect();
        let mut output = AcmeOutput {
            certificates: Vec::new(),
            http_challenges: self.challenges.http_challenges.clone(),
            tls_challenges: self.challenges.tls_challenges.clone(),
        };
        let mut status = Vec::new();
        let now = now_unix();
        for (d, e) in &self.entries {
            if !demanded.contains(d) {
                continue;
            }
            if let Some(c) = &e.served {
                output.certificates.push(c.clone());
            }
            let renew_before = self
                .resolvers
                .get(&d.resolver)
                .map(|r| r.renew_before.as_secs() as i64)
                .unwrap_or_default();
            let not_after = e.served.as_ref().map(|c| c.not_after_unix).unwrap_or(0);
            let state = match (&e.served, &e.last_error) {
                (Some(_), _) if not_after - renew_before > now => "valid",
                (Some(_), _) => "renewing",
                (None, None) => "pending",
                (None, Some(_)) => "failed",
            };
            let next = self
                .resolvers
                .get(&d.resolver)
                .map(|r| due_at(e, r))
                .unwrap_or_default();
            status.push(pb::AcmeCertificateStatus {
                resolver: d.resolver.clone(),
                domains: d.domains.clone(),
                not_after_unix: not_after,
                state: state.to_owned(),
                last_error: e.last_error.clone().unwrap_or_default(),
                last_attempt_unix_ms: e.last_attempt_ms,
                next_attempt_unix_ms: next,
            });
        }
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
        merge_sort(&mut output);
        self.output.send_if_modified(|current| {
            if **current == output {
                return false;
            }
            *current = Arc::new(output);
            true
        });
    }

    /// One due certificate: take its lock (wait if another controller holds it), adopt it if it
    /// was issued meanwhile, else order it; the lock is released whatever happened.
    async fn attempt(&mut self, demand: &Demand) {
        let Some(resolver) = self.resolvers.get(&demand.resolver).cloned() else {
            return;
        };
        let Some(store) = self.stores.get_mut(&resolver.name) else {
            return;
        };
        let started = now_ms();
        let lock = store.lock(&resolver.name, &demand.domains).await;
        let lock = match lock {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                tracing::info!(resolver = %resolver.name, domains = ?demand.domains, "another controller is ordering this certificate; waiting for it");
                let entry = self.entries.entry(demand.clone()).or_default();
                entry.not_before_ms = now_ms() + LOCK_RETRY.as_millis() as i64;
                return;
            }
            Err(e) => {
                let entry = self.entries.entry(demand.clone()).or_default();
                entry.last_attempt_ms = started;
                fail(entry, &resolver, format!("cannot take the order lock: {e}"));
                return;
            }
        };
        self.attempt_locked(&resolver, demand, &lock, started).await;
        lock.release().await;
    }

    async fn attempt_locked(
        &mut self,
        resolver: &Resolver,
        demand: &Demand,
        lock: &Lock,
        started: i64,
    ) {
        let Some(store) = self.stores.get_mut(&resolver.name) else {
            return;
        };
        // Issued by another controller while this one waited for the lock?
        let stored = match store.certificate(&resolver.name, &demand.domains).await {
            Ok(stored) => stored,
            Err(e) => {
                let entry = self.entries.entry(demand.clone()).or_default();
                entry.last_attempt_ms = started;
                fail(entry, resolver, e.to_string());
                return;
            }
        };
        if let Some(stored) = stored
            && fresh(&stored, resolver.renew_before, now_unix())
        {
            tracing::info!(resolver = %resolver.name, domains = ?demand.domains, "the stored certificate is valid (issued by another controller); not ordering");
            self.adopt(&resolver.name, stored);
            let entry = self.entries.entry(demand.clone()).or_default();
            entry.not_before_ms = now_ms() + resolver.check_interval.as_millis() as i64;
            return;
        }
        tracing::info!(resolver = %resolver.name, domains = ?demand.domains, "ordering certificate");
        let order = tokio::time::timeout(ORDER_TIMEOUT, self.order(resolver, demand));
        let result = match lock.lost() {
            None => order.await,
            Some(mut lost) => tokio::select! {
                result = order => result,
                _ = lost.wait_for(|lost| *lost) => Ok(Err(OrderError::Local(
                    "the order lock was lost (its etcd lease could not be renewed); order abandoned".into(),
                ))),
            },
        };
        // Challenges are withdrawn whatever happened.
        self.challenges = AcmeOutput::default();
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(OrderError::Local(format!(
                "the order did not complete within {}s",
                ORDER_TIMEOUT.as_secs()
            ))),
        };
        let entry = self.entries.entry(demand.clone()).or_default();
        entry.last_attempt_ms = started;
        match result {
            Ok(stored) => {
                let source = format!("acme:{}", resolver.name);
                match parse_certificate(&stored.certificate, &stored.key, &source) {
                    Ok(served) => {
                        tracing::info!(resolver = %resolver.name, domains = ?demand.domains, not_after = served.not_after_unix, "certificate obtained");
                        entry.served = Some(served);
                        entry.stored = Some(stored.clone());
                        entry.last_error = None;
                        entry.failures = 0;
                        entry.not_before_ms = now_ms() + resolver.check_interval.as_millis() as i64;
                        self.store_certificate(resolver, &stored, lock).await;
                    }
                    Err(e) => {
                        let message = format!("the CA returned an unusable certificate: {e}");
                        fail(entry, resolver, message);
                    }
                }
            }
            Err(e) => {
                if matches!(e, OrderError::AccountGone { .. }) {
                    self.accounts.remove(&resolver.name);
                    self.put_account(resolver, None).await;
                }
                let entry = self.entries.entry(demand.clone()).or_default();
                fail(entry, resolver, e.to_string());
            }
        }
    }

    async fn order(
        &mut self,
        resolver: &Resolver,
        demand: &Demand,
    ) -> Result<StoredCertificate, OrderError> {
        let account = match self.accounts.get(&resolver.name) {
            Some(a) => a.clone(),
            None => {
                let stored = match self.stores.get_mut(&resolver.name) {
                    Some(store) => store.load(&resolver.name).await.ok(),
                    None => None,
                }
                .and_then(|d| d.account)
                .filter(|a| a.directory == resolver.directory)
                .map(|a| a.credentials);
                let (account, created) = client::account(
                    &resolver.tls,
                    &resolver.directory,
                    resolver.email.as_deref(),
                    stored,
                )
                .await?;
                if let Some(credentials) = created {
                    let account = storage::StoredAccount {
                        directory: resolver.directory.clone(),
                        credentials,
                    };
                    self.put_account(resolver, Some(account)).await;
                }
                self.accounts.insert(resolver.name.clone(), account.clone());
                account
            }
        };
        let issued = client::order(
            &account,
            &resolver.directory,
            &demand.domains,
            resolver.kind,
            resolver.key_alg,
            &mut Publisher {
                manager: self,
                resolver,
            },
        )
        .await?;
        let parsed =
            parse_certificate(&issued.chain_pem, &issued.key_pem, "acme").map_err(|e| {
                OrderError::Local(format!("the CA returned an unusable certificate: {e}"))
            })?;
        Ok(StoredCertificate {
            domains: demand.domains.clone(),
            certificate: issued.chain_pem,
            key: issued.key_pem,
            not_after_unix: parsed.not_after_unix,
        })
    }

    /// Puts a challenge in the snapshot and waits until the connected proxies acknowledged a
    /// version carrying it (bounded: validation is attempted anyway after the deadline).
    async fn publish_challenge(&mut self, resolver: &Resolver, challenge: client::Challenge) {
        match &challenge {
            client::Challenge::Http {
                domain,
                token,
                key_authorization,
            } => self.challenges.http_challenges.push(AcmeHttpChallenge {
                token: token.clone(),
                key_authorization: key_authorization.clone(),
                domain: domain.clone(),
                entry_point: resolver.http_entry_point.clone(),
            }),
            client::Challenge::TlsAlpn { domain, digest } => {
                match client::tls_alpn_certificate(domain, digest) {
                    Ok((cert_pem, key_pem)) => {
                        self.challenges.tls_challenges.push(AcmeTlsChallenge {
                            domain: domain.clone(),
                            cert_pem,
                            key_pem,
                        })
                    }
                    Err(e) => {
                        tracing::error!(%domain, error = %e, "cannot build the TLS-ALPN-01 certificate");
                        return;
                    }
                }
            }
        }
        self.refresh();
        let wanted = self.challenges.clone();
        let deadline = tokio::time::Instant::now() + DISTRIBUTION_TIMEOUT;
        // Whether a version carries the challenges: decoded once per version, not per poll.
        let mut checked: Option<(String, bool)> = None;
        loop {
            let published = self.snapshots.borrow().clone();
            let carried = match &checked {
                Some((version, carried)) if version == published.version() => *carried,
                _ => {
                    let carried = published
                        .decoded()
                        .and_then(|whole| whole.snapshot)
                        .is_some_and(|snapshot| carries(&snapshot, &wanted));
                    checked = Some((published.version().to_owned(), carried));
                    carried
                }
            };
            if carried {
                let version = published.version();
                let proxies = self.fleet.list();
                let waiting: Vec<&str> = proxies
                    .iter()
                    .filter(|p| p.connected && p.acked_version != version)
                    .map(|p| p.node_id.as_str())
                    .collect();
                if waiting.is_empty() {
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(
                        ?waiting,
                        "proxies did not acknowledge the ACME challenge in time; asking the CA anyway"
                    );
                    return;
                }
            } else if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "the ACME challenge was not published in time; asking the CA anyway"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn put_account(&mut self, resolver: &Resolver, account: Option<storage::StoredAccount>) {
        let Some(store) = self.stores.get_mut(&resolver.name) else {
            return;
        };
        if let Err(e) = store.put_account(&resolver.name, account).await {
            tracing::error!(resolver = %resolver.name, error = %e, "cannot update the ACME account in storage");
        }
    }

    /// Stores a new certificate (kept in memory and served whatever the outcome).
    async fn store_certificate(
        &mut self,
        resolver: &Resolver,
        certificate: &StoredCertificate,
        lock: &Lock,
    ) {
        let Some(store) = self.stores.get_mut(&resolver.name) else {
            return;
        };
        match store
            .put_certificate(&resolver.name, certificate, lock)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(resolver = %resolver.name, domains = ?certificate.domains, "the order lock was lost before the certificate was stored; it is served but not stored")
            }
            Err(e) => {
                tracing::error!(resolver = %resolver.name, error = %e, "cannot write ACME storage; the certificate is kept in memory")
            }
        }
    }
}

/// The order flow's view of the manager while an order runs.
struct Publisher<'a> {
    manager: &'a mut Manager,
    resolver: &'a Resolver,
}

impl client::Publish for Publisher<'_> {
    fn publish(
        &mut self,
        challenge: client::Challenge,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.manager.publish_challenge(self.resolver, challenge)
    }
}

fn merge_sort(output: &mut AcmeOutput) {
    output
        .certificates
        .sort_by(|a, b| a.names.cmp(&b.names).then(a.cert_pem.cmp(&b.cert_pem)));
    output.http_challenges.sort_by(|a, b| a.token.cmp(&b.token));
    output
        .tls_challenges
        .sort_by(|a, b| a.domain.cmp(&b.domain));
}

/// Does the snapshot carry every challenge in `wanted`?
fn carries(snapshot: &pb::Snapshot, wanted: &AcmeOutput) -> bool {
    wanted.http_challenges.iter().all(|w| {
        snapshot
            .http_challenges
            .iter()
            .any(|c| c.token == w.token && c.key_authorization == w.key_authorization)
    }) && wanted.tls_challenges.iter().all(|w| {
        snapshot
            .tls_challenges
            .iter()
            .any(|c| c.domain == w.domain && c.cert_pem == w.cert_pem)
    })
}

/// Does a certificate read from storage replace the one in memory? Only a later expiry wins, so
/// re-reading storage never brings back an older certificate.
fn newer(ours: Option<&StoredCertificate>, theirs: &StoredCertificate) -> bool {
    ours.is_none_or(|ours| theirs.not_after_unix > ours.not_after_unix)
}

/// Is a stored certificate valid beyond the renewal window? Checked once the order lock is held:
/// such a certificate was issued by another controller meanwhile, and is adopted, not ordered.
fn fresh(stored: &StoredCertificate, renew_before: Duration, now_unix: i64) -> bool {
    stored.not_after_unix - renew_before.as_secs() as i64 > now_unix
}

/// When the entry is next due (unix ms): now without a certificate, else at `renewBefore`
/// before expiry; never before the backoff/spacing deadline.
fn due_at(entry: &Entry, resolver: &Resolver) -> i64 {
    let wanted = match &entry.served {
        None => 0,
        Some(c) => (c.not_after_unix - resolver.renew_before.as_secs() as i64).saturating_mul(1000),
    };
    wanted.max(entry.not_before_ms)
}

/// Records a failure: the certificate (if any) stays; the next attempt backs off exponentially
/// (from the check interval, at most a minute, doubling up to a day, with jitter).
fn fail(entry: &mut Entry, resolver: &Resolver, message: String) {
    tracing::warn!(resolver = %resolver.name, error = %message, keeps_certificate = entry.served.is_some(), "ACME order failed; will retry");
    entry.failures = entry.failures.saturating_add(1);
    let base = resolver.check_interval.min(Duration::from_secs(60));
    let exp = base
        .saturating_mul(1u32 << entry.failures.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    let half = exp / 2;
    let jitter = Duration::from_millis(fastrand::u64(..=half.as_millis() as u64));
    entry.not_before_ms = now_ms() + (half + jitter).as_millis() as i64;
    entry.last_error = Some(message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticConfig;
    use std::path::Path;

    fn parse(text: &str) -> Result<StaticConfig, String> {
        let c = StaticConfig::parse(Path::new("s.yml"), text).map_err(|e| e.to_string())?;
        validate_config(&c)?;
        Ok(c)
    }

    #[test]
    fn resolver_options_are_checked() {
        let ok = "entryPoints:\n  web:\n    address: ':80'\ncertificatesResolvers:\n  le:\n    acme:\n      email: a@b.test\n      storage: /tmp/x.json\n      httpChallenge:\n        entryPoint: web\n";
        let c = parse(ok).unwrap();
        let acme = c.certificates_resolvers["le"].acme.as_ref().unwrap();
        assert_eq!(renew_before(acme), Duration::from_secs(30 * 24 * 3600));
        let bad_ep = ok.replace("entryPoint: web", "entryPoint: nope");
        assert!(
            parse(&bad_ep)
                .unwrap_err()
                .contains("httpChallenge.entryPoint")
        );
        let none = "certificatesResolvers:\n  le:\n    acme:\n      email: a@b.test\n";
        assert!(parse(none).unwrap_err().contains("tlsChallenge"));
        let dns =
            "certificatesResolvers:\n  le:\n    acme:\n      dnsChallenge:\n        provider: x\n";
        assert!(parse(dns).unwrap_err().contains("dnsChallenge"));
        let rsa = "certificatesResolvers:\n  le:\n    acme:\n      tlsChallenge: {}\n      keyType: RSA4096\n";
        assert!(parse(rsa).unwrap_err().contains("keyType"));
        let unknown = "certificatesResolvers:\n  le:\n    acme:\n      tlsChallenge: {}\n      eab:\n        kid: x\n";
        assert!(parse(unknown).unwrap_err().contains("acme.eab"));
    }

    #[test]
    fn failures_back_off_and_keep_the_certificate() {
        let resolver = Resolver {
            name: "le".into(),
            directory: "https://ca.test/dir".into(),
            email: None,
            kind: ChallengeKind::Http01,
            http_entry_point: "web".into(),
            key_alg: &rcgen::PKCS_ECDSA_P256_SHA256,
            renew_before: Duration::from_secs(30 * 86400),
            check_interval: Duration::from_secs(10),
            tls: client::client_config(&[], false, "x").unwrap(),
        };
        let mut entry = Entry {
            served: Some(Certificate {
                cert_pem: String::new(),
                key_pem: String::new(),
                names: vec!["a.test".into()],
                source: "acme:le".into(),
                not_after_unix: now_unix() + 86400,
            }),
            ..Default::default()
        };
        assert!(
            due_at(&entry, &resolver) <= now_ms(),
            "due inside the renewal window"
        );
        let mut previous = 0;
        for _ in 0..4 {
            fail(&mut entry, &resolver, "down".into());
            let wait = entry.not_before_ms - now_ms();
            assert!(wait >= previous / 2 - 50, "{wait} after {previous}");
            previous = wait;
        }
        assert!(entry.served.is_some());
        assert!(previous >= 35_000, "backoff grows: {previous}");
        assert_eq!(entry.last_error.as_deref(), Some("down"));
    }

    #[test]
    fn storage_options_are_checked_and_named() {
        let base = "certificatesResolvers:\n  le:\n    acme:\n      tlsChallenge: {}\n";
        let etcd = format!(
            "{base}      storageEtcd:\n        endpoints: ['127.0.0.1:2379']\n        rootKey: sy/acme\n"
        );
        let c = parse(&etcd).unwrap();
        let acme = c.certificates_resolvers["le"].acme.as_ref().unwrap();
        let store = Store::new(acme, "certificatesResolvers.le.acme");
        assert!(store.shared());
        assert!(store.describe().contains("sy/acme"), "{}", store.describe());
        let file = parse(base).unwrap();
        let acme = file.certificates_resolvers["le"].acme.as_ref().unwrap();
        assert_eq!(Store::new(acme, "x").describe(), "acme.json");
        let both = format!("{etcd}      storage: /tmp/a.json\n");
        assert!(
            parse(&both)
                .unwrap_err()
                .contains("either storage (a file) or storageEtcd")
        );
        let short = format!("{etcd}        lockTTL: 1s\n");
        assert!(
            parse(&short)
                .unwrap_err()
                .starts_with("certificatesResolvers.le.acme.storageEtcd.lockTTL")
        );
        let typo = format!("{base}      storageEtcd:\n        endpoint: x\n");
        let err = StaticConfig::parse(Path::new("s.yml"), &typo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpoint"), "{err}");
        let slash = etcd.replace("  le:", "  a/b:");
        assert!(parse(&slash).unwrap_err().contains("`a/b`"));
    }

    fn stored(not_after_unix: i64) -> StoredCertificate {
        StoredCertificate {
            domains: vec!["a.test".into()],
            certificate: format!("C{not_after_unix}"),
            key: "K".into(),
            not_after_unix,
        }
    }

    #[test]
    fn storage_never_brings_back_an_older_certificate() {
        assert!(newer(None, &stored(10)));
        assert!(newer(Some(&stored(10)), &stored(20)));
        assert!(!newer(Some(&stored(20)), &stored(10)));
        assert!(!newer(Some(&stored(20)), &stored(20)));
    }

    #[test]
    fn a_certificate_issued_while_waiting_for_the_lock_is_adopted_not_ordered() {
        let renew_before = Duration::from_secs(100);
        let now = 1_000;
        // Issued by the other controller: valid well beyond the renewal window.
        assert!(fresh(&stored(now + 1_000), renew_before, now));
        // Due for renewal (or expired): this controller orders.
        assert!(!fresh(&stored(now + 50), renew_before, now));
        assert!(!fresh(&stored(now - 1), renew_before, now));
        assert!(!fresh(&stored(now + 100), renew_before, now));
    }

    #[test]
    fn merge_keeps_lists_sorted() {
        let mut s: Snapshot = Snapshot::default();
        let out = AcmeOutput {
            http_challenges: vec![
                AcmeHttpChallenge {
                    token: "b".into(),
                    key_authorization: "b.x".into(),
                    domain: "d".into(),
                    entry_point: "web".into(),
                },
                AcmeHttpChallenge {
                    token: "a".into(),
                    key_authorization: "a.x".into(),
                    domain: "d".into(),
                    entry_point: "web".into(),
                },
            ],
            ..Default::default()
        };
        merge(&mut s, &out);
        assert_eq!(s.http_challenges[0].token, "a");
    }
}
