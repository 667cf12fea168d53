//! Snapshot identity: a content hash of the encoded snapshot. Same inputs give the same bytes
//! (the compiler sorts everything and the proto has no maps), hence the same version on every
//! controller and across restarts.

use prost::Message;
use sha2::{Digest, Sha256};

use crate::pb;

/// Number of hex characters kept from the SHA-256 of the encoded snapshot.
pub const VERSION_LEN: usize = 16;

/// `hex(sha256(encoded snapshot))[..16]`.
pub fn snapshot_version(snapshot: &pb::Snapshot) -> String {
    encoded_version(&snapshot.encode_to_vec())
}

/// The version of an already encoded `Snapshot`.
pub fn encoded_version(encoded: &[u8]) -> String {
    let digest = Sha256::digest(encoded);
    let mut text = hex::encode(digest);
    text.truncate(VERSION_LEN);
    text
}

/// The quick check of an encoded `Snapshot` a delta carries (`SnapshotDelta.content_xxh3`):
/// XXH3-64 with seed 0, ~25 GB/s against SHA-256's ~1.8 with the CPU's SHA instructions. It
/// identifies nothing (the version does); it tells a proxy that the content it rebuilt is the
/// content the controller hashed the version from.
pub fn content_check(encoded: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_same_version() {
        let a = pb::Snapshot {
            entry_points: vec![pb::EntryPoint {
                name: "web".into(),
                address: ":80".into(),
                redirect: None,
            }],
            ..Default::default()
        };
        let b = a.clone();
        assert_eq!(snapshot_version(&a), snapshot_version(&b));
        assert_eq!(snapshot_version(&a).len(), VERSION_LEN);
        let mut c = a.clone();
        c.entry_points[0].address = ":81".into();
        assert_ne!(snapshot_version(&a), snapshot_version(&c));
    }

    #[test]
    fn the_content_check_is_xxh3_of_the_bytes() {
        // The reference values of XXH3-64 (seed 0): proxies and controllers of any build agree.
        assert_eq!(content_check(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(content_check(b"a"), 0xe6c6_32b6_1e96_4e1f);
        assert_ne!(content_check(b"ab"), content_check(b"ba"));
    }
}
