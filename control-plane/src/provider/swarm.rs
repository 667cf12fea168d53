//! The Docker Swarm provider (`providers.swarm`, provider name `swarm`): Swarm *services* whose
//! labels (`deploy.labels` in Compose, never container labels) say so become routers, services
//! and middlewares, with Traefik's label grammar (`provider/labels.rs`) and the selection rules
//! the Docker provider uses (`docker/model.rs`: `traefik.enable`, `exposedByDefault`,
//! `constraints`).
//!
//! Swarm has no service event stream, so the provider polls a manager every `refreshSeconds`
//! (15 s): `GET /services`, `GET /tasks?desired-state=running`, `GET /networks`, and for each
//! network in use `GET /networks/<id>?verbose=true&scope=swarm` (the network's service records,
//! which hold every task's address on it). Per service:
//! - the network is `traefik.swarm.network`, else the provider's `network`, else the first of
//!   the service's networks by name (the ingress network last);
//! - with `traefik.swarm.lbswarm=true` and endpoint mode VIP, one server: the service's virtual
//!   IP on that network (Swarm's IPVS balances); otherwise one server per task whose desired
//!   and actual state are `running`, at its address on that network (a task without one is
//!   skipped) — all merged into the service `normalize(<service name>)`;
//! - `loadbalancer.server.port` is required (Swarm publishes no container ports to detect).
//!
//! Failure handling is the Docker provider's: an outage keeps the last good configuration,
//! reports the status and retries with backoff; a bad label costs only its service.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use bollard::{
    Docker,
    models::{EndpointSpecModeEnum, Service, TaskState},
    query_parameters::{InspectNetworkOptions, ListTasksOptions},
};
use switchyard_shared::backoff::Backoff;
use tokio::sync::watch;

use super::{
    Provider, ProviderSink, ProviderTask,
    docker::{
        self, Reporter,
        client::{ClientError, Endpoint},
        model::{self, Settings},
    },
    labels::{self, Instance},
};
use crate::{
    compile::Diagnostic,
    config::{ProvidersConfig, SwarmProviderConfig},
    dynamic::DynamicConfig,
};

/// The provider name (`name@swarm`).
pub const NAME: &str = "swarm";

/// Traefik's `refreshSeconds` default.
const DEFAULT_REFRESH: Duration = Duration::from_secs(15);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Checks `providers.swarm` at start-up; the message names the option.
pub fn validate_config(providers: &ProvidersConfig) -> Result<(), String> {
    match &providers.swarm {
        Some(config) => SwarmProvider::from_config(config).map(|_| ()),
        None => Ok(()),
    }
}

/// The Swarm provider.
#[derive(Debug)]
pub struct SwarmProvider {
    endpoint: Endpoint,
    settings: Settings,
    watch: bool,
    refresh: Duration,
}

impl SwarmProvider {
    /// Builds the provider; the error names the bad option.
    pub fn from_config(config: &SwarmProviderConfig) -> Result<Self, String> {
        const OPTION: &str = "providers.swarm";
        if config.username.is_some() || config.password.is_some() {
            return Err(format!(
                "{OPTION}.username/password: HTTP basic authentication to the Docker daemon is \
                 not supported (see docs/compatibility.md)"
            ));
        }
        let refresh = config.refresh_seconds.unwrap_or(DEFAULT_REFRESH);
        if refresh.is_zero() {
            return Err(format!("{OPTION}.refreshSeconds must be positive"));
        }
        Ok(Self {
            endpoint: Endpoint::parse(
                &config.endpoint,
                config.tls.as_ref(),
                config.http_client_timeout,
                OPTION,
            )?,
            settings: docker::settings(
                OPTION,
                config.exposed_by_default,
                config.default_rule.as_deref(),
                config.constraints.as_deref(),
                config.network.as_deref(),
                config.use_bind_port_ip,
                config.allow_empty_services,
            )?,
            watch: config.watch,
            refresh,
        })
    }
}

impl Provider for SwarmProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(self: Box<Self>, sink: ProviderSink, shutdown: watch::Receiver<bool>) -> ProviderTask {
        Box::pin(run(*self, sink, shutdown))
    }
}

async fn run(provider: SwarmProvider, sink: ProviderSink, mut shutdown: watch::Receiver<bool>) {
    let mut reporter = Reporter::default();
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
    let mut client: Option<Docker> = None;
    loop {
        let refreshed = tokio::select! {
            _ = shutdown.changed() => return,
            r = async {
                let docker = match client.take() {
                    Some(docker) => docker,
                    None => provider.endpoint.connect().await?,
                };
                let built = refresh(&docker, provider.endpoint.url(), &provider.settings).await?;
                Ok::<_, ClientError>((docker, built))
            } => r,
        };
        let delay = match refreshed {
            Ok((docker, built)) => {
                client = Some(docker);
                backoff.reset();
                if !reporter.report(&sink, built).await {
                    return;
                }
                if !provider.watch {
                    let _ = shutdown.changed().await;
                    return;
                }
                provider.refresh
            }
            Err(error) => {
                let message = format!(
                    "{error}; keeping the last good configuration and retrying with backoff"
                );
                if !reporter.error(&sink, message).await {
                    return;
                }
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One Swarm service as the pure builder sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmService {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Endpoint mode VIP (else DNSRR).
    pub vip_mode: bool,
    /// The virtual IP on the chosen network (VIP mode only).
    pub vip: Option<String>,
    /// Running tasks: `(<service>.<slot> or <service>.<task id>, address on the chosen network)`.
    pub tasks: Vec<(String, Option<String>)>,
    /// The chosen network's name, for messages.
    pub network: Option<String>,
}

/// Lists services, tasks and networks and builds the provider's configuration.
async fn refresh(
    docker: &Docker,
    endpoint: &str,
    settings: &Settings,
) -> Result<(DynamicConfig, Vec<Diagnostic>), ClientError> {
    let api = |what: &str| {
        let what = what.to_owned();
        let endpoint = endpoint.to_owned();
        move |source| ClientError::Api {
            endpoint,
            what,
            source,
        }
    };
    let services = docker
        .list_services(None)
        .await
        .map_err(api("GET /services"))?;
    let tasks = docker
        .list_tasks(Some(ListTasksOptions {
            filters: Some(HashMap::from([(
                "desired-state".to_owned(),
                vec!["running".to_owned()],
            )])),
        }))
        .await
        .map_err(api("GET /tasks"))?;
    let networks = docker
        .list_networks(None)
        .await
        .map_err(api("GET /networks"))?;
    let mut names_by_id = BTreeMap::new();
    let mut ingress = Vec::new();
    for network in networks {
        if let (Some(id), Some(name)) = (network.id, network.name) {
            if network.ingress == Some(true) {
                ingress.push(name.clone());
            }
            names_by_id.insert(id, name);
        }
    }
    let id_of = |name: &str| {
        names_by_id
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| id.clone())
    };
    // Task addresses per network id: task id → IP (fetched once per network).
    let mut task_ips: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut built = Vec::new();
    for service in services {
        let Some(Described {
            id,
            name: spec_name,
            labels,
            attached,
            vips,
            vip_mode,
        }) = describe(&service)
        else {
            continue;
        };
        // The service's networks by name (targets may be given by id or by name).
        let mut candidates: Vec<String> = attached
            .iter()
            .chain(vips.keys())
            .filter_map(|target| {
                names_by_id
                    .get(target)
                    .cloned()
                    .or_else(|| id_of(target).map(|_| target.clone()))
            })
            .collect();
        candidates.sort_by_key(|n| (ingress.contains(n), n.clone()));
        candidates.dedup();
        let network_label = format!("traefik.{NAME}.network");
        let wanted = model::label(&labels, &network_label).or(settings.network.as_deref());
        let chosen = match wanted {
            Some(w) if candidates.iter().any(|c| c == w) => Some(w.to_owned()),
            _ => candidates.first().cloned(),
        };
        let chosen_id = chosen.as_deref().and_then(id_of);
        let vip = chosen_id
            .as_ref()
            .and_then(|id| vips.get(id))
            .map(|addr| addr.split('/').next().unwrap_or_default().to_owned())
            .filter(|a| !a.is_empty());
        let mut running = Vec::new();
        for task in tasks
            .iter()
            .filter(|t| t.service_id.as_deref() == Some(&id))
        {
            let state = task.status.as_ref().and_then(|s| s.state);
            if task.desired_state != Some(TaskState::RUNNING) || state != Some(TaskState::RUNNING) {
                continue;
            }
            let task_id = task.id.clone().unwrap_or_default();
            let key = match task.slot {
                Some(slot) if slot > 0 => format!("{spec_name}.{slot}"),
                _ => format!("{spec_name}.{task_id}"),
            };
            let ip = match &chosen_id {
                Some(network_id) => {
                    if !task_ips.contains_key(network_id) {
                        let ips = network_task_ips(docker, endpoint, network_id).await?;
                        task_ips.insert(network_id.clone(), ips);
                    }
                    task_ips
                        .get(network_id)
                        .and_then(|ips| ips.get(&task_id))
                        .cloned()
                }
                None => None,
            };
            running.push((key, ip));
        }
        running.sort();
        built.push(SwarmService {
            name: spec_name,
            labels,
            vip_mode,
            vip,
            tasks: running,
            network: chosen,
        });
    }
    Ok(build(settings, &built))
}

/// What the provider reads from one `GET /services` entry.
struct Described {
    id: String,
    name: String,
    labels: BTreeMap<String, String>,
    /// Network targets of the task template (ids or names).
    attached: Vec<String>,
    /// Virtual IPs (`10.0.1.2/24`) by network id.
    vips: BTreeMap<String, String>,
    /// Endpoint mode VIP (else DNSRR).
    vip_mode: bool,
}

/// `None` for a service without a name or id.
fn describe(service: &Service) -> Option<Described> {
    let id = service.id.clone()?;
    let spec = service.spec.as_ref()?;
    let name = spec.name.clone()?;
    let labels = spec
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let attached = spec
        .task_template
        .as_ref()
        .and_then(|t| t.networks.as_ref())
        .or(spec.networks.as_ref())
        .map(|nets| nets.iter().filter_map(|n| n.target.clone()).collect())
        .unwrap_or_default();
    let endpoint = service.endpoint.as_ref();
    let vips = endpoint
        .and_then(|e| e.virtual_ips.as_ref())
        .map(|vips| {
            vips.iter()
                .filter_map(|v| Some((v.network_id.clone()?, v.addr.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    let mode = endpoint
        .and_then(|e| e.spec.as_ref())
        .or(spec.endpoint_spec.as_ref())
        .and_then(|s| s.mode);
    Some(Described {
        id,
        name,
        labels,
        attached,
        vips,
        vip_mode: !matches!(mode, Some(EndpointSpecModeEnum::DNSRR)),
    })
}

/// Every task's address on a Swarm-scoped network, by task id (the verbose network inspection
/// lists tasks as `<service>.<slot>.<task id>` with their endpoint IP).
async fn network_task_ips(
    docker: &Docker,
    endpoint: &str,
    network_id: &str,
) -> Result<BTreeMap<String, String>, ClientError> {
    let inspected = match docker
        .inspect_network(
            network_id,
            Some(InspectNetworkOptions {
                verbose: true,
                scope: Some("swarm".to_owned()),
            }),
        )
        .await
    {
        Ok(inspected) => inspected,
        // A network removed since the listing: no addresses.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(ClientError::Api {
                endpoint: endpoint.to_owned(),
                what: format!("GET /networks/{network_id}?verbose=true"),
                source,
            });
        }
    };
    let mut out = BTreeMap::new();
    for service in inspected.services.unwrap_or_default().into_values() {
        let Some(tasks) = service.get("Tasks").and_then(|t| t.as_array()) else {
            continue;
        };
        for task in tasks {
            let name = task
                .get("Name")
                .and_then(|n| n.as_str())
                .unwrap_or_default();
            let ip = task
                .get("EndpointIP")
                .and_then(|n| n.as_str())
                .unwrap_or_default();
            if let Some((_, task_id)) = name.rsplit_once('.')
                && !ip.is_empty()
            {
                out.insert(task_id.to_owned(), ip.to_owned());
            }
        }
    }
    Ok(out)
}

/// Builds the provider's configuration from every service (pure).
pub fn build(settings: &Settings, services: &[SwarmService]) -> (DynamicConfig, Vec<Diagnostic>) {
    let mut sorted: Vec<&SwarmService> = services.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut configs = Vec::new();
    let mut diags = Vec::new();
    for service in sorted {
        match service_configs(settings, service) {
            Ok((instances, warnings)) => {
                configs.extend(instances);
                diags.extend(warnings);
            }
            Err(reason) => diags.push(Diagnostic::error(
                NAME,
                format!("swarm-service/{}", service.name),
                format!("Swarm service `{}` is left out: {reason}", service.name),
            )),
        }
    }
    let (config, merge_diags) = labels::merge(NAME, configs);
    diags.extend(merge_diags);
    (config, diags)
}

/// Per-instance configurations, keyed for the merge (`<service>.<slot>`).
type Instances = Vec<(String, DynamicConfig)>;

/// The per-instance configurations of one service.
fn service_configs(
    settings: &Settings,
    service: &SwarmService,
) -> Result<(Instances, Vec<Diagnostic>), String> {
    if !model::selected(settings, &service.labels)? {
        return Ok((Vec::new(), Vec::new()));
    }
    let lb_swarm = lb_swarm(&service.labels)?;
    let name = labels::normalize(&service.name);
    let instance = |address| Instance {
        name: &name,
        address,
        port: None,
        labels: &service.labels,
    };
    let mut warnings = Vec::new();
    let mut addresses: Vec<(String, String)> = Vec::new();
    if lb_swarm && service.vip_mode {
        match &service.vip {
            Some(vip) => addresses.push((service.name.clone(), vip.clone())),
            None => warnings.push(Diagnostic::warning(
                NAME,
                format!("swarm-service/{}", service.name),
                format!(
                    "Swarm service `{}` has no virtual IP on network `{}`; it has no server",
                    service.name,
                    service.network.as_deref().unwrap_or("(none)")
                ),
            )),
        }
    } else {
        if lb_swarm {
            warnings.push(Diagnostic::warning(
                NAME,
                format!("swarm-service/{}", service.name),
                format!(
                    "Swarm service `{}` uses endpoint mode dnsrr; traefik.swarm.lbswarm is \
                     ignored and its tasks are used",
                    service.name
                ),
            ));
        }
        for (key, ip) in &service.tasks {
            match ip {
                Some(ip) => addresses.push((key.clone(), ip.clone())),
                None => warnings.push(Diagnostic::warning(
                    NAME,
                    format!("swarm-service/{}", service.name),
                    format!(
                        "task `{key}` has no address on network `{}`; it is skipped",
                        service.network.as_deref().unwrap_or("(none)")
                    ),
                )),
            }
        }
    }
    let mut configs = Vec::new();
    for (key, address) in &addresses {
        let (config, w) =
            labels::build_instance(NAME, &instance(address.as_str()), &settings.default_rule)
                .map_err(|e| e.to_string())?;
        configs.push((key.clone(), config));
        warnings.extend(w);
    }
    if configs.is_empty() {
        // Decode anyway so a bad label is reported even while the service has no task.
        let (mut config, w) =
            labels::build_instance(NAME, &instance("0.0.0.0"), &settings.default_rule)
                .map_err(|e| e.to_string())?;
        if settings.allow_empty_services {
            if let Some(http) = config.http.as_mut() {
                for s in http.services.values_mut() {
                    if let Some(lb) = s.load_balancer.as_mut() {
                        lb.servers.clear();
                    }
                }
            }
            configs.push((service.name.clone(), config));
            warnings.extend(w);
        }
    }
    Ok((configs, warnings))
}

/// `traefik.swarm.lbswarm` (or the deprecated `traefik.docker.lbswarm`; both at once is an
/// error, as in Traefik).
fn lb_swarm(labels: &BTreeMap<String, String>) -> Result<bool, String> {
    let current = model::label(labels, "traefik.swarm.lbswarm");
    let deprecated = model::label(labels, "traefik.docker.lbswarm");
    let (key, value) = match (current, deprecated) {
        (Some(_), Some(_)) => {
            return Err(
                "labels `traefik.swarm.lbswarm` and `traefik.docker.lbswarm` cannot both be set"
                    .into(),
            );
        }
        (Some(v), None) => ("traefik.swarm.lbswarm", v),
        (None, Some(v)) => ("traefik.docker.lbswarm", v),
        (None, None) => return Ok(false),
    };
    model::parse_bool(value)
        .ok_or_else(|| format!("label `{key}`: `{value}` is not a boolean (true or false)"))
}

#[cfg(test)]
mod tests;
