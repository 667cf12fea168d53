//! The controller's built-in CA (`controller.ca`) and one-time join tokens.
//!
//! The CA (`ca.crt`, `ca.key` mode 0600 in `controller.ca.dir`, created on first use) issues the
//! controller's own server certificate and short-lived proxy client certificates. A proxy gets
//! its first certificate by presenting a join token: `switchyard-controller token create` stores
//! the SHA-256 of a random secret in `tokens.json` and prints `syj1-<secret>-<CA fingerprint>`;
//! the proxy verifies the controller by that fingerprint (it has no CA yet), sends the secret and
//! a CSR (its key never leaves it), and the token is consumed. Proxy certificates name the node
//! id (DNS SAN and CN); the controller authorizes a proxy when its `Hello.node_id` equals a DNS
//! name of its certificate (SAN, else CN).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, pem::PemObject};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::{CaConfig, StaticConfig};

/// Default lifetime of proxy certificates.
pub const DEFAULT_PROXY_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Lifetime of the generated controller server certificate (re-issued at every start).
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// Prefix of join tokens (format revision 1).
pub const TOKEN_PREFIX: &str = "syj1";

/// CA and token failures; each names the file or the reason a proxy was refused.
#[derive(Debug, Error)]
pub enum CaError {
    #[error("controller.ca: {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
    #[error("the join token is not valid (unknown, already used or expired)")]
    BadToken,
    #[error("the join token is reserved for node `{expected}`, not `{got}`")]
    TokenNode { expected: String, got: String },
    #[error("the certificate request is not valid: {0}")]
    BadCsr(String),
}

/// Start-up checks of `controller.grpc.tls` and `controller.ca`.
pub fn validate_config(config: &StaticConfig) -> Result<(), String> {
    let grpc = &config.controller.grpc;
    if let Some(tls) = &grpc.tls {
        match (&tls.cert, &tls.key) {
            (Some(_), Some(_)) => {}
            (None, None) if config.controller.ca.is_some() => {}
            (None, None) => {
                return Err(
                    "controller.grpc.tls: `cert` and `key` are required (or set controller.ca to have them issued)"
                        .into(),
                );
            }
            _ => return Err("controller.grpc.tls: set both `cert` and `key`".into()),
        }
        if tls.client_ca.is_none() && config.controller.ca.is_none() {
            return Err(
                "controller.grpc.tls.clientCA is required (the CA of the proxies' certificates), or set controller.ca"
                    .into(),
            );
        }
    }
    if let Some(ca) = &config.controller.ca {
        if ca.dir.as_os_str().is_empty() {
            return Err("controller.ca.dir: required".into());
        }
        if ca
            .proxy_cert_validity
            .is_some_and(|d| d < Duration::from_secs(10))
        {
            return Err("controller.ca.proxyCertValidity: at least 10s".into());
        }
    }
    Ok(())
}

/// A stored token: only the hash of the secret is kept.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct StoredToken {
    sha256: String,
    expires_unix: i64,
    #[serde(default)]
    node_id: Option<String>,
}

/// The loaded CA.
pub struct Ca {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    proxy_validity: Duration,
    /// Serialises token consumption within this process.
    tokens: Mutex<()>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> CaError {
    CaError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Writes `bytes` atomically with mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(|e| file_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| file_err(&tmp, e))?;
    f.sync_all().map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that disagree, small against the lifetime (proxies renew at two
    // thirds of not_before..not_after).
    let slack = Duration::from_secs(300).min(lifetime / 10);
    params.not_before = now - time::Duration::seconds(slack.as_secs() as i64);
    params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
}

impl Ca {
    /// Loads the CA from `config.dir`, creating it on first use.
    pub fn open(config: &CaConfig) -> Result<Self, CaError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e))?;
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if !cert_path.exists() && !key_path.exists() {
            let key = KeyPair::generate().map_err(|e| CaError::Issue(e.to_string()))?;
            let mut params = CertificateParams::new(Vec::<String>::new())
                .map_err(|e| CaError::Issue(e.to_string()))?;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params
                .distinguished_name
                .push(DnType::CommonName, "Switchyard controller CA");
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut params, Duration::from_secs(10 * 365 * 24 * 3600));
            let cert = params
                .self_signed(&key)
                .map_err(|e| CaError::Issue(e.to_string()))?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            std::fs::write(&cert_path, cert.pem()).map_err(|e| file_err(&cert_path, e))?;
            tracing::info!(dir = %dir.display(), "created the controller CA");
        }
        let ca_pem = std::fs::read_to_string(&cert_path).map_err(|e| file_err(&cert_path, e))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| file_err(&key_path, e))?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| file_err(&cert_path, e))?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, key).map_err(|e| file_err(&cert_path, e))?;
        Ok(Self {
            dir,
            issuer,
            ca_pem,
            ca_der,
            proxy_validity: config
                .proxy_cert_validity
                .unwrap_or(DEFAULT_PROXY_CERT_VALIDITY),
            tokens: Mutex::new(()),
        })
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Hex SHA-256 of the CA certificate (DER): what join tokens carry.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.ca_der.as_ref()))
    }

    /// A server certificate for the controller: `(chain PEM [leaf, CA], key PEM)`.
    pub fn server_certificate(&self, names: &[String]) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Issue(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| CaError::Issue(e.to_string()))?;
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|e| CaError::Issue(format!("server name `{name}`: {e}")))?,
                ),
            });
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "switchyard-controller");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, SERVER_CERT_VALIDITY);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Issue(e.to_string()))?;
        Ok((
            format!("{}{}", cert.pem(), self.ca_pem),
            key.serialize_pem(),
        ))
    }

    /// Signs a proxy's CSR for `node_id`: `(chain PEM [leaf, CA], not_after unix)`. Only the
    /// CSR's key is used; names and lifetime are ours.
    pub fn issue_proxy(&self, node_id: &str, csr_der: &[u8]) -> Result<(String, i64), CaError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr_der.to_vec(),
        ))
        .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| CaError::Issue(e.to_string()))?;
        let dns = node_id
            .to_owned()
            .try_into()
            .map_err(|e| CaError::Issue(format!("node id `{node_id}` is not a DNS name: {e}")))?;
        params.subject_alt_names = vec![SanType::DnsName(dns)];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, self.proxy_validity);
        let not_after = params.not_after.unix_timestamp();
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| CaError::Issue(e.to_string()))?;
        Ok((format!("{}{}", cert.pem(), self.ca_pem), not_after))
    }

    fn tokens_path(&self) -> PathBuf {
        self.dir.join("tokens.json")
    }

    fn read_tokens(&self) -> Result<Vec<StoredToken>, CaError> {
        let path = self.tokens_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| file_err(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(file_err(&path, e)),
        }
    }

    fn write_tokens(&self, tokens: &[StoredToken]) -> Result<(), CaError> {
        let path = self.tokens_path();
        let bytes = serde_json::to_vec_pretty(tokens).map_err(|e| file_err(&path, e))?;
        write_private(&path, &bytes)
    }

    /// Creates a one-time token valid for `ttl` (optionally only for `node_id`).
    pub fn create_token(&self, ttl: Duration, node_id: Option<&str>) -> Result<String, CaError> {
        let _guard = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let mut secret = [0u8; 32];
        ring_fill(&mut secret)?;
        let secret = hex::encode(secret);
        let mut tokens = self.read_tokens()?;
        let now = now_unix();
        tokens.retain(|t| t.expires_unix > now);
        tokens.push(StoredToken {
            sha256: hex::encode(Sha256::digest(secret.as_bytes())),
            expires_unix: now + ttl.as_secs() as i64,
            node_id: node_id.map(str::to_owned),
        });
        self.write_tokens(&tokens)?;
        Ok(format!("{TOKEN_PREFIX}-{secret}-{}", self.fingerprint()))
    }

    /// Consumes a token presented by `node_id`; `Ok` once, for an unexpired token.
    pub fn consume_token(&self, token: &str, node_id: &str) -> Result<(), CaError> {
        let secret = parse_token(token)
            .map(|(s, _)| s)
            .ok_or(CaError::BadToken)?;
        let hash = hex::encode(Sha256::digest(secret.as_bytes()));
        let _guard = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let mut tokens = self.read_tokens()?;
        let now = now_unix();
        let Some(i) = tokens
            .iter()
            .position(|t| t.sha256 == hash && t.expires_unix > now)
        else {
            return Err(CaError::BadToken);
        };
        if let Some(expected) = tokens[i].node_id.clone()
            && expected != node_id
        {
            return Err(CaError::TokenNode {
                expected,
                got: node_id.to_owned(),
            });
        }
        tokens.remove(i);
        tokens.retain(|t| t.expires_unix > now);
        self.write_tokens(&tokens)
    }

    /// The default names of the generated server certificate.
    pub fn default_server_names(listen: &std::net::SocketAddr) -> Vec<String> {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
            names.push(listen.ip().to_string());
        }
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let host = host.trim().to_owned();
            if !host.is_empty() && !names.contains(&host) {
                names.push(host);
            }
        }
        names
    }
}

fn ring_fill(buf: &mut [u8]) -> Result<(), CaError> {
    use rustls::crypto::ring::default_provider;
    default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| CaError::Issue("no secure randomness available".into()))
}

/// Splits `syj1-<secret>-<fingerprint>`.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.trim().strip_prefix(TOKEN_PREFIX)?.strip_prefix('-')?;
    let (secret, fingerprint) = rest.split_once('-')?;
    let hex64 = |s: &str| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit());
    (hex64(secret) && hex64(fingerprint)).then_some((secret, fingerprint))
}

/// DNS names a client certificate vouches for: its DNS SANs, else its CN. Errors are for humans.
pub fn certificate_identities(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot parse the client certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push((*d).to_owned());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_owned),
        );
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (Ca, PathBuf) {
        let dir = std::env::temp_dir().join(format!("sy-ca-{}", fastrand::u64(..)));
        let ca = Ca::open(&CaConfig {
            dir: dir.clone(),
            server_names: vec![],
            proxy_cert_validity: None,
        })
        .unwrap();
        (ca, dir)
    }

    #[test]
    fn tokens_are_one_time_and_carry_the_fingerprint() {
        let (ca, dir) = ca();
        let token = ca.create_token(Duration::from_secs(60), None).unwrap();
        let (_, fp) = parse_token(&token).unwrap();
        assert_eq!(fp, ca.fingerprint());
        assert!(
            !std::fs::read_to_string(dir.join("tokens.json"))
                .unwrap()
                .contains(parse_token(&token).unwrap().0)
        );
        ca.consume_token(&token, "p1").unwrap();
        assert!(matches!(
            ca.consume_token(&token, "p1"),
            Err(CaError::BadToken)
        ));
        let reserved = ca
            .create_token(Duration::from_secs(60), Some("p2"))
            .unwrap();
        assert!(matches!(
            ca.consume_token(&reserved, "p3"),
            Err(CaError::TokenNode { .. })
        ));
        // Reopening keeps the same CA.
        let again = Ca::open(&CaConfig {
            dir: dir.clone(),
            server_names: vec![],
            proxy_cert_validity: None,
        })
        .unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn proxy_certificates_name_the_node() {
        let (ca, dir) = ca();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["ignored.example".to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        let (chain, not_after) = ca.issue_proxy("p1", csr.der()).unwrap();
        assert!(not_after > now_unix());
        let leaf = CertificateDer::from_pem_slice(chain.as_bytes()).unwrap();
        assert_eq!(certificate_identities(&leaf).unwrap(), vec!["p1"]);
        assert!(matches!(
            ca.issue_proxy("p1", b"garbage"),
            Err(CaError::BadCsr(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
