//! Request matching for one entry point: evaluates the compiled rule trees ([`Expr`]) with Traefik
//! v3's semantics and returns the first matching route in priority order.
//!
//! Owns the routing path ([`routing_path`]), host canonicalisation ([`normalize_host`]), the host
//! index and the route order. It never parses rule text (the controller does), does no I/O, and
//! never panics on request input; what happens after a match (middlewares, balancing) is not its
//! business.
//!
//! Lookup: the request host is canonicalised once; the routes that *require* that exact host, the
//! routes that require a `*.parent` wildcard covering it, and the routes that require no particular
//! host are three lists of indices in global order, merged lazily. Each candidate's whole rule is
//! evaluated; the first match wins. A table with thousands of `Host(…)` routers therefore costs a
//! hash lookup plus the few candidates of that host, not a scan (Traefik scans linearly).
//!
//! Within each of the three lists, when many of its routes require a path prefix (`PathPrefix`,
//! `Path`), a second index keyed by that prefix splits the list: a request looks up only the
//! prefixes of its own path, by the few distinct prefix lengths the list holds. Ten thousand
//! `PathPrefix` routers under one host cost a handful of hash lookups, not ten thousand checks.

use std::fmt;
use std::net::{AddrParseError, IpAddr};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use ipnet::{IpNet, Ipv4Net};
use regex::Regex;
use switchyard_shared::rule::{Expr, Matcher};

mod request;
#[cfg(test)]
mod tests;

pub use request::{InvalidPath, forwarded_path, normalize_host, routing_path};

/// The hash map of the route tables and of [`crate::state::Table`]: foldhash instead of std's
/// SipHash, which was ~5 % of a table build at 50 000 routers and runs on every request's host
/// lookup. Keys come from the snapshot; a request only looks one up, so collisions cannot be
/// forced from outside. Seeded per process.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use request::{canonical_host, query_pairs, query_unescape, strip_trailing_dot, unescape_eq};

use crate::upstream::h1::RawFields;

/// What the matcher reads of a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// Raw request host: the URI authority for absolute-form and HTTP/2 requests, else the `Host`
    /// header. May carry a port, IPv6 brackets, any case and a trailing dot; `""` when absent.
    pub host: &'a str,
    /// The routing path, as produced by [`routing_path`] (not the raw path).
    pub path: &'a str,
    /// Raw query string without the `?`.
    pub query: Option<&'a str>,
    /// Request method.
    pub method: &'a Method,
    /// Request headers.
    pub headers: Headers<'a>,
    /// Connection peer address (never `X-Forwarded-For`, as in Traefik).
    pub client_ip: IpAddr,
}

/// A request's header fields: its map, or the fields as received when no map was made.
#[derive(Clone, Copy)]
pub enum Headers<'a> {
    Map(&'a HeaderMap),
    Received(&'a RawFields),
}

impl<'a> Headers<'a> {
    /// The values of the fields named `name`, in order.
    fn values(self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let (map, received) = match self {
            Headers::Map(map) => (Some(map.get_all(name)), None),
            Headers::Received(fields) => (None, Some(fields.forwarded_values(name))),
        };
        map.into_iter()
            .flatten()
            .map(HeaderValue::as_bytes)
            .chain(received.into_iter().flatten())
    }
}

impl std::fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Headers::Map(map) => map.fmt(f),
            Headers::Received(fields) => f
                .debug_list()
                .entries(fields.forwarded().map(|(name, value)| {
                    (
                        String::from_utf8_lossy(name),
                        String::from_utf8_lossy(value),
                    )
                }))
                .finish(),
        }
    }
}

/// One router to mount on an entry point.
#[derive(Debug)]
pub struct RouteInput<'a, T> {
    /// Qualified router name (`name@provider`); breaks priority ties and names errors.
    pub name: &'a str,
    /// Compiled rule.
    pub rule: &'a Expr,
    /// Effective priority (the controller already replaced `0` by the rule length).
    pub priority: i64,
    /// What [`RouteTable::find`] returns when this router matches.
    pub payload: T,
}

/// Why a route table could not be built. Any of these rejects the whole table (the snapshot is
/// NACKed); the controller validates rules first, so in practice they mean the two planes disagree.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A regex argument does not compile with this build's `regex` features.
    #[error("router {router}: invalid {matcher} regular expression `{pattern}`")]
    Regex {
        router: String,
        matcher: &'static str,
        pattern: String,
        #[source]
        source: regex::Error,
    },
    /// A `ClientIP` argument is neither an address nor a CIDR.
    #[error("router {router}: ClientIP `{value}` is not an IP address or CIDR")]
    ClientIp {
        router: String,
        value: String,
        #[source]
        source: AddrParseError,
    },
    /// More routes than the index can number.
    #[error("{count} routes on one entry point; at most {max} are supported", max = u32::MAX)]
    TooManyRoutes { count: usize },
}

/// The compiled routers of one entry point, in match order (priority descending, then name
/// ascending), with the host index. Immutable once built; share it behind an `Arc`.
pub struct RouteTable<T> {
    routes: Vec<Route<T>>,
    /// Normalised host → routes that can match only that host. The key is the host string of the
    /// route's compiled `Host` matcher, shared rather than copied.
    exact: Map<Arc<str>, Bucket>,
    /// Parent domain with its leading dot (`.example.com`) → routes holding `*.example.com`.
    wildcard: Map<Arc<str>, Bucket>,
    /// Routes that do not require a particular host.
    generic: Bucket,
}

/// A list of route indices in global order; a long one is split by required path prefix.
#[derive(Clone, Default)]
struct Bucket {
    /// Every route of the bucket, or, with `paths`, those that require no path prefix.
    routes: Indices,
    paths: Option<Box<PathIndex>>,
}

/// Route indices in global order. Most hosts have one router, whose index is kept inline: at
/// 50 000 `Host` routers that is 50 000 fewer allocations per table.
#[derive(Clone)]
enum Indices {
    One(u32),
    Many(Box<[u32]>),
}

impl Default for Indices {
    fn default() -> Self {
        Indices::Many(Box::default())
    }
}

impl From<Vec<u32>> for Indices {
    fn from(list: Vec<u32>) -> Self {
        match list.as_slice() {
            &[one] => Indices::One(one),
            _ => Indices::Many(list.into_boxed_slice()),
        }
    }
}

impl Indices {
    fn as_slice(&self) -> &[u32] {
        match self {
            Indices::One(one) => std::slice::from_ref(one),
            Indices::Many(list) => list,
        }
    }
}

/// Required path prefix → the bucket's routes that require it (in global order).
#[derive(Clone)]
struct PathIndex {
    by_prefix: Map<Box<str>, Box<[u32]>>,
    /// The distinct lengths (bytes) of the keys, ascending.
    lengths: Box<[usize]>,
}

impl PathIndex {
    fn new(by_prefix: Map<Box<str>, Box<[u32]>>) -> Self {
        let mut lengths: Vec<usize> = by_prefix.keys().map(|k| k.len()).collect();
        lengths.sort_unstable();
        lengths.dedup();
        Self {
            by_prefix,
            lengths: lengths.into_boxed_slice(),
        }
    }
}

/// What [`RouteTable::patch`] maps the index of a route that is gone to.
const GONE: u32 = u32::MAX;

/// Moves the indices of `list` through `moved` (old → new position, or [`GONE`]), in place when
/// none is gone; `false` when none is left. The mapping keeps the order.
fn remap(list: &mut Box<[u32]>, moved: &[u32]) -> bool {
    let to = |i: u32| moved.get(i as usize).copied().unwrap_or(GONE);
    if list.iter().any(|&i| to(i) == GONE) {
        *list = list.iter().map(|&i| to(i)).filter(|&i| i != GONE).collect();
    } else {
        for index in list.iter_mut() {
            *index = to(*index);
        }
    }
    !list.is_empty()
}

/// From this many path-bound routes on, a bucket gets a [`PathIndex`] (below it a short scan is
/// cheaper than hashing). Tiny in tests so that the random tables exercise the index.
const PATH_INDEX_MIN: usize = if cfg!(test) { 2 } else { 16 };

impl Bucket {
    /// `indices` in global order; `required(i)` is route `i`'s required path prefixes, if any.
    fn new<'p>(indices: Vec<u32>, required: impl Fn(u32) -> Option<&'p [&'p str]>) -> Self {
        let bound = indices.iter().filter(|&&i| required(i).is_some()).count();
        if bound < PATH_INDEX_MIN {
            return Self {
                routes: indices.into(),
                paths: None,
            };
        }
        let mut free = Vec::new();
        let mut by_prefix: Map<&str, Vec<u32>> = Map::default();
        for index in indices {
            match required(index) {
                None => free.push(index),
                Some(prefixes) => {
                    for prefix in prefixes {
                        let list = by_prefix.entry(prefix).or_default();
                        if list.last() != Some(&index) {
                            list.push(index);
                        }
                    }
                }
            }
        }
        Self {
            routes: free.into(),
            paths: Some(Box::new(PathIndex::new(
                by_prefix
                    .into_iter()
                    .map(|(k, v)| (Box::from(k), v.into_boxed_slice()))
                    .collect(),
            ))),
        }
    }

    /// Every route of the bucket, in global order.
    fn all(&self) -> Vec<u32> {
        let mut all = self.routes.as_slice().to_vec();
        if let Some(index) = &self.paths {
            for list in index.by_prefix.values() {
                all.extend_from_slice(list);
            }
            all.sort_unstable();
            all.dedup();
        }
        all
    }

    /// Moves every route index through `moved` (see [`RouteTable::patch`]), leaving out the
    /// routes that are gone; `false` when none is left.
    fn remap(&mut self, moved: &[u32]) -> bool {
        let mut left = match &mut self.routes {
            Indices::One(index) => match moved.get(*index as usize) {
                Some(&to) if to != GONE => {
                    *index = to;
                    true
                }
                _ => {
                    self.routes = Indices::default();
                    false
                }
            },
            Indices::Many(list) => remap(list, moved),
        };
        if let Some(index) = &mut self.paths {
            let before = index.by_prefix.len();
            index.by_prefix.retain(|_, list| remap(list, moved));
            if index.by_prefix.len() != before {
                **index = PathIndex::new(std::mem::take(&mut index.by_prefix));
            }
            left |= !index.by_prefix.is_empty();
        }
        left
    }

    /// Adds the lists of routes that may match `path` to `out`.
    fn lists<'t>(&'t self, path: &str, out: &mut Lists<'t>) {
        out.push(self.routes.as_slice());
        let Some(index) = &self.paths else { return };
        for &len in &index.lengths {
            if len > path.len() {
                break;
            }
            if let Some(key) = path.get(..len)
                && let Some(list) = index.by_prefix.get(key)
            {
                out.push(list);
            }
        }
    }
}

/// A compiled route. Its name only orders the table and names build errors: it stays with the
/// input rather than being copied into every table.
struct Route<T> {
    priority: i64,
    node: Node,
    payload: T,
}

impl<T> RouteTable<T> {
    /// Compiles every rule (regexes, CIDRs, header names once), orders the routes and builds the
    /// host index. Fails on the first route whose rule cannot be compiled, naming it.
    pub fn build<'a>(
        routes: impl IntoIterator<Item = RouteInput<'a, T>>,
    ) -> Result<Self, RouterError> {
        let mut strings = Interner::default();
        let routes = routes.into_iter();
        // Sized up front: collecting through a `Result` would start small and double, copying
        // the list each time and leaving up to half of it unused at the peak of an apply.
        let mut named = Vec::with_capacity(routes.size_hint().0);
        for (position, input) in routes.enumerate() {
            let route = Route {
                node: compile(input.rule, input.name, &mut strings)?,
                priority: input.priority,
                payload: input.payload,
            };
            named.push((input.name, position, route));
        }
        drop(strings);
        if u32::try_from(named.len()).is_err() {
            return Err(RouterError::TooManyRoutes { count: named.len() });
        }
        // Traefik orders by priority only (ties: provider precedence, then unspecified); the name
        // makes the order deterministic across proxies, and duplicates keep their input order.
        // The input position makes every key distinct, so an in-place sort gives that order: a
        // stable sort would allocate room for half the list (3.2 MB at 50 000 routers, at the
        // peak of an apply). Snapshots list routers by name already: checking that is one pass,
        // and then ordering by priority and position keeps the names in order (50 000 routers
        // with a handful of distinct priorities spent most of their sort comparing names).
        if named.is_sorted_by(|(a, ..), (b, ..)| a <= b) {
            named.sort_unstable_by_key(|(_, position, route)| {
                (std::cmp::Reverse(route.priority), *position)
            });
        } else {
            named.sort_unstable_by(|(a_name, a_position, a), (b_name, b_position, b)| {
                b.priority
                    .cmp(&a.priority)
                    .then_with(|| a_name.cmp(b_name))
                    .then_with(|| a_position.cmp(b_position))
            });
        }
        // Collected in place (the names dropped in the buffer that held them): no second list of
        // every route at the peak of an apply.
        let compiled: Vec<Route<T>> = named.into_iter().map(|(.., route)| route).collect();
        Ok(Self::index(compiled))
    }

    /// This table with some routes left out or replaced and others added, without compiling the
    /// routes it keeps again: `keep` gives each route's payload in the new table (`None`: left
    /// out); `added` are compiled and merged into the order. `name_of` names a payload's router,
    /// which breaks priority ties as in [`RouteTable::build`]. The result equals a table built
    /// from the same routers.
    pub fn patch<'a>(
        &self,
        mut keep: impl FnMut(&T) -> Option<T>,
        added: Vec<RouteInput<'a, T>>,
        name_of: impl Fn(&T) -> &str,
    ) -> Result<Self, RouterError> {
        let mut strings = Interner::default();
        let mut fresh = added
            .into_iter()
            .map(|input| {
                Ok(Route {
                    node: compile(input.rule, input.name, &mut strings)?,
                    priority: input.priority,
                    payload: input.payload,
                })
            })
            .collect::<Result<Vec<_>, RouterError>>()?;
        let first = |a: &Route<T>, b: &Route<T>| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| name_of(&a.payload).cmp(name_of(&b.payload)))
        };
        fresh.sort_by(first);
        let mut fresh = fresh.into_iter().peekable();
        let mut merged = Vec::with_capacity(self.routes.len() + fresh.len());
        // Old position → new position (or GONE), and the positions of the added routes.
        let mut moved = Vec::with_capacity(self.routes.len());
        let mut added_at = Vec::with_capacity(fresh.len());
        let position = |merged: &Vec<Route<T>>| u32::try_from(merged.len()).unwrap_or(GONE);
        for old in &self.routes {
            let Some(payload) = keep(&old.payload) else {
                moved.push(GONE);
                continue;
            };
            let route = Route {
                priority: old.priority,
                node: old.node.clone(),
                payload,
            };
            while let Some(next) = fresh.next_if(|f| first(f, &route).is_lt()) {
                added_at.push(position(&merged));
                merged.push(next);
            }
            moved.push(position(&merged));
            merged.push(route);
        }
        for next in fresh {
            added_at.push(position(&merged));
            merged.push(next);
        }
        if u32::try_from(merged.len()).is_err() {
            return Err(RouterError::TooManyRoutes {
                count: merged.len(),
            });
        }

        // The index: the old one moved to the new positions (no key hashed again), then the
        // buckets that receive an added route rebuilt with it.
        let mut exact = self.exact.clone();
        exact.retain(|_, bucket| bucket.remap(&moved));
        let mut wildcard = self.wildcard.clone();
        wildcard.retain(|_, bucket| bucket.remap(&moved));
        let mut generic = self.generic.clone();
        generic.remap(&moved);
        let (to_exact, to_wildcard, to_generic) = by_host(
            added_at
                .iter()
                .filter_map(|&i| merged.get(i as usize).map(|route| (i, route))),
        );
        let with = |bucket: Option<&Bucket>, added: Vec<u32>| {
            let mut all = bucket.map(Bucket::all).unwrap_or_default();
            all.extend(added);
            all.sort_unstable();
            all.dedup();
            let paths: Map<u32, Option<Vec<&str>>> = all
                .iter()
                .map(|&i| {
                    let required = merged
                        .get(i as usize)
                        .and_then(|route| route.node.required_paths());
                    (i, required)
                })
                .collect();
            Bucket::new(all, |i| paths.get(&i).and_then(|p| p.as_deref()))
        };
        for (host, added) in to_exact {
            let bucket = with(exact.get(&host), added);
            exact.insert(host, bucket);
        }
        for (parent, added) in to_wildcard {
            let bucket = with(wildcard.get(&parent), added);
            wildcard.insert(parent, bucket);
        }
        if !to_generic.is_empty() {
            generic = with(Some(&generic), to_generic);
        }
        Ok(Self {
            routes: merged,
            exact,
            wildcard,
            generic,
        })
    }

    /// The table of routes already in match order: the host and path indices.
    fn index(compiled: Vec<Route<T>>) -> Self {
        let (exact, wildcard, generic) = by_host((0u32..).zip(&compiled));
        let paths: Vec<Option<Vec<&str>>> =
            compiled.iter().map(|r| r.node.required_paths()).collect();
        let required = |i: u32| paths.get(i as usize).and_then(|p| p.as_deref());
        let freeze = |map: Map<Arc<str>, Vec<u32>>| {
            map.into_iter()
                .map(|(k, v)| (k, Bucket::new(v, required)))
                .collect()
        };
        let exact = freeze(exact);
        let wildcard = freeze(wildcard);
        let generic = Bucket::new(generic, required);
        drop(paths);
        Self {
            routes: compiled,
            exact,
            wildcard,
            generic,
        }
    }

    /// The payload of the first route (in order) whose rule matches `req`.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&T> {
        let canonical = canonical_host(req.host);
        let host = strip_trailing_dot(&canonical);
        let ctx = Ctx {
            canonical: &canonical,
            host,
            req,
            client_ip: req.client_ip.to_canonical(),
        };
        self.candidates(host, req.path)
            .filter_map(|index| self.routes.get(index as usize))
            .find(|route| route.node.eval(&ctx))
            .map(|route| &route.payload)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes (every request is a 404).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The routes that may match a request for the normalised `host` and routing `path`, in
    /// global order.
    fn candidates(&self, host: &str, path: &str) -> Candidates<'_> {
        let mut lists = Lists::default();
        if !host.is_empty()
            && let Some(bucket) = self.exact.get(host)
        {
            bucket.lists(path, &mut lists);
        }
        if let Some(bucket) = host
            .find('.')
            .and_then(|dot| self.wildcard.get(&host[dot..]))
        {
            bucket.lists(path, &mut lists);
        }
        self.generic.lists(path, &mut lists);
        Candidates { lists }
    }
}

/// Route indices grouped by the host each route requires (exact, wildcard parent) or, for
/// routes that require none, as generic; each list in the order given.
type ByHost = (Map<Arc<str>, Vec<u32>>, Map<Arc<str>, Vec<u32>>, Vec<u32>);

fn by_host<'r, T: 'r>(routes: impl Iterator<Item = (u32, &'r Route<T>)>) -> ByHost {
    let mut exact: Map<Arc<str>, Vec<u32>> = Map::default();
    let mut wildcard: Map<Arc<str>, Vec<u32>> = Map::default();
    let mut generic = Vec::new();
    for (index, route) in routes {
        match route.node.required_hosts() {
            None => generic.push(index),
            Some(keys) => {
                for key in keys {
                    let bucket = match key {
                        HostKey::Exact(host) => exact.entry(Arc::clone(host)).or_default(),
                        HostKey::Wildcard(parent) => {
                            wildcard.entry(Arc::clone(parent)).or_default()
                        }
                    };
                    // A route naming one host twice is listed once.
                    if bucket.last() != Some(&index) {
                        bucket.push(index);
                    }
                }
            }
        }
    }
    (exact, wildcard, generic)
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            exact: Map::default(),
            wildcard: Map::default(),
            generic: Bucket::default(),
        }
    }
}

impl<T> fmt::Debug for RouteTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.routes.len())
            .field("exact_hosts", &self.exact.len())
            .field("wildcard_domains", &self.wildcard.len())
            .field("generic", &self.generic.routes.as_slice().len())
            .finish()
    }
}

/// The non-empty index lists of one lookup: a few inline (no allocation on the request path),
/// more spill to the heap (many distinct prefix lengths that all match).
#[derive(Default)]
struct Lists<'t> {
    inline: [&'t [u32]; LISTS_INLINE],
    len: usize,
    spill: Vec<&'t [u32]>,
}

const LISTS_INLINE: usize = 8;

impl<'t> Lists<'t> {
    fn push(&mut self, list: &'t [u32]) {
        if list.is_empty() {
            return;
        }
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = list;
                self.len += 1;
            }
            None => self.spill.push(list),
        }
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut &'t [u32]> {
        self.inline[..self.len]
            .iter_mut()
            .chain(self.spill.iter_mut())
    }
}

/// Lazy ordered union (without duplicates) of sorted index lists.
struct Candidates<'t> {
    lists: Lists<'t>,
}

impl Iterator for Candidates<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let next = self
            .lists
            .iter_mut()
            .filter_map(|l| l.first())
            .min()
            .copied()?;
        for list in self.lists.iter_mut() {
            if let Some((&head, rest)) = list.split_first()
                && head == next
            {
                *list = rest;
            }
        }
        Some(next)
    }
}

// ---------------------------------------------------------------------------------------------
// Compiled rules

/// An [`Expr`] with its arguments prepared for evaluation. Cloned when a table is patched (a
/// host is shared, a regex is reference-counted).
#[derive(Clone, Debug)]
///
/// Every route holds one and an `&&` a list of them, so the variants are kept to two words: the
/// rare large matchers (regexes, headers, queries) are boxed. At 50 000 ``Host && PathPrefix``
/// routers that is ~6 MB less than inline (72 → 32 bytes a node).
enum Node {
    All(Box<[Node]>),
    Any(Box<[Node]>),
    Not(Box<Node>),
    Host(HostExpr),
    HostRegexp(Box<Regex>),
    Path(Arc<str>),
    PathPrefix(Arc<str>),
    PathRegexp(Box<Regex>),
    Method(Box<str>),
    Header(Box<(HeaderName, Box<str>)>),
    HeaderRegexp(Box<(HeaderName, Regex)>),
    /// Key and value; ``Query(`k`)`` has the value `""`.
    Query(Box<(Box<str>, Box<str>)>),
    QueryRegexp(Box<(Box<str>, Regex)>),
    ClientIp(IpNet),
    /// A matcher that cannot match any request.
    Never,
}

// Two words and a tag: see [`Node`].
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Node>() <= 32);

#[derive(Clone, Debug)]
enum HostExpr {
    /// ``Host(`*`)``: every request, even without a host (Traefik v3.7.7+).
    Any,
    /// Equal to the normalised request host (shared with the host index's key).
    Exact(Arc<str>),
    /// `*.example.com`, stored as `.example.com`: the normalised host is one label (possibly
    /// empty, as in Traefik) followed by exactly this.
    Wildcard(Arc<str>),
    /// A rule host ending with a dot (`*.`, `.`, `a.` from `a..`): rare, evaluated literally with
    /// Traefik's algorithm on the canonical host and not indexed.
    Literal(Box<str>),
}

/// A host a route requires (see [`Node::required_hosts`]).
enum HostKey<'a> {
    Exact(&'a Arc<str>),
    Wildcard(&'a Arc<str>),
}

/// One shared copy of each host and path a table's rules name: many routers repeat them (ten
/// `PathPrefix` rules under one host, one prefix under many hosts), and each copy was its own
/// allocation in every route.
#[derive(Default)]
struct Interner(std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>);

impl Interner {
    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(text) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(text);
        self.0.insert(Arc::clone(&shared));
        shared
    }
}

fn compile(expr: &Expr, router: &str, strings: &mut Interner) -> Result<Node, RouterError> {
    let mut list = |items: &[Expr]| {
        items
            .iter()
            .map(|e| compile(e, router, strings))
            .collect::<Result<Box<[_]>, _>>()
    };
    let regex = |matcher: &'static str, pattern: &str| {
        Regex::new(pattern).map_err(|source| RouterError::Regex {
            router: router.to_owned(),
            matcher,
            pattern: pattern.to_owned(),
            source,
        })
    };
    let m = match expr {
        Expr::All(items) => return Ok(Node::All(list(items)?)),
        Expr::Any(items) => return Ok(Node::Any(list(items)?)),
        Expr::Not(inner) => return Ok(Node::Not(Box::new(compile(inner, router, strings)?))),
        Expr::Matcher(m) => m,
    };
    Ok(match m {
        Matcher::Host(host) => host_expr(host, strings),
        Matcher::HostRegexp(re) => Node::HostRegexp(Box::new(regex(m.name(), re)?)),
        Matcher::Path(p) => Node::Path(strings.get(p)),
        Matcher::PathPrefix(p) => Node::PathPrefix(strings.get(p)),
        Matcher::PathRegexp(re) => Node::PathRegexp(Box::new(regex(m.name(), re)?)),
        Matcher::Method(method) => Node::Method(method.as_str().into()),
        Matcher::Header(kv) => match header_name(&kv.0) {
            Some(name) => Node::Header(Box::new((name, kv.1.as_str().into()))),
            None => Node::Never,
        },
        Matcher::HeaderRegexp(kv) => {
            let re = regex(m.name(), &kv.1)?;
            match header_name(&kv.0) {
                Some(name) => Node::HeaderRegexp(Box::new((name, re))),
                None => Node::Never,
            }
        }
        Matcher::Query(kv) => query_node(&kv.0, kv.1.as_deref()),
        Matcher::QueryRegexp(kv) => match &kv.1 {
            None => query_node(&kv.0, None),
            Some(re) => Node::QueryRegexp(Box::new((kv.0.as_str().into(), regex(m.name(), re)?))),
        },
        Matcher::ClientIp(value) => {
            Node::ClientIp(
                parse_client_ip(value).map_err(|source| RouterError::ClientIp {
                    router: router.to_owned(),
                    value: value.clone(),
                    source,
                })?,
            )
        }
    })
}

fn host_expr(host: &str, strings: &mut Interner) -> Node {
    // The controller lower-cases and drops one trailing dot; lower-casing again is free insurance.
    let host = host.to_ascii_lowercase();
    let expr = if host == "*" {
        HostExpr::Any
    } else if host.is_empty() || host.bytes().filter(|&b| b == b':').count() == 1 {
        // `example.com:8080`: the request host is compared without its port, so a rule with one
        // never matches. (Two or more colons is an IPv6 literal, which does.)
        return Node::Never;
    } else if host.ends_with('.') {
        HostExpr::Literal(host.into())
    } else if let Some(suffix) = host.strip_prefix('*') {
        if suffix.starts_with('.') {
            HostExpr::Wildcard(strings.get(suffix))
        } else {
            // `*foo.com`: never matches, and the literal algorithm says so.
            HostExpr::Literal(host.into())
        }
    } else {
        HostExpr::Exact(strings.get(&host))
    };
    Node::Host(expr)
}

/// ``Query(`k`, `v`)``, and ``QueryRegexp(`k`)`` without a regex: `k` present with the value `v`
/// (empty when there is none).
fn query_node(key: &str, value: Option<&str>) -> Node {
    Node::Query(Box::new((key.into(), value.unwrap_or_default().into())))
}

/// Go moves `Host` out of the header map (`req.Host`), so in Traefik ``Header(`Host`, …)`` never
/// matches; a key that is not a valid header name cannot be present either.
fn header_name(key: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(key.as_bytes())
        .ok()
        .filter(|name| *name != header::HOST)
}

/// Traefik (`pkg/ip`) takes a CIDR, else an address. A v4-mapped IPv6 network is treated as the
/// IPv4 one, as Go's `IPNet.Contains` does, so it matches an IPv4 client and vice versa.
fn parse_client_ip(value: &str) -> Result<IpNet, AddrParseError> {
    let net = match value.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(value.parse::<IpAddr>()?),
    };
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Ok(v4) = Ipv4Net::new(v4, v6.prefix_len().saturating_sub(96))
    {
        return Ok(IpNet::V4(v4));
    }
    Ok(net)
}

impl Node {
    /// The hosts this node can match only (the index keys), or `None` if it may match a request
    /// for any host. `Some(vec![])` means it never matches at all.
    fn required_hosts(&self) -> Option<Vec<HostKey<'_>>> {
        match self {
            Node::Host(HostExpr::Exact(host)) => Some(vec![HostKey::Exact(host)]),
            Node::Host(HostExpr::Wildcard(parent)) => Some(vec![HostKey::Wildcard(parent)]),
            Node::Never => Some(Vec::new()),
            // All: any child's requirement is one for the whole; take the narrowest.
            Node::All(items) => items
                .iter()
                .filter_map(Node::required_hosts)
                .min_by_key(Vec::len),
            // Any: each branch must be host-bound for the union to be.
            Node::Any(items) => items.iter().try_fold(Vec::new(), |mut keys, item| {
                keys.extend(item.required_hosts()?);
                Some(keys)
            }),
            _ => None,
        }
    }

    /// The path prefixes this node can match only (the path-index keys), or `None` if it may
    /// match any path. `Path(p)` requires the prefix `p` too (and is then compared whole).
    fn required_paths(&self) -> Option<Vec<&str>> {
        match self {
            Node::Path(path) | Node::PathPrefix(path) => Some(vec![&**path]),
            Node::Never => Some(Vec::new()),
            // All: the fewest keys, then the longest (the most selective).
            Node::All(items) => items
                .iter()
                .filter_map(Node::required_paths)
                .min_by_key(|keys| {
                    (
                        keys.len(),
                        usize::MAX - keys.iter().map(|k| k.len()).sum::<usize>(),
                    )
                }),
            Node::Any(items) => items.iter().try_fold(Vec::new(), |mut keys, item| {
                keys.extend(item.required_paths()?);
                Some(keys)
            }),
            _ => None,
        }
    }

    fn eval(&self, ctx: &Ctx<'_>) -> bool {
        let req = ctx.req;
        match self {
            Node::All(items) => items.iter().all(|n| n.eval(ctx)),
            Node::Any(items) => items.iter().any(|n| n.eval(ctx)),
            Node::Not(inner) => !inner.eval(ctx),
            Node::Host(expr) => match expr {
                HostExpr::Any => true,
                HostExpr::Exact(host) => ctx.host == &**host,
                HostExpr::Wildcard(parent) => ctx
                    .host
                    .find('.')
                    .is_some_and(|dot| ctx.host[dot..] == **parent),
                HostExpr::Literal(host) => literal_host_match(ctx.canonical, host),
            },
            Node::HostRegexp(re) => re.is_match(ctx.canonical),
            Node::Path(path) => req.path == &**path,
            Node::PathPrefix(prefix) => req.path.starts_with(&**prefix),
            Node::PathRegexp(re) => re.is_match(req.path),
            Node::Method(method) => req.method.as_str() == &**method,
            Node::Header(header) => {
                let (name, value) = &**header;
                req.headers.values(name).any(|v| v == value.as_bytes())
            }
            Node::HeaderRegexp(header) => {
                let (name, re) = &**header;
                req.headers
                    .values(name)
                    .any(|v| re.is_match(&String::from_utf8_lossy(v)))
            }
            Node::Query(query) => {
                let (key, value) = &**query;
                query_pairs(req.query).any(|(k, v)| unescape_eq(k, key) && unescape_eq(v, value))
            }
            Node::QueryRegexp(query) => {
                let (key, re) = &**query;
                query_pairs(req.query).any(|(k, v)| {
                    unescape_eq(k, key) && query_unescape(v).is_some_and(|v| re.is_match(&v))
                })
            }
            Node::ClientIp(net) => net.contains(&ctx.client_ip),
            Node::Never => false,
        }
    }
}

/// Per-request state computed once in [`RouteTable::find`].
struct Ctx<'r> {
    /// Lower-cased, port-less, trimmed host, trailing dot kept (what `HostRegexp` sees).
    canonical: &'r str,
    /// `canonical` without one trailing dot (what `Host` compares).
    host: &'r str,
    req: &'r RequestView<'r>,
    /// The peer address with a v4-mapped IPv6 address turned into IPv4.
    client_ip: IpAddr,
}

/// Traefik's `Host` algorithm verbatim in behaviour (`pkg/muxer/http/matcher.go`): compare, then
/// retry with one trailing dot removed from the rule, then from the request.
fn literal_host_match(canonical: &str, rule: &str) -> bool {
    /// `*.x` replaces the first label of the host; anything else is plain equality.
    fn matches(host: &str, rule: &str) -> bool {
        match rule.strip_prefix('*') {
            Some(suffix) => host[host.find('.').unwrap_or(host.len())..] == *suffix,
            None => host == rule,
        }
    }
    !canonical.is_empty()
        && (matches(canonical, rule)
            || rule
                .strip_suffix('.')
                .is_some_and(|r| matches(canonical, r))
            || canonical
                .strip_suffix('.')
                .is_some_and(|h| matches(h, rule)))
}
