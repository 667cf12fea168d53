//! Containers → the provider's dynamic configuration, with Traefik's Docker conventions. Pure: the
//! caller lists and inspects containers; this module decides which ones are exposed, where their
//! server lives, and merges them. Label decoding itself is `provider/labels.rs`.
//!
//! Per container, in container-name order (Traefik merges in sorted order):
//! 1. `traefik.enable` (else `exposedByDefault`) and `constraints` select it;
//! 2. a health check that is not `healthy` leaves it out — or, with `allowEmptyServices`, keeps
//!    its routers with an empty load balancer (503 instead of 404);
//! 3. the service name is `normalize(<compose service>_<compose project>)` for Compose
//!    containers, else `normalize(<container name>)` — replicas share it and are merged;
//! 4. the address: the network named by `traefik.docker.network` (else the provider's
//!    `network`); host network mode → `127.0.0.1`; else the first network (by name) with an IP,
//!    IPv4 preferred; the port: `loadbalancer.server.port`, else the lowest exposed port;
//! 5. its labels are decoded; a container whose labels cannot be decoded is left out with a
//!    diagnostic naming the container, the label and the reason, and nothing else is affected.

use std::collections::BTreeMap;

use super::constraints::Constraint;
use crate::{
    compile::Diagnostic,
    dynamic::DynamicConfig,
    provider::labels::{self, DefaultRule, Instance},
};

/// Compose's labels naming a container's service and project.
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";

/// What the provider needs to know about one running container (decoupled from the API types,
/// so this module is tested without a daemon).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `State.Health.Status`; `None` when the container has no health check.
    pub health: Option<String>,
    /// `HostConfig.NetworkMode`: `host`, `bridge`, `default`, `none`, `container:<id>`, or a
    /// network name. For `container:<id>` the caller copies the target's networks in.
    pub network_mode: String,
    /// Attached networks by name.
    pub networks: BTreeMap<String, Endpoint>,
    /// Exposed container ports (any protocol).
    pub ports: Vec<u16>,
    /// Published ports, for `useBindPortIP`.
    pub bindings: Vec<Binding>,
}

/// A container's address on one network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub ipv4: String,
    pub ipv6: String,
}

/// One published port: `host_ip:host_port → container_port`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    pub container_port: u16,
    pub host_ip: String,
    pub host_port: u16,
}

/// The provider options that shape the configuration (shared by Docker and Swarm).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub exposed_by_default: bool,
    pub constraint: Option<Constraint>,
    pub default_rule: DefaultRule,
    /// Provider-wide `network`; the `traefik.<provider>.network` label overrides it.
    pub network: Option<String>,
    pub use_bind_port_ip: bool,
    pub allow_empty_services: bool,
}

/// Looks a label up with a case-insensitive key (Traefik's label keys are case-insensitive).
pub fn label<'a>(labels: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// Whether a workload is exposed: `traefik.enable` (a boolean), else `exposedByDefault`; then
/// `constraints`. An unparsable `traefik.enable` is an error for that workload.
pub fn selected(settings: &Settings, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    let enabled = match label(labels, "traefik.enable") {
        Some(value) => parse_bool(value).ok_or_else(|| {
            format!("label `traefik.enable`: `{value}` is not a boolean (true or false)")
        })?,
        None => settings.exposed_by_default,
    };
    Ok(enabled
        && settings
            .constraint
            .as_ref()
            .is_none_or(|c| c.matches(labels)))
}

/// Go's `strconv.ParseBool`, which Traefik uses for boolean labels.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The service name a container contributes to: Compose `<service>-<project>`, else its name.
pub fn service_name(container: &Container) -> String {
    match (
        container.labels.get(COMPOSE_SERVICE),
        container.labels.get(COMPOSE_PROJECT),
    ) {
        (Some(service), Some(project)) => labels::normalize(&format!("{service}_{project}")),
        _ => labels::normalize(&container.name),
    }
}

/// Builds the provider's configuration from every running container. Diagnostics name the
/// containers that were left out and why.
pub fn build(
    provider: &str,
    settings: &Settings,
    containers: &[Container],
) -> (DynamicConfig, Vec<Diagnostic>) {
    let mut sorted: Vec<&Container> = containers.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    let mut configs = Vec::new();
    let mut diags = Vec::new();
    for container in sorted {
        match container_config(provider, settings, container) {
            Ok(Some((config, warnings))) => {
                configs.push((container.name.clone(), config));
                diags.extend(warnings);
            }
            Ok(None) => {}
            Err(reason) => diags.push(Diagnostic::error(
                provider,
                format!("container/{}", container.name),
                format!("container `{}` is left out: {reason}", container.name),
            )),
        }
    }
    let (config, merge_diags) = labels::merge(provider, configs);
    diags.extend(merge_diags);
    (config, diags)
}

/// One container's configuration; `None` when it is not exposed or not healthy.
fn container_config(
    provider: &str,
    settings: &Settings,
    container: &Container,
) -> Result<Option<(DynamicConfig, Vec<Diagnostic>)>, String> {
    if !selected(settings, &container.labels)? {
        return Ok(None);
    }
    let healthy = container.health.as_deref().is_none_or(|h| h == "healthy");
    if !healthy && !settings.allow_empty_services {
        return Ok(None);
    }
    let network_label = format!("traefik.{provider}.network");
    let network = label(&container.labels, &network_label).or(settings.network.as_deref());
    let mut address = address(container, network)?;
    let mut port = container.ports.iter().min().copied();
    let mut labels = container.labels.clone();
    if settings.use_bind_port_ip {
        bind_port_ip(container, &mut labels, &mut address, &mut port);
    }
    let name = service_name(container);
    let instance = Instance {
        name: &name,
        address: &address,
        port,
        labels: &labels,
    };
    let (mut config, warnings) =
        labels::build_instance(provider, &instance, &settings.default_rule)
            .map_err(|e| e.to_string())?;
    if !healthy && let Some(http) = config.http.as_mut() {
        for service in http.services.values_mut() {
            if let Some(lb) = service.load_balancer.as_mut() {
                lb.servers.clear();
            }
        }
    }
    Ok(Some((config, warnings)))
}

/// Where the container's server lives (see the module docs).
fn address(container: &Container, network: Option<&str>) -> Result<String, String> {
    if let Some(wanted) = network
        && let Some(endpoint) = container.networks.get(wanted)
        && let Some(ip) = endpoint_ip(endpoint)
    {
        return Ok(ip);
    }
    if container.network_mode == "host" {
        return Ok("127.0.0.1".to_owned());
    }
    // Traefik falls back to an arbitrary network when the named one is missing; we take the
    // first by name so the result is deterministic.
    container
        .networks
        .values()
        .find_map(endpoint_ip)
        .ok_or_else(|| match network {
            Some(wanted) => format!(
                "it is not attached to network `{wanted}` and has no IP address on any other \
                 network"
            ),
            None => "it has no IP address on any network".to_owned(),
        })
}

fn endpoint_ip(endpoint: &Endpoint) -> Option<String> {
    [&endpoint.ipv4, &endpoint.ipv6]
        .into_iter()
        .find(|ip| !ip.is_empty())
        .cloned()
}

/// `useBindPortIP`: when the target port is published on a specific host IP, the server is that
/// `host_ip:host_port` (Traefik's table: a binding on the container port, or — with a port label —
/// a binding whose host port is the label's port). Unspecified host IPs keep the container IP.
fn bind_port_ip(
    container: &Container,
    labels: &mut BTreeMap<String, String>,
    address: &mut String,
    port: &mut Option<u16>,
) {
    let port_label = labels
        .iter()
        .find(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.starts_with("traefik.http.services.") && k.ends_with(".loadbalancer.server.port")
        })
        .map(|(k, v)| (k.clone(), v.trim().parse::<u16>().ok()));
    let target = match &port_label {
        Some((_, Some(p))) => Some(*p),
        _ => *port,
    };
    let Some(target) = target else { return };
    let usable = |b: &&Binding| !matches!(b.host_ip.as_str(), "" | "0.0.0.0" | "::");
    let binding = container
        .bindings
        .iter()
        .filter(usable)
        .find(|b| b.container_port == target)
        .or_else(|| {
            port_label.as_ref().and_then(|_| {
                container
                    .bindings
                    .iter()
                    .filter(usable)
                    .find(|b| b.host_port == target)
            })
        });
    if let Some(binding) = binding {
        *address = binding.host_ip.clone();
        *port = Some(binding.host_port);
        if let Some((key, _)) = port_label {
            labels.insert(key, binding.host_port.to_string());
        }
    }
}
