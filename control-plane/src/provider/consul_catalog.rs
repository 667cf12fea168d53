//! The Consul Catalog provider (`providers.consulCatalog`, provider name `consulcatalog`): every
//! Consul service instance whose tags say so becomes routers/services/middlewares, with Traefik's
//! tag conventions (`<prefix>.http.routers.<r>.rule=…`, decoded by `provider/labels.rs`).
//!
//! A refresh reads `GET /v1/catalog/services`, then `GET /v1/health/service/<name>` for each
//! service (instances with their node and checks), and rebuilds the whole provider configuration:
//! - `<prefix>.enable` (else `exposedByDefault`) and `constraints` (`Tag`, `TagRegex`) select
//!   instances; an instance whose aggregated check status is not in `strictChecks` is left out;
//! - the server address is `Service.Address`, else `Node.Address`, port `Service.Port`;
//! - instances of one service merge into one load balancer ([`labels::merge`]);
//! - a bad tag costs only its instance (reported as a diagnostic).
//!
//! With `watch` (our default) two blocking queries wait for a change — `/v1/catalog/services`
//! (registrations) and `/v1/health/state/any` (check status) — and a change triggers a refresh,
//! so propagation is immediate. Without it the provider polls every `refreshInterval`. Index
//! handling follows Consul's rules ([`next_index`]). Consul unreachable: last good stays, the
//! status is reported, retries back off with full jitter. Reachable with nothing exposed: the
//! provider's routes are removed.

use std::{collections::BTreeMap, time::Duration};

use regex::Regex;
use serde::Deserialize;
use switchyard_shared::backoff::Backoff;
use thiserror::Error;
use tokio::sync::watch;

use super::{
    Provider, ProviderSink, ProviderTask, client_tls,
    kv::{
        Reporter,
        consul::{ConsulClient, ConsulError, ConsulOptions, DEFAULT_WAIT, next_index},
    },
    labels::{self, DefaultRule, Instance},
};
use crate::{
    compile::Diagnostic,
    config::{ConsulCatalogProviderConfig, ProvidersConfig},
    dynamic::DynamicConfig,
};

/// The provider name (`name@consulcatalog`).
pub const NAME: &str = "consulcatalog";

const DEFAULT_REFRESH: Duration = Duration::from_secs(15);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A `constraints` expression that cannot be parsed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("constraints `{expression}`: {reason}")]
pub struct ConstraintError {
    pub expression: String,
    pub reason: String,
}

/// Checks `providers.consulCatalog` at start-up; the message names the option.
pub fn validate_config(providers: &ProvidersConfig) -> Result<(), String> {
    let Some(c) = &providers.consul_catalog else {
        return Ok(());
    };
    if c.endpoint
        .scheme
        .as_deref()
        .is_some_and(|s| s != "http" && s != "https")
    {
        return Err(format!(
            "providers.consulCatalog.endpoint.scheme: `{}` is not http or https",
            c.endpoint.scheme.as_deref().unwrap_or_default()
        ));
    }
    if let Some(tls) = &c.endpoint.tls {
        client_tls::client_config(tls, "providers.consulCatalog.endpoint.tls")?;
    }
    if c.connect_aware || c.connect_by_default {
        return Err(
            "providers.consulCatalog.connectAware: Consul Connect is not supported yet".into(),
        );
    }
    if namespaces(c).len() > 1 {
        return Err(
            "providers.consulCatalog.namespaces: one namespace per provider is supported".into(),
        );
    }
    if let Some(rule) = &c.default_rule {
        DefaultRule::parse(rule)
            .map_err(|e| format!("providers.consulCatalog.defaultRule: {e}"))?;
    }
    if let Some(expression) = &c.constraints {
        Constraint::parse(expression).map_err(|e| format!("providers.consulCatalog.{e}"))?;
    }
    for check in &c.strict_checks {
        if Health::parse(check).is_none() {
            return Err(format!(
                "providers.consulCatalog.strictChecks: `{check}` is not a check status \
                 (passing, warning, critical, maintenance)"
            ));
        }
    }
    Ok(())
}

fn namespaces(c: &ConsulCatalogProviderConfig) -> Vec<String> {
    let mut out = c.namespaces.clone();
    out.extend(c.namespace.clone());
    out.dedup();
    out
}

/// The Consul Catalog provider.
#[derive(Debug)]
pub struct ConsulCatalogProvider {
    options: ConsulOptions,
    prefix: String,
    exposed_by_default: bool,
    default_rule: DefaultRule,
    constraint: Option<Constraint>,
    watch: bool,
    refresh_interval: Duration,
    strict_checks: Vec<Health>,
}

impl ConsulCatalogProvider {
    /// Builds the provider from a configuration that passed [`validate_config`]; invalid parts
    /// (unreachable here after validation) fall back to Traefik's defaults.
    pub fn new(config: &ConsulCatalogProviderConfig) -> Self {
        let endpoint = &config.endpoint;
        let mut query = Vec::new();
        if let Some(dc) = &endpoint.datacenter {
            query.push(("dc".to_owned(), ConsulClient::encode(dc)));
        }
        if let Some(ns) = namespaces(config).first() {
            query.push(("ns".to_owned(), ConsulClient::encode(ns)));
        }
        for (flag, on) in [
            ("consistent", config.require_consistent),
            ("stale", config.stale),
            ("cached", config.cache),
        ] {
            if on {
                query.push((flag.to_owned(), String::new()));
            }
        }
        Self {
            options: ConsulOptions {
                endpoints: vec![match endpoint.scheme.as_deref() {
                    Some(scheme) if !endpoint.address.contains("://") => {
                        format!("{scheme}://{}", endpoint.address)
                    }
                    _ => endpoint.address.clone(),
                }],
                token: endpoint.token.clone(),
                basic_auth: endpoint
                    .http_auth
                    .as_ref()
                    .map(|a| (a.username.clone(), a.password.clone())),
                query,
                wait: endpoint.endpoint_wait_time.unwrap_or(DEFAULT_WAIT),
                tls: endpoint
                    .tls
                    .clone()
                    .map(|t| (t, "providers.consulCatalog.endpoint.tls".to_owned())),
            },
            prefix: config.prefix.trim_end_matches('.').to_owned(),
            exposed_by_default: config.exposed_by_default,
            default_rule: config
                .default_rule
                .as_deref()
                .and_then(|r| DefaultRule::parse(r).ok())
                .unwrap_or_default(),
            constraint: config
                .constraints
                .as_deref()
                .and_then(|c| Constraint::parse(c).ok()),
            watch: config.watch,
            refresh_interval: config.refresh_interval.unwrap_or(DEFAULT_REFRESH),
            strict_checks: config
                .strict_checks
                .iter()
                .filter_map(|c| Health::parse(c))
                .collect(),
        }
    }
}

impl Provider for ConsulCatalogProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(self: Box<Self>, sink: ProviderSink, shutdown: watch::Receiver<bool>) -> ProviderTask {
        Box::pin(run(*self, sink, shutdown))
    }
}

async fn run(
    provider: ConsulCatalogProvider,
    sink: ProviderSink,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reporter = Reporter::default();
    let client = match ConsulClient::new(provider.options.clone()) {
        Ok(c) => c,
        Err(e) => {
            reporter.error(&sink, e.to_string()).await;
            let _ = shutdown.changed().await;
            return;
        }
    };
    let mut services_client = client.clone();
    let mut checks_client = client;
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
    loop {
        // Baseline indexes first, so a change during the refresh is not missed.
        let refreshed = tokio::select! {
            _ = shutdown.changed() => return,
            r = async {
                let checks = checks_client.get("/v1/health/state/any", &[], 0).await?;
                let (config, diags, services_index) = refresh(&provider, &mut services_client).await?;
                Ok::<_, ConsulError>((config, diags, services_index, checks.index))
            } => r,
        };
        let (mut services_index, mut checks_index) = match refreshed {
            Ok((config, diags, services_index, checks_index)) => {
                backoff.reset();
                if !reporter.report(&sink, Ok((config, diags))).await {
                    return;
                }
                (next_index(0, services_index), next_index(0, checks_index))
            }
            Err(e) => {
                if !reporter.error(&sink, e.to_string()).await {
                    return;
                }
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        if !provider.watch {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(provider.refresh_interval) => {}
            }
            continue;
        }
        // Block until the catalog or a check changes (a timed-out query is re-issued).
        let changed = loop {
            let answer = tokio::select! {
                _ = shutdown.changed() => return,
                a = services_client.get("/v1/catalog/services", &[], services_index) => a.map(|a| (true, a.index)),
                a = checks_client.get("/v1/health/state/any", &[], checks_index) => a.map(|a| (false, a.index)),
            };
            match answer {
                Ok((is_services, returned)) => {
                    let sent = if is_services {
                        services_index
                    } else {
                        checks_index
                    };
                    let next = next_index(sent, returned);
                    if is_services {
                        services_index = next;
                    } else {
                        checks_index = next;
                    }
                    if returned != sent {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = changed {
            if !reporter.error(&sink, e.to_string()).await {
                return;
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// `GET /v1/health/service/<name>`: one entry per instance.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceEntry {
    node: Node,
    service: AgentService,
    #[serde(default)]
    checks: Vec<Check>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentService {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Check {
    #[serde(default)]
    status: String,
}

/// A check status, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    Passing,
    Warning,
    Critical,
    Maintenance,
}

impl Health {
    fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "passing" => Some(Self::Passing),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            "maintenance" => Some(Self::Maintenance),
            _ => None,
        }
    }

    /// Consul's aggregated status of an instance: the worst of its checks (an unknown status
    /// counts as critical); no checks means passing.
    fn aggregate(checks: &[Check]) -> Self {
        checks
            .iter()
            .map(|c| Health::parse(&c.status).unwrap_or(Health::Critical))
            .max()
            .unwrap_or(Health::Passing)
    }
}

/// Reads the whole catalog and builds the provider configuration. Returns the catalog index.
async fn refresh(
    provider: &ConsulCatalogProvider,
    client: &mut ConsulClient,
) -> Result<(DynamicConfig, Vec<Diagnostic>, u64), ConsulError> {
    let path = "/v1/catalog/services";
    let answer = client.get(path, &[], 0).await?;
    let services: BTreeMap<String, Option<Vec<String>>> = serde_json::from_slice(&answer.body)
        .map_err(|source| ConsulError::Json {
            path: path.to_owned(),
            source,
        })?;
    let mut diags = Vec::new();
    let mut instances = Vec::new();
    for name in services.keys() {
        let path = format!("/v1/health/service/{}", ConsulClient::encode(name));
        let entries = client.get(&path, &[], 0).await?;
        let entries: Vec<ServiceEntry> =
            serde_json::from_slice(&entries.body).map_err(|source| ConsulError::Json {
                path: path.clone(),
                source,
            })?;
        for entry in entries {
            match instance_config(provider, &entry) {
                Ok(Some(config)) => {
                    let key = format!("{}-{}", entry.node.node, entry.service.id);
                    instances.push((key, config.0));
                    diags.extend(config.1);
                }
                Ok(None) => {}
                Err(e) => diags.push(Diagnostic::error(
                    NAME,
                    format!(
                        "service/{}@{NAME}",
                        labels::normalize(&entry.service.service)
                    ),
                    format!(
                        "instance `{}` on node `{}` is skipped: {e}",
                        entry.service.id, entry.node.node
                    ),
                )),
            }
        }
    }
    instances.sort_by(|a, b| a.0.cmp(&b.0));
    let (config, merge_diags) = labels::merge(NAME, instances);
    diags.extend(merge_diags);
    Ok((config, diags, answer.index))
}

/// One instance's configuration, `None` when it is not exposed, unhealthy or filtered out.
fn instance_config(
    provider: &ConsulCatalogProvider,
    entry: &ServiceEntry,
) -> Result<Option<(DynamicConfig, Vec<Diagnostic>)>, labels::LabelError> {
    let tags = entry.service.tags.clone().unwrap_or_default();
    let prefix = format!("{}.", provider.prefix);
    let mut labels = BTreeMap::new();
    for tag in &tags {
        let Some((key, value)) = tag.split_once('=') else {
            continue;
        };
        if key.len() >= prefix.len() && key[..prefix.len()].eq_ignore_ascii_case(&prefix) {
            labels.insert(
                format!("traefik.{}", &key[prefix.len()..]),
                value.to_owned(),
            );
        }
    }
    let enabled = match labels
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("traefik.enable"))
    {
        Some((_, v)) => v.trim().eq_ignore_ascii_case("true"),
        None => provider.exposed_by_default,
    };
    if !enabled {
        return Ok(None);
    }
    if let Some(constraint) = &provider.constraint
        && !constraint.matches(&tags)
    {
        return Ok(None);
    }
    if !provider
        .strict_checks
        .contains(&Health::aggregate(&entry.checks))
    {
        return Ok(None);
    }
    let address = if entry.service.address.is_empty() {
        &entry.node.address
    } else {
        &entry.service.address
    };
    let instance = Instance {
        name: &entry.service.service,
        address,
        port: (entry.service.port != 0).then_some(entry.service.port),
        labels: &labels,
    };
    labels::build_instance(NAME, &instance, &provider.default_rule).map(Some)
}

/// A `constraints` expression: `Tag("a")`, `TagRegex("^b")`, `!`, `&&`, `||`, parentheses.
#[derive(Clone, Debug)]
pub enum Constraint {
    Tag(String),
    TagRegex(Regex),
    Not(Box<Constraint>),
    And(Box<Constraint>, Box<Constraint>),
    Or(Box<Constraint>, Box<Constraint>),
}

impl Constraint {
    /// Parses an expression; the error names the expression and the problem.
    pub fn parse(expression: &str) -> Result<Self, ConstraintError> {
        let mut parser = Parser {
            text: expression,
            pos: 0,
        };
        let result = parser.or().and_then(|c| {
            parser.skip_ws();
            if parser.pos == parser.text.len() {
                Ok(c)
            } else {
                Err(format!("unexpected text at offset {}", parser.pos))
            }
        });
        result.map_err(|reason| ConstraintError {
            expression: expression.to_owned(),
            reason,
        })
    }

    /// Whether a tag set satisfies the expression (regexes are unanchored, as in Traefik).
    pub fn matches(&self, tags: &[String]) -> bool {
        match self {
            Constraint::Tag(t) => tags.iter().any(|tag| tag == t),
            Constraint::TagRegex(re) => tags.iter().any(|tag| re.is_match(tag)),
            Constraint::Not(c) => !c.matches(tags),
            Constraint::And(a, b) => a.matches(tags) && b.matches(tags),
            Constraint::Or(a, b) => a.matches(tags) || b.matches(tags),
        }
    }
}

/// Builds a leaf from its string argument.
type MakeConstraint = fn(String) -> Result<Constraint, String>;

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        let rest = &self.text[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.text[self.pos..].starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Constraint, String> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Constraint::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Constraint, String> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            left = Constraint::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Constraint, String> {
        if self.eat("!") {
            return Ok(Constraint::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let inner = self.or()?;
            if !self.eat(")") {
                return Err(format!("missing `)` at offset {}", self.pos));
            }
            return Ok(inner);
        }
        let (function, make): (&str, MakeConstraint) = if self.eat("TagRegex") {
            ("TagRegex", |s| {
                Regex::new(&s)
                    .map(Constraint::TagRegex)
                    .map_err(|e| format!("invalid regex `{s}`: {e}"))
            })
        } else if self.eat("Tag") {
            ("Tag", |s| Ok(Constraint::Tag(s)))
        } else {
            return Err(format!(
                "expected Tag(…), TagRegex(…), `!` or `(` at offset {}",
                self.pos
            ));
        };
        if !self.eat("(") {
            return Err(format!("`{function}` needs `(` at offset {}", self.pos));
        }
        let argument = self.string()?;
        if !self.eat(")") {
            return Err(format!("`{function}` takes one string argument"));
        }
        make(argument)
    }

    fn string(&mut self) -> Result<String, String> {
        self.skip_ws();
        let rest = &self.text[self.pos..];
        let quote = rest.chars().next().filter(|c| *c == '"' || *c == '`');
        let Some(quote) = quote else {
            return Err(format!("expected a quoted string at offset {}", self.pos));
        };
        let mut out = String::new();
        let mut chars = rest[1..].char_indices();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                self.pos += 1 + i + 1;
                return Ok(out);
            }
            if c == '\\'
                && quote == '"'
                && let Some((_, escaped)) = chars.next()
            {
                out.push(escaped);
                continue;
            }
            out.push(c);
        }
        Err(format!("unterminated string at offset {}", self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn constraints_parse_and_match() {
        let c = Constraint::parse(r#"Tag("web") && !TagRegex("^canary") || (Tag("x"))"#).unwrap();
        assert!(c.matches(&tags(&["web"])));
        assert!(!c.matches(&tags(&["web", "canary-1"])));
        assert!(c.matches(&tags(&["x"])));
        assert!(!c.matches(&tags(&["y"])));
        assert!(Constraint::parse("Tag(web)").is_err());
        assert!(Constraint::parse(r#"Tag("a") &&"#).is_err());
        assert!(Constraint::parse(r#"TagRegex("(")"#).is_err());
    }

    #[test]
    fn aggregated_health_is_the_worst_check() {
        let checks = |s: &[&str]| -> Vec<Check> {
            s.iter()
                .map(|s| Check {
                    status: (*s).to_owned(),
                })
                .collect()
        };
        assert_eq!(Health::aggregate(&checks(&[])), Health::Passing);
        assert_eq!(
            Health::aggregate(&checks(&["passing", "warning"])),
            Health::Warning
        );
        assert_eq!(
            Health::aggregate(&checks(&["passing", "critical"])),
            Health::Critical
        );
    }

    fn provider(exposed: bool) -> ConsulCatalogProvider {
        let config: ConsulCatalogProviderConfig = serde_yaml::from_str(&format!(
            "exposedByDefault: {exposed}\nconstraints: '!Tag(\"hidden\")'\n"
        ))
        .unwrap();
        ConsulCatalogProvider::new(&config)
    }

    fn entry(json: &str) -> ServiceEntry {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn instance_uses_service_address_then_node_address_and_prefix_tags() {
        let p = provider(false);
        let e = entry(
            r#"{"Node":{"Node":"n1","Address":"10.0.0.1"},
                "Service":{"ID":"web-1","Service":"web","Tags":["traefik.enable=true","traefik.http.routers.web.rule=Path(`/w`)"],"Address":"","Port":8080},
                "Checks":[{"Status":"passing"}]}"#,
        );
        let (config, _) = instance_config(&p, &e).unwrap().unwrap();
        let http = config.http.unwrap();
        assert_eq!(http.routers["web"].rule, "Path(`/w`)");
        let url = &http.services["web"].load_balancer.as_ref().unwrap().servers[0].url;
        assert_eq!(url, "http://10.0.0.1:8080");

        let hidden = entry(
            r#"{"Node":{"Node":"n1","Address":"10.0.0.1"},
                "Service":{"ID":"a","Service":"a","Tags":["traefik.enable=true","hidden"],"Address":"10.9.9.9","Port":1},
                "Checks":[]}"#,
        );
        assert!(instance_config(&p, &hidden).unwrap().is_none());
        let not_enabled = entry(
            r#"{"Node":{"Node":"n1","Address":"10.0.0.1"},
                "Service":{"ID":"a","Service":"a","Tags":null,"Address":"10.9.9.9","Port":1},
                "Checks":[]}"#,
        );
        assert!(instance_config(&p, &not_enabled).unwrap().is_none());
        let critical = entry(
            r#"{"Node":{"Node":"n1","Address":"10.0.0.1"},
                "Service":{"ID":"a","Service":"a","Tags":["traefik.enable=true"],"Address":"10.9.9.9","Port":1},
                "Checks":[{"Status":"critical"}]}"#,
        );
        assert!(instance_config(&p, &critical).unwrap().is_none());
    }
}
