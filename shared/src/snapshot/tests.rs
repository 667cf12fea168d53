use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::version::snapshot_version;

fn arb_matcher() -> impl Strategy<Value = Matcher> {
    let s = "[a-z/.*]{1,8}";
    prop_oneof![
        s.prop_map(Matcher::Host),
        s.prop_map(Matcher::HostRegexp),
        s.prop_map(Matcher::Path),
        s.prop_map(Matcher::PathPrefix),
        s.prop_map(Matcher::PathRegexp),
        s.prop_map(Matcher::Method),
        (s, s).prop_map(|(k, v)| Matcher::Header(Box::new((k, v)))),
        (s, s).prop_map(|(k, v)| Matcher::HeaderRegexp(Box::new((k, v)))),
        (s, proptest::option::of(s)).prop_map(|(k, v)| Matcher::Query(Box::new((k, v)))),
        (s, proptest::option::of(s)).prop_map(|(k, v)| Matcher::QueryRegexp(Box::new((k, v)))),
        s.prop_map(Matcher::ClientIp),
    ]
}

fn arb_expr() -> impl Strategy<Value = Expr> {
    arb_matcher()
        .prop_map(Expr::Matcher)
        .prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 1..4).prop_map(Expr::All),
                proptest::collection::vec(inner.clone(), 1..4).prop_map(Expr::Any),
                inner.prop_map(|e| Expr::Not(Box::new(e))),
            ]
        })
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    let router =
        (arb_expr(), "[a-z]{1,6}", any::<i64>()).prop_map(|(rule, name, priority)| Router {
            name: format!("{name}@file"),
            provider: "file".into(),
            entry_points: vec!["web".into()],
            rule,
            priority,
            middlewares: vec!["m@file".into()],
            service: "s@file".into(),
            rule_text: format!("rule of {name}"),
            tls: (priority % 2 == 0).then(|| RouterTls {
                options: "default".into(),
            }),
        });
    let service = ("[a-z]{1,6}", 0u32..5).prop_map(|(name, weight)| Service {
        name: format!("{name}@file"),
        kind: ServiceKind::LoadBalancer(LoadBalancer {
            servers: vec![Server {
                url: "http://127.0.0.1:1".into(),
                weight,
            }],
            pass_host_header: weight % 2 == 0,
        }),
    });
    let middleware = prop_oneof![
        Just(MiddlewareKind::StripPrefix {
            prefixes: vec!["/a".into()]
        }),
        Just(MiddlewareKind::AddPrefix {
            prefix: "/b".into()
        }),
        Just(MiddlewareKind::Headers {
            request: vec![("X-A".into(), "1".into())],
            response: vec![("X-B".into(), String::new())],
        }),
        Just(MiddlewareKind::RedirectScheme {
            scheme: "https".into(),
            port: Some("8443".into()),
            permanent: true,
        }),
        Just(MiddlewareKind::Chain(vec!["x@file".into()])),
    ]
    .prop_map(|kind| Middleware {
        name: "m@file".into(),
        kind,
    });
    (
        proptest::collection::vec(router, 0..5),
        proptest::collection::vec(service, 0..5),
        proptest::collection::vec(middleware, 0..3),
    )
        .prop_map(|(routers, services, middlewares)| Snapshot {
            entry_points: vec![EntryPoint {
                name: "web".into(),
                address: ":8080".into(),
                redirect: Some(EntryPointRedirect {
                    to: "websecure".into(),
                    port: "8443".into(),
                    scheme: "https".into(),
                    permanent: true,
                }),
            }],
            routers,
            services,
            middlewares,
            certificates: vec![Certificate {
                cert_pem: "C".into(),
                key_pem: "K".into(),
                names: vec!["a.example".into()],
                source: "file:x".into(),
                not_after_unix: 7,
            }],
            tls_options: vec![TlsOptions {
                name: "default".into(),
                min_version: "VersionTLS12".into(),
                client_auth: Some(ClientAuth {
                    ca_pems: vec!["CA".into()],
                    client_auth_type: "RequireAndVerifyClientCert".into(),
                }),
                ..Default::default()
            }],
            default_certificate: None,
            http_challenges: vec![AcmeHttpChallenge {
                token: "tok".into(),
                key_authorization: "tok.thumb".into(),
                domain: "a.example".into(),
                entry_point: "web".into(),
            }],
            tls_challenges: vec![AcmeTlsChallenge {
                domain: "a.example".into(),
                cert_pem: "C".into(),
                key_pem: "K".into(),
            }],
        })
}

proptest! {
    #[test]
    fn encoding_the_domain_snapshot_equals_encoding_its_wire_form(snapshot in arb_snapshot()) {
        let mut snapshot = snapshot;
        // Defaults prost leaves out, and a default certificate.
        if let Some(r) = snapshot.routers.first_mut() {
            r.priority = 0;
            r.provider.clear();
            r.rule_text.clear();
            r.entry_points.clear();
        }
        snapshot.default_certificate = snapshot.certificates.first().cloned();
        prop_assert_eq!(snapshot.encode(), pb::Snapshot::from(&snapshot).encode_to_vec());
    }
}

proptest! {
    #[test]
    fn snapshot_round_trips_through_the_wire(snapshot in arb_snapshot()) {
        let wire = pb::Snapshot::from(&snapshot);
        let back = Snapshot::try_from(wire).expect("valid snapshot decodes");
        prop_assert_eq!(back, snapshot);
    }

    #[test]
    fn decoding_the_bytes_equals_converting_the_wire_form(snapshot in arb_snapshot()) {
        let wire = pb::Snapshot::from(&snapshot);
        let decoded = Snapshot::decode(&wire.encode_to_vec()).expect("valid snapshot decodes");
        prop_assert_eq!(&decoded, &snapshot);
        prop_assert_eq!(decoded, Snapshot::try_from(wire).expect("valid snapshot converts"));
    }

    #[test]
    fn decoding_to_serve_leaves_out_only_the_text_for_humans(snapshot in arb_snapshot()) {
        let bytes = pb::Snapshot::from(&snapshot).encode_to_vec();
        let mut expected = snapshot;
        for r in &mut expected.routers {
            r.provider.clear();
            r.rule_text.clear();
        }
        prop_assert_eq!(Snapshot::decode_to_serve(&bytes).expect("valid snapshot decodes"), expected);
    }

    #[test]
    fn version_is_a_function_of_content(snapshot in arb_snapshot()) {
        let a = snapshot_version(&pb::Snapshot::from(&snapshot));
        let b = snapshot_version(&pb::Snapshot::from(&snapshot.clone()));
        prop_assert_eq!(a, b);
    }
}

#[test]
fn missing_rule_names_the_router() {
    let wire = pb::Snapshot {
        routers: vec![pb::Router {
            name: "web@file".into(),
            service: "s@file".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    // Decoding the bytes checks each element as the conversion does.
    for err in [
        Snapshot::decode(&wire.encode_to_vec()).unwrap_err(),
        Snapshot::decode_to_serve(&wire.encode_to_vec()).unwrap_err(),
        Snapshot::try_from(wire).unwrap_err(),
    ] {
        assert_eq!(err.to_string(), "router web@file: has no rule");
    }
}

#[test]
fn decode_skips_unknown_fields_and_rejects_malformed_ones() {
    let snapshot = Snapshot {
        entry_points: vec![EntryPoint {
            name: "web".into(),
            address: ":80".into(),
            redirect: None,
        }],
        default_certificate: Some(Certificate {
            cert_pem: "C".into(),
            key_pem: "K".into(),
            names: vec!["a.example".into()],
            source: "file:x".into(),
            not_after_unix: 7,
        }),
        ..Default::default()
    };
    let mut bytes = pb::Snapshot::from(&snapshot).encode_to_vec();
    // Field 15, a varint: from a newer controller.
    prost::encoding::encode_key(15, prost::encoding::WireType::Varint, &mut bytes);
    prost::encoding::encode_varint(3, &mut bytes);
    assert_eq!(Snapshot::decode(&bytes).unwrap(), snapshot);

    let err = Snapshot::decode(&bytes[..bytes.len() - 4]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("content does not decode: field"),
        "{err}"
    );
    // A known list field that is not a message.
    let mut wrong = Vec::new();
    prost::encoding::encode_key(2, prost::encoding::WireType::Varint, &mut wrong);
    prost::encoding::encode_varint(1, &mut wrong);
    assert_eq!(
        Snapshot::decode(&wrong).unwrap_err().to_string(),
        "content does not decode: field 2 is not length-delimited"
    );
}

#[test]
fn wrong_arity_is_rejected() {
    let expr = pb::Expr {
        kind: Some(pb::expr::Kind::Matcher(pb::Matcher {
            kind: pb::MatcherKind::Header as i32,
            args: vec!["X".into()],
        })),
    };
    assert_eq!(
        expr_from_pb(&expr, 0).unwrap_err(),
        "Header takes 2 arguments, got 1"
    );
}

#[test]
fn deep_rules_are_rejected() {
    let mut e = pb::Expr {
        kind: Some(pb::expr::Kind::Matcher(pb::Matcher {
            kind: pb::MatcherKind::Path as i32,
            args: vec!["/".into()],
        })),
    };
    for _ in 0..100 {
        e = pb::Expr {
            kind: Some(pb::expr::Kind::Not(Box::new(e))),
        };
    }
    assert!(expr_from_pb(&e, 0).is_err());
}
