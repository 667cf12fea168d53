//! Cluster state → Traefik dynamic configuration, with Traefik's CRD semantics
//! (`pkg/provider/kubernetes/crd/kubernetes{,_http}.go`): IngressRoutes become routers (and the
//! services of their routes), Middlewares middlewares, TraefikServices weighted services,
//! TLSOptions/TLSStores and `kubernetes.io/tls` Secrets the `tls` section; backends resolve
//! through Services and `discovery.k8s.io/v1` EndpointSlices.
//!
//! Pure: no I/O, no clock. A resource that cannot be used is left out and returned as a
//! [`Problem`] naming it (kind, namespace/name) and the reason; everything else still
//! translates. Where Traefik drops a single route of an IngressRoute, so do we.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Secret, Service as K8sService, ServicePort},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::Value;

use super::{
    crd::{
        IngressRoute, Middleware, ObjectRef, ServersTransport, ServiceRef, TlsOption, TlsStore,
        TraefikKind, TraefikService, TraefikServiceSpec,
    },
    naming::{self, PROVIDER_SEPARATOR},
};
use crate::dynamic::{
    self, CertificateDef, ClientAuthDef, DynamicConfig, HttpConfig, LoadBalancer, Router,
    RouterTls, Server, TlsConfig, TlsOptionsDef, TlsStoreDef, Weighted, WeightedRef,
};

/// This provider's name, as it qualifies objects (`name@kubernetescrd`).
pub const PROVIDER: &str = "kubernetescrd";

/// The ingress class Traefik answers to when `ingressClass` is not set.
const DEFAULT_INGRESS_CLASS: &str = "traefik";
/// The deprecated annotation `spec.ingressClassName` overrides.
const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The provider options that shape translation (`providers.kubernetesCRD`).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub ingress_class: Option<String>,
    pub allow_cross_namespace: bool,
    pub allow_external_name_services: bool,
    pub allow_empty_services: bool,
}

/// Everything the provider watches, as read from the API server.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub ingress_routes: Vec<Arc<IngressRoute>>,
    pub middlewares: Vec<Arc<Middleware>>,
    pub traefik_services: Vec<Arc<TraefikService>>,
    pub tls_options: Vec<Arc<TlsOption>>,
    pub tls_stores: Vec<Arc<TlsStore>>,
    pub servers_transports: Vec<Arc<ServersTransport>>,
    pub services: Vec<Arc<K8sService>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub secrets: Vec<Arc<Secret>>,
}

/// A resource left out (or partly left out), and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `IngressRoute`, `Middleware`, …
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    /// A CamelCase reason, as Kubernetes Events carry (`ReferenceNotFound`, …).
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    /// `ingressroute/<ns>/<name>`: the object of the diagnostic.
    pub fn object(&self) -> String {
        format!(
            "{}/{}/{}",
            self.kind.to_ascii_lowercase(),
            self.namespace,
            self.name
        )
    }
}

/// The configuration and the problems found.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    pub config: DynamicConfig,
    pub problems: Vec<Problem>,
}

/// Why a reference or backend could not be used (the reason is the Event's).
#[derive(Debug)]
struct Refusal {
    reason: &'static str,
    message: String,
}

fn refuse(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
    }
}

/// Translates the whole cluster state.
pub fn translate(cluster: &Cluster, settings: &Settings) -> Translation {
    let mut t = Translator::new(cluster, settings);
    t.tls_stores();
    t.tls_options();
    t.ingress_routes();
    t.middlewares();
    t.traefik_services();
    t.servers_transports();
    t.finish()
}

struct Translator<'a> {
    cluster: &'a Cluster,
    settings: &'a Settings,
    services_by_name: BTreeMap<(&'a str, &'a str), &'a K8sService>,
    slices_by_service: BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    secrets: BTreeMap<(&'a str, &'a str), &'a Secret>,
    http: HttpConfig,
    certificates: BTreeMap<String, CertificateDef>,
    tls_options: BTreeMap<String, TlsOptionsDef>,
    tls_stores: BTreeMap<String, TlsStoreDef>,
    problems: Vec<Problem>,
}

fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

impl<'a> Translator<'a> {
    fn new(cluster: &'a Cluster, settings: &'a Settings) -> Self {
        let services_by_name = cluster
            .services
            .iter()
            .map(|s| (ns_name(&s.metadata), s.as_ref()))
            .collect();
        let mut slices_by_service: BTreeMap<_, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in &cluster.endpoint_slices {
            let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
            slices_by_service
                .entry((namespace, service.as_str()))
                .or_default()
                .push(slice.as_ref());
        }
        // Slices in name order, so server order is deterministic.
        for slices in slices_by_service.values_mut() {
            slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        let secrets = cluster
            .secrets
            .iter()
            .map(|s| (ns_name(&s.metadata), s.as_ref()))
            .collect();
        Self {
            cluster,
            settings,
            services_by_name,
            slices_by_service,
            secrets,
            http: HttpConfig::default(),
            certificates: BTreeMap::new(),
            tls_options: BTreeMap::new(),
            tls_stores: BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    fn problem<K: TraefikKind>(
        &mut self,
        object: &super::crd::Object<K>,
        reason: &'static str,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            kind: K::KIND,
            namespace: object.namespace().to_owned(),
            name: object.name().to_owned(),
            uid: object.metadata.uid.clone(),
            reason,
            message: message.into(),
        });
    }

    fn finish(mut self) -> Translation {
        let mut config = DynamicConfig {
            http: Some(self.http),
            ..Default::default()
        };
        if !self.certificates.is_empty()
            || !self.tls_options.is_empty()
            || !self.tls_stores.is_empty()
        {
            config.tls = Some(TlsConfig {
                certificates: self.certificates.into_values().collect(),
                options: self.tls_options,
                stores: self.tls_stores,
                other: Default::default(),
            });
        }
        self.problems.sort();
        self.problems.dedup();
        Translation {
            config,
            problems: self.problems,
        }
    }

    // ---- TLS ----------------------------------------------------------------------------------

    /// `tls.crt`/`tls.key` of a Secret, as PEM text.
    fn certificate(&self, namespace: &str, secret: &str) -> Result<CertificateDef, Refusal> {
        let found = self.secrets.get(&(namespace, secret)).ok_or_else(|| {
            refuse(
                "SecretNotFound",
                format!("secret {namespace}/{secret} does not exist"),
            )
        })?;
        let data = found.data.as_ref();
        let entry = |key: &str| {
            data.and_then(|d| d.get(key))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .filter(|s| !s.is_empty())
        };
        match (entry("tls.crt"), entry("tls.key")) {
            (Some(cert), Some(key)) => Ok(CertificateDef {
                cert_file: cert,
                key_file: key,
                stores: Vec::new(),
            }),
            (cert, key) => {
                let missing: Vec<&str> = [("tls.crt", cert.is_none()), ("tls.key", key.is_none())]
                    .into_iter()
                    .filter_map(|(k, m)| m.then_some(k))
                    .collect();
                Err(refuse(
                    "InvalidSecret",
                    format!(
                        "secret {namespace}/{secret} has no (or empty) {}",
                        missing.join(", ")
                    ),
                ))
            }
        }
    }

    /// A CA bundle (`tls.ca`, else `ca.crt`) from a Secret.
    fn ca(&self, namespace: &str, secret: &str) -> Result<String, Refusal> {
        let found = self.secrets.get(&(namespace, secret)).ok_or_else(|| {
            refuse(
                "SecretNotFound",
                format!("secret {namespace}/{secret} does not exist"),
            )
        })?;
        let data = found.data.as_ref();
        ["tls.ca", "ca.crt"]
            .iter()
            .find_map(|k| data.and_then(|d| d.get(*k)))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| {
                refuse(
                    "InvalidSecret",
                    format!("secret {namespace}/{secret} contains neither tls.ca nor ca.crt"),
                )
            })
    }

    fn tls_stores(&mut self) {
        let mut default_namespaces = Vec::new();
        for store in &self.cluster.tls_stores {
            let spec = match store.decode() {
                Ok(spec) => spec,
                Err(e) => {
                    self.problem(store.as_ref(), "InvalidSpec", e);
                    continue;
                }
            };
            let namespace = store.namespace();
            let mut id = naming::make_id(namespace, store.name());
            if store.name() == "default" {
                id = "default".into();
                default_namespaces.push(namespace.to_owned());
            }
            let mut def = TlsStoreDef::default();
            if let Some(default) = &spec.default_certificate {
                match self.certificate(namespace, &default.secret_name) {
                    Ok(cert) => def.default_certificate = Some(cert),
                    Err(r) => {
                        self.problem(store.as_ref(), r.reason, r.message);
                        continue;
                    }
                }
            }
            if let Some(generated) = spec.default_generated_cert {
                def.other
                    .insert("defaultGeneratedCert".into(), json_to_yaml(generated));
            }
            for cert in &spec.certificates {
                let key = format!("{namespace}/{}", cert.secret_name);
                if self.certificates.contains_key(&key) {
                    continue;
                }
                match self.certificate(namespace, &cert.secret_name) {
                    Ok(mut c) => {
                        c.stores = vec![id.clone()];
                        self.certificates.insert(key, c);
                    }
                    // One missing certificate does not cost the store (Traefik 3.6+).
                    Err(r) => self.problem(store.as_ref(), r.reason, r.message),
                }
            }
            self.tls_stores.insert(id, def);
        }
        if default_namespaces.len() > 1 {
            self.tls_stores.remove("default");
            for store in self.cluster.tls_stores.clone() {
                if store.name() == "default" {
                    self.problem(
                        store.as_ref(),
                        "Conflict",
                        format!(
                            "the default TLSStore is defined in several namespaces ({}); none is used",
                            default_namespaces.join(", ")
                        ),
                    );
                }
            }
        }
    }

    fn tls_options(&mut self) {
        let mut default_namespaces = Vec::new();
        for option in &self.cluster.tls_options {
            let spec = match option.decode() {
                Ok(spec) => spec,
                Err(e) => {
                    self.problem(option.as_ref(), "InvalidSpec", e);
                    continue;
                }
            };
            let namespace = option.namespace();
            let mut id = naming::make_id(namespace, option.name());
            if option.name() == "default" {
                id = "default".into();
                default_namespaces.push(namespace.to_owned());
            }
            let mut def = TlsOptionsDef {
                min_version: spec.min_version,
                max_version: spec.max_version,
                cipher_suites: spec.cipher_suites,
                alpn_protocols: spec.alpn_protocols,
                sni_strict: spec.sni_strict.unwrap_or(false),
                ..Default::default()
            };
            if !spec.curve_preferences.is_empty() {
                def.other.insert(
                    "curvePreferences".into(),
                    json_to_yaml(Value::from(spec.curve_preferences)),
                );
            }
            if let Some(disable) = spec.disable_session_tickets {
                def.other.insert(
                    "disableSessionTickets".into(),
                    serde_yaml::Value::Bool(disable),
                );
            }
            if let Some(auth) = spec.client_auth {
                let mut cas = Vec::new();
                for secret in &auth.secret_names {
                    // As Traefik: a missing CA secret is reported, the option stays.
                    match self.ca(namespace, secret) {
                        Ok(ca) => cas.push(ca),
                        Err(r) => self.problem(option.as_ref(), r.reason, r.message),
                    }
                }
                def.client_auth = Some(ClientAuthDef {
                    ca_files: cas,
                    client_auth_type: auth.client_auth_type,
                });
            }
            self.tls_options.insert(id, def);
        }
        if default_namespaces.len() > 1 {
            self.tls_options.remove("default");
            for option in self.cluster.tls_options.clone() {
                if option.name() == "default" {
                    self.problem(
                        option.as_ref(),
                        "Conflict",
                        format!(
                            "the default TLSOption is defined in several namespaces ({}); none is used",
                            default_namespaces.join(", ")
                        ),
                    );
                }
            }
        }
    }

    // ---- IngressRoutes ------------------------------------------------------------------------

    fn ingress_routes(&mut self) {
        let wanted = self.settings.ingress_class.clone().unwrap_or_default();
        for route in self.cluster.ingress_routes.clone() {
            let spec = match route.decode() {
                Ok(spec) => spec,
                Err(e) => {
                    self.problem(route.as_ref(), "InvalidSpec", e);
                    continue;
                }
            };
            let class = spec.ingress_class_name.clone().or_else(|| {
                route
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(INGRESS_CLASS_ANNOTATION))
                    .filter(|c| !c.is_empty())
                    .cloned()
            });
            let class = class.unwrap_or_default();
            let ours = class == wanted || (wanted.is_empty() && class == DEFAULT_INGRESS_CLASS);
            if !ours {
                continue;
            }
            if !spec.parent_refs.is_empty() {
                self.problem(
                    route.as_ref(),
                    "Unsupported",
                    "parentRefs (multi-layer routing) are not supported; the IngressRoute is ignored",
                );
                continue;
            }
            let namespace = route.namespace().to_owned();
            if let Some(secret) = spec.tls.as_ref().and_then(|t| t.secret_name.as_deref()) {
                let key = format!("{namespace}/{secret}");
                if !self.certificates.contains_key(&key) {
                    match self.certificate(&namespace, secret) {
                        Ok(c) => {
                            self.certificates.insert(key, c);
                        }
                        // Traefik keeps the routers (served with the default certificate).
                        Err(r) => self.problem(route.as_ref(), r.reason, r.message),
                    }
                }
            }
            for r in &spec.routes {
                if let Err(refusal) = self.route(&route, &spec, r) {
                    let rule = if r.rule.is_empty() {
                        "<empty>"
                    } else {
                        &r.rule
                    };
                    self.problem(
                        route.as_ref(),
                        refusal.reason,
                        format!("route `{rule}`: {}", refusal.message),
                    );
                }
            }
        }
    }

    fn route(
        &mut self,
        route: &IngressRoute,
        spec: &super::crd::IngressRouteSpec,
        r: &super::crd::Route,
    ) -> Result<(), Refusal> {
        let namespace = route.namespace();
        if let Some(kind) = r.kind.as_deref().filter(|k| !k.is_empty() && *k != "Rule") {
            return Err(refuse(
                "InvalidSpec",
                format!("unsupported match kind `{kind}`; only `Rule` is supported"),
            ));
        }
        if r.rule.is_empty() {
            return Err(refuse("InvalidSpec", "empty match rule"));
        }
        let router_name = naming::router_name(namespace, route.name(), &r.rule);
        let middlewares = r
            .middlewares
            .iter()
            .map(|m| self.reference(namespace, m, "middleware"))
            .collect::<Result<Vec<_>, _>>()?;
        let service = match r.services.as_slice() {
            [] => String::new(),
            [one] => {
                let (full_name, lb) = self.backend(namespace, one)?;
                match lb {
                    Some(lb) => {
                        self.http.services.insert(router_name.clone(), lb);
                        router_name.clone()
                    }
                    None => full_name,
                }
            }
            many => {
                let weighted = self.weighted(namespace, many, None)?;
                self.http.services.insert(router_name.clone(), weighted);
                router_name.clone()
            }
        };
        let tls = match &spec.tls {
            None => None,
            Some(tls) => {
                let options = match &tls.options {
                    Some(o) if !o.name.is_empty() => {
                        Some(self.reference(namespace, o, "TLSOption")?)
                    }
                    _ => None,
                };
                Some(RouterTls {
                    options,
                    cert_resolver: tls.cert_resolver.clone().filter(|c| !c.is_empty()),
                    domains: tls.domains.clone(),
                })
            }
        };
        let mut other = dynamic::Extra::new();
        if let Some(observability) = &r.observability {
            other.insert("observability".into(), json_to_yaml(observability.clone()));
        }
        self.http.routers.insert(
            router_name,
            Arc::new(Router {
                rule: r.rule.clone(),
                priority: r.priority.unwrap_or(0),
                entry_points: spec.entry_points.clone(),
                middlewares,
                service,
                rule_syntax: r.syntax.clone().filter(|s| !s.is_empty()),
                tls,
                other,
            }),
        );
        Ok(())
    }

    /// Traefik's `resolveReference`: `<ns>-<name>`, or a cross-provider `name@provider` as is.
    fn reference(&self, parent_ns: &str, r: &ObjectRef, what: &str) -> Result<String, Refusal> {
        if r.name.contains(PROVIDER_SEPARATOR) {
            if !self.settings.allow_cross_namespace
                && r.name.ends_with(&format!("{PROVIDER_SEPARATOR}{PROVIDER}"))
            {
                return Err(refuse(
                    "CrossNamespaceRefused",
                    format!(
                        "{what} {}: `@{PROVIDER}` references are refused while allowCrossNamespace is false",
                        r.name
                    ),
                ));
            }
            return Ok(r.name.clone());
        }
        let namespace = r
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(parent_ns);
        if !self.settings.allow_cross_namespace && namespace != parent_ns {
            return Err(refuse(
                "CrossNamespaceRefused",
                format!(
                    "{what} {namespace}/{}: cross-namespace references are refused (allowCrossNamespace is false)",
                    r.name
                ),
            ));
        }
        Ok(naming::object_name(namespace, &r.name))
    }

    // ---- backends -----------------------------------------------------------------------------

    /// Traefik's `nameAndService`: the name a route uses for `svc`, and the load balancer to
    /// define when `svc` is a Kubernetes Service.
    fn backend(
        &mut self,
        parent_ns: &str,
        svc: &ServiceRef,
    ) -> Result<(String, Option<dynamic::Service>), Refusal> {
        let mut svc = svc.clone();
        if !svc.name.contains(PROVIDER_SEPARATOR) {
            let namespace = svc
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| parent_ns.to_owned());
            if !self.settings.allow_cross_namespace && namespace != parent_ns {
                return Err(refuse(
                    "CrossNamespaceRefused",
                    format!(
                        "service {namespace}/{} is not in the namespace of its parent ({parent_ns}) and allowCrossNamespace is false",
                        svc.name
                    ),
                ));
            }
            svc.namespace = Some(namespace);
        }
        match svc.kind.as_deref().unwrap_or_default() {
            "" | "Service" => {
                let lb = self.load_balancer(&svc)?;
                Ok((full_service_name(&svc, svc.port.as_ref()), Some(lb)))
            }
            "TraefikService" => Ok((full_service_name(&svc, None), None)),
            other => Err(refuse(
                "InvalidSpec",
                format!("unsupported service kind `{other}`"),
            )),
        }
    }

    fn weighted(
        &mut self,
        parent_ns: &str,
        children: &[ServiceRef],
        sticky: Option<&Value>,
    ) -> Result<dynamic::Service, Refusal> {
        let mut services = Vec::new();
        for child in children {
            let (name, lb) = self.backend(parent_ns, child)?;
            if let Some(lb) = lb {
                self.http.services.insert(name.clone(), lb);
            }
            services.push(WeightedRef {
                name,
                weight: Some(child.weight.unwrap_or(1)),
            });
        }
        let mut other = dynamic::Extra::new();
        if let Some(sticky) = sticky {
            other.insert("sticky".into(), json_to_yaml(sticky.clone()));
        }
        Ok(dynamic::Service {
            weighted: Some(Weighted { services, other }),
            ..Default::default()
        })
    }

    /// Traefik's `buildServersLB`.
    fn load_balancer(&self, svc: &ServiceRef) -> Result<dynamic::Service, Refusal> {
        let mut other = dynamic::Extra::new();
        match svc.strategy.as_deref().unwrap_or_default() {
            "" | "wrr" | "RoundRobin" => {}
            s @ ("p2c" | "hrw" | "leasttime") => {
                other.insert("strategy".into(), serde_yaml::Value::String(s.into()));
            }
            s => {
                return Err(refuse(
                    "InvalidSpec",
                    format!("load-balancer strategy `{s}` is not supported"),
                ));
            }
        }
        let servers = self.servers(svc)?;
        for (key, value) in [
            ("sticky", &svc.sticky),
            ("responseForwarding", &svc.response_forwarding),
            ("healthCheck", &svc.health_check),
            ("passiveHealthCheck", &svc.passive_health_check),
        ] {
            if let Some(v) = value {
                other.insert(key.into(), json_to_yaml(v.clone()));
            }
        }
        if let Some(transport) = svc.servers_transport.as_deref().filter(|t| !t.is_empty()) {
            let namespace = svc.namespace.as_deref().unwrap_or_default();
            let name = if transport.contains(PROVIDER_SEPARATOR) {
                if !self.settings.allow_cross_namespace
                    && transport.ends_with(&format!("{PROVIDER_SEPARATOR}{PROVIDER}"))
                {
                    return Err(refuse(
                        "CrossNamespaceRefused",
                        format!(
                            "serversTransport {transport}: `@{PROVIDER}` references are refused while allowCrossNamespace is false"
                        ),
                    ));
                }
                transport.to_owned()
            } else {
                naming::object_name(namespace, transport)
            };
            other.insert("serversTransport".into(), serde_yaml::Value::String(name));
        }
        let mut service = dynamic::Service {
            load_balancer: Some(LoadBalancer {
                servers,
                pass_host_header: svc.pass_host_header,
                other,
            }),
            ..Default::default()
        };
        if !svc.middlewares.is_empty() {
            let namespace = svc.namespace.as_deref().unwrap_or_default();
            let names = svc
                .middlewares
                .iter()
                .map(|m| self.reference(namespace, m, "middleware"))
                .collect::<Result<Vec<_>, _>>()?;
            service
                .other
                .insert("middlewares".into(), json_to_yaml(Value::from(names)));
        }
        Ok(service)
    }

    /// Traefik's `loadServers` (without node ports): ExternalName, native (ClusterIP), or the
    /// serving endpoints of the Service's EndpointSlices.
    fn servers(&self, svc: &ServiceRef) -> Result<Vec<Server>, Refusal> {
        let namespace = svc.namespace.as_deref().unwrap_or_default();
        let name = svc.name.as_str();
        let service = self
            .services_by_name
            .get(&(namespace, name))
            .ok_or_else(|| {
                refuse(
                    "ServiceNotFound",
                    format!("kubernetes service not found: {namespace}/{name}"),
                )
            })?;
        let spec = service.spec.clone().unwrap_or_default();
        let external = spec.type_.as_deref() == Some("ExternalName");
        let port = service_port(&spec.ports.unwrap_or_default(), svc.port.as_ref(), external)
            .map_err(|m| refuse("PortNotFound", format!("{namespace}/{name}: {m}")))?;
        if !external && svc.health_check.is_some() {
            return Err(refuse(
                "InvalidSpec",
                format!(
                    "healthCheck is allowed only for ExternalName services: {namespace}/{name}"
                ),
            ));
        }
        let port_name = port.name.clone().unwrap_or_default();
        let scheme = scheme(svc.scheme.as_deref(), &port_name, port.port)?;
        if external {
            if !self.settings.allow_external_name_services {
                return Err(refuse(
                    "ExternalNameRefused",
                    format!(
                        "externalName services are not allowed (allowExternalNameServices is false): {namespace}/{name}"
                    ),
                ));
            }
            let host = spec.external_name.unwrap_or_default();
            return Ok(vec![server(&scheme, &host, port.port)]);
        }
        if svc.native_lb.unwrap_or(false) {
            let ip = spec.cluster_ip.unwrap_or_default();
            if ip.is_empty() || ip == "None" {
                return Err(refuse(
                    "NoServers",
                    format!("nativeLB needs a cluster IP, and {namespace}/{name} has none"),
                ));
            }
            return Ok(vec![server(&scheme, &ip, port.port)]);
        }
        if svc.node_port_lb.unwrap_or(false) && spec.type_.as_deref() == Some("NodePort") {
            return Err(refuse(
                "Unsupported",
                format!("nodePortLB is not supported (nodes are not watched): {namespace}/{name}"),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut servers = Vec::new();
        for slice in self
            .slices_by_service
            .get(&(namespace, name))
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            // The slice port whose name is the Service port's name (Traefik).
            let Some(target) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(port_name.as_str()))
                .and_then(|p| p.port)
                .filter(|p| *p != 0)
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                let conditions = endpoint.conditions.clone().unwrap_or_default();
                // `serving` unset means serving (Kubernetes API docs).
                if !conditions.serving.unwrap_or(true) {
                    continue;
                }
                // Traefik keeps terminating-but-serving endpoints as "fenced" servers that only
                // sticky sessions reach; without sticky sessions here, that is no traffic.
                if conditions.terminating.unwrap_or(false) {
                    continue;
                }
                for address in &endpoint.addresses {
                    if seen.insert(address.clone()) {
                        servers.push(server(&scheme, address, target));
                    }
                }
            }
        }
        if servers.is_empty() && !self.settings.allow_empty_services {
            return Err(refuse(
                "NoServers",
                format!("no servers found for {namespace}/{name}"),
            ));
        }
        Ok(servers)
    }

    // ---- Middlewares, TraefikServices, ServersTransports ---------------------------------------

    fn middlewares(&mut self) {
        for m in self.cluster.middlewares.clone() {
            let id = naming::object_name(m.namespace(), m.name());
            let spec = match m.decode() {
                Ok(spec) => spec,
                Err(e) => {
                    self.problem(m.as_ref(), "InvalidSpec", e);
                    continue;
                }
            };
            let mut map = spec.rest;
            if let Some(chain) = spec.chain {
                let names = chain
                    .middlewares
                    .iter()
                    .map(|r| self.reference(m.namespace(), r, "middleware"))
                    .collect::<Result<Vec<_>, _>>();
                match names {
                    Ok(names) => {
                        map.insert("chain".into(), serde_json::json!({ "middlewares": names }));
                    }
                    Err(r) => {
                        self.problem(m.as_ref(), r.reason, format!("chain: {}", r.message));
                        continue;
                    }
                }
            }
            match serde_path_to_error::deserialize::<_, dynamic::Middleware>(Value::Object(map)) {
                Ok(middleware) => {
                    self.http.middlewares.insert(id, middleware);
                }
                Err(e) => self.problem(
                    m.as_ref(),
                    "InvalidSpec",
                    format!("spec.{}: {}", e.path(), e.inner()),
                ),
            }
        }
    }

    fn traefik_services(&mut self) {
        for ts in self.cluster.traefik_services.clone() {
            let id = naming::object_name(ts.namespace(), ts.name());
            let spec: TraefikServiceSpec = match ts.decode() {
                Ok(spec) => spec,
                Err(e) => {
                    self.problem(ts.as_ref(), "InvalidSpec", e);
                    continue;
                }
            };
            let result = if let Some(w) = &spec.weighted {
                self.weighted(ts.namespace(), &w.services, w.sticky.as_ref())
            } else {
                // Other kinds go to the compiler as written; it reports what it cannot serve.
                let raw = [
                    ("mirroring", &spec.mirroring),
                    ("highestRandomWeight", &spec.highest_random_weight),
                    ("failover", &spec.failover),
                ]
                .into_iter()
                .find_map(|(k, v)| v.clone().map(|v| (k, v)));
                match raw {
                    Some((key, value)) => {
                        let mut service = dynamic::Service::default();
                        service.other.insert(key.into(), json_to_yaml(value));
                        Ok(service)
                    }
                    None => Err(refuse("InvalidSpec", "unspecified service type")),
                }
            };
            match result {
                Ok(service) => {
                    self.http.services.insert(id, service);
                }
                Err(r) => self.problem(ts.as_ref(), r.reason, r.message),
            }
        }
    }

    fn servers_transports(&mut self) {
        let mut transports = serde_json::Map::new();
        for st in self.cluster.servers_transports.clone() {
            let mut spec = match st.decode() {
                Ok(spec) => spec,
                Err(e) => {
                    self.problem(st.as_ref(), "InvalidSpec", e);
                    continue;
                }
            };
            // Secrets become PEM, as Traefik's `rootCAs`/`certificates`.
            let mut root_cas = Vec::new();
            for secret in std::mem::take(&mut spec.root_cas_secrets) {
                match self.ca(st.namespace(), &secret) {
                    Ok(ca) => root_cas.push(ca),
                    Err(r) => self.problem(st.as_ref(), r.reason, r.message),
                }
            }
            let mut value = serde_json::to_value(&spec).unwrap_or_default();
            if let (Value::Object(map), false) = (&mut value, root_cas.is_empty()) {
                map.insert("rootCAs".into(), Value::from(root_cas));
            }
            transports.insert(naming::object_name(st.namespace(), st.name()), value);
        }
        if !transports.is_empty() {
            self.http.other.insert(
                "serversTransports".into(),
                json_to_yaml(Value::Object(transports)),
            );
        }
    }
}

/// Traefik's `fullServiceName`.
fn full_service_name(svc: &ServiceRef, port: Option<&IntOrString>) -> String {
    let namespace = svc.namespace.as_deref().unwrap_or_default();
    match port {
        Some(IntOrString::Int(p)) if *p != 0 => {
            return naming::service_name(namespace, &svc.name, &p.to_string());
        }
        Some(IntOrString::String(p)) if !p.is_empty() => {
            return naming::service_name(namespace, &svc.name, p);
        }
        _ => {}
    }
    match svc.name.rsplit_once(PROVIDER_SEPARATOR) {
        None => naming::normalize(&format!("{namespace}-{}", svc.name)),
        Some((name, PROVIDER)) => naming::normalize(&format!("{namespace}-{name}")),
        Some((name, provider)) => {
            format!("{}{PROVIDER_SEPARATOR}{provider}", naming::normalize(name))
        }
    }
}

/// Traefik's `getServicePort`: the Service port a route names by number or name.
fn service_port(
    ports: &[ServicePort],
    wanted: Option<&IntOrString>,
    external: bool,
) -> Result<ServicePort, String> {
    let wanted = match wanted {
        Some(IntOrString::Int(0)) | None => {
            return Err("the route's service port is not defined".into());
        }
        Some(IntOrString::String(s)) if s.is_empty() => {
            return Err("the route's service port is not defined".into());
        }
        Some(w) => w,
    };
    let found = ports.iter().find(|p| match wanted {
        IntOrString::Int(n) => p.port == *n,
        IntOrString::String(s) => p.name.as_deref() == Some(s.as_str()),
    });
    match (found, wanted) {
        (Some(p), _) => Ok(p.clone()),
        // An ExternalName Service may be reached on any numbered port.
        (None, IntOrString::Int(n)) if external => Ok(ServicePort {
            port: *n,
            ..Default::default()
        }),
        (None, IntOrString::Int(n)) => Err(format!("service port not found: {n}")),
        (None, IntOrString::String(s)) => Err(format!("service port not found: {s}")),
    }
}

/// Traefik's `parseServiceProtocol`.
fn scheme(given: Option<&str>, port_name: &str, port: i32) -> Result<String, Refusal> {
    match given.unwrap_or_default() {
        s @ ("http" | "https" | "h2c") => Ok(s.to_owned()),
        "" if port == 443 || port_name.starts_with("https") => Ok("https".into()),
        "" => Ok("http".into()),
        other => Err(refuse("InvalidSpec", format!("invalid scheme `{other}`"))),
    }
}

fn server(scheme: &str, host: &str, port: i32) -> Server {
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_owned(),
    };
    Server {
        url: format!("{scheme}://{host}:{port}"),
        ..Default::default()
    }
}

impl Cluster {
    /// Reads `---`-separated manifests (fixtures, tests) as if they had been applied: objects
    /// without a namespace land in `default`; kinds this provider does not watch are skipped.
    pub fn from_manifests(text: &str) -> Result<Self, String> {
        use serde::Deserialize;
        let mut cluster = Self::default();
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let at = |e: &dyn std::fmt::Display| format!("document {}: {e}", index + 1);
            let yaml = serde_yaml::Value::deserialize(document).map_err(|e| at(&e))?;
            if yaml.is_null() {
                continue;
            }
            let mut json = serde_json::to_value(yaml).map_err(|e| at(&e))?;
            if let Some(meta) = json.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.entry("namespace")
                    .or_insert_with(|| Value::from("default"));
            }
            let kind = json
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if kind == "Secret" {
                string_data_to_data(&mut json);
            }
            fn parse<T: serde::de::DeserializeOwned>(json: Value) -> Result<Arc<T>, String> {
                serde_path_to_error::deserialize(json)
                    .map(Arc::new)
                    .map_err(|e| format!("{}: {}", e.path(), e.inner()))
            }
            let c = &mut cluster;
            let result = match kind.as_str() {
                "IngressRoute" => parse(json).map(|o| c.ingress_routes.push(o)),
                "Middleware" => parse(json).map(|o| c.middlewares.push(o)),
                "TraefikService" => parse(json).map(|o| c.traefik_services.push(o)),
                "TLSOption" => parse(json).map(|o| c.tls_options.push(o)),
                "TLSStore" => parse(json).map(|o| c.tls_stores.push(o)),
                "ServersTransport" => parse(json).map(|o| c.servers_transports.push(o)),
                "Service" => parse(json).map(|o| c.services.push(o)),
                "EndpointSlice" => parse(json).map(|o| c.endpoint_slices.push(o)),
                "Secret" => parse(json).map(|o| c.secrets.push(o)),
                _ => Ok(()),
            };
            result.map_err(|e| at(&format!("{kind}: {e}")))?;
        }
        Ok(cluster)
    }
}

/// What the API server does with a Secret's write-only `stringData`: merged into `data`
/// (base64), then dropped.
pub fn string_data_to_data(secret: &mut Value) {
    use base64::Engine;
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

fn json_to_yaml(value: Value) -> serde_yaml::Value {
    serde_yaml::to_value(value).unwrap_or(serde_yaml::Value::Null)
}

#[cfg(test)]
mod tests;
