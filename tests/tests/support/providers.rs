//! Shared by the provider integration tests (`etcd.rs`, `consul_kv.rs`, `consul_catalog.rs`…):
//! an in-process controller and proxy, a tiny backend, and bounded polling.

// Test helpers: a failed setup step should panic loudly.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use switchyard_controller::{app::App, config::StaticConfig};
use switchyard_shared::pb::{self, control_plane_client::ControlPlaneClient};
use tokio::{net::TcpListener, sync::oneshot};

/// Generous: CI machines have two cores and run tests in parallel.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` every 50 ms until it returns `Some`, or panics after `deadline` saying what was
/// awaited and what was seen last.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut last = String::from("never checked");
    while tokio::time::Instant::now() < end {
        match check().await {
            Ok(value) => return value,
            Err(seen) => last = seen,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}");
}

/// A fresh temporary directory (removed on drop).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sy-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A controller started in-process from a static configuration (its `providers:` section is
/// given; entry point `web` and a loopback gRPC port are added).
pub struct Controller {
    pub url: String,
    _stop: oneshot::Sender<()>,
}

impl Controller {
    pub async fn start(providers_yaml: &str) -> Self {
        let text = format!(
            "entryPoints:\n  web:\n    address: ':80'\nproviders:\n{}",
            indent(providers_yaml)
        );
        Self::start_static(&text).await
    }

    /// Starts from a whole static configuration; a loopback gRPC port is added.
    pub async fn start_static(static_yaml: &str) -> Self {
        let text = format!("{static_yaml}\ncontroller:\n  grpc:\n    address: 127.0.0.1:0\n");
        let config = StaticConfig::parse(Path::new("static.yml"), &text)
            .unwrap_or_else(|e| panic!("static config rejected: {e}\n{text}"));
        let app = App::build(config).await.expect("controller builds");
        let addr = app.grpc_address().expect("bound address");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        Self {
            url: format!("http://{addr}"),
            _stop: tx,
        }
    }

    async fn client(&self) -> Result<ControlPlaneClient<tonic::transport::Channel>, String> {
        ControlPlaneClient::connect(self.url.clone())
            .await
            .map_err(|e| format!("connect: {e}"))
    }

    pub async fn snapshot(&self) -> Result<pb::VersionedSnapshot, String> {
        let mut client = self.client().await?;
        client
            .get_snapshot(pb::GetSnapshotRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| format!("GetSnapshot: {e}"))
    }

    pub async fn version(&self) -> Result<pb::GetVersionResponse, String> {
        let mut client = self.client().await?;
        client
            .get_version(pb::GetVersionRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| format!("GetVersion: {e}"))
    }

    /// Routers (`name@provider` → rule text) and services (`name` → server URLs) of the current
    /// snapshot.
    pub async fn routes(&self) -> Result<Routes, String> {
        let snapshot = self.snapshot().await?.snapshot.unwrap_or_default();
        let routers = snapshot
            .routers
            .iter()
            .map(|r| (r.name.clone(), r.rule_text.clone()))
            .collect();
        let services = snapshot
            .services
            .iter()
            .map(|s| {
                let urls = match &s.kind {
                    Some(pb::service::Kind::LoadBalancer(lb)) => {
                        lb.servers.iter().map(|s| s.url.clone()).collect()
                    }
                    _ => Vec::new(),
                };
                (s.name.clone(), urls)
            })
            .collect();
        Ok(Routes { routers, services })
    }

    /// The status the controller reports for one provider.
    pub async fn provider(&self, name: &str) -> Result<pb::ProviderStatus, String> {
        let version = self.version().await?;
        version
            .providers
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("provider {name} not reported yet"))
    }
}

/// What a snapshot routes, in an easily asserted form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    pub routers: BTreeMap<String, String>,
    pub services: BTreeMap<String, Vec<String>>,
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// A proxy started in-process, subscribed to `controller`, serving entry point `web`.
pub struct Proxy {
    pub web: SocketAddr,
    _stop: oneshot::Sender<()>,
    _state: TempDir,
}

impl Proxy {
    pub async fn start(controller: &str) -> Self {
        let web = free_port().await;
        Self::start_with(controller, web, &[("web", web)]).await
    }

    /// A proxy whose entry points listen on the given local addresses; `web` is the one
    /// [`Proxy::get`] uses.
    pub async fn start_with(
        controller: &str,
        web: SocketAddr,
        entry_points: &[(&str, SocketAddr)],
    ) -> Self {
        let state = TempDir::new("proxy-state");
        let config = switchyard_proxy::app::ProxyConfig {
            controllers: vec![controller.to_owned()],
            node_id: format!("test-{}", web.port()),
            state_dir: state.path().to_owned(),
            admin: "127.0.0.1:0".parse().expect("address"),
            entry_point_overrides: entry_points
                .iter()
                .map(|(name, addr)| ((*name).to_owned(), *addr))
                .collect(),
        };
        let app = switchyard_proxy::app::App::build(config)
            .await
            .expect("proxy builds");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        Self {
            web,
            _stop: tx,
            _state: state,
        }
    }

    /// `GET http://<web><path>` with `Host: host`: `(status, body)`.
    pub async fn get(&self, host: &str, path: &str) -> Result<(u16, String), String> {
        http_get(self.web, host, path).await
    }
}

/// A loopback address nobody listens on right now (the harness's, outside the ephemeral range).
pub async fn free_port() -> SocketAddr {
    switchyard_tests::harness::free_port()
}

/// A backend answering every request with `name`. Runs until the test's runtime ends.
pub async fn backend(name: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let name = Bytes::from(name.to_owned());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let name = name.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(name)))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// One plain HTTP/1.1 GET.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .map_err(|_| "request timed out".to_owned())?
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
