//! The compiler: a pure function from every provider's last good configuration (plus the static
//! entry points) to one deterministic [`Snapshot`] and the list of [`Diagnostic`]s explaining what
//! was left out. Validation is per object, as in Traefik: a bad router, service or middleware
//! costs only itself and what depends on it.

pub mod rule;
pub mod tls;
mod validate;

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use switchyard_shared::{
    rule::{MAX_USER_PRIORITY, default_priority},
    snapshot::{EntryPoint, Middleware, Router, Service, SharedSnapshot},
};

use crate::dynamic::{self, DynamicConfig};

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
) -> (SharedSnapshot, Vec<Diagnostic>) {
    Compiler::default().compile(entry_points, providers)
}

/// A compiler that remembers what it made of every router, so that the next compile recompiles
/// only the routers whose definition changed or whose references appeared or vanished: at
/// 50 000 routers, parsing every rule and qualifying every name again for a one-router change
/// was most of a compile. The output is exactly what a fresh [`compile`] gives (tested).
#[derive(Debug, Default)]
pub struct Compiler {
    /// The entry points the cache was made with; other entry points empty it.
    entry_points: Vec<EntryPoint>,
    /// By provider, then router name (unqualified).
    routers: HashMap<String, HashMap<String, Compiled>>,
    /// Counts compiles; entries not used by the latest are dropped after it.
    round: u64,
}

/// A router as the last compile made it, from this definition, without any diagnostic.
#[derive(Debug)]
struct Compiled {
    definition: Arc<dynamic::Router>,
    router: Arc<Router>,
    round: u64,
}

impl Compiled {
    /// Whether compiling `definition` now would give `router` again: same definition (the same
    /// allocation, or equal), no TLS part (it depends on the TLS options and resolvers), and its
    /// service and middlewares still exist. Entry points are checked for the whole cache.
    fn still_holds(
        &self,
        definition: &Arc<dynamic::Router>,
        services: &BTreeMap<String, Service>,
        middlewares: &BTreeMap<String, Middleware>,
    ) -> bool {
        (Arc::ptr_eq(&self.definition, definition) || *self.definition == **definition)
            && definition.tls.is_none()
            && services.contains_key(&self.router.service)
            && self
                .router
                .middlewares
                .iter()
                .all(|m| middlewares.contains_key(m))
    }
}

/// What a router's references are checked against.
struct Known<'a> {
    entry_points: &'a BTreeSet<&'a str>,
    services: &'a BTreeMap<String, Service>,
    middlewares: &'a BTreeMap<String, Middleware>,
    tls: &'a tls::CompiledTls,
}

impl Compiler {
    /// Compiles the providers' configurations (keyed by provider name) into a snapshot.
    pub fn compile(
        &mut self,
        entry_points: &[EntryPoint],
        providers: &BTreeMap<String, impl Borrow<DynamicConfig>>,
    ) -> (SharedSnapshot, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let mut entry_points = entry_points.to_vec();
        entry_points.sort_by(|a, b| a.name.cmp(&b.name));
        if entry_points != self.entry_points {
            self.routers.clear();
            self.entry_points.clone_from(&entry_points);
        }
        self.round += 1;
        let round = self.round;
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

        // Pass 3: routers, reusing what the last compile made of the unchanged ones.
        let known = Known {
            entry_points: &ep_names,
            services: &services,
            middlewares: &middlewares,
            tls: &tls_out,
        };
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
            let cache = match self.routers.get_mut(provider.as_str()) {
                Some(cache) => cache,
                None => self.routers.entry(provider.clone()).or_default(),
            };
            for (name, definition) in &http.routers {
                if let Some(compiled) = cache.get_mut(name.as_str())
                    && compiled.still_holds(definition, &services, &middlewares)
                {
                    compiled.round = round;
                    routers.push(Arc::clone(&compiled.router));
                    continue;
                }
                let before = diags.len();
                let Some(router) = compile_router(provider, name, definition, &known, &mut diags)
                else {
                    continue;
                };
                let router = Arc::new(router);
                if diags.len() == before {
                    cache.insert(
                        name.clone(),
                        Compiled {
                            definition: Arc::clone(definition),
                            router: Arc::clone(&router),
                            round,
                        },
                    );
                }
                routers.push(router);
            }
        }
        for cache in self.routers.values_mut() {
            cache.retain(|_, compiled| compiled.round == round);
        }
        self.routers.retain(|_, cache| !cache.is_empty());
        // Qualified names are unique (one map per provider, `@` refused in names), so an unstable
        // sort is deterministic; it needs no buffer and is linear on a run already in order.
        routers.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        diags.sort();
        diags.dedup();
        let snapshot = SharedSnapshot {
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
}

/// Compiles one router definition; `None` (with an error in `diags`) when it is left out.
fn compile_router(
    provider: &str,
    name: &str,
    r: &dynamic::Router,
    known: &Known<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Router> {
    let qualified = qualify(name, provider);
    let object = ObjectName::new("router", &qualified);
    let mut fail = |message: String| {
        diags.push(Diagnostic::error(provider, object, message));
        None
    };
    if name.contains('@') {
        return fail("`@` is not allowed in a router name".into());
    }
    validate::report_extra(provider, object, &r.other, diags);
    let router_tls = match &r.tls {
        None => None,
        Some(def) => match tls::router_tls(def, provider, known.tls) {
            Ok((t, warnings)) => {
                for w in warnings {
                    diags.push(Diagnostic::warning(provider, object, w));
                }
                Some(t)
            }
            Err(e) => {
                diags.push(Diagnostic::error(provider, object, e));
                return None;
            }
        },
    };
    let mut fail = |message: String| {
        diags.push(Diagnostic::error(provider, object, message));
        None
    };
    if let Some(syntax) = r.rule_syntax.as_deref().filter(|s| *s != "v3") {
        return fail(format!(
            "ruleSyntax `{syntax}` is not supported; only v3 rules are"
        ));
    }
    if r.rule.trim().is_empty() {
        return fail("rule is required".into());
    }
    let expr = match rule::parse_rule(&r.rule) {
        Ok(e) => e,
        Err(e) => return fail(format!("error while parsing rule {}: {e}", r.rule)),
    };
    let priority = if r.priority == 0 {
        default_priority(&r.rule)
    } else {
        r.priority
    };
    if priority > MAX_USER_PRIORITY {
        return fail(format!(
            "the router priority {priority} exceeds the max user-defined priority {MAX_USER_PRIORITY}"
        ));
    }
    if r.service.is_empty() {
        return fail("the router has no service".into());
    }
    let service = qualify(&r.service, provider);
    if !known.services.contains_key(&service) {
        return fail(format!("the service \"{service}\" does not exist"));
    }
    let mut mws = Vec::with_capacity(r.middlewares.len());
    for m in &r.middlewares {
        let q = qualify(m, provider);
        if !known.middlewares.contains_key(&q) {
            return fail(format!("middleware \"{q}\" does not exist"));
        }
        mws.push(q);
    }
    let eps = if r.entry_points.is_empty() {
        known
            .entry_points
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
    } else {
        let mut eps = Vec::new();
        for ep in &r.entry_points {
            if known.entry_points.contains(ep.as_str()) {
                eps.push(ep.clone());
            } else {
                diags.push(Diagnostic::warning(
                    provider,
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
            provider,
            object,
            "no valid entryPoint for this router",
        ));
        return None;
    }
    Some(Router {
        name: qualified,
        provider: provider.to_owned(),
        entry_points: eps,
        rule: expr,
        priority,
        middlewares: mws,
        service,
        rule_text: r.rule.clone(),
        tls: router_tls,
    })
}

#[cfg(test)]
mod tests;
