//! Edge TLS end to end: a controller compiles certificates and TLS options from the file provider,
//! a proxy terminates TLS with them. Real handshakes with a rustls client: SNI selection (exact and
//! wildcard), HTTP/2 via ALPN, entry-point redirection, per-host TLS options (minimum version,
//! client certificates), a bad certificate costing only itself, keys redacted from GetSnapshot.

use crate::support::providers as support;

use std::{net::SocketAddr, sync::Arc};

use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use support::{Controller, DEADLINE, Proxy, TempDir, backend, eventually, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchyard test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// `(cert PEM, key PEM)` for these names, signed by the CA.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client(
    roots: RootCertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// One HTTPS/1.1 GET with SNI `host`: `(negotiated ALPN, status line + body)`.
async fn https_get(
    addr: SocketAddr,
    host: &str,
    config: ClientConfig,
    alpn_h1_only: bool,
) -> Result<(Option<Vec<u8>>, String), String> {
    let mut config = config;
    if alpn_h1_only {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    if alpn.as_deref() == Some(b"h2") {
        return Ok((alpn, String::new()));
    }
    let request = format!("GET /hello HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tls.read_to_end(&mut response),
    )
    .await
    .map_err(|_| "read timed out".to_owned())?;
    // Peers may close without close_notify after `Connection: close`.
    if let Err(e) = read
        && response.is_empty()
    {
        return Err(format!("read: {e}"));
    }
    Ok((alpn, String::from_utf8_lossy(&response).into_owned()))
}

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect::<String>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_tls_end_to_end() {
    let pki = Pki::new();
    let dir = TempDir::new("tls");
    let dynamic = dir.path().join("dynamic");
    std::fs::create_dir_all(&dynamic).unwrap();
    let (a_cert, a_key) = pki.leaf(&["a.test", "*.wild.test", "old.test", "m.test"]);
    std::fs::write(dir.path().join("a.crt"), &a_cert).unwrap();
    std::fs::write(dir.path().join("a.key"), &a_key).unwrap();
    let (_, wrong_key) = pki.leaf(&["bad.test"]);
    let (bad_cert, _) = pki.leaf(&["bad.test"]);
    let (client_cert, client_key) = pki.leaf(&["client"]);
    let secure = backend("secure").await;

    let web = free_port().await;
    let websecure = free_port().await;
    let static_yaml = format!(
        "entryPoints:\n  web:\n    address: ':80'\n    http:\n      redirections:\n        entryPoint:\n          to: websecure\n  websecure:\n    address: ':{}'\nproviders:\n  providersThrottleDuration: 10ms\n  file:\n    directory: {}\n",
        websecure.port(),
        dynamic.display()
    );
    let dynamic_yaml = format!(
        r#"http:
  routers:
    secure:
      rule: Host(`a.test`) || Host(`x.wild.test`)
      entryPoints: [websecure]
      service: s
      tls: {{}}
    modern:
      rule: Host(`old.test`)
      entryPoints: [websecure]
      service: s
      tls:
        options: modern
    mutual:
      rule: Host(`m.test`)
      entryPoints: [websecure]
      service: s
      tls:
        options: mutual
  services:
    s:
      loadBalancer:
        servers:
          - url: http://{secure}
tls:
  certificates:
    - certFile: {cert_path}
      keyFile: {key_path}
    - certFile: |
{bad_cert}      keyFile: |
{wrong_key}  options:
    modern:
      minVersion: VersionTLS13
    mutual:
      clientAuth:
        clientAuthType: RequireAndVerifyClientCert
        caFiles:
          - |
{ca}"#,
        cert_path = dir.path().join("a.crt").display(),
        key_path = dir.path().join("a.key").display(),
        bad_cert = indent(&bad_cert, 8),
        wrong_key = indent(&wrong_key, 8),
        ca = indent(&pki.ca_pem, 12),
    );
    std::fs::write(dynamic.join("tls.yml"), dynamic_yaml).unwrap();

    let controller = Controller::start_static(&static_yaml).await;
    let proxy = Proxy::start_with(
        &controller.url,
        web,
        &[("web", web), ("websecure", websecure)],
    )
    .await;

    // The routers come up over TLS, with the certificate the CA signed for a.test.
    let roots = pki.roots();
    let tls13_and_12: [&'static rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    let (_, response) = eventually("TLS router served", DEADLINE, || {
        let config = client(roots.clone(), &tls13_and_12);
        async move {
            let r = https_get(websecure, "a.test", config, true).await?;
            if r.1.contains("200 OK") {
                Ok(r)
            } else {
                Err(r.1)
            }
        }
    })
    .await;
    assert!(response.ends_with("secure"), "{response}");

    // Wildcard certificate name, and HTTP/2 negotiated through ALPN.
    let (alpn, _) = https_get(
        websecure,
        "x.wild.test",
        client(roots.clone(), &tls13_and_12),
        false,
    )
    .await
    .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

    // A name no certificate covers gets the generated default certificate, which our CA did not
    // sign: verification fails.
    let err = https_get(
        websecure,
        "nobody.test",
        client(roots.clone(), &tls13_and_12),
        true,
    )
    .await
    .unwrap_err();
    assert!(err.contains("handshake"), "{err}");

    // Per-host options: old.test requires TLS 1.3; a TLS 1.2-only client is refused there but
    // not on a.test (default options).
    let tls12: [&'static rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
    assert!(
        https_get(websecure, "old.test", client(roots.clone(), &tls12), true)
            .await
            .is_err()
    );
    let (_, ok12) = https_get(websecure, "a.test", client(roots.clone(), &tls12), true)
        .await
        .unwrap();
    assert!(ok12.contains("200 OK"), "{ok12}");

    // Client certificates: m.test needs one signed by the CA.
    let without = https_get(
        websecure,
        "m.test",
        client(roots.clone(), &tls13_and_12),
        true,
    )
    .await;
    assert!(
        without.is_err() || !without.as_ref().unwrap().1.contains("200 OK"),
        "{without:?}"
    );
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(client_cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(client_key.as_bytes()).unwrap();
    let mut with_cert = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&tls13_and_12)
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain, key)
        .unwrap();
    with_cert.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (_, mutual) = https_get(websecure, "m.test", with_cert, true)
        .await
        .unwrap();
    assert!(mutual.contains("200 OK"), "{mutual}");

    // Plain HTTP on `web` is redirected to the websecure port.
    let (status, _) = proxy.get("a.test", "/p?q=1").await.unwrap();
    assert_eq!(status, 301);

    // The certificate whose key does not match is reported and left out; the rest serves.
    let version = controller.version().await.unwrap();
    assert!(
        version
            .diagnostics
            .iter()
            .any(|d| d.object.starts_with("certificate/") && d.message.contains("does not match")),
        "{:?}",
        version.diagnostics
    );
    // Private keys never leave the controller through GetSnapshot.
    let snapshot = controller.snapshot().await.unwrap().snapshot.unwrap();
    assert_eq!(snapshot.certificates.len(), 1);
    assert!(
        snapshot
            .certificates
            .iter()
            .all(|c| c.key_pem == "(redacted)")
    );
}
