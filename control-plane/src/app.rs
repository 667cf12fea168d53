//! The controller process: binds the gRPC socket up front (a port conflict is a startup error),
//! then runs providers → aggregator → publisher → gRPC until shutdown.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use switchyard_shared::{pb, snapshot::EntryPoint};
use tokio::{net::TcpListener, sync::mpsc, sync::watch};
use tokio_stream::wrappers::TcpListenerStream;

use crate::{
    acme,
    aggregate::{self, Debounce, ProviderStates},
    config::{StaticConfig, parse_entry_point_address},
    join::{Security, tls_incoming},
    provider::{
        Provider, ProviderSink,
        consul_catalog::ConsulCatalogProvider,
        docker::DockerProvider,
        file::FileProvider,
        kv::{consul::ConsulKvProvider, etcd::EtcdProvider},
        swarm::SwarmProvider,
    },
    publish::Publisher,
    server::{ControlPlaneService, MAX_MESSAGE_BYTES, fleet::Fleet},
};

/// A built controller, sockets bound.
pub struct App {
    config: StaticConfig,
    listener: TcpListener,
    /// Mutual TLS (or plaintext, when allowed) on the gRPC socket.
    security: Arc<Security>,
}

impl App {
    /// Binds the gRPC address.
    pub async fn build(config: StaticConfig) -> anyhow::Result<Self> {
        let addr: SocketAddr = config
            .grpc_address()
            .map_err(|e| anyhow::anyhow!("invalid static configuration: {e}"))?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on controller.grpc.address {addr}"))?;
        let security = Security::from_config(&config, listener.local_addr()?)
            .map_err(|e| anyhow::anyhow!("invalid static configuration: {e}"))?;
        Ok(Self {
            config,
            listener,
            security: Arc::new(security),
        })
    }

    /// The bound gRPC address.
    pub fn grpc_address(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let entry_points = self
            .config
            .entry_points
            .iter()
            .map(|(name, ep)| {
                Ok(EntryPoint {
                    name: name.clone(),
                    address: parse_entry_point_address(&ep.address)
                        .map_err(|e| anyhow::anyhow!("entryPoints.{name}.address: {e}"))?,
                    redirect: self
                        .config
                        .entry_point_redirect(name)
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;

        let mut providers: Vec<Box<dyn Provider>> = Vec::new();
        if let Some(file) = &self.config.providers.file {
            providers.push(Box::new(FileProvider::new(file)));
        }
        if let Some(etcd) = &self.config.providers.etcd {
            providers.push(Box::new(EtcdProvider::new(etcd)));
        }
        if let Some(consul) = &self.config.providers.consul {
            providers.push(Box::new(ConsulKvProvider::new(consul)));
        }
        if let Some(catalog) = &self.config.providers.consul_catalog {
            providers.push(Box::new(ConsulCatalogProvider::new(catalog)));
        }
        if let Some(docker) = &self.config.providers.docker {
            providers.push(Box::new(
                DockerProvider::from_config(docker).map_err(|e| anyhow::anyhow!(e))?,
            ));
        }
        if let Some(swarm) = &self.config.providers.swarm {
            providers.push(Box::new(
                SwarmProvider::from_config(swarm).map_err(|e| anyhow::anyhow!(e))?,
            ));
        }
        if let Some(kubernetes) = &self.config.providers.kubernetes_crd {
            providers.push(Box::new(
                crate::provider::kubernetes::KubernetesCrdProvider::from_config(kubernetes)
                    .map_err(|e| anyhow::anyhow!(e))?,
            ));
        }
        let (events_tx, events_rx) = mpsc::channel(64);
        let names: Vec<String> = providers.iter().map(|p| p.name().to_owned()).collect();
        for provider in providers {
            let sink = ProviderSink::new(provider.name(), events_tx.clone());
            tokio::spawn(provider.run(sink, stop_rx.clone()));
        }
        drop(events_tx);

        let (publisher, snapshots) = Publisher::new();
        let states: ProviderStates = Default::default();
        let fleet = Arc::new(Fleet::default());
        let acme = acme::start(
            &self.config,
            snapshots.clone(),
            fleet.clone(),
            stop_rx.clone(),
        )
        .map_err(|e| anyhow::anyhow!("invalid static configuration: {e}"))?;
        tokio::spawn(aggregate::run(
            entry_points,
            names,
            events_rx,
            Debounce::from_throttle(self.config.throttle()),
            publisher,
            states.clone(),
            acme.clone(),
            stop_rx.clone(),
        ));

        let service = ControlPlaneService::new(snapshots, fleet, states, stop_rx.clone())
            .with_acme(acme)
            .with_security(self.security.clone());
        // Both reflection revisions: grpcurl and older tools still ask for v1alpha.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build the gRPC reflection service")?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("cannot build the gRPC reflection service")?;
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "controller gRPC listening");
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        };
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .add_service(
                pb::control_plane_server::ControlPlaneServer::new(service)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(reflection)
            .add_service(reflection_alpha);
        match self.security.server.clone() {
            Some(tls) => {
                let incoming = tls_incoming(self.listener, tls, stop_rx.clone());
                router
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::ReceiverStream::new(incoming),
                        signal,
                    )
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), signal)
                    .await
            }
        }
        .context("gRPC server failed")?;
        Ok(())
    }
}
