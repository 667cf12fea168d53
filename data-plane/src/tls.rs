//! Edge TLS from the snapshot: one rustls `ServerConfig` per TLS options set, sharing a
//! certificate store that picks a certificate by SNI (exact names, then `*.` wildcards, then the
//! default certificate — the snapshot's, or a self-signed one generated once per process, as
//! Traefik does). TLS options are chosen per connection from the SNI, using the `Host` names of
//! the TLS routers that reference non-default options (Traefik's `resolveHTTPTLSOptions`).

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    server::{
        ClientHello, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use switchyard_shared::{
    rule::{Expr, Matcher},
    snapshot::{Certificate, Router, Snapshot, TlsOptions},
    tls::{DEFAULT_OPTIONS, name_matches},
};

/// The certificate store shared by every TLS options set.
#[derive(Debug)]
struct Store {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl Store {
    fn lookup(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.exact.get(&sni) {
            return Some(c.clone());
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

#[derive(Debug)]
struct Resolver {
    store: Arc<Store>,
    sni_strict: bool,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = hello.server_name().and_then(|sni| self.store.lookup(sni));
        match found {
            Some(c) => Some(c),
            // sniStrict: no default certificate for unknown or missing names.
            None if self.sni_strict => None,
            None => Some(self.store.default.clone()),
        }
    }
}

/// Everything a TLS listener needs, rebuilt per snapshot.
#[derive(Debug)]
pub struct TlsState {
    configs: HashMap<String, Arc<ServerConfig>>,
    /// Per entry point: host pattern → options name (only non-default options).
    sni_options: HashMap<String, Vec<(String, String)>>,
    /// ACME TLS-ALPN-01: domain → a config serving only that challenge certificate.
    challenges: HashMap<String, Arc<ServerConfig>>,
}

impl TlsState {
    /// Are ACME TLS-ALPN-01 challenges pending (so every entry point must sniff for TLS)?
    pub fn has_challenges(&self) -> bool {
        !self.challenges.is_empty()
    }

    /// The TLS-ALPN-01 config for `sni`, when the ClientHello offered `acme-tls/1`.
    pub fn challenge_config(&self, sni: Option<&str>) -> Option<Arc<ServerConfig>> {
        let sni = sni?.trim_end_matches('.').to_ascii_lowercase();
        self.challenges.get(&sni).cloned()
    }

    /// The server config for a connection on `entry_point` announcing `sni`.
    pub fn config_for(&self, entry_point: &str, sni: Option<&str>) -> Option<Arc<ServerConfig>> {
        let name = sni
            .map(|s| s.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|sni| {
                self.sni_options.get(entry_point).and_then(|list| {
                    list.iter()
                        .find(|(pattern, _)| name_matches(pattern, &sni))
                        .map(|(_, options)| options.clone())
                })
            })
            .unwrap_or_else(|| DEFAULT_OPTIONS.to_owned());
        self.configs
            .get(&name)
            .or_else(|| self.configs.get(DEFAULT_OPTIONS))
            .cloned()
    }

    /// Builds the TLS state of a snapshot; `Err` names the certificate or options.
    pub fn build(snapshot: &Snapshot) -> Result<Self, String> {
        let default = match &snapshot.default_certificate {
            Some(c) => certified_key(c)?,
            None => self_signed()?,
        };
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in &snapshot.certificates {
            let key = certified_key(c)?;
            for name in &c.names {
                match name.strip_prefix("*.") {
                    Some(suffix) => {
                        wildcard
                            .entry(suffix.to_owned())
                            .or_insert_with(|| key.clone());
                    }
                    None => {
                        exact.entry(name.clone()).or_insert_with(|| key.clone());
                    }
                }
            }
        }
        let store = Arc::new(Store {
            exact,
            wildcard,
            default,
        });
        let mut configs = HashMap::new();
        for options in &snapshot.tls_options {
            let config = server_config(options, store.clone())
                .map_err(|e| format!("TLS options {}: {e}", options.name))?;
            configs.insert(options.name.clone(), Arc::new(config));
        }
        if !configs.contains_key(DEFAULT_OPTIONS) {
            let config = server_config(
                &TlsOptions {
                    name: DEFAULT_OPTIONS.to_owned(),
                    ..Default::default()
                },
                store,
            )?;
            configs.insert(DEFAULT_OPTIONS.to_owned(), Arc::new(config));
        }
        let mut challenges = HashMap::new();
        for c in &snapshot.tls_challenges {
            let key = certified_key(&Certificate {
                cert_pem: c.cert_pem.clone(),
                key_pem: c.key_pem.clone(),
                names: vec![c.domain.clone()],
                source: format!("acme tls-alpn-01 challenge for {}", c.domain),
                not_after_unix: 0,
            })?;
            challenges.insert(
                c.domain.to_ascii_lowercase(),
                Arc::new(challenge_config(key)?),
            );
        }
        Ok(Self {
            configs,
            sni_options: sni_options(&snapshot.routers),
            challenges,
        })
    }
}

/// Host patterns of TLS routers with non-default options, per entry point. A host claimed by two
/// different options falls back to `default` (Traefik logs a conflict and does the same).
fn sni_options(routers: &[Router]) -> HashMap<String, Vec<(String, String)>> {
    let mut claims: HashMap<(String, String), Option<String>> = HashMap::new();
    for r in routers {
        let Some(tls) = &r.tls else { continue };
        let mut hosts = Vec::new();
        collect_hosts(&r.rule, &mut hosts);
        for ep in &r.entry_points {
            for h in &hosts {
                let entry = claims
                    .entry((ep.clone(), h.clone()))
                    .or_insert_with(|| Some(tls.options.clone()));
                if entry.as_deref() != Some(tls.options.as_str()) {
                    tracing::warn!(host = %h, entry_point = %ep, "conflicting TLS options for one host; using default");
                    *entry = None;
                }
            }
        }
    }
    let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for ((ep, host), options) in claims {
        if let Some(options) = options.filter(|o| o != DEFAULT_OPTIONS) {
            out.entry(ep).or_default().push((host, options));
        }
    }
    for list in out.values_mut() {
        // Exact names before wildcards, then by name, for a deterministic first match.
        list.sort_by(|a, b| {
            a.0.starts_with("*.")
                .cmp(&b.0.starts_with("*."))
                .then(a.0.cmp(&b.0))
        });
    }
    out
}

fn collect_hosts(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Matcher(Matcher::Host(h)) if h != "*" => out.push(h.clone()),
        Expr::All(items) | Expr::Any(items) => items.iter().for_each(|i| collect_hosts(i, out)),
        _ => {}
    }
}

fn certified_key(c: &Certificate) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate {}: {e}", c.source))?;
    if chain.is_empty() {
        return Err(format!("certificate {}: no certificate in PEM", c.source));
    }
    let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
        .map_err(|e| format!("certificate {}: private key: {e}", c.source))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("certificate {}: private key: {e}", c.source))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The generated default certificate, made once per process (CN as Traefik's).
fn self_signed() -> Result<Arc<CertifiedKey>, String> {
    static CERT: OnceLock<Result<Arc<CertifiedKey>, String>> = OnceLock::new();
    CERT.get_or_init(|| {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "SWITCHYARD DEFAULT CERT");
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        certified_key(&Certificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            names: Vec::new(),
            source: "generated default".into(),
            not_after_unix: 0,
        })
    })
    .clone()
}

/// RFC 8737: only `acme-tls/1` is negotiated, with the challenge certificate whatever the SNI.
fn challenge_config(key: Arc<CertifiedKey>) -> Result<ServerConfig, String> {
    #[derive(Debug)]
    struct One(Arc<CertifiedKey>);
    impl ResolvesServerCert for One {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(One(key)));
    config.alpn_protocols = vec![crate::acme_challenge::ACME_TLS_ALPN.to_vec()];
    Ok(config)
}

fn provider(options: &TlsOptions) -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if !options.cipher_suites.is_empty() {
        provider.cipher_suites.retain(|s| {
            // TLS 1.3 suites are always on (Go ignores them in `cipherSuites` too).
            s.version() == &rustls::version::TLS13
                || options
                    .cipher_suites
                    .iter()
                    .any(|name| format!("{:?}", s.suite()) == *name)
        });
    }
    provider
}

fn versions(options: &TlsOptions) -> Vec<&'static SupportedProtocolVersion> {
    let min13 = options.min_version == "VersionTLS13";
    let max12 = options.max_version == "VersionTLS12";
    let mut v = Vec::new();
    if !max12 {
        v.push(&rustls::version::TLS13);
    }
    if !min13 {
        v.push(&rustls::version::TLS12);
    }
    v
}

fn server_config(options: &TlsOptions, store: Arc<Store>) -> Result<ServerConfig, String> {
    let provider = Arc::new(provider(options));
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(options))
        .map_err(|e| e.to_string())?;
    let builder = match &options.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let mut roots = RootCertStore::empty();
            for pem in &auth.ca_pems {
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|e| format!("clientAuth CA: {e}"))?;
                    roots.add(cert).map_err(|e| format!("clientAuth CA: {e}"))?;
                }
            }
            let verifier: Arc<dyn ClientCertVerifier> = match auth.client_auth_type.as_str() {
                "RequireAndVerifyClientCert" => {
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| e.to_string())?
                }
                "VerifyClientCertIfGiven" => {
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| e.to_string())?
                }
                "RequireAnyClientCert" => Arc::new(AnyClientCert {
                    mandatory: true,
                    algorithms: provider.signature_verification_algorithms,
                }),
                "RequestClientCert" => Arc::new(AnyClientCert {
                    mandatory: false,
                    algorithms: provider.signature_verification_algorithms,
                }),
                other => return Err(format!("unknown clientAuthType {other}")),
            };
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(Resolver {
        store,
        sni_strict: options.sni_strict,
    }));
    config.alpn_protocols = if options.alpn_protocols.is_empty() {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        options
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect()
    };
    Ok(config)
}

/// `RequestClientCert` / `RequireAnyClientCert`: a client certificate is asked for (and, for the
/// latter, required) but not verified against a CA — Go's semantics. Handshake signatures are
/// still checked, so the client must hold the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
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
