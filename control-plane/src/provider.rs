//! The provider interface. A provider owns its connection to one source, and whenever the source
//! changes it sends its *complete* configuration (never a delta) to the aggregator. On an outage
//! or a parse error it reports its status and sends nothing: its last good configuration stays in
//! service. A provider never decides what other providers do.

pub mod client_tls;
pub mod consul_catalog;
pub mod docker;
pub mod file;
pub mod kubernetes;
pub mod kv;
pub mod labels;
pub mod swarm;

use std::{future::Future, pin::Pin, sync::Arc};

use tokio::sync::{mpsc, watch};

use crate::{compile::Diagnostic, dynamic::DynamicConfig};

/// What a provider tells the aggregator.
#[derive(Debug, Clone)]
pub enum ProviderEvent {
    /// A complete new configuration, with non-fatal findings (duplicates skipped…).
    Update {
        provider: String,
        config: Arc<DynamicConfig>,
        warnings: Vec<Diagnostic>,
    },
    /// The source is unreachable or unusable; the last good configuration stays.
    Error { provider: String, error: String },
}

/// The sending side handed to each provider.
#[derive(Clone, Debug)]
pub struct ProviderSink {
    name: String,
    tx: mpsc::Sender<ProviderEvent>,
}

impl ProviderSink {
    pub fn new(name: impl Into<String>, tx: mpsc::Sender<ProviderEvent>) -> Self {
        Self {
            name: name.into(),
            tx,
        }
    }

    /// The provider's name (`file`, `docker`, …), used to qualify its objects.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends a complete configuration. Returns false when the aggregator is gone (shutdown).
    pub async fn update(&self, config: DynamicConfig, warnings: Vec<Diagnostic>) -> bool {
        self.update_shared(Arc::new(config), warnings).await
    }

    /// [`Self::update`] of a configuration the provider keeps too (to tell the next one from
    /// it), shared instead of copied.
    pub async fn update_shared(
        &self,
        config: Arc<DynamicConfig>,
        warnings: Vec<Diagnostic>,
    ) -> bool {
        self.tx
            .send(ProviderEvent::Update {
                provider: self.name.clone(),
                config,
                warnings,
            })
            .await
            .is_ok()
    }

    /// Reports that the source is unusable; the last good configuration stays.
    pub async fn error(&self, error: String) -> bool {
        tracing::warn!(provider = %self.name, %error, "provider error; keeping its last good configuration");
        self.tx
            .send(ProviderEvent::Error {
                provider: self.name.clone(),
                error,
            })
            .await
            .is_ok()
    }
}

/// A boxed provider task.
pub type ProviderTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A configuration source. `run` loops until `shutdown` turns true.
pub trait Provider: Send + 'static {
    /// The provider name used to qualify objects (`name@provider`).
    fn name(&self) -> &'static str;
    /// Runs the provider until shutdown.
    fn run(self: Box<Self>, sink: ProviderSink, shutdown: watch::Receiver<bool>) -> ProviderTask;
}
