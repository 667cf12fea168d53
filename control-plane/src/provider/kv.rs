//! Traefik's key-value layout, shared by the etcd (`kv/etcd.rs`) and Consul KV (`kv/consul.rs`)
//! providers: a flat map `key → value` under `rootKey` becomes one [`DynamicConfig`]. This module
//! is pure (no I/O); the stores only fetch keys and call [`decode`].
//!
//! The layout mirrors the file provider's structure (`traefik/http/routers/<r>/rule`,
//! `traefik/http/services/<s>/loadbalancer/servers/0/url`, `traefik/http/middlewares/<m>/<type>/
//! <option>`). Keys are case-insensitive except where they are names (routers, services,
//! middlewares, header names). Lists:
//! - a numeric *last* segment (`…/entrypoints/0`, `…/entrypoints/1`) is a scalar list element;
//! - a numeric *inner* segment (`…/servers/0/url`) is the index of a struct list element;
//! - a list-typed field given as one value (`…/entrypoints` = `web,websecure`) is split at commas.
//!
//! Deliberate difference (docs/compatibility.md): Traefik sorts list indexes as *strings* (so `10`
//! comes before `2`) and joins then re-splits scalar lists at commas. We order indexes
//! *numerically* and keep each indexed value whole; a warning is emitted wherever Traefik would
//! have produced a different result (≥ 10 items, or a comma inside an indexed value).
//!
//! The path tree and its schema-aware conversion ([`Tree`]) are shared with the label decoder
//! (`provider/labels.rs`), which builds the same tree from dotted label keys.

pub mod consul;
pub mod etcd;
mod incremental;

pub use incremental::IncrementalDecoder;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};
use thiserror::Error;

use crate::{
    compile::Diagnostic,
    config::ProvidersConfig,
    dynamic::{DynamicConfig, HttpConfig},
    provider::ProviderSink,
};

/// Checks `providers.etcd` and `providers.consul` at start-up; the message names the option.
pub fn validate_config(providers: &ProvidersConfig) -> Result<(), String> {
    if let Some(etcd) = &providers.etcd {
        if etcd.endpoints.is_empty() {
            return Err("providers.etcd.endpoints: at least one endpoint is required".into());
        }
        if etcd.root_key.trim_matches('/').is_empty() {
            return Err("providers.etcd.rootKey must not be empty".into());
        }
        if let Some(tls) = &etcd.tls {
            super::client_tls::client_config(tls, "providers.etcd.tls")?;
        }
    }
    if let Some(consul) = &providers.consul {
        if consul.endpoints.is_empty() {
            return Err("providers.consul.endpoints: at least one endpoint is required".into());
        }
        if consul.root_key.trim_matches('/').is_empty() {
            return Err("providers.consul.rootKey must not be empty".into());
        }
        if let Some(tls) = &consul.tls {
            super::client_tls::client_config(tls, "providers.consul.tls")?;
        }
        if !consul.namespaces.is_empty() {
            return Err(
                "providers.consul.namespaces: Consul Enterprise namespaces are not supported yet"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Tells the aggregator about a (re)decoded state without repeating itself: an unchanged
/// configuration is not sent again, unless an error was reported since (so the provider's status
/// turns healthy again after an outage or a fixed key).
#[derive(Debug, Default)]
pub(crate) struct Reporter {
    /// Shared with the aggregator, not copied: a copy of 10 000 routers and services took ~1.5
    /// ms of every change, before it was sent.
    sent: Option<Arc<DynamicConfig>>,
    errored: bool,
}

impl Reporter {
    /// Sends a decoded configuration, or reports why there is none (the last good one stays).
    /// Returns false when the aggregator is gone.
    pub(crate) async fn report(
        &mut self,
        sink: &ProviderSink,
        decoded: Result<(DynamicConfig, Vec<Diagnostic>), String>,
    ) -> bool {
        match decoded {
            Ok((config, warnings)) => {
                if self.sent.as_deref() == Some(&config) && !self.errored {
                    return true;
                }
                let config = Arc::new(config);
                // The configuration replaced stays with the aggregator until it is retired: it
                // is not freed here, ahead of the change.
                self.sent = Some(Arc::clone(&config));
                self.errored = false;
                sink.update_shared(config, warnings).await
            }
            Err(error) => {
                self.error(
                    sink,
                    format!("{error}; keeping the last good configuration"),
                )
                .await
            }
        }
    }

    /// Reports an outage or decode error; the last good configuration stays.
    pub(crate) async fn error(&mut self, sink: &ProviderSink, error: String) -> bool {
        self.errored = true;
        sink.error(error).await
    }

    /// Whether the last thing reported was an error.
    pub(crate) fn errored(&self) -> bool {
        self.errored
    }
}

/// A key (or label) that cannot be decoded. Traefik rejects the provider's whole update for it;
/// so do we, and the provider's last good configuration stays.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("key `{key}`: {reason}")]
pub struct DecodeError {
    /// The full key (KV) or label name, as the user wrote it or as close as the tree allows.
    pub key: String,
    pub reason: String,
}

/// Decodes every `key → value` pair below `root_key` (keys outside it are ignored). A tree with no
/// key below the root is an explicitly *empty* configuration (not an absent one): the provider's
/// routes are removed, as in Traefik.
pub fn decode<'a>(
    provider: &str,
    root_key: &str,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(DynamicConfig, Vec<Diagnostic>), DecodeError> {
    let root = root_key.trim_matches('/');
    let mut tree = Tree::new('/', root);
    for (key, value) in pairs {
        let Some(rest) = key.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        // `traefik/` and `traefik/http/` are folder markers (Consul's UI creates them).
        if rest.is_empty() || rest.ends_with('/') {
            continue;
        }
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(DecodeError {
                key: key.to_owned(),
                reason: "empty path segment".into(),
            });
        }
        tree.insert(&segments, value)?;
    }
    tree.into_config(provider)
}

/// A node of the path tree: a value, children, or (presence markers such as `tls=true` beside
/// `tls/certresolver`) both.
#[derive(Debug, Default)]
struct Node {
    value: Option<String>,
    children: BTreeMap<String, Node>,
    /// Each child's key folded to ASCII lowercase → the key as first spelled: an insert finds a
    /// child case-insensitively without comparing it with every other one (10 000 routers under
    /// one map made decoding a tree quadratic: ~0.5 s per change).
    folded: HashMap<String, String>,
}

impl Node {
    /// The key of the child `segment` names, matched case-insensitively, if there is one.
    fn child_key(&self, segment: &str) -> Option<String> {
        if self.children.contains_key(segment) {
            return Some(segment.to_owned());
        }
        self.folded.get(&segment.to_ascii_lowercase()).cloned()
    }
}

/// The path tree built from keys or labels, converted with knowledge of the dynamic model.
#[derive(Debug)]
pub(crate) struct Tree {
    sep: char,
    root: String,
    top: Node,
}

impl Tree {
    /// `sep` joins segments in error messages; `root` prefixes them (`traefik`).
    pub(crate) fn new(sep: char, root: &str) -> Self {
        Self {
            sep,
            root: root.to_owned(),
            top: Node::default(),
        }
    }

    fn key_of(&self, path: &[String]) -> String {
        let mut key = self.root.clone();
        for segment in path {
            if !key.is_empty() {
                key.push(self.sep);
            }
            key.push_str(segment);
        }
        key
    }

    /// Adds one leaf. Setting the same path twice (labels differing only in case) is an error.
    pub(crate) fn insert(&mut self, segments: &[&str], value: &str) -> Result<(), DecodeError> {
        let mut node = &mut self.top;
        for segment in segments {
            // Field names are case-insensitive: fold to one spelling per map so `Rule` and `rule`
            // meet; names keep the spelling first seen.
            let key = if node.children.contains_key(*segment) {
                (*segment).to_owned()
            } else {
                node.folded
                    .entry(segment.to_ascii_lowercase())
                    .or_insert_with(|| (*segment).to_owned())
                    .clone()
            };
            node = node.children.entry(key).or_default();
        }
        if node.value.is_some() {
            let path: Vec<String> = segments.iter().map(|s| (*s).to_owned()).collect();
            return Err(DecodeError {
                key: self.key_of(&path),
                reason: "set more than once (keys are case-insensitive)".into(),
            });
        }
        node.value = Some(value.to_owned());
        Ok(())
    }

    /// Removes and returns the subtree at `segments` (matched case-insensitively) as flat
    /// `(relative path, value)` leaves. Used by the label decoder for `loadbalancer.server.*`.
    pub(crate) fn take(&mut self, segments: &[&str]) -> Vec<(Vec<String>, String)> {
        let Some((last, parents)) = segments.split_last() else {
            return Vec::new();
        };
        let mut node = &mut self.top;
        for segment in parents {
            let Some(next) = node
                .child_key(segment)
                .and_then(|key| node.children.get_mut(&key))
            else {
                return Vec::new();
            };
            node = next;
        }
        let Some(key) = node.child_key(last) else {
            return Vec::new();
        };
        node.folded.remove(&key.to_ascii_lowercase());
        let Some(taken) = node.children.remove(&key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        flatten(&taken, &mut Vec::new(), &mut out);
        out
    }

    /// Names of the children at `segments` (e.g. the services under `http/services`).
    pub(crate) fn names(&self, segments: &[&str]) -> Vec<String> {
        let mut node = &self.top;
        for segment in segments {
            match node.child_key(segment).and_then(|k| node.children.get(&k)) {
                Some(next) => node = next,
                None => return Vec::new(),
            }
        }
        node.children.keys().cloned().collect()
    }

    /// Converts the tree into a configuration; every object is deserialised on its own so an
    /// error names it.
    pub(crate) fn into_config(
        self,
        provider: &str,
    ) -> Result<(DynamicConfig, Vec<Diagnostic>), DecodeError> {
        let mut conv = Converter {
            tree: &self,
            provider,
            warnings: Vec::new(),
        };
        let Value::Mapping(mut top) = conv.node(&self.top, &mut Vec::new())? else {
            return Err(DecodeError {
                key: self.root.clone(),
                reason: "the root holds list indexes instead of sections".into(),
            });
        };
        let mut http = HttpConfig::default();
        if let Some(value) = top.remove("http") {
            let Value::Mapping(mut section) = value else {
                return Err(DecodeError {
                    key: self.key_of(&["http".into()]),
                    reason: "expected a section, found a value".into(),
                });
            };
            http.routers = conv.objects(&mut section, "routers")?;
            http.services = conv.objects(&mut section, "services")?;
            http.middlewares = conv.objects(&mut section, "middlewares")?;
            http.other =
                serde_yaml::from_value(Value::Mapping(section)).map_err(|e| DecodeError {
                    key: self.key_of(&["http".into()]),
                    reason: e.to_string(),
                })?;
        }
        let mut other: crate::dynamic::Extra = serde_yaml::from_value(Value::Mapping(top))
            .map_err(|e| DecodeError {
                key: self.root.clone(),
                reason: e.to_string(),
            })?;
        let tls = other
            .remove("tls")
            .map(serde_yaml::from_value)
            .transpose()
            .map_err(|e| DecodeError {
                key: format!("{}/tls", self.root),
                reason: e.to_string(),
            })?;
        let warnings = conv.warnings;
        Ok((
            DynamicConfig {
                // Never `None`: an empty tree must remove the provider's routes.
                http: Some(http),
                tls,
                other,
            },
            warnings,
        ))
    }
}

fn flatten(node: &Node, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    if let Some(value) = &node.value {
        out.push((path.clone(), value.clone()));
    }
    for (key, child) in &node.children {
        path.push(key.clone());
        flatten(child, path, out);
        path.pop();
    }
}

struct Converter<'t> {
    tree: &'t Tree,
    provider: &'t str,
    warnings: Vec<Diagnostic>,
}

impl Converter<'_> {
    /// Deserialises each entry of `section[kind]` on its own, so a type error names the object.
    fn objects<T: DeserializeOwned>(
        &self,
        section: &mut Mapping,
        kind: &str,
    ) -> Result<BTreeMap<String, T>, DecodeError> {
        let mut out = BTreeMap::new();
        let Some(value) = section.remove(kind) else {
            return Ok(out);
        };
        let Value::Mapping(objects) = value else {
            return Err(DecodeError {
                key: self.tree.key_of(&["http".into(), kind.into()]),
                reason: "expected named objects, found a value".into(),
            });
        };
        for (name, body) in objects {
            let name = name.as_str().unwrap_or_default().to_owned();
            let key = self
                .tree
                .key_of(&["http".into(), kind.into(), name.clone()]);
            if !matches!(body, Value::Mapping(_)) {
                return Err(DecodeError {
                    key,
                    reason: "expected an object with fields, found a value".into(),
                });
            }
            let object = serde_yaml::from_value(body).map_err(|e| DecodeError {
                key,
                reason: e.to_string(),
            })?;
            out.insert(name, object);
        }
        Ok(out)
    }

    /// `path` holds the canonical segments from the root to `node`.
    fn node(&mut self, node: &Node, path: &mut Vec<String>) -> Result<Value, DecodeError> {
        if node.children.is_empty() {
            return match node.value.as_deref() {
                // `http/routers/<name>/tls = true`: TLS with defaults (`tls: {}`), Traefik's usual
                // KV spelling; `false` means no TLS section.
                Some(value) if is_router_tls(path) => match parse_bool(value) {
                    Some(true) => Ok(Value::Mapping(Mapping::new())),
                    Some(false) => Ok(Value::Null),
                    None => Err(DecodeError {
                        key: self.tree.key_of(path),
                        reason: format!("expected true, false or sub-keys, got `{value}`"),
                    }),
                },
                Some(value) => self.leaf(path, value),
                // A branch whose children were taken (`loadbalancer.server.*`), or the empty root.
                None => Ok(Value::Mapping(Mapping::new())),
            };
        }
        if let Some(value) = &node.value {
            // `tls = true` beside `tls/certresolver`: presence marker, the children win.
            if !(value.is_empty() || value.eq_ignore_ascii_case("true")) {
                return Err(DecodeError {
                    key: self.tree.key_of(path),
                    reason: format!("has both the value `{value}` and sub-keys"),
                });
            }
        }
        let names_here = is_name_map(path);
        let numeric = node
            .children
            .keys()
            .filter(|k| k.parse::<u32>().is_ok())
            .count();
        if !names_here && numeric == node.children.len() {
            return self.list(node, path);
        }
        if !names_here && numeric > 0 {
            return Err(DecodeError {
                key: self.tree.key_of(path),
                reason: "mixes list indexes and field names".into(),
            });
        }
        let mut map = Mapping::new();
        for (key, child) in &node.children {
            let canonical = if names_here {
                key.clone()
            } else {
                canonical_field(key)
            };
            path.push(canonical.clone());
            let value = self.node(child, path)?;
            path.pop();
            map.insert(Value::String(canonical), value);
        }
        Ok(Value::Mapping(map))
    }

    fn list(&mut self, node: &Node, path: &mut Vec<String>) -> Result<Value, DecodeError> {
        let mut items: Vec<(u32, &String, &Node)> = node
            .children
            .iter()
            .filter_map(|(k, n)| k.parse::<u32>().ok().map(|i| (i, k, n)))
            .collect();
        items.sort_by_key(|(i, _, _)| *i);
        let scalar = items.iter().all(|(_, _, n)| n.children.is_empty());
        let field = path.last().cloned().unwrap_or_default();
        if scalar && items.len() >= 10 {
            self.warn(
                path,
                format!(
                    "list `{field}` has {} items: Switchyard orders list indexes numerically, \
                     Traefik as strings (`10` before `2`), so Traefik would order them differently",
                    items.len()
                ),
            );
        }
        let mut seq = Vec::with_capacity(items.len());
        for (_, key, child) in items {
            path.push(key.clone());
            let value = if let (true, Some(v)) = (child.children.is_empty(), &child.value) {
                if v.contains(',') {
                    self.warn(
                        path,
                        format!(
                            "value `{v}` contains a comma: Traefik splits it into several list \
                             items, Switchyard keeps it whole"
                        ),
                    );
                }
                Value::String(v.clone())
            } else {
                self.node(child, path)?
            };
            path.pop();
            seq.push(value);
        }
        Ok(Value::Sequence(seq))
    }

    fn leaf(&mut self, path: &[String], value: &str) -> Result<Value, DecodeError> {
        let field = path.last().map(String::as_str).unwrap_or_default();
        let bad = |what: &str| DecodeError {
            key: self.tree.key_of(path),
            reason: format!("`{value}` is not {what}"),
        };
        if is_name_map(path) {
            // `tls/options/foo` with a value but no fields: nothing to decode.
            return Ok(Value::Null);
        }
        if INT_FIELDS.contains(&field) {
            let n: i64 = value.trim().parse().map_err(|_| bad("an integer"))?;
            return Ok(Value::Number(n.into()));
        }
        if BOOL_FIELDS.contains(&field) {
            let b = parse_bool(value).ok_or_else(|| bad("a boolean (true or false)"))?;
            return Ok(Value::Bool(b));
        }
        if LIST_FIELDS.contains(&field) && !is_header_value(path) {
            let items: Vec<Value> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect();
            // A single value of a list field is comma-split (labels always, KV as in Traefik).
            return Ok(Value::Sequence(items));
        }
        if STRING_FIELDS.contains(&field) || is_header_value(path) {
            return Ok(Value::String(value.to_owned()));
        }
        // A field Switchyard does not model: it lands in `other` and is reported by the compiler;
        // give it a natural type so the report reads like the file provider's.
        Ok(infer_scalar(value))
    }

    fn warn(&mut self, path: &[String], message: String) {
        self.warnings.push(Diagnostic::warning(
            self.provider,
            format!("key/{}", self.tree.key_of(path)),
            message,
        ));
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "t" => Some(true),
        "false" | "0" | "f" => Some(false),
        _ => None,
    }
}

fn infer_scalar(value: &str) -> Value {
    if let Some(b) = parse_bool(value).filter(|_| value.chars().all(char::is_alphabetic)) {
        return Value::Bool(b);
    }
    if let Ok(n) = value.parse::<i64>() {
        return Value::Number(n.into());
    }
    Value::String(value.to_owned())
}

/// `…/routers/<name>/tls`, which may be a plain boolean.
fn is_router_tls(path: &[String]) -> bool {
    matches!(path, [.., routers, _, tls] if routers == "routers" && tls == "tls")
}

/// Maps whose keys are user-given names, kept as written: `http/routers`, `tls/options`, header
/// maps.
fn is_name_map(path: &[String]) -> bool {
    match path {
        [section, kind] => {
            matches!(section.as_str(), "http" | "tcp" | "udp" | "tls")
                && matches!(
                    kind.as_str(),
                    "routers"
                        | "services"
                        | "middlewares"
                        | "serversTransports"
                        | "options"
                        | "stores"
                )
        }
        [.., last] => HEADER_MAPS.contains(&last.as_str()),
        [] => false,
    }
}

/// A value inside a header map (`customRequestHeaders/X-Foo`) is a plain string, whatever its
/// header name looks like.
fn is_header_value(path: &[String]) -> bool {
    path.len() >= 2 && HEADER_MAPS.contains(&path[path.len() - 2].as_str())
}

/// The model's spelling of a field name (keys are case-insensitive); unknown keys stay as written.
fn canonical_field(key: &str) -> String {
    KNOWN_FIELDS
        .iter()
        .find(|f| f.eq_ignore_ascii_case(key))
        .map_or_else(|| key.to_owned(), |f| (*f).to_owned())
}

const HEADER_MAPS: &[&str] = &["customRequestHeaders", "customResponseHeaders"];
const INT_FIELDS: &[&str] = &["priority", "weight"];
const BOOL_FIELDS: &[&str] = &["passHostHeader", "permanent", "forceSlash"];
/// Scalar list fields of the model (comma-separated in labels).
pub(crate) const LIST_FIELDS: &[&str] = &["entryPoints", "middlewares", "prefixes", "sans"];
const STRING_FIELDS: &[&str] = &[
    "rule",
    "ruleSyntax",
    "service",
    "url",
    "name",
    "prefix",
    "scheme",
    "port",
    "certResolver",
    "main",
];
/// Field names of Traefik's dynamic model, in its spelling. Those Switchyard does not implement
/// are listed too, so that unsupported-feature reports use Traefik's names.
const KNOWN_FIELDS: &[&str] = &[
    "http",
    "tcp",
    "udp",
    "tls",
    "routers",
    "services",
    "middlewares",
    "serversTransports",
    "rule",
    "ruleSyntax",
    "priority",
    "entryPoints",
    "service",
    "loadBalancer",
    "servers",
    "url",
    "weight",
    "passHostHeader",
    "weighted",
    "name",
    "stripPrefix",
    "prefixes",
    "forceSlash",
    "addPrefix",
    "prefix",
    "headers",
    "customRequestHeaders",
    "customResponseHeaders",
    "redirectScheme",
    "scheme",
    "port",
    "permanent",
    "chain",
    "certResolver",
    "domains",
    "main",
    "sans",
    "options",
    "stores",
    "certificates",
    "healthCheck",
    "sticky",
    "cookie",
    "mirroring",
    "failover",
    "serversTransport",
    "responseForwarding",
    "flushInterval",
    "basicAuth",
    "digestAuth",
    "forwardAuth",
    "rateLimit",
    "inFlightReq",
    "ipAllowList",
    "compress",
    "redirectRegex",
    "replacePath",
    "replacePathRegex",
    "stripPrefixRegex",
    "retry",
    "buffering",
    "circuitBreaker",
    "errors",
    "plugin",
    "users",
    "regex",
    "replacement",
    "path",
    "interval",
    "timeout",
    "hostname",
    "attempts",
];

#[cfg(test)]
mod tests;
