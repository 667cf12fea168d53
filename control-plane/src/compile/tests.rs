use std::collections::BTreeMap;

use switchyard_shared::{
    pb,
    snapshot::{EntryPoint, MiddlewareKind, ServiceKind},
    version::snapshot_version,
};

use super::*;
use crate::provider::file::parse_file;

fn eps() -> Vec<EntryPoint> {
    vec![
        EntryPoint {
            name: "web".into(),
            address: ":80".into(),
            redirect: None,
        },
        EntryPoint {
            name: "admin".into(),
            address: ":81".into(),
            redirect: None,
        },
    ]
}

fn compile_yaml(files: &[(&str, &str)]) -> (SharedSnapshot, Vec<Diagnostic>) {
    let mut providers = BTreeMap::new();
    for (provider, text) in files {
        let config = parse_file(std::path::Path::new("t.yml"), text).expect("valid yaml");
        providers.insert((*provider).to_owned(), config);
    }
    compile(&eps(), &providers)
}

fn errors(diags: &[Diagnostic]) -> Vec<(String, String)> {
    diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.object.clone(), d.message.clone()))
        .collect()
}

const GOOD: &str = r#"
http:
  routers:
    app:
      rule: Host(`app.example`)
      service: app
      middlewares: [strip, chain1]
    other:
      rule: PathPrefix(`/x`)
      priority: 5
      entryPoints: [admin]
      service: weighted
  middlewares:
    strip:
      stripPrefix:
        prefixes: [/api]
    add:
      addPrefix:
        prefix: /v1
    chain1:
      chain:
        middlewares: [add]
  services:
    app:
      loadBalancer:
        servers:
          - url: http://127.0.0.1:9001/
          - url: http://127.0.0.1:9002
            weight: 3
    weighted:
      weighted:
        services:
          - name: app
            weight: 2
"#;

#[test]
fn names_are_qualified_and_references_resolved() {
    let (s, diags) = compile_yaml(&[("file", GOOD)]);
    assert!(errors(&diags).is_empty(), "{diags:?}");
    let names: Vec<_> = s.routers.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["app@file", "other@file"]);
    let app = &s.routers[0];
    assert_eq!(app.service, "app@file");
    assert_eq!(app.middlewares, vec!["strip@file", "chain1@file"]);
    assert_eq!(
        app.entry_points,
        vec!["admin", "web"],
        "absent = all entry points"
    );
    assert_eq!(app.priority, "Host(`app.example`)".len() as i64);
    assert_eq!(s.routers[1].priority, 5);
    let chain = s
        .middlewares
        .iter()
        .find(|m| m.name == "chain1@file")
        .unwrap();
    assert_eq!(chain.kind, MiddlewareKind::Chain(vec!["add@file".into()]));
    let lb = s.services.iter().find(|m| m.name == "app@file").unwrap();
    match &lb.kind {
        ServiceKind::LoadBalancer(lb) => {
            assert!(lb.pass_host_header, "Traefik default");
            assert_eq!(lb.servers[0].url, "http://127.0.0.1:9001");
            assert_eq!(lb.servers[0].weight, 1);
            assert_eq!(lb.servers[1].weight, 3);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn same_name_in_two_providers_is_not_a_conflict() {
    let other = r#"
http:
  routers:
    app:
      rule: Host(`b.example`)
      service: app@file
"#;
    let (s, diags) = compile_yaml(&[("file", GOOD), ("etcd", other)]);
    assert!(errors(&diags).is_empty(), "{diags:?}");
    let r = s.routers.iter().find(|r| r.name == "app@etcd").unwrap();
    assert_eq!(r.service, "app@file");
}

#[test]
fn a_bad_router_costs_only_itself() {
    let text = r#"
http:
  routers:
    good:
      rule: Host(`a.example`)
      service: s
    badrule:
      rule: Host(`a.example`
      service: s
    nosvc:
      rule: Host(`c.example`)
      service: missing
    nomw:
      rule: Host(`d.example`)
      service: s
      middlewares: [ghost]
    noep:
      rule: Host(`e.example`)
      service: s
      entryPoints: [nope]
    norule:
      service: s
    toohigh:
      rule: Host(`f.example`)
      priority: 9223372036854775000
      service: s
  services:
    s:
      loadBalancer:
        servers: [{url: "http://127.0.0.1:1"}]
"#;
    let (s, diags) = compile_yaml(&[("file", text)]);
    let names: Vec<_> = s.routers.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["good@file"]);
    let errs = errors(&diags);
    let msg = |object: &str| {
        errs.iter()
            .find(|(o, _)| o == object)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("no error for {object}: {errs:?}"))
    };
    assert!(msg("router/badrule@file").starts_with("error while parsing rule"));
    assert_eq!(
        msg("router/nosvc@file"),
        "the service \"missing@file\" does not exist"
    );
    assert_eq!(
        msg("router/nomw@file"),
        "middleware \"ghost@file\" does not exist"
    );
    assert_eq!(
        msg("router/noep@file"),
        "no valid entryPoint for this router"
    );
    assert_eq!(msg("router/norule@file"), "rule is required");
    assert!(msg("router/toohigh@file").contains("exceeds the max user-defined priority"));
}

#[test]
fn bad_services_and_middlewares_cascade() {
    let text = r#"
http:
  routers:
    r1:
      rule: Path(`/1`)
      service: w
    r2:
      rule: Path(`/2`)
      service: ok
      middlewares: [c]
  middlewares:
    c:
      chain:
        middlewares: [bad]
    bad:
      redirectScheme:
        port: "443"
    loop1:
      chain:
        middlewares: [loop2]
    loop2:
      chain:
        middlewares: [loop1]
    unsupported:
      rateLimit:
        average: 10
  services:
    s:
      loadBalancer:
        servers: [{url: "not a url"}]
    ok:
      loadBalancer:
        servers: [{url: "http://127.0.0.1:1"}]
    w:
      weighted:
        services: [{name: s}]
    two:
      loadBalancer: {servers: []}
      weighted: {services: []}
"#;
    let (s, diags) = compile_yaml(&[("file", text)]);
    assert!(s.routers.is_empty(), "{:?}", s.routers);
    let errs = errors(&diags);
    let has = |object: &str, needle: &str| {
        assert!(
            errs.iter().any(|(o, m)| o == object && m.contains(needle)),
            "no `{needle}` for {object}: {errs:?}"
        );
    };
    has("middleware/bad@file", "must provide a target scheme");
    has(
        "middleware/c@file",
        "middleware \"bad@file\" does not exist",
    );
    has("middleware/loop1@file", "recursion");
    has(
        "middleware/unsupported@file",
        "`rateLimit` is not supported",
    );
    has("service/s@file", "servers[0].url");
    has("service/w@file", "the service \"s@file\" does not exist");
    has("service/two@file", "multi-types service not supported");
    has("router/r1@file", "the service \"w@file\" does not exist");
    has("router/r2@file", "middleware \"c@file\" does not exist");
}

#[test]
fn compile_is_deterministic() {
    let (a, _) = compile_yaml(&[("file", GOOD)]);
    let (b, _) = compile_yaml(&[("file", GOOD)]);
    let va = snapshot_version(&pb::Snapshot::from(&a));
    let vb = snapshot_version(&pb::Snapshot::from(&b));
    assert_eq!(va, vb);
    let (c, _) = compile_yaml(&[("file", &GOOD.replace("9002", "9003"))]);
    assert_ne!(va, snapshot_version(&pb::Snapshot::from(&c)));
}

#[test]
fn unsupported_options_are_warnings_not_errors() {
    let text = r#"
http:
  routers:
    r:
      rule: Path(`/`)
      service: s
      observability: {accessLogs: false}
  services:
    s:
      loadBalancer:
        servers: [{url: "http://127.0.0.1:1"}]
        healthCheck: {path: /health}
tcp:
  routers: {}
"#;
    let (s, diags) = compile_yaml(&[("file", text)]);
    assert_eq!(s.routers.len(), 1);
    assert!(errors(&diags).is_empty());
    let warnings: Vec<_> = diags.iter().map(|d| d.message.as_str()).collect();
    assert!(
        warnings.iter().any(|m| m.contains("observability")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|m| m.contains("healthCheck")),
        "{warnings:?}"
    );
    assert!(warnings.iter().any(|m| m.contains("`tcp`")), "{warnings:?}");
}

fn cert(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn indent(pem: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    pem.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tls_yaml(cert_pem: &str, key_pem: &str, extra_options: &str) -> String {
    format!(
        r#"
http:
  routers:
    secure:
      rule: Host(`a.example`)
      service: s
      tls: {{}}
    strict:
      rule: Host(`b.example`)
      service: s
      tls:
        options: modern
    ghost:
      rule: Host(`c.example`)
      service: s
      tls:
        options: nope
  services:
    s:
      loadBalancer:
        servers: [{{url: "http://127.0.0.1:1"}}]
tls:
  certificates:
    - certFile: |
{cert}
      keyFile: |
{key}
  options:
    modern:
      minVersion: VersionTLS13
      sniStrict: true
{extra_options}
"#,
        cert = indent(cert_pem, 8),
        key = indent(key_pem, 8),
    )
}

#[test]
fn tls_routers_certificates_and_options_compile() {
    let (c, k) = cert(&["a.example", "*.b.example"]);
    let text = tls_yaml(&c, &k, "");
    let (s, diags) = compile_yaml(&[("file", text.as_str())]);
    let names: Vec<_> = s.routers.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["secure@file", "strict@file"], "{diags:?}");
    assert_eq!(s.routers[0].tls.as_ref().unwrap().options, "default");
    assert_eq!(s.routers[1].tls.as_ref().unwrap().options, "modern@file");
    let errs = errors(&diags);
    assert_eq!(
        errs,
        vec![(
            "router/ghost@file".to_owned(),
            "unknown TLS options \"nope@file\"".to_owned()
        )]
    );
    assert_eq!(s.certificates.len(), 1);
    assert_eq!(s.certificates[0].names, vec!["*.b.example", "a.example"]);
    assert!(s.certificates[0].not_after_unix > 0);
    let opts: Vec<_> = s.tls_options.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(opts, vec!["default", "modern@file"]);
    assert!(s.tls_options[1].sni_strict);
}

#[test]
fn bad_certificates_and_options_cost_only_themselves() {
    let (c, _) = cert(&["a.example"]);
    let (_, other_key) = cert(&["x.example"]);
    let text = tls_yaml(
        &c,
        &other_key,
        "    weak:\n      cipherSuites: [TLS_RSA_WITH_RC4_128_SHA]\n    auth:\n      clientAuth:\n        clientAuthType: RequireAndVerifyClientCert\n",
    );
    let (s, diags) = compile_yaml(&[("file", text.as_str())]);
    assert!(s.certificates.is_empty());
    let errs = errors(&diags);
    assert!(
        errs.iter()
            .any(|(o, m)| o.starts_with("certificate/") && m.contains("does not match")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|(o, m)| o == "tlsoption/weak@file" && m.contains("not supported")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|(o, m)| o == "tlsoption/auth@file" && m.contains("needs at least one CA")),
        "{errs:?}"
    );
    // The routers do not depend on the certificate: they still compile.
    assert_eq!(s.routers.len(), 2);
}

#[test]
fn default_options_defined_twice_are_dropped() {
    let one = "tls:\n  options:\n    default:\n      minVersion: VersionTLS12\nhttp:\n  routers:\n    r:\n      rule: Path(`/`)\n      service: s\n      tls: {}\n  services:\n    s:\n      loadBalancer:\n        servers: [{url: 'http://127.0.0.1:1'}]\n";
    let two = "tls:\n  options:\n    default:\n      minVersion: VersionTLS13\n";
    let (s, diags) = compile_yaml(&[("file", one), ("etcd", two)]);
    assert!(s.tls_options.iter().all(|o| o.name != "default"));
    assert!(s.routers.is_empty(), "routers needing `default` fail too");
    assert!(
        errors(&diags)
            .iter()
            .any(|(_, m)| m.contains("defined by several providers"))
    );
}

/// One provider's configuration in a small universe: routers `r0..r4`, services `s0..s2`,
/// middlewares `m0..m1` and TLS options `o`, each absent or in one of a few definitions (some
/// invalid, some with warnings, some referring to what may be absent, or to the other provider).
#[derive(Clone, Debug)]
struct Universe {
    routers: Vec<Option<(u8, u8, u8, u8)>>,
    services: Vec<Option<u8>>,
    middlewares: Vec<Option<u8>>,
    tls_options: Option<u8>,
}

/// One change between two compiles: a router, service or middleware (by index) redefined or
/// removed, the TLS options, or the entry points (all or only `web`).
#[derive(Clone, Debug)]
enum Edit {
    Router(usize, Option<(u8, u8, u8, u8)>),
    Service(usize, Option<u8>),
    Middleware(usize, Option<u8>),
    TlsOptions(Option<u8>),
    EntryPoints(bool),
}

fn arb_router() -> impl proptest::strategy::Strategy<Value = Option<(u8, u8, u8, u8)>> {
    proptest::option::of((0u8..4, 0u8..4, 0u8..3, 0u8..5))
}

fn arb_universe() -> impl proptest::strategy::Strategy<Value = Universe> {
    use proptest::prelude::*;
    (
        proptest::collection::vec(arb_router(), 5),
        proptest::collection::vec(proptest::option::of(0u8..2), 3),
        proptest::collection::vec(proptest::option::of(0u8..2), 2),
        proptest::option::of(0u8..2),
    )
        .prop_map(|(routers, services, middlewares, tls_options)| Universe {
            routers,
            services,
            middlewares,
            tls_options,
        })
}

fn arb_edit() -> impl proptest::strategy::Strategy<Value = (bool, Edit)> {
    use proptest::prelude::*;
    let edit = prop_oneof![
        (0usize..5, arb_router()).prop_map(|(i, r)| Edit::Router(i, r)),
        (0usize..3, proptest::option::of(0u8..2)).prop_map(|(i, s)| Edit::Service(i, s)),
        (0usize..2, proptest::option::of(0u8..2)).prop_map(|(i, m)| Edit::Middleware(i, m)),
        proptest::option::of(0u8..2).prop_map(Edit::TlsOptions),
        proptest::bool::ANY.prop_map(Edit::EntryPoints),
    ];
    (proptest::bool::ANY, edit)
}

impl Universe {
    fn apply(&mut self, edit: &Edit) {
        match edit {
            Edit::Router(i, r) => self.routers[*i] = *r,
            Edit::Service(i, s) => self.services[*i] = *s,
            Edit::Middleware(i, m) => self.middlewares[*i] = *m,
            Edit::TlsOptions(o) => self.tls_options = *o,
            Edit::EntryPoints(_) => {}
        }
    }

    fn yaml(&self) -> String {
        let mut y = String::from("http:\n  routers:\n");
        for (i, r) in self.routers.iter().enumerate() {
            let Some((rule, service, mw, extra)) = r else {
                continue;
            };
            y += &format!("    r{i}:\n");
            y += match rule {
                0 => "      rule: Host(`a.test`)\n",
                1 => "      rule: Host(`b.test`) && PathPrefix(`/x`)\n",
                2 => "      rule: PathPrefix(`/`)\n",
                _ => "      rule: Host(`unclosed\n",
            };
            y += match service {
                0 => "      service: s0\n",
                1 => "      service: s1\n",
                2 => "      service: s2@other\n",
                _ => "      service: s2\n",
            };
            y += match mw {
                0 => "",
                1 => "      middlewares: [m0]\n",
                _ => "      middlewares: [m1, m0@other]\n",
            };
            y += match extra {
                0 => "",
                1 => "      entryPoints: [admin]\n",
                2 => "      entryPoints: [web, nowhere]\n      unknownField: 1\n",
                3 => "      tls: {}\n",
                _ => "      tls:\n        options: o\n",
            };
        }
        y += "  services:\n";
        for (i, s) in self.services.iter().enumerate() {
            let Some(port) = s else { continue };
            y += &format!(
                "    s{i}:\n      loadBalancer:\n        servers:\n          - url: http://127.0.0.1:{}\n",
                8000 + u16::from(*port)
            );
        }
        y += "  middlewares:\n";
        for (i, m) in self.middlewares.iter().enumerate() {
            let Some(prefix) = m else { continue };
            y += &format!("    m{i}:\n      stripPrefix:\n        prefixes: [/p{prefix}]\n");
        }
        if let Some(o) = self.tls_options {
            let version = if o == 0 {
                "VersionTLS12"
            } else {
                "VersionTLS13"
            };
            y += &format!("tls:\n  options:\n    o:\n      minVersion: {version}\n");
        }
        y
    }
}

fn providers(file: &Universe, other: &Universe) -> BTreeMap<String, DynamicConfig> {
    [("file", file), ("other", other)]
        .into_iter()
        .map(|(name, u)| {
            let config = parse_file(std::path::Path::new("t.yml"), &u.yaml()).expect("valid yaml");
            (name.to_owned(), config)
        })
        .collect()
}

proptest::proptest! {
    /// Whatever changed between compiles (a definition, a reference appearing or vanishing, TLS
    /// options, entry points), the compiler that reuses routers gives what a fresh compile gives.
    #[test]
    fn a_reusing_compile_equals_a_fresh_one(
        start in (arb_universe(), arb_universe()),
        edits in proptest::collection::vec(arb_edit(), 1..12),
    ) {
        let (mut file, mut other) = start;
        let mut all_entry_points = true;
        let mut compiler = Compiler::default();
        let mut check = |file: &Universe, other: &Universe, all: bool| {
            let providers = providers(file, other);
            let entry_points = if all { eps() } else { eps()[..1].to_vec() };
            let reused = compiler.compile(&entry_points, &providers);
            let fresh = compile(&entry_points, &providers);
            proptest::prop_assert_eq!(reused, fresh);
            Ok(())
        };
        check(&file, &other, all_entry_points)?;
        for (in_file, edit) in &edits {
            if let Edit::EntryPoints(all) = edit {
                all_entry_points = *all;
            }
            if *in_file { file.apply(edit) } else { other.apply(edit) }
            check(&file, &other, all_entry_points)?;
        }
    }
}

#[test]
fn unchanged_routers_are_reused_and_changed_ones_recompiled() {
    let one = |service: &str, b_rule: &str| {
        let yaml = format!(
            "http:\n  routers:\n    a:\n      rule: Host(`a.test`)\n      service: {service}\n    b:\n      rule: {b_rule}\n      service: s\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: http://127.0.0.1:1\n"
        );
        let config = parse_file(std::path::Path::new("t.yml"), &yaml).expect("valid yaml");
        BTreeMap::from([("file".to_owned(), config)])
    };
    let mut compiler = Compiler::default();
    let (first, _) = compiler.compile(&eps(), &one("s", "Host(`b.test`)"));
    // Parsed again (new allocations), equal: reused.
    let (same, _) = compiler.compile(&eps(), &one("s", "Host(`b.test`)"));
    assert!(Arc::ptr_eq(&first.routers[0], &same.routers[0]));
    assert!(Arc::ptr_eq(&first.routers[1], &same.routers[1]));
    // b's rule changed: only b is compiled again.
    let (changed, _) = compiler.compile(&eps(), &one("s", "Host(`c.test`)"));
    assert!(Arc::ptr_eq(&first.routers[0], &changed.routers[0]));
    assert!(!Arc::ptr_eq(&first.routers[1], &changed.routers[1]));
    assert_eq!(changed.routers[1].rule_text, "Host(`c.test`)");
    // a's service vanishes: a is left out with its error, as a fresh compile does…
    let (dangling, diags) = compiler.compile(&eps(), &one("ghost", "Host(`c.test`)"));
    assert_eq!(dangling.routers.len(), 1);
    assert_eq!(
        errors(&diags),
        [(
            "router/a@file".to_owned(),
            "the service \"ghost@file\" does not exist".to_owned()
        )]
    );
    // …and other entry points empty the cache.
    let (other_eps, _) = compiler.compile(&eps()[..1], &one("s", "Host(`c.test`)"));
    assert!(!Arc::ptr_eq(&changed.routers[1], &other_eps.routers[1]));
    assert_eq!(other_eps.routers[1].entry_points, ["web"]);
}
