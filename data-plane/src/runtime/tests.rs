//! A proxy's side of a delta: the base it reads back from its state file, and the check of what
//! it rebuilds.

use std::path::PathBuf;

use switchyard_shared::{
    drain,
    snapshot::{LoadBalancer, Router, Server, Service, ServiceKind},
    version::{content_check, encoded_version},
};

use super::*;

/// Services `s0..` on the given ports, nothing else: a table needs no listener for them.
fn content(ports: &[u16]) -> Vec<u8> {
    Snapshot::<Router> {
        services: (0..)
            .zip(ports)
            .map(|(i, port): (u32, _)| Service {
                name: format!("s{i}@file"),
                kind: ServiceKind::LoadBalancer(LoadBalancer {
                    servers: vec![Server {
                        url: format!("http://127.0.0.1:{port}"),
                        weight: 1,
                    }],
                    pass_host_header: true,
                }),
            })
            .collect(),
        ..Default::default()
    }
    .encode()
}

/// `content` as the controller sends it whole: an encoded `VersionedSnapshot`.
fn versioned(content: &[u8], generation: u64) -> Reassembled {
    let header = pb::VersionedSnapshot {
        version: encoded_version(content),
        generation,
        created_at_unix_ms: 1_700_000_000_000,
        snapshot: None,
    };
    Reassembled {
        version: header.version.clone(),
        bytes: chunk::encode_with_content(&header, content),
    }
}

fn delta_between(old: &[u8], new: &[u8], quick: Option<u64>) -> pb::SnapshotDelta {
    pb::SnapshotDelta {
        base_version: encoded_version(old),
        version: encoded_version(new),
        generation: 2,
        created_at_unix_ms: 1_700_000_000_001,
        parts: delta::diff(old, new, usize::MAX).expect("both parse"),
        content_xxh3: quick,
    }
}

fn runtime(dir: &std::path::Path) -> Runtime {
    let table = Arc::new(ArcSwap::from_pointee(Table::default()));
    let (_signal, watch) = drain::channel();
    let listeners = Listeners::serving(&table, watch);
    let store = Store::open(dir).expect("state dir");
    Runtime::new("test".into(), table, store, BTreeMap::new(), listeners).expect("runtime threads")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sy-runtime-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn a_delta_is_rebuilt_from_the_state_file_and_checked_against_its_quick_check() {
    let dir = temp_dir("delta");
    let runtime = runtime(&dir);
    let (a, b) = (content(&[8001, 8002, 8003]), content(&[8001, 8012, 8003]));
    runtime
        .apply_received(versioned(&a, 1))
        .await
        .expect("the first snapshot applies");
    assert_eq!(runtime.version(), encoded_version(&a));

    // Rebuilt from the state file, checked against the delta's quick check, and applied.
    let good = delta_between(&a, &b, Some(content_check(&b)));
    let rebuilt = runtime.rebuild_delta(good.clone()).await.expect("rebuilds");
    assert_eq!(rebuilt.received.version, encoded_version(&b));
    assert_eq!(
        &rebuilt.received.bytes[rebuilt.checked.content.clone()],
        b.as_slice()
    );

    // A quick check that is not the content's: refused (the proxy asks for it whole).
    let wrong = delta_between(&a, &b, Some(content_check(&b) ^ 1));
    let err = runtime.rebuild_delta(wrong).await.err().expect("refused");
    assert!(err.contains("does not match its content"), "{err}");

    // Without one (an older controller), the rebuild is checked against the version.
    let mut unchecked = delta_between(&a, &b, None);
    let rebuilt = runtime
        .rebuild_delta(unchecked.clone())
        .await
        .expect("rebuilds");
    assert_eq!(rebuilt.received.version, encoded_version(&b));
    unchecked.version = encoded_version(&a);
    let err = runtime
        .rebuild_delta(unchecked)
        .await
        .err()
        .expect("refused");
    assert!(err.contains("hashes to"), "{err}");

    // A state file that holds another snapshot than the one served is not a base, whatever it
    // holds (here a whole, valid snapshot).
    let other = content(&[9001]);
    runtime
        .store
        .save_encoded(&versioned(&other, 7).bytes)
        .expect("saved");
    let err = runtime.rebuild_delta(good).await.err().expect("refused");
    assert_eq!(
        err,
        format!(
            "the state file holds snapshot {}, not {}, the one served",
            encoded_version(&other),
            encoded_version(&a)
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}
