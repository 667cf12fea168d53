//! TLS part of the compiler: the certificate store (every provider's `tls.certificates`, pooled as
//! in Traefik), the `default` store's default certificate, TLS options (qualified `name@provider`
//! except `default`), and what a router's `tls` section refers to. Certificates are checked here
//! — PEM decodes, the key matches, names and expiry read — so a bad one is left out with a reason
//! and never reaches a proxy. Pure: certificate files were already read (see `crate::certs`).

use std::{borrow::Borrow, collections::BTreeMap};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use switchyard_shared::{
    snapshot::{Certificate, ClientAuth, RouterTls, TlsOptions},
    tls::{
        CIPHER_SUITES, CLIENT_AUTH_TYPES, DEFAULT_OPTIONS, LEGACY_VERSIONS, VERSIONS,
        canonical_cipher_suite,
    },
};

use super::{Diagnostic, qualify};
use crate::dynamic::{self, DynamicConfig};

/// The compiled TLS material of a snapshot.
#[derive(Debug, Default)]
pub(super) struct CompiledTls {
    pub certificates: Vec<Certificate>,
    pub options: BTreeMap<String, TlsOptions>,
    pub default_certificate: Option<Certificate>,
}

pub(super) fn compile(
    providers: &BTreeMap<String, impl Borrow<DynamicConfig>>,
    diags: &mut Vec<Diagnostic>,
) -> CompiledTls {
    let mut out = CompiledTls::default();
    let mut default_options_from: Vec<&str> = Vec::new();
    let mut default_store_from: Vec<&str> = Vec::new();
    for (provider, config) in providers {
        let config: &DynamicConfig = config.borrow();
        let Some(tls) = &config.tls else { continue };
        for key in tls.other.keys() {
            diags.push(Diagnostic::warning(
                provider.as_str(),
                format!("tls.{key}@{provider}"),
                format!("`tls.{key}` is not supported and is ignored"),
            ));
        }
        for (i, def) in tls.certificates.iter().enumerate() {
            let source = source_of(provider, &def.cert_file, i);
            match parse_certificate(&def.cert_file, &def.key_file, &source) {
                Ok(cert) => out.certificates.push(cert),
                Err(e) => diags.push(Diagnostic::error(
                    provider.as_str(),
                    format!("certificate/{source}"),
                    e,
                )),
            }
        }
        for (name, def) in &tls.options {
            let qualified = if name == DEFAULT_OPTIONS {
                default_options_from.push(provider);
                DEFAULT_OPTIONS.to_owned()
            } else {
                qualify(name, provider)
            };
            let object = format!("tlsoption/{qualified}");
            for key in def.other.keys() {
                diags.push(Diagnostic::warning(
                    provider.as_str(),
                    object.as_str(),
                    format!("option `{key}` is not supported and is ignored"),
                ));
            }
            match options(&qualified, def) {
                Ok((opts, warnings)) => {
                    for w in warnings {
                        diags.push(Diagnostic::warning(provider.as_str(), object.as_str(), w));
                    }
                    out.options.insert(qualified, opts);
                }
                Err(e) => diags.push(Diagnostic::error(provider.as_str(), object, e)),
            }
        }
        for (name, store) in &tls.stores {
            let object = format!("tlsstore/{name}@{provider}");
            if name != "default" {
                diags.push(Diagnostic::warning(
                    provider.as_str(),
                    object,
                    "only the `default` TLS store is used (as in Traefik); this one is ignored",
                ));
                continue;
            }
            default_store_from.push(provider);
            for key in store.other.keys() {
                diags.push(Diagnostic::warning(
                    provider.as_str(),
                    object.as_str(),
                    format!("option `{key}` is not supported and is ignored"),
                ));
            }
            if let Some(def) = &store.default_certificate {
                let source = format!("{provider}:tls.stores.default.defaultCertificate");
                match parse_certificate(&def.cert_file, &def.key_file, &source) {
                    Ok(cert) => out.default_certificate = Some(cert),
                    Err(e) => diags.push(Diagnostic::error(provider.as_str(), object, e)),
                }
            }
        }
    }
    if default_options_from.len() > 1 {
        // Traefik: the default options may be redefined by exactly one provider.
        out.options.remove(DEFAULT_OPTIONS);
        for p in &default_options_from {
            diags.push(Diagnostic::error(
                *p,
                format!("tlsoption/{DEFAULT_OPTIONS}"),
                format!(
                    "TLS options `default` are defined by several providers ({}); they are dropped",
                    default_options_from.join(", ")
                ),
            ));
        }
    } else if default_options_from.is_empty() {
        out.options.insert(
            DEFAULT_OPTIONS.to_owned(),
            TlsOptions {
                name: DEFAULT_OPTIONS.to_owned(),
                ..Default::default()
            },
        );
    }
    if default_store_from.len() > 1 {
        out.default_certificate = None;
        for p in &default_store_from {
            diags.push(Diagnostic::error(
                *p,
                "tlsstore/default",
                format!(
                    "the `default` TLS store is defined by several providers ({}); it is dropped",
                    default_store_from.join(", ")
                ),
            ));
        }
    }
    out.certificates
        .sort_by(|a, b| a.names.cmp(&b.names).then(a.cert_pem.cmp(&b.cert_pem)));
    out.certificates.dedup();
    out
}

/// Resolves a router's `tls` section.
pub(super) fn router_tls(
    def: &dynamic::RouterTls,
    provider: &str,
    compiled: &CompiledTls,
) -> Result<(RouterTls, Vec<String>), String> {
    let options = match def.options.as_deref() {
        None | Some("") | Some(DEFAULT_OPTIONS) => DEFAULT_OPTIONS.to_owned(),
        Some(name) => qualify(name, provider),
    };
    if !compiled.options.contains_key(&options) {
        return Err(format!("unknown TLS options \"{options}\""));
    }
    // `certResolver` is handled outside the compiler (`crate::acme::demands`): its certificates
    // join the store, so the router needs nothing more here.
    Ok((RouterTls { options }, Vec::new()))
}

fn source_of(provider: &str, cert_file: &str, index: usize) -> String {
    if cert_file.trim_start().starts_with("-----BEGIN") {
        format!("{provider}:tls.certificates[{index}]")
    } else {
        format!("{provider}:{cert_file}")
    }
}

/// Checks a certificate/key pair and reads the names it serves.
pub fn parse_certificate(
    cert_pem: &str,
    key_pem: &str,
    source: &str,
) -> Result<Certificate, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certFile: not a PEM certificate: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(
            "certFile: no certificate found (expected PEM, or a readable file path)".into(),
        );
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("keyFile: not a PEM private key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("keyFile: unsupported private key: {e}"))?;
    CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|e| format!("the private key does not match the certificate: {e}"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("certFile: cannot parse the certificate: {e}"))?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.push(d.trim_end_matches('.').to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        names.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|cn| cn.trim_end_matches('.').to_ascii_lowercase()),
        );
    }
    names.sort();
    names.dedup();
    Ok(Certificate {
        cert_pem: cert_pem.to_owned(),
        key_pem: key_pem.to_owned(),
        names,
        source: source.to_owned(),
        not_after_unix: parsed.validity().not_after.timestamp(),
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

fn options(name: &str, def: &dynamic::TlsOptionsDef) -> Result<(TlsOptions, Vec<String>), String> {
    let mut warnings = Vec::new();
    let min_version = match def.min_version.as_deref() {
        None | Some("") => String::new(),
        Some(v) if VERSIONS.contains(&v) => v.to_owned(),
        Some(v) if LEGACY_VERSIONS.contains(&v) => {
            warnings.push(format!(
                "minVersion {v}: TLS 1.0/1.1 are never offered; the minimum is TLS 1.2"
            ));
            String::new()
        }
        Some(v) => {
            return Err(format!(
                "minVersion: unknown version `{v}` (use VersionTLS12 or VersionTLS13)"
            ));
        }
    };
    let max_version = match def.max_version.as_deref() {
        None | Some("") => String::new(),
        Some(v) if VERSIONS.contains(&v) => v.to_owned(),
        Some(v) => {
            return Err(format!(
                "maxVersion: `{v}` is not supported (TLS 1.2 and 1.3 are: VersionTLS12, VersionTLS13)"
            ));
        }
    };
    if min_version == "VersionTLS13" && max_version == "VersionTLS12" {
        return Err("maxVersion VersionTLS12 is below minVersion VersionTLS13".into());
    }
    let mut cipher_suites = Vec::with_capacity(def.cipher_suites.len());
    for suite in &def.cipher_suites {
        let canonical = canonical_cipher_suite(suite);
        if !CIPHER_SUITES.contains(&canonical) {
            return Err(format!(
                "cipherSuites: `{suite}` is not supported (supported: {})",
                CIPHER_SUITES.join(", ")
            ));
        }
        cipher_suites.push(canonical.to_owned());
    }
    let client_auth = match &def.client_auth {
        None => None,
        Some(ca) => {
            let kind = ca
                .client_auth_type
                .clone()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "NoClientCert".to_owned());
            if !CLIENT_AUTH_TYPES.contains(&kind.as_str()) {
                return Err(format!(
                    "clientAuth.clientAuthType: unknown value `{kind}` (one of {})",
                    CLIENT_AUTH_TYPES.join(", ")
                ));
            }
            let mut ca_pems = Vec::with_capacity(ca.ca_files.len());
            for (i, pem) in ca.ca_files.iter().enumerate() {
                let certs: Result<Vec<CertificateDer<'static>>, _> =
                    CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
                match certs {
                    Ok(c) if !c.is_empty() => ca_pems.push(pem.clone()),
                    _ => {
                        return Err(format!(
                            "clientAuth.caFiles[{i}]: not a PEM certificate (nor a readable file)"
                        ));
                    }
                }
            }
            let verifies = matches!(
                kind.as_str(),
                "VerifyClientCertIfGiven" | "RequireAndVerifyClientCert"
            );
            if verifies && ca_pems.is_empty() {
                return Err(format!(
                    "clientAuth: {kind} needs at least one CA in caFiles"
                ));
            }
            (kind != "NoClientCert").then_some(ClientAuth {
                ca_pems,
                client_auth_type: kind,
            })
        }
    };
    Ok((
        TlsOptions {
            name: name.to_owned(),
            min_version,
            max_version,
            cipher_suites,
            alpn_protocols: def.alpn_protocols.clone(),
            sni_strict: def.sni_strict,
            client_auth,
        },
        warnings,
    ))
}
