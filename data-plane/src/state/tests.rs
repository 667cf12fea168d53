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

// ---------------------------------------------------------------------------------------------
// Patching a table with the changes between two snapshots

mod patch {
    use proptest::prelude::*;
    use prost::Message;
    use switchyard_shared::{changes, snapshot::RouterTls};

    use super::*;
    use crate::router::RequestView;

    fn content(s: &Snapshot) -> Vec<u8> {
        pb::Snapshot::from(s).encode_to_vec()
    }

    fn full(s: &Snapshot, previous: Option<&Table>) -> Table {
        let decoded = Snapshot::decode_to_serve(&content(s)).expect("decodes");
        Table::from_snapshot("full".into(), 2, decoded, previous)
            .expect("builds")
            .0
    }

    /// The table patched from `old`'s to `new`'s, `None` when the changes need a full build.
    fn patched(old: &Snapshot, table: &Table, new: &Snapshot) -> Option<Table> {
        let changes =
            changes::between(&content(old), &content(new), usize::MAX).expect("comparable");
        table.patch("patched".into(), 2, &changes)
    }

    /// Which router and server a request lands on, per entry point and table.
    fn answers(t: &Table) -> Vec<Option<(String, String)>> {
        let headers = http::HeaderMap::new();
        let method = http::Method::GET;
        let mut out = Vec::new();
        for ep in ["web", "admin"] {
            let tables = t.entry_point(ep).expect("entry point");
            for table in [&tables.plain, &tables.tls] {
                for host in ["h0.test", "h1.test", "h2.test", "other.test"] {
                    for path in ["/", "/a/x", "/b"] {
                        let req = RequestView {
                            host,
                            path,
                            query: None,
                            method: &method,
                            headers: crate::router::Headers::Map(&headers),
                            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                        };
                        out.push(table.find(&req).map(|route| {
                            let url = route
                                .service
                                .pick()
                                .map(|(_, u)| u.url.clone())
                                .unwrap_or_default();
                            (route.name.to_string(), url)
                        }));
                    }
                }
            }
        }
        out
    }

    fn services(t: &Table) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = t
            .services
            .iter()
            .map(|(name, handle)| {
                let urls = match &**handle {
                    ServiceHandle::LoadBalancer(lb) => {
                        lb.servers.iter().map(|s| s.url.clone()).collect()
                    }
                    ServiceHandle::Weighted { .. } => vec!["weighted".into()],
                };
                (name.clone(), urls)
            })
            .collect();
        out.sort();
        out
    }

    /// Entry points `web` and `admin`, one middleware, routers `r0..` and services `s0..` as
    /// given: a router is (rule variant, priority, service, on admin too), a service its port.
    fn snapshot(routers: &[Option<(u8, i64, u8, bool)>], services: &[Option<u16>]) -> Snapshot {
        let mut s = base();
        s.entry_points.push(EntryPoint {
            name: "admin".into(),
            address: ":8081".into(),
            redirect: None,
        });
        s.entry_points.sort_by(|a, b| a.name.cmp(&b.name));
        s.services = (0u8..)
            .zip(services)
            .filter_map(|(i, port)| port.map(|p| lb(&format!("s{i}@file"), &[p])))
            .collect();
        s.routers = (0u8..)
            .zip(routers)
            .filter_map(|(i, r)| {
                let (variant, priority, service, admin) = (*r)?;
                let host = |h: u8| Expr::Matcher(Matcher::Host(format!("h{h}.test")));
                let rule = match variant {
                    0..=2 => host(variant),
                    3 => Expr::All(vec![
                        host(0),
                        Expr::Matcher(Matcher::PathPrefix("/a".into())),
                    ]),
                    _ => Expr::Matcher(Matcher::PathPrefix("/".into())),
                };
                let mut r = router(&format!("r{i}@file"), &format!("s{service}@file"), &[]);
                r.rule = rule;
                r.priority = priority;
                if admin {
                    r.entry_points.insert(0, "admin".into());
                }
                // Every router's service exists: point dangling ones at s0, which always does.
                if services
                    .get(usize::from(service))
                    .copied()
                    .flatten()
                    .is_none()
                {
                    r.service = "s0@file".into();
                }
                Some(r)
            })
            .collect();
        s
    }

    fn arb_routers() -> impl Strategy<Value = Vec<Option<(u8, i64, u8, bool)>>> {
        proptest::collection::vec(
            proptest::option::of((0u8..5, 1i64..4, 0u8..4, any::<bool>())),
            8,
        )
    }

    fn arb_services() -> impl Strategy<Value = Vec<Option<u16>>> {
        // s0 always exists.
        (
            1u16..4,
            proptest::collection::vec(proptest::option::of(1u16..4), 3),
        )
            .prop_map(|(first, rest)| std::iter::once(Some(first)).chain(rest).collect())
    }

    proptest! {
        /// A patched table routes every request exactly as a table built from the new snapshot.
        #[test]
        fn a_patched_table_routes_like_a_full_build(
            (old_r, old_s, new_r, new_s) in (arb_routers(), arb_services(), arb_routers(), arb_services())
        ) {
            let (old, new) = (snapshot(&old_r, &old_s), snapshot(&new_r, &new_s));
            let before = full(&old, None);
            let expected = full(&new, Some(&before));
            let patched = patched(&old, &before, &new).expect("router and service changes patch");
            prop_assert_eq!(answers(&patched), answers(&expected));
            prop_assert_eq!(services(&patched), services(&expected));
            prop_assert_eq!(patched.router_count, expected.router_count);
            prop_assert_eq!(patched.version.as_str(), "patched");
        }
    }

    #[test]
    fn only_what_changed_is_rebuilt() {
        let old = snapshot(
            &[Some((0, 1, 0, true)), Some((1, 1, 1, false))],
            &[Some(1), Some(2)],
        );
        let before = full(&old, None);
        // r1 (on web only) moves to another host; s1 changes port.
        let new = snapshot(
            &[Some((0, 1, 0, true)), Some((2, 1, 1, false))],
            &[Some(1), Some(3)],
        );
        let after = patched(&old, &before, &new).expect("patched");
        assert!(Arc::ptr_eq(
            &before.services["s0@file"],
            &after.services["s0@file"]
        ));
        assert!(!Arc::ptr_eq(
            &before.services["s1@file"],
            &after.services["s1@file"]
        ));
        // Only `web` holds a changed router, but a service changed: every table is rebuilt.
        assert!(!Arc::ptr_eq(
            &before.routes["admin"].plain,
            &after.routes["admin"].plain
        ));
        // Without a service change, the untouched entry point keeps its tables.
        let moved = snapshot(
            &[Some((0, 1, 0, true)), Some((2, 1, 1, false))],
            &[Some(1), Some(2)],
        );
        let after = patched(&old, &before, &moved).expect("patched");
        assert!(Arc::ptr_eq(
            &before.routes["admin"].plain,
            &after.routes["admin"].plain
        ));
        assert!(!Arc::ptr_eq(
            &before.routes["web"].plain,
            &after.routes["web"].plain
        ));
        assert!(Arc::ptr_eq(
            &before.services["s1@file"],
            &after.services["s1@file"]
        ));
        assert_eq!(answers(&after), answers(&full(&moved, None)));
    }

    #[test]
    fn changes_a_patch_cannot_make_need_a_full_build() {
        let old = snapshot(&[Some((0, 1, 0, false))], &[Some(1), Some(2)]);
        let before = full(&old, None);
        // A TLS router: the SNI resolver is built from them.
        let mut tls = old.clone();
        tls.routers[0].tls = Some(RouterTls {
            options: String::new(),
        });
        assert!(patched(&old, &before, &tls).is_none());
        // A service removed while a router still uses it: the full build reports it.
        let mut dangling = old.clone();
        dangling.services.remove(0);
        assert!(patched(&old, &before, &dangling).is_none());
        assert!(Table::build(&versioned(&dangling, "v2"), Some(&before)).is_err());
        // A router naming a service that does not exist.
        let mut ghost = old.clone();
        ghost.routers[0].service = "ghost@file".into();
        assert!(patched(&old, &before, &ghost).is_none());
        // A changed service while weighted services exist (they hold their children).
        let weighted = base();
        let with_weighted = full(&weighted, None);
        let mut changed = base();
        changed.services[0] = lb("a@file", &[9]);
        assert!(patched(&weighted, &with_weighted, &changed).is_none());
        // A weighted service added.
        let mut added = old.clone();
        added.services.push(Service {
            name: "w@file".into(),
            kind: ServiceKind::Weighted(vec![WeightedService {
                name: "s0@file".into(),
                weight: 1,
            }]),
        });
        assert!(patched(&old, &before, &added).is_none());
    }
}
