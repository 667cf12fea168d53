//! gRPC queries against a controller (`switchyard.v1.ControlPlane`) and a proxy's admin address
//! (`switchyard.v1.ProxyAdmin`). Every call opens a fresh channel with short timeouts, so a killed
//! or hung peer is an `Err` observation within seconds, never a stuck test.

use std::{net::SocketAddr, time::Duration};

use switchyard_shared::pb::{
    self, control_plane_client::ControlPlaneClient, proxy_admin_client::ProxyAdminClient,
};
use tonic::transport::{Channel, Endpoint};

async fn channel(url: &str) -> Result<Channel, String> {
    Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("bad URL {url}: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect {url}: {e}"))
}

/// `GetVersion` on the controller at `url` (`http://ADDR`).
pub async fn controller_version(url: &str) -> Result<pb::GetVersionResponse, String> {
    ControlPlaneClient::new(channel(url).await?)
        .get_version(pb::GetVersionRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("GetVersion on {url}: {e}"))
}

/// `ListProxies` on the controller at `url`.
pub async fn list_proxies(url: &str) -> Result<pb::ListProxiesResponse, String> {
    ControlPlaneClient::new(channel(url).await?)
        .list_proxies(pb::ListProxiesRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("ListProxies on {url}: {e}"))
}

/// `GetSnapshot` on the controller at `url`.
pub async fn controller_snapshot(url: &str) -> Result<pb::VersionedSnapshot, String> {
    ControlPlaneClient::new(channel(url).await?)
        .get_snapshot(pb::GetSnapshotRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("GetSnapshot on {url}: {e}"))
}

/// `GetStatus` on the proxy whose `--admin` is `admin`.
pub async fn proxy_status(admin: SocketAddr) -> Result<pb::GetStatusResponse, String> {
    let url = format!("http://{admin}");
    ProxyAdminClient::new(channel(&url).await?)
        .get_status(pb::GetStatusRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("GetStatus on {admin}: {e}"))
}

/// The controller's entry for `node`, if it has seen that proxy.
pub fn find_proxy<'a>(
    list: &'a pb::ListProxiesResponse,
    node: &str,
) -> Option<&'a pb::ProxyStatus> {
    list.proxies.iter().find(|p| p.node_id == node)
}

/// The controller's status of provider `name`, if reported.
pub fn find_provider<'a>(
    version: &'a pb::GetVersionResponse,
    name: &str,
) -> Option<&'a pb::ProviderStatus> {
    version.providers.iter().find(|p| p.name == name)
}

/// `Ok(version)` once the controller has a version and every proxy in `nodes` is connected to it
/// and has acknowledged exactly that version.
pub async fn converged(url: &str, nodes: &[&str]) -> Result<String, String> {
    let version = controller_version(url).await?.version;
    if version.is_empty() {
        return Err("the controller has no version yet".into());
    }
    let list = list_proxies(url).await?;
    for node in nodes {
        let p =
            find_proxy(&list, node).ok_or_else(|| format!("{node} is not registered: {list:?}"))?;
        if !p.connected || p.acked_version != version {
            return Err(format!("{node} has not converged on {version}: {p:?}"));
        }
    }
    Ok(version)
}
