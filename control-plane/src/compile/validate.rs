//! Per-object validation: turns one Traefik middleware or service into its compiled form, or
//! explains why it is left out. Cross-references (chains, weighted children) are checked once
//! every object exists, so an object that depends on a failed one fails too (Traefik's cascade).

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};
use switchyard_shared::snapshot::{
    LoadBalancer, Middleware, MiddlewareKind, Server, Service, ServiceKind, WeightedService,
};

use super::{Diagnostic, ObjectName, qualify};
use crate::dynamic::{self, DynamicConfig, Extra};

/// Maximum depth of nested chains / weighted services (guards against deep recursion).
const MAX_REF_DEPTH: usize = 32;

pub(super) fn report_unsupported_root(
    provider: &str,
    config: &DynamicConfig,
    diags: &mut Vec<Diagnostic>,
) {
    for key in config.other.keys() {
        diags.push(Diagnostic::warning(
            provider,
            format!("{key}@{provider}"),
            format!("the `{key}` section is not supported yet and is ignored"),
        ));
    }
    if let Some(http) = &config.http {
        for key in http.other.keys() {
            diags.push(Diagnostic::warning(
                provider,
                format!("http.{key}@{provider}"),
                format!("`http.{key}` is not supported yet and is ignored"),
            ));
        }
    }
}

pub(super) fn report_extra(
    provider: &str,
    object: ObjectName<'_>,
    extra: &Extra,
    diags: &mut Vec<Diagnostic>,
) {
    for key in extra.keys() {
        if key == "tls" {
            continue; // handled by the caller
        }
        diags.push(Diagnostic::warning(
            provider,
            object,
            format!("option `{key}` is not supported yet and is ignored"),
        ));
    }
}

pub(super) fn middleware(
    provider: &str,
    name: &str,
    m: &dynamic::Middleware,
    diags: &mut Vec<Diagnostic>,
) -> Option<Middleware> {
    let qualified = qualify(name, provider);
    let object = ObjectName::new("middleware", &qualified);
    let fail = |diags: &mut Vec<Diagnostic>, message: String| {
        diags.push(Diagnostic::error(provider, object, message));
    };
    if name.contains('@') {
        fail(diags, "`@` is not allowed in a middleware name".into());
        return None;
    }
    let mut kinds: Vec<&str> = Vec::new();
    if m.strip_prefix.is_some() {
        kinds.push("stripPrefix");
    }
    if m.add_prefix.is_some() {
        kinds.push("addPrefix");
    }
    if m.headers.is_some() {
        kinds.push("headers");
    }
    if m.redirect_scheme.is_some() {
        kinds.push("redirectScheme");
    }
    if m.chain.is_some() {
        kinds.push("chain");
    }
    let unsupported: Vec<&str> = m.other.keys().map(String::as_str).collect();
    match (kinds.len(), unsupported.as_slice()) {
        (0, []) => {
            fail(diags, "middleware has no type".into());
            return None;
        }
        (0, [one]) => {
            fail(
                diags,
                format!("middleware type `{one}` is not supported by switchyard yet"),
            );
            return None;
        }
        (1, []) => {}
        _ => {
            let mut all = kinds.clone();
            all.extend(unsupported.iter());
            fail(
                diags,
                format!("multi-types middleware not supported: {}", all.join(", ")),
            );
            return None;
        }
    }
    let kind = if let Some(s) = &m.strip_prefix {
        if s.prefixes.is_empty() || s.prefixes.iter().any(String::is_empty) {
            fail(diags, "stripPrefix: prefixes must be non-empty".into());
            return None;
        }
        MiddlewareKind::StripPrefix {
            prefixes: s.prefixes.clone(),
        }
    } else if let Some(a) = &m.add_prefix {
        if a.prefix.is_empty() {
            fail(diags, "addPrefix: prefix is required".into());
            return None;
        }
        MiddlewareKind::AddPrefix {
            prefix: a.prefix.clone(),
        }
    } else if let Some(h) = &m.headers {
        let check = |map: &BTreeMap<String, String>, what: &str| {
            let mut out = Vec::with_capacity(map.len());
            for (k, v) in map {
                if HeaderName::from_bytes(k.as_bytes()).is_err() {
                    return Err(format!("headers.{what}: `{k}` is not a valid header name"));
                }
                if HeaderValue::from_str(v).is_err() {
                    return Err(format!(
                        "headers.{what}.{k}: the value is not a valid header value"
                    ));
                }
                out.push((k.clone(), v.clone()));
            }
            Ok(out)
        };
        let request = match check(&h.custom_request_headers, "customRequestHeaders") {
            Ok(r) => r,
            Err(e) => {
                fail(diags, e);
                return None;
            }
        };
        let response = match check(&h.custom_response_headers, "customResponseHeaders") {
            Ok(r) => r,
            Err(e) => {
                fail(diags, e);
                return None;
            }
        };
        report_extra(provider, object, &h.other, diags);
        MiddlewareKind::Headers { request, response }
    } else if let Some(r) = &m.redirect_scheme {
        if r.scheme.is_empty() {
            fail(
                diags,
                "redirectScheme: you must provide a target scheme".into(),
            );
            return None;
        }
        if !r
            .scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            fail(
                diags,
                format!("redirectScheme: `{}` is not a valid scheme", r.scheme),
            );
            return None;
        }
        let port = r.port.clone().filter(|p| !p.is_empty());
        if let Some(p) = &port
            && p.parse::<u16>().is_err()
        {
            fail(diags, format!("redirectScheme: `{p}` is not a valid port"));
            return None;
        }
        MiddlewareKind::RedirectScheme {
            scheme: r.scheme.clone(),
            port,
            permanent: r.permanent,
        }
    } else if let Some(c) = &m.chain {
        MiddlewareKind::Chain(c.middlewares.iter().map(|n| qualify(n, provider)).collect())
    } else {
        return None;
    };
    Some(Middleware {
        name: qualified,
        kind,
    })
}

pub(super) fn service(
    provider: &str,
    name: &str,
    s: &dynamic::Service,
    diags: &mut Vec<Diagnostic>,
) -> Option<Service> {
    let qualified = qualify(name, provider);
    let object = ObjectName::new("service", &qualified);
    let fail = |diags: &mut Vec<Diagnostic>, message: String| {
        diags.push(Diagnostic::error(provider, object, message));
    };
    if name.contains('@') {
        fail(diags, "`@` is not allowed in a service name".into());
        return None;
    }
    let unsupported: Vec<&str> = s.other.keys().map(String::as_str).collect();
    let count = usize::from(s.load_balancer.is_some())
        + usize::from(s.weighted.is_some())
        + unsupported.len();
    if count > 1 {
        fail(diags, "multi-types service not supported".into());
        return None;
    }
    if let [one] = unsupported.as_slice() {
        fail(
            diags,
            format!("service type `{one}` is not supported by switchyard yet"),
        );
        return None;
    }
    let kind = if let Some(lb) = &s.load_balancer {
        report_extra(provider, object, &lb.other, diags);
        let mut servers = Vec::with_capacity(lb.servers.len());
        for (i, server) in lb.servers.iter().enumerate() {
            report_extra(provider, object, &server.other, diags);
            if let Err(e) = check_server_url(&server.url) {
                fail(diags, format!("servers[{i}].url: {e}"));
                return None;
            }
            servers.push(Server {
                url: server.url.trim_end_matches('/').to_owned(),
                weight: server.weight.unwrap_or(1),
            });
        }
        ServiceKind::LoadBalancer(LoadBalancer {
            servers,
            pass_host_header: lb.pass_host_header.unwrap_or(true),
        })
    } else if let Some(w) = &s.weighted {
        report_extra(provider, object, &w.other, diags);
        ServiceKind::Weighted(
            w.services
                .iter()
                .map(|c| WeightedService {
                    name: qualify(&c.name, provider),
                    weight: c.weight.unwrap_or(1),
                })
                .collect(),
        )
    } else {
        fail(diags, "service has no type".into());
        return None;
    };
    Some(Service {
        name: qualified,
        kind,
    })
}

/// Accepts `http://host[:port][/path]`, `https://…` and `h2c://…`.
fn check_server_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("url is required".into());
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "h2c") => {}
        Some("https") => return Err(format!("`{url}`: https upstreams are not supported yet")),
        Some(other) => return Err(format!("`{url}`: unsupported scheme `{other}`")),
        None => return Err(format!("`{url}` has no scheme (expected http://host:port)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}`: a query is not allowed in a server URL"));
    }
    Ok(())
}

/// Drops chains that reference missing/failed middlewares or form a cycle, to a fixed point.
pub(super) fn resolve_middleware_refs(
    middlewares: &mut BTreeMap<String, Middleware>,
    diags: &mut Vec<Diagnostic>,
) {
    resolve_refs(
        middlewares,
        |m| match &m.kind {
            MiddlewareKind::Chain(children) => Some(children.iter().map(String::as_str).collect()),
            _ => None,
        },
        RefKind {
            object: "middleware",
            missing: |name| format!("middleware \"{name}\" does not exist"),
            cycle: "recursion detected in chain (or nested too deep)",
        },
        diags,
    );
}

/// Drops weighted services that reference missing/failed services or form a cycle.
pub(super) fn resolve_service_refs(
    services: &mut BTreeMap<String, Service>,
    diags: &mut Vec<Diagnostic>,
) {
    resolve_refs(
        services,
        |s| match &s.kind {
            ServiceKind::Weighted(children) => {
                Some(children.iter().map(|c| c.name.as_str()).collect())
            }
            _ => None,
        },
        RefKind {
            object: "service",
            missing: |name| format!("the service \"{name}\" does not exist"),
            cycle: "recursion detected in weighted service (or nested too deep)",
        },
        diags,
    );
}

/// How to report a broken reference of one object kind.
struct RefKind {
    object: &'static str,
    missing: fn(&str) -> String,
    cycle: &'static str,
}

/// Removes, to a fixed point, every object whose children (`children` returns `None` for leaf
/// objects) are missing, were removed, or form a cycle — Traefik's cascade.
fn resolve_refs<T>(
    objects: &mut BTreeMap<String, T>,
    children: impl Fn(&T) -> Option<Vec<&str>>,
    kind: RefKind,
    diags: &mut Vec<Diagnostic>,
) {
    loop {
        let mut bad: Vec<(String, String)> = Vec::new();
        for (name, object) in objects.iter() {
            let Some(refs) = children(object) else {
                continue;
            };
            if let Some(missing) = refs.iter().find(|c| !objects.contains_key(**c)) {
                bad.push((name.clone(), (kind.missing)(missing)));
            } else if depth(objects, &children, name, 0).is_none() {
                bad.push((name.clone(), kind.cycle.to_owned()));
            }
        }
        if bad.is_empty() {
            return;
        }
        for (name, message) in bad {
            let provider = name.rsplit_once('@').map_or("", |(_, p)| p).to_owned();
            diags.push(Diagnostic::error(
                provider,
                format!("{}/{name}", kind.object),
                message,
            ));
            objects.remove(&name);
        }
    }
}

/// Nesting depth below `name`, or `None` past `MAX_REF_DEPTH` (which a cycle always reaches).
fn depth<T>(
    all: &BTreeMap<String, T>,
    children: &impl Fn(&T) -> Option<Vec<&str>>,
    name: &str,
    level: usize,
) -> Option<usize> {
    if level > MAX_REF_DEPTH {
        return None;
    }
    match all.get(name).and_then(children) {
        Some(refs) => {
            let mut max = level;
            for c in refs {
                max = max.max(depth(all, children, c, level + 1)?);
            }
            Some(max)
        }
        None => Some(level),
    }
}
