//! Walking the top-level fields of an encoded protobuf message without decoding it: how a proxy
//! finds the content it hashes inside a `VersionedSnapshot`, and how a snapshot is decoded one
//! list element at a time ([`crate::snapshot::Snapshot::decode`]).

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
        let key = self
            .varint()
            .ok_or("a field key is truncated or too long")?;
        let field = u32::try_from(key >> 3)
            .ok()
            .filter(|f| (1..=MAX_FIELD).contains(f))
            .ok_or_else(|| format!("invalid field number {}", key >> 3))?;
        let value = match key & 7 {
            0 => Value::Varint(
                self.varint()
                    .ok_or_else(|| format!("field {field}: invalid varint"))?,
            ),
            2 => {
                let len = self
                    .varint()
                    .ok_or_else(|| format!("field {field}: invalid length"))?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= self.rest.len())
                    .ok_or_else(|| format!("field {field} is truncated"))?;
                let (value, rest) = self.rest.split_at(len);
                self.rest = rest;
                Value::Bytes(value)
            }
            1 => {
                self.skip(8, field)?;
                Value::Fixed64
            }
            5 => {
                self.skip(4, field)?;
                Value::Fixed32
            }
            other => return Err(format!("field {field}: unexpected wire type {other}")),
        };
        Ok((field, value))
    }

    /// A base-128 varint, at most 10 bytes (a snapshot walk reads two per field: the key and the
    /// length; most are one byte).
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, &byte) in self.rest.iter().take(10).enumerate() {
            if i == 9 && byte > 1 {
                return None; // beyond 64 bits
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                self.rest = &self.rest[i + 1..];
                return Some(value);
            }
        }
        None
    }

    fn skip(&mut self, len: usize, field: u32) -> Result<(), String> {
        self.rest = self
            .rest
            .get(len..)
            .ok_or_else(|| format!("field {field} is truncated"))?;
        Ok(())
    }
}

/// The largest field number protobuf allows.
const MAX_FIELD: u32 = (1 << 29) - 1;

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

    proptest::proptest! {
        /// Varints of every length (a negative `int64` takes ten bytes) and field numbers past
        /// one byte of key read back as prost wrote them.
        #[test]
        fn walks_what_prost_encodes(generation: u64, created: i64, version in ".{0,200}") {
            let message = pb::VersionedSnapshot {
                version: version.clone(),
                generation,
                created_at_unix_ms: created,
                snapshot: None,
            };
            let mut bytes = message.encode_to_vec();
            // Field 1000 (a two-byte key), length-delimited, after the known ones.
            bytes.extend_from_slice(&[0xc2, 0x3e, 3, b'a', b'b', b'c']);
            let walked: Vec<_> = fields(&bytes).collect::<Result<_, _>>().expect("well formed");
            let mut expected = Vec::new();
            if !version.is_empty() {
                expected.push((1, Value::Bytes(version.as_bytes())));
            }
            if generation != 0 {
                expected.push((2, Value::Varint(generation)));
            }
            if created != 0 {
                expected.push((3, Value::Varint(created as u64)));
            }
            expected.push((1000, Value::Bytes(b"abc")));
            proptest::prop_assert_eq!(walked, expected);
        }
    }

    #[test]
    fn malformed_keys_and_varints_are_errors() {
        for bytes in [
            &[0x80u8][..], // key cut short
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ], // > 64 bits
            &[0x00, 0x00], // field number 0
            &[0x0b],       // wire type 3 (groups)
            &[0x09, 1, 2, 3], // fixed64 cut short
        ] {
            let walked: Vec<_> = fields(bytes).collect();
            assert_eq!(walked.len(), 1, "{bytes:?}");
            assert!(walked[0].is_err(), "{bytes:?}");
        }
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
