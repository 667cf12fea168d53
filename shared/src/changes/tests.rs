use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::{
    pb,
    rule::{Expr, Matcher},
    snapshot::{
        Certificate, EntryPoint, LoadBalancer, Middleware, MiddlewareKind, Server, ServiceKind,
        Snapshot,
    },
};

fn router(name: &str, host: &str, service: &str) -> Router {
    Router {
        name: name.into(),
        provider: "file".into(),
        entry_points: vec!["web".into()],
        rule: Expr::Matcher(Matcher::Host(host.into())),
        priority: 10,
        middlewares: Vec::new(),
        service: service.into(),
        rule_text: format!("Host(`{host}`)"),
        tls: None,
    }
}

fn service(name: &str, port: u16) -> Service {
    Service {
        name: name.into(),
        kind: ServiceKind::LoadBalancer(LoadBalancer {
            servers: vec![Server {
                url: format!("http://127.0.0.1:{port}"),
                weight: 1,
            }],
            pass_host_header: true,
        }),
    }
}

/// A snapshot as the controller lays it out: every list sorted by name.
fn snapshot(routers: Vec<Router>, services: Vec<Service>) -> Snapshot {
    let mut s = Snapshot {
        routers,
        services,
        ..Default::default()
    };
    s.routers.sort_by(|a, b| a.name.cmp(&b.name));
    s.services.sort_by(|a, b| a.name.cmp(&b.name));
    s
}

fn encode(s: &Snapshot) -> Vec<u8> {
    pb::Snapshot::from(s).encode_to_vec()
}

/// A router as [`Snapshot::decode_to_serve`] gives it back.
fn served(mut r: Router) -> Router {
    r.provider.clear();
    r.rule_text.clear();
    r
}

fn base() -> Snapshot {
    snapshot(
        vec![
            router("a@file", "a.test", "s@file"),
            router("b@file", "b.test", "s@file"),
            router("c@file", "c.test", "t@file"),
        ],
        vec![service("s@file", 1), service("t@file", 2)],
    )
}

#[test]
fn identical_snapshots_have_no_changes() {
    let bytes = encode(&base());
    let changes = between(&bytes, &bytes, 10).expect("comparable");
    assert!(changes.is_empty());
    assert_eq!(changes.router_count, 3);
}

#[test]
fn added_removed_and_changed_objects_are_found_by_name() {
    let old = base();
    let mut new = base();
    new.routers.remove(0); // a: removed
    new.routers[0].rule = Expr::Matcher(Matcher::Host("b2.test".into())); // b: changed
    new.routers.push(router("d@file", "d.test", "u@file")); // d: added
    new.services[1] = service("t@file", 3); // t: changed
    new.services.push(service("u@file", 4)); // u: added
    let changes = between(&encode(&old), &encode(&new), 10).expect("comparable");
    assert_eq!(
        changes,
        Changes {
            routers_removed: vec![
                served(old.routers[0].clone()),
                served(old.routers[1].clone())
            ],
            routers_added: vec![
                served(new.routers[0].clone()),
                served(new.routers[2].clone())
            ],
            services_removed: vec!["t@file".into()],
            services_added: vec![new.services[1].clone(), new.services[2].clone()],
            router_count: 3,
        }
    );
}

#[test]
fn a_change_elsewhere_is_not_described() {
    let old = base();
    let mut new = base();
    new.middlewares.push(Middleware {
        name: "m@file".into(),
        kind: MiddlewareKind::AddPrefix {
            prefix: "/x".into(),
        },
    });
    assert_eq!(between(&encode(&old), &encode(&new), 10), None);
    let mut new = base();
    new.entry_points.push(EntryPoint {
        name: "web".into(),
        address: ":80".into(),
        redirect: None,
    });
    assert_eq!(between(&encode(&old), &encode(&new), 10), None);
    let mut new = base();
    new.default_certificate = Some(Certificate {
        cert_pem: "C".into(),
        key_pem: "K".into(),
        names: Vec::new(),
        source: "file:x".into(),
        not_after_unix: 0,
    });
    assert_eq!(between(&encode(&old), &encode(&new), 10), None);
}

#[test]
fn too_many_changes_or_lists_out_of_order_are_not_described() {
    let old = base();
    let mut new = base();
    new.routers.push(router("d@file", "d.test", "s@file"));
    new.routers.push(router("e@file", "e.test", "s@file"));
    let (old_bytes, new_bytes) = (encode(&old), encode(&new));
    assert!(between(&old_bytes, &new_bytes, 2).is_some());
    assert_eq!(between(&old_bytes, &new_bytes, 1), None);
    // Routers and services share the budget.
    new.services.push(service("u@file", 4));
    assert_eq!(between(&old_bytes, &encode(&new), 2), None);
    // A list not in name order cannot be matched by name.
    let mut unordered = base();
    unordered.routers.swap(0, 2);
    assert_eq!(between(&encode(&unordered), &old_bytes, 10), None);
    assert_eq!(between(&old_bytes, &encode(&unordered), 10), None);
    // Nor one naming an object twice.
    let mut twice = base();
    twice
        .routers
        .insert(1, router("a@file", "x.test", "s@file"));
    assert_eq!(between(&old_bytes, &encode(&twice), 10), None);
}

#[test]
fn malformed_content_is_not_described() {
    let old = encode(&base());
    let mut new = base();
    new.routers.push(router("d@file", "d.test", "s@file"));
    let new = encode(&new);
    assert_eq!(between(&old, &new[..new.len() - 1], 10), None);
    // A router without a rule does not decode.
    let mut bare = pb::Snapshot::from(&base());
    bare.routers[1].rule = None;
    assert_eq!(between(&old, &bare.encode_to_vec(), 10), None);
}

/// Names 0..8 each absent or holding one of three definitions.
fn arb_side() -> impl Strategy<Value = (Vec<Option<u8>>, Vec<Option<u8>>)> {
    (
        proptest::collection::vec(proptest::option::of(0u8..3), 8),
        proptest::collection::vec(proptest::option::of(0u8..3), 8),
    )
}

fn build((routers, services): &(Vec<Option<u8>>, Vec<Option<u8>>)) -> Snapshot {
    snapshot(
        (0u8..)
            .zip(routers)
            .filter_map(|(i, v)| {
                v.map(|v| router(&format!("r{i}@file"), &format!("h{v}.test"), "s0@file"))
            })
            .collect(),
        (0u8..)
            .zip(services)
            .filter_map(|(i, v)| v.map(|v| service(&format!("s{i}@file"), u16::from(v) + 1)))
            .collect(),
    )
}

proptest! {
    /// Applying the changes to the old snapshot gives the new one.
    #[test]
    fn the_changes_lead_from_the_old_snapshot_to_the_new(old in arb_side(), new in arb_side()) {
        let (old, new) = (build(&old), build(&new));
        let changes = between(&encode(&old), &encode(&new), usize::MAX).expect("comparable");
        let mut routers: BTreeMap<String, Router> =
            old.routers.into_iter().map(|r| (r.name.clone(), served(r))).collect();
        for r in &changes.routers_removed {
            let gone = routers.remove(&r.name);
            prop_assert_eq!(gone.as_ref(), Some(r));
        }
        for r in changes.routers_added {
            prop_assert!(routers.insert(r.name.clone(), r).is_none());
        }
        let expected: Vec<Router> = new.routers.into_iter().map(served).collect();
        prop_assert_eq!(changes.router_count, expected.len());
        prop_assert_eq!(routers.into_values().collect::<Vec<_>>(), expected);
        let mut services: BTreeMap<String, Service> =
            old.services.into_iter().map(|s| (s.name.clone(), s)).collect();
        for name in &changes.services_removed {
            prop_assert!(services.remove(name).is_some());
        }
        for s in changes.services_added {
            prop_assert!(services.insert(s.name.clone(), s).is_none());
        }
        prop_assert_eq!(services.into_values().collect::<Vec<_>>(), new.services);
    }
}
