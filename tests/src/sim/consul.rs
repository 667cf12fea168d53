//! A Consul agent SIMULATOR (not Consul): an HTTP server implementing the few endpoints the
//! Switchyard Consul KV and Consul Catalog providers call, written from Consul's HTTP API
//! documentation, with response bodies shaped like the documented examples:
//!
//! - `GET /v1/kv/<prefix>?recurse` — `[{"LockIndex","Key","Flags","Value"(base64|null),
//!   "CreateIndex","ModifyIndex"}]`, `404` with an empty body when no key matches;
//! - `GET /v1/catalog/services` — `{"name": ["tag", …]}`;
//! - `GET /v1/health/service/<name>` — `[{"Node": {…}, "Service": {…}, "Checks": [{…}]}]`
//!   (`?passing` keeps passing instances only);
//! - `GET /v1/health/state/any` — every check.
//!
//! Blocking queries follow "Blocking Queries" in Consul's API docs: every answer carries
//! `X-Consul-Index`; a request with `index=N` (N > 0) hangs until the endpoint's index exceeds N
//! or `wait` (default 5m, at most 10m, plus up to wait/16 of jitter) elapses, then answers with the
//! current data — possibly unchanged. Indexes come from one raft-like counter bumped by every
//! write: the KV index of a prefix is the highest `ModifyIndex` (or deletion) under it, the
//! catalog index that of the last registration change, the health index that of the last check
//! or registration change. [`ConsulSim::reset_index`] makes indexes go backwards, as after a
//! snapshot restore, to exercise clients' reset rules. `?dc=` other than `dc1` fails like Consul
//! ("No path to datacenter"), and with [`ConsulSim::require_token`] requests need `X-Consul-Token`.
//!
//! The control API (plain methods) registers and deregisters service instances, sets check
//! status and writes KV pairs; [`ConsulSim::stop`] makes the agent go away (open connections are
//! cut), [`ConsulSim::resume`] brings it back on the same address with the same data.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

const DATACENTER: &str = "dc1";
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// A service instance to register (`PUT /v1/catalog/register`, in spirit).
#[derive(Clone, Debug)]
pub struct Registration {
    pub node: String,
    pub node_address: String,
    /// Service ID, unique on its node.
    pub id: String,
    /// Service name (what the catalog lists).
    pub name: String,
    pub tags: Vec<String>,
    /// Empty: clients fall back to the node address.
    pub address: String,
    pub port: u16,
}

#[derive(Clone, Debug)]
struct KvEntry {
    value: Vec<u8>,
    flags: u64,
    create_index: u64,
    modify_index: u64,
}

#[derive(Clone, Debug)]
struct NodeRec {
    id: String,
    address: String,
    create_index: u64,
}

#[derive(Clone, Debug)]
struct ServiceRec {
    reg: Registration,
    create_index: u64,
    modify_index: u64,
}

#[derive(Clone, Debug)]
struct CheckRec {
    node: String,
    id: String,
    name: String,
    status: String,
    service_id: String,
    service_name: String,
    create_index: u64,
    modify_index: u64,
}

#[derive(Debug, Default)]
struct State {
    /// The raft-like index, bumped by every write.
    index: u64,
    kv: BTreeMap<String, KvEntry>,
    /// Deleted keys and the index of their deletion (so a prefix's index moves on delete).
    tombstones: BTreeMap<String, u64>,
    kv_index: u64,
    nodes: BTreeMap<String, NodeRec>,
    /// `(node, service id)`.
    services: BTreeMap<(String, String), ServiceRec>,
    /// `(node, check id)`.
    checks: BTreeMap<(String, String), CheckRec>,
    catalog_index: u64,
    checks_index: u64,
    token: Option<String>,
    /// Requests currently parked in a blocking query.
    blocked: usize,
    /// Answered requests per path (without query).
    answered: BTreeMap<String, u64>,
}

struct Shared {
    state: Mutex<State>,
    /// Carries `State::index`; blocked requests wake on every write.
    changes: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a write and wakes every blocked query.
    fn write(&self, f: impl FnOnce(&mut State, u64)) {
        let index = {
            let mut state = self.lock();
            state.index += 1;
            let index = state.index;
            f(&mut state, index);
            index
        };
        self.changes.send_replace(index);
    }
}

/// A running (or stopped) Consul agent simulator.
pub struct ConsulSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
    /// Serve HTTPS with this config (as an agent with `tls.https` configured).
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl ConsulSim {
    /// Starts the simulator on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(None).await
    }

    /// Starts the simulator serving HTTPS with `tls`.
    pub async fn start_tls(tls: rustls::ServerConfig) -> std::io::Result<Self> {
        Self::start_with(Some(Arc::new(tls))).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changes,
        });
        let server = Some(tokio::spawn(serve(listener, shared.clone(), tls.clone())));
        Ok(Self {
            shared,
            addr,
            server,
            tls,
        })
    }

    /// `127.0.0.1:PORT`, what a provider's `endpoint.address` should say.
    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// The agent goes away: the listener closes and open connections (blocked queries
    /// included) are cut. Data is kept for [`resume`](Self::resume).
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Serves again on the same address with the same data.
    pub async fn resume(&mut self) -> std::io::Result<()> {
        if self.server.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            self.server = Some(tokio::spawn(serve(
                listener,
                self.shared.clone(),
                self.tls.clone(),
            )));
        }
        Ok(())
    }

    /// From now on, every request must carry `X-Consul-Token: <token>` (else `403`).
    pub fn require_token(&self, token: &str) {
        self.shared.lock().token = Some(token.to_owned());
    }

    /// Registers (or replaces) a service instance, with its node (and the node's `serfHealth`
    /// check) if new, and a passing service check `service:<id>`.
    pub fn register(&self, reg: Registration) {
        self.shared.write(|s, index| {
            let node_count = s.nodes.len();
            s.nodes.entry(reg.node.clone()).or_insert_with(|| NodeRec {
                id: format!("00000000-0000-4000-8000-{:012x}", node_count + 1),
                address: reg.node_address.clone(),
                create_index: index,
            });
            s.checks
                .entry((reg.node.clone(), "serfHealth".into()))
                .or_insert_with(|| CheckRec {
                    node: reg.node.clone(),
                    id: "serfHealth".into(),
                    name: "Serf Health Status".into(),
                    status: "passing".into(),
                    service_id: String::new(),
                    service_name: String::new(),
                    create_index: index,
                    modify_index: index,
                });
            let check_id = format!("service:{}", reg.id);
            s.checks.insert(
                (reg.node.clone(), check_id.clone()),
                CheckRec {
                    node: reg.node.clone(),
                    id: check_id,
                    name: format!("Service '{}' check", reg.name),
                    status: "passing".into(),
                    service_id: reg.id.clone(),
                    service_name: reg.name.clone(),
                    create_index: index,
                    modify_index: index,
                },
            );
            let key = (reg.node.clone(), reg.id.clone());
            let create_index = s.services.get(&key).map_or(index, |r| r.create_index);
            s.services.insert(
                key,
                ServiceRec {
                    reg,
                    create_index,
                    modify_index: index,
                },
            );
            s.catalog_index = index;
            s.checks_index = index;
        });
    }

    /// Removes a service instance and its checks.
    pub fn deregister(&self, node: &str, id: &str) {
        self.shared.write(|s, index| {
            s.services.remove(&(node.to_owned(), id.to_owned()));
            s.checks
                .retain(|_, c| !(c.node == node && c.service_id == id));
            s.catalog_index = index;
            s.checks_index = index;
        });
    }

    /// Sets the status (`passing`, `warning`, `critical`) of the service check of an instance.
    pub fn set_check(&self, node: &str, service_id: &str, status: &str) {
        self.shared.write(|s, index| {
            let key = (node.to_owned(), format!("service:{service_id}"));
            if let Some(check) = s.checks.get_mut(&key) {
                check.status = status.to_owned();
                check.modify_index = index;
            }
            s.checks_index = index;
        });
    }

    /// `PUT /v1/kv/<key>`.
    pub fn kv_put(&self, key: &str, value: &str) {
        self.shared.write(|s, index| {
            let create_index = s.kv.get(key).map_or(index, |e| e.create_index);
            s.kv.insert(
                key.to_owned(),
                KvEntry {
                    value: value.as_bytes().to_vec(),
                    flags: 0,
                    create_index,
                    modify_index: index,
                },
            );
            s.tombstones.remove(key);
            s.kv_index = index;
        });
    }

    /// `DELETE /v1/kv/<key>?recurse` when `recurse`, else one key.
    pub fn kv_delete(&self, key: &str, recurse: bool) {
        self.shared.write(|s, index| {
            let doomed: Vec<String> =
                s.kv.keys()
                    .filter(|k| {
                        if recurse {
                            k.starts_with(key)
                        } else {
                            *k == key
                        }
                    })
                    .cloned()
                    .collect();
            for k in doomed {
                s.kv.remove(&k);
                s.tombstones.insert(k, index);
            }
            s.kv_index = index;
        });
    }

    /// Makes every index go back to `to` (a restored snapshot): clients must notice the index
    /// going backwards and re-read. Blocked queries are woken.
    pub fn reset_index(&self, to: u64) {
        {
            let mut s = self.shared.lock();
            s.index = to;
            s.kv_index = s.kv_index.min(to);
            s.catalog_index = s.catalog_index.min(to);
            s.checks_index = s.checks_index.min(to);
            for e in s.kv.values_mut() {
                e.modify_index = e.modify_index.min(to);
                e.create_index = e.create_index.min(to);
            }
            for t in s.tombstones.values_mut() {
                *t = (*t).min(to);
            }
        }
        self.shared.changes.send_replace(to);
    }

    /// How many requests are parked in a blocking query right now.
    pub fn blocked_queries(&self) -> usize {
        self.shared.lock().blocked
    }

    /// How many requests to `path` (no query string) were answered so far.
    pub fn answered(&self, path: &str) -> u64 {
        self.shared.lock().answered.get(path).copied().unwrap_or(0)
    }

    /// The current catalog index (`X-Consul-Index` of `/v1/catalog/services`).
    pub fn catalog_index(&self) -> u64 {
        self.shared.lock().catalog_index
    }
}

impl Drop for ConsulSim {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<Arc<rustls::ServerConfig>>) {
    // Connections live in this set: aborting the accept task drops it and cuts them all.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((stream, _)) = accepted else { continue };
        let shared = shared.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            match tls {
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(config) => {
                    let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                    else {
                        return;
                    };
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

/// Which index a blocking query on an endpoint watches.
#[derive(Clone, Debug)]
enum Endpoint {
    Kv(String),
    CatalogServices,
    HealthService(String),
    HealthStateAny,
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or_default());
    if req.method() != http::Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let endpoint = if let Some(key) = path.strip_prefix("/v1/kv/") {
        if !query.contains_key("recurse") {
            return plain(
                StatusCode::BAD_REQUEST,
                "the simulator implements only ?recurse reads",
            );
        }
        Endpoint::Kv(percent_decode(key))
    } else if path == "/v1/catalog/services" {
        Endpoint::CatalogServices
    } else if let Some(name) = path.strip_prefix("/v1/health/service/") {
        Endpoint::HealthService(percent_decode(name))
    } else if path == "/v1/health/state/any" {
        Endpoint::HealthStateAny
    } else {
        return plain(
            StatusCode::NOT_FOUND,
            "not implemented by the Consul simulator",
        );
    };
    {
        let state = shared.lock();
        if let Some(token) = &state.token {
            let sent = req
                .headers()
                .get("X-Consul-Token")
                .and_then(|v| v.to_str().ok());
            if sent != Some(token.as_str()) {
                return plain(StatusCode::FORBIDDEN, "Permission denied");
            }
        }
    }
    if let Some(dc) = query.get("dc")
        && dc != DATACENTER
    {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter");
    }
    let min_index: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    if min_index > 0 {
        let wait = query
            .get("wait")
            .and_then(|w| parse_wait(w))
            .unwrap_or(DEFAULT_WAIT)
            .min(MAX_WAIT);
        let jitter_ms = u64::try_from((wait / 16).as_millis()).unwrap_or(0);
        let wait = wait + Duration::from_millis(fastrand::u64(0..=jitter_ms));
        block(shared, &endpoint, min_index, wait).await;
    }
    let passing_only = query.contains_key("passing");
    let mut state = shared.lock();
    *state.answered.entry(path).or_default() += 1;
    let (status, index, body) = answer(&state, &endpoint, passing_only);
    drop(state);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert("X-Consul-Index", http::HeaderValue::from(index));
    headers.insert(
        "X-Consul-Knownleader",
        http::HeaderValue::from_static("true"),
    );
    headers.insert("X-Consul-Lastcontact", http::HeaderValue::from_static("0"));
    response
}

/// Parks the request until the endpoint's index differs from `min_index` or `wait` elapses.
async fn block(shared: &Shared, endpoint: &Endpoint, min_index: u64, wait: Duration) {
    /// Counts the request as blocked until it returns or its connection is cut (dropped).
    struct Parked<'a>(&'a Shared);
    impl Drop for Parked<'_> {
        fn drop(&mut self) {
            let mut state = self.0.lock();
            state.blocked = state.blocked.saturating_sub(1);
        }
    }
    let mut changes = shared.changes.subscribe();
    shared.lock().blocked += 1;
    let _parked = Parked(shared);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let current = {
            let state = shared.lock();
            answer(&state, endpoint, false).1
        };
        // Consul answers when the index moved past the client's — or went backwards (reset).
        if current != min_index {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
    }
}

/// `(status, X-Consul-Index, body)` for an endpoint in the current state.
fn answer(state: &State, endpoint: &Endpoint, passing_only: bool) -> (StatusCode, u64, String) {
    match endpoint {
        Endpoint::Kv(prefix) => {
            let entries: Vec<Value> = state
                .kv
                .iter()
                .filter(|(k, _)| k.starts_with(prefix.as_str()))
                .map(|(k, e)| {
                    json!({
                        "LockIndex": 0,
                        "Key": k,
                        "Flags": e.flags,
                        "Value": if e.value.is_empty() { Value::Null } else {
                            Value::String(base64::engine::general_purpose::STANDARD.encode(&e.value))
                        },
                        "CreateIndex": e.create_index,
                        "ModifyIndex": e.modify_index,
                    })
                })
                .collect();
            let index = state
                .kv
                .iter()
                .filter(|(k, _)| k.starts_with(prefix.as_str()))
                .map(|(_, e)| e.modify_index)
                .chain(
                    state
                        .tombstones
                        .iter()
                        .filter(|(k, _)| k.starts_with(prefix.as_str()))
                        .map(|(_, i)| *i),
                )
                .max()
                .unwrap_or(state.kv_index);
            if entries.is_empty() {
                (StatusCode::NOT_FOUND, index, String::new())
            } else {
                (StatusCode::OK, index, Value::Array(entries).to_string())
            }
        }
        Endpoint::CatalogServices => {
            let mut services: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for rec in state.services.values() {
                let tags = services.entry(rec.reg.name.clone()).or_default();
                for tag in &rec.reg.tags {
                    if !tags.contains(tag) {
                        tags.push(tag.clone());
                    }
                }
            }
            (
                StatusCode::OK,
                state.catalog_index,
                json!(services).to_string(),
            )
        }
        Endpoint::HealthService(name) => {
            let index = state.catalog_index.max(state.checks_index);
            let entries: Vec<Value> = state
                .services
                .values()
                .filter(|rec| rec.reg.name == *name)
                .filter_map(|rec| {
                    let checks: Vec<&CheckRec> = state
                        .checks
                        .values()
                        .filter(|c| {
                            c.node == rec.reg.node
                                && (c.service_id.is_empty() || c.service_id == rec.reg.id)
                        })
                        .collect();
                    if passing_only && checks.iter().any(|c| c.status != "passing") {
                        return None;
                    }
                    Some(json!({
                        "Node": node_json(state, &rec.reg.node),
                        "Service": service_json(rec),
                        "Checks": checks.iter().map(|c| check_json(state, c)).collect::<Vec<_>>(),
                    }))
                })
                .collect();
            (StatusCode::OK, index, Value::Array(entries).to_string())
        }
        Endpoint::HealthStateAny => {
            let checks: Vec<Value> = state
                .checks
                .values()
                .map(|c| check_json(state, c))
                .collect();
            (
                StatusCode::OK,
                state.checks_index,
                Value::Array(checks).to_string(),
            )
        }
    }
}

fn node_json(state: &State, node: &str) -> Value {
    let rec = state.nodes.get(node);
    let address = rec.map(|n| n.address.clone()).unwrap_or_default();
    let index = rec.map_or(0, |n| n.create_index);
    json!({
        "ID": rec.map(|n| n.id.clone()).unwrap_or_default(),
        "Node": node,
        "Address": address,
        "Datacenter": DATACENTER,
        "TaggedAddresses": { "lan": address, "wan": address },
        "Meta": { "consul-network-segment": "" },
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

fn service_json(rec: &ServiceRec) -> Value {
    let r = &rec.reg;
    json!({
        "ID": r.id,
        "Service": r.name,
        "Tags": r.tags,
        "Address": r.address,
        "TaggedAddresses": if r.address.is_empty() { Value::Null } else { json!({
            "lan_ipv4": { "Address": r.address, "Port": r.port },
            "wan_ipv4": { "Address": r.address, "Port": r.port },
        })},
        "Meta": null,
        "Port": r.port,
        "Weights": { "Passing": 1, "Warning": 1 },
        "EnableTagOverride": false,
        "Proxy": { "Mode": "", "MeshGateway": {}, "Expose": {} },
        "Connect": {},
        "Namespace": "default",
        "Datacenter": DATACENTER,
        "CreateIndex": rec.create_index,
        "ModifyIndex": rec.modify_index,
    })
}

fn check_json(state: &State, c: &CheckRec) -> Value {
    let tags = state
        .services
        .get(&(c.node.clone(), c.service_id.clone()))
        .map(|s| s.reg.tags.clone())
        .unwrap_or_default();
    json!({
        "Node": c.node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status,
        "Notes": "",
        "Output": "",
        "ServiceID": c.service_id,
        "ServiceName": c.service_name,
        "ServiceTags": tags,
        "Type": if c.service_id.is_empty() { "" } else { "ttl" },
        "Namespace": "default",
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    })
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Consul's `wait`: `10s`, `5m`, `100ms`, or bare seconds.
fn parse_wait(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" | "" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
