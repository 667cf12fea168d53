use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn build(
    name: &str,
    pairs: &[(&str, &str)],
) -> Result<(DynamicConfig, Vec<Diagnostic>), LabelError> {
    let labels = labels(pairs);
    build_instance(
        "consulcatalog",
        &Instance {
            name,
            address: "10.0.0.7",
            port: Some(8080),
            labels: &labels,
        },
        &DefaultRule::default(),
    )
}

#[test]
fn no_labels_yield_default_router_and_service() {
    let (config, warnings) = build("My_App", &[("traefik.enable", "true")]).unwrap();
    assert!(warnings.is_empty());
    let http = config.http.unwrap();
    assert_eq!(http.routers["My-App"].rule, "Host(`My-App`)");
    assert_eq!(http.routers["My-App"].service, "My-App");
    let lb = http.services["My-App"].load_balancer.as_ref().unwrap();
    assert_eq!(lb.servers[0].url, "http://10.0.0.7:8080");
}

#[test]
fn labels_are_case_insensitive_and_lists_are_comma_separated() {
    let (config, _) = build(
        "app",
        &[
            ("traefik.http.routers.Web.Rule", "Path(`/x`)"),
            ("traefik.http.routers.Web.EntryPoints", "web, websecure"),
            ("traefik.http.routers.Web.middlewares", "strip"),
            (
                "traefik.http.middlewares.strip.stripprefix.prefixes",
                "/x,/y",
            ),
            ("TRAEFIK.http.services.svc.loadbalancer.server.port", "9000"),
            (
                "traefik.http.services.svc.loadbalancer.server.scheme",
                "https",
            ),
            ("traefik.http.routers.Web.tls.domains[0].main", "a.example"),
        ],
    )
    .unwrap();
    let http = config.http.unwrap();
    let r = &http.routers["Web"];
    assert_eq!(r.entry_points, ["web", "websecure"]);
    assert_eq!(r.service, "svc");
    let tls = r.tls.as_ref().expect("tls block");
    assert_eq!(tls.domains[0].main, "a.example");
    assert_eq!(
        http.middlewares["strip"]
            .strip_prefix
            .as_ref()
            .unwrap()
            .prefixes,
        ["/x", "/y"]
    );
    let lb = http.services["svc"].load_balancer.as_ref().unwrap();
    assert_eq!(lb.servers[0].url, "https://10.0.0.7:9000");
}

#[test]
fn bad_label_names_the_label() {
    let err = build("app", &[("traefik.http.routers.r.priority", "x")]).unwrap_err();
    assert!(
        err.to_string().contains("traefik.http.routers.r.priority"),
        "{err}"
    );
    let err = build(
        "app",
        &[("traefik.http.services.s.loadbalancer.server.port", "http")],
    )
    .unwrap_err();
    assert!(err.to_string().contains("server.port"), "{err}");
    let err = build(
        "app",
        &[
            (
                "traefik.http.services.s.loadbalancer.server.url",
                "http://x",
            ),
            ("traefik.http.services.s.loadbalancer.server.port", "1"),
        ],
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot be combined"), "{err}");
}

#[test]
fn router_without_service_among_several_is_dropped() {
    let (config, warnings) = build(
        "app",
        &[
            ("traefik.http.routers.r.rule", "Path(`/`)"),
            ("traefik.http.services.a.loadbalancer.server.port", "1"),
            ("traefik.http.services.b.loadbalancer.server.port", "2"),
        ],
    )
    .unwrap();
    assert!(config.http.unwrap().routers.is_empty());
    assert_eq!(warnings.len(), 1);
}

#[test]
fn instances_merge_into_one_load_balancer_and_conflicts_are_removed() {
    let (a, _) = build("app", &[("traefik.http.routers.app.rule", "Path(`/`)")]).unwrap();
    let labels_b = labels(&[("traefik.http.routers.app.rule", "Path(`/`)")]);
    let (b, _) = build_instance(
        "p",
        &Instance {
            name: "app",
            address: "10.0.0.8",
            port: Some(8080),
            labels: &labels_b,
        },
        &DefaultRule::default(),
    )
    .unwrap();
    let (c, _) = build(
        "app",
        &[("traefik.http.routers.app.rule", "Path(`/other`)")],
    )
    .unwrap();
    let (merged, diags) = merge("p", vec![("1".into(), a.clone()), ("2".into(), b)]);
    let http = merged.http.unwrap();
    assert_eq!(
        http.services["app"]
            .load_balancer
            .as_ref()
            .unwrap()
            .servers
            .len(),
        2
    );
    assert!(diags.is_empty());
    let (merged, diags) = merge("p", vec![("1".into(), a), ("3".into(), c)]);
    assert!(merged.http.unwrap().routers.is_empty());
    assert_eq!(diags.len(), 1);
}

#[test]
fn default_rule_templates() {
    let rule = DefaultRule::parse("Host(`{{ normalize .Name }}.example.com`)").unwrap();
    assert_eq!(
        rule.render("a_b", &BTreeMap::new()),
        "Host(`a-b.example.com`)"
    );
    let rule = DefaultRule::parse(r#"Host(`{{ index .Labels "host" }}`)"#).unwrap();
    assert_eq!(
        rule.render("x", &labels(&[("host", "h.example")])),
        "Host(`h.example`)"
    );
    assert_eq!(
        DefaultRule::parse(DEFAULT_RULE).unwrap(),
        DefaultRule::default()
    );
    assert!(DefaultRule::parse("{{ .Unknown }}").is_err());
    assert_eq!(normalize("/my_app.v2"), "my-app-v2");
}
