//! The gRPC `switchyard.v1.ControlPlane` service: one `Subscribe` stream per proxy (snapshots down,
//! ACK/NACK up) and the operator RPCs. A proxy that already holds the current version is told so
//! instead of being sent the snapshot; a NACKed version is parked for that proxy until the content
//! changes, so a bad snapshot is never resent in a loop (go-control-plane #962).

pub mod fleet;

use std::{pin::Pin, sync::Arc};

use switchyard_shared::pb::{
    self, control_plane_server::ControlPlane, subscribe_request, subscribe_response,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::{acme::AcmeHandle, aggregate::ProviderStates, join::Security, publish::Published};
use fleet::Fleet;

/// Largest message accepted or sent (tonic's 4 MiB default is too small for big fleets'
/// snapshots: ~420 B per route puts 10 k routes at ~4 MB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The service state, shared by every stream.
#[derive(Clone)]
pub struct ControlPlaneService {
    snapshots: watch::Receiver<Arc<Published>>,
    fleet: Arc<Fleet>,
    providers: ProviderStates,
    shutdown: watch::Receiver<bool>,
    /// ACME certificate status for `GetVersion`.
    acme: Option<AcmeHandle>,
    /// Client authentication (mutual TLS) and the join CA; `None`: plaintext.
    security: Option<Arc<Security>>,
}

impl ControlPlaneService {
    /// Reports the ACME manager's per-certificate status in `GetVersion`.
    pub fn with_acme(mut self, acme: Option<AcmeHandle>) -> Self {
        self.acme = acme;
        self
    }

    /// Requires and checks client certificates (see `crate::join`).
    pub fn with_security(mut self, security: Arc<Security>) -> Self {
        self.security = Some(security);
        self
    }

    /// Operator RPCs need a verified client certificate when TLS is on.
    fn authorize_any<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match &self.security {
            Some(s) => s.client_identities(request).map(|_| ()),
            None => Ok(()),
        }
    }

    pub fn new(
        snapshots: watch::Receiver<Arc<Published>>,
        fleet: Arc<Fleet>,
        providers: ProviderStates,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            snapshots,
            fleet,
            providers,
            shutdown,
            acme: None,
            security: None,
        }
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        // Fail before reading anything: a proxy without a certificate learns why at once.
        let identities = match &self.security {
            Some(s) => s.client_identities(&request)?,
            None => None,
        };
        let mut inbound = request.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(pb::SubscribeRequest {
                kind: Some(subscribe_request::Kind::Hello(hello)),
            })) => hello,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a Subscribe stream must be Hello",
                ));
            }
        };
        if hello.node_id.is_empty() {
            return Err(Status::invalid_argument("Hello.node_id is required"));
        }
        if let Some(names) = &identities {
            crate::join::check_node(names, &hello.node_id, &peer)?;
        }
        if hello.protocol != pb::PROTOCOL {
            return Err(Status::failed_precondition(format!(
                "proxy {} speaks protocol {} but this controller serves protocol {}; upgrade the older side",
                hello.node_id,
                hello.protocol,
                pb::PROTOCOL
            )));
        }
        let session = self.fleet.connect(
            &hello.node_id,
            peer.clone(),
            hello.build_info.clone(),
            &hello.held_version,
        );
        tracing::info!(node = %hello.node_id, %peer, held = %hello.held_version, "proxy subscribed");
        let (tx, rx) = mpsc::channel(4);
        let stream = ProxyStream {
            node_id: hello.node_id,
            session,
            held: hello.held_version,
            accepts_deltas: hello.accepts_deltas,
            whole_next: false,
            snapshots: self.snapshots.clone(),
            fleet: self.fleet.clone(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(stream.run(inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_version(
        &self,
        request: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        self.authorize_any(&request)?;
        let current = self.snapshots.borrow().clone();
        let providers = self
            .providers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, s)| pb::ProviderStatus {
                name: name.clone(),
                healthy: s.healthy,
                error: s.error.clone().unwrap_or_default(),
                updated_at_unix_ms: s.updated_at_unix_ms,
            })
            .collect();
        Ok(Response::new(pb::GetVersionResponse {
            version: current.snapshot.version.clone(),
            generation: current.snapshot.generation,
            created_at_unix_ms: current.snapshot.created_at_unix_ms,
            diagnostics: current
                .diagnostics
                .iter()
                .map(|d| pb::Diagnostic {
                    provider: d.provider.clone(),
                    object: d.object.clone(),
                    message: d.message.clone(),
                    severity: d.severity.as_str().to_owned(),
                })
                .collect(),
            providers,
            acme: self
                .acme
                .as_ref()
                .map(AcmeHandle::status)
                .unwrap_or_default(),
        }))
    }

    async fn list_proxies(
        &self,
        request: Request<pb::ListProxiesRequest>,
    ) -> Result<Response<pb::ListProxiesResponse>, Status> {
        self.authorize_any(&request)?;
        Ok(Response::new(pb::ListProxiesResponse {
            proxies: self.fleet.list(),
            current_version: self.snapshots.borrow().snapshot.version.clone(),
        }))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::VersionedSnapshot>, Status> {
        self.authorize_any(&request)?;
        let current = self.snapshots.borrow().clone();
        if current.snapshot.version.is_empty() {
            return Err(Status::unavailable("no snapshot compiled yet"));
        }
        let whole = current
            .decoded()
            .ok_or_else(|| Status::internal("the current snapshot does not decode"))?;
        Ok(Response::new(redacted(&whole)))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let ca = self.join_ca()?;
        let join = request.into_inner();
        if join.node_id.is_empty() {
            return Err(Status::invalid_argument("JoinRequest.node_id is required"));
        }
        if let Err(e) = ca.consume_token(&join.token, &join.node_id) {
            tracing::warn!(%peer, node = %join.node_id, error = %e, "refused a join");
            return Err(Status::permission_denied(e.to_string()));
        }
        let response = issue(&ca, &join.node_id, &join.csr_der)?;
        tracing::info!(%peer, node = %join.node_id, not_after = response.not_after_unix, "proxy joined; certificate issued");
        Ok(Response::new(response))
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let ca = self.join_ca()?;
        let node_id = request.get_ref().node_id.clone();
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        match &self.security {
            Some(s) => s.authorize_node(&request, &node_id)?,
            None => return Err(Status::failed_precondition("TLS is not enabled")),
        }
        let response = issue(&ca, &node_id, &request.get_ref().csr_der)?;
        tracing::info!(%peer, node = %node_id, not_after = response.not_after_unix, "proxy certificate renewed");
        Ok(Response::new(response))
    }
}

impl ControlPlaneService {
    fn join_ca(&self) -> Result<Arc<crate::ca::Ca>, Status> {
        self.security
            .as_ref()
            .filter(|s| s.is_tls())
            .and_then(|s| s.ca.clone())
            .ok_or_else(|| {
                Status::failed_precondition(
                    "this controller has no built-in CA (controller.ca) and TLS: joining is disabled",
                )
            })
    }
}

fn issue(ca: &crate::ca::Ca, node_id: &str, csr_der: &[u8]) -> Result<pb::JoinResponse, Status> {
    let (cert_pem, not_after_unix) = ca.issue_proxy(node_id, csr_der).map_err(|e| match e {
        crate::ca::CaError::BadCsr(_) => Status::invalid_argument(e.to_string()),
        other => Status::internal(other.to_string()),
    })?;
    Ok(pb::JoinResponse {
        cert_pem,
        ca_pem: ca.ca_pem().to_owned(),
        not_after_unix,
    })
}

/// A copy of the snapshot without private keys (invariant 7: keys leave the controller only in
/// the Subscribe stream).
pub fn redacted(snapshot: &pb::VersionedSnapshot) -> pb::VersionedSnapshot {
    const REDACTED: &str = "(redacted)";
    let mut copy = snapshot.clone();
    if let Some(content) = copy.snapshot.as_mut() {
        for cert in content
            .certificates
            .iter_mut()
            .chain(content.default_certificate.iter_mut())
        {
            cert.key_pem = REDACTED.to_owned();
        }
        for challenge in content.tls_challenges.iter_mut() {
            challenge.key_pem = REDACTED.to_owned();
        }
    }
    copy
}

/// One proxy's stream.
struct ProxyStream {
    node_id: String,
    session: u64,
    /// The version the proxy serves.
    held: String,
    /// The proxy applies deltas (its Hello says so).
    accepts_deltas: bool,
    /// The proxy could not apply a delta: the next snapshot goes whole.
    whole_next: bool,
    snapshots: watch::Receiver<Arc<Published>>,
    fleet: Arc<Fleet>,
    shutdown: watch::Receiver<bool>,
}

impl ProxyStream {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::SubscribeRequest>,
        tx: mpsc::Sender<Result<pb::SubscribeResponse, Status>>,
    ) {
        // The last version offered on this stream (sent, or reported up to date). Never offered
        // twice in a row: a NACKed version stays parked until the content changes.
        let mut offered = String::new();
        loop {
            let current = self.snapshots.borrow_and_update().clone();
            let version = current.version();
            if !version.is_empty() && version != offered {
                if version == self.held {
                    let up = pb::SubscribeResponse {
                        kind: Some(subscribe_response::Kind::UpToDate(pb::UpToDate {
                            version: version.to_owned(),
                            generation: current.snapshot.generation,
                        })),
                    };
                    if tx.send(Ok(up)).await.is_err() {
                        break;
                    }
                } else {
                    let delta = current.delta.as_ref().filter(|d| {
                        self.accepts_deltas && !self.whole_next && d.base_version == self.held
                    });
                    let mut sent = true;
                    let messages = match delta {
                        Some(delta) => std::slice::from_ref(&delta.message),
                        None => current.messages.as_slice(),
                    };
                    for message in messages {
                        if tx.send(Ok(message.clone())).await.is_err() {
                            sent = false;
                            break;
                        }
                    }
                    if !sent {
                        break;
                    }
                    if delta.is_none() {
                        self.whole_next = false;
                    }
                    self.fleet.sent(&self.node_id);
                }
                offered = version.to_owned();
            }
            tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() { break; }
                }
                message = inbound.next() => match message {
                    Some(Ok(m)) => {
                        if self.on_message(m) {
                            // Offer the current snapshot again (whole).
                            offered.clear();
                        }
                    }
                    Some(Err(status)) => {
                        tracing::info!(node = %self.node_id, %status, "proxy stream ended with an error");
                        break;
                    }
                    None => break,
                },
                _ = self.shutdown.changed() => break,
            }
        }
        self.fleet.disconnect(&self.node_id, self.session);
        tracing::info!(node = %self.node_id, "proxy disconnected");
    }

    /// Handles one message from the proxy; `true` when the current snapshot must be sent again.
    fn on_message(&mut self, message: pb::SubscribeRequest) -> bool {
        match message.kind {
            Some(subscribe_request::Kind::Ack(ack)) => {
                tracing::info!(node = %self.node_id, version = %ack.version, "proxy acknowledged");
                self.fleet.ack(&self.node_id, &ack.version);
                self.held = ack.version;
            }
            Some(subscribe_request::Kind::Nack(nack)) => {
                tracing::warn!(node = %self.node_id, version = %nack.version, error = %nack.error, "proxy rejected snapshot");
                self.fleet.nack(&self.node_id, &nack.version, &nack.error);
            }
            Some(subscribe_request::Kind::Resync(resync)) => {
                tracing::info!(
                    node = %self.node_id,
                    version = %resync.version,
                    held = %resync.held_version,
                    reason = %resync.reason,
                    "proxy could not apply a delta; sending the snapshot whole"
                );
                self.held = resync.held_version;
                self.whole_next = true;
                return true;
            }
            Some(subscribe_request::Kind::Hello(_)) | None => {
                tracing::debug!(node = %self.node_id, "ignoring unexpected message on stream");
            }
        }
        false
    }
}
