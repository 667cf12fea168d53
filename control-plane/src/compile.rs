//! The compiler: a pure function from every provider's last good configuration (plus the static
//! entry points) to one deterministic [`Snapshot`] and the list of [`Diagnostic`]s explaining what
//! was left out. Validation is per object, as in Traefik: a bad router, service or middleware
//! costs only itself and what depends on it.

pub mod rule;
pub mod tls;
mod validate;

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
};

use switchyard_shared::{
    rule::{MAX_USER_PRIORITY, default_priority},
    snapshot::{EntryPoint, Middleware, Router, Service, Snapshot},
};

use crate::dynamic::DynamicConfig;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The object is left out of the snapshot.
    Error,
    /// The object is kept; something about it was ignored.
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One finding about one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub provider: String,
    /// `router/name@provider`, `service/…`, `middleware/…`, `file/path`.
    pub object: String,
    pub message: String,
    pub severity: Severity,
}

impl Diagnostic {
    pub fn error(
        provider: impl Into<String>,
        object: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            provider: provider.into(),
            object: object.into(),
            message: message.into(),
            severity: Severity::Error,
        }
    }

    pub fn warning(
        provider: impl Into<String>,
        object: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            provider: provider.into(),
            object: object.into(),
            message: message.into(),
            severity: Severity::Warning,
        }
    }
}

/// The name of the object a diagnostic is about (`router/web@file`), formatted only when a
/// diagnostic is reported: most objects have none, and a compile of 50 000 routers and services
/// formatted 100 000 names for nothing.
#[derive(Clone, Copy, Debug)]
pub struct ObjectName<'a> {
    kind: &'static str,
    qualified: &'a str,
}

impl<'a> ObjectName<'a> {
    pub fn new(kind: &'static str, qualified: &'a str) -> Self {
        Self { kind, qualified }
    }
}

impl std::fmt::Display for ObjectName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.qualified)
    }
}

impl From<ObjectName<'_>> for String {
    fn from(name: ObjectName<'_>) -> Self {
        name.to_string()
    }
}

/// Qualifies a reference the way Traefik does: `x@p` stays, `x` becomes `x@<provider>`.
pub fn qualify(reference: &str, provider: &str) -> String {
    if reference.contains('@') {
        reference.to_owned()
    } else {
        format!("{reference}@{provider}")
    }
}

/// Compiles the providers' configurations (keyed by provider name) into a snapshot.
pub fn compile(
    entry_points: &[EntryPoint],
    providers: &BTreeMap<String, impl Borrow<DynamicConfig>>,
) -> (Snapshot, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut entry_points = entry_points.to_vec();
    entry_points.sort_by(|a, b| a.name.cmp(&b.name));
    let ep_names: BTreeSet<&str> = entry_points.iter().map(|e| e.name.as_str()).collect();

    // Pass 1: every middleware and service on its own.
    let mut middlewares: BTreeMap<String, Middleware> = BTreeMap::new();
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    for (provider, config) in providers {
        let config: &DynamicConfig = config.borrow();
        validate::report_unsupported_root(provider, config, &mut diags);
        let Some(http) = &config.http else { continue };
        for (name, m) in &http.middlewares {
            if let Some(m) = validate::middleware(provider, name, m, &mut diags) {
                middlewares.insert(m.name.clone(), m);
            }
        }
        for (name, s) in &http.services {
            if let Some(s) = validate::service(provider, name, s, &mut diags) {
                services.insert(s.name.clone(), s);
            }
        }
    }
    // Pass 2: references between them (chains, weighted services), to a fixed point.
    validate::resolve_middleware_refs(&mut middlewares, &mut diags);
    validate::resolve_service_refs(&mut services, &mut diags);

    let tls_out = tls::compile(providers, &mut diags);

    // Pass 3: routers.
    let mut routers = Vec::with_capacity(
        providers
            .values()
            .filter_map(|c| c.borrow().http.as_ref())
            .map(|http| http.routers.len())
            .sum(),
    );
    for (provider, config) in providers {
        let config: &DynamicConfig = config.borrow();
        let Some(http) = &config.http else { continue };
        for (name, r) in &http.routers {
            let qualified = qualify(name, provider);
            let object = ObjectName::new("router", &qualified);
            let mut fail = |message: String| {
                diags.push(Diagnostic::error(provider.as_str(), object, message));
            };
            if name.contains('@') {
                fail("`@` is not allowed in a router name".into());
                continue;
            }
            validate::report_extra(provider, object, &r.other, &mut diags);
            let router_tls = match &r.tls {
                None => None,
                Some(def) => match tls::router_tls(def, provider, &tls_out) {
                    Ok((t, warnings)) => {
                        for w in warnings {
                            diags.push(Diagnostic::warning(provider.as_str(), object, w));
                        }
                        Some(t)
                    }
                    Err(e) => {
                        diags.push(Diagnostic::error(provider.as_str(), object, e));
                        continue;
                    }
                },
            };
            if r.rule_syntax.as_deref().is_some_and(|s| s != "v3") {
                diags.push(Diagnostic::error(
                    provider.as_str(),
                    object,
                    format!(
                        "ruleSyntax `{}` is not supported; only v3 rules are",
                        r.rule_syntax.as_deref().unwrap_or_default()
                    ),
                ));
                continue;
            }
            let mut fail = |message: String| {
                diags.push(Diagnostic::error(provider.as_str(), object, message));
            };
            if r.rule.trim().is_empty() {
                fail("rule is required".into());
                continue;
            }
            let expr = match rule::parse_rule(&r.rule) {
                Ok(e) => e,
                Err(e) => {
                    fail(format!("error while parsing rule {}: {e}", r.rule));
                    continue;
                }
            };
            let priority = if r.priority == 0 {
                default_priority(&r.rule)
            } else {
                r.priority
            };
            if priority > MAX_USER_PRIORITY {
                fail(format!(
                    "the router priority {priority} exceeds the max user-defined priority {MAX_USER_PRIORITY}"
                ));
                continue;
            }
            if r.service.is_empty() {
                fail("the router has no service".into());
                continue;
            }
            let service = qualify(&r.service, provider);
            if !services.contains_key(&service) {
                fail(format!("the service \"{service}\" does not exist"));
                continue;
            }
            let mut mws = Vec::with_capacity(r.middlewares.len());
            let mut missing = None;
            for m in &r.middlewares {
                let q = qualify(m, provider);
                if !middlewares.contains_key(&q) {
                    missing = Some(q);
                    break;
                }
                mws.push(q);
            }
            if let Some(q) = missing {
                fail(format!("middleware \"{q}\" does not exist"));
                continue;
            }
            let eps = if r.entry_points.is_empty() {
                ep_names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
            } else {
                let mut eps = Vec::new();
                for ep in &r.entry_points {
                    if ep_names.contains(ep.as_str()) {
                        eps.push(ep.clone());
                    } else {
                        diags.push(Diagnostic::warning(
                            provider.as_str(),
                            object,
                            format!("entryPoint \"{ep}\" doesn't exist"),
                        ));
                    }
                }
                eps.sort();
                eps.dedup();
                eps
            };
            if eps.is_empty() {
                diags.push(Diagnostic::error(
                    provider.as_str(),
                    object,
                    "no valid entryPoint for this router",
                ));
                continue;
            }
            routers.push(Router {
                name: qualified,
                provider: provider.clone(),
                entry_points: eps,
                rule: expr,
                priority,
                middlewares: mws,
                service,
                rule_text: r.rule.clone(),
                tls: router_tls,
            });
        }
    }
    // Qualified names are unique (one map per provider, `@` refused in names), so an unstable
    // sort is deterministic; it needs no buffer and is linear on a run already in order.
    routers.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    diags.sort();
    diags.dedup();
    let snapshot = Snapshot {
        entry_points,
        routers,
        services: services.into_values().collect(),
        middlewares: middlewares.into_values().collect(),
        certificates: tls_out.certificates,
        tls_options: tls_out.options.into_values().collect(),
        default_certificate: tls_out.default_certificate,
        // Filled in by the ACME manager (`crate::acme::merge`), outside this pure function.
        http_challenges: Vec::new(),
        tls_challenges: Vec::new(),
    };
    (snapshot, diags)
}

#[cfg(test)]
mod tests;
