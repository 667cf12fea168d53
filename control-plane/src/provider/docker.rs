//! The Docker provider (`providers.docker`, provider name `docker`): every running container
//! whose labels say so becomes routers, services and middlewares, with Traefik's label grammar
//! (`provider/labels.rs`) and Docker conventions (`docker/model.rs`).
//!
//! Lifecycle: connect to `endpoint` and negotiate the API version (`docker/client.rs`) → note the
//! daemon's clock → list and inspect the running containers → send the complete configuration →
//! follow the event stream from the noted time (so nothing between the listing and the
//! subscription is missed): a container or network event that can change routing (start, die,
//! stop, destroy, health status, rename, pause, connect, …) triggers a new listing after a short
//! quiet period that coalesces bursts. No polling while events flow.
//!
//! Failure: the daemon unreachable, an API error or the event stream ending → the status is
//! reported (`GetVersion.providers`, and the log), the last good configuration stays, and the
//! provider reconnects with full-jitter exponential backoff; once back it lists everything again
//! (resync). A container that vanishes between listing and inspection is skipped. A container
//! whose labels cannot be decoded costs only itself (a diagnostic names it, the label and the
//! reason).

pub mod client;
pub mod constraints;
pub mod model;

#[cfg(test)]
mod tests;

use std::{collections::HashMap, time::Duration};

use bollard::{
    Docker,
    models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum},
    query_parameters::{EventsOptions, ListContainersOptions},
};
use switchyard_shared::backoff::Backoff;
use tokio::{sync::watch, time::Instant};
use tokio_stream::StreamExt;

use self::{
    client::{ClientError, Endpoint},
    constraints::Constraint,
    model::{Binding, Container, Endpoint as NetworkEndpoint, Settings},
};
use super::{Provider, ProviderSink, ProviderTask, labels::DefaultRule};
use crate::{
    compile::Diagnostic,
    config::{DockerProviderConfig, ProvidersConfig},
    dynamic::DynamicConfig,
};

/// The provider name (`name@docker`).
pub const NAME: &str = "docker";

/// Reconnection backoff (full jitter), reset after a successful listing.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Events arriving within this window after the first one are answered by one listing.
const EVENT_QUIET: Duration = Duration::from_millis(100);

/// The options the Docker and Swarm providers share, checked; `option` names the section in
/// messages (`providers.docker`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn settings(
    option: &str,
    exposed_by_default: bool,
    default_rule: Option<&str>,
    constraints: Option<&str>,
    network: Option<&str>,
    use_bind_port_ip: bool,
    allow_empty_services: bool,
) -> Result<Settings, String> {
    let default_rule = match default_rule {
        Some(rule) => DefaultRule::parse(rule).map_err(|e| format!("{option}.defaultRule: {e}"))?,
        None => DefaultRule::default(),
    };
    let constraint = constraints
        .filter(|c| !c.trim().is_empty())
        .map(Constraint::parse)
        .transpose()
        .map_err(|e| format!("{option}.{e}"))?;
    Ok(Settings {
        exposed_by_default,
        constraint,
        default_rule,
        network: network.filter(|n| !n.is_empty()).map(str::to_owned),
        use_bind_port_ip,
        allow_empty_services,
    })
}

/// Checks `providers.docker` at start-up; the message names the option.
pub fn validate_config(providers: &ProvidersConfig) -> Result<(), String> {
    match &providers.docker {
        Some(config) => DockerProvider::from_config(config).map(|_| ()),
        None => Ok(()),
    }
}

/// The Docker provider.
#[derive(Debug)]
pub struct DockerProvider {
    endpoint: Endpoint,
    settings: Settings,
    watch: bool,
}

impl DockerProvider {
    /// Builds the provider; the error names the bad option.
    pub fn from_config(config: &DockerProviderConfig) -> Result<Self, String> {
        const OPTION: &str = "providers.docker";
        if config.username.is_some() || config.password.is_some() {
            return Err(format!(
                "{OPTION}.username/password: HTTP basic authentication to the Docker daemon is \
                 not supported (see docs/compatibility.md)"
            ));
        }
        Ok(Self {
            endpoint: Endpoint::parse(
                &config.endpoint,
                config.tls.as_ref(),
                config.http_client_timeout,
                OPTION,
            )?,
            settings: settings(
                OPTION,
                config.exposed_by_default,
                config.default_rule.as_deref(),
                config.constraints.as_deref(),
                config.network.as_deref(),
                config.use_bind_port_ip,
                config.allow_empty_services,
            )?,
            watch: config.watch,
        })
    }
}

impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(self: Box<Self>, sink: ProviderSink, shutdown: watch::Receiver<bool>) -> ProviderTask {
        Box::pin(run(*self, sink, shutdown))
    }
}

/// Sends what changed to the aggregator: a configuration (with its diagnostics) only when it
/// differs from the last one sent — a new bad label changes the diagnostics even when the
/// configuration stays the same — or after an error, so the status turns healthy again.
#[derive(Debug, Default)]
pub(crate) struct Reporter {
    sent: Option<(DynamicConfig, Vec<Diagnostic>)>,
    /// The error reported last, while the source is failing.
    error: Option<String>,
}

impl Reporter {
    /// Returns false when the aggregator is gone.
    pub(crate) async fn report(
        &mut self,
        sink: &ProviderSink,
        (config, diagnostics): (DynamicConfig, Vec<Diagnostic>),
    ) -> bool {
        let current = (config, diagnostics);
        if self.error.is_none() && self.sent.as_ref() == Some(&current) {
            return true;
        }
        self.error = None;
        self.sent = Some(current.clone());
        sink.update(current.0, current.1).await
    }

    /// Reports an outage; the last good configuration stays. The same error again (a retry
    /// that failed the same way) is only logged at debug level. Returns false when the
    /// aggregator is gone.
    pub(crate) async fn error(&mut self, sink: &ProviderSink, error: String) -> bool {
        if self.error.as_ref() == Some(&error) {
            tracing::debug!(provider = %sink.name(), %error, "still failing");
            return true;
        }
        self.error = Some(error.clone());
        sink.error(error).await
    }
}

/// Why a session with the daemon ended without an error.
enum Ended {
    /// The aggregator is gone (shutdown).
    AggregatorGone,
}

async fn run(provider: DockerProvider, sink: ProviderSink, mut shutdown: watch::Receiver<bool>) {
    let mut reporter = Reporter::default();
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
    loop {
        let outcome = tokio::select! {
            _ = shutdown.changed() => return,
            outcome = session(&provider, &sink, &mut reporter, &mut backoff) => outcome,
        };
        match outcome {
            Ok(Ended::AggregatorGone) => return,
            Err(error) => {
                let message = format!(
                    "{error}; keeping the last good configuration and retrying with backoff"
                );
                if !reporter.error(&sink, message).await {
                    return;
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection to the daemon: list, report, then follow events until something fails.
async fn session(
    provider: &DockerProvider,
    sink: &ProviderSink,
    reporter: &mut Reporter,
    backoff: &mut Backoff,
) -> Result<Ended, ClientError> {
    let endpoint = provider.endpoint.url();
    let docker = provider.endpoint.connect().await?;
    let since = daemon_time(&docker, endpoint).await?;
    let config = refresh(&docker, endpoint, &provider.settings).await?;
    backoff.reset();
    if !reporter.report(sink, config).await {
        return Ok(Ended::AggregatorGone);
    }
    if !provider.watch {
        // Traefik reads once when `watch` is off; the task lives on until shutdown.
        std::future::pending::<()>().await;
    }
    let filters = HashMap::from([(
        "type".to_owned(),
        vec!["container".to_owned(), "network".to_owned()],
    )]);
    let mut events = docker.events(Some(EventsOptions {
        since,
        until: None,
        filters: Some(filters),
    }));
    let api_error = |source| ClientError::Api {
        endpoint: endpoint.to_owned(),
        what: "event stream".into(),
        source,
    };
    let ended = || ClientError::EventsEnded {
        endpoint: endpoint.to_owned(),
    };
    loop {
        let event = events.next().await.ok_or_else(ended)?.map_err(api_error)?;
        if !changes_routing(&event) {
            continue;
        }
        tracing::debug!(provider = NAME, action = ?event.action, "Docker event");
        // Coalesce a burst (a Compose project starting, a scale-up) into one listing.
        let quiet_until = Instant::now() + EVENT_QUIET;
        while let Ok(next) = tokio::time::timeout_at(quiet_until, events.next()).await {
            next.ok_or_else(ended)?.map_err(api_error)?;
        }
        let config = refresh(&docker, endpoint, &provider.settings).await?;
        if !reporter.report(sink, config).await {
            return Ok(Ended::AggregatorGone);
        }
    }
}

/// Whether an event can change what we route (the events we do not list — exec, attach,
/// resize, top… — cannot).
fn changes_routing(event: &EventMessage) -> bool {
    let action = event.action.as_deref().unwrap_or_default();
    // `health_status: healthy`, `exec_start: sh` …: the verb is before the colon.
    let verb = action.split(':').next().unwrap_or_default().trim();
    match event.typ {
        Some(EventMessageTypeEnum::CONTAINER) => matches!(
            verb,
            "start"
                | "restart"
                | "die"
                | "stop"
                | "kill"
                | "destroy"
                | "health_status"
                | "rename"
                | "pause"
                | "unpause"
                | "update"
        ),
        Some(EventMessageTypeEnum::NETWORK) => matches!(verb, "connect" | "disconnect"),
        _ => false,
    }
}

/// The daemon's clock (Unix seconds, as the events API wants it), one second early so events
/// in the same second as the listing are replayed rather than missed. `None` when the daemon
/// does not say (then events start "now", as Traefik's do).
async fn daemon_time(docker: &Docker, endpoint: &str) -> Result<Option<String>, ClientError> {
    let info = docker.info().await.map_err(|source| ClientError::Api {
        endpoint: endpoint.to_owned(),
        what: "GET /info".into(),
        source,
    })?;
    Ok(info
        .system_time
        .as_deref()
        .and_then(unix_seconds)
        .map(|secs| (secs - 1).to_string()))
}

/// Parses the RFC 3339 timestamps Docker prints (`2024-01-02T03:04:05.123456789Z`,
/// `…+01:00`) into Unix seconds.
fn unix_seconds(text: &str) -> Option<i64> {
    let (date, time) = text.trim().split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let clock_len = time.find(['Z', 'z', '+', '-']).unwrap_or(time.len());
    let (clock, zone) = time.split_at(clock_len);
    let clock = clock.split('.').next()?;
    let mut hms = clock.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    let offset = match zone {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (h, m) = zone[1..].split_once(':')?;
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days since 1970-01-01 in the proleptic Gregorian calendar (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Lists and inspects every running container and builds the provider's configuration.
async fn refresh(
    docker: &Docker,
    endpoint: &str,
    settings: &Settings,
) -> Result<(DynamicConfig, Vec<Diagnostic>), ClientError> {
    let summaries = docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            ..Default::default()
        }))
        .await
        .map_err(|source| ClientError::Api {
            endpoint: endpoint.to_owned(),
            what: "GET /containers/json".into(),
            source,
        })?;
    let mut containers = Vec::with_capacity(summaries.len());
    for summary in summaries {
        let Some(id) = summary.id else { continue };
        let Some(inspected) = inspect(docker, endpoint, &id).await? else {
            continue;
        };
        let Some(mut container) = container_from(inspected) else {
            continue;
        };
        if let Some(target) = container.network_mode.strip_prefix("container:") {
            // `network_mode: container:<id>` shares the target's network stack.
            let target = target.to_owned();
            if let Some(shared) = inspect(docker, endpoint, &target).await?
                && let Some(shared) = container_from(shared)
            {
                container.network_mode = shared.network_mode;
                container.networks = shared.networks;
                let network_label = format!("traefik.{NAME}.network");
                if model::label(&container.labels, &network_label).is_none()
                    && let Some(network) = model::label(&shared.labels, &network_label)
                {
                    container
                        .labels
                        .insert(network_label.clone(), network.to_owned());
                }
            }
        }
        containers.push(container);
    }
    Ok(model::build(NAME, settings, &containers))
}

/// Inspects one container; `None` when it disappeared meanwhile.
async fn inspect(
    docker: &Docker,
    endpoint: &str,
    id: &str,
) -> Result<Option<ContainerInspectResponse>, ClientError> {
    match docker.inspect_container(id, None).await {
        Ok(inspected) => Ok(Some(inspected)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(source) => Err(ClientError::Api {
            endpoint: endpoint.to_owned(),
            what: format!("GET /containers/{id}/json"),
            source,
        }),
    }
}

/// The API's view of a running container → ours; `None` when it is not running (it stopped
/// between listing and inspection).
fn container_from(inspected: ContainerInspectResponse) -> Option<Container> {
    let state = inspected.state.unwrap_or_default();
    if state.running != Some(true) || state.paused == Some(true) {
        return None;
    }
    let health = state
        .health
        .and_then(|h| h.status)
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty() && s != "none");
    let config = inspected.config.unwrap_or_default();
    let host = inspected.host_config.unwrap_or_default();
    let network_settings = inspected.network_settings.unwrap_or_default();
    let mut ports: Vec<u16> = config
        .exposed_ports
        .unwrap_or_default()
        .iter()
        .filter_map(|p| port_number(p))
        .collect();
    let mut bindings = Vec::new();
    for (port, bound) in network_settings.ports.unwrap_or_default() {
        let Some(container_port) = port_number(&port) else {
            continue;
        };
        ports.push(container_port);
        for binding in bound.unwrap_or_default() {
            let host_port = binding
                .host_port
                .as_deref()
                .and_then(|p| p.parse::<u16>().ok());
            if let Some(host_port) = host_port {
                bindings.push(Binding {
                    container_port,
                    host_ip: binding.host_ip.unwrap_or_default(),
                    host_port,
                });
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    bindings.sort_by(|a, b| {
        (a.container_port, &a.host_ip, a.host_port).cmp(&(
            b.container_port,
            &b.host_ip,
            b.host_port,
        ))
    });
    let networks = network_settings
        .networks
        .unwrap_or_default()
        .into_iter()
        .map(|(name, endpoint)| {
            (
                name,
                NetworkEndpoint {
                    ipv4: endpoint.ip_address.unwrap_or_default(),
                    ipv6: endpoint.global_ipv6_address.unwrap_or_default(),
                },
            )
        })
        .collect();
    Some(Container {
        id: inspected.id.unwrap_or_default(),
        name: inspected
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        health,
        network_mode: host.network_mode.unwrap_or_default(),
        networks,
        ports,
        bindings,
    })
}

/// `80/tcp` → 80.
fn port_number(port: &str) -> Option<u16> {
    port.split('/').next()?.parse().ok()
}
