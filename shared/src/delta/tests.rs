use std::{collections::HashMap, sync::Arc};

use proptest::prelude::*;

use super::*;
use crate::{
    chunk::check,
    rule::{Expr, Matcher},
    snapshot::{EntryPoint, LoadBalancer, Router, Server, Service, ServiceKind, Snapshot},
    version::{content_check, encoded_version},
};

/// Routers `r<i>` (on host `h<v>`) and services `s<i>` (on port `v`) for every present entry.
fn content(routers: &[Option<u8>], services: &[Option<u8>]) -> Vec<u8> {
    content_with(None, routers, services)
}

/// [`content`] with an entry point on port `80 + v` (a field before the lists that a router or
/// service change leaves alone).
fn content_with(entry: Option<u8>, routers: &[Option<u8>], services: &[Option<u8>]) -> Vec<u8> {
    let snapshot = Snapshot {
        entry_points: entry
            .map(|v| EntryPoint {
                name: "web".into(),
                address: format!(":{}", 80 + u16::from(v)),
                redirect: None,
            })
            .into_iter()
            .collect(),
        routers: (0..)
            .zip(routers)
            .filter_map(|(i, v): (u32, _)| {
                v.map(|v| {
                    Arc::new(Router {
                        name: format!("r{i:03}@file"),
                        provider: "file".into(),
                        entry_points: vec!["web".into()],
                        rule: Expr::Matcher(Matcher::Host(format!("h{v}.test"))),
                        priority: 10,
                        middlewares: Vec::new(),
                        service: "s000@file".into(),
                        rule_text: format!("Host(`h{v}.test`)"),
                        tls: None,
                    })
                })
            })
            .collect(),
        services: (0..)
            .zip(services)
            .filter_map(|(i, v): (u32, _)| {
                v.map(|v| Service {
                    name: format!("s{i:03}@file"),
                    kind: ServiceKind::LoadBalancer(LoadBalancer {
                        servers: vec![Server {
                            url: format!("http://127.0.0.1:{}", 8000 + u16::from(v)),
                            weight: 1,
                        }],
                        pass_host_header: true,
                    }),
                })
            })
            .collect(),
        ..Default::default()
    };
    snapshot.encode()
}

fn inserted(parts: &[pb::DeltaPart]) -> usize {
    parts
        .iter()
        .map(|p| match &p.kind {
            Some(Kind::Insert(bytes)) => bytes.len(),
            _ => 0,
        })
        .sum()
}

fn side() -> impl Strategy<Value = (Vec<Option<u8>>, Vec<Option<u8>>)> {
    (
        proptest::collection::vec(proptest::option::of(0u8..4), 0..24),
        proptest::collection::vec(proptest::option::of(0u8..4), 0..8),
    )
}

proptest! {
    /// Whatever the two snapshots, the delta rebuilds the new content byte for byte.
    #[test]
    fn a_delta_rebuilds_the_new_content_exactly(old in side(), new in side()) {
        let (old, new) = (content(&old.0, &old.1), content(&new.0, &new.1));
        let parts = diff(&old, &new, usize::MAX).expect("both parse");
        prop_assert_eq!(apply(&old, &parts).expect("fits its base"), new.clone());
        // The index the rebuild gives is the one a walk of the new content finds, and a base
        // given it (as a proxy keeps it for the next delta) is the base a walk makes.
        let (_, index) = Base::of_content(&old, None)
            .expect("parses")
            .pieces(&parts)
            .expect("fits its base");
        let walked = Index::of(&new).expect("parses");
        prop_assert_eq!(&index, &walked);
        prop_assert_eq!(Base::of_content(&new, Some(index)).expect("parses").index, walked);
    }
}

/// [`diff`] as it was before the field after the last one copied was tried first: every field
/// of `new` looked up in a map of the base's fields by their bytes.
fn diff_by_map(base: &[u8], new: &[u8]) -> Vec<pb::DeltaPart> {
    let base_fields = Index::of(base).expect("parses").fields;
    let new_fields = Index::of(new).expect("parses").fields;
    let mut index: HashMap<&[u8], u32> = HashMap::new();
    for (i, field) in (0u32..).zip(&base_fields) {
        index.entry(&base[field.span()]).or_insert(i);
    }
    let mut parts: Vec<pb::DeltaPart> = Vec::new();
    for field in new_fields {
        let bytes = &new[field.span()];
        match (
            index.get(bytes),
            parts.last_mut().and_then(|p| p.kind.as_mut()),
        ) {
            (Some(&i), Some(Kind::Copy(run))) if run.start + run.count == i => run.count += 1,
            (Some(&i), _) => parts.push(pb::DeltaPart {
                kind: Some(Kind::Copy(pb::FieldRun { start: i, count: 1 })),
            }),
            (None, Some(Kind::Insert(buf))) => buf.extend_from_slice(bytes),
            (None, _) => parts.push(pb::DeltaPart {
                kind: Some(Kind::Insert(bytes.to_vec())),
            }),
        }
    }
    parts
}

proptest! {
    /// The parts are those a map of every base field gives (field names are unique, so each
    /// field has one place in the base), whether the fields not found in order are few
    /// (scanned for) or many (looked up in a map).
    #[test]
    fn a_delta_is_what_a_map_of_the_base_gives(old in side(), new in side()) {
        let (old, new) = (content(&old.0, &old.1), content(&new.0, &new.1));
        prop_assert_eq!(diff(&old, &new, usize::MAX).expect("both parse"), diff_by_map(&old, &new));
    }
}

#[test]
fn many_fields_out_of_place_are_found_through_the_map() {
    // Every second router changed (inserted), and the services renamed into routers' places:
    // more fields than `SCANS` are not where the last copy leaves off.
    let old = content(&[Some(0); 48], &[Some(0); 8]);
    let changed: Vec<Option<u8>> = (0..48).map(|i| Some(u8::from(i % 2 == 0))).collect();
    let new = content(&changed, &[Some(1); 8]);
    let parts = diff(&old, &new, usize::MAX).expect("both parse");
    assert_eq!(parts, diff_by_map(&old, &new));
    assert_eq!(apply(&old, &parts).expect("fits"), new);
}

proptest! {
    /// The changes read from a delta's parts are the changes found by comparing the rebuilt
    /// content with its base, whatever the two snapshots and the limit.
    #[test]
    fn the_changes_a_delta_makes_are_those_a_comparison_finds(
        old in side(),
        new in side(),
        entries in (proptest::option::of(0u8..2), proptest::option::of(0u8..2)),
        max_changed in prop_oneof![Just(usize::MAX), 0usize..12],
    ) {
        let old = content_with(entries.0, &old.0, &old.1);
        let new = content_with(entries.1, &new.0, &new.1);
        let parts = diff(&old, &new, usize::MAX).expect("both parse");
        let base = Base::of_content(&old, None).expect("parses");
        prop_assert_eq!(
            base.changes(&parts, max_changed),
            changes::between(&old, &new, max_changed)
        );
    }
}

#[test]
fn parts_that_no_diff_makes_give_no_changes() {
    let copy = |start, count| pb::DeltaPart {
        kind: Some(Kind::Copy(pb::FieldRun { start, count })),
    };
    let insert = |bytes: &[u8]| pb::DeltaPart {
        kind: Some(Kind::Insert(bytes.to_vec())),
    };
    // Fields: the entry point, routers r000..r003, service s000.
    let old = content_with(Some(0), &[Some(0), Some(0), Some(0), Some(0)], &[Some(0)]);
    let base = Base::of_content(&old, None).expect("parses");
    let field = |i: usize| &old[base.index.fields[i].span()];
    let changes = |parts: &[pb::DeltaPart]| base.changes(parts, usize::MAX);

    // Router r001 removed: one router gone, nothing added.
    let removed = changes(&[copy(0, 2), copy(3, 3)]).expect("a diff's parts");
    assert_eq!(removed.routers_removed.len(), 1);
    assert_eq!(removed.routers_removed[0].name, "r001@file");
    assert!(removed.routers_added.is_empty() && removed.services_removed.is_empty());
    assert_eq!(removed.router_count, 3);
    // A router copied twice (a duplicate name), routers out of order, a router inserted again
    // out of its place, the entry point inserted or left out: not what a diff of two
    // snapshots gives.
    assert_eq!(changes(&[copy(0, 3), copy(2, 4)]), None);
    assert_eq!(
        changes(&[copy(0, 1), copy(2, 1), copy(1, 1), copy(3, 3)]),
        None
    );
    assert_eq!(changes(&[copy(0, 4), insert(field(1)), copy(4, 2)]), None);
    assert_eq!(changes(&[insert(field(0)), copy(1, 5)]), None);
    assert_eq!(changes(&[copy(1, 5)]), None);
    // Parts that do not fit the base at all.
    assert_eq!(changes(&[copy(0, 7)]), None);
    assert_eq!(changes(&[pb::DeltaPart { kind: None }]), None);
    assert_eq!(changes(&[copy(0, 6), insert(&[0xff])]), None);
}

#[test]
fn one_changed_router_travels_alone() {
    let mut routers = vec![Some(0u8); 1000];
    let old = content(&routers, &[Some(1)]);
    routers[500] = Some(1);
    let new = content(&routers, &[Some(1)]);
    let parts = diff(&old, &new, usize::MAX).expect("both parse");
    // Routers 0..500 copied, router 500 inserted, routers 501.. and the service copied.
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert!(matches!(
        parts[0].kind,
        Some(Kind::Copy(pb::FieldRun {
            start: 0,
            count: 500
        }))
    ));
    assert!(matches!(
        parts[2].kind,
        Some(Kind::Copy(pb::FieldRun {
            start: 501,
            count: 500
        }))
    ));
    let one_router = inserted(&parts);
    assert!(one_router < 120, "{one_router} bytes inserted");
    assert!(old.len() > 1000 * one_router / 2);
    assert_eq!(apply(&old, &parts).expect("fits"), new);
    // Over the budget: no delta.
    assert_eq!(diff(&old, &new, one_router - 1), None);
}

#[test]
fn a_delta_that_does_not_fit_its_base_is_refused_with_the_part() {
    let old = content(&[Some(0), Some(1)], &[Some(0)]);
    let copy = |start, count| pb::DeltaPart {
        kind: Some(Kind::Copy(pb::FieldRun { start, count })),
    };
    assert_eq!(
        apply(&old, &[copy(0, 2), copy(2, 2)]).unwrap_err(),
        "delta part 1 copies fields 2..+2 of a base that has 3"
    );
    assert_eq!(
        apply(&old, &[copy(u32::MAX, 2)]).unwrap_err(),
        "delta part 0 copies fields 4294967295..+2 of a base that has 3"
    );
    assert!(apply(&old, &[copy(0, 0)]).is_err());
    assert_eq!(
        apply(&old, &[pb::DeltaPart { kind: None }]).unwrap_err(),
        "delta part 0 is empty"
    );
    assert!(apply(&old[..old.len() - 1], &[copy(0, 1)]).is_err());
    // Inserted bytes that are not whole fields (a length of 5, two bytes follow).
    let torn = pb::DeltaPart {
        kind: Some(Kind::Insert(vec![0x0a, 0x05, 0x01, 0x02])),
    };
    let err = apply(&old, &[copy(0, 3), torn]).unwrap_err();
    assert!(err.starts_with("delta part 1 inserts field 1"), "{err}");
}

/// The header of `content` as a controller publishes it (generation 3).
fn versioned(content: &[u8]) -> pb::VersionedSnapshot {
    pb::VersionedSnapshot {
        version: encoded_version(content),
        generation: 3,
        created_at_unix_ms: 1_700_000_000_000,
        snapshot: None,
    }
}

#[test]
fn a_rebuilt_snapshot_is_checked_like_a_received_one() {
    let old = content(&[Some(0), Some(1), Some(2)], &[Some(0)]);
    let new = content(&[Some(0), Some(3), Some(2)], &[Some(0)]);
    let base = chunk::encode_with_content(&versioned(&old), &old);
    let header = versioned(&new);
    let delta = pb::SnapshotDelta {
        base_version: versioned(&old).version,
        version: header.version.clone(),
        generation: 4,
        created_at_unix_ms: 1_700_000_000_001,
        parts: diff(&old, &new, usize::MAX).expect("both parse"),
        content_xxh3: None,
    };
    let rebuilt = rebuild(&delta, &base).expect("rebuilds");
    assert_eq!(rebuilt.version, header.version);
    let checked = check(&rebuilt.version, &rebuilt.bytes).expect("hashes to its version");
    assert_eq!(checked.generation, 4);
    assert_eq!(&rebuilt.bytes[checked.content], new.as_slice());
    // Against another base, the same delta rebuilds content that fails the check.
    let other = content(&[Some(1), Some(1), Some(2)], &[Some(0)]);
    let wrong = rebuild(
        &delta,
        &chunk::encode_with_content(&versioned(&other), &other),
    )
    .expect("fits: same shape");
    assert!(
        check(&wrong.version, &wrong.bytes)
            .unwrap_err()
            .contains("does not match its content")
    );
}

#[test]
fn a_rebuild_is_checked_against_the_deltas_quick_check_when_it_has_one() {
    let old = content(&[Some(0), Some(1), Some(2)], &[Some(0)]);
    let new = content(&[Some(0), Some(3), Some(2)], &[Some(0)]);
    let other = content(&[Some(1), Some(1), Some(2)], &[Some(0)]);
    let delta = pb::SnapshotDelta {
        base_version: versioned(&old).version,
        version: versioned(&new).version,
        generation: 4,
        created_at_unix_ms: 1_700_000_000_001,
        parts: diff(&old, &new, usize::MAX).expect("both parse"),
        content_xxh3: Some(content_check(&new)),
    };
    let rebuild_on = |base: &[u8], delta: &pb::SnapshotDelta| {
        let encoded = chunk::encode_with_content(&versioned(base), base);
        Base::of(&encoded, None)
            .and_then(|b| b.rebuild(delta))
            .expect("fits: same shape")
    };
    let rebuilt = rebuild_on(&old, &delta);
    assert_eq!(rebuilt.content_xxh3, Some(content_check(&new)));
    let checked = rebuilt.check().expect("matches the quick check");
    assert_eq!(checked.version, delta.version);
    assert_eq!(checked.generation, 4);
    assert_eq!(&rebuilt.snapshot.bytes[checked.content], new.as_slice());
    // Against another base, the content differs and so does its quick check.
    let err = rebuild_on(&other, &delta).check().unwrap_err();
    assert!(err.contains("its quick check is"), "{err}");
    // A quick check that is not the content's refuses the right content too.
    let wrong_check = pb::SnapshotDelta {
        content_xxh3: Some(content_check(&new) ^ 1),
        ..delta.clone()
    };
    let err = rebuild_on(&old, &wrong_check).check().unwrap_err();
    assert!(err.contains("does not match its content"), "{err}");
    // Without one, the version is what the content is checked against.
    let unchecked = pb::SnapshotDelta {
        content_xxh3: None,
        ..delta
    };
    let err = rebuild_on(&other, &unchecked).check().unwrap_err();
    assert!(err.contains("hashes to"), "{err}");
    rebuild_on(&old, &unchecked)
        .check()
        .expect("hashes to its version");
}

#[test]
fn a_kept_index_made_for_other_content_is_not_used() {
    let old = content(&[Some(0), Some(1), Some(2)], &[Some(0)]);
    let new = content(&[Some(0), Some(3), Some(2)], &[Some(0)]);
    let parts = diff(&old, &new, usize::MAX).expect("both parse");
    // An index of other content (three routers fewer): the base is walked instead.
    let other = content(&[], &[Some(0)]);
    let stale = Index::of(&other).expect("parses");
    assert!(!stale.spans(&old));
    let base = Base::of_content(&old, Some(stale)).expect("parses");
    assert_eq!(base.index, Index::of(&old).expect("parses"));
    assert_eq!(base.pieces(&parts).expect("fits").0.concat(), new);
}
