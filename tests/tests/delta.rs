//! Guarantee: a proxy that holds the controller's previous snapshot is sent a change as a delta,
//! rebuilds the new snapshot from its state file, checks it against the announced version,
//! persists and serves it (a restart serves it from disk); a proxy that cannot rebuild it (its
//! state file damaged) asks for the snapshot whole (`Resync`) and is sent it, without a NACK.

use switchyard_tests::harness::{DEADLINE, Fleet, ProxyNode};

fn app_yaml(backend: &str) -> String {
    format!(
        "http:\n  routers:\n    app:\n      rule: Host(`app.test`)\n      service: app\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: {backend}\n"
    )
}

/// Once the fleet holds one version, served by `p`: that version, and `p`'s counts of snapshots
/// received, deltas received, resyncs asked for and NACKs sent, with its whole status for
/// messages.
async fn converged_counts(fleet: &Fleet, p: &ProxyNode) -> (String, (u64, u64, u64, u64), String) {
    let version = fleet.converged(&["p"], DEADLINE).await;
    let status = p.status().await.unwrap();
    assert_eq!(status.version, version, "{status:?}");
    let counts = (
        status.snapshots_received,
        status.deltas_received,
        status.resyncs_requested,
        status.nacks_sent,
    );
    (version, counts, format!("{status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_travel_as_deltas_and_a_damaged_base_is_sent_whole() {
    let fleet = Fleet::new("delta");
    let a = fleet.echo("a").await;
    let b = fleet.echo("b").await;
    fleet.write_dynamic("app.yml", &app_yaml(&a.url()));
    let _controller = fleet.controller();
    let mut p = fleet.proxy("p");
    let (v1, counts, status) = converged_counts(&fleet, &p).await;
    p.serves("app.test", "a").await.unwrap();
    assert_eq!(
        counts,
        (1, 0, 0, 0),
        "the first snapshot goes whole: {status}"
    );

    // A change: sent as a delta of v1, applied, acknowledged.
    fleet.write_dynamic("app.yml", &app_yaml(&b.url()));
    fleet
        .eventually("the proxy serves b", DEADLINE, || p.serves("app.test", "b"))
        .await;
    let (v2, counts, status) = converged_counts(&fleet, &p).await;
    assert_ne!(v1, v2);
    assert_eq!(counts, (2, 1, 0, 0), "{status}");

    // A second change: its base is the snapshot the first delta rebuilt, whose fields the proxy
    // kept from that rebuild instead of walking it again. Wrong fields would rebuild content
    // that fails its version, and the proxy would ask for the snapshot whole.
    fleet.write_dynamic(
        "api.yml",
        "http:\n  routers:\n    api:\n      rule: Host(`api.test`)\n      service: app@file\n",
    );
    fleet
        .eventually("the proxy serves api.test", DEADLINE, || {
            p.serves("api.test", "b")
        })
        .await;
    let (v2, counts, status) = converged_counts(&fleet, &p).await;
    assert_eq!(counts, (3, 2, 0, 0), "{status}");

    // What the delta rebuilt was persisted: a restarted proxy serves v2 from its state dir and
    // the controller only confirms it holds the current version.
    p.restart();
    fleet
        .eventually("the restarted proxy serves b", DEADLINE, || {
            p.serves("app.test", "b")
        })
        .await;
    let status = fleet
        .eventually("the restarted proxy is connected", DEADLINE, || async {
            let s = p.status().await?;
            if s.controller_connected {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
    assert_eq!(status.version, v2, "{status:?}");
    assert_eq!(status.snapshots_received, 0, "{status:?}");

    // The base damaged on disk: the delta cannot be rebuilt; the proxy asks for the snapshot
    // whole, applies it, and rejects nothing.
    let current = p.state_dir.join("snapshot.current");
    let mut bytes = std::fs::read(&current).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle - 2..middle + 2] {
        *byte ^= 0x5a;
    }
    std::fs::write(&current, bytes).unwrap();
    fleet.write_dynamic("app.yml", &app_yaml(&format!("{}/", a.url())));
    fleet
        .eventually("the proxy serves a again", DEADLINE, || {
            p.serves("app.test", "a")
        })
        .await;
    let (v3, counts, status) = converged_counts(&fleet, &p).await;
    assert_eq!(
        counts,
        (2, 1, 1, 0),
        "one delta that could not be rebuilt, then the snapshot whole: {status}"
    );
    let entry = fleet.proxy_entry("p").await.unwrap();
    assert_eq!(entry.acked_version, v3, "{entry:?}");
    assert!(entry.last_nack_version.is_empty(), "{entry:?}");
}
