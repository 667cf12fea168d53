//! The publisher: versions compiled snapshots (content hash + generation + timestamp) and fans the
//! current one out through a `watch` channel. A snapshot whose version equals the current one is
//! not published again.

use std::{borrow::Borrow, sync::Arc};

use prost::Message;

use switchyard_shared::{
    chunk, delta, pb,
    snapshot::{Router, Snapshot},
    time::now_unix_ms,
    version::{content_check, encoded_version},
};
use tokio::sync::watch;

use crate::compile::{Diagnostic, Severity};

/// A published snapshot with its identity and the diagnostics of its compile.
#[derive(Debug, Default)]
pub struct Published {
    /// Version, generation and creation time; the content travels (and is kept) only encoded, in
    /// `messages`: see [`Published::decoded`].
    pub snapshot: pb::VersionedSnapshot,
    /// The stream messages carrying `snapshot` (chunks of one shared buffer), built once for every
    /// proxy.
    pub messages: Vec<pb::SubscribeResponse>,
    /// The content the messages carry (the encoded `Snapshot`; a slice of their buffer), which the
    /// next snapshot's delta is made against.
    content: bytes::Bytes,
    /// This snapshot as an edit of the one published before it, for the proxies that hold that
    /// one; `None` for the first snapshot, or when the edit is not much smaller than the whole.
    pub delta: Option<Delta>,
    pub diagnostics: Vec<Diagnostic>,
}

/// A snapshot as a delta from `base_version`: one message, built once for every proxy.
#[derive(Clone, Debug)]
pub struct Delta {
    pub base_version: String,
    pub message: pb::SubscribeResponse,
}

impl Published {
    pub fn version(&self) -> &str {
        &self.snapshot.version
    }

    /// The whole snapshot, content included, decoded from the stream messages (operators'
    /// `GetSnapshot`, the ACME manager's check that challenges went out): a copy per call.
    pub fn decoded(&self) -> Option<pb::VersionedSnapshot> {
        let mut bytes = Vec::new();
        for message in &self.messages {
            if let Some(pb::subscribe_response::Kind::Chunk(chunk)) = &message.kind {
                bytes.extend_from_slice(&chunk.data);
            }
        }
        pb::VersionedSnapshot::decode(bytes.as_slice()).ok()
    }
}

/// Sending side; cheap to clone.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: Arc<watch::Sender<Arc<Published>>>,
}

impl Publisher {
    /// A publisher and the receiver every stream subscribes from. The initial value has an empty
    /// version: nothing compiled yet.
    pub fn new() -> (Self, watch::Receiver<Arc<Published>>) {
        let (tx, rx) = watch::channel(Arc::new(Published::default()));
        (Self { tx: Arc::new(tx) }, rx)
    }

    /// Versions and publishes a compiled snapshot unless it equals the current one (diagnostics
    /// are refreshed in any case).
    pub fn publish<R: Borrow<Router>>(&self, snapshot: Snapshot<R>, diagnostics: Vec<Diagnostic>) {
        let started = std::time::Instant::now();
        // Encoded once: hashed for the version, and chunked from the same bytes.
        let encoded = snapshot.encode();
        let routers = snapshot.routers.len();
        let version = encoded_version(&encoded);
        for d in &diagnostics {
            match d.severity {
                Severity::Error => {
                    tracing::warn!(provider = %d.provider, object = %d.object, "left out: {}", d.message)
                }
                Severity::Warning => {
                    tracing::info!(provider = %d.provider, object = %d.object, "warning: {}", d.message)
                }
            }
        }
        self.tx.send_if_modified(|current| {
            if current.snapshot.version == version {
                if current.diagnostics != diagnostics {
                    *current = Arc::new(Published {
                        snapshot: current.snapshot.clone(),
                        messages: current.messages.clone(),
                        content: current.content.clone(),
                        delta: current.delta.clone(),
                        diagnostics,
                    });
                }
                // Same content: streams must not resend it.
                return false;
            }
            let generation = current.snapshot.generation + 1;
            tracing::info!(
                %version,
                generation,
                routers,
                "publishing snapshot"
            );
            let snapshot = pb::VersionedSnapshot {
                version: version.clone(),
                generation,
                created_at_unix_ms: now_unix_ms(),
                snapshot: None,
            };
            let whole = bytes::Bytes::from(chunk::encode_with_content(&snapshot, &encoded));
            // The content is the last field of the encoded `VersionedSnapshot`.
            let content = whole.slice(whole.len() - encoded.len()..);
            let delta = delta_from(current, &snapshot, &content);
            let messages = chunk::split(&version, whole);
            *current = Arc::new(Published {
                messages,
                snapshot,
                content,
                delta,
                diagnostics,
            });
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis(),
                bytes = encoded.len(),
                "snapshot encoded and chunked"
            );
            true
        });
        // Dropped once the streams have been woken (what the compile did not reuse is freed
        // here: up to tens of milliseconds at 50 000 routers).
        drop(snapshot);
    }
}

/// `snapshot` (with `content`) as an edit of `previous`, if that edit carries at most half of the
/// content's bytes and fits in one message of at most a chunk's size (no gRPC message over 4 MiB).
fn delta_from(
    previous: &Published,
    snapshot: &pb::VersionedSnapshot,
    content: &[u8],
) -> Option<Delta> {
    if previous.version().is_empty() {
        return None;
    }
    let max_inserted = (content.len() / 2).min(chunk::CHUNK_BYTES / 2);
    let parts = delta::diff(&previous.content, content, max_inserted)?;
    let message = pb::SubscribeResponse {
        kind: Some(pb::subscribe_response::Kind::Delta(pb::SnapshotDelta {
            base_version: previous.version().to_owned(),
            version: snapshot.version.clone(),
            generation: snapshot.generation,
            created_at_unix_ms: snapshot.created_at_unix_ms,
            parts,
            content_xxh3: Some(content_check(content)),
        })),
    };
    (message.encoded_len() <= chunk::CHUNK_BYTES).then(|| Delta {
        base_version: previous.version().to_owned(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_is_not_republished() {
        let (p, mut rx) = Publisher::new();
        rx.mark_unchanged();
        p.publish(Snapshot::<Router>::default(), vec![]);
        assert!(rx.has_changed().unwrap());
        let first = rx.borrow_and_update().snapshot.clone();
        assert_eq!(first.generation, 1);
        p.publish(Snapshot::<Router>::default(), vec![]);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().snapshot.version, first.version);
    }

    fn entry_points(names: &[&str]) -> Snapshot {
        Snapshot {
            entry_points: names
                .iter()
                .map(|n| switchyard_shared::snapshot::EntryPoint {
                    name: (*n).to_owned(),
                    address: format!(":{}", 8000 + n.len()),
                    redirect: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_is_also_a_delta_of_the_one_before_when_that_is_smaller() {
        let (p, rx) = Publisher::new();
        let many: Vec<String> = (0..50).map(|i| format!("ep{i:02}")).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        p.publish(entry_points(&names), vec![]);
        let first = Arc::clone(&rx.borrow());
        assert!(first.delta.is_none(), "nothing to be a delta of");
        // One entry point more: a delta of the first, which rebuilds the second exactly.
        let mut more = names.clone();
        more.push("zz");
        p.publish(entry_points(&more), vec![]);
        let second = Arc::clone(&rx.borrow());
        let delta = second.delta.as_ref().expect("a small change is a delta");
        assert_eq!(delta.base_version, first.version());
        let Some(pb::subscribe_response::Kind::Delta(d)) = &delta.message.kind else {
            panic!("{:?}", delta.message);
        };
        let base = first.messages.iter().find_map(|m| match &m.kind {
            Some(pb::subscribe_response::Kind::Chunk(c)) => Some(c.data.clone()),
            _ => None,
        });
        let rebuilt = delta::rebuild(d, &base.expect("one chunk")).expect("fits its base");
        let checked =
            chunk::check(second.version(), &rebuilt.bytes).expect("rebuilds the second snapshot");
        // Its quick check is the content's, which proxies check the rebuild against.
        assert_eq!(
            d.content_xxh3,
            Some(content_check(&rebuilt.bytes[checked.content])),
        );
        // Everything different: sending it whole is cheaper.
        p.publish(entry_points(&["other"]), vec![]);
        assert!(rx.borrow().delta.is_none());
    }
}
