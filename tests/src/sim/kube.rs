//! A Kubernetes API server SIMULATOR (not Kubernetes): an HTTP/1.1 server implementing the part
//! of the API that Switchyard's `kubernetescrd` provider and its `kube::Client` use, written from
//! the Kubernetes API conventions ("API Concepts": efficient detection of changes, resource
//! versions, watch bookmarks, retrieving large results in chunks) and served over plain HTTP on
//! loopback so the real client code runs against it:
//!
//! - `GET /api/v1/[namespaces/{ns}/]{plural}` and `GET /apis/{group}/{version}/[namespaces/{ns}/]
//!   {plural}` list a collection: `{"kind": "<Kind>List", "metadata": {"resourceVersion"}, "items"}`
//!   (items of built-in kinds without `kind`/`apiVersion`, as the real server does for typed
//!   lists; custom resources with them). `labelSelector` (`k`, `!k`, `k=v`, `k==v`, `k!=v`,
//!   `k in (…)`, `k notin (…)`) filters; `limit` + `continue` page (a continue token older than
//!   the compacted history answers `410 Expired`).
//! - The same with `watch=1` streams chunked JSON lines `{"type": "ADDED"|"MODIFIED"|"DELETED"|
//!   "BOOKMARK"|"ERROR", "object": …}`. From `resourceVersion` N it replays every change after N,
//!   then follows live; without one (or `0`) it starts with a synthetic `ADDED` per object. A
//!   change that moves an object out of (into) the label selector is sent as `DELETED`
//!   (`ADDED`). With `allowWatchBookmarks=true`, `BOOKMARK` events carry the current
//!   resourceVersion periodically. A resourceVersion older than the compacted history gets one
//!   `ERROR` event with a `Status` of code `410` (reason `Expired`), and the stream ends;
//!   `timeoutSeconds` ends it too.
//! - `POST …/namespaces/{ns}/{plural}` creates an object (`events` included: that is how the
//!   provider reports problems) and answers `201` with it (`409 AlreadyExists` on a clash).
//! - With a token configured, every request needs `Authorization: Bearer <token>` (else `401`).
//!
//! Resource versions come from one etcd-like counter bumped by every write. Simplifications:
//! a continued page reads the current state rather than the snapshot of the first page; there is
//! no field selector, no server-side apply, no admission, no defaulting (except `stringData` →
//! `data` for Secrets), and no per-collection history limit — [`KubeSim::expire_watches`]
//! compacts history and cuts every watch with `410`, the way a real server does when a watcher
//! falls behind.
//!
//! The control API (plain methods) applies YAML manifests, deletes objects, reads posted Events
//! and counts requests; [`KubeSim::stop`] makes the server go away (open watches are cut) and
//! [`KubeSim::resume`] brings it back on the same address with the same data.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::{
    body::{Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinHandle,
};

/// A kind the simulator serves: `(kind, group, version, plural, namespaced)`.
struct KindInfo {
    kind: &'static str,
    group: &'static str,
    version: &'static str,
    plural: &'static str,
}

const KINDS: &[KindInfo] = &[
    KindInfo {
        kind: "Service",
        group: "",
        version: "v1",
        plural: "services",
    },
    KindInfo {
        kind: "Secret",
        group: "",
        version: "v1",
        plural: "secrets",
    },
    KindInfo {
        kind: "Event",
        group: "",
        version: "v1",
        plural: "events",
    },
    KindInfo {
        kind: "EndpointSlice",
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
    },
    KindInfo {
        kind: "IngressRoute",
        group: "traefik.io",
        version: "v1alpha1",
        plural: "ingressroutes",
    },
    KindInfo {
        kind: "Middleware",
        group: "traefik.io",
        version: "v1alpha1",
        plural: "middlewares",
    },
    KindInfo {
        kind: "TraefikService",
        group: "traefik.io",
        version: "v1alpha1",
        plural: "traefikservices",
    },
    KindInfo {
        kind: "TLSOption",
        group: "traefik.io",
        version: "v1alpha1",
        plural: "tlsoptions",
    },
    KindInfo {
        kind: "TLSStore",
        group: "traefik.io",
        version: "v1alpha1",
        plural: "tlsstores",
    },
    KindInfo {
        kind: "ServersTransport",
        group: "traefik.io",
        version: "v1alpha1",
        plural: "serverstransports",
    },
];

impl KindInfo {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Built-in kinds' list items carry no `kind`/`apiVersion`; custom resources' do.
    fn builtin(&self) -> bool {
        !self.group.contains("traefik")
    }
}

fn kind_by_name(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}

fn kind_by_path(group: &str, version: &str, plural: &str) -> Option<&'static KindInfo> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// One write, as watches replay it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    plural: &'static str,
    kind: ChangeKind,
    object: Value,
    /// The object before a modification or deletion (for label-selector transitions).
    old: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    /// Watches and continue tokens from before this resourceVersion get `410`.
    compacted: u64,
    /// Bumped by [`KubeSim::expire_watches`]: open watches end with `410`.
    epoch: u64,
    /// plural → (namespace, name) → object.
    objects: BTreeMap<&'static str, BTreeMap<(String, String), Value>>,
    log: Vec<Change>,
    /// `"<plural> list"` / `"<plural> watch"` → requests answered.
    requests: BTreeMap<String, u64>,
}

struct Shared {
    state: Mutex<State>,
    /// Carries `State::rv` (and epoch bumps): watches wake on every write.
    changed: watch::Sender<u64>,
    token: Option<String>,
    bookmark_interval: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self, rv: u64) {
        self.changed.send_replace(rv);
    }
}

/// Options of a simulator.
#[derive(Clone, Debug)]
pub struct KubeSimOptions {
    /// Require `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// How often watches with `allowWatchBookmarks` get a `BOOKMARK`.
    pub bookmark_interval: Duration,
}

impl Default for KubeSimOptions {
    fn default() -> Self {
        Self {
            token: None,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// A running Kubernetes API server simulator.
pub struct KubeSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
}

/// What the control API can get wrong (a manifest the simulator cannot store).
#[derive(Debug)]
pub struct SimError(pub String);

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SimError {}

impl KubeSim {
    /// Starts on a free loopback port with default options.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(KubeSimOptions::default()).await
    }

    pub async fn start_with(options: KubeSimOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                ..Default::default()
            }),
            changed: watch::channel(1).0,
            token: options.token,
            bookmark_interval: options.bookmark_interval,
        });
        let server = Some(tokio::spawn(serve(listener, shared.clone())));
        Ok(Self {
            shared,
            addr,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`: what `providers.kubernetesCRD.endpoint` should say.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server goes away: the listener closes and open connections (watches included) are
    /// cut. Data is kept for [`resume`](Self::resume).
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Serves again on the same address with the same data.
    pub async fn resume(&mut self) -> std::io::Result<()> {
        if self.server.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            self.server = Some(tokio::spawn(serve(listener, self.shared.clone())));
        }
        Ok(())
    }

    /// Creates or replaces every object of a `---`-separated YAML manifest (objects without a
    /// namespace go to `default`), as `kubectl apply` would.
    pub fn apply(&self, manifests: &str) -> Result<(), SimError> {
        for document in serde_yaml::Deserializer::from_str(manifests) {
            let yaml = serde_yaml::Value::deserialize(document)
                .map_err(|e| SimError(format!("bad YAML: {e}")))?;
            if yaml.is_null() {
                continue;
            }
            let object = serde_json::to_value(yaml).map_err(|e| SimError(e.to_string()))?;
            self.apply_value(object)?;
        }
        Ok(())
    }

    /// Creates or replaces one object.
    pub fn apply_value(&self, mut object: Value) -> Result<(), SimError> {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let info = kind_by_name(&kind)
            .ok_or_else(|| SimError(format!("the simulator does not serve kind `{kind}`")))?;
        let meta = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| SimError(format!("{kind} without metadata")))?;
        let namespace = meta
            .entry("namespace")
            .or_insert_with(|| Value::from("default"))
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| SimError(format!("{kind} without metadata.name")))?
            .to_owned();
        let rv = write(&self.shared, info, &namespace, &name, Some(object));
        self.shared.notify(rv);
        Ok(())
    }

    /// Deletes an object; true when it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(info) = kind_by_name(kind) else {
            return false;
        };
        let exists = self
            .shared
            .lock()
            .objects
            .get(info.plural)
            .is_some_and(|c| c.contains_key(&(namespace.to_owned(), name.to_owned())));
        if exists {
            let rv = write(&self.shared, info, namespace, name, None);
            self.shared.notify(rv);
        }
        exists
    }

    /// The Events posted to the simulator (by anyone), in order of creation.
    pub fn events(&self) -> Vec<Value> {
        let state = self.shared.lock();
        let mut events: Vec<Value> = state
            .objects
            .get("events")
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        events.sort_by_key(|e| {
            e["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_default()
        });
        events
    }

    /// Forgets all history and ends every open watch with `410 Gone`: clients must list again.
    pub fn expire_watches(&self) {
        let rv = {
            let mut state = self.shared.lock();
            state.rv += 1;
            state.compacted = state.rv;
            state.epoch += 1;
            state.log.clear();
            state.rv
        };
        self.shared.notify(rv);
    }

    /// How many list (or watch) requests of `plural` were answered.
    pub fn requests(&self, plural: &str, verb: &str) -> u64 {
        self.shared
            .lock()
            .requests
            .get(&format!("{plural} {verb}"))
            .copied()
            .unwrap_or_default()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stores (or, with `None`, deletes) an object at a new resourceVersion; returns it.
fn write(
    shared: &Shared,
    info: &'static KindInfo,
    namespace: &str,
    name: &str,
    object: Option<Value>,
) -> u64 {
    let mut state = shared.lock();
    state.rv += 1;
    let rv = state.rv;
    let collection = state.objects.entry(info.plural).or_default();
    let key = (namespace.to_owned(), name.to_owned());
    let old = collection.get(&key).cloned();
    let change = match object {
        Some(mut object) => {
            object["kind"] = Value::from(info.kind);
            object["apiVersion"] = Value::from(info.api_version());
            if info.kind == "Secret" {
                string_data_to_data(&mut object);
            }
            let meta = &mut object["metadata"];
            meta["namespace"] = Value::from(namespace);
            meta["resourceVersion"] = Value::from(rv.to_string());
            let uid = old
                .as_ref()
                .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)));
            meta["uid"] = Value::from(uid);
            collection.insert(key, object.clone());
            Change {
                rv,
                plural: info.plural,
                kind: if old.is_some() {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Added
                },
                object,
                old,
            }
        }
        None => {
            let mut gone = collection.remove(&key).unwrap_or_else(|| json!({}));
            gone["metadata"]["resourceVersion"] = Value::from(rv.to_string());
            Change {
                rv,
                plural: info.plural,
                kind: ChangeKind::Deleted,
                object: gone,
                old,
            }
        }
    };
    state.log.push(change);
    rv
}

fn string_data_to_data(secret: &mut Value) {
    let Some(object) = secret.as_object_mut() else {
        return;
    };
    let Some(Value::Object(strings)) = object.remove("stringData") else {
        return;
    };
    let data = object
        .entry("data")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(data) = data {
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default();
            data.insert(
                key,
                Value::from(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in this set: aborting the accept task drops it and cuts them all.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((stream, _)) = accepted else { continue };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A response body: whole, or a stream of watch lines fed by a task.
pub struct SimBody {
    rx: Option<mpsc::Receiver<Bytes>>,
    whole: Option<Bytes>,
}

impl hyper::body::Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(bytes) = self.whole.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        match self.rx.as_mut() {
            None => Poll::Ready(None),
            Some(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<SimBody> {
    let mut response = Response::new(SimBody {
        rx: None,
        whole: Some(Bytes::from(body.to_string())),
    });
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<SimBody> {
    json_response(code, &status_object(code.as_u16(), reason, message))
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

/// `/api/v1/…` or `/apis/{group}/{version}/…` → (kind, namespace, name).
fn route(path: &str) -> Option<(&'static KindInfo, Option<String>, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => return None,
    };
    let info = kind_by_path(group, version, plural)?;
    Some((info, namespace.map(str::to_owned), name.map(str::to_owned)))
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<SimBody> {
    if let Some(token) = &shared.token {
        let expected = format!("Bearer {token}");
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
    }
    let Some((info, namespace, name)) = route(req.uri().path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let params = query(&req);
    match (req.method().clone(), name) {
        (Method::GET, None) => {
            let selector = match params.get("labelSelector").map(|s| Selector::parse(s)) {
                Some(Ok(s)) => s,
                Some(Err(e)) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
                None => Selector::default(),
            };
            let watching = matches!(params.get("watch").map(String::as_str), Some("1" | "true"));
            if watching {
                watch_collection(shared, info, namespace, selector, &params)
            } else {
                list(&shared, info, namespace.as_deref(), &selector, &params)
            }
        }
        (Method::GET, Some(name)) => {
            let state = shared.lock();
            let key = (namespace.unwrap_or_default(), name.clone());
            match state.objects.get(info.plural).and_then(|c| c.get(&key)) {
                Some(object) => json_response(StatusCode::OK, object),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} \"{name}\" not found", info.plural),
                ),
            }
        }
        (Method::POST, None) => {
            let Some(namespace) = namespace else {
                return status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "create needs a namespace",
                );
            };
            let body = match req.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            };
            let mut object: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            };
            create(&shared, info, &namespace, &mut object)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the simulator only lists, watches, gets and creates",
        ),
    }
}

fn create(
    shared: &Shared,
    info: &'static KindInfo,
    namespace: &str,
    object: &mut Value,
) -> Response<SimBody> {
    let meta = &mut object["metadata"];
    if !meta.is_object() {
        *meta = json!({});
    }
    let name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
        (Some(name), _) if !name.is_empty() => name.to_owned(),
        (_, Some(prefix)) => format!("{prefix}{:05x}", fastrand::u32(..0xfffff)),
        _ => {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name: Required value",
            );
        }
    };
    meta["name"] = Value::from(name.clone());
    if meta["namespace"].as_str().is_some_and(|ns| ns != namespace) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        );
    }
    let exists = shared
        .lock()
        .objects
        .get(info.plural)
        .is_some_and(|c| c.contains_key(&(namespace.to_owned(), name.clone())));
    if exists {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", info.plural),
        );
    }
    let rv = write(shared, info, namespace, &name, Some(object.clone()));
    shared.notify(rv);
    let stored = shared
        .lock()
        .objects
        .get(info.plural)
        .and_then(|c| c.get(&(namespace.to_owned(), name)))
        .cloned()
        .unwrap_or_default();
    json_response(StatusCode::CREATED, &stored)
}

fn count(state: &mut State, info: &KindInfo, verb: &str) {
    *state
        .requests
        .entry(format!("{} {verb}", info.plural))
        .or_default() += 1;
}

fn in_scope(object: &Value, namespace: Option<&str>, selector: &Selector) -> bool {
    let ns_ok = namespace.is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns));
    ns_ok && selector.matches(&object["metadata"]["labels"])
}

fn list(
    shared: &Shared,
    info: &'static KindInfo,
    namespace: Option<&str>,
    selector: &Selector,
    params: &BTreeMap<String, String>,
) -> Response<SimBody> {
    let mut state = shared.lock();
    count(&mut state, info, "list");
    let mut offset = 0usize;
    if let Some(token) = params.get("continue").filter(|t| !t.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| {
                let (rv, off) = t.split_once(':')?;
                Some((rv.parse::<u64>().ok()?, off.parse::<usize>().ok()?))
            });
        match decoded {
            Some((rv, off)) if rv >= state.compacted => offset = off,
            Some(_) => {
                return status(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
            None => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid continue token",
                );
            }
        }
    }
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let all: Vec<Value> = state
        .objects
        .get(info.plural)
        .map(|c| {
            c.values()
                .filter(|o| in_scope(o, namespace, selector))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let page: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|o| {
            let mut item = o.clone();
            if let (true, Some(map)) = (info.builtin(), item.as_object_mut()) {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    let mut metadata = json!({"resourceVersion": state.rv.to_string()});
    if offset + page.len() < all.len() {
        let token = format!("{}:{}", state.rv, offset + page.len());
        metadata["continue"] = Value::from(base64::engine::general_purpose::STANDARD.encode(token));
        metadata["remainingItemCount"] = Value::from(all.len() - offset - page.len());
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": metadata,
            "items": page,
        }),
    )
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch_collection(
    shared: Arc<Shared>,
    info: &'static KindInfo,
    namespace: Option<String>,
    selector: Selector,
    params: &BTreeMap<String, String>,
) -> Response<SimBody> {
    let bookmarks = params.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let from = params
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| v.parse::<u64>().unwrap_or(0));
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let (start, epoch, initial) = {
        let mut state = shared.lock();
        count(&mut state, info, "watch");
        match from {
            Some(rv) if rv < state.compacted => {
                let status = status_object(
                    410,
                    "Expired",
                    &format!("too old resource version: {rv} ({})", state.compacted),
                );
                let _ = tx.try_send(watch_line("ERROR", &status));
                drop(tx);
                return stream_response(rx);
            }
            Some(rv) => (rv, state.epoch, Vec::new()),
            None => {
                let initial: Vec<Bytes> = state
                    .objects
                    .get(info.plural)
                    .map(|c| {
                        c.values()
                            .filter(|o| in_scope(o, namespace.as_deref(), &selector))
                            .map(|o| watch_line("ADDED", o))
                            .collect()
                    })
                    .unwrap_or_default();
                (state.rv, state.epoch, initial)
            }
        }
    };
    let mut changed = shared.changed.subscribe();
    tokio::spawn(async move {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut seen = start;
        let mut next_bookmark = tokio::time::Instant::now() + shared.bookmark_interval;
        loop {
            // Everything after `seen`, computed under the lock, sent after it.
            let (lines, expired) = {
                let state = shared.lock();
                if state.epoch != epoch {
                    let status = status_object(410, "Expired", "watch expired: history compacted");
                    (vec![watch_line("ERROR", &status)], true)
                } else {
                    let lines = state
                        .log
                        .iter()
                        .filter(|c| c.rv > seen && c.plural == info.plural)
                        .filter_map(|c| event_for(c, namespace.as_deref(), &selector))
                        .collect::<Vec<_>>();
                    seen = seen.max(state.rv);
                    (lines, false)
                }
            };
            for line in lines {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            if expired {
                return;
            }
            tokio::select! {
                result = changed.changed() => if result.is_err() { return },
                _ = tokio::time::sleep_until(next_bookmark), if bookmarks => {
                    next_bookmark = tokio::time::Instant::now() + shared.bookmark_interval;
                    let rv = shared.lock().rv.max(seen);
                    let bookmark = json!({
                        "kind": info.kind,
                        "apiVersion": info.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()},
                    });
                    if tx.send(watch_line("BOOKMARK", &bookmark)).await.is_err() {
                        return;
                    }
                }
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => return,
                _ = tx.closed() => return,
            }
        }
    });
    stream_response(rx)
}

/// The watch event a change means for a watcher with this scope (`None`: not visible).
fn event_for(change: &Change, namespace: Option<&str>, selector: &Selector) -> Option<Bytes> {
    let now = in_scope(&change.object, namespace, selector);
    let before = change
        .old
        .as_ref()
        .is_some_and(|o| in_scope(o, namespace, selector));
    let kind = match (change.kind, before, now) {
        (ChangeKind::Added, _, true) => "ADDED",
        (ChangeKind::Modified, true, true) => "MODIFIED",
        (ChangeKind::Modified, false, true) => "ADDED",
        (ChangeKind::Modified, true, false) => "DELETED",
        (ChangeKind::Deleted, true, _) => "DELETED",
        _ => return None,
    };
    let mut object = change.object.clone();
    if kind == "DELETED" && change.kind == ChangeKind::Modified {
        object["metadata"]["resourceVersion"] = Value::from(change.rv.to_string());
    }
    if change.kind == ChangeKind::Deleted {
        // The last state of the object, at the deletion's resourceVersion.
        if let Some(old) = &change.old {
            object = old.clone();
            object["metadata"]["resourceVersion"] = Value::from(change.rv.to_string());
        }
    }
    Some(watch_line(kind, &object))
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<SimBody> {
    let mut response = Response::new(SimBody {
        rx: Some(rx),
        whole: None,
    });
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A label selector (the equality- and set-based grammar of the API conventions).
#[derive(Clone, Debug, Default)]
struct Selector(Vec<Requirement>);

#[derive(Clone, Debug)]
enum Requirement {
    Exists(String),
    Absent(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        let mut parts = Vec::new();
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, set)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set_values(set)?)
            } else if let Some((k, set)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set_values(set)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::Absent(k) => get(k).is_none(),
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        })
    }
}

fn set_values(set: &str) -> Result<Vec<String>, String> {
    let inner = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("bad set `{set}`"))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_follow_the_api_grammar() {
        let labels = json!({"app": "web", "tier": "edge"});
        let ok = |s: &str| {
            Selector::parse(s)
                .map(|s| s.matches(&labels))
                .unwrap_or(false)
        };
        assert!(ok("app=web"));
        assert!(ok("app==web,tier"));
        assert!(ok("owner!=helm"));
        assert!(ok("!owner"));
        assert!(ok("tier in (edge, core),app notin (db)"));
        assert!(!ok("app=db"));
        assert!(!ok("!app"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("owner%21%3Dhelm"), "owner!=helm");
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }
}
