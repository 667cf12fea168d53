//! The Kubernetes CRD provider (`providers.kubernetesCRD`, provider name `kubernetescrd`):
//! Traefik's `traefik.io/v1alpha1` resources (IngressRoute, Middleware, TraefikService,
//! TLSOption, TLSStore, ServersTransport) plus the Services, `discovery.k8s.io/v1`
//! EndpointSlices and Secrets they use, translated with Traefik's semantics and names
//! (`kubernetes/translate.rs`, `kubernetes/naming.rs`).
//!
//! Lifecycle: build a `kube::Client` (`endpoint` + `token` + `certAuthFilePath`, else the
//! kubeconfig, else the in-cluster service account) → one kube-runtime reflector per kind (and
//! per namespace when `namespaces` is set): list, then watch from the list's resourceVersion with
//! bookmarks; a watch that ends resumes from the last resourceVersion seen, and `410 Gone`
//! (history compacted) makes that reflector list again and swap its store atomically. Once every
//! reflector has listed, any change rebuilds the complete configuration from the stores (after a
//! short quiet period, and no more often than `throttleDuration`) and sends it.
//!
//! Failure: an API error (server unreachable, 5xx, 403) is reported as the provider's status and
//! nothing is sent, so the last good configuration stays; reflectors retry with kube-runtime's
//! jittered exponential backoff (0.8 s → 30 s) and keep their stores. While unhealthy the
//! provider probes the API server with a cheap list and reports health again once it answers.
//! A resource that cannot be used is left out of the configuration, reported as a diagnostic
//! (`GetVersion`, `status`) and as a Kubernetes `Warning` Event on the resource; the rest routes.
//! This module never writes anything to the API server but those Events.

pub mod crd;
pub mod naming;
pub mod translate;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    path::PathBuf,
    time::Duration,
};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::{
    api::{
        core::v1::{Event, EventSource, ObjectReference, Secret, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, PostParams},
    core::NamespaceResourceScope,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use switchyard_shared::backoff::Backoff;
use thiserror::Error;
use tokio::{sync::watch, time::Instant};

use self::{
    crd::{IngressRoute, Middleware, ServersTransport, TlsOption, TlsStore, TraefikService},
    translate::{Cluster, Problem, Settings},
};
use super::{Provider, ProviderSink, ProviderTask};
use crate::{
    compile::Diagnostic,
    config::{KubernetesCrdProviderConfig, ProvidersConfig},
    dynamic::DynamicConfig,
};

/// The provider name (`name@kubernetescrd`).
pub const NAME: &str = translate::PROVIDER;

/// Changes arriving within this window after the first one are answered by one rebuild.
const QUIET: Duration = Duration::from_millis(50);
/// Health probes while the API server is failing (full jitter).
const PROBE_BASE: Duration = Duration::from_millis(200);
const PROBE_MAX: Duration = Duration::from_secs(5);
/// Client construction retries (no kubeconfig yet, unreadable CA file…).
const CLIENT_RETRY_MAX: Duration = Duration::from_secs(30);
/// At most this many Events are posted per rebuild (an error storm must not flood the API).
const MAX_EVENTS_PER_REBUILD: usize = 50;
/// The component named in Events.
const COMPONENT: &str = "switchyard-controller";
/// Helm release secrets are large and never TLS material (Traefik skips them the same way).
const SECRET_SELECTOR: &str = "owner!=helm";

/// Errors of this provider's set-up; messages name the option.
#[derive(Debug, Error)]
pub enum KubernetesError {
    #[error("providers.kubernetesCRD.endpoint `{endpoint}`: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("providers.kubernetesCRD.{option}: {reason}")]
    Option {
        option: &'static str,
        reason: String,
    },
    #[error(
        "no Kubernetes API server configured: set providers.kubernetesCRD.endpoint, a kubeconfig \
         (KUBECONFIG or ~/.kube/config), or run in a cluster: {0}"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Checks `providers.kubernetesCRD` at start-up; the message names the option.
pub fn validate_config(providers: &ProvidersConfig) -> Result<(), String> {
    match &providers.kubernetes_crd {
        Some(config) => KubernetesCrdProvider::from_config(config)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Where the API server is and how to authenticate.
#[derive(Clone, Debug)]
enum Connection {
    /// `endpoint` (+ `token`, `certAuthFilePath`).
    Explicit {
        url: http::Uri,
        token: Option<String>,
        ca_file: Option<PathBuf>,
    },
    /// kubeconfig, else in-cluster.
    Infer,
}

/// The Kubernetes CRD provider.
#[derive(Debug)]
pub struct KubernetesCrdProvider {
    connection: Connection,
    namespaces: Vec<String>,
    label_selector: Option<String>,
    throttle: Duration,
    settings: Settings,
}

impl KubernetesCrdProvider {
    /// Builds the provider; the error names the bad option.
    pub fn from_config(config: &KubernetesCrdProviderConfig) -> Result<Self, KubernetesError> {
        let connection = match config.endpoint.as_deref().filter(|e| !e.is_empty()) {
            Some(endpoint) => {
                let url: http::Uri = endpoint.parse().map_err(|e: http::uri::InvalidUri| {
                    KubernetesError::Endpoint {
                        endpoint: endpoint.to_owned(),
                        reason: e.to_string(),
                    }
                })?;
                if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
                    return Err(KubernetesError::Endpoint {
                        endpoint: endpoint.to_owned(),
                        reason: "expected http(s)://host[:port]".into(),
                    });
                }
                Connection::Explicit {
                    url,
                    token: config.token.clone().filter(|t| !t.is_empty()),
                    ca_file: config.cert_auth_file_path.clone(),
                }
            }
            None => {
                for (option, set) in [
                    ("token", config.token.is_some()),
                    ("certAuthFilePath", config.cert_auth_file_path.is_some()),
                ] {
                    if set {
                        return Err(KubernetesError::Option {
                            option,
                            reason: "only used with `endpoint`".into(),
                        });
                    }
                }
                Connection::Infer
            }
        };
        if let Some(selector) = &config.label_selector {
            check_label_selector(selector).map_err(|reason| KubernetesError::Option {
                option: "labelSelector",
                reason,
            })?;
        }
        Ok(Self {
            connection,
            namespaces: config.namespaces.clone(),
            label_selector: config.label_selector.clone().filter(|s| !s.is_empty()),
            throttle: config.throttle_duration.unwrap_or_default(),
            settings: Settings {
                ingress_class: config.ingress_class.clone().filter(|c| !c.is_empty()),
                allow_cross_namespace: config.allow_cross_namespace,
                allow_external_name_services: config.allow_external_name_services,
                allow_empty_services: config.allow_empty_services,
            },
        })
    }

    async fn client(&self) -> Result<Client, KubernetesError> {
        let config = match &self.connection {
            Connection::Explicit {
                url,
                token,
                ca_file,
            } => {
                let mut config = kube::Config::new(url.clone());
                config.auth_info.token = token.clone().map(Into::into);
                config.root_cert_file = ca_file.clone();
                config
            }
            Connection::Infer => kube::Config::infer()
                .await
                .map_err(KubernetesError::Infer)?,
        };
        Client::try_from(config).map_err(KubernetesError::Client)
    }
}

/// Label selectors are checked by the API server; this only catches what it would refuse for
/// sure, so the mistake is a start-up error rather than a provider that never lists.
fn check_label_selector(selector: &str) -> Result<(), String> {
    for requirement in selector.split(',') {
        let requirement = requirement.trim();
        if requirement.is_empty() {
            return Err(format!("`{selector}`: empty requirement"));
        }
        let key = requirement
            .split(['=', '!', ' '])
            .find(|part| !part.is_empty())
            .unwrap_or_default();
        if key.is_empty() || requirement.ends_with('=') {
            return Err(format!(
                "`{selector}`: `{requirement}` is not a requirement"
            ));
        }
    }
    Ok(())
}

impl Provider for KubernetesCrdProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(self: Box<Self>, sink: ProviderSink, shutdown: watch::Receiver<bool>) -> ProviderTask {
        Box::pin(run(*self, sink, shutdown))
    }
}

/// What one reflector tells the loop.
enum Signal {
    /// A relist started or returned an object: the store does not change until it completes.
    Listing,
    /// The store holds a complete list.
    Listed,
    /// An object was added, changed or deleted.
    Changed,
}

struct Item {
    /// Which reflector (index into the readiness table).
    index: usize,
    kind: &'static str,
    result: Result<Signal, watcher::Error>,
}

/// The reflectors' stores, per kind (one store per watched namespace).
#[derive(Default)]
struct Stores {
    ingress_routes: Vec<Store<IngressRoute>>,
    middlewares: Vec<Store<Middleware>>,
    traefik_services: Vec<Store<TraefikService>>,
    tls_options: Vec<Store<TlsOption>>,
    tls_stores: Vec<Store<TlsStore>>,
    servers_transports: Vec<Store<ServersTransport>>,
    services: Vec<Store<Service>>,
    endpoint_slices: Vec<Store<EndpointSlice>>,
    secrets: Vec<Store<Secret>>,
}

impl Stores {
    fn cluster(&self) -> Cluster {
        fn all<K>(stores: &[Store<K>]) -> Vec<std::sync::Arc<K>>
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            stores.iter().flat_map(Store::state).collect()
        }
        Cluster {
            ingress_routes: all(&self.ingress_routes),
            middlewares: all(&self.middlewares),
            traefik_services: all(&self.traefik_services),
            tls_options: all(&self.tls_options),
            tls_stores: all(&self.tls_stores),
            servers_transports: all(&self.servers_transports),
            services: all(&self.services),
            endpoint_slices: all(&self.endpoint_slices),
            secrets: all(&self.secrets),
        }
    }
}

/// Starts the reflectors of one kind (one per namespace, or one cluster-wide).
fn reflect<K>(
    client: &Client,
    namespaces: &[String],
    config: &watcher::Config,
    stores: &mut Vec<Store<K>>,
    streams: &mut Vec<BoxStream<'static, Item>>,
) where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let apis: Vec<Api<K>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    for api in apis {
        let (reader, writer) = reflector::store();
        let index = streams.len();
        let kind: &'static str = match K::kind(&()) {
            std::borrow::Cow::Borrowed(kind) => kind,
            std::borrow::Cow::Owned(_) => "object",
        };
        let stream = watcher(api, config.clone())
            .modify(|object| object.managed_fields_mut().clear())
            .default_backoff()
            .reflect(writer)
            .map(move |result| Item {
                index,
                kind,
                result: result.map(|event| match event {
                    watcher::Event::Init | watcher::Event::InitApply(_) => Signal::Listing,
                    watcher::Event::InitDone => Signal::Listed,
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) => Signal::Changed,
                }),
            })
            .boxed();
        stores.push(reader);
        streams.push(stream);
    }
}

fn start(
    provider: &KubernetesCrdProvider,
    client: &Client,
) -> (Stores, Vec<BoxStream<'static, Item>>) {
    let mut stores = Stores::default();
    let mut streams = Vec::new();
    let ns = &provider.namespaces;
    let mut traefik = watcher::Config::default();
    if let Some(selector) = &provider.label_selector {
        traefik = traefik.labels(selector);
    }
    let plain = watcher::Config::default();
    let secrets = watcher::Config::default().labels(SECRET_SELECTOR);
    reflect(
        client,
        ns,
        &traefik,
        &mut stores.ingress_routes,
        &mut streams,
    );
    reflect(client, ns, &traefik, &mut stores.middlewares, &mut streams);
    reflect(
        client,
        ns,
        &traefik,
        &mut stores.traefik_services,
        &mut streams,
    );
    reflect(client, ns, &traefik, &mut stores.tls_options, &mut streams);
    reflect(client, ns, &traefik, &mut stores.tls_stores, &mut streams);
    reflect(
        client,
        ns,
        &traefik,
        &mut stores.servers_transports,
        &mut streams,
    );
    reflect(client, ns, &plain, &mut stores.services, &mut streams);
    reflect(
        client,
        ns,
        &plain,
        &mut stores.endpoint_slices,
        &mut streams,
    );
    reflect(client, ns, &secrets, &mut stores.secrets, &mut streams);
    (stores, streams)
}

/// `410 Gone`: the watch fell behind the server's history; the reflector lists again. Routine,
/// not an outage.
fn is_gone(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

async fn run(
    provider: KubernetesCrdProvider,
    sink: ProviderSink,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = Backoff::new(PROBE_BASE, CLIENT_RETRY_MAX);
    let client = loop {
        match provider.client().await {
            Ok(client) => break client,
            Err(error) => {
                sink.error(error.to_string()).await;
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(retry.next_delay()) => {}
                }
            }
        }
    };
    let (stores, streams) = start(&provider, &client);
    let mut listed = vec![false; streams.len()];
    let mut items = futures::stream::select_all(streams);
    let probe_api: Api<IngressRoute> = match provider.namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut events = Events::new(client.clone());

    // Rebuild due at (set by a change once every reflector has listed).
    let mut due: Option<Instant> = None;
    let mut last_rebuild: Option<Instant> = None;
    let mut last_sent: Option<(DynamicConfig, Vec<Problem>)> = None;
    // Kinds whose reflector failed since the API server last answered, and the message sent.
    let mut failing: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut reported: Option<String> = None;
    let mut probe = Backoff::new(PROBE_BASE, PROBE_MAX);
    let mut probe_at = Instant::now();
    // Send even an unchanged configuration: it tells the aggregator we are healthy again.
    let mut force = false;

    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            item = items.next() => {
                // Reflector streams retry forever; they end only with the runtime.
                let Some(item) = item else { return };
                match item.result {
                    Ok(signal) => {
                        if let Signal::Listed = signal {
                            listed[item.index] = true;
                        }
                        if failing.remove(item.kind).is_some() && failing.is_empty() {
                            force = true;
                        }
                        if !matches!(signal, Signal::Listing) && listed.iter().all(|l| *l) {
                            let earliest = last_rebuild.map_or_else(Instant::now, |t| t + provider.throttle);
                            due.get_or_insert((Instant::now() + QUIET).max(earliest));
                        }
                    }
                    Err(error) if is_gone(&error) => {
                        tracing::info!(provider = NAME, kind = item.kind, %error, "watch history expired; listing again");
                    }
                    Err(error) => {
                        let message = format!("kubernetes API: watching {}: {error}", item.kind);
                        if failing.is_empty() {
                            probe.reset();
                            probe_at = Instant::now() + probe.next_delay();
                        }
                        failing.insert(item.kind, message.clone());
                        if reported.as_deref() != Some(message.as_str()) {
                            sink.error(message.clone()).await;
                            reported = Some(message);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(probe_at), if !failing.is_empty() => {
                match probe_api.list(&ListParams::default().limit(1)).await {
                    Ok(_) => {
                        tracing::info!(provider = NAME, "kubernetes API server answers again");
                        failing.clear();
                        force = true;
                        if listed.iter().all(|l| *l) {
                            due.get_or_insert_with(Instant::now);
                        }
                    }
                    Err(_) => probe_at = Instant::now() + probe.next_delay(),
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                due = None;
                last_rebuild = Some(Instant::now());
                let translation = translate::translate(&stores.cluster(), &provider.settings);
                let current = (translation.config, translation.problems);
                if !force && last_sent.as_ref() == Some(&current) {
                    continue;
                }
                if !failing.is_empty() {
                    // A change arrived on one reflector while another still fails: send it,
                    // but stay unhealthy until the probe succeeds.
                    tracing::debug!(provider = NAME, "sending a configuration while some watches fail");
                }
                force = false;
                reported = None;
                let warnings = current
                    .1
                    .iter()
                    .map(|p| Diagnostic::error(NAME, p.object(), format!("{}: {}", p.reason, p.message)))
                    .collect();
                tracing::info!(
                    provider = NAME,
                    routers = current.0.http.as_ref().map_or(0, |h| h.routers.len()),
                    problems = current.1.len(),
                    "kubernetes configuration built"
                );
                events.record(&current.1);
                let alive = sink.update(current.0.clone(), warnings).await;
                last_sent = Some(current);
                if !alive {
                    return;
                }
                // Still failing somewhere: the update must not read as recovery.
                if let Some(message) = failing.values().next() {
                    sink.error(message.clone()).await;
                    reported = Some(message.clone());
                }
            }
        }
    }
}

/// Posts a `Warning` Event for each problem not reported yet (a problem that goes away and comes
/// back is reported again). Best effort: a failed post is logged, never retried.
struct Events {
    client: Client,
    posted: BTreeSet<Problem>,
}

impl Events {
    fn new(client: Client) -> Self {
        Self {
            client,
            posted: BTreeSet::new(),
        }
    }

    fn record(&mut self, problems: &[Problem]) {
        let current: BTreeSet<Problem> = problems.iter().cloned().collect();
        let fresh: Vec<Problem> = current
            .difference(&self.posted)
            .take(MAX_EVENTS_PER_REBUILD)
            .cloned()
            .collect();
        self.posted = current;
        if fresh.is_empty() {
            return;
        }
        let client = self.client.clone();
        tokio::spawn(async move {
            for problem in fresh {
                let api: Api<Event> = Api::namespaced(client.clone(), &problem.namespace);
                if let Err(error) = api.create(&PostParams::default(), &event(&problem)).await {
                    tracing::warn!(
                        provider = NAME,
                        object = %problem.object(),
                        %error,
                        "cannot post a Kubernetes Event"
                    );
                }
            }
        });
    }
}

/// A core/v1 Event on the resource, named like client-go's (`<object>.<unique hex>`).
fn event(problem: &Problem) -> Event {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:016x}", problem.name, fastrand::u64(..))),
            namespace: Some(problem.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(format!("{}/{}", crd::GROUP, crd::VERSION)),
            kind: Some(problem.kind.to_owned()),
            name: Some(problem.name.clone()),
            namespace: Some(problem.namespace.clone()),
            uid: problem.uid.clone(),
            ..Default::default()
        },
        reason: Some(problem.reason.to_owned()),
        message: Some(problem.message.clone()),
        type_: Some("Warning".to_owned()),
        source: Some(EventSource {
            component: Some(COMPONENT.to_owned()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.to_owned()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> KubernetesCrdProviderConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn options_are_checked_at_start_up() {
        assert!(
            KubernetesCrdProvider::from_config(&config(
                "endpoint: http://127.0.0.1:6443\ntoken: t"
            ))
            .is_ok()
        );
        let err = KubernetesCrdProvider::from_config(&config("endpoint: 'not a url'")).unwrap_err();
        assert!(
            err.to_string().contains("providers.kubernetesCRD.endpoint"),
            "{err}"
        );
        let err = KubernetesCrdProvider::from_config(&config("endpoint: ftp://host")).unwrap_err();
        assert!(err.to_string().contains("http(s)"), "{err}");
        let err = KubernetesCrdProvider::from_config(&config("token: t")).unwrap_err();
        assert!(
            err.to_string().contains("providers.kubernetesCRD.token"),
            "{err}"
        );
        let err =
            KubernetesCrdProvider::from_config(&config("labelSelector: 'app=,x'")).unwrap_err();
        assert!(err.to_string().contains("labelSelector"), "{err}");
        assert!(
            KubernetesCrdProvider::from_config(&config(
                "labelSelector: 'app=edge,tier!=x,!legacy'"
            ))
            .is_ok()
        );
    }

    #[test]
    fn events_name_the_resource_and_the_reason() {
        let e = event(&Problem {
            kind: "IngressRoute",
            namespace: "apps".into(),
            name: "web".into(),
            uid: Some("u".into()),
            reason: "ServiceNotFound",
            message: "kubernetes service not found: apps/web".into(),
        });
        assert_eq!(e.involved_object.kind.as_deref(), Some("IngressRoute"));
        assert_eq!(
            e.involved_object.api_version.as_deref(),
            Some("traefik.io/v1alpha1")
        );
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert!(e.metadata.name.unwrap().starts_with("web."));
    }
}
