//! The applier's core: turns a snapshot into a [`Table`] — per-entry-point route tables with
//! compiled matchers, flattened middleware chains and load balancers — *before* anything live is
//! touched. Any failure is an error that the subscriber NACKs; the previous table keeps serving.
//! Load balancers whose definition did not change are carried over, so rotation continues.

use std::{collections::HashSet, sync::Arc};

use http::{HeaderValue, uri::Authority};
use switchyard_shared::{
    changes::Changes,
    pb,
    snapshot::{self, LoadBalancer, MiddlewareKind, ServiceKind, Snapshot},
};
use thiserror::Error;

use crate::{
    acme_challenge::HttpChallenges,
    balance::Wrr,
    middleware::Middleware,
    router::{Map, RouteInput, RouteTable},
    tls::TlsState,
};

/// A set hashed like [`Map`].
type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// Why a snapshot cannot be applied. The message is what the NACK carries.
#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("snapshot {version} has no content")]
    Empty { version: String },
    #[error(transparent)]
    Decode(#[from] snapshot::SnapshotError),
    #[error("router {router}: {reason}")]
    Router { router: String, reason: String },
    #[error("service {service}: {reason}")]
    Service { service: String, reason: String },
    #[error("middleware {middleware}: {reason}")]
    Middleware { middleware: String, reason: String },
    #[error("entry point {entry_point}: {reason}")]
    EntryPoint { entry_point: String, reason: String },
    #[error("tls: {reason}")]
    Tls { reason: String },
}

/// An error with its sources, `a: b: c` (the NACK should say everything).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Maximum depth of chains and weighted services (the controller already rejects cycles).
const MAX_DEPTH: usize = 32;

/// How to reach one upstream server. Shared: a request in flight holds the server it was sent to
/// (for its pool key and its errors) and nothing else of the table.
#[derive(Debug)]
pub struct Upstream {
    pub url: String,
    /// Talk HTTP/2 without TLS (`h2c://`).
    pub h2c: bool,
    pub authority: Authority,
    /// The server URL's authority as a Host header (when `passHostHeader` is false).
    pub host_header: HeaderValue,
    /// The server URL's path without a trailing slash, prepended to the request path.
    pub base_path: String,
}

/// A load balancer over servers.
#[derive(Debug)]
pub struct Balancer {
    spec: LoadBalancer,
    pub servers: Vec<Arc<Upstream>>,
    wrr: Wrr,
    pub pass_host_header: bool,
}

/// A service the handler can pick a server from.
#[derive(Debug)]
pub enum ServiceHandle {
    LoadBalancer(Balancer),
    Weighted {
        children: Vec<Arc<ServiceHandle>>,
        wrr: Wrr,
    },
}

impl ServiceHandle {
    /// Picks a server; `None` when the service has no usable server (→ 503).
    pub fn pick(&self) -> Option<(&Balancer, &Arc<Upstream>)> {
        let mut current = self;
        for _ in 0..=MAX_DEPTH {
            match current {
                ServiceHandle::LoadBalancer(lb) => {
                    let i = lb.wrr.pick()?;
                    return lb.servers.get(i).map(|s| (lb, s));
                }
                ServiceHandle::Weighted { children, wrr } => {
                    current = children.get(wrr.pick()?)?;
                }
            }
        }
        None
    }
}

/// A matched router's work: middlewares in order, then the service.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    /// A boxed slice, not a `Vec`: one word less in every route (most have no middleware).
    pub middlewares: Box<[Arc<Middleware>]>,
    pub service: Arc<ServiceHandle>,
}

/// Entry-point redirection (`http.redirections.entryPoint`) of plain-HTTP requests.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: String,
    /// Empty: no port in the `Location`.
    pub port: String,
    pub permanent: bool,
}

/// The routes of one entry point: plain-HTTP routers and TLS routers never mix (Traefik). Shared
/// with the next table when a patch leaves them alone.
#[derive(Clone, Debug, Default)]
pub struct EntryTables {
    pub plain: Arc<RouteTable<Arc<Route>>>,
    pub tls: Arc<RouteTable<Arc<Route>>>,
    pub redirect: Option<Redirect>,
}

/// Most routers and services a patch changes in a table of `routers` routers: beyond that a
/// full build costs about the same.
pub fn patch_limit(routers: usize) -> usize {
    (routers / 8).max(64)
}

/// Everything the request path needs, swapped atomically per snapshot.
#[derive(Debug, Default)]
pub struct Table {
    pub version: String,
    pub generation: u64,
    /// Entry points declared by the snapshot: `(name, address)`.
    pub entry_points: Vec<(String, String)>,
    routes: Map<String, EntryTables>,
    /// TLS material; `None` when no router uses TLS (connections are then never sniffed).
    pub tls: Option<Arc<TlsState>>,
    services: Map<String, Arc<ServiceHandle>>,
    pub router_count: usize,
    /// ACME HTTP-01 challenges (answered before routing).
    pub acme_http: Arc<HttpChallenges>,
    /// The snapshot's middlewares, for the routes a patch adds.
    middlewares: Arc<MiddlewareSet>,
    /// Whether any service is weighted (its children are handles of other services).
    has_weighted: bool,
}

impl Table {
    /// The route table of an entry point.
    #[inline]
    pub fn entry_point(&self, name: &str) -> Option<&EntryTables> {
        self.routes.get(name)
    }

    /// Builds a table from a versioned snapshot, reusing unchanged balancers from `previous`.
    pub fn build(
        versioned: &pb::VersionedSnapshot,
        previous: Option<&Table>,
    ) -> Result<Self, ApplyError> {
        Self::build_keeping_input(versioned.clone(), previous).map(|(table, _)| table)
    }

    /// [`Table::build`] consuming the snapshot (its wire form is converted in place rather than
    /// copied first), handing back the decoded snapshot: see [`Table::from_snapshot`].
    pub fn build_keeping_input(
        versioned: pb::VersionedSnapshot,
        previous: Option<&Table>,
    ) -> Result<(Self, Snapshot), ApplyError> {
        let pb::VersionedSnapshot {
            version,
            generation,
            snapshot: wire,
            ..
        } = versioned;
        let Some(wire) = wire else {
            return Err(ApplyError::Empty { version });
        };
        let snapshot = Snapshot::try_from(wire)?;
        Self::from_snapshot(version, generation, snapshot, previous)
    }

    /// Builds the table of a decoded snapshot, reusing unchanged balancers from `previous`, and
    /// hands the snapshot back, so the caller decides when to free it (hundreds of thousands of
    /// allocations at 50 000 routers) instead of paying for that inside the build. (Compiling
    /// and freeing each router in turn lowered the peak of an apply at 50 000 routers from 59 to
    /// 43 MiB but more than doubled its time: glibc then merges the freed chunks inside the
    /// build, and the table ends up spread through the fragments.)
    pub fn from_snapshot(
        version: String,
        generation: u64,
        snapshot: Snapshot,
        previous: Option<&Table>,
    ) -> Result<(Self, Snapshot), ApplyError> {
        for ep in &snapshot.entry_points {
            crate::listener::parse_listen_address(&ep.address).map_err(|reason| {
                ApplyError::EntryPoint {
                    entry_point: ep.name.clone(),
                    reason,
                }
            })?;
        }

        let services = build_services(&snapshot, previous)?;
        let middlewares = build_middlewares(&snapshot)?;

        // (entry point, is TLS) → routes, each list sized exactly (at 50 000 routers a list grown
        // by doubling is megabytes copied and left unused at the peak of the apply).
        let ep_names: Set<&str> = snapshot
            .entry_points
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let mut sizes: Map<(&str, bool), usize> = Map::default();
        for r in &snapshot.routers {
            for ep in &r.entry_points {
                *sizes.entry((ep.as_str(), r.tls.is_some())).or_default() += 1;
            }
        }
        let mut per_ep: Map<(&str, bool), Vec<RouteInput<'_, Arc<Route>>>> = sizes
            .into_iter()
            .map(|(key, size)| (key, Vec::with_capacity(size)))
            .collect();
        for r in &snapshot.routers {
            let fail = |reason: String| ApplyError::Router {
                router: r.name.clone(),
                reason,
            };
            let service = services
                .get(&r.service)
                .cloned()
                .ok_or_else(|| fail(format!("unknown service {}", r.service)))?;
            let mut chain = Vec::new();
            for m in &r.middlewares {
                flatten(m, &middlewares, &mut chain, 0).map_err(fail)?;
            }
            let route = Arc::new(Route {
                name: Arc::from(r.name.as_str()),
                middlewares: chain.into_boxed_slice(),
                service,
            });
            for ep in &r.entry_points {
                if !ep_names.contains(ep.as_str()) {
                    return Err(fail(format!("unknown entry point {ep}")));
                }
                per_ep
                    .entry((ep.as_str(), r.tls.is_some()))
                    .or_default()
                    .push(RouteInput {
                        name: &r.name,
                        rule: &r.rule,
                        priority: r.priority,
                        payload: route.clone(),
                    });
            }
        }
        let mut routes = Map::default();
        for ep in &snapshot.entry_points {
            let mut build = |tls: bool| {
                let inputs = per_ep.remove(&(ep.name.as_str(), tls)).unwrap_or_default();
                RouteTable::build(inputs).map_err(|e| ApplyError::EntryPoint {
                    entry_point: ep.name.clone(),
                    reason: error_chain(&e),
                })
            };
            let tables = EntryTables {
                plain: Arc::new(build(false)?),
                tls: Arc::new(build(true)?),
                redirect: ep.redirect.as_ref().map(|r| Redirect {
                    scheme: r.scheme.clone(),
                    port: r.port.clone(),
                    permanent: r.permanent,
                }),
            };
            routes.insert(ep.name.clone(), tables);
        }
        let tls = if snapshot.routers.iter().any(|r| r.tls.is_some())
            || !snapshot.tls_challenges.is_empty()
        {
            Some(Arc::new(
                TlsState::build(&snapshot).map_err(|reason| ApplyError::Tls { reason })?,
            ))
        } else {
            None
        };
        let router_count = snapshot.routers.len();
        let has_weighted = services
            .values()
            .any(|s| matches!(**s, ServiceHandle::Weighted { .. }));
        let table = Table {
            version,
            generation,
            entry_points: snapshot
                .entry_points
                .iter()
                .map(|e| (e.name.clone(), e.address.clone()))
                .collect(),
            routes,
            tls,
            services,
            router_count,
            acme_http: Arc::new(HttpChallenges::new(&snapshot.http_challenges)),
            middlewares: Arc::new(middlewares),
            has_weighted,
        };
        Ok((table, snapshot))
    }

    /// The table of a snapshot that differs from the one `self` was built from only by `changes`
    /// (see `switchyard_shared::changes`): the routes and services that did not change are shared
    /// or reused rather than built again, and only the entry points a change touches get new
    /// route tables. `None` when the changes need a full build — a router with TLS (the SNI
    /// resolver is built from them), a changed service that a weighted one may use, or anything a
    /// full build would refuse (which then reports it).
    pub fn patch(&self, version: String, generation: u64, changes: &Changes) -> Option<Table> {
        let removed_routers: Set<&str> = changes
            .routers_removed
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        if changes
            .routers_removed
            .iter()
            .chain(&changes.routers_added)
            .any(|r| r.tls.is_some())
        {
            return None;
        }

        // Services: a changed or removed one is replaced wherever a route uses it.
        let mut services = self.services.clone();
        let mut replaced: Map<*const ServiceHandle, Option<Arc<ServiceHandle>>> = Map::default();
        let mut replaced_names: Map<&str, *const ServiceHandle> = Map::default();
        for name in &changes.services_removed {
            let old = services.remove(name)?;
            replaced.insert(Arc::as_ptr(&old), None);
            replaced_names.insert(name, Arc::as_ptr(&old));
        }
        if self.has_weighted && !replaced.is_empty() {
            return None;
        }
        for s in &changes.services_added {
            let ServiceKind::LoadBalancer(lb) = &s.kind else {
                return None;
            };
            let handle = Arc::new(ServiceHandle::LoadBalancer(build_balancer(lb).ok()?));
            if let Some(old) = replaced_names.get(s.name.as_str()) {
                replaced.insert(*old, Some(Arc::clone(&handle)));
            }
            services.insert(s.name.clone(), handle);
        }

        // The routes added, per entry point.
        let mut added: Map<&str, Vec<RouteInput<'_, Arc<Route>>>> = Map::default();
        for r in &changes.routers_added {
            let service = services.get(&r.service)?.clone();
            let mut chain = Vec::new();
            for m in &r.middlewares {
                flatten(m, &self.middlewares, &mut chain, 0).ok()?;
            }
            let route = Arc::new(Route {
                name: Arc::from(r.name.as_str()),
                middlewares: chain.into_boxed_slice(),
                service,
            });
            for ep in &r.entry_points {
                if !self.routes.contains_key(ep) {
                    return None;
                }
                added.entry(ep.as_str()).or_default().push(RouteInput {
                    name: &r.name,
                    rule: &r.rule,
                    priority: r.priority,
                    payload: route.clone(),
                });
            }
        }
        let touched: Set<&str> = changes
            .routers_removed
            .iter()
            .flat_map(|r| &r.entry_points)
            .map(String::as_str)
            .chain(added.keys().copied())
            .collect();

        // A kept route whose service was replaced gets the new one; a route whose service is
        // gone means the snapshot is inconsistent: left to the full build to report.
        let mut broken = false;
        let mut keep = |route: &Arc<Route>| -> Option<Arc<Route>> {
            if removed_routers.contains(&*route.name) {
                return None;
            }
            match replaced.get(&Arc::as_ptr(&route.service)) {
                None => Some(Arc::clone(route)),
                Some(Some(service)) => Some(Arc::new(Route {
                    name: Arc::clone(&route.name),
                    middlewares: route.middlewares.clone(),
                    service: Arc::clone(service),
                })),
                Some(None) => {
                    broken = true;
                    None
                }
            }
        };
        fn name_of(route: &Arc<Route>) -> &str {
            &route.name
        }
        let mut routes = Map::default();
        for (ep, tables) in &self.routes {
            // Any route may use a replaced service.
            if replaced.is_empty() && !touched.contains(ep.as_str()) {
                routes.insert(ep.clone(), tables.clone());
                continue;
            }
            let inputs = added.remove(ep.as_str()).unwrap_or_default();
            let plain = tables.plain.patch(&mut keep, inputs, name_of).ok()?;
            let tls = if replaced.is_empty() {
                Arc::clone(&tables.tls)
            } else {
                Arc::new(tables.tls.patch(&mut keep, Vec::new(), name_of).ok()?)
            };
            routes.insert(
                ep.clone(),
                EntryTables {
                    plain: Arc::new(plain),
                    tls,
                    redirect: tables.redirect.clone(),
                },
            );
        }
        if broken {
            return None;
        }
        Some(Table {
            version,
            generation,
            entry_points: self.entry_points.clone(),
            routes,
            tls: self.tls.clone(),
            services,
            router_count: changes.router_count,
            acme_http: Arc::clone(&self.acme_http),
            middlewares: Arc::clone(&self.middlewares),
            has_weighted: self.has_weighted,
        })
    }
}

/// Every middleware of a snapshot: its definition, and its compiled form unless it is a chain.
type MiddlewareSet = Map<String, (MiddlewareKind, Option<Arc<Middleware>>)>;

fn flatten(
    name: &str,
    all: &MiddlewareSet,
    out: &mut Vec<Arc<Middleware>>,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "middleware chain through {name} is too deep or cyclic"
        ));
    }
    match all.get(name) {
        None => Err(format!("unknown middleware {name}")),
        Some((MiddlewareKind::Chain(children), _)) => {
            for c in children {
                flatten(c, all, out, depth + 1)?;
            }
            Ok(())
        }
        Some((_, Some(built))) => {
            out.push(built.clone());
            Ok(())
        }
        Some((_, None)) => Err(format!("middleware {name} could not be built")),
    }
}

fn build_middlewares(snapshot: &Snapshot) -> Result<MiddlewareSet, ApplyError> {
    snapshot
        .middlewares
        .iter()
        .map(|m| {
            let built = Middleware::build(&m.kind).map_err(|e| ApplyError::Middleware {
                middleware: m.name.clone(),
                reason: e.to_string(),
            })?;
            Ok((m.name.clone(), (m.kind.clone(), built.map(Arc::new))))
        })
        .collect()
}

fn build_services(
    snapshot: &Snapshot,
    previous: Option<&Table>,
) -> Result<Map<String, Arc<ServiceHandle>>, ApplyError> {
    let specs: Map<&str, &ServiceKind> = snapshot
        .services
        .iter()
        .map(|s| (s.name.as_str(), &s.kind))
        .collect();
    let mut built: Map<String, Arc<ServiceHandle>> = Map::default();
    for s in &snapshot.services {
        build_service(&s.name, &specs, previous, &mut built, 0)?;
    }
    Ok(built)
}

fn build_service(
    name: &str,
    specs: &Map<&str, &ServiceKind>,
    previous: Option<&Table>,
    built: &mut Map<String, Arc<ServiceHandle>>,
    depth: usize,
) -> Result<Arc<ServiceHandle>, ApplyError> {
    let fail = |reason: String| ApplyError::Service {
        service: name.to_owned(),
        reason,
    };
    if let Some(done) = built.get(name) {
        return Ok(done.clone());
    }
    if depth > MAX_DEPTH {
        return Err(fail(
            "weighted services nest too deep or form a cycle".into(),
        ));
    }
    let spec = specs
        .get(name)
        .ok_or_else(|| fail("unknown service".into()))?;
    let handle = match spec {
        ServiceKind::LoadBalancer(lb) => {
            let reusable = previous
                .and_then(|p| p.services.get(name))
                .filter(|old| matches!(&***old, ServiceHandle::LoadBalancer(b) if b.spec == *lb));
            match reusable {
                Some(old) => old.clone(),
                None => Arc::new(ServiceHandle::LoadBalancer(
                    build_balancer(lb).map_err(fail)?,
                )),
            }
        }
        ServiceKind::Weighted(children) => {
            let mut handles = Vec::with_capacity(children.len());
            for c in children {
                handles.push(build_service(&c.name, specs, previous, built, depth + 1)?);
            }
            let weights: Vec<u32> = children.iter().map(|c| c.weight).collect();
            Arc::new(ServiceHandle::Weighted {
                children: handles,
                wrr: Wrr::new(&weights),
            })
        }
    };
    built.insert(name.to_owned(), handle.clone());
    Ok(handle)
}

fn build_balancer(lb: &LoadBalancer) -> Result<Balancer, String> {
    let servers = lb
        .servers
        .iter()
        .map(|s| upstream(&s.url).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let weights: Vec<u32> = lb.servers.iter().map(|s| s.weight).collect();
    Ok(Balancer {
        spec: lb.clone(),
        servers,
        wrr: Wrr::new(&weights),
        pass_host_header: lb.pass_host_header,
    })
}

fn upstream(url: &str) -> Result<Upstream, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("server url `{url}`: {e}"))?;
    let h2c = match uri.scheme_str() {
        Some("http") => false,
        Some("h2c") => true,
        other => {
            return Err(format!(
                "server url `{url}`: unsupported scheme {}",
                other.unwrap_or("(none)")
            ));
        }
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("server url `{url}` has no host"))?;
    let host_header = HeaderValue::from_str(authority.as_str())
        .map_err(|_| format!("server url `{url}`: host is not a valid header value"))?;
    Ok(Upstream {
        url: url.to_owned(),
        h2c,
        authority,
        host_header,
        base_path: uri.path().trim_end_matches('/').to_owned(),
    })
}

#[cfg(test)]
mod tests;
