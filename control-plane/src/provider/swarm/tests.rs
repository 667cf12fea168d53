use std::collections::BTreeMap;

use super::*;

fn settings() -> Settings {
    docker::settings("providers.swarm", true, None, None, None, false, false).unwrap()
}

fn service(name: &str, labels: &[(&str, &str)]) -> SwarmService {
    SwarmService {
        name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        vip_mode: true,
        vip: Some("10.0.1.2".into()),
        tasks: vec![
            ("web.1".into(), Some("10.0.1.3".into())),
            ("web.2".into(), Some("10.0.1.4".into())),
        ],
        network: Some("backend".into()),
    }
}

fn urls(config: &DynamicConfig, name: &str) -> Vec<String> {
    config.http.as_ref().unwrap().services[name]
        .load_balancer
        .as_ref()
        .unwrap()
        .servers
        .iter()
        .map(|s| s.url.clone())
        .collect()
}

const PORT: (&str, &str) = ("traefik.http.services.web.loadbalancer.server.port", "8080");

#[test]
fn one_server_per_running_task_merged_into_the_service() {
    let (config, diags) = build(&settings(), &[service("web", &[PORT])]);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(
        urls(&config, "web"),
        ["http://10.0.1.3:8080", "http://10.0.1.4:8080"]
    );
    assert_eq!(
        config.http.as_ref().unwrap().routers["web"].rule,
        "Host(`web`)"
    );
}

#[test]
fn lbswarm_uses_the_virtual_ip_unless_dnsrr() {
    let (config, _) = build(
        &settings(),
        &[service("web", &[PORT, ("traefik.swarm.lbswarm", "true")])],
    );
    assert_eq!(urls(&config, "web"), ["http://10.0.1.2:8080"]);
    let mut dnsrr = service("web", &[PORT, ("traefik.swarm.lbswarm", "true")]);
    dnsrr.vip_mode = false;
    let (config, diags) = build(&settings(), &[dnsrr]);
    assert_eq!(urls(&config, "web").len(), 2);
    assert!(diags[0].message.contains("dnsrr"), "{diags:?}");
    let both = service(
        "web",
        &[
            PORT,
            ("traefik.swarm.lbswarm", "true"),
            ("traefik.docker.lbswarm", "true"),
        ],
    );
    let (_, diags) = build(&settings(), &[both]);
    assert!(diags[0].message.contains("cannot both be set"), "{diags:?}");
}

#[test]
fn port_label_is_required_and_a_bad_label_costs_only_its_service() {
    let other = service(
        "api",
        &[("traefik.http.services.api.loadbalancer.server.port", "9")],
    );
    let (config, diags) = build(&settings(), &[service("web", &[]), other]);
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(
        diags[0].message.contains("Swarm service `web` is left out")
            && diags[0].message.contains("loadbalancer.server.port"),
        "{}",
        diags[0].message
    );
    assert_eq!(urls(&config, "api").len(), 2);
}

#[test]
fn tasks_without_an_address_are_skipped_and_empty_services_optional() {
    let mut s = service("web", &[PORT]);
    s.tasks = vec![("web.1".into(), None)];
    let (config, diags) = build(&settings(), std::slice::from_ref(&s));
    assert!(config.http.as_ref().unwrap().routers.is_empty());
    assert!(
        diags[0]
            .message
            .contains("task `web.1` has no address on network `backend`")
    );
    let mut allow = settings();
    allow.allow_empty_services = true;
    let (config, _) = build(&allow, &[s]);
    assert!(urls(&config, "web").is_empty());
    assert_eq!(config.http.as_ref().unwrap().routers["web"].service, "web");
}

#[test]
fn refresh_seconds_defaults_to_fifteen_and_must_be_positive() {
    let config: SwarmProviderConfig = serde_yaml::from_str("{}").unwrap();
    let provider = SwarmProvider::from_config(&config).unwrap();
    assert_eq!(provider.refresh, Duration::from_secs(15));
    let config: SwarmProviderConfig = serde_yaml::from_str("refreshSeconds: 0\n").unwrap();
    let err = SwarmProvider::from_config(&config).unwrap_err();
    assert!(err.contains("providers.swarm.refreshSeconds"), "{err}");
}
