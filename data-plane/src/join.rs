//! The proxy's side of the controller channel: plaintext (loopback, or `--insecure`), mutual TLS
//! with operator-provided files (`--tls-cert/--tls-key/--tls-ca`), or mutual TLS with a
//! certificate obtained by joining (`--join-token`).
//!
//! Join lifecycle: no identity in `<state-dir>/identity/` → connect over TLS verifying the
//! controller by the CA fingerprint carried in the token (nothing else is trusted yet) → `Join`
//! with the token and a CSR (the key is generated here and never sent) → store `proxy.crt`,
//! `proxy.key` (0600) and `ca.crt` → from then on, mutual TLS trusting that CA. A background
//! task renews the certificate over the authenticated channel once two thirds of its lifetime
//! have passed; new connections pick the renewed files up.

use std::{
    future::Future,
    net::IpAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use sha2::{Digest, Sha256};
use switchyard_shared::{
    chunk,
    pb::{self, control_plane_client::ControlPlaneClient},
};
use thiserror::Error;
use tokio::{net::TcpStream, sync::watch};
use tonic::transport::{Channel, Endpoint, Uri};

/// Setup errors; each names the flag or file.
#[derive(Debug, Error)]
pub enum ChannelError {
    #[error("{0}")]
    Flags(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// How the proxy reaches its controllers.
#[derive(Clone, Debug, Default)]
pub enum ChannelSecurity {
    #[default]
    Plaintext,
    /// Operator-provided certificate, key and CA.
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
    /// Certificate issued by the controller's CA; kept (and renewed) in `dir`.
    Joined { dir: PathBuf, token: Option<String> },
}

/// Command-line TLS settings of the proxy.
#[derive(Clone, Debug, Default)]
pub struct ChannelFlags {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub join_token: Option<String>,
    pub insecure: bool,
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl ChannelSecurity {
    /// Checks the flags against the controller URLs (plaintext only on loopback unless
    /// `--insecure`) and picks the mode.
    pub fn from_flags(
        flags: &ChannelFlags,
        controllers: &[String],
        state_dir: &Path,
    ) -> Result<Self, ChannelError> {
        let mode = match (
            &flags.tls_cert,
            &flags.tls_key,
            &flags.tls_ca,
            &flags.join_token,
        ) {
            (None, None, None, None) => Self::Plaintext,
            (Some(cert), Some(key), Some(ca), None) => Self::Files {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            },
            (None, None, None, Some(token)) => {
                if switchyard_shared_token::parse(token).is_none() {
                    return Err(ChannelError::Flags(
                        "--join-token: not a Switchyard join token (expected syj1-<secret>-<fingerprint>, from `switchyard-controller token create`)".into(),
                    ));
                }
                Self::Joined {
                    dir: state_dir.join("identity"),
                    token: Some(token.clone()),
                }
            }
            (_, _, _, Some(_)) => {
                return Err(ChannelError::Flags(
                    "--join-token cannot be combined with --tls-cert/--tls-key/--tls-ca".into(),
                ));
            }
            _ => {
                return Err(ChannelError::Flags(
                    "--tls-cert, --tls-key and --tls-ca go together".into(),
                ));
            }
        };
        // A proxy that joined earlier keeps using its identity without the flag.
        let mode = match mode {
            Self::Plaintext if state_dir.join("identity").join("proxy.crt").exists() => {
                Self::Joined {
                    dir: state_dir.join("identity"),
                    token: None,
                }
            }
            other => other,
        };
        for url in controllers {
            let uri: Uri = url
                .parse()
                .map_err(|e| ChannelError::Flags(format!("--controller {url}: {e}")))?;
            let host = uri.host().unwrap_or_default();
            match (uri.scheme_str(), &mode) {
                (Some("https"), Self::Plaintext) => {
                    return Err(ChannelError::Flags(format!(
                        "--controller {url}: https needs --tls-cert/--tls-key/--tls-ca or --join-token"
                    )));
                }
                (Some("https"), _) => {}
                (Some("http"), Self::Plaintext) if is_loopback_host(host) => {}
                (Some("http"), Self::Plaintext) if flags.insecure => {
                    tracing::warn!(controller = %url, "PLAINTEXT connection to a non-loopback controller (--insecure): snapshots carry private keys");
                }
                (Some("http"), Self::Plaintext) => {
                    return Err(ChannelError::Flags(format!(
                        "--controller {url} is plaintext and not on loopback: use https:// with --tls-cert/--tls-key/--tls-ca or --join-token, or pass --insecure"
                    )));
                }
                (Some("http"), _) => {
                    return Err(ChannelError::Flags(format!(
                        "--controller {url}: TLS is configured; use https://"
                    )));
                }
                _ => {
                    return Err(ChannelError::Flags(format!(
                        "--controller {url}: expected http:// or https://"
                    )));
                }
            }
        }
        Ok(mode)
    }

    /// Connects to `url`, joining first when needed.
    pub async fn connect(&self, url: &str, node_id: &str) -> Result<Channel, String> {
        match self {
            Self::Plaintext => endpoint(url)?
                .connect()
                .await
                .map_err(|e| format!("cannot connect: {}", error_chain(&e))),
            Self::Files { cert, key, ca } => {
                let config = mtls_config(cert, key, ca).map_err(|e| e.to_string())?;
                connect_tls(url, config).await
            }
            Self::Joined { dir, token } => {
                if !dir.join("proxy.crt").exists() {
                    let token = token.as_deref().ok_or_else(|| {
                        format!("no identity in {} and no --join-token", dir.display())
                    })?;
                    join(url, token, node_id, dir).await?;
                }
                let config = mtls_config(
                    &dir.join("proxy.crt"),
                    &dir.join("proxy.key"),
                    &dir.join("ca.crt"),
                )
                .map_err(|e| e.to_string())?;
                connect_tls(url, config).await
            }
        }
    }

    /// Renews a joined proxy's certificate at two thirds of its lifetime, until shutdown.
    pub async fn renew_loop(
        self: Arc<Self>,
        controllers: Vec<String>,
        node_id: String,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Self::Joined { dir, .. } = &*self else {
            return;
        };
        let mut failures = 0u32;
        loop {
            let wait = match renewal_due_in(&dir.join("proxy.crt")) {
                Some(d) if d.is_zero() => {
                    let mut renewed = false;
                    for url in &controllers {
                        match renew(self.as_ref(), url, &node_id, dir).await {
                            Ok(not_after) => {
                                tracing::info!(controller = %url, not_after, "proxy certificate renewed");
                                renewed = true;
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(controller = %url, error = %e, "cannot renew the proxy certificate")
                            }
                        }
                    }
                    if renewed {
                        failures = 0;
                        Duration::from_secs(1)
                    } else {
                        failures = failures.saturating_add(1);
                        Duration::from_secs(2u64.saturating_pow(failures.min(8)))
                    }
                }
                Some(d) => d.min(Duration::from_secs(600)),
                // Not joined yet: look again soon.
                None => Duration::from_secs(5),
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Token parsing shared with the controller's format (`syj1-<secret>-<fingerprint>`).
mod switchyard_shared_token {
    pub fn parse(token: &str) -> Option<(&str, &str)> {
        let rest = token.trim().strip_prefix("syj1-")?;
        let (secret, fingerprint) = rest.split_once('-')?;
        let hex64 = |s: &str| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit());
        (hex64(secret) && hex64(fingerprint)).then_some((secret, fingerprint))
    }
}

/// How long until the certificate at `path` is due for renewal (two thirds of its lifetime);
/// `None` when there is none or it does not parse.
fn renewal_due_in(path: &Path) -> Option<Duration> {
    let pem = std::fs::read(path).ok()?;
    let der = CertificateDer::from_pem_slice(&pem).ok()?;
    let (_, cert) = x509_validity(&der)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    let due = cert.0 + (cert.1 - cert.0) * 2 / 3;
    Some(Duration::from_secs(due.saturating_sub(now).max(0) as u64))
}

/// `(not_before, not_after)` of a DER certificate, read with a minimal DER walk so the proxy
/// needs no X.509 parser: TBSCertificate → validity is the 5th (4th without version) element.
fn x509_validity(der: &[u8]) -> Option<((), (i64, i64))> {
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }
    fn time(tag: u8, v: &[u8]) -> Option<i64> {
        let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
        let (year, rest) = match tag {
            0x17 => {
                let y: i64 = s.get(0..2)?.parse().ok()?;
                (if y >= 50 { 1900 + y } else { 2000 + y }, s.get(2..)?)
            }
            0x18 => (s.get(0..4)?.parse().ok()?, s.get(4..)?),
            _ => return None,
        };
        let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
        let (month, day, hour, min, sec) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
        // Days from civil (Howard Hinnant's algorithm).
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(days * 86_400 + hour * 3600 + min * 60 + sec)
    }
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    rest = r;
    if tag == 0xa0 {
        // version; then serial
        let (_, _, r) = tlv(rest)?;
        rest = r;
    }
    // signature algorithm, issuer
    let (_, _, r) = tlv(rest)?;
    let (_, _, r) = tlv(r)?;
    let (_, validity, _) = tlv(r)?;
    let (t1, v1, r) = tlv(validity)?;
    let (t2, v2, _) = tlv(r)?;
    Some(((), (time(t1, v1)?, time(t2, v2)?)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A gRPC status with everything it knows (tonic's message alone often says "transport error").
pub fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        let chain = error_chain(source);
        if !text.contains(&chain) {
            text.push_str(": ");
            text.push_str(&chain);
        }
    }
    text
}

fn endpoint(url: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("invalid controller URL {url}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(chunk::RECEIVE_WINDOW_BYTES)
        .initial_connection_window_size(chunk::RECEIVE_WINDOW_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, ChannelError> {
    std::fs::read(path).map_err(|e| ChannelError::File {
        path: path.to_owned(),
        message: format!("cannot read: {e}"),
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ChannelError> {
    let bytes = read_file(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| ChannelError::File {
            path: path.to_owned(),
            message: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(ChannelError::File {
            path: path.to_owned(),
            message: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// Client config presenting `cert`/`key` and trusting `ca` for the controller.
pub fn mtls_config(cert: &Path, key: &Path, ca: &Path) -> Result<ClientConfig, ChannelError> {
    let chain = certs(cert)?;
    let key_bytes = read_file(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| ChannelError::File {
        path: key.to_owned(),
        message: format!("not a PEM private key: {e}"),
    })?;
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).map_err(|e| ChannelError::File {
            path: ca.to_owned(),
            message: e.to_string(),
        })?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ChannelError::Flags(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| ChannelError::File {
            path: key.to_owned(),
            message: format!("does not match the certificate: {e}"),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Verifies the controller by the CA fingerprint of a join token: the presented chain must
/// contain that CA, and the leaf must chain to it and name the host.
#[derive(Debug)]
struct FingerprintVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| hex::encode(Sha256::digest(c.as_ref())) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the controller's certificate chain does not contain the CA of the join token (sha256 {})",
                    self.fingerprint
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TCP + TLS to one controller; tonic speaks HTTP/2 over it.
#[derive(Clone)]
struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    authority: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.authority).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(this.config)
                .connect(this.server_name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with the controller: {e}"))?;
            Ok(TokioIo::new(tls))
        })
    }
}

async fn connect_tls(url: &str, config: ClientConfig) -> Result<Channel, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid controller URL {url}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("controller URL {url} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let server_name =
        ServerName::try_from(host.clone()).map_err(|e| format!("controller URL {url}: {e}"))?;
    let authority = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let connector = TlsConnector {
        config: Arc::new(config),
        server_name,
        authority: authority.clone(),
    };
    // TLS is done by the connector; tonic sees a plain URI (it refuses https without its own).
    endpoint(&format!("http://{authority}"))?
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("cannot connect to {url}: {}", error_chain(&e)))
}

/// A fresh key and CSR: `(key PEM, CSR DER)`.
fn key_and_csr(node_id: &str) -> Result<(String, Vec<u8>), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![node_id.to_owned()]).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node_id);
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn store_identity(dir: &Path, response: &pb::JoinResponse, key_pem: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Key first: a certificate without its key would be unusable.
    write_private(&dir.join("proxy.key.new"), key_pem.as_bytes())?;
    write_private(&dir.join("ca.crt"), response.ca_pem.as_bytes())?;
    std::fs::rename(dir.join("proxy.key.new"), dir.join("proxy.key"))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    write_private(&dir.join("proxy.crt"), response.cert_pem.as_bytes())
}

/// Exchanges the join token for a certificate and stores the identity in `dir`.
async fn join(url: &str, token: &str, node_id: &str, dir: &Path) -> Result<(), String> {
    let (secret_ok, fingerprint) = switchyard_shared_token::parse(token)
        .map(|(_, f)| (true, f.to_ascii_lowercase()))
        .ok_or_else(|| "--join-token: not a Switchyard join token".to_owned())?;
    debug_assert!(secret_ok);
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
            fingerprint,
            provider,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let channel = connect_tls(url, config).await?;
    let (key_pem, csr_der) = key_and_csr(node_id)?;
    let response = ControlPlaneClient::new(channel)
        .join(pb::JoinRequest {
            token: token.trim().to_owned(),
            node_id: node_id.to_owned(),
            csr_der,
        })
        .await
        .map_err(|s| format!("join refused by {url}: {}", status_text(&s)))?
        .into_inner();
    store_identity(dir, &response, &key_pem)?;
    tracing::info!(controller = %url, not_after = response.not_after_unix, "joined; certificate stored in {}", dir.display());
    Ok(())
}

/// Renews over mutual TLS with the current certificate; returns the new expiry.
async fn renew(
    security: &ChannelSecurity,
    url: &str,
    node_id: &str,
    dir: &Path,
) -> Result<i64, String> {
    let channel = security.connect(url, node_id).await?;
    let (key_pem, csr_der) = key_and_csr(node_id)?;
    let response = ControlPlaneClient::new(channel)
        .renew_certificate(pb::RenewCertificateRequest {
            node_id: node_id.to_owned(),
            csr_der,
        })
        .await
        .map_err(|s| format!("renewal refused by {url}: {}", status_text(&s)))?
        .into_inner();
    store_identity(dir, &response, &key_pem)?;
    Ok(response.not_after_unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback_unless_insecure() {
        let dir = std::env::temp_dir().join(format!("sy-join-{}", fastrand::u64(..)));
        let flags = ChannelFlags::default();
        assert!(
            ChannelSecurity::from_flags(&flags, &["http://127.0.0.1:7070".into()], &dir).is_ok()
        );
        let err = ChannelSecurity::from_flags(&flags, &["http://10.0.0.1:7070".into()], &dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--insecure"), "{err}");
        let insecure = ChannelFlags {
            insecure: true,
            ..Default::default()
        };
        assert!(
            ChannelSecurity::from_flags(&insecure, &["http://10.0.0.1:7070".into()], &dir).is_ok()
        );
        let err = ChannelSecurity::from_flags(&flags, &["https://10.0.0.1:7070".into()], &dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--join-token"), "{err}");
        let bad_token = ChannelFlags {
            join_token: Some("nope".into()),
            ..Default::default()
        };
        assert!(ChannelSecurity::from_flags(&bad_token, &[], &dir).is_err());
    }

    #[test]
    fn validity_is_read_from_der() {
        let mut params = rcgen::CertificateParams::new(vec!["p1".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = rcgen::date_time_ymd(2060, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (_, (nb, na)) = x509_validity(cert.der()).unwrap();
        assert_eq!(nb, 1_893_542_400);
        assert_eq!(na, 2_845_584_000);
    }
}
