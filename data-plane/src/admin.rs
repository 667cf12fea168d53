//! `switchyard.v1.ProxyAdmin` on the `--admin` address: which version this proxy serves, where it
//! came from, and whether a controller is connected. Reflection is enabled for `grpcurl`.

use std::sync::Arc;

use switchyard_shared::pb::{self, proxy_admin_server::ProxyAdmin};
use tonic::{Request, Response, Status};

use crate::runtime::{Runtime, Source};

/// The admin service.
pub struct AdminService {
    runtime: Arc<Runtime>,
}

impl AdminService {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }
}

#[tonic::async_trait]
impl ProxyAdmin for AdminService {
    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let table = self.runtime.table.load_full();
        let status = self.runtime.with_status(|s| s.clone());
        let source = match status.source {
            Source::None => pb::SnapshotSource::None,
            Source::Disk => pb::SnapshotSource::Disk,
            Source::Controller => pb::SnapshotSource::Controller,
        };
        Ok(Response::new(pb::GetStatusResponse {
            node_id: self.runtime.node_id.clone(),
            version: table.version.clone(),
            generation: table.generation,
            source: source as i32,
            applied_at_unix_ms: status.applied_at_unix_ms,
            controller_connected: status.controller_connected,
            controller: status.controller,
            last_error: status.last_error,
            state_error: status.state_error,
            routers: u32::try_from(table.router_count).unwrap_or(u32::MAX),
            listening: self.runtime.listening().await,
            snapshots_received: status.snapshots_received,
            nacks_sent: status.nacks_sent,
            deltas_received: status.deltas_received,
            resyncs_requested: status.resyncs_requested,
        }))
    }
}
