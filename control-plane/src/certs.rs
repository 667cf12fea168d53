//! Reads the files a dynamic configuration points at (`certFile`, `keyFile`, `caFiles`: each a path
//! or inline PEM, as in Traefik) so the compiler stays pure. Runs right before each compile, off
//! the async threads. A file that cannot be read costs only the object that names it.

use crate::{compile::Diagnostic, dynamic::DynamicConfig};

fn is_pem(value: &str) -> bool {
    value.trim_start().starts_with("-----BEGIN")
}

fn read(value: &str) -> Result<String, String> {
    if is_pem(value) || value.is_empty() {
        return Ok(value.to_owned());
    }
    std::fs::read_to_string(value).map_err(|e| format!("cannot read {value}: {e}"))
}

/// Whether [`load_files`] has anything to do: a certificate, a default certificate or client-auth
/// CA files (inline PEM counts too; reading it is a copy).
pub fn has_files(config: &DynamicConfig) -> bool {
    config.tls.as_ref().is_some_and(|tls| {
        !tls.certificates.is_empty()
            || tls.stores.values().any(|s| s.default_certificate.is_some())
            || tls.options.values().any(|o| {
                o.client_auth
                    .as_ref()
                    .is_some_and(|a| !a.ca_files.is_empty())
            })
    })
}

/// Replaces every path with the file's content; returns the problems found.
pub fn load_files(provider: &str, config: &mut DynamicConfig) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let Some(tls) = config.tls.as_mut() else {
        return diags;
    };
    tls.certificates.retain_mut(|c| {
        let object = format!("certificate/{provider}:{}", c.cert_file);
        match (read(&c.cert_file), read(&c.key_file)) {
            (Ok(cert), Ok(key)) => {
                c.cert_file = cert;
                c.key_file = key;
                true
            }
            (Err(e), _) | (_, Err(e)) => {
                diags.push(Diagnostic::error(provider, object, e));
                false
            }
        }
    });
    for (name, store) in tls.stores.iter_mut() {
        if let Some(c) = store.default_certificate.as_mut() {
            match (read(&c.cert_file), read(&c.key_file)) {
                (Ok(cert), Ok(key)) => {
                    c.cert_file = cert;
                    c.key_file = key;
                }
                (Err(e), _) | (_, Err(e)) => {
                    diags.push(Diagnostic::error(
                        provider,
                        format!("tlsstore/{name}@{provider}"),
                        e,
                    ));
                    store.default_certificate = None;
                }
            }
        }
    }
    for (name, options) in tls.options.iter_mut() {
        if let Some(auth) = options.client_auth.as_mut() {
            for ca in auth.ca_files.iter_mut() {
                match read(ca) {
                    Ok(pem) => *ca = pem,
                    Err(e) => {
                        diags.push(Diagnostic::error(
                            provider,
                            format!("tlsoption/{name}@{provider}"),
                            e,
                        ));
                        // Left unreadable: the compiler rejects these options.
                        ca.clear();
                    }
                }
            }
        }
    }
    diags
}
