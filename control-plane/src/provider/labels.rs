//! Traefik's label/tag grammar for ONE workload instance (a container, a Consul service instance),
//! shared by every label-based provider (Consul Catalog today, Docker/Swarm later). Pure: no I/O.
//!
//! Grammar (Traefik v3, `pkg/config/label`): keys under `traefik.http.`, `traefik.tcp.`,
//! `traefik.udp.`, `traefik.tls.` are decoded into the dynamic model; other `traefik.*` keys
//! (`traefik.enable`, `traefik.docker.network`, …) belong to the provider and are ignored here.
//! Keys are case-insensitive (names keep their spelling); scalar lists are comma-separated;
//! struct lists use `[n]` (`tls.domains[0].main`); the one server of an instance is written in
//! the singular, `loadbalancer.server.{port,scheme,url,weight}`, and completed from the
//! instance's address. Auto-wiring: no service label ⇒ a service named after the instance; no
//! router label ⇒ a router of the same name with the provider's `defaultRule`; a router without
//! `service` gets the only service, or is dropped with an error when there are several.
//! Instances are merged with Traefik's intra-provider rule ([`merge`]).
//!
//! Providers rewrite their own prefix (Consul Catalog `prefix`) to `traefik.` before calling.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use thiserror::Error;

use super::kv::{DecodeError, Tree};
use crate::{
    compile::Diagnostic,
    dynamic::{DynamicConfig, HttpConfig, LoadBalancer, Server, Service},
};

/// A label that cannot be decoded: that instance is skipped, nothing else is affected.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("label `{label}`: {reason}")]
    Label { label: String, reason: String },
    #[error("{0}")]
    Template(String),
}

impl From<DecodeError> for LabelError {
    fn from(e: DecodeError) -> Self {
        LabelError::Label {
            label: e.key,
            reason: e.reason,
        }
    }
}

/// What the provider knows about one instance besides its labels.
#[derive(Clone, Debug)]
pub struct Instance<'a> {
    /// The service/container name (becomes `normalize(name)` for auto-created objects).
    pub name: &'a str,
    /// The address servers are built from (IP or host name; IPv6 without brackets).
    pub address: &'a str,
    /// The instance's port when the platform knows one (`loadbalancer.server.port` overrides).
    pub port: Option<u16>,
    /// The labels/tags, `key → value`, already under the `traefik.` prefix.
    pub labels: &'a BTreeMap<String, String>,
}

/// `loadbalancer.server.*` of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ServerLabels {
    port: Option<u16>,
    scheme: Option<String>,
    url: Option<String>,
    weight: Option<u32>,
}

/// The configuration one instance contributes, plus warnings (a router dropped for having no
/// unambiguous service, an unsupported server option…).
pub fn build_instance(
    provider: &str,
    instance: &Instance<'_>,
    default_rule: &DefaultRule,
) -> Result<(DynamicConfig, Vec<Diagnostic>), LabelError> {
    let mut tree = Tree::new('.', "traefik");
    for (label, value) in instance.labels {
        let Some(segments) = label_segments(label)? else {
            continue;
        };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        tree.insert(&segments, value)?;
    }
    let mut templates = BTreeMap::new();
    for service in tree.names(&["http", "services"]) {
        let leaves = tree.take(&["http", "services", &service, "loadbalancer", "server"]);
        if !leaves.is_empty() {
            templates.insert(service.clone(), server_labels(&service, leaves)?);
        }
    }
    let (mut config, mut warnings) = tree.into_config(provider)?;
    let name = normalize(instance.name);
    let has_l4 = ["tcp", "udp"]
        .iter()
        .any(|section| config.other.contains_key(*section));
    let http = config.http.get_or_insert_with(HttpConfig::default);
    if http.services.is_empty() && !has_l4 {
        http.services.insert(
            name.clone(),
            Service {
                load_balancer: Some(LoadBalancer::default()),
                ..Default::default()
            },
        );
    }
    for (service_name, service) in &mut http.services {
        let template = templates.remove(service_name).unwrap_or_default();
        let lb = service.load_balancer.get_or_insert_with(Default::default);
        let url = match template.url {
            Some(url) => url,
            None => {
                let port = template
                    .port
                    .or(instance.port)
                    .ok_or_else(|| LabelError::Label {
                        label: format!(
                            "traefik.http.services.{service_name}.loadbalancer.server.port"
                        ),
                        reason: format!("instance `{}` has no port; set this label", instance.name),
                    })?;
                let scheme = template.scheme.as_deref().unwrap_or("http");
                format!("{scheme}://{}:{port}", host_for_url(instance.address))
            }
        };
        lb.servers = vec![Server {
            url,
            weight: template.weight,
            ..Default::default()
        }];
    }
    if http.routers.is_empty() && !has_l4 {
        http.routers.insert(name.clone(), Arc::default());
    }
    let services: Vec<String> = http.services.keys().cloned().collect();
    let mut dropped = Vec::new();
    for (router_name, router) in &mut http.routers {
        // Not shared yet: decoded just now.
        let router = Arc::make_mut(router);
        if router.rule.is_empty() {
            router.rule = default_rule.render(instance.name, instance.labels);
        }
        if router.service.is_empty() {
            match services.as_slice() {
                [only] => router.service = only.clone(),
                _ => dropped.push(router_name.clone()),
            }
        }
    }
    for router_name in dropped {
        http.routers.remove(&router_name);
        warnings.push(Diagnostic::error(
            provider,
            format!("router/{router_name}@{provider}"),
            format!(
                "instance `{}`: router has no service and the instance defines {} services; \
                 set traefik.http.routers.{router_name}.service",
                instance.name,
                services.len()
            ),
        ));
    }
    Ok((config, warnings))
}

/// Splits `traefik.http.routers.r.tls.domains[0].main` into path segments below `traefik`;
/// `None` for labels this decoder does not own.
fn label_segments(label: &str) -> Result<Option<Vec<String>>, LabelError> {
    let Some(rest) = strip_prefix_ci(label, "traefik.") else {
        return Ok(None);
    };
    let section = rest
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !matches!(section.as_str(), "http" | "tcp" | "udp" | "tls") {
        return Ok(None);
    }
    let bad = |reason: &str| LabelError::Label {
        label: label.to_owned(),
        reason: reason.to_owned(),
    };
    let mut out = Vec::new();
    for part in rest.split('.') {
        if part.is_empty() {
            return Err(bad("empty path segment"));
        }
        match part.split_once('[') {
            Some((field, index)) => {
                let index = index
                    .strip_suffix(']')
                    .filter(|i| i.parse::<u32>().is_ok())
                    .ok_or_else(|| bad("list index must read `name[N]`"))?;
                out.push(field.to_owned());
                out.push(index.to_owned());
            }
            None => out.push(part.to_owned()),
        }
    }
    Ok(Some(out))
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn server_labels(
    service: &str,
    leaves: Vec<(Vec<String>, String)>,
) -> Result<ServerLabels, LabelError> {
    let mut out = ServerLabels::default();
    for (path, value) in leaves {
        let field = path.join(".").to_ascii_lowercase();
        let label = format!("traefik.http.services.{service}.loadbalancer.server.{field}");
        let bad = |what: &str| LabelError::Label {
            label: label.clone(),
            reason: format!("`{value}` is not {what}"),
        };
        match field.as_str() {
            "port" => out.port = Some(value.trim().parse().map_err(|_| bad("a port"))?),
            "scheme" => out.scheme = Some(value.trim().to_owned()),
            "url" => out.url = Some(value.trim().to_owned()),
            "weight" => out.weight = Some(value.trim().parse().map_err(|_| bad("a weight"))?),
            _ => {
                return Err(LabelError::Label {
                    label,
                    reason: "unknown or unsupported server option (supported: port, scheme, url, \
                             weight)"
                        .into(),
                });
            }
        }
    }
    if out.url.is_some() && (out.port.is_some() || out.scheme.is_some()) {
        return Err(LabelError::Label {
            label: format!("traefik.http.services.{service}.loadbalancer.server.url"),
            reason: "cannot be combined with server.port or server.scheme".into(),
        });
    }
    Ok(out)
}

fn host_for_url(address: &str) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_owned()
    }
}

/// Traefik's `normalize`: runs of non-alphanumeric characters become one `-`, and leading or
/// trailing ones are dropped (`/my_app.v2` → `my-app-v2`).
pub fn normalize(name: &str) -> String {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// The provider's `defaultRule`, a Go template in Traefik. Switchyard renders the subset that
/// covers documented uses: literal text with `{{ .Name }}`, `{{ normalize .Name }}` and
/// `{{ index .Labels "key" }}`; anything else is a configuration error at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultRule {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Name,
    NormalizedName,
    Label(String),
}

/// Traefik's default `defaultRule`.
pub const DEFAULT_RULE: &str = "Host(`{{ normalize .Name }}`)";

impl DefaultRule {
    /// Parses a template; the error names the unsupported action.
    pub fn parse(template: &str) -> Result<Self, LabelError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| {
                LabelError::Template(format!("defaultRule `{template}`: unclosed `{{{{`"))
            })?;
            let action = after[..end].trim_matches(|c: char| c == '-' || c.is_whitespace());
            let words: Vec<&str> = action.split_whitespace().collect();
            let part = match words.as_slice() {
                [".Name"] => Part::Name,
                ["normalize", ".Name"] => Part::NormalizedName,
                ["index", ".Labels", key]
                    if key.len() >= 2 && key.starts_with('"') && key.ends_with('"') =>
                {
                    Part::Label(key[1..key.len() - 1].to_owned())
                }
                _ => {
                    return Err(LabelError::Template(format!(
                        "defaultRule `{template}`: unsupported template action `{{{{{action}}}}}` \
                         (supported: .Name, normalize .Name, index .Labels \"key\")"
                    )));
                }
            };
            parts.push(part);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Renders the rule for one instance.
    pub fn render(&self, name: &str, labels: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Name => out.push_str(name),
                Part::NormalizedName => out.push_str(&normalize(name)),
                Part::Label(key) => {
                    out.push_str(labels.get(key).map(String::as_str).unwrap_or_default())
                }
            }
        }
        out
    }
}

impl Default for DefaultRule {
    fn default() -> Self {
        Self {
            parts: vec![
                Part::Text("Host(`".into()),
                Part::NormalizedName,
                Part::Text("`)".into()),
            ],
        }
    }
}

/// Merges per-instance configurations in the given order (callers sort by instance name), with
/// Traefik's intra-provider rule: identical objects become one; load-balancer services that differ
/// only in their servers are merged (servers de-duplicated by URL); any other difference removes
/// the object with an error, and routers referring to it then fail in the compiler.
pub fn merge(
    provider: &str,
    configs: Vec<(String, DynamicConfig)>,
) -> (DynamicConfig, Vec<Diagnostic>) {
    let mut out = HttpConfig::default();
    let mut other = BTreeMap::new();
    let mut conflicts: BTreeSet<(&'static str, String)> = BTreeSet::new();
    let mut diags = Vec::new();
    for (_, config) in configs {
        for (key, value) in config.other {
            other.entry(key).or_insert(value);
        }
        let Some(http) = config.http else { continue };
        for (name, router) in http.routers {
            merge_equal(&mut out.routers, name, router, "router", &mut conflicts);
        }
        for (name, middleware) in http.middlewares {
            merge_equal(
                &mut out.middlewares,
                name,
                middleware,
                "middleware",
                &mut conflicts,
            );
        }
        for (name, service) in http.services {
            match out.services.get_mut(&name) {
                None => {
                    out.services.insert(name, service);
                }
                Some(existing) => {
                    if !merge_service(existing, service) {
                        conflicts.insert(("service", name));
                    }
                }
            }
        }
    }
    for (kind, name) in conflicts {
        match kind {
            "router" => {
                out.routers.remove(&name);
            }
            "middleware" => {
                out.middlewares.remove(&name);
            }
            _ => {
                out.services.remove(&name);
            }
        }
        diags.push(Diagnostic::error(
            provider,
            format!("{kind}/{name}@{provider}"),
            format!("{kind} defined multiple times with different configurations"),
        ));
    }
    (
        DynamicConfig {
            http: Some(out),
            tls: None,
            other,
        },
        diags,
    )
}

fn merge_equal<T: PartialEq>(
    map: &mut BTreeMap<String, T>,
    name: String,
    value: T,
    kind: &'static str,
    conflicts: &mut BTreeSet<(&'static str, String)>,
) {
    match map.get(&name) {
        None => {
            map.insert(name, value);
        }
        Some(existing) if *existing == value => {}
        Some(_) => {
            conflicts.insert((kind, name));
        }
    }
}

/// Merges `theirs` into `ours` when both are load balancers differing only in servers.
fn merge_service(ours: &mut Service, theirs: Service) -> bool {
    let (Some(a), Some(b)) = (&ours.load_balancer, &theirs.load_balancer) else {
        return *ours == theirs;
    };
    let same_settings = a.pass_host_header == b.pass_host_header
        && a.other == b.other
        && ours.weighted == theirs.weighted
        && ours.other == theirs.other;
    if !same_settings {
        return false;
    }
    let Some(lb) = ours.load_balancer.as_mut() else {
        return false;
    };
    for server in b.servers.iter() {
        if !lb.servers.iter().any(|s| s.url == server.url) {
            lb.servers.push(server.clone());
        }
    }
    true
}

#[cfg(test)]
mod tests;
