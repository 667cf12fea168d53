use switchyard_shared::{
    pb,
    rule::{Expr, Matcher},
    snapshot::{
        EntryPoint, LoadBalancer, Middleware as MiddlewareDef, MiddlewareKind, Router, Server,
        Service, ServiceKind, Snapshot, WeightedService,
    },
};

use super::*;

fn lb(name: &str, ports: &[u16]) -> Service {
    Service {
        name: name.into(),
        kind: ServiceKind::LoadBalancer(LoadBalancer {
            servers: ports
                .iter()
                .map(|p| Server {
                    url: format!("http://127.0.0.1:{p}"),
                    weight: 1,
                })
                .collect(),
            pass_host_header: true,
        }),
    }
}

fn router(name: &str, service: &str, middlewares: &[&str]) -> Router {
    Router {
        name: name.into(),
        provider: "file".into(),
        entry_points: vec!["web".into()],
        rule: Expr::Matcher(Matcher::PathPrefix("/".into())),
        priority: 1,
        middlewares: middlewares.iter().map(|m| (*m).to_owned()).collect(),
        service: service.into(),
        rule_text: "PathPrefix(`/`)".into(),
        tls: None,
    }
}

fn versioned(s: &Snapshot, version: &str) -> pb::VersionedSnapshot {
    pb::VersionedSnapshot {
        version: version.into(),
        generation: 1,
        created_at_unix_ms: 0,
        snapshot: Some(pb::Snapshot::from(s)),
    }
}

fn base() -> Snapshot {
    Snapshot {
        entry_points: vec![EntryPoint {
            name: "web".into(),
            address: ":8080".into(),
            redirect: None,
        }],
        routers: vec![router("r@file", "a@file", &["c@file"])],
        services: vec![
            lb("a@file", &[1, 2]),
            lb("b@file", &[3]),
            Service {
                name: "w@file".into(),
                kind: ServiceKind::Weighted(vec![
                    WeightedService {
                        name: "a@file".into(),
                        weight: 1,
                    },
                    WeightedService {
                        name: "b@file".into(),
                        weight: 1,
                    },
                ]),
            },
        ],
        middlewares: vec![
            MiddlewareDef {
                name: "c@file".into(),
                kind: MiddlewareKind::Chain(vec!["p@file".into(), "p@file".into()]),
            },
            MiddlewareDef {
                name: "p@file".into(),
                kind: MiddlewareKind::AddPrefix {
                    prefix: "/x".into(),
                },
            },
        ],
        certificates: vec![],
        tls_options: vec![],
        default_certificate: None,
        http_challenges: vec![],
        tls_challenges: vec![],
    }
}

#[test]
fn builds_routes_and_flattens_chains() {
    let t = Table::build(&versioned(&base(), "v1"), None).unwrap();
    assert_eq!(t.version, "v1");
    assert_eq!(t.router_count, 1);
    let routes = t.entry_point("web").unwrap();
    assert_eq!(routes.plain.len(), 1);
    assert!(routes.tls.is_empty());
    assert!(t.tls.is_none(), "no TLS router, no TLS state");
    assert!(t.entry_point("other").is_none());
}

#[test]
fn weighted_service_reaches_both_children() {
    let t = Table::build(&versioned(&base(), "v1"), None).unwrap();
    let w = t.services.get("w@file").unwrap();
    let mut urls: Vec<String> = (0..6).map(|_| w.pick().unwrap().1.url.clone()).collect();
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 3, "{urls:?}");
}

#[test]
fn unchanged_balancers_are_carried_over() {
    let first = Table::build(&versioned(&base(), "v1"), None).unwrap();
    let mut changed = base();
    changed.services[1] = lb("b@file", &[4]);
    let second = Table::build(&versioned(&changed, "v2"), Some(&first)).unwrap();
    assert!(Arc::ptr_eq(
        &first.services["a@file"],
        &second.services["a@file"]
    ));
    assert!(!Arc::ptr_eq(
        &first.services["b@file"],
        &second.services["b@file"]
    ));
}

#[test]
fn empty_service_picks_nothing() {
    let mut s = base();
    s.services[0] = lb("a@file", &[]);
    let t = Table::build(&versioned(&s, "v1"), None).unwrap();
    assert!(t.services["a@file"].pick().is_none());
}

#[test]
fn broken_references_fail_with_the_object_name() {
    let mut s = base();
    s.routers[0].service = "ghost@file".into();
    let err = Table::build(&versioned(&s, "v1"), None).unwrap_err();
    assert_eq!(err.to_string(), "router r@file: unknown service ghost@file");

    let mut s = base();
    s.middlewares[0].kind = MiddlewareKind::Chain(vec!["c@file".into()]);
    let err = Table::build(&versioned(&s, "v1"), None).unwrap_err();
    assert!(err.to_string().contains("too deep or cyclic"), "{err}");

    let mut s = base();
    s.entry_points[0].address = "nowhere".into();
    let err = Table::build(&versioned(&s, "v1"), None).unwrap_err();
    assert!(err.to_string().starts_with("entry point web:"), "{err}");

    let mut s = base();
    s.services[0] = Service {
        name: "a@file".into(),
        kind: ServiceKind::LoadBalancer(LoadBalancer {
            servers: vec![Server {
                url: "ftp://x".into(),
                weight: 1,
            }],
            pass_host_header: true,
        }),
    };
    let err = Table::build(&versioned(&s, "v1"), None).unwrap_err();
    assert!(err.to_string().contains("unsupported scheme"), "{err}");

    let empty = pb::VersionedSnapshot {
        version: "v9".into(),
        ..Default::default()
    };
    assert!(Table::build(&empty, None).is_err());
}
