//! Moving snapshots under gRPC's message limits: every `VersionedSnapshot` is sent as its
//! encoding cut into consecutive `SnapshotChunk`s of at most [`CHUNK_BYTES`] (a small one as a
//! single chunk) and reassembled by the proxy, which checks that the content hashes to the
//! announced version before decoding it.

use prost::{
    Message,
    encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint},
};

use crate::{
    pb,
    version::{encoded_version, snapshot_version},
};

/// Field number of `VersionedSnapshot.snapshot` (the content), the message's last field.
const CONTENT_FIELD: u32 = 4;

/// Largest chunk payload (well under tonic's 4 MiB default, leaving room for framing).
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// HTTP/2 receive window (stream and connection) a proxy opens on its controller channel: a
/// whole chunk travels without waiting for window updates (the default 64 KiB window made a
/// 1 MiB chunk take 16 round trips between two busy processes).
pub const RECEIVE_WINDOW_BYTES: u32 = 2 * CHUNK_BYTES as u32;

/// Largest snapshot a proxy accepts (guards memory against a runaway sender).
pub const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024 * 1024;

/// The stream messages that carry `snapshot`: its encoding cut into `Chunk`s.
pub fn messages(snapshot: &pb::VersionedSnapshot) -> Vec<pb::SubscribeResponse> {
    let header = pb::VersionedSnapshot {
        snapshot: None,
        ..snapshot.clone()
    };
    let encoded = snapshot
        .snapshot
        .as_ref()
        .map(Message::encode_to_vec)
        .unwrap_or_default();
    messages_encoded(&header, &encoded)
}

/// [`messages`] for a snapshot whose content is already encoded (`encoded`, the bytes its
/// version was hashed from); `header` is the `VersionedSnapshot` without its content.
///
/// Every snapshot travels as chunks, a small one as a single chunk: the chunks are slices of
/// one shared buffer, so sending them to many proxies copies nothing until the transport
/// writes them, and a proxy hashes the content bytes it received instead of re-encoding.
pub fn messages_encoded(
    header: &pb::VersionedSnapshot,
    encoded: &[u8],
) -> Vec<pb::SubscribeResponse> {
    use pb::subscribe_response::Kind;
    let bytes = bytes::Bytes::from(encode_with_content(header, encoded));
    let count = bytes.len().div_ceil(CHUNK_BYTES).max(1);
    let count_u32 = u32::try_from(count).unwrap_or(u32::MAX);
    (0..count)
        .map(|i| {
            let start = i * CHUNK_BYTES;
            let end = bytes.len().min(start + CHUNK_BYTES);
            pb::SubscribeResponse {
                kind: Some(Kind::Chunk(pb::SnapshotChunk {
                    version: header.version.clone(),
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    count: count_u32,
                    data: bytes.slice(start..end),
                })),
            }
        })
        .collect()
}

/// The encoding of `header` with `content` (an encoded `Snapshot`) as its content field: the same
/// bytes as encoding the whole `VersionedSnapshot`, since the content is its last field.
fn encode_with_content(header: &pb::VersionedSnapshot, content: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(header.encoded_len() + 16 + content.len());
    header.encode_raw(&mut buf);
    encode_key(CONTENT_FIELD, WireType::LengthDelimited, &mut buf);
    encode_varint(content.len() as u64, &mut buf);
    buf.extend_from_slice(content);
    buf
}

/// The content bytes (the encoded `Snapshot`) inside an encoded `VersionedSnapshot`.
fn encoded_content(mut bytes: &[u8]) -> Result<&[u8], String> {
    let mut content = None;
    while !bytes.is_empty() {
        let (field, wire_type) = decode_key(&mut bytes).map_err(|e| e.to_string())?;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut bytes).map_err(|e| e.to_string())?;
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut bytes).map_err(|e| e.to_string())?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= bytes.len())
                    .ok_or("truncated field")?;
                let (value, rest) = bytes.split_at(len);
                if field == CONTENT_FIELD && content.replace(value).is_some() {
                    return Err("content field repeated".into());
                }
                bytes = rest;
            }
            WireType::SixtyFourBit if bytes.len() >= 8 => bytes = &bytes[8..],
            WireType::ThirtyTwoBit if bytes.len() >= 4 => bytes = &bytes[4..],
            other => return Err(format!("unexpected {other:?} field {field}")),
        }
    }
    content.ok_or_else(|| "no content".to_owned())
}

/// Checks that the content inside an encoded `VersionedSnapshot` hashes to `version`: the bytes
/// received are hashed as they are, without decoding and re-encoding them.
fn verify_encoded(version: &str, bytes: &[u8]) -> Result<(), String> {
    let content = encoded_content(bytes).map_err(|e| format!("snapshot {version}: {e}"))?;
    let actual = encoded_version(content);
    if actual != version {
        return Err(format!(
            "snapshot {version} does not match its content (hashes to {actual})"
        ));
    }
    Ok(())
}

/// Most a reassembly reserves before the chunks arrive.
const RESERVE_LIMIT_BYTES: usize = 64 * 1024 * 1024;

/// Rebuilds a chunked snapshot.
#[derive(Debug, Default)]
pub struct Reassembler {
    version: String,
    next: u32,
    count: u32,
    buf: Vec<u8>,
}

impl Reassembler {
    /// Adds a chunk; returns the snapshot's bytes once the last chunk arrived (check them with
    /// [`open`]). A chunk out of order restarts reassembly (and is an error unless it is the
    /// first chunk of a new snapshot).
    pub fn push(&mut self, chunk: pb::SnapshotChunk) -> Result<Option<Reassembled>, String> {
        if chunk.index == 0 {
            self.version = chunk.version.clone();
            self.next = 0;
            self.count = chunk.count;
            self.buf = Vec::new();
            // Room for every chunk up front (bounded: `count` comes from the network), so the
            // buffer is not copied again each time it grows.
            let expected = (chunk.count as usize).saturating_mul(CHUNK_BYTES);
            self.buf.reserve(expected.min(RESERVE_LIMIT_BYTES));
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
        let done = std::mem::take(self);
        Ok(Some(Reassembled {
            version: done.version,
            bytes: done.buf,
        }))
    }
}

/// A snapshot's encoding as the chunks delivered it: neither verified nor decoded yet.
#[derive(Debug)]
pub struct Reassembled {
    /// The version the chunks announce.
    pub version: String,
    /// The encoded `VersionedSnapshot`.
    pub bytes: Vec<u8>,
}

/// Checks that the content inside `bytes` (an encoded `VersionedSnapshot`) hashes to `version`,
/// then decodes it; the decoded snapshot must announce the same version.
pub fn open(version: &str, bytes: &[u8]) -> Result<pb::VersionedSnapshot, String> {
    verify_encoded(version, bytes)?;
    let snapshot = pb::VersionedSnapshot::decode(bytes)
        .map_err(|e| format!("snapshot {version}: reassembled chunks do not decode: {e}"))?;
    if snapshot.version != version {
        return Err(format!(
            "snapshot {}: delivered in chunks announcing version {version}",
            snapshot.version
        ));
    }
    Ok(snapshot)
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
    fn small_snapshots_travel_as_one_chunk() {
        let s = big(1);
        let mut m = messages(&s);
        assert_eq!(m.len(), 1);
        let Some(pb::subscribe_response::Kind::Chunk(c)) = m.remove(0).kind else {
            panic!("expected a chunk")
        };
        assert_eq!((c.index, c.count), (0, 1));
        let r = Reassembler::default().push(c).unwrap().unwrap();
        let out = open(&r.version, &r.bytes).unwrap();
        assert_eq!(out, s);
        verify(&out).unwrap();
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
        let Reassembled { version, bytes } = out.unwrap();
        let out = open(&version, &bytes).unwrap();
        assert_eq!(out, s);
        assert_eq!(
            bytes,
            s.encode_to_vec(),
            "chunks carry the canonical encoding"
        );
        verify(&out).unwrap();
        verify_encoded(&out.version, &bytes).unwrap();
        assert_eq!(
            encoded_content(&bytes).unwrap(),
            s.snapshot.as_ref().unwrap().encode_to_vec()
        );
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
    fn chunks_must_announce_the_version_inside() {
        let s = big(2);
        let mut other = big(3);
        other.version = s.version.clone();
        assert_eq!(open(&s.version, &s.encode_to_vec()).unwrap(), s);
        // The content matches the chunks' version but the header inside names another one.
        let mut renamed = s.clone();
        renamed.version = "0123456789abcdef".into();
        let err = open(&s.version, &renamed.encode_to_vec()).unwrap_err();
        assert!(err.contains("announcing version"), "{err}");
        // A content that does not hash to the announced version: refused before decoding.
        assert!(
            open(&s.version, &other.encode_to_vec())
                .unwrap_err()
                .contains("does not match")
        );
    }

    #[test]
    fn tampered_content_fails_verification() {
        let mut s = big(2);
        if let Some(c) = s.snapshot.as_mut() {
            c.routers[0].service = "other@file".into();
        }
        assert!(verify(&s).unwrap_err().contains("does not match"));
        let bytes = s.encode_to_vec();
        assert!(
            verify_encoded(&s.version, &bytes)
                .unwrap_err()
                .contains("does not match")
        );
        assert!(verify_encoded(&s.version, &bytes[..bytes.len() - 3]).is_err());
    }
}
