//! Moving snapshots under gRPC's message limits: every `VersionedSnapshot` is sent as its
//! encoding cut into consecutive `SnapshotChunk`s of at most [`CHUNK_BYTES`] (a small one as a
//! single chunk) and reassembled by the proxy, which checks that the content hashes to the
//! announced version before decoding it.

use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};

use crate::{
    pb,
    snapshot::Snapshot,
    version::{content_check, encoded_version, snapshot_version},
    wire::{self, Value},
};

/// Field numbers of `VersionedSnapshot`; the content is the message's last field.
const VERSION_FIELD: u32 = 1;
const GENERATION_FIELD: u32 = 2;
const CREATED_AT_FIELD: u32 = 3;
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
    split(
        &header.version,
        bytes::Bytes::from(encode_with_content(header, encoded)),
    )
}

/// The chunk messages of `bytes`, an encoded `VersionedSnapshot` announcing `version`: slices of
/// `bytes`, not copies.
pub fn split(version: &str, bytes: bytes::Bytes) -> Vec<pb::SubscribeResponse> {
    use pb::subscribe_response::Kind;
    let count = bytes.len().div_ceil(CHUNK_BYTES).max(1);
    let count_u32 = u32::try_from(count).unwrap_or(u32::MAX);
    (0..count)
        .map(|i| {
            let start = i * CHUNK_BYTES;
            let end = bytes.len().min(start + CHUNK_BYTES);
            pb::SubscribeResponse {
                kind: Some(Kind::Chunk(pb::SnapshotChunk {
                    version: version.to_owned(),
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
pub fn encode_with_content(header: &pb::VersionedSnapshot, content: &[u8]) -> Vec<u8> {
    encode_with_pieces(header, &[content])
}

/// [`encode_with_content`] of the content that is the concatenation of `pieces`, written once.
pub(crate) fn encode_with_pieces(header: &pb::VersionedSnapshot, pieces: &[&[u8]]) -> Vec<u8> {
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let mut buf = Vec::with_capacity(header.encoded_len() + 16 + len);
    header.encode_raw(&mut buf);
    encode_key(CONTENT_FIELD, WireType::LengthDelimited, &mut buf);
    encode_varint(len as u64, &mut buf);
    for piece in pieces {
        buf.extend_from_slice(piece);
    }
    buf
}

/// An encoded `VersionedSnapshot` taken apart: its header fields and its content bytes (the
/// encoded `Snapshot`), which are not decoded.
struct Parts<'a> {
    version: String,
    generation: u64,
    created_at_unix_ms: i64,
    content: &'a [u8],
}

fn parts(bytes: &[u8]) -> Result<Parts<'_>, String> {
    let mut parts = Parts {
        version: String::new(),
        generation: 0,
        created_at_unix_ms: 0,
        content: &[],
    };
    let mut has_content = false;
    for field in wire::fields(bytes) {
        match field? {
            (VERSION_FIELD, Value::Bytes(v)) => {
                parts.version = std::str::from_utf8(v)
                    .map_err(|_| "version is not UTF-8".to_owned())?
                    .to_owned();
            }
            (GENERATION_FIELD, Value::Varint(v)) => parts.generation = v,
            // int64: two's complement in a varint.
            (CREATED_AT_FIELD, Value::Varint(v)) => parts.created_at_unix_ms = v as i64,
            (CONTENT_FIELD, Value::Bytes(v)) => {
                if std::mem::replace(&mut has_content, true) {
                    return Err("content field repeated".into());
                }
                parts.content = v;
            }
            (VERSION_FIELD | GENERATION_FIELD | CREATED_AT_FIELD | CONTENT_FIELD, _) => {
                return Err("a header field has the wrong wire type".into());
            }
            _ => {}
        }
    }
    if !has_content {
        return Err("no content".into());
    }
    Ok(parts)
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
        let mut done = std::mem::take(self);
        // The reservation counted every chunk as full; what the last one left unused would stay
        // allocated as long as the bytes are (a proxy's whole apply: persisting and decoding).
        done.buf.shrink_to_fit();
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

/// A received snapshot, verified and decoded.
#[derive(Debug)]
pub struct Opened {
    pub version: String,
    pub generation: u64,
    pub created_at_unix_ms: i64,
    pub snapshot: Snapshot,
}

/// A received snapshot whose content hashes to the version it announces (or, rebuilt from a delta,
/// matches the delta's quick check); not decoded.
#[derive(Debug)]
pub struct Checked {
    pub version: String,
    pub generation: u64,
    pub created_at_unix_ms: i64,
    /// Where the content (the encoded `Snapshot`) lies in the bytes checked.
    pub content: std::ops::Range<usize>,
}

/// The version `bytes` (an encoded `VersionedSnapshot`) announce; not verified.
pub fn announced_version(bytes: &[u8]) -> Result<String, String> {
    parts(bytes).map(|parts| parts.version)
}

/// The content (the encoded `Snapshot`) inside `bytes`, an encoded `VersionedSnapshot`; not
/// verified.
pub fn content(bytes: &[u8]) -> Result<&[u8], String> {
    parts(bytes).map(|parts| parts.content)
}

/// Checks that the content inside `bytes` (an encoded `VersionedSnapshot`) hashes to `version` —
/// the bytes received are hashed as they are, never decoded and encoded again — and that the
/// header announces the same version.
pub fn check(version: &str, bytes: &[u8]) -> Result<Checked, String> {
    check_with(version, bytes, |content| {
        let actual = encoded_version(content);
        if actual == version {
            return Ok(());
        }
        Err(format!(
            "snapshot {version} does not match its content (hashes to {actual})"
        ))
    })
}

/// [`check`] for content a proxy rebuilt from a delta that carries the content's quick check
/// ([`content_check`]): the content is checked against `quick` instead of being hashed with
/// SHA-256.
pub fn check_quick(version: &str, quick: u64, bytes: &[u8]) -> Result<Checked, String> {
    check_with(version, bytes, |content| {
        let actual = content_check(content);
        if actual == quick {
            return Ok(());
        }
        Err(format!(
            "snapshot {version} does not match its content (its quick check is {actual:016x}, \
             the controller's {quick:016x})"
        ))
    })
}

/// `Checked` for `bytes` once `matches` accepts their content and the header announces `version`.
fn check_with(
    version: &str,
    bytes: &[u8],
    matches: impl FnOnce(&[u8]) -> Result<(), String>,
) -> Result<Checked, String> {
    let parts = parts(bytes).map_err(|e| format!("snapshot {version}: {e}"))?;
    matches(parts.content)?;
    if parts.version != version {
        return Err(format!(
            "snapshot {}: delivered in chunks announcing version {version}",
            parts.version
        ));
    }
    // The content is a slice of `bytes`: its offset is the distance between their addresses.
    let start = parts.content.as_ptr() as usize - bytes.as_ptr() as usize;
    Ok(Checked {
        version: parts.version,
        generation: parts.generation,
        created_at_unix_ms: parts.created_at_unix_ms,
        content: start..start + parts.content.len(),
    })
}

/// [`check`], then decodes the content straight into the domain [`Snapshot`] as a proxy serves
/// it (one element at a time: the wire form of the whole snapshot is never built; see
/// [`Snapshot::decode_to_serve`] for the text fields left out).
pub fn open(version: &str, bytes: &[u8]) -> Result<Opened, String> {
    let checked = check(version, bytes)?;
    let content = bytes.get(checked.content.clone()).unwrap_or_default();
    let snapshot =
        Snapshot::decode_to_serve(content).map_err(|e| format!("snapshot {version}: {e}"))?;
    Ok(Opened {
        version: checked.version,
        generation: checked.generation,
        created_at_unix_ms: checked.created_at_unix_ms,
        snapshot,
    })
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

    fn domain(routers: usize) -> Snapshot {
        use crate::{
            rule::{Expr, Matcher},
            snapshot::Router,
        };
        Snapshot {
            routers: (0..routers)
                .map(|i| Router {
                    name: format!("router-{i}@file"),
                    provider: "file".into(),
                    entry_points: vec!["web".into()],
                    rule: Expr::Matcher(Matcher::Host(format!("h{i}.example"))),
                    priority: 1,
                    middlewares: Vec::new(),
                    service: "s@file".into(),
                    rule_text: "x".repeat(200),
                    tls: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn big(routers: usize) -> pb::VersionedSnapshot {
        let content = pb::Snapshot::from(&domain(routers));
        pb::VersionedSnapshot {
            version: snapshot_version(&content),
            generation: 1,
            created_at_unix_ms: 1_700_000_000_000,
            snapshot: Some(content),
        }
    }

    /// `open` gives back what was sent, as a proxy serves it.
    fn assert_opened(out: &Opened, sent: &pb::VersionedSnapshot, routers: usize) {
        assert_eq!(out.version, sent.version);
        assert_eq!(out.generation, sent.generation);
        assert_eq!(out.created_at_unix_ms, sent.created_at_unix_ms);
        let mut served = domain(routers);
        for r in &mut served.routers {
            r.provider.clear();
            r.rule_text.clear();
        }
        assert_eq!(out.snapshot, served);
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
        assert_opened(&out, &s, 1);
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
        let Reassembled { version, bytes } = out.unwrap();
        let out = open(&version, &bytes).unwrap();
        assert_opened(&out, &s, 20_000);
        assert_eq!(
            bytes,
            s.encode_to_vec(),
            "chunks carry the canonical encoding"
        );
        verify(&s).unwrap();
        assert_eq!(
            parts(&bytes).unwrap().content,
            s.snapshot.as_ref().unwrap().encode_to_vec()
        );
        let checked = check(&version, &bytes).unwrap();
        assert_eq!(
            bytes[checked.content],
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
        assert_opened(&open(&s.version, &s.encode_to_vec()).unwrap(), &s, 2);
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
            open(&s.version, &bytes)
                .unwrap_err()
                .contains("does not match")
        );
        assert!(open(&s.version, &bytes[..bytes.len() - 3]).is_err());
    }
}
