//! The proxy process. Boot order matters: open the state dir, load the newest valid persisted
//! snapshot and bind its listeners *before* anything else, so a proxy serves within a fraction
//! of a second with or without a controller; then the admin endpoint; then the subscriber.

use std::{
    collections::BTreeMap, future::Future, net::SocketAddr, path::PathBuf, sync::Arc,
    time::Duration,
};

use anyhow::Context;
use arc_swap::ArcSwap;
use switchyard_shared::{drain, pb};
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::wrappers::TcpListenerStream;

use crate::{
    admin::AdminService,
    join::{ChannelFlags, ChannelSecurity},
    listener::Listeners,
    runtime::Runtime,
    state::Table,
    store::Store,
    subscriber,
};

/// How long in-flight connections get to finish at shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Proxy settings (from the command line).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub controllers: Vec<String>,
    pub node_id: String,
    pub state_dir: PathBuf,
    pub admin: SocketAddr,
    pub entry_point_overrides: BTreeMap<String, SocketAddr>,
}

/// A built proxy: state loaded, sockets bound.
pub struct App {
    config: ProxyConfig,
    /// How the controllers are reached (plaintext on loopback, or mutual TLS).
    security: Arc<ChannelSecurity>,
    runtime: Arc<Runtime>,
    admin: TcpListener,
    drain: drain::Signal,
}

impl App {
    /// A proxy reaching its controllers in plaintext (loopback only).
    pub async fn build(config: ProxyConfig) -> anyhow::Result<Self> {
        let security = ChannelSecurity::from_flags(
            &ChannelFlags::default(),
            &config.controllers,
            &config.state_dir,
        )?;
        Self::build_secure(config, security).await
    }

    /// A proxy reaching its controllers as `security` says (see `crate::join`).
    pub async fn build_secure(
        config: ProxyConfig,
        security: ChannelSecurity,
    ) -> anyhow::Result<Self> {
        let store = Store::open(&config.state_dir)
            .with_context(|| format!("cannot open --state-dir {}", config.state_dir.display()))?;
        let table = Arc::new(ArcSwap::from_pointee(Table::default()));
        let (drain, drain_watch) = drain::channel();
        let listeners = Listeners::serving(&table, drain_watch);
        let runtime = Arc::new(Runtime::new(
            config.node_id.clone(),
            table,
            store,
            config.entry_point_overrides.clone(),
            listeners,
        )?);
        runtime.load_from_disk().await;
        runtime
            .start_listeners()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let admin = TcpListener::bind(config.admin)
            .await
            .with_context(|| format!("cannot listen on --admin {}", config.admin))?;
        Ok(Self {
            config,
            security: Arc::new(security),
            runtime,
            admin,
            drain,
        })
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Runs until `shutdown` resolves, then drains connections (bounded by a deadline).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(subscriber::run(
            self.runtime.clone(),
            self.config.controllers.clone(),
            self.security.clone(),
            stop_rx.clone(),
        ));
        tokio::spawn(self.security.clone().renew_loop(
            self.config.controllers.clone(),
            self.config.node_id.clone(),
            stop_rx.clone(),
        ));
        // Both reflection revisions: grpcurl and older tools still ask for v1alpha.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build the gRPC reflection service")?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("cannot build the gRPC reflection service")?;
        let mut admin_stop = stop_rx.clone();
        let admin = tonic::transport::Server::builder()
            .add_service(pb::proxy_admin_server::ProxyAdminServer::new(
                AdminService::new(self.runtime.clone()),
            ))
            .add_service(reflection)
            .add_service(reflection_alpha)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.admin), async move {
                let _ = admin_stop.changed().await;
            });
        let admin_task = tokio::spawn(admin);
        tracing::info!(admin = %self.config.admin, node = %self.config.node_id, "proxy running");
        shutdown.await;
        tracing::info!("shutting down: no longer accepting, draining connections");
        let _ = stop_tx.send(true);
        self.runtime.stop_listeners().await;
        if tokio::time::timeout(DRAIN_DEADLINE, self.drain.drain())
            .await
            .is_err()
        {
            tracing::warn!("drain deadline reached; closing remaining connections");
        }
        let _ = admin_task.await;
        Ok(())
    }
}
