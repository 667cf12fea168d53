//! The fleet registry: what the controller knows about every proxy that ever subscribed (node id,
//! peer, connection, ACKed version, last NACK). O(proxies) memory; snapshots are shared, never
//! copied per proxy.

use std::{collections::BTreeMap, sync::Mutex};

use switchyard_shared::{pb, time::now_unix_ms};

#[derive(Clone, Debug, Default)]
struct Record {
    peer: String,
    build_info: String,
    /// Identifies the live stream; a newer stream for the same node supersedes older ones.
    session: u64,
    connected: bool,
    connected_since_unix_ms: i64,
    last_seen_unix_ms: i64,
    acked_version: String,
    acked_at_unix_ms: i64,
    last_nack: Option<(String, String, i64)>,
    snapshots_sent: u64,
}

/// Per-proxy status, shared by every stream and the operator RPCs.
#[derive(Debug, Default)]
pub struct Fleet {
    records: Mutex<BTreeMap<String, Record>>,
    next_session: Mutex<u64>,
}

impl Fleet {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Record>) -> R) -> R {
        let mut guard = self.records.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Registers a new stream for `node_id` and returns its session number.
    pub fn connect(&self, node_id: &str, peer: String, build_info: String, held: &str) -> u64 {
        let session = {
            let mut next = self.next_session.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        let now = now_unix_ms();
        self.with(|records| {
            let r = records.entry(node_id.to_owned()).or_default();
            r.peer = peer;
            r.build_info = build_info;
            r.session = session;
            r.connected = true;
            r.connected_since_unix_ms = now;
            r.last_seen_unix_ms = now;
            if !held.is_empty() {
                // The proxy tells us what it serves; that is its applied version.
                if r.acked_version != held {
                    r.acked_version = held.to_owned();
                    r.acked_at_unix_ms = now;
                }
            }
        });
        session
    }

    /// Marks the stream gone, unless a newer stream for the node already took over.
    pub fn disconnect(&self, node_id: &str, session: u64) {
        self.with(|records| {
            if let Some(r) = records.get_mut(node_id)
                && r.session == session
            {
                r.connected = false;
                r.last_seen_unix_ms = now_unix_ms();
            }
        });
    }

    pub fn sent(&self, node_id: &str) {
        self.with(|records| {
            if let Some(r) = records.get_mut(node_id) {
                r.snapshots_sent += 1;
            }
        });
    }

    pub fn ack(&self, node_id: &str, version: &str) {
        let now = now_unix_ms();
        self.with(|records| {
            if let Some(r) = records.get_mut(node_id) {
                r.acked_version = version.to_owned();
                r.acked_at_unix_ms = now;
                r.last_seen_unix_ms = now;
            }
        });
    }

    pub fn nack(&self, node_id: &str, version: &str, error: &str) {
        let now = now_unix_ms();
        self.with(|records| {
            if let Some(r) = records.get_mut(node_id) {
                r.last_nack = Some((version.to_owned(), error.to_owned(), now));
                r.last_seen_unix_ms = now;
            }
        });
    }

    /// Every proxy, sorted by node id.
    pub fn list(&self) -> Vec<pb::ProxyStatus> {
        self.with(|records| {
            records
                .iter()
                .map(|(node_id, r)| {
                    let (nack_version, nack_error, nack_at) =
                        r.last_nack.clone().unwrap_or_default();
                    pb::ProxyStatus {
                        node_id: node_id.clone(),
                        peer: r.peer.clone(),
                        connected: r.connected,
                        connected_since_unix_ms: r.connected_since_unix_ms,
                        last_seen_unix_ms: r.last_seen_unix_ms,
                        acked_version: r.acked_version.clone(),
                        acked_at_unix_ms: r.acked_at_unix_ms,
                        last_nack_version: nack_version,
                        last_nack_error: nack_error,
                        last_nack_at_unix_ms: nack_at,
                        build_info: r.build_info.clone(),
                        snapshots_sent: r.snapshots_sent,
                    }
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_session_survives_old_disconnect() {
        let fleet = Fleet::default();
        let old = fleet.connect("p1", "a".into(), String::new(), "");
        let new = fleet.connect("p1", "b".into(), String::new(), "v1");
        fleet.disconnect("p1", old);
        let list = fleet.list();
        assert!(list[0].connected);
        assert_eq!(list[0].acked_version, "v1");
        fleet.disconnect("p1", new);
        assert!(!fleet.list()[0].connected);
    }

    #[test]
    fn nack_is_recorded_without_changing_ack() {
        let fleet = Fleet::default();
        fleet.connect("p1", "a".into(), String::new(), "");
        fleet.ack("p1", "v1");
        fleet.nack("p1", "v2", "bind failed");
        let p = &fleet.list()[0];
        assert_eq!(p.acked_version, "v1");
        assert_eq!(p.last_nack_version, "v2");
        assert_eq!(p.last_nack_error, "bind failed");
    }
}
