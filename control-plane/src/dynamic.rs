//! Traefik v3 dynamic configuration model (the HTTP part), as every provider emits it. Field names
//! and defaults follow Traefik's `pkg/config/dynamic`; maps are `BTreeMap` so iteration (and thus
//! compilation) is deterministic. Fields Switchyard does not implement yet are captured in `other`
//! so the compiler can report them instead of failing the whole file.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

/// Unknown/unsupported keys of an object, kept to be reported as warnings.
pub type Extra = BTreeMap<String, Value>;

/// The root of a dynamic configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DynamicConfig {
    #[serde(default)]
    pub http: Option<HttpConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `tcp`, `udp`, `tls`…: not served yet; reported.
    #[serde(flatten)]
    pub other: Extra,
}

/// `http:`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpConfig {
    /// Shared: merging files copies no router, and a compile recognises an unchanged one by
    /// pointer.
    #[serde(default)]
    pub routers: BTreeMap<String, Arc<Router>>,
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    #[serde(default)]
    pub middlewares: BTreeMap<String, Middleware>,
    #[serde(flatten)]
    pub other: Extra,
}

/// `http.routers.<name>`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Router {
    #[serde(default)]
    pub rule: String,
    /// `0`/absent: the rule's length.
    #[serde(default)]
    pub priority: i64,
    /// Absent: every entry point.
    #[serde(default, alias = "entrypoints")]
    pub entry_points: Vec<String>,
    #[serde(default)]
    pub middlewares: Vec<String>,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub rule_syntax: Option<String>,
    /// Presence makes the router TLS-only (`tls: {}` is enough).
    #[serde(default)]
    pub tls: Option<RouterTls>,
    #[serde(flatten)]
    pub other: Extra,
}

/// `http.routers.<name>.tls`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterTls {
    /// TLS options name (`default` when unset).
    #[serde(default)]
    pub options: Option<String>,
    #[serde(default, alias = "certresolver")]
    pub cert_resolver: Option<String>,
    #[serde(default)]
    pub domains: Vec<Domain>,
}

/// `tls.domains[]`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Domain {
    #[serde(default)]
    pub main: String,
    #[serde(default)]
    pub sans: Vec<String>,
}

/// The root `tls:` section.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    #[serde(default)]
    pub certificates: Vec<CertificateDef>,
    #[serde(default)]
    pub options: BTreeMap<String, TlsOptionsDef>,
    #[serde(default)]
    pub stores: BTreeMap<String, TlsStoreDef>,
    #[serde(flatten)]
    pub other: Extra,
}

/// `tls.certificates[]`: `certFile`/`keyFile` hold a path or inline PEM; providers resolve paths
/// to PEM before compilation (see `crate::certs`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateDef {
    #[serde(default, alias = "certfile")]
    pub cert_file: String,
    #[serde(default, alias = "keyfile")]
    pub key_file: String,
    /// Ignored by Traefik (everything goes to `default`); accepted.
    #[serde(default)]
    pub stores: Vec<String>,
}

/// `tls.options.<name>`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsOptionsDef {
    #[serde(default, alias = "minversion")]
    pub min_version: Option<String>,
    #[serde(default, alias = "maxversion")]
    pub max_version: Option<String>,
    #[serde(default, alias = "ciphersuites")]
    pub cipher_suites: Vec<String>,
    #[serde(default, alias = "alpnprotocols")]
    pub alpn_protocols: Vec<String>,
    #[serde(default, alias = "snistrict")]
    pub sni_strict: bool,
    #[serde(default, alias = "clientauth")]
    pub client_auth: Option<ClientAuthDef>,
    #[serde(flatten)]
    pub other: Extra,
}

/// `tls.options.<name>.clientAuth`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuthDef {
    /// Paths or inline PEM.
    #[serde(default, alias = "cafiles")]
    pub ca_files: Vec<String>,
    #[serde(default, alias = "clientauthtype")]
    pub client_auth_type: Option<String>,
}

/// `tls.stores.<name>` (only `default` is used, as in Traefik).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsStoreDef {
    #[serde(default, alias = "defaultcertificate")]
    pub default_certificate: Option<CertificateDef>,
    #[serde(flatten)]
    pub other: Extra,
}

/// `http.services.<name>`: exactly one type must be set.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default, alias = "loadbalancer")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    pub weighted: Option<Weighted>,
    /// `mirroring`, `failover`, `highestRandomWeight`…: reported as unsupported.
    #[serde(flatten)]
    pub other: Extra,
}

/// `loadBalancer`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(default)]
    pub servers: Vec<Server>,
    /// Traefik default: `true`.
    #[serde(default, alias = "passhostheader")]
    pub pass_host_header: Option<bool>,
    #[serde(flatten)]
    pub other: Extra,
}

/// `loadBalancer.servers[]`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    #[serde(default)]
    pub url: String,
    /// Traefik default: 1.
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(flatten)]
    pub other: Extra,
}

/// `weighted`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Weighted {
    #[serde(default)]
    pub services: Vec<WeightedRef>,
    #[serde(flatten)]
    pub other: Extra,
}

/// `weighted.services[]`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedRef {
    pub name: String,
    /// Traefik default: 1.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// `http.middlewares.<name>`: exactly one type must be set.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Middleware {
    #[serde(default, alias = "stripprefix")]
    pub strip_prefix: Option<StripPrefix>,
    #[serde(default, alias = "addprefix")]
    pub add_prefix: Option<AddPrefix>,
    #[serde(default)]
    pub headers: Option<Headers>,
    #[serde(default, alias = "redirectscheme")]
    pub redirect_scheme: Option<RedirectScheme>,
    #[serde(default)]
    pub chain: Option<Chain>,
    /// Middleware types Switchyard does not implement yet.
    #[serde(flatten)]
    pub other: Extra,
}

/// `stripPrefix`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StripPrefix {
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Deprecated in v3 and ignored by Traefik; accepted silently.
    #[serde(default)]
    pub force_slash: Option<bool>,
}

/// `addPrefix`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddPrefix {
    #[serde(default)]
    pub prefix: String,
}

/// `headers` (the custom header part; security options are reported as unsupported).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    #[serde(default)]
    pub custom_request_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub custom_response_headers: BTreeMap<String, String>,
    #[serde(flatten)]
    pub other: Extra,
}

/// `redirectScheme`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedirectScheme {
    #[serde(default)]
    pub scheme: String,
    /// A string in Traefik; YAML users often write a number.
    #[serde(default, deserialize_with = "string_or_number")]
    pub port: Option<String>,
    #[serde(default)]
    pub permanent: bool,
}

/// `chain`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Chain {
    #[serde(default)]
    pub middlewares: Vec<String>,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        N(i64),
    }
    Ok(Option::<Raw>::deserialize(d)?.map(|r| match r {
        Raw::S(s) => s,
        Raw::N(n) => n.to_string(),
    }))
}

impl DynamicConfig {
    /// Adds `other`'s objects that `self` does not define yet (file provider: first definition
    /// wins). Returns the names that were skipped as duplicates.
    pub fn merge_first_wins(&mut self, other: DynamicConfig) -> Vec<String> {
        fn merge<T>(
            kind: &str,
            ours: &mut BTreeMap<String, T>,
            theirs: BTreeMap<String, T>,
            skipped: &mut Vec<String>,
        ) {
            if ours.is_empty() {
                // The common case of one big file: take the map as it is.
                *ours = theirs;
                return;
            }
            for (name, value) in theirs {
                match ours.entry(name) {
                    std::collections::btree_map::Entry::Occupied(e) => {
                        skipped.push(format!("{kind} {}", e.key()));
                    }
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(value);
                    }
                }
            }
        }
        let mut skipped = Vec::new();
        if let Some(theirs) = other.tls {
            let ours = self.tls.get_or_insert_with(TlsConfig::default);
            ours.certificates.extend(theirs.certificates);
            merge(
                "TLS options",
                &mut ours.options,
                theirs.options,
                &mut skipped,
            );
            merge("TLS store", &mut ours.stores, theirs.stores, &mut skipped);
            for (k, v) in theirs.other {
                ours.other.entry(k).or_insert(v);
            }
        }
        for (k, v) in other.other {
            self.other.entry(k).or_insert(v);
        }
        let Some(theirs) = other.http else {
            return skipped;
        };
        let ours = self.http.get_or_insert_with(HttpConfig::default);
        merge("router", &mut ours.routers, theirs.routers, &mut skipped);
        merge("service", &mut ours.services, theirs.services, &mut skipped);
        merge(
            "middleware",
            &mut ours.middlewares,
            theirs.middlewares,
            &mut skipped,
        );
        skipped
    }
}
