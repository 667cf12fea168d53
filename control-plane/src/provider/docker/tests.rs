use std::collections::BTreeMap;

use super::{
    model::{self, Binding, Container, Endpoint, Settings},
    *,
};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn settings() -> Settings {
    super::settings("providers.docker", true, None, None, None, false, false).unwrap()
}

fn on_network(name: &str, network: &str, ip: &str) -> Container {
    Container {
        id: format!("id-{name}"),
        name: name.to_owned(),
        network_mode: network.to_owned(),
        networks: BTreeMap::from([(
            network.to_owned(),
            Endpoint {
                ipv4: ip.to_owned(),
                ipv6: String::new(),
            },
        )]),
        ports: vec![80],
        ..Default::default()
    }
}

fn urls(config: &DynamicConfig, service: &str) -> Vec<String> {
    config.http.as_ref().unwrap().services[service]
        .load_balancer
        .as_ref()
        .unwrap()
        .servers
        .iter()
        .map(|s| s.url.clone())
        .collect()
}

#[test]
fn container_without_labels_gets_default_router_and_service() {
    let (config, diags) = model::build(
        NAME,
        &settings(),
        &[on_network("my_app", "net", "10.0.0.2")],
    );
    assert!(diags.is_empty(), "{diags:?}");
    let http = config.http.as_ref().unwrap();
    assert_eq!(http.routers["my-app"].rule, "Host(`my-app`)");
    assert_eq!(http.routers["my-app"].service, "my-app");
    assert_eq!(urls(&config, "my-app"), ["http://10.0.0.2:80"]);
}

#[test]
fn host_network_is_loopback_and_lowest_port_wins() {
    let mut c = on_network("web", "host", "");
    c.ports = vec![9000, 443, 8080];
    let (config, _) = model::build(NAME, &settings(), &[c]);
    assert_eq!(urls(&config, "web"), ["http://127.0.0.1:443"]);
}

#[test]
fn network_label_then_provider_network_then_first_by_name() {
    let mut c = on_network("web", "front", "10.0.1.2");
    c.networks.insert(
        "back".into(),
        Endpoint {
            ipv4: String::new(),
            ipv6: "fd00::2".into(),
        },
    );
    let (config, _) = model::build(NAME, &settings(), std::slice::from_ref(&c));
    assert_eq!(
        urls(&config, "web"),
        ["http://[fd00::2]:80"],
        "first by name: back"
    );
    let mut s = settings();
    s.network = Some("front".into());
    let (config, _) = model::build(NAME, &s, std::slice::from_ref(&c));
    assert_eq!(urls(&config, "web"), ["http://10.0.1.2:80"]);
    c.labels = labels(&[("traefik.docker.network", "back")]);
    let (config, _) = model::build(NAME, &s, std::slice::from_ref(&c));
    assert_eq!(
        urls(&config, "web"),
        ["http://[fd00::2]:80"],
        "the label overrides"
    );
}

#[test]
fn no_address_or_bad_label_costs_only_that_container() {
    let mut lost = on_network("lost", "none", "");
    lost.networks.clear();
    let mut bad = on_network("bad", "net", "10.0.0.3");
    bad.labels = labels(&[("traefik.http.services.bad.loadbalancer.server.port", "x")]);
    let good = on_network("good", "net", "10.0.0.4");
    let (config, diags) = model::build(NAME, &settings(), &[lost, bad, good]);
    assert_eq!(urls(&config, "good"), ["http://10.0.0.4:80"]);
    assert_eq!(config.http.as_ref().unwrap().routers.len(), 1);
    assert_eq!(diags.len(), 2, "{diags:?}");
    // Containers are handled in name order: bad, good, lost.
    assert!(
        diags[0]
            .message
            .contains("container `bad` is left out: label `traefik.http.services.bad")
            && diags[0].message.contains("`x` is not a port"),
        "{}",
        diags[0].message
    );
    assert_eq!(diags[0].object, "container/bad");
    assert!(
        diags[1]
            .message
            .contains("container `lost` is left out: it has no IP address"),
        "{}",
        diags[1].message
    );
}

#[test]
fn enable_exposed_by_default_and_constraints() {
    let mut s = settings();
    s.exposed_by_default = false;
    let mut on = on_network("on", "net", "10.0.0.2");
    on.labels = labels(&[("Traefik.Enable", "true"), ("team", "a")]);
    let off = on_network("off", "net", "10.0.0.3");
    let (config, _) = model::build(NAME, &s, &[on.clone(), off]);
    assert_eq!(config.http.as_ref().unwrap().routers.len(), 1);
    s.constraint = Some(constraints::Constraint::parse(r#"Label("team", "b")"#).unwrap());
    let (config, _) = model::build(NAME, &s, &[on]);
    assert!(config.http.as_ref().unwrap().routers.is_empty());
    let mut weird = on_network("weird", "net", "10.0.0.2");
    weird.labels = labels(&[("traefik.enable", "yes")]);
    let (_, diags) = model::build(NAME, &settings(), &[weird]);
    assert!(diags[0].message.contains("not a boolean"), "{diags:?}");
}

#[test]
fn unhealthy_is_left_out_unless_empty_services_are_allowed() {
    let mut c = on_network("web", "net", "10.0.0.2");
    c.health = Some("unhealthy".into());
    let (config, _) = model::build(NAME, &settings(), std::slice::from_ref(&c));
    assert!(config.http.as_ref().unwrap().routers.is_empty());
    let mut s = settings();
    s.allow_empty_services = true;
    let (config, _) = model::build(NAME, &s, std::slice::from_ref(&c));
    assert!(urls(&config, "web").is_empty());
    assert_eq!(config.http.as_ref().unwrap().routers["web"].service, "web");
    c.health = Some("healthy".into());
    let (config, _) = model::build(NAME, &settings(), &[c]);
    assert_eq!(urls(&config, "web"), ["http://10.0.0.2:80"]);
}

#[test]
fn compose_replicas_merge_into_one_service() {
    let replica = |n: u8| {
        let mut c = on_network(&format!("shop-api-{n}"), "net", &format!("10.0.0.{n}"));
        c.labels = labels(&[
            (model::COMPOSE_SERVICE, "api"),
            (model::COMPOSE_PROJECT, "shop"),
        ]);
        c
    };
    let (config, diags) = model::build(NAME, &settings(), &[replica(2), replica(1)]);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(
        urls(&config, "api-shop"),
        ["http://10.0.0.1:80", "http://10.0.0.2:80"]
    );
    assert_eq!(
        config.http.as_ref().unwrap().routers["api-shop"].rule,
        "Host(`api-shop`)"
    );
}

#[test]
fn use_bind_port_ip_follows_traefiks_table() {
    let mut s = settings();
    s.use_bind_port_ip = true;
    let bound = |container_port, host_ip: &str, host_port| Binding {
        container_port,
        host_ip: host_ip.to_owned(),
        host_port,
    };
    let case = |labels_: &[(&str, &str)], bindings: Vec<Binding>| {
        let mut c = on_network("web", "net", "10.0.0.2");
        c.labels = labels(labels_);
        c.bindings = bindings;
        let (config, _) = model::build(NAME, &s, &[c]);
        let service = config
            .http
            .as_ref()
            .unwrap()
            .services
            .keys()
            .next()
            .cloned()
            .unwrap();
        urls(&config, &service).remove(0)
    };
    let port = [("traefik.http.services.web.loadbalancer.server.port", "8080")];
    assert_eq!(case(&[], vec![]), "http://10.0.0.2:80");
    assert_eq!(case(&[], vec![bound(80, "", 8000)]), "http://10.0.0.2:80");
    assert_eq!(
        case(&[], vec![bound(80, "192.0.2.1", 8000)]),
        "http://192.0.2.1:8000"
    );
    assert_eq!(case(&port, vec![]), "http://10.0.0.2:8080");
    assert_eq!(
        case(&port, vec![bound(8080, "192.0.2.1", 9000)]),
        "http://192.0.2.1:9000"
    );
    assert_eq!(
        case(&port, vec![bound(80, "192.0.2.1", 9000)]),
        "http://10.0.0.2:8080"
    );
    assert_eq!(
        case(
            &port,
            vec![bound(81, "192.0.2.1", 9000), bound(82, "192.0.2.2", 8080)]
        ),
        "http://192.0.2.2:8080"
    );
}

#[test]
fn rfc3339_to_unix_seconds() {
    assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        unix_seconds("2026-11-28T07:57:32.004334123Z"),
        Some(1_795_852_652)
    );
    assert_eq!(
        unix_seconds("2024-02-29T12:00:00+01:00"),
        Some(1_709_204_400)
    );
    assert_eq!(unix_seconds("yesterday"), None);
}

#[test]
fn only_routing_events_trigger_a_listing() {
    let event = |typ, action: &str| EventMessage {
        typ: Some(typ),
        action: Some(action.to_owned()),
        ..Default::default()
    };
    assert!(changes_routing(&event(
        EventMessageTypeEnum::CONTAINER,
        "start"
    )));
    assert!(changes_routing(&event(
        EventMessageTypeEnum::CONTAINER,
        "health_status: healthy"
    )));
    assert!(changes_routing(&event(
        EventMessageTypeEnum::NETWORK,
        "connect"
    )));
    assert!(!changes_routing(&event(
        EventMessageTypeEnum::CONTAINER,
        "exec_start: sh"
    )));
    assert!(!changes_routing(&event(
        EventMessageTypeEnum::IMAGE,
        "pull"
    )));
}

#[test]
fn options_are_checked_at_start() {
    let config: crate::config::DockerProviderConfig =
        serde_yaml::from_str("endpoint: tcp://127.0.0.1:2375\nconstraints: 'Tag(\"x\")'\n")
            .unwrap();
    let err = DockerProvider::from_config(&config).unwrap_err();
    assert!(err.starts_with("providers.docker.constraints"), "{err}");
    let config: crate::config::DockerProviderConfig =
        serde_yaml::from_str("defaultRule: 'Host(`{{ .Foo }}`)'\n").unwrap();
    let err = DockerProvider::from_config(&config).unwrap_err();
    assert!(err.starts_with("providers.docker.defaultRule"), "{err}");
    let config: crate::config::DockerProviderConfig = serde_yaml::from_str("{}").unwrap();
    let provider = DockerProvider::from_config(&config).unwrap();
    assert_eq!(provider.endpoint.url(), "unix:///var/run/docker.sock");
    assert!(provider.watch && provider.settings.exposed_by_default);
}
