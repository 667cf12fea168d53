//! Which certificates the routers ask for: every router whose `tls.certResolver` names a
//! resolver wants one certificate per `tls.domains` entry (main + SANs), or — without domains —
//! one certificate for the `Host` names of its rule (Traefik's behaviour). Pure.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
};

use switchyard_shared::rule::{Expr, Matcher};

use crate::{
    compile::{Diagnostic, qualify, rule::parse_rule},
    dynamic::DynamicConfig,
};

/// One certificate a resolver must obtain and keep valid.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Demand {
    pub resolver: String,
    /// Lower-case names, main first, then the SANs sorted; never empty.
    pub domains: Vec<String>,
}

/// The certificates wanted by every provider's routers, deduplicated and sorted, with a
/// diagnostic for each router whose request cannot be served (unknown resolver, wildcard or
/// no name). The router itself is always kept: it is served from the certificate store.
pub fn demands(
    providers: &BTreeMap<String, impl Borrow<DynamicConfig>>,
    resolvers: &BTreeSet<String>,
) -> (Vec<Demand>, Vec<Diagnostic>) {
    let mut out = BTreeSet::new();
    let mut diags = Vec::new();
    for (provider, config) in providers {
        let config: &DynamicConfig = config.borrow();
        let Some(http) = &config.http else { continue };
        for (name, router) in &http.routers {
            let Some(tls) = &router.tls else { continue };
            let Some(resolver) = tls.cert_resolver.as_deref().filter(|r| !r.is_empty()) else {
                continue;
            };
            let object = format!("router/{}", qualify(name, provider));
            let mut warn = |message: String| {
                diags.push(Diagnostic::warning(
                    provider.as_str(),
                    object.as_str(),
                    message,
                ))
            };
            if !resolvers.contains(resolver) {
                warn(format!(
                    "certificate resolver `{resolver}` does not exist (certificatesResolvers in the static configuration); the router is served with certificates from the store"
                ));
                continue;
            }
            let mut sets: Vec<Vec<String>> = Vec::new();
            if tls.domains.is_empty() {
                let mut hosts = Vec::new();
                if let Ok(expr) = parse_rule(&router.rule) {
                    collect_hosts(&expr, &mut hosts);
                }
                if !hosts.is_empty() {
                    sets.push(hosts);
                }
            } else {
                for d in &tls.domains {
                    let mut set = vec![d.main.clone()];
                    set.extend(d.sans.iter().cloned());
                    sets.push(set);
                }
            }
            if sets.is_empty() {
                warn(format!(
                    "certificate resolver `{resolver}`: no domain to order (set tls.domains or use Host in the rule)"
                ));
                continue;
            }
            for set in sets {
                match normalize(set) {
                    Ok(domains) => {
                        out.insert(Demand {
                            resolver: resolver.to_owned(),
                            domains,
                        });
                    }
                    Err(e) => warn(format!("certificate resolver `{resolver}`: {e}")),
                }
            }
        }
    }
    (out.into_iter().collect(), diags)
}

/// Main first, SANs sorted and deduplicated; names checked for what HTTP-01 and TLS-ALPN-01
/// can validate (no wildcards: those need DNS-01).
fn normalize(set: Vec<String>) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = set
        .into_iter()
        .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    let Some(main) = names.first().cloned() else {
        return Err("an empty domain".into());
    };
    for n in &names {
        if n.starts_with("*.") {
            return Err(format!(
                "`{n}`: wildcard certificates need the DNS-01 challenge, which is not supported"
            ));
        }
        if !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(format!("`{n}` is not a valid domain name"));
        }
    }
    let mut sans: Vec<String> = names.drain(1..).filter(|n| *n != main).collect();
    sans.sort();
    sans.dedup();
    let mut domains = vec![main];
    domains.extend(sans);
    Ok(domains)
}

fn collect_hosts(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Matcher(Matcher::Host(h)) if h != "*" && !out.contains(h) => out.push(h.clone()),
        Expr::All(items) | Expr::Any(items) => items.iter().for_each(|i| collect_hosts(i, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> BTreeMap<String, DynamicConfig> {
        let mut m = BTreeMap::new();
        m.insert("file".to_owned(), serde_yaml::from_str(yaml).unwrap());
        m
    }

    fn resolvers() -> BTreeSet<String> {
        ["le".to_owned()].into_iter().collect()
    }

    #[test]
    fn hosts_of_the_rule_make_one_certificate() {
        let c = config(
            "http:\n  routers:\n    a:\n      rule: Host(`b.test`) || (Host(`A.test`) && Path(`/`))\n      service: s\n      tls:\n        certResolver: le\n",
        );
        let (d, diags) = demands(&c, &resolvers());
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(
            d,
            vec![Demand {
                resolver: "le".into(),
                domains: vec!["b.test".into(), "a.test".into()]
            }]
        );
    }

    #[test]
    fn domains_win_over_the_rule_and_are_deduplicated() {
        let c = config(
            "http:\n  routers:\n    a:\n      rule: Host(`x.test`)\n      service: s\n      tls:\n        certResolver: le\n        domains:\n          - main: m.test\n            sans: [z.test, m.test, y.test]\n    b:\n      rule: Host(`m.test`)\n      service: s\n      tls:\n        certResolver: le\n        domains:\n          - main: m.test\n            sans: [y.test, z.test]\n",
        );
        let (d, _) = demands(&c, &resolvers());
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].domains, vec!["m.test", "y.test", "z.test"]);
    }

    #[test]
    fn unknown_resolver_and_wildcards_are_reported() {
        let c = config(
            "http:\n  routers:\n    a:\n      rule: Host(`a.test`)\n      service: s\n      tls:\n        certResolver: nope\n    w:\n      rule: Host(`*.w.test`)\n      service: s\n      tls:\n        certResolver: le\n    plain:\n      rule: Host(`p.test`)\n      service: s\n",
        );
        let (d, diags) = demands(&c, &resolvers());
        assert!(d.is_empty());
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert!(diags.iter().any(|x| x.message.contains("does not exist")));
        assert!(diags.iter().any(|x| x.message.contains("DNS-01")));
    }
}
