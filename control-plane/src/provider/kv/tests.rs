use super::*;
use crate::provider::ProviderEvent;

fn dec(pairs: &[(&str, &str)]) -> Result<(DynamicConfig, Vec<Diagnostic>), DecodeError> {
    decode("etcd", "traefik", pairs.iter().copied())
}

#[test]
fn routers_services_and_middlewares_decode() {
    let (config, warnings) = dec(&[
        ("traefik/http/routers/Web/rule", "Host(`a.example`)"),
        ("traefik/http/routers/Web/entrypoints/0", "web"),
        ("traefik/http/routers/Web/entrypoints/1", "websecure"),
        ("traefik/http/routers/Web/middlewares/0", "strip"),
        ("traefik/http/routers/Web/service", "svc"),
        ("traefik/http/routers/Web/priority", "42"),
        (
            "traefik/http/services/svc/loadbalancer/servers/0/url",
            "http://10.0.0.1:80",
        ),
        (
            "traefik/http/services/svc/loadbalancer/servers/1/url",
            "http://10.0.0.2:80",
        ),
        (
            "traefik/http/services/svc/loadbalancer/servers/1/weight",
            "3",
        ),
        (
            "traefik/http/services/svc/loadBalancer/passHostHeader",
            "false",
        ),
        (
            "traefik/http/middlewares/strip/stripprefix/prefixes/0",
            "/api",
        ),
        (
            "traefik/http/middlewares/h/headers/customrequestheaders/X-Token",
            "true",
        ),
        ("other/ignored", "x"),
        ("traefik/", ""),
    ])
    .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let http = config.http.unwrap();
    let r = &http.routers["Web"];
    assert_eq!(r.rule, "Host(`a.example`)");
    assert_eq!(r.entry_points, ["web", "websecure"]);
    assert_eq!(r.middlewares, ["strip"]);
    assert_eq!(r.priority, 42);
    let lb = http.services["svc"].load_balancer.as_ref().unwrap();
    assert_eq!(lb.servers.len(), 2);
    assert_eq!(lb.servers[1].weight, Some(3));
    assert_eq!(lb.pass_host_header, Some(false));
    let strip = http.middlewares["strip"].strip_prefix.as_ref().unwrap();
    assert_eq!(strip.prefixes, ["/api"]);
    let h = http.middlewares["h"].headers.as_ref().unwrap();
    assert_eq!(h.custom_request_headers["X-Token"], "true");
}

#[test]
fn list_indexes_are_ordered_numerically_with_a_warning() {
    let mut pairs: Vec<(String, String)> = (0..12)
        .map(|i| {
            (
                format!("traefik/http/routers/r/middlewares/{i}"),
                format!("m{i}"),
            )
        })
        .collect();
    pairs.push(("traefik/http/routers/r/rule".into(), "Path(`/`)".into()));
    let (config, warnings) = decode(
        "etcd",
        "traefik",
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .unwrap();
    let names = &config.http.unwrap().routers["r"].middlewares;
    assert_eq!(names[2], "m2");
    assert_eq!(names[10], "m10");
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].message.contains("numerically"), "{warnings:?}");
}

#[test]
fn single_value_list_field_is_comma_split_and_indexed_commas_warn() {
    let (config, warnings) = dec(&[
        ("traefik/http/routers/r/entryPoints", "web, websecure"),
        ("traefik/http/routers/q/entrypoints/0", "a,b"),
    ])
    .unwrap();
    let http = config.http.unwrap();
    assert_eq!(http.routers["r"].entry_points, ["web", "websecure"]);
    assert_eq!(http.routers["q"].entry_points, ["a,b"]);
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0]
            .object
            .contains("traefik/http/routers/q/entryPoints/0")
    );
}

#[test]
fn bad_values_name_the_key() {
    let err = dec(&[("traefik/http/routers/r/priority", "high")]).unwrap_err();
    assert_eq!(err.key, "traefik/http/routers/r/priority");
    assert!(err.to_string().contains("not an integer"), "{err}");

    let err = dec(&[
        ("traefik/http/services/s/loadbalancer/servers/x/url", "u"),
        ("traefik/http/services/s/loadbalancer/servers/0/url", "u"),
    ])
    .unwrap_err();
    assert!(err.key.ends_with("servers"), "{err}");

    let err = dec(&[("traefik/http/routers/r", "x")]).unwrap_err();
    assert_eq!(err.key, "traefik/http/routers/r");

    let err = dec(&[("traefik/http//r", "x")]).unwrap_err();
    assert!(err.reason.contains("empty"), "{err}");

    let err = dec(&[
        ("traefik/http/routers/r/rule", "a"),
        ("traefik/http/routers/r/Rule", "b"),
    ])
    .unwrap_err();
    assert!(err.reason.contains("more than once"), "{err}");
}

#[test]
fn empty_root_is_an_explicitly_empty_config() {
    let (config, _) = dec(&[("elsewhere/http/routers/r/rule", "x")]).unwrap();
    let http = config.http.expect("non-nil http section");
    assert!(http.routers.is_empty() && http.services.is_empty());
}

#[test]
fn presence_marker_beside_children_and_unknown_fields_are_kept() {
    let (config, _) = dec(&[
        ("traefik/http/routers/r/rule", "Path(`/`)"),
        ("traefik/http/routers/r/tls", "true"),
        ("traefik/http/routers/r/tls/certresolver", "le"),
        ("traefik/tcp/routers/t/rule", "HostSNI(`*`)"),
    ])
    .unwrap();
    let http = config.http.unwrap();
    let tls = http.routers["r"].tls.as_ref().expect("tls block");
    assert_eq!(tls.cert_resolver.as_deref(), Some("le"));
    assert!(config.other.contains_key("tcp"));
}

#[test]
fn custom_root_key() {
    let (config, _) = decode(
        "consul",
        "/edge/",
        [("edge/http/routers/r/rule", "Path(`/`)")],
    )
    .unwrap();
    assert!(config.http.unwrap().routers.contains_key("r"));
}

#[test]
fn provider_options_use_traefik_names_and_unsupported_tls_is_a_clear_error() {
    use crate::config::StaticConfig;
    use std::path::Path;
    let text = "providers:\n  etcd:\n    endpoints: ['127.0.0.1:2379']\n    rootKey: edge\n    username: u\n    password: p\n  consul:\n    token: t\n  consulCatalog:\n    exposedByDefault: false\n    constraints: 'Tag(`a`)'\n    endpoint:\n      address: 127.0.0.1:8500\n      endpointWaitTime: 30s\n";
    let config = StaticConfig::parse(Path::new("s.yml"), text).unwrap();
    validate_config(&config.providers).unwrap();
    crate::provider::consul_catalog::validate_config(&config.providers).unwrap();
    let etcd = config.providers.etcd.as_ref().unwrap();
    assert_eq!(etcd.root_key, "edge");
    assert_eq!(
        config.providers.consul.as_ref().unwrap().root_key,
        "traefik"
    );
    let catalog = config.providers.consul_catalog.as_ref().unwrap();
    assert!(catalog.watch && !catalog.exposed_by_default);
    assert_eq!(catalog.strict_checks, ["passing", "warning"]);

    let text = "providers:\n  etcd:\n    tls:\n      ca: /ca.pem\n";
    let config = StaticConfig::parse(Path::new("s.yml"), text).unwrap();
    let err = validate_config(&config.providers).unwrap_err();
    assert!(err.contains("providers.etcd.tls"), "{err}");

    let text = "providers:\n  consulCatalog:\n    constraints: 'Tag(a)'\n";
    let config = StaticConfig::parse(Path::new("s.yml"), text).unwrap();
    let err = crate::provider::consul_catalog::validate_config(&config.providers).unwrap_err();
    assert!(err.contains("providers.consulCatalog.constraints"), "{err}");

    let text = "providers:\n  etcd:\n    endpoint: x\n";
    assert!(
        StaticConfig::parse(Path::new("s.yml"), text).is_err(),
        "unknown option rejected"
    );
}

#[test]
fn tls_certificates_options_and_stores_decode() {
    let (config, _) = dec(&[
        (
            "traefik/tls/certificates/0/certFile",
            "-----BEGIN CERTIFICATE-----\nA",
        ),
        ("traefik/tls/certificates/0/keyFile", "/etc/k.pem"),
        ("traefik/tls/certificates/0/stores/0", "default"),
        ("traefik/tls/options/modern/minVersion", "VersionTLS13"),
        (
            "traefik/tls/stores/default/defaultCertificate/certFile",
            "/c.pem",
        ),
        (
            "traefik/tls/stores/default/defaultCertificate/keyFile",
            "/k.pem",
        ),
    ])
    .unwrap();
    let tls = config.tls.expect("tls section");
    assert_eq!(tls.certificates.len(), 1, "{:?}", tls.certificates);
    assert!(tls.certificates[0].cert_file.starts_with("-----BEGIN"));
    assert_eq!(tls.certificates[0].key_file, "/etc/k.pem");
    assert!(tls.options.contains_key("modern"));
    assert!(tls.stores["default"].default_certificate.is_some());
}

#[test]
fn router_tls_as_a_plain_boolean() {
    let (config, _) = dec(&[
        ("traefik/http/routers/on/rule", "Path(`/`)"),
        ("traefik/http/routers/on/tls", "true"),
        ("traefik/http/routers/off/rule", "Path(`/`)"),
        ("traefik/http/routers/off/tls", "false"),
    ])
    .unwrap();
    let http = config.http.unwrap();
    assert!(http.routers["on"].tls.is_some(), "`tls = true` enables TLS");
    assert!(http.routers["off"].tls.is_none(), "`tls = false` does not");
    let err = dec(&[("traefik/http/routers/r/tls", "maybe")]).unwrap_err();
    assert!(
        err.to_string().contains("traefik/http/routers/r/tls"),
        "{err}"
    );
}

#[test]
fn keys_meet_case_insensitively_among_thousands_of_siblings() {
    // Two thousand routers, each given as two keys spelled differently, in an order that puts
    // the second spelling after every first one; then one service.
    let mut pairs: Vec<(String, String)> = (0..2000)
        .map(|i| {
            (
                format!("traefik/http/routers/r{i}/rule"),
                format!("Host(`h{i}.test`)"),
            )
        })
        .collect();
    pairs.extend((0..2000).map(|i| (format!("traefik/HTTP/Routers/R{i}/Service"), "svc".into())));
    pairs.push((
        "traefik/http/services/svc/loadbalancer/servers/0/url".into(),
        "http://10.0.0.1".into(),
    ));
    let decoded = |pairs: &[(String, String)]| {
        decode(
            "etcd",
            "traefik",
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    };
    let (config, warnings) = decoded(&pairs).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let http = config.http.unwrap();
    assert_eq!(http.routers.len(), 2000);
    // A name keeps the spelling first seen.
    let r = &http.routers["r1999"];
    assert_eq!(
        (r.rule.as_str(), r.service.as_str()),
        ("Host(`h1999.test`)", "svc")
    );

    // The same field of one router in a third spelling: named as set twice.
    pairs.push((
        "traefik/Http/routers/r7/RULE".into(),
        "Host(`x.test`)".into(),
    ));
    let err = decoded(&pairs).unwrap_err();
    assert_eq!(err.key, "traefik/Http/routers/r7/RULE");
    assert!(err.reason.contains("more than once"), "{err}");
}

/// The configuration sent is the one the reporter keeps (shared, not copied), and an unchanged
/// one is not sent again.
#[tokio::test]
async fn the_reporter_shares_what_it_sends_and_does_not_repeat_it() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let sink = ProviderSink::new("etcd", tx);
    let mut reporter = Reporter::default();
    let pairs = [("traefik/http/routers/a/rule", "Host(`a.test`)")];
    let decoded = || decode("etcd", "traefik", pairs).map_err(|e| e.to_string());
    assert!(reporter.report(&sink, decoded()).await);
    let Some(ProviderEvent::Update { config, .. }) = rx.recv().await else {
        panic!("no update sent");
    };
    let kept = reporter.sent.as_ref().expect("kept");
    assert!(Arc::ptr_eq(&config, kept), "the configuration was copied");
    assert!(reporter.report(&sink, decoded()).await);
    assert!(
        rx.try_recv().is_err(),
        "an unchanged configuration was sent again"
    );
}
