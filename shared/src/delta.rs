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
///
/// Each field of `new` is copied from a field of `base` with the same bytes when there is one.
/// Consecutive snapshots share most fields in the same order, so the field after the last one
/// copied is tried first; the others are searched for one by one while they are few, and only
/// many of them (a reordered or much changed snapshot) are worth a map of the base's fields by
/// their bytes, which hashes all of them.
pub fn diff(base: &[u8], new: &[u8], max_inserted: usize) -> Option<Vec<pb::DeltaPart>> {
    let base_fields = Index::of(base).ok()?.fields;
    let new_fields = Index::of(new).ok()?.fields;
    let bytes_of = |i: usize| &base[base_fields[i].span()];
    let mut finder = Finder::Scan { left: SCANS };
    let mut parts: Vec<pb::DeltaPart> = Vec::new();
    let mut inserted = 0usize;
    // The base field after the last one copied.
    let mut next = 0usize;
    for field in new_fields {
        let bytes = &new[field.span()];
        let found = if next < base_fields.len() && bytes_of(next) == bytes {
            Some(next)
        } else {
            finder.find(bytes, base_fields.len(), bytes_of)
        };
        match (found, parts.last_mut().and_then(|p| p.kind.as_mut())) {
            (Some(i), last) => {
                next = i + 1;
                let i = u32::try_from(i).ok()?;
                match last {
                    Some(Kind::Copy(run)) if run.start + run.count == i => run.count += 1,
                    _ => parts.push(pb::DeltaPart {
                        kind: Some(Kind::Copy(pb::FieldRun { start: i, count: 1 })),
                    }),
                }
            }
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

/// Fields of a new snapshot searched for in its base by scanning the base before a map of the
/// base's fields is made: a scan compares lengths first and costs ~20 000 comparisons at
/// 10 000 routers, the map hashes every byte of the base.
const SCANS: usize = 16;

/// How [`diff`] finds a field of the base by its bytes.
enum Finder<'b> {
    /// Scanning, `left` more times.
    Scan { left: usize },
    /// Each distinct field's bytes to its first index.
    Map(HashMap<&'b [u8], usize>),
}

impl<'b> Finder<'b> {
    /// The first of the base's `count` fields (`bytes_of`) that is `bytes`.
    fn find(
        &mut self,
        bytes: &[u8],
        count: usize,
        bytes_of: impl Fn(usize) -> &'b [u8],
    ) -> Option<usize> {
        match self {
            Finder::Scan { left } if *left > 0 => {
                *left -= 1;
                (0..count).find(|&i| bytes_of(i) == bytes)
            }
            Finder::Scan { .. } => {
                let mut map = HashMap::with_capacity(count);
                for i in 0..count {
                    map.entry(bytes_of(i)).or_insert(i);
                }
                let found = map.get(bytes).copied();
                *self = Finder::Map(map);
                found
            }
            Finder::Map(map) => map.get(bytes).copied(),
        }
    }
}

/// The content `parts` describe, rebuilt from `base`. Errors name the part that does not fit.
pub fn apply(base: &[u8], parts: &[pb::DeltaPart]) -> Result<Vec<u8>, String> {
    Ok(Base::of_content(base, None)?.pieces(parts)?.0.concat())
}

/// The snapshot a delta describes, as if its chunks had been received: `base` is the encoded
/// `VersionedSnapshot` the delta was made against (a proxy's state file). Not verified here (see
/// [`Rebuild::check`]).
pub fn rebuild(delta: &pb::SnapshotDelta, base: &[u8]) -> Result<Reassembled, String> {
    Ok(Base::of(base, None)?.rebuild(delta)?.snapshot)
}

/// The snapshot a delta is made against, split into its top-level fields once: for the rebuild,
/// and for the changes a proxy patches its table with.
pub struct Base<'a> {
    content: &'a [u8],
    index: Index,
}

impl<'a> Base<'a> {
    /// `versioned`: the encoded `VersionedSnapshot` held (a proxy's state file). `kept`: its
    /// index, as the rebuild that made it gave it ([`Rebuild::index`]); without one (or with one
    /// that does not span this content, never used then) the content is walked.
    pub fn of(versioned: &'a [u8], kept: Option<Index>) -> Result<Self, String> {
        Self::of_content(chunk::content(versioned)?, kept)
    }

    fn of_content(content: &'a [u8], kept: Option<Index>) -> Result<Self, String> {
        let index = match kept {
            Some(index) if index.spans(content) => index,
            _ => Index::of(content).map_err(|e| format!("base snapshot: {e}"))?,
        };
        Ok(Self { content, index })
    }

    /// The snapshot `delta` describes (see [`rebuild`]), and its index.
    pub fn rebuild(&self, delta: &pb::SnapshotDelta) -> Result<Rebuild, String> {
        // Written once, straight into the encoded `VersionedSnapshot`.
        let (pieces, index) = self.pieces(&delta.parts)?;
        let header = pb::VersionedSnapshot {
            version: delta.version.clone(),
            generation: delta.generation,
            created_at_unix_ms: delta.created_at_unix_ms,
            snapshot: None,
        };
        Ok(Rebuild {
            snapshot: Reassembled {
                version: delta.version.clone(),
                bytes: chunk::encode_with_pieces(&header, &pieces),
            },
            index,
            content_xxh3: delta.content_xxh3,
        })
    }

    /// The routers and services `parts` change (see [`changes::of_delta`]): what
    /// [`changes::between`] finds by comparing the base with the rebuilt content, read from the
    /// parts instead. Meaningful only once the rebuilt content has been verified.
    pub fn changes(&self, parts: &[pb::DeltaPart], max_changed: usize) -> Option<Changes> {
        changes::of_delta(self.content, &self.index.fields, parts, max_changed)
    }

    /// The slices of the base and of `parts` whose concatenation is the content `parts` describe,
    /// and that content's index: a copied field keeps its number and length, an inserted one is
    /// walked (it is only what changed).
    fn pieces<'p>(&self, parts: &'p [pb::DeltaPart]) -> Result<(Vec<&'p [u8]>, Index), String>
    where
        'a: 'p,
    {
        let base = &self.index.fields;
        let mut out = Vec::with_capacity(parts.len());
        let mut index = Vec::with_capacity(base.len() + 16);
        let mut at = 0usize;
        for (n, part) in parts.iter().enumerate() {
            let piece = match &part.kind {
                Some(Kind::Copy(run)) => {
                    let Some(range) = run_fields(run, base.len()) else {
                        return Err(format!(
                            "delta part {n} copies fields {}..+{} of a base that has {}",
                            run.start,
                            run.count,
                            base.len()
                        ));
                    };
                    // A run of fields is one range of the base: fields are contiguous.
                    let (first, last) = (&base[range.start], &base[range.end - 1]);
                    let piece = &self.content[first.span().start..last.span().end];
                    for field in &base[range] {
                        let span = field.span();
                        let start = at + (span.start - first.span().start);
                        index.push(Field::new(field.number, start..start + span.len())?);
                    }
                    piece
                }
                Some(Kind::Insert(bytes)) => {
                    walk(bytes, at, &mut index)
                        .map_err(|e| format!("delta part {n} inserts {e}"))?;
                    bytes.as_slice()
                }
                None => return Err(format!("delta part {n} is empty")),
            };
            at += piece.len();
            out.push(piece);
        }
        Ok((out, Index { fields: index }))
    }
}

/// A snapshot rebuilt from a delta ([`Base::rebuild`]), not verified yet ([`Rebuild::check`]).
pub struct Rebuild {
    pub snapshot: Reassembled,
    /// The index of its content, for the next delta's [`Base::of`].
    pub index: Index,
    /// The delta's quick check of the content, when it carried one.
    pub content_xxh3: Option<u64>,
}

impl Rebuild {
    /// Checks the rebuilt content: against the delta's quick check when it carried one
    /// ([`chunk::check_quick`]), else against the version ([`chunk::check`]).
    pub fn check(&self) -> Result<chunk::Checked, String> {
        let Reassembled { version, bytes } = &self.snapshot;
        match self.content_xxh3 {
            Some(quick) => chunk::check_quick(version, quick, bytes),
            None => chunk::check(version, bytes),
        }
    }
}

/// The top-level fields of a snapshot's content (every router, service, middleware… is one): each
/// one's number and where its bytes lie. Walking a base for it takes longer than the rest of a
/// one-router delta's rebuild short of the hash; a rebuild gives the next base's index without a
/// walk, so a proxy applying change after change keeps it (12 bytes a field: ~0.6 MB at 50 000
/// routers) and walks nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    fields: Vec<Field>,
}

impl Index {
    /// Walks `content`, an encoded `Snapshot`.
    pub fn of(content: &[u8]) -> Result<Self, String> {
        // A router or service takes ~90 bytes: room for all without regrowing.
        let mut fields = Vec::with_capacity(content.len() / 64);
        walk(content, 0, &mut fields)?;
        Ok(Self { fields })
    }

    /// Whether these fields, one after another, are exactly `content`'s length: an index made for
    /// other content is never used (and could not point outside this one).
    fn spans(&self, content: &[u8]) -> bool {
        self.fields.last().map_or(0, |f| f.span().end) == content.len()
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) number: u32,
    start: u32,
    end: u32,
}

impl Field {
    fn new(number: u32, span: Range<usize>) -> Result<Self, String> {
        match (u32::try_from(span.start), u32::try_from(span.end)) {
            (Ok(start), Ok(end)) => Ok(Self { number, start, end }),
            _ => Err("a snapshot over 4 GiB".to_owned()),
        }
    }

    pub(crate) fn span(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// Appends the top-level fields of `bytes` to `out`, their ranges offset by `at`.
fn walk(bytes: &[u8], at: usize, out: &mut Vec<Field>) -> Result<(), String> {
    let mut fields = wire::fields(bytes);
    let mut start = 0;
    while let Some(field) = fields.next() {
        let (number, _) = field?;
        let end = bytes.len() - fields.remaining();
        out.push(Field::new(number, at + start..at + end)?);
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
