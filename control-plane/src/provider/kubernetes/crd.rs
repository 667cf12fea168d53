//! The Traefik custom resources of group `traefik.io/v1alpha1` that the provider watches, with
//! the field names of Traefik's CRDs (`docs/content/reference/dynamic-configuration/traefik.io_*`).
//!
//! Objects are read from the API server as [`Object`]s whose `spec` stays raw JSON: one
//! malformed resource must not fail the list of its whole kind, so each spec is decoded on its
//! own by [`Object::decode`] and a bad one costs only itself (reported with the JSON path).
//! The typed specs keep unknown fields out of their decoders' way (the API server prunes fields
//! its CRD schema does not know, and newer Traefik fields must not break us); the manifest tests
//! check strictness separately.

use std::{borrow::Cow, fmt, marker::PhantomData};

use k8s_openapi::apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString};
use kube::core::{NamespaceResourceScope, Resource};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

/// The API group of Traefik's resources.
pub const GROUP: &str = "traefik.io";
/// Their version.
pub const VERSION: &str = "v1alpha1";

/// One kind of Traefik resource: its name, its plural (the URL segment) and its spec.
pub trait TraefikKind: Clone + fmt::Debug + Send + Sync + 'static {
    const KIND: &'static str;
    const PLURAL: &'static str;
    type Spec: DeserializeOwned + Serialize + Default + fmt::Debug;
}

/// A Traefik resource as the API server returns it; `spec` is decoded on demand.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(bound = "")]
pub struct Object<K: TraefikKind> {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Value,
    #[serde(skip)]
    kind: PhantomData<K>,
}

impl<K: TraefikKind> Object<K> {
    /// A resource from its metadata and raw spec (tests, fixtures).
    pub fn new(metadata: ObjectMeta, spec: Value) -> Self {
        Self {
            metadata,
            spec,
            kind: PhantomData,
        }
    }

    /// `metadata.namespace` (empty when unset).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or_default()
    }

    /// `metadata.name`, else `metadata.generateName` (as Traefik).
    pub fn name(&self) -> &str {
        self.metadata
            .name
            .as_deref()
            .or(self.metadata.generate_name.as_deref())
            .unwrap_or_default()
    }

    /// Decodes the spec; the error names the JSON path of the bad field.
    pub fn decode(&self) -> Result<K::Spec, String> {
        if self.spec.is_null() {
            return Ok(K::Spec::default());
        }
        serde_path_to_error::deserialize(&self.spec).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                format!("spec: {}", e.inner())
            } else {
                format!("spec.{path}: {}", e.inner())
            }
        })
    }
}

impl<K: TraefikKind> Resource for Object<K> {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(K::KIND)
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(GROUP)
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(VERSION)
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(K::PLURAL)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

macro_rules! kind {
    ($(#[$doc:meta])* $marker:ident, $kind:literal, $plural:literal, $spec:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default)]
        pub struct $marker;
        impl TraefikKind for $marker {
            const KIND: &'static str = $kind;
            const PLURAL: &'static str = $plural;
            type Spec = $spec;
        }
    };
}

kind!(
    /// `IngressRoute`: HTTP routes.
    IngressRouteKind, "IngressRoute", "ingressroutes", IngressRouteSpec
);
kind!(
    /// `Middleware`: one HTTP middleware.
    MiddlewareKind, "Middleware", "middlewares", MiddlewareSpec
);
kind!(
    /// `TraefikService`: weighted (and other) services.
    TraefikServiceKind, "TraefikService", "traefikservices", TraefikServiceSpec
);
kind!(
    /// `TLSOption`: TLS options.
    TlsOptionKind, "TLSOption", "tlsoptions", TlsOptionSpec
);
kind!(
    /// `TLSStore`: certificate stores (only `default` is used).
    TlsStoreKind, "TLSStore", "tlsstores", TlsStoreSpec
);
kind!(
    /// `ServersTransport`: how to reach backends.
    ServersTransportKind, "ServersTransport", "serverstransports", ServersTransportSpec
);

pub type IngressRoute = Object<IngressRouteKind>;
pub type Middleware = Object<MiddlewareKind>;
pub type TraefikService = Object<TraefikServiceKind>;
pub type TlsOption = Object<TlsOptionKind>;
pub type TlsStore = Object<TlsStoreKind>;
pub type ServersTransport = Object<ServersTransportKind>;

/// `IngressRoute.spec`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRouteSpec {
    /// Overrides the `kubernetes.io/ingress.class` annotation (Traefik v3.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_points: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<IngressRouteTls>,
    /// Parent IngressRoutes (Traefik v3.6 multi-layer routing): not supported, reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ObjectRef>,
}

/// `IngressRoute.spec.routes[]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    #[serde(default, rename = "match")]
    pub rule: String,
    /// Only `Rule` exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syntax: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub middlewares: Vec<ObjectRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceRef>,
    /// Access logs/metrics/tracing switches: accepted, not acted on by the proxies yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<Value>,
}

/// A `{name, namespace}` reference.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A backend reference (Traefik's `LoadBalancerSpec`, plus `weight`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `Service` (default) or `TraefikService`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Port number or name of the Kubernetes Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_host_header: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers_transport: Option<String>,
    #[serde(default, rename = "nativeLB", skip_serializing_if = "Option::is_none")]
    pub native_lb: Option<bool>,
    #[serde(
        default,
        rename = "nodePortLB",
        skip_serializing_if = "Option::is_none"
    )]
    pub node_port_lb: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_forwarding: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_health_check: Option<Value>,
    /// Service middlewares (Traefik v3.7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub middlewares: Vec<ObjectRef>,
}

/// `IngressRoute.spec.tls`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRouteTls {
    /// A `kubernetes.io/tls` Secret in the IngressRoute's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_resolver: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<crate::dynamic::Domain>,
}

/// `Middleware.spec`: the middleware types of Traefik's dynamic configuration, one per object.
/// `chain` names its members by `{name, namespace}`; everything else is handed to the compiler
/// as written (which reports the types Switchyard does not implement).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MiddlewareSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainSpec>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// `Middleware.spec.chain`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainSpec {
    #[serde(default)]
    pub middlewares: Vec<ObjectRef>,
}

/// `TraefikService.spec`: exactly one of the kinds.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraefikServiceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted: Option<WeightedSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirroring: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest_random_weight: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Value>,
}

/// `TraefikService.spec.weighted`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedSpec {
    #[serde(default)]
    pub services: Vec<ServiceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Value>,
}

/// `TLSOption.spec`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsOptionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve_preferences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni_strict: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn_protocols: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_session_tickets: Option<bool>,
}

/// `TLSOption.spec.clientAuth`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuthSpec {
    /// Secrets holding the CA (`tls.ca` or `ca.crt`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth_type: Option<String>,
}

/// `TLSStore.spec`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsStoreSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_certificate: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_generated_cert: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<SecretRef>,
}

/// `{secretName}`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[serde(default)]
    pub secret_name: String,
}

/// `ServersTransport.spec`: Traefik's `serversTransports` with Secrets for certificates.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServersTransportSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    #[serde(
        default,
        rename = "rootCAsSecrets",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub root_cas_secrets: Vec<String>,
    #[serde(default, rename = "rootCAs", skip_serializing_if = "Vec::is_empty")]
    pub root_cas: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates_secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_conns_per_host: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding_timeouts: Option<Value>,
    #[serde(
        default,
        rename = "disableHTTP2",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_http2: Option<bool>,
    #[serde(
        default,
        rename = "peerCertURI",
        skip_serializing_if = "Option::is_none"
    )]
    pub peer_cert_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe: Option<Value>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_bad_spec_names_its_path() {
        let route = IngressRoute::new(
            ObjectMeta::default(),
            json!({"routes": [{"match": "Path(`/`)", "priority": "high"}]}),
        );
        let err = route.decode().unwrap_err();
        assert!(err.starts_with("spec.routes[0].priority:"), "{err}");
    }

    #[test]
    fn url_path_is_the_traefik_group() {
        assert_eq!(
            IngressRoute::url_path(&(), Some("apps")),
            "/apis/traefik.io/v1alpha1/namespaces/apps/ingressroutes"
        );
    }
}
