//! Mutual TLS on the controller's gRPC socket, and the proxy-facing side of the join flow.
//!
//! The controller terminates TLS itself (rustls, ring) and hands tonic the established streams,
//! so a refused handshake is logged with the peer and the reason. Client certificates are
//! *optional at the handshake* (a joining proxy has none yet) but every RPC except `Join`
//! requires one, verified against `clientCA` (or the built-in CA); `Subscribe` and
//! `RenewCertificate` also require the node id to equal a DNS name of the certificate (SAN, else
//! CN). Plaintext is allowed only on loopback, or with `controller.grpc.insecure: true` (warned).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::WebPkiSupportedAlgorithms,
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use thiserror::Error;
use tokio::{net::TcpListener, sync::mpsc, sync::watch};
use tokio_rustls::server::TlsStream;
use tonic::{Request, Status};

use crate::{
    ca::{Ca, certificate_identities},
    config::StaticConfig,
};

/// Bound on a TLS handshake with a proxy.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the gRPC socket cannot be secured as configured; names the option or file.
#[derive(Debug, Error)]
pub enum SecurityError {
    #[error("{option}: cannot read {path}: {source}")]
    Read {
        option: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{option}: {message}")]
    Invalid {
        option: &'static str,
        message: String,
    },
    #[error(
        "controller.grpc.address {0} is not a loopback address: configure controller.grpc.tls (or controller.ca) for mutual TLS, or set controller.grpc.insecure: true to allow plaintext"
    )]
    PlaintextNotLoopback(SocketAddr),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
}

/// How the gRPC socket is secured.
pub struct Security {
    /// `None`: plaintext.
    pub server: Option<Arc<ServerConfig>>,
    /// Verifies client chains against `clientCA`. The handshake accepts any certificate whose
    /// key the client proves to hold; the chain is checked here, per RPC, so a refused proxy
    /// gets a gRPC error that says why instead of a closed connection.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The built-in CA, when configured (join tokens, renewals).
    pub ca: Option<Arc<Ca>>,
}

impl Security {
    /// Builds the TLS server config (or checks that plaintext is allowed) for `listen`.
    pub fn from_config(config: &StaticConfig, listen: SocketAddr) -> Result<Self, SecurityError> {
        let ca = match &config.controller.ca {
            Some(c) => Some(Arc::new(Ca::open(c)?)),
            None => None,
        };
        let tls = config.controller.grpc.tls.clone();
        if tls.is_none() && ca.is_none() {
            if !listen.ip().is_loopback() {
                if !config.controller.grpc.insecure {
                    return Err(SecurityError::PlaintextNotLoopback(listen));
                }
                tracing::warn!(%listen, "controller gRPC is PLAINTEXT on a non-loopback address (controller.grpc.insecure): snapshots carry private keys; use mutual TLS outside a trusted network");
            } else {
                tracing::info!(%listen, "controller gRPC is plaintext on loopback");
            }
            return Ok(Self {
                server: None,
                verifier: None,
                ca,
            });
        }
        let tls = tls.unwrap_or_default();
        let (chain_pem, key_pem) = match (&tls.cert, &tls.key, &ca) {
            (Some(cert), Some(key), _) => (
                read(cert, "controller.grpc.tls.cert")?,
                read(key, "controller.grpc.tls.key")?,
            ),
            (_, _, Some(ca)) => {
                let names = match config.controller.ca.as_ref() {
                    Some(c) if !c.server_names.is_empty() => c.server_names.clone(),
                    _ => Ca::default_server_names(&listen),
                };
                ca.server_certificate(&names)?
            }
            _ => {
                return Err(SecurityError::Invalid {
                    option: "controller.grpc.tls",
                    message: "`cert` and `key` are required".into(),
                });
            }
        };
        let client_ca_pem = match (&tls.client_ca, &ca) {
            (Some(path), _) => read(path, "controller.grpc.tls.clientCA")?,
            (None, Some(ca)) => ca.ca_pem().to_owned(),
            (None, None) => {
                return Err(SecurityError::Invalid {
                    option: "controller.grpc.tls.clientCA",
                    message: "required (the CA of the proxies' certificates)".into(),
                });
            }
        };
        let (server, verifier) = server_config(&chain_pem, &key_pem, &client_ca_pem)?;
        tracing::info!(%listen, join = ca.is_some(), "controller gRPC uses mutual TLS");
        Ok(Self {
            server: Some(Arc::new(server)),
            verifier: Some(verifier),
            ca,
        })
    }

    /// Is TLS (and thus client authentication) on?
    pub fn is_tls(&self) -> bool {
        self.server.is_some()
    }

    /// The DNS names of the caller's verified client certificate. `Ok(None)` on plaintext;
    /// `Err(unauthenticated)` when TLS is on and no certificate was presented.
    pub fn client_identities<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<Vec<String>>, Status> {
        if !self.is_tls() {
            return Ok(None);
        }
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let certs = request.peer_certs().filter(|c| !c.is_empty()).ok_or_else(|| {
            tracing::warn!(%peer, "refused a call without a client certificate");
            Status::unauthenticated(
                "the controller requires a client certificate: start the proxy with --tls-cert/--tls-key/--tls-ca, or --join-token",
            )
        })?;
        let (leaf, intermediates) = certs
            .split_first()
            .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
        if let Some(verifier) = &self.verifier
            && let Err(e) = verifier.verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            tracing::warn!(%peer, error = %e, "refused a client certificate");
            return Err(Status::unauthenticated(format!(
                "the client certificate is not trusted by this controller (controller.grpc.tls.clientCA / controller.ca): {e}"
            )));
        }
        certificate_identities(leaf.as_ref())
            .map(Some)
            .map_err(Status::unauthenticated)
    }

    /// Checks that the caller's certificate vouches for `node_id` (no-op on plaintext).
    pub fn authorize_node<T>(&self, request: &Request<T>, node_id: &str) -> Result<(), Status> {
        let Some(names) = self.client_identities(request)? else {
            return Ok(());
        };
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        check_node(&names, node_id, &peer)
    }
}

/// The node id must equal a DNS name (SAN, else CN) of the client certificate.
pub fn check_node(names: &[String], node_id: &str, peer: &str) -> Result<(), Status> {
    if names.iter().any(|n| n.eq_ignore_ascii_case(node_id)) {
        return Ok(());
    }
    tracing::warn!(%peer, node = %node_id, certificate = ?names, "refused a proxy whose certificate does not name its node id");
    Err(Status::permission_denied(format!(
        "node id `{node_id}` is not authorized by the client certificate (it names {names:?}); the node id must equal a DNS name (SAN, else CN) of the certificate"
    )))
}

fn read(path: &Path, option: &'static str) -> Result<String, SecurityError> {
    std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
        option,
        path: path.display().to_string(),
        source,
    })
}

fn server_config(
    chain_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<(ServerConfig, Arc<dyn ClientCertVerifier>), SecurityError> {
    let invalid =
        |option: &'static str| move |e: String| SecurityError::Invalid { option, message: e };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("controller.grpc.tls.cert")(e.to_string()))?;
    if chain.is_empty() {
        return Err(invalid("controller.grpc.tls.cert")(
            "no certificate in PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| invalid("controller.grpc.tls.key")(format!("not a PEM private key: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| invalid("controller.grpc.tls.clientCA")(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| invalid("controller.grpc.tls.clientCA")(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("controller.grpc.tls.clientCA")(
            "no CA certificate in PEM".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ClientCertVerifier> =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| invalid("controller.grpc.tls.clientCA")(e.to_string()))?;
    // Optional at the handshake so a joining proxy can call `Join`; every other RPC checks.
    let handshake = Arc::new(ProofOfPossession {
        hints: verifier.root_hint_subjects().to_vec(),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("controller.grpc.tls")(e.to_string()))?
        .with_client_cert_verifier(handshake)
        .with_single_cert(chain, key)
        .map_err(|e| invalid("controller.grpc.tls.key")(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, verifier))
}

/// The handshake half of client authentication: a certificate is optional, and when given the
/// client must prove it holds its key (handshake signature). Chain trust is checked per RPC
/// ([`Security::client_identities`]).
#[derive(Debug)]
struct ProofOfPossession {
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ProofOfPossession {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop; established
/// streams go to tonic. Refused handshakes are logged with the peer and the reason.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    mut shutdown: watch::Receiver<bool>,
) -> mpsc::Receiver<Result<TlsStream<tokio::net::TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(32);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "refused a gRPC TLS connection")
                    }
                    Err(_) => tracing::warn!(%peer, "gRPC TLS handshake timed out"),
                }
            });
        }
    });
    rx
}
