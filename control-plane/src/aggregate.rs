//! The aggregator: keeps the last good configuration of every provider, debounces changes (a quiet
//! period plus a maximum delay so a busy provider cannot starve updates), runs one compile at a
//! time with the latest input, and hands the result to the publisher.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use switchyard_shared::{snapshot::EntryPoint, time::now_unix_ms};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use crate::{
    acme::{self, AcmeHandle},
    certs,
    compile::{self, Diagnostic},
    dynamic::DynamicConfig,
    provider::ProviderEvent,
    publish::Publisher,
};

/// What the controller knows about one provider (served by `GetVersion`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderState {
    pub healthy: bool,
    pub error: Option<String>,
    pub updated_at_unix_ms: i64,
}

/// Shared, read-mostly view of provider states.
pub type ProviderStates = Arc<Mutex<BTreeMap<String, ProviderState>>>;

/// Debounce settings.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// Compile once no change arrived for this long.
    pub quiet: Duration,
    /// …but never wait longer than this after the first pending change.
    pub max_delay: Duration,
}

impl Debounce {
    /// Quiet period `throttle`, maximum delay ten times that (at least one second).
    pub fn from_throttle(throttle: Duration) -> Self {
        Self {
            quiet: throttle,
            max_delay: (throttle * 10).max(Duration::from_secs(1)),
        }
    }
}

/// How long after a publish the provider configurations it replaced are freed.
const RETIRE_DELAY: Duration = Duration::from_millis(500);

/// Runs until every provider sender is dropped or `shutdown` fires.
// Each argument is one input or output of the stage; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    entry_points: Vec<EntryPoint>,
    expected_providers: Vec<String>,
    mut events: mpsc::Receiver<ProviderEvent>,
    debounce: Debounce,
    publisher: Publisher,
    states: ProviderStates,
    acme_handle: Option<AcmeHandle>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The last compile, re-published with fresh ACME certificates/challenges when those change.
    let mut last: Option<(switchyard_shared::snapshot::SharedSnapshot, Vec<Diagnostic>)> = None;
    let mut acme_output = acme_handle.as_ref().map(AcmeHandle::output);
    // Shared with the compile task: a compile copies no configuration.
    let mut configs: BTreeMap<String, Arc<DynamicConfig>> = BTreeMap::new();
    let mut warnings: BTreeMap<String, Vec<Diagnostic>> = BTreeMap::new();
    let mut retired: Vec<Arc<DynamicConfig>> = Vec::new();
    // Remembers compiled routers between compiles; travels into each compile task and back (a
    // panic there loses it: the next compile starts afresh).
    let mut compiler: Option<compile::Compiler> = None;
    let mut heard: BTreeMap<String, bool> = expected_providers
        .iter()
        .map(|p| (p.clone(), false))
        .collect();
    // The first compile waits until every provider has spoken once (or a grace period passed), so
    // proxies are not sent a snapshot missing a slow provider's routes (Traefik #10151).
    let first_deadline = Instant::now() + Duration::from_secs(5);
    let mut first_done = false;
    let mut pending_since: Option<Instant> = None;
    let mut last_event = Instant::now();
    if expected_providers.is_empty() {
        pending_since = Some(Instant::now());
    }
    loop {
        let wake = match pending_since {
            Some(since) => {
                let mut at = (last_event + debounce.quiet).min(since + debounce.max_delay);
                if !first_done && heard.values().any(|h| !h) {
                    at = at.max(first_deadline);
                }
                at
            }
            None => Instant::now() + Duration::from_secs(3600),
        };
        let acme_changed = async {
            match acme_output.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            alive = acme_changed => {
                if !alive {
                    acme_output = None;
                    continue;
                }
                if let (Some((snapshot, diags)), Some(rx)) = (&last, &acme_output) {
                    let mut snapshot = snapshot.clone();
                    acme::merge(&mut snapshot, &rx.borrow());
                    publisher.publish(snapshot, diags.clone());
                }
            }
            event = events.recv() => {
                let Some(event) = event else { return };
                let now_ms = now_unix_ms();
                let mut states = states.lock().unwrap_or_else(|p| p.into_inner());
                match event {
                    ProviderEvent::Update { provider, config, warnings: w } => {
                        heard.insert(provider.clone(), true);
                        states.insert(provider.clone(), ProviderState { healthy: true, error: None, updated_at_unix_ms: now_ms });
                        // The replaced configuration is freed after the next snapshot went out
                        // (`RETIRE_DELAY`): freeing 50 000 routers takes ~20 ms that neither the
                        // change nor its fan-out to the proxies should wait for.
                        retired.extend(configs.insert(provider.clone(), config));
                        warnings.insert(provider, w);
                    }
                    ProviderEvent::Error { provider, error } => {
                        heard.insert(provider.clone(), true);
                        states.insert(provider, ProviderState { healthy: false, error: Some(error), updated_at_unix_ms: now_ms });
                    }
                }
                drop(states);
                last_event = Instant::now();
                pending_since.get_or_insert(last_event);
            }
            _ = tokio::time::sleep_until(wake), if pending_since.is_some() => {
                pending_since = None;
                first_done = true;
                let input = configs.clone();
                let eps = entry_points.clone();
                let extra: Vec<Diagnostic> = warnings.values().flatten().cloned().collect();
                let resolvers = acme_handle.as_ref().map(|a| a.resolvers().clone());
                let started = std::time::Instant::now();
                let mut owned = compiler.take().unwrap_or_default();
                let compiled = tokio::task::spawn_blocking(move || {
                    let mut input = input;
                    let mut file_diags = Vec::new();
                    for (provider, config) in input.iter_mut() {
                        // Copied only when it names certificate files to read.
                        if certs::has_files(config) {
                            file_diags.extend(certs::load_files(provider, Arc::make_mut(config)));
                        }
                    }
                    let (snapshot, mut diags) = owned.compile(&eps, &input);
                    diags.extend(file_diags);
                    // Certificates the routers ask their resolvers for (and why some cannot).
                    let resolvers = resolvers.unwrap_or_default();
                    let (demands, acme_diags) = acme::demands(&input, &resolvers);
                    diags.extend(acme_diags);
                    (snapshot, diags, demands, owned)
                })
                .await;
                match compiled {
                    Ok((snapshot, mut diags, demands, owned)) => {
                        compiler = Some(owned);
                        tracing::debug!(
                            elapsed_ms = started.elapsed().as_millis(),
                            routers = snapshot.routers.len(),
                            "compiled"
                        );
                        diags.extend(extra);
                        diags.sort();
                        diags.dedup();
                        if let (Some(handle), Some(rx)) = (&acme_handle, &acme_output) {
                            // Kept to re-publish with new certificates without recompiling.
                            let mut merged = snapshot.clone();
                            handle.set_demands(demands);
                            acme::merge(&mut merged, &rx.borrow());
                            last = Some((snapshot, diags.clone()));
                            publisher.publish(merged, diags);
                        } else {
                            publisher.publish(snapshot, diags);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "compile task failed; keeping the current snapshot"),
                }
                if !retired.is_empty() {
                    let garbage = std::mem::take(&mut retired);
                    tokio::spawn(async move {
                        tokio::time::sleep(RETIRE_DELAY).await;
                        // Blocking work (tens of milliseconds for a big configuration).
                        drop(tokio::task::spawn_blocking(move || drop(garbage)));
                    });
                }
            }
        }
    }
}
