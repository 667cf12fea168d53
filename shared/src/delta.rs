//! Snapshot deltas: a new snapshot's content described as runs of the previous content's
//! top-level fields (every router, service, middleware… is one) and the bytes of what changed.
//! A one-router change at 10 000 routers travels as a few hundred bytes instead of the whole
//! 0.9 MB snapshot, and a proxy skips reassembling it.
//!
//! The receiver rebuilds the exact content bytes and verifies them like those of a whole snapshot
//! (they must hash to the new version, [`crate::chunk::check`]): a delta applied to the wrong base
//! is refused, never served.

use std::{collections::HashMap, ops::Range};

use crate::{
    chunk::{self, Reassembled},
    pb::{self, delta_part::Kind},
    wire,
};

/// The parts that rebuild `new` from `base` (both encoded `Snapshot` contents), or `None` when
/// more than `max_inserted` bytes would have to travel as they are (a whole snapshot is then
/// cheaper to handle) or either side does not parse.
pub fn diff(base: &[u8], new: &[u8], max_inserted: usize) -> Option<Vec<pb::DeltaPart>> {
    let base_fields = field_spans(base).ok()?;
    let new_fields = field_spans(new).ok()?;
    // Each distinct field of the base by its bytes (the first, should two be equal: either
    // rebuilds the same bytes).
    let mut index: HashMap<&[u8], u32> = HashMap::with_capacity(base_fields.len());
    for (i, span) in (0u32..).zip(&base_fields) {
        index.entry(&base[span.clone()]).or_insert(i);
    }
    let mut parts: Vec<pb::DeltaPart> = Vec::new();
    let mut inserted = 0usize;
    for span in new_fields {
        let bytes = &new[span];
        match (
            index.get(bytes),
            parts.last_mut().and_then(|p| p.kind.as_mut()),
        ) {
            (Some(&i), Some(Kind::Copy(run))) if run.start + run.count == i => run.count += 1,
            (Some(&i), _) => parts.push(pb::DeltaPart {
                kind: Some(Kind::Copy(pb::FieldRun { start: i, count: 1 })),
            }),
            (None, last) => {
                inserted += bytes.len();
                if inserted > max_inserted {
                    return None;
                }
                match last {
                    Some(Kind::Insert(buf)) => buf.extend_from_slice(bytes),
                    _ => parts.push(pb::DeltaPart {
                        kind: Some(Kind::Insert(bytes.to_vec())),
                    }),
                }
            }
        }
    }
    Some(parts)
}

/// The content `parts` describe, rebuilt from `base`. Errors name the part that does not fit.
pub fn apply(base: &[u8], parts: &[pb::DeltaPart]) -> Result<Vec<u8>, String> {
    Ok(pieces(base, parts)?.concat())
}

/// The slices of `base` and of `parts` whose concatenation is the content `parts` describe.
fn pieces<'a>(base: &'a [u8], parts: &'a [pb::DeltaPart]) -> Result<Vec<&'a [u8]>, String> {
    let fields = field_spans(base).map_err(|e| format!("base snapshot: {e}"))?;
    let mut out = Vec::with_capacity(parts.len());
    for (n, part) in parts.iter().enumerate() {
        match &part.kind {
            Some(Kind::Copy(run)) => {
                let first = usize::try_from(run.start).unwrap_or(usize::MAX);
                let last = usize::try_from(run.count)
                    .ok()
                    .and_then(|count| (first.checked_add(count)?).checked_sub(1));
                let (Some(first), Some(last)) =
                    (fields.get(first), last.and_then(|l| fields.get(l)))
                else {
                    return Err(format!(
                        "delta part {n} copies fields {}..+{} of a base that has {}",
                        run.start,
                        run.count,
                        fields.len()
                    ));
                };
                // A run of fields is one range of the base: fields are contiguous.
                out.push(&base[first.start..last.end]);
            }
            Some(Kind::Insert(bytes)) => out.push(bytes.as_slice()),
            None => return Err(format!("delta part {n} is empty")),
        }
    }
    Ok(out)
}

/// The snapshot a delta describes, as if its chunks had been received: `base` is the encoded
/// `VersionedSnapshot` the delta was made against (a proxy's state file). Not verified here: the
/// apply checks the rebuilt content against `delta.version`, like any received snapshot.
pub fn rebuild(delta: &pb::SnapshotDelta, base: &[u8]) -> Result<Reassembled, String> {
    let base_content = chunk::content(base)?;
    // Written once, straight into the encoded `VersionedSnapshot`.
    let pieces = pieces(base_content, &delta.parts)?;
    let header = pb::VersionedSnapshot {
        version: delta.version.clone(),
        generation: delta.generation,
        created_at_unix_ms: delta.created_at_unix_ms,
        snapshot: None,
    };
    Ok(Reassembled {
        version: delta.version.clone(),
        bytes: chunk::encode_with_pieces(&header, &pieces),
    })
}

/// The byte range of every top-level field of an encoded message, key included, in order.
fn field_spans(bytes: &[u8]) -> Result<Vec<Range<usize>>, String> {
    let mut spans = Vec::new();
    let mut fields = wire::fields(bytes);
    let mut start = 0;
    while let Some(field) = fields.next() {
        field?;
        let end = bytes.len() - fields.remaining();
        spans.push(start..end);
        start = end;
    }
    Ok(spans)
}

#[cfg(test)]
mod tests;
