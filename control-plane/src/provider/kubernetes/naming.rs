//! Traefik's names for what the Kubernetes CRD provider generates, so a Traefik user's
//! references (`<ns>-<name>@kubernetescrd` from another provider, dashboards, alerts) keep
//! working. Facts from Traefik's `pkg/provider/kubernetes/crd` and `pkg/provider`:
//!
//! - `Normalize` splits a name on every character that is neither a letter nor a digit and joins
//!   the pieces with `-` (so `test.route` → `test-route`, and separators never repeat);
//! - an object ID is `<namespace>-<name>` (just `<name>` without a namespace);
//! - a router is `Normalize("<ns>-<ingressroute>-<hash>")` where `<hash>` is Go's `%.10x` of the
//!   SHA-256 of the route's `match`: the first **10 bytes**, i.e. 20 hex digits;
//! - a Kubernetes Service backend is `Normalize("<ns>-<service>-<port>")`;
//! - references by `name` + `namespace` become `Normalize("<ns>-<name>")`; a name containing `@`
//!   is a cross-provider reference and is used as written.
//!
//! Pure functions only.

use sha2::{Digest, Sha256};

/// The provider-namespace separator of qualified names (`name@provider`).
pub const PROVIDER_SEPARATOR: char = '@';

/// Traefik's `provider.Normalize`.
pub fn normalize(name: &str) -> String {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// `<namespace>-<name>`, or `<name>` without a namespace.
pub fn make_id(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}-{name}")
    }
}

/// The router name of one route of an IngressRoute (also the name of its implicit service).
pub fn router_name(namespace: &str, ingress_route: &str, rule: &str) -> String {
    let digest = Sha256::digest(rule.as_bytes());
    let key = format!("{ingress_route}-{}", hex::encode(&digest[..10]));
    normalize(&make_id(namespace, &key))
}

/// The name of a Kubernetes Service backend: `<ns>-<service>-<port>`.
pub fn service_name(namespace: &str, service: &str, port: &str) -> String {
    normalize(&format!("{namespace}-{service}-{port}"))
}

/// A reference to another object of this provider in `namespace` (`<ns>-<name>`).
pub fn object_name(namespace: &str, name: &str) -> String {
    normalize(&make_id(namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_collapses_every_non_alphanumeric_run() {
        assert_eq!(normalize("test.route"), "test-route");
        assert_eq!(normalize("a..b__c"), "a-b-c");
        assert_eq!(normalize("-lead-trail-"), "lead-trail");
        assert_eq!(normalize("ns-name@file"), "ns-name-file");
        assert_eq!(normalize("ünïcode-1"), "ünïcode-1");
    }

    #[test]
    fn router_name_uses_ten_bytes_of_the_match_hash() {
        // The name Traefik's own tests expect for this route (namespace `default`, IngressRoute
        // `test.route`).
        assert_eq!(
            router_name(
                "default",
                "test.route",
                "Host(`foo.com`) && PathPrefix(`/bar`)"
            ),
            "default-test-route-6b204d94623b3df4370c"
        );
    }

    #[test]
    fn service_and_object_names() {
        assert_eq!(service_name("default", "whoami", "80"), "default-whoami-80");
        assert_eq!(
            service_name("default", "whoami", "web"),
            "default-whoami-web"
        );
        assert_eq!(object_name("foo", "addprefix"), "foo-addprefix");
        assert_eq!(object_name("", "default"), "default");
    }
}
