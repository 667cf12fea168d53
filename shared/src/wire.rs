//! Walking the top-level fields of an encoded protobuf message without decoding it: how a proxy
//! finds the content it hashes inside a `VersionedSnapshot`, and how a snapshot is decoded one
//! list element at a time ([`crate::snapshot::Snapshot::decode`]).

use prost::encoding::{WireType, decode_key, decode_varint};

/// One field's value as it is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Varint(u64),
    /// A length-delimited value: a string, bytes, or a nested message.
    Bytes(&'a [u8]),
    Fixed64,
    Fixed32,
}

/// The `(field number, value)` pairs of an encoded message, in order. A malformed field ends the
/// walk with an error naming it.
pub(crate) fn fields(bytes: &[u8]) -> Fields<'_> {
    Fields { rest: bytes }
}

pub(crate) struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    /// How many bytes are left to walk.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn next_field(&mut self) -> Result<(u32, Value<'a>), String> {
        let (field, wire_type) = decode_key(&mut self.rest).map_err(|e| e.to_string())?;
        let value = match wire_type {
            WireType::Varint => Value::Varint(
                decode_varint(&mut self.rest).map_err(|e| format!("field {field}: {e}"))?,
            ),
            WireType::LengthDelimited => {
                let len =
                    decode_varint(&mut self.rest).map_err(|e| format!("field {field}: {e}"))?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= self.rest.len())
                    .ok_or_else(|| format!("field {field} is truncated"))?;
                let (value, rest) = self.rest.split_at(len);
                self.rest = rest;
                Value::Bytes(value)
            }
            WireType::SixtyFourBit => {
                self.rest = self
                    .rest
                    .get(8..)
                    .ok_or_else(|| format!("field {field} is truncated"))?;
                Value::Fixed64
            }
            WireType::ThirtyTwoBit => {
                self.rest = self
                    .rest
                    .get(4..)
                    .ok_or_else(|| format!("field {field} is truncated"))?;
                Value::Fixed32
            }
            other => return Err(format!("field {field}: unexpected wire type {other:?}")),
        };
        Ok((field, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.next_field();
        if field.is_err() {
            // Nothing after a malformed field can be trusted.
            self.rest = &[];
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::pb;

    #[test]
    fn walks_the_fields_of_a_message_in_order() {
        let message = pb::VersionedSnapshot {
            version: "abc".into(),
            generation: 7,
            created_at_unix_ms: 0,
            snapshot: Some(pb::Snapshot::default()),
        };
        let bytes = message.encode_to_vec();
        let walked: Vec<_> = fields(&bytes)
            .collect::<Result<_, _>>()
            .expect("well formed");
        assert_eq!(
            walked,
            vec![
                (1, Value::Bytes(b"abc")),
                (2, Value::Varint(7)),
                (4, Value::Bytes(&[])),
            ]
        );
    }

    #[test]
    fn a_truncated_field_is_an_error_and_ends_the_walk() {
        let bytes = pb::Router {
            name: "web@file".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let cut = &bytes[..bytes.len() - 1];
        let walked: Vec<_> = fields(cut).collect();
        assert_eq!(walked.len(), 1);
        assert!(
            walked[0]
                .as_ref()
                .unwrap_err()
                .contains("field 1 is truncated")
        );
    }
}
