//! TLS vocabulary shared by both planes: the Traefik names of protocol versions, cipher suites
//! and client-auth types that Switchyard supports. The controller validates against these lists;
//! the proxy maps them onto rustls.

/// Traefik `minVersion`/`maxVersion` values rustls can honour (TLS 1.0/1.1 are not offered).
pub const VERSIONS: [&str; 2] = ["VersionTLS12", "VersionTLS13"];

/// Older version names Traefik accepts; as a minimum they mean "TLS 1.2" here (rustls never
/// offers anything older), as a maximum they are an error.
pub const LEGACY_VERSIONS: [&str; 2] = ["VersionTLS10", "VersionTLS11"];

/// Go/Traefik cipher suite names with a rustls equivalent. TLS 1.3 suites are always enabled
/// (Go ignores them in `cipherSuites` too).
pub const CIPHER_SUITES: [&str; 9] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Go's short aliases for the CHACHA20 suites.
pub fn canonical_cipher_suite(name: &str) -> &str {
    match name {
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        other => other,
    }
}

/// Traefik `clientAuth.clientAuthType` values.
pub const CLIENT_AUTH_TYPES: [&str; 5] = [
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
];

/// The name of the TLS options every TLS router uses unless it names others.
pub const DEFAULT_OPTIONS: &str = "default";

/// Does `name` (lower-case, no trailing dot) match certificate/rule name `pattern` (`*.x` covers
/// exactly one extra label)?
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(name_matches("a.example.com", "a.example.com"));
    }

    #[test]
    fn chacha_aliases() {
        assert!(CIPHER_SUITES.contains(&canonical_cipher_suite(
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"
        )));
    }
}
