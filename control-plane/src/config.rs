//! The controller's static configuration: Traefik's static names where they exist
//! (`entryPoints`, `providers.*`) plus our `controller.*` section. Loaded once at start; a change
//! needs a restart, as in Traefik.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;

/// Default gRPC listen address of the controller.
pub const DEFAULT_GRPC_ADDRESS: &str = "127.0.0.1:7070";

/// Default debounce when `providers.providersThrottleDuration` is not set (DESIGN: 10–20 ms).
pub const DEFAULT_THROTTLE: Duration = Duration::from_millis(15);

/// The whole static configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticConfig {
    /// `entryPoints.<name>.address`
    #[serde(default, alias = "entrypoints")]
    pub entry_points: BTreeMap<String, EntryPointConfig>,
    #[serde(default)]
    pub providers: ProvidersConfig,
    #[serde(default)]
    pub controller: ControllerConfig,
    /// `certificatesResolvers.<name>`: ACME, run centrally by the controller (`crate::acme`).
    #[serde(default, alias = "certificatesresolvers")]
    pub certificates_resolvers: BTreeMap<String, CertificatesResolverConfig>,
    /// Traefik sections the controller accepts but does not act on yet (`api`, `log`, …).
    #[serde(default)]
    pub api: Option<serde_yaml::Value>,
    #[serde(default)]
    pub log: Option<serde_yaml::Value>,
    #[serde(default, alias = "accesslog")]
    pub access_log: Option<serde_yaml::Value>,
    #[serde(default)]
    pub metrics: Option<serde_yaml::Value>,
    #[serde(default)]
    pub global: Option<serde_yaml::Value>,
}

/// `entryPoints.<name>`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryPointConfig {
    /// `[host]:port` (Traefik also allows a `/tcp` suffix, which we strip).
    pub address: String,
    /// `http.redirections`, …
    #[serde(default)]
    pub http: Option<EntryPointHttp>,
    /// Other entry-point options (`transport`, …) not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

/// `entryPoints.<name>.http`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryPointHttp {
    #[serde(default)]
    pub redirections: Option<Redirections>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

/// `entryPoints.<name>.http.redirections`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirections {
    #[serde(default, alias = "entrypoint")]
    pub entry_point: Option<EntryPointRedirection>,
}

/// `entryPoints.<name>.http.redirections.entryPoint`: every request on this entry point is
/// redirected to the `to` entry point (Traefik defaults: scheme `https`, permanent).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntryPointRedirection {
    pub to: String,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub permanent: Option<bool>,
    /// Accepted for compatibility; the redirection always wins over routers here.
    #[serde(default)]
    pub priority: Option<i64>,
}

/// `providers`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProvidersConfig {
    /// Debounce between a provider change and a compile (Traefik: `2s`; ours: 15 ms when unset).
    #[serde(default, alias = "providersthrottleduration", with = "duration_opt")]
    pub providers_throttle_duration: Option<Duration>,
    #[serde(default)]
    pub file: Option<FileProviderConfig>,
    /// `providers.etcd` (provider name `etcd`).
    #[serde(default)]
    pub etcd: Option<EtcdProviderConfig>,
    /// `providers.consul`: Consul KV (provider name `consul`).
    #[serde(default)]
    pub consul: Option<ConsulKvProviderConfig>,
    /// `providers.consulCatalog` (provider name `consulcatalog`).
    #[serde(default, alias = "consulcatalog")]
    pub consul_catalog: Option<ConsulCatalogProviderConfig>,
    /// `providers.docker` (provider name `docker`).
    #[serde(default)]
    pub docker: Option<DockerProviderConfig>,
    /// `providers.swarm` (provider name `swarm`).
    #[serde(default)]
    pub swarm: Option<SwarmProviderConfig>,
    /// `providers.kubernetesCRD` (provider name `kubernetescrd`).
    #[serde(default, rename = "kubernetesCRD", alias = "kubernetescrd")]
    pub kubernetes_crd: Option<KubernetesCrdProviderConfig>,
}

/// `providers.kubernetesCRD`: Traefik's `traefik.io/v1alpha1` resources from a Kubernetes API
/// server (Traefik's option names and defaults).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesCrdProviderConfig {
    /// API server URL. Unset: the kubeconfig (`KUBECONFIG`, `~/.kube/config`), else the
    /// in-cluster service account.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Bearer token for `endpoint`.
    #[serde(default)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the API server's certificate (with `endpoint`).
    #[serde(default, alias = "certauthfilepath")]
    pub cert_auth_file_path: Option<PathBuf>,
    /// Namespaces to watch. Empty: all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Label selector for the Traefik resources (not for Services, EndpointSlices, Secrets).
    #[serde(default, alias = "labelselector")]
    pub label_selector: Option<String>,
    /// Only IngressRoutes of this class (`spec.ingressClassName`, else the
    /// `kubernetes.io/ingress.class` annotation). Unset: unclassed ones and class `traefik`.
    #[serde(default, alias = "ingressclass")]
    pub ingress_class: Option<String>,
    /// Let resources reference resources of other namespaces. Default `false`.
    #[serde(default, alias = "allowcrossnamespace")]
    pub allow_cross_namespace: bool,
    /// Route to `ExternalName` Services. Default `false`.
    #[serde(default, alias = "allowexternalnameservices")]
    pub allow_external_name_services: bool,
    /// Keep routes whose Service has no serving endpoint (503 instead of 404). Default `false`.
    #[serde(default, alias = "allowemptyservices")]
    pub allow_empty_services: bool,
    /// Minimum time between two configurations sent by this provider. Default `0`.
    #[serde(default, alias = "throttleduration", with = "duration_opt")]
    pub throttle_duration: Option<Duration>,
}

/// `providers.docker`: containers' labels (Traefik's option names and defaults).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DockerProviderConfig {
    /// `unix:///path` or `tcp://host:port` (`https://`/`tcp://` with `tls`). Default
    /// `unix:///var/run/docker.sock`.
    #[serde(default = "default_docker_endpoint")]
    pub endpoint: String,
    /// Containers without `traefik.enable=true` are exposed too. Default `true`.
    #[serde(default = "yes", alias = "exposedbydefault")]
    pub exposed_by_default: bool,
    /// Rule of auto-created routers. Default ``Host(`{{ normalize .Name }}`)``.
    #[serde(default, alias = "defaultrule")]
    pub default_rule: Option<String>,
    /// Boolean expression over `Label("k", "v")` and `LabelRegex("k", "re")`.
    #[serde(default)]
    pub constraints: Option<String>,
    /// Network whose container IP is used (`traefik.docker.network` overrides it).
    #[serde(default)]
    pub network: Option<String>,
    /// Use the host IP and port a container port is published on, when bound to a specific IP.
    #[serde(default, alias = "usebindportip")]
    pub use_bind_port_ip: bool,
    /// Follow the event stream. Default `true`; `false` reads the containers once.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Keep routers of unhealthy containers with an empty load balancer (503, not 404).
    #[serde(default, alias = "allowemptyservices")]
    pub allow_empty_services: bool,
    /// Timeout of each API request (not of the event stream). Default 30 s here (Traefik: none).
    #[serde(default, alias = "httpclienttimeout", with = "duration_opt")]
    pub http_client_timeout: Option<Duration>,
    /// HTTP basic authentication: not supported (start-up error when set).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Client certificate, key and CA for a `tcp://` endpoint (all three required).
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
}

/// `providers.swarm`: Swarm services' labels (`deploy.labels`), read from a manager.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwarmProviderConfig {
    /// As for Docker. Default `unix:///var/run/docker.sock`.
    #[serde(default = "default_docker_endpoint")]
    pub endpoint: String,
    /// Services without `traefik.enable=true` are exposed too. Default `true`.
    #[serde(default = "yes", alias = "exposedbydefault")]
    pub exposed_by_default: bool,
    /// Rule of auto-created routers. Default ``Host(`{{ normalize .Name }}`)``.
    #[serde(default, alias = "defaultrule")]
    pub default_rule: Option<String>,
    /// Boolean expression over the service labels: `Label("k", "v")`, `LabelRegex("k", "re")`.
    #[serde(default)]
    pub constraints: Option<String>,
    /// Network whose task IPs (or VIP) are used (`traefik.swarm.network` overrides it).
    #[serde(default)]
    pub network: Option<String>,
    /// Accepted for compatibility; Swarm tasks have no per-task port bindings to use.
    #[serde(default, alias = "usebindportip")]
    pub use_bind_port_ip: bool,
    /// Poll every `refreshSeconds`. Default `true`; `false` reads the services once.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Keep routers of services without a running task, with an empty load balancer (503).
    #[serde(default, alias = "allowemptyservices")]
    pub allow_empty_services: bool,
    /// Polling period (Swarm has no service events). Default `15s`.
    #[serde(default, alias = "refreshseconds", with = "duration_opt")]
    pub refresh_seconds: Option<Duration>,
    /// Timeout of each API request. Default 30 s here (Traefik: none).
    #[serde(default, alias = "httpclienttimeout", with = "duration_opt")]
    pub http_client_timeout: Option<Duration>,
    /// HTTP basic authentication: not supported (start-up error when set).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Client certificate, key and CA for a `tcp://` endpoint (all three required).
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
}

fn default_docker_endpoint() -> String {
    "unix:///var/run/docker.sock".into()
}

/// `tls` of a KV/Consul provider (Traefik's `ca`, `cert`, `key`, `insecureSkipVerify`): the CA
/// to trust (default: the system bundle), an optional client certificate, or no verification at
/// all (warned). Files are checked at start-up; errors name the option.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsConfig {
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default, alias = "insecureskipverify")]
    pub insecure_skip_verify: bool,
}

/// `providers.etcd`
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdProviderConfig {
    /// etcd v3 endpoints, `host:port` or `http://host:port`; tried in turn. Traefik default:
    /// `127.0.0.1:2379`.
    #[serde(default = "default_etcd_endpoints")]
    pub endpoints: Vec<String>,
    /// Every key below `<rootKey>/` is decoded with Traefik's KV layout. Default `traefik`.
    #[serde(default = "default_root_key", alias = "rootkey")]
    pub root_key: String,
    /// etcd user and password (the provider authenticates and sends the token on every call).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
}

/// `providers.consul` (Consul KV)
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsulKvProviderConfig {
    /// Consul HTTP API addresses, `host:port` or `http://host:port`; tried in turn. Traefik
    /// default: `127.0.0.1:8500`.
    #[serde(default = "default_consul_endpoints")]
    pub endpoints: Vec<String>,
    /// Default `traefik`.
    #[serde(default = "default_root_key", alias = "rootkey")]
    pub root_key: String,
    /// ACL token, sent as `X-Consul-Token`.
    #[serde(default)]
    pub token: Option<String>,
    /// Consul Enterprise namespaces: not supported (start-up error when non-empty).
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
}

/// `providers.consulCatalog`
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsulCatalogProviderConfig {
    #[serde(default)]
    pub endpoint: ConsulEndpointConfig,
    /// Tag prefix; `<prefix>.http.routers…` tags are decoded. Default `traefik`.
    #[serde(default = "default_root_key")]
    pub prefix: String,
    /// Services without `<prefix>.enable=true` are exposed too. Default `true`.
    #[serde(default = "yes", alias = "exposedbydefault")]
    pub exposed_by_default: bool,
    /// Rule of auto-created routers. Default ``Host(`{{ normalize .Name }}`)``.
    #[serde(default, alias = "defaultrule")]
    pub default_rule: Option<String>,
    /// Boolean expression over `Tag("…")` and `TagRegex("…")` selecting services.
    #[serde(default)]
    pub constraints: Option<String>,
    /// Poll period when `watch` is false. Default `15s`.
    #[serde(default, alias = "refreshinterval", with = "duration_opt")]
    pub refresh_interval: Option<Duration>,
    /// Blocking queries instead of polling. Default `true` here (Traefik: `false`), because it is
    /// what makes propagation instant (docs/compatibility.md).
    #[serde(default = "yes")]
    pub watch: bool,
    /// Aggregated check states that keep an instance. Default `passing` and `warning` (Traefik's).
    #[serde(default = "default_strict_checks", alias = "strictchecks")]
    pub strict_checks: Vec<String>,
    /// Query consistency modes (`?consistent`, `?stale`, `?cached`).
    #[serde(default, alias = "requireconsistent")]
    pub require_consistent: bool,
    #[serde(default)]
    pub stale: bool,
    #[serde(default)]
    pub cache: bool,
    /// Consul Connect: not supported (start-up error when true).
    #[serde(default, alias = "connectaware")]
    pub connect_aware: bool,
    #[serde(default, alias = "connectbydefault")]
    pub connect_by_default: bool,
    #[serde(default, alias = "servicename")]
    pub service_name: Option<String>,
    /// Consul Enterprise namespace(s); at most one is supported, sent as `?ns=`.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// `namespace` (Traefik v2 spelling), the same as one entry in `namespaces`.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `providers.consulCatalog.endpoint`
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsulEndpointConfig {
    /// `host:port` or `http://host:port`. Default `127.0.0.1:8500`.
    #[serde(default = "default_consul_address")]
    pub address: String,
    /// `http` (default) or `https` (trusts `tls.ca`, else the system bundle).
    #[serde(default)]
    pub scheme: Option<String>,
    /// `?dc=` on every query.
    #[serde(default)]
    pub datacenter: Option<String>,
    /// ACL token, sent as `X-Consul-Token`.
    #[serde(default)]
    pub token: Option<String>,
    /// The `wait` of blocking queries. Default `5m` (Consul's default; Consul caps it at 10m).
    #[serde(default, alias = "endpointwaittime", with = "duration_opt")]
    pub endpoint_wait_time: Option<Duration>,
    /// HTTP basic authentication.
    #[serde(default, alias = "httpauth")]
    pub http_auth: Option<HttpAuthConfig>,
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
}

impl Default for ConsulEndpointConfig {
    fn default() -> Self {
        Self {
            address: default_consul_address(),
            scheme: None,
            datacenter: None,
            token: None,
            endpoint_wait_time: None,
            http_auth: None,
            tls: None,
        }
    }
}

/// `httpAuth`
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpAuthConfig {
    pub username: String,
    #[serde(default)]
    pub password: String,
}

fn default_etcd_endpoints() -> Vec<String> {
    vec!["127.0.0.1:2379".into()]
}

fn default_consul_endpoints() -> Vec<String> {
    vec![default_consul_address()]
}

fn default_consul_address() -> String {
    "127.0.0.1:8500".into()
}

fn default_root_key() -> String {
    "traefik".into()
}

fn default_strict_checks() -> Vec<String> {
    vec!["passing".into(), "warning".into()]
}

/// `providers.file`
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileProviderConfig {
    #[serde(default)]
    pub directory: Option<PathBuf>,
    #[serde(default)]
    pub filename: Option<PathBuf>,
    /// Traefik default: `true`.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Accepted for compatibility; templates are not rendered (see docs/compatibility.md).
    #[serde(default, alias = "debugloggeneratedtemplate")]
    pub debug_log_generated_template: bool,
}

fn yes() -> bool {
    true
}

/// `controller` (ours).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControllerConfig {
    #[serde(default)]
    pub grpc: GrpcConfig,
    /// The built-in CA that issues short-lived proxy certificates for join tokens (`crate::ca`).
    /// Setting it turns on mutual TLS (with a server certificate issued by this CA unless
    /// `grpc.tls.cert`/`key` are given).
    #[serde(default)]
    pub ca: Option<CaConfig>,
}

/// `controller.grpc`
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcConfig {
    pub address: String,
    /// Mutual TLS with the proxies. Without it (and without `controller.ca`) the channel is
    /// plaintext, which is refused on a non-loopback address unless `insecure` is set.
    #[serde(default)]
    pub tls: Option<GrpcTlsConfig>,
    /// Allow plaintext gRPC on a non-loopback address (warned at start-up). Snapshots carry
    /// private keys: use it only on a network you trust.
    #[serde(default)]
    pub insecure: bool,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_GRPC_ADDRESS.to_owned(),
            tls: None,
            insecure: false,
        }
    }
}

/// `controller.grpc.tls`: the server certificate and the CA(s) proxies' certificates must chain
/// to. A proxy is authorized when its node id equals a DNS name of its certificate (SAN, else
/// CN).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcTlsConfig {
    /// PEM certificate chain (leaf first). Optional with `controller.ca` (then issued by it).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// PEM CA certificate(s) for client certificates. Default: the built-in CA's.
    #[serde(default, alias = "clientca", alias = "clientCa")]
    pub client_ca: Option<PathBuf>,
}

/// `controller.ca`
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaConfig {
    /// Holds `ca.crt`, `ca.key` (0600, created on first start) and `tokens.json` (hashes of
    /// the unused join tokens, written by `switchyard-controller token create`).
    pub dir: PathBuf,
    /// DNS names and IPs of the controller's generated server certificate (proxies verify the
    /// host of their `--controller` URL against it). Default: `localhost`, `127.0.0.1`, `::1`
    /// and the host name.
    #[serde(default, alias = "servernames")]
    pub server_names: Vec<String>,
    /// Lifetime of proxy certificates (renewed by the proxies at two thirds). Default `24h`.
    #[serde(default, alias = "proxycertvalidity", with = "duration_opt")]
    pub proxy_cert_validity: Option<Duration>,
}

/// `certificatesResolvers.<name>`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificatesResolverConfig {
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    /// Not supported (start-up error).
    #[serde(default)]
    pub tailscale: Option<serde_yaml::Value>,
}

/// `certificatesResolvers.<name>.acme` (Traefik's names). The controller orders, stores and
/// renews the certificates; proxies only serve them and answer the challenges.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcmeConfig {
    /// Account contact.
    #[serde(default)]
    pub email: Option<String>,
    /// ACME directory URL. Default: Let's Encrypt production.
    #[serde(default = "default_ca_server", alias = "caserver")]
    pub ca_server: String,
    /// JSON file holding the account and certificates (mode 0600). Default `acme.json`
    /// (unless `storageEtcd` is set; setting both is a start-up error).
    #[serde(default)]
    pub storage: Option<PathBuf>,
    /// Switchyard: keep the account and certificates in etcd instead of a file, shared by every
    /// controller configured with the same endpoints and `rootKey`; an order is made under a
    /// lock held with an etcd lease, so two controllers never order the same certificate.
    #[serde(default, alias = "storageetcd")]
    pub storage_etcd: Option<AcmeEtcdStorageConfig>,
    /// HTTP-01 on the given entry point (must listen on port 80 as seen from the CA).
    #[serde(default, alias = "httpchallenge")]
    pub http_challenge: Option<HttpChallengeConfig>,
    /// TLS-ALPN-01 (`tlsChallenge: {}`) on the TLS entry point reached on port 443.
    #[serde(default, alias = "tlschallenge")]
    pub tls_challenge: Option<serde_yaml::Value>,
    /// Not supported (start-up error).
    #[serde(default, alias = "dnschallenge")]
    pub dns_challenge: Option<serde_yaml::Value>,
    /// PEM files of CAs trusted for `caServer` (besides the system bundle unless it is off).
    #[serde(default, alias = "cacertificates")]
    pub ca_certificates: Vec<PathBuf>,
    /// Also trust the system bundle for `caServer`. Default: only when `caCertificates` is empty.
    #[serde(default, alias = "casystemcertpool")]
    pub ca_system_cert_pool: Option<bool>,
    /// `EC256` (default) or `EC384`; RSA keys are not supported.
    #[serde(default, alias = "keytype")]
    pub key_type: Option<String>,
    /// Expected certificate lifetime in hours (Traefik); picks the renewal window the way
    /// Traefik does when `renewBefore` is not set (90 days → 30 days before expiry).
    #[serde(default, alias = "certificatesduration")]
    pub certificates_duration: Option<u64>,
    /// Switchyard: renew this long before expiry. Default 30 days (see `certificatesDuration`).
    #[serde(default, alias = "renewbefore", with = "duration_opt")]
    pub renew_before: Option<Duration>,
    /// Switchyard: how often certificates are checked for renewal. Default `1h`.
    #[serde(default, alias = "renewcheckinterval", with = "duration_opt")]
    pub renew_check_interval: Option<Duration>,
    /// Other Traefik options (`eab`, `preferredChain`, `profile`, …): a start-up error.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

/// `certificatesResolvers.<name>.acme.storageEtcd`: the options of `providers.etcd`, plus the
/// lock's lease TTL. Keys live under `<rootKey>/<resolver>/` (`account`, `certificates/<domains>`,
/// `locks/<domains>`); they hold private keys, so give the controllers an etcd user (and TLS).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcmeEtcdStorageConfig {
    /// etcd v3 endpoints, `host:port` or `http(s)://host:port`; tried in turn. Default
    /// `127.0.0.1:2379`.
    #[serde(default = "default_etcd_endpoints")]
    pub endpoints: Vec<String>,
    /// Prefix of every key. Default `switchyard/acme`.
    #[serde(default = "default_acme_root_key", alias = "rootkey")]
    pub root_key: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// As `providers.etcd.tls`; with it, endpoints default to `https://`.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// TTL of the lease that holds an order's lock (at least `5s`). A controller that dies while
    /// ordering delays the others by at most this long; one that cannot renew the lease stops
    /// its order. Default `30s`.
    #[serde(default, rename = "lockTTL", alias = "lockttl", with = "duration_opt")]
    pub lock_ttl: Option<Duration>,
}

fn default_acme_root_key() -> String {
    "switchyard/acme".into()
}

/// `certificatesResolvers.<name>.acme.httpChallenge`
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpChallengeConfig {
    #[serde(alias = "entrypoint")]
    pub entry_point: String,
    /// Accepted for compatibility; challenges are answered at once.
    #[serde(default)]
    pub delay: Option<serde_yaml::Value>,
}

fn default_ca_server() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".into()
}

/// A static configuration that cannot be used. Names the file and the reason.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl StaticConfig {
    /// Reads and validates a YAML (`.yml`, `.yaml`) or TOML (`.toml`) file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(path, &text)?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Parses text as YAML or TOML according to the file extension.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let parsed = if is_toml {
            toml::from_str(text).map_err(|e| e.to_string())
        } else if text.trim().is_empty() {
            Ok(StaticConfig::default())
        } else {
            serde_yaml::from_str(text).map_err(|e| e.to_string())
        };
        parsed.map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message: message.trim().to_owned(),
        })
    }

    fn validate(&self) -> Result<(), String> {
        for (name, ep) in &self.entry_points {
            if name.contains('@') {
                return Err(format!("entryPoints.{name}: `@` is not allowed in a name"));
            }
            parse_entry_point_address(&ep.address)
                .map_err(|e| format!("entryPoints.{name}.address: {e}"))?;
            self.entry_point_redirect(name)?;
        }
        self.grpc_address()?;
        if let Some(file) = &self.providers.file {
            match (&file.directory, &file.filename) {
                (Some(_), Some(_)) => {
                    return Err(
                        "providers.file: set either `directory` or `filename`, not both".into(),
                    );
                }
                (None, None) => {
                    return Err("providers.file: `directory` or `filename` is required".into());
                }
                _ => {}
            }
        }
        crate::acme::validate_config(self)?;
        crate::ca::validate_config(self)?;
        crate::provider::kv::validate_config(&self.providers)?;
        crate::provider::consul_catalog::validate_config(&self.providers)?;
        crate::provider::docker::validate_config(&self.providers)?;
        crate::provider::swarm::validate_config(&self.providers)?;
        crate::provider::kubernetes::validate_config(&self.providers)?;
        Ok(())
    }

    /// The compiled redirection of entry point `name`, if it has one.
    pub fn entry_point_redirect(
        &self,
        name: &str,
    ) -> Result<Option<switchyard_shared::snapshot::EntryPointRedirect>, String> {
        let Some(ep) = self.entry_points.get(name) else {
            return Ok(None);
        };
        let Some(r) = ep
            .http
            .as_ref()
            .and_then(|h| h.redirections.as_ref())
            .and_then(|r| r.entry_point.as_ref())
        else {
            return Ok(None);
        };
        // `to` names an entry point, or is a bare port (Traefik accepts `:443`).
        let port = match self.entry_points.get(&r.to) {
            Some(target) => parse_entry_point_address(&target.address)?
                .rsplit_once(':')
                .map(|(_, p)| p.to_owned())
                .unwrap_or_default(),
            None => match r.to.trim_start_matches(':').parse::<u16>() {
                Ok(p) => p.to_string(),
                Err(_) => {
                    return Err(format!(
                        "entryPoints.{name}.http.redirections.entryPoint.to: entry point `{}` does not exist",
                        r.to
                    ));
                }
            },
        };
        Ok(Some(switchyard_shared::snapshot::EntryPointRedirect {
            to: r.to.clone(),
            port,
            scheme: r.scheme.clone().unwrap_or_else(|| "https".to_owned()),
            permanent: r.permanent.unwrap_or(true),
        }))
    }

    /// `controller.grpc.address` as a socket address.
    pub fn grpc_address(&self) -> Result<SocketAddr, String> {
        self.controller.grpc.address.parse().map_err(|e| {
            format!(
                "controller.grpc.address `{}`: {e}",
                self.controller.grpc.address
            )
        })
    }

    /// Debounce to use between provider changes and compiles.
    pub fn throttle(&self) -> Duration {
        self.providers
            .providers_throttle_duration
            .unwrap_or(DEFAULT_THROTTLE)
    }
}

/// Validates `[host]:port[/tcp]` and returns it without the protocol suffix.
pub fn parse_entry_point_address(address: &str) -> Result<String, String> {
    let address = address.trim();
    let bare = match address.rsplit_once('/') {
        Some((a, "tcp")) => a,
        Some((_, proto)) => {
            return Err(format!(
                "`{address}`: protocol `{proto}` is not supported (only tcp)"
            ));
        }
        None => address,
    };
    let (_, port) = bare
        .rsplit_once(':')
        .ok_or_else(|| format!("`{address}` has no port (expected [host]:port)"))?;
    port.parse::<u16>()
        .map_err(|_| format!("`{address}`: `{port}` is not a valid port"))?;
    Ok(bare.to_owned())
}

/// Parses Traefik durations: `10s`, `1m30s`, `250ms`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("`{text}` is not a valid duration"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{text}`: missing unit"))?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a valid duration"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("`{text}`: unknown unit `{unit}`")),
        };
        total += Duration::from_secs_f64(value * scale);
        rest = next;
    }
    Ok(total)
}

mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(u64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Seconds(s)) => Ok(Some(Duration::from_secs(s))),
            Some(Raw::Text(t)) => super::parse_duration(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_static_config_uses_traefik_names() {
        let text = "entryPoints:\n  web:\n    address: ':8000'\nproviders:\n  providersThrottleDuration: 2s\n  file:\n    directory: /tmp/dyn\ncontroller:\n  grpc:\n    address: 127.0.0.1:7171\n";
        let c = StaticConfig::parse(Path::new("s.yml"), text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.entry_points["web"].address, ":8000");
        assert_eq!(c.throttle(), Duration::from_secs(2));
        let file = c.providers.file.unwrap();
        assert!(file.watch);
        assert_eq!(c.controller.grpc.address, "127.0.0.1:7171");
    }

    #[test]
    fn toml_static_config() {
        let text = "[entryPoints.web]\naddress = \":8000\"\n[providers.file]\nfilename = \"/tmp/x.toml\"\nwatch = false\n";
        let c = StaticConfig::parse(Path::new("s.toml"), text).unwrap();
        c.validate().unwrap();
        assert!(!c.providers.file.as_ref().unwrap().watch);
        assert_eq!(c.grpc_address().unwrap().to_string(), DEFAULT_GRPC_ADDRESS);
    }

    #[test]
    fn bad_entry_point_names_the_key() {
        let text = "entryPoints:\n  web:\n    address: 'nope'\n";
        let c = StaticConfig::parse(Path::new("s.yml"), text).unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.contains("entryPoints.web.address"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error_with_location() {
        let text = "providers:\n  fiel:\n    directory: x\n";
        let err = StaticConfig::parse(Path::new("s.yml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.yml") && err.contains("fiel"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("2x").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn entry_point_address_forms() {
        assert_eq!(parse_entry_point_address(":80").unwrap(), ":80");
        assert_eq!(parse_entry_point_address(":80/tcp").unwrap(), ":80");
        assert_eq!(
            parse_entry_point_address("[::1]:8443").unwrap(),
            "[::1]:8443"
        );
        assert!(parse_entry_point_address(":80/udp").is_err());
        assert!(parse_entry_point_address("host").is_err());
    }
}
