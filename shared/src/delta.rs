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
    changes::{self, Changes},
    chunk::{self, Reassembled},
    pb::{self, delta_part::Kind},
    wire,
};

/// The parts that rebuild `new` from `base` (both encoded `Snapshot` contents), or `None` when
/// more than `max_inserted` bytes would have to travel as they are (a whole snapshot is then
/// cheaper to handle) or either side does not parse.
pub fn diff(base: &[u8], new: &[u8], max_inserted: usize) -> Option<Vec<pb::DeltaPart>> {
    let base_fields = fields(base).ok()?;
    let new_fields = fields(new).ok()?;
    // Each distinct field of the base by its bytes (the first, should two be equal: either
    // rebuilds the same bytes).
    let mut index: HashMap<&[u8], u32> = HashMap::with_capacity(base_fields.len());
    for (i, field) in (0u32..).zip(&base_fields) {
        index.entry(&base[field.span.clone()]).or_insert(i);
    }
    let mut parts: Vec<pb::DeltaPart> = Vec::new();
    let mut inserted = 0usize;
    for field in new_fields {
        let bytes = &new[field.span];
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
    Ok(Base::of_content(base)?.pieces(parts)?.concat())
}

/// The snapshot a delta describes, as if its chunks had been received: `base` is the encoded
/// `VersionedSnapshot` the delta was made against (a proxy's state file). Not verified here: the
/// apply checks the rebuilt content against `delta.version`, like any received snapshot.
pub fn rebuild(delta: &pb::SnapshotDelta, base: &[u8]) -> Result<Reassembled, String> {
    Base::of(base)?.rebuild(delta)
}

/// The snapshot a delta is made against, split into its top-level fields once: for the rebuild,
/// and for the changes a proxy patches its table with.
pub struct Base<'a> {
    content: &'a [u8],
    fields: Vec<Field>,
}

impl<'a> Base<'a> {
    /// `versioned`: the encoded `VersionedSnapshot` held (a proxy's state file).
    pub fn of(versioned: &'a [u8]) -> Result<Self, String> {
        Self::of_content(chunk::content(versioned)?)
    }

    fn of_content(content: &'a [u8]) -> Result<Self, String> {
        Ok(Self {
            content,
            fields: fields(content).map_err(|e| format!("base snapshot: {e}"))?,
        })
    }

    /// The snapshot `delta` describes: see [`rebuild`].
    pub fn rebuild(&self, delta: &pb::SnapshotDelta) -> Result<Reassembled, String> {
        // Written once, straight into the encoded `VersionedSnapshot`.
        let pieces = self.pieces(&delta.parts)?;
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

    /// The routers and services `parts` change (see [`changes::of_delta`]): what
    /// [`changes::between`] finds by comparing the base with the rebuilt content, read from the
    /// parts instead. Meaningful only once the rebuilt content has been verified.
    pub fn changes(&self, parts: &[pb::DeltaPart], max_changed: usize) -> Option<Changes> {
        changes::of_delta(self.content, &self.fields, parts, max_changed)
    }

    /// The slices of the base and of `parts` whose concatenation is the content `parts` describe.
    fn pieces<'p>(&self, parts: &'p [pb::DeltaPart]) -> Result<Vec<&'p [u8]>, String>
    where
        'a: 'p,
    {
        let mut out = Vec::with_capacity(parts.len());
        for (n, part) in parts.iter().enumerate() {
            match &part.kind {
                Some(Kind::Copy(run)) => {
                    let Some(range) = run_fields(run, self.fields.len()) else {
                        return Err(format!(
                            "delta part {n} copies fields {}..+{} of a base that has {}",
                            run.start,
                            run.count,
                            self.fields.len()
                        ));
                    };
                    // A run of fields is one range of the base: fields are contiguous.
                    let (first, last) = (&self.fields[range.start], &self.fields[range.end - 1]);
                    out.push(&self.content[first.span.start..last.span.end]);
                }
                Some(Kind::Insert(bytes)) => out.push(bytes.as_slice()),
                None => return Err(format!("delta part {n} is empty")),
            }
        }
        Ok(out)
    }
}

/// The indices of the base's fields a copy part names, when it names at least one and all exist
/// among `len`.
pub(crate) fn run_fields(run: &pb::FieldRun, len: usize) -> Option<Range<usize>> {
    let start = usize::try_from(run.start).ok()?;
    let end = start.checked_add(usize::try_from(run.count).ok()?)?;
    (start < end && end <= len).then_some(start..end)
}

/// One top-level field of an encoded message: its number and its bytes' range, key included.
pub(crate) struct Field {
    pub(crate) number: u32,
    pub(crate) span: Range<usize>,
}

/// Every top-level field of an encoded message, in order.
fn fields(bytes: &[u8]) -> Result<Vec<Field>, String> {
    // A router or service takes ~90 bytes: room for all without regrowing, dropped after use.
    let mut out = Vec::with_capacity(bytes.len() / 64);
    let mut walk = wire::fields(bytes);
    let mut start = 0;
    while let Some(field) = walk.next() {
        let (number, _) = field?;
        let end = bytes.len() - walk.remaining();
        out.push(Field {
            number,
            span: start..end,
        });
        start = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
