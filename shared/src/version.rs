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
}
