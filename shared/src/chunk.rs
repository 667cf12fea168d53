//! Moving big snapshots under gRPC's message limits: a `VersionedSnapshot` whose encoding exceeds
//! [`CHUNK_BYTES`] is sent as consecutive `SnapshotChunk`s and reassembled by the proxy, which
//! then checks that the content hashes to the announced version before using it.

use prost::Message;

use crate::{pb, version::snapshot_version};

/// Largest chunk payload (well under tonic's 4 MiB default, leaving room for framing).
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Largest snapshot a proxy accepts (guards memory against a runaway sender).
pub const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024 * 1024;

/// The stream messages that carry `snapshot`: one `Snapshot`, or `Chunk`s when it is large.
pub fn messages(snapshot: &pb::VersionedSnapshot) -> Vec<pb::SubscribeResponse> {
    use pb::subscribe_response::Kind;
    let len = snapshot.encoded_len();
    if len <= CHUNK_BYTES {
        return vec![pb::SubscribeResponse {
            kind: Some(Kind::Snapshot(snapshot.clone())),
        }];
    }
    let bytes = snapshot.encode_to_vec();
    let count = bytes.len().div_ceil(CHUNK_BYTES);
    bytes
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(i, data)| pb::SubscribeResponse {
            kind: Some(Kind::Chunk(pb::SnapshotChunk {
                version: snapshot.version.clone(),
                index: u32::try_from(i).unwrap_or(u32::MAX),
                count: u32::try_from(count).unwrap_or(u32::MAX),
                data: data.to_vec(),
            })),
        })
        .collect()
}

/// Rebuilds a chunked snapshot.
#[derive(Debug, Default)]
pub struct Reassembler {
    version: String,
    next: u32,
    count: u32,
    buf: Vec<u8>,
}

impl Reassembler {
    /// Adds a chunk; returns the snapshot once the last chunk arrived. A chunk out of order
    /// restarts reassembly (and is an error unless it is the first chunk of a new snapshot).
    pub fn push(
        &mut self,
        chunk: pb::SnapshotChunk,
    ) -> Result<Option<pb::VersionedSnapshot>, String> {
        if chunk.index == 0 {
            self.version = chunk.version.clone();
            self.next = 0;
            self.count = chunk.count;
            self.buf.clear();
        }
        if chunk.version != self.version || chunk.index != self.next || chunk.count != self.count {
            let err = format!(
                "snapshot {}: chunk {}/{} out of order (expected {}/{} of {})",
                chunk.version, chunk.index, chunk.count, self.next, self.count, self.version
            );
            *self = Self::default();
            return Err(err);
        }
        if self.buf.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
            *self = Self::default();
            return Err(format!(
                "snapshot {} exceeds {MAX_SNAPSHOT_BYTES} bytes",
                chunk.version
            ));
        }
        self.buf.extend_from_slice(&chunk.data);
        self.next += 1;
        if self.next < self.count {
            return Ok(None);
        }
        let bytes = std::mem::take(&mut self.buf);
        let version = std::mem::take(&mut self.version);
        *self = Self::default();
        pb::VersionedSnapshot::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| format!("snapshot {version}: reassembled chunks do not decode: {e}"))
    }
}

/// Checks that a snapshot's content hashes to its announced version.
pub fn verify(snapshot: &pb::VersionedSnapshot) -> Result<(), String> {
    let content = snapshot
        .snapshot
        .as_ref()
        .ok_or_else(|| format!("snapshot {} has no content", snapshot.version))?;
    let actual = snapshot_version(content);
    if actual != snapshot.version {
        return Err(format!(
            "snapshot {} does not match its content (hashes to {actual})",
            snapshot.version
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big(routers: usize) -> pb::VersionedSnapshot {
        let content = pb::Snapshot {
            routers: (0..routers)
                .map(|i| pb::Router {
                    name: format!("router-{i}@file"),
                    service: "s@file".into(),
                    rule_text: "x".repeat(200),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        pb::VersionedSnapshot {
            version: snapshot_version(&content),
            generation: 1,
            created_at_unix_ms: 0,
            snapshot: Some(content),
        }
    }

    #[test]
    fn small_snapshots_travel_whole() {
        let s = big(1);
        let m = messages(&s);
        assert_eq!(m.len(), 1);
        assert!(matches!(
            m[0].kind,
            Some(pb::subscribe_response::Kind::Snapshot(_))
        ));
        verify(&s).unwrap();
    }

    #[test]
    fn big_snapshots_are_chunked_and_reassembled() {
        let s = big(20_000);
        let m = messages(&s);
        assert!(m.len() > 2);
        let mut r = Reassembler::default();
        let mut out = None;
        for msg in m {
            let Some(pb::subscribe_response::Kind::Chunk(c)) = msg.kind else {
                panic!("expected chunks")
            };
            assert!(c.data.len() <= CHUNK_BYTES);
            out = r.push(c).unwrap();
        }
        let out = out.unwrap();
        assert_eq!(out, s);
        verify(&out).unwrap();
    }

    #[test]
    fn out_of_order_chunks_are_rejected() {
        let s = big(20_000);
        let mut chunks: Vec<_> = messages(&s)
            .into_iter()
            .filter_map(|m| match m.kind {
                Some(pb::subscribe_response::Kind::Chunk(c)) => Some(c),
                _ => None,
            })
            .collect();
        chunks.swap(1, 2);
        let mut r = Reassembler::default();
        r.push(chunks[0].clone()).unwrap();
        assert!(r.push(chunks[1].clone()).is_err());
    }

    #[test]
    fn tampered_content_fails_verification() {
        let mut s = big(2);
        if let Some(c) = s.snapshot.as_mut() {
            c.routers[0].service = "other@file".into();
        }
        assert!(verify(&s).unwrap_err().contains("does not match"));
    }
}
