//! The controller client. Lifecycle: pick the next controller URL → connect → `Hello` with the
//! held version → for each snapshot: apply → ACK or NACK; `UpToDate` means nothing to do → on
//! any stream end, wait a full-jitter exponential backoff (100 ms → 30 s, reset after a stream
//! that delivered something) and try the next URL. Losing the controller changes nothing on the
//! data path.

use std::{sync::Arc, time::Duration};

use switchyard_shared::{
    backoff::Backoff,
    chunk::{self, Reassembled, Reassembler},
    pb::{self, control_plane_client::ControlPlaneClient, subscribe_request, subscribe_response},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

use crate::{
    join::{ChannelSecurity, status_text},
    runtime::{Rebuilt, Runtime, Source},
};

/// Largest snapshot message accepted (see the controller's limit).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Runs until `shutdown` turns true.
pub async fn run(
    runtime: Arc<Runtime>,
    controllers: Vec<String>,
    security: Arc<ChannelSecurity>,
    mut shutdown: watch::Receiver<bool>,
) {
    if controllers.is_empty() {
        return;
    }
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    let mut index = 0usize;
    loop {
        let url = &controllers[index % controllers.len()];
        index = index.wrapping_add(1);
        runtime.with_status(|s| s.controller = url.clone());
        let healthy = tokio::select! {
            _ = shutdown.changed() => return,
            result = session(&runtime, url, &security) => match result {
                Ok(healthy) => healthy,
                Err(e) => {
                    tracing::warn!(controller = %url, error = %e, "controller stream failed");
                    runtime.with_status(|s| s.last_error = format!("controller {url}: {e}"));
                    false
                }
            },
        };
        runtime.with_status(|s| s.controller_connected = false);
        if healthy {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::debug!(?delay, "reconnecting after backoff");
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One stream. `Ok(true)` when the stream delivered at least one message.
async fn session(
    runtime: &Arc<Runtime>,
    url: &str,
    security: &ChannelSecurity,
) -> Result<bool, String> {
    let channel = security.connect(url, &runtime.node_id).await?;
    let mut client = ControlPlaneClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(8);
    let hello = pb::SubscribeRequest {
        kind: Some(subscribe_request::Kind::Hello(pb::Hello {
            node_id: runtime.node_id.clone(),
            held_version: runtime.version(),
            build_info: concat!("switchyard-proxy ", env!("CARGO_PKG_VERSION")).to_owned(),
            labels: Vec::new(),
            protocol: pb::PROTOCOL,
            accepts_deltas: true,
        })),
    };
    tx.send(hello)
        .await
        .map_err(|_| "stream closed".to_owned())?;
    let mut inbound = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("subscribe refused: {}", status_text(&s)))?
        .into_inner();
    tracing::info!(controller = %url, "connected to controller");
    runtime.with_status(|s| s.controller_connected = true);
    let mut delivered = false;
    let mut chunks = Reassembler::default();
    while let Some(message) = inbound.next().await {
        let message = message.map_err(|s| format!("stream error: {}", status_text(&s)))?;
        delivered = true;
        // Snapshots arrive as chunks: verified by hashing the content bytes as received (on the
        // build thread, see `Runtime::apply_received`), which are then persisted as they are. A
        // whole `Snapshot` message (sent by controllers before every snapshot was chunked) is
        // verified here by re-encoding its content.
        let received = match message.kind {
            Some(subscribe_response::Kind::Snapshot(snapshot)) => match chunk::verify(&snapshot) {
                Ok(()) => Ok(Received::Whole(Box::new(snapshot))),
                Err(e) => Err((snapshot.version.clone(), e)),
            },
            Some(subscribe_response::Kind::Chunk(chunk)) => {
                let version = chunk.version.clone();
                match chunks.push(chunk) {
                    Ok(None) => continue,
                    Ok(Some(reassembled)) => Ok(Received::Chunks(reassembled)),
                    Err(error) => Err((version, error)),
                }
            }
            Some(subscribe_response::Kind::Delta(delta)) => {
                let version = delta.version.clone();
                runtime.with_status(|s| s.deltas_received += 1);
                match runtime.rebuild_delta(delta).await {
                    Ok(rebuilt) => Ok(Received::Rebuilt(Box::new(rebuilt))),
                    Err(reason) => {
                        runtime.with_status(|s| {
                            s.snapshots_received += 1;
                            s.resyncs_requested += 1;
                        });
                        // Not a rejection: the controller sends the snapshot whole.
                        tracing::info!(%version, %reason, "cannot apply the delta; asking for the whole snapshot");
                        let resync = subscribe_request::Kind::Resync(pb::Resync {
                            version,
                            held_version: runtime.version(),
                            reason,
                        });
                        tx.send(pb::SubscribeRequest { kind: Some(resync) })
                            .await
                            .map_err(|_| "stream closed".to_owned())?;
                        continue;
                    }
                }
            }
            Some(subscribe_response::Kind::UpToDate(up)) => {
                tracing::info!(version = %up.version, "already up to date");
                runtime.with_status(|s| s.source = Source::Controller);
                continue;
            }
            None => continue,
        };
        runtime.with_status(|s| s.snapshots_received += 1);
        let reply = match received {
            Err((version, error)) => nack(runtime, version, error),
            Ok(received) => {
                let version = received.version().to_owned();
                if version == runtime.version() {
                    subscribe_request::Kind::Ack(pb::Ack { version })
                } else {
                    let applied = match received {
                        Received::Whole(snapshot) => {
                            runtime.apply(*snapshot, Source::Controller).await
                        }
                        Received::Chunks(reassembled) => runtime.apply_received(reassembled).await,
                        Received::Rebuilt(rebuilt) => runtime.apply_rebuilt(*rebuilt).await,
                    };
                    match applied {
                        Ok(()) => {
                            runtime.with_status(|s| s.last_error.clear());
                            subscribe_request::Kind::Ack(pb::Ack { version })
                        }
                        Err(error) => nack(runtime, version, error),
                    }
                }
            }
        };
        tx.send(pb::SubscribeRequest { kind: Some(reply) })
            .await
            .map_err(|_| "stream closed".to_owned())?;
    }
    Ok(delivered)
}

/// A snapshot off the stream.
enum Received {
    /// A whole `Snapshot` message, already verified.
    Whole(Box<pb::VersionedSnapshot>),
    /// Reassembled chunks, verified and decoded when applied.
    Chunks(Reassembled),
    /// A delta rebuilt from the snapshot served, already verified.
    Rebuilt(Box<Rebuilt>),
}

impl Received {
    fn version(&self) -> &str {
        match self {
            Received::Whole(snapshot) => &snapshot.version,
            Received::Chunks(reassembled) => &reassembled.version,
            Received::Rebuilt(rebuilt) => &rebuilt.received.version,
        }
    }
}

fn nack(runtime: &Runtime, version: String, error: String) -> subscribe_request::Kind {
    tracing::warn!(%version, %error, "rejecting snapshot; keeping the current one");
    runtime.with_status(|s| {
        s.nacks_sent += 1;
        s.last_error = format!("snapshot {version} rejected: {error}");
    });
    subscribe_request::Kind::Nack(pb::Nack { version, error })
}
