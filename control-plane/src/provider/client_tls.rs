//! TLS to configuration stores (etcd, Consul), Traefik's `tls {ca, cert, key, insecureSkipVerify}`:
//! a rustls client config and an HTTPS-capable connector for hyper and tonic. Without `ca`, the
//! system bundle (`/etc/ssl/certs/ca-certificates.crt`) is trusted.

use std::{path::Path, sync::Arc};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};

use crate::config::ClientTlsConfig;

/// Where Debian keeps the system's trusted CAs.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn read_certs(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("{option}: cannot read {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{option}: {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{option}: {}: no certificate found",
            path.display()
        ));
    }
    Ok(certs)
}

/// Builds the rustls client config for `tls`; errors name the option (`prefix.ca`, …).
pub fn client_config(tls: &ClientTlsConfig, prefix: &str) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{prefix}: {e}"))?;
    let builder = if tls.insecure_skip_verify {
        tracing::warn!(option = %format!("{prefix}.insecureSkipVerify"), "the store's certificate is not verified");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(
                provider.signature_verification_algorithms,
            )))
    } else {
        let mut roots = RootCertStore::empty();
        let (path, option) = match &tls.ca {
            Some(ca) => (ca.as_path(), format!("{prefix}.ca")),
            None => (
                Path::new(SYSTEM_BUNDLE),
                format!("{prefix} (system CA bundle)"),
            ),
        };
        for cert in read_certs(path, &option)? {
            roots
                .add(cert)
                .map_err(|e| format!("{option}: {}: {e}", path.display()))?;
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, &format!("{prefix}.cert"))?;
            let key_bytes = std::fs::read(key)
                .map_err(|e| format!("{prefix}.key: cannot read {}: {e}", key.display()))?;
            let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
                format!(
                    "{prefix}.key: {}: not a PEM private key: {e}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{prefix}.cert/key: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(format!("{prefix}: `cert` and `key` go together")),
    };
    Ok(config)
}

/// A config for connectors that only ever speak plain HTTP (the TLS side is never used).
pub fn plain_only() -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(RootCertStore::empty())
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| {
            // The ring provider always supports the default versions.
            ClientConfig::builder()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth()
        })
}

/// Which HTTP version the connector offers through ALPN (it sets ALPN itself).
#[derive(Clone, Copy, Debug)]
pub enum Alpn {
    Http1,
    /// gRPC (etcd).
    Http2,
}

/// An HTTP(S) connector: `https://` endpoints get TLS with `config`, `http://` stay plain.
pub fn connector(
    config: ClientConfig,
    base: HttpConnector,
    alpn: Alpn,
) -> HttpsConnector<HttpConnector> {
    let mut base = base;
    base.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    match alpn {
        Alpn::Http1 => builder.enable_http1().wrap_connector(base),
        Alpn::Http2 => builder.enable_http2().wrap_connector(base),
    }
}

/// Wraps [`connector`] for tonic: the channel is given an `http://` URI (tonic refuses `https://`
/// unless its own TLS does the handshake) and this puts `https` back before the TLS connector sees
/// it, so the handshake is ours (CA, client certificate, `insecureSkipVerify`).
#[derive(Clone)]
pub struct TlsForGrpc(pub HttpsConnector<HttpConnector>);

impl tower_service::Service<http::Uri> for TlsForGrpc {
    type Response = <HttpsConnector<HttpConnector> as tower_service::Service<http::Uri>>::Response;
    type Error = <HttpsConnector<HttpConnector> as tower_service::Service<http::Uri>>::Error;
    type Future = <HttpsConnector<HttpConnector> as tower_service::Service<http::Uri>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        self.0.call(with_https(uri))
    }
}

/// `uri` with its scheme replaced by `https` (unchanged when it cannot be rebuilt).
fn with_https(uri: http::Uri) -> http::Uri {
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    http::Uri::from_parts(parts).unwrap_or(uri)
}

/// `endpoint` as tonic must be given it when [`TlsForGrpc`] does the TLS: `https://` → `http://`.
pub fn plain_scheme_for_grpc(endpoint: &str) -> String {
    match endpoint.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => endpoint.to_owned(),
    }
}

/// `insecureSkipVerify`: any certificate is accepted; handshake signatures are still checked.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_option() {
        let tls = ClientTlsConfig {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = client_config(&tls, "providers.etcd.tls").unwrap_err();
        assert!(
            err.starts_with("providers.etcd.tls.ca: cannot read"),
            "{err}"
        );
        let tls = ClientTlsConfig {
            cert: Some("/x".into()),
            insecure_skip_verify: true,
            ..Default::default()
        };
        let err = client_config(&tls, "providers.consul.tls").unwrap_err();
        assert!(err.contains("`cert` and `key` go together"), "{err}");
    }

    #[test]
    fn builds_with_a_ca_and_a_client_certificate() {
        let dir = std::env::temp_dir().join(format!("sy-ctls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["store".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let tls = ClientTlsConfig {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join("ca.pem")),
            key: Some(dir.join("key.pem")),
            insecure_skip_verify: false,
        };
        let config = client_config(&tls, "providers.etcd.tls").unwrap();
        assert!(config.alpn_protocols.is_empty(), "the connector sets ALPN");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
