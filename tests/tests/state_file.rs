//! Guarantee: a proxy's state dir keeps two generations (`snapshot.current`, `snapshot.previous`),
//! private to its user; a corrupt generation is detected (checksum), reported over
//! `GetStatus.state_error`, and never served — the proxy falls back to the previous generation, or
//! serves nothing until a controller comes back.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use switchyard_shared::pb;
use switchyard_tests::harness::{DEADLINE, Echo, Fleet, Process, ProxyNode, RECONNECT_DEADLINE};

const CURRENT: &str = "snapshot.current";
const PREVIOUS: &str = "snapshot.previous";

fn app_yaml(backend: &str) -> String {
    format!(
        "http:\n  routers:\n    app:\n      rule: Host(`app.test`)\n      service: app\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: {backend}\n"
    )
}

/// Flips bytes in the middle of `path` (a length-preserving corruption that only a checksum or a
/// decoder can notice).
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("cannot read {} to corrupt it: {e}", path.display()));
    assert!(bytes.len() >= 8, "{} is suspiciously small", path.display());
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle - 2..middle + 2] {
        *b ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

/// `GetStatus.state_error` says what was wrong with the state files (proxy_admin.proto):
/// a controller that cannot be reached is not such an error and must not overwrite the report.
fn mentions_corruption(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("checksum") || e.contains("corrupt")
}

struct TwoGenerations {
    fleet: Fleet,
    controller: Process,
    proxy: ProxyNode,
    a: Echo,
    b: Echo,
    /// Served by backend `a`, then `b`.
    v1: String,
    v2: String,
}

/// A proxy that applied `v1` (backend a) then `v2` (backend b), then the controller and the proxy
/// both killed: the state dir holds `current` = v2 and `previous` = v1.
async fn two_generations(tag: &str) -> TwoGenerations {
    let fleet = Fleet::new(tag);
    let a = fleet.echo("a").await;
    let b = fleet.echo("b").await;
    fleet.write_dynamic("app.yml", &app_yaml(&a.url()));
    let mut controller = fleet.controller();
    let mut proxy = fleet.proxy("p");
    let v1 = fleet.converged(&["p"], DEADLINE).await;
    proxy.serves("app.test", "a").await.unwrap();
    fleet.write_dynamic("app.yml", &app_yaml(&b.url()));
    fleet
        .eventually("the proxy serves b", DEADLINE, || {
            proxy.serves("app.test", "b")
        })
        .await;
    let v2 = fleet.converged(&["p"], DEADLINE).await;
    assert_ne!(v1, v2);

    controller.kill9();
    proxy.kill9();
    for name in [CURRENT, PREVIOUS] {
        let path = proxy.state_dir.join(name);
        let meta = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{} after two generations: {e}", path.display()));
        assert_eq!(
            meta.permissions().mode() & 0o077,
            0,
            "{} must be private to its user (0600): {:o}",
            path.display(),
            meta.permissions().mode()
        );
    }
    TwoGenerations {
        fleet,
        controller,
        proxy,
        a,
        b,
        v1,
        v2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_current_generation_is_reported_and_the_previous_one_served() {
    // Bind every field: an unbound one would be dropped here, killing its process.
    let TwoGenerations {
        fleet,
        controller: _controller,
        mut proxy,
        a: _a,
        b: _b,
        v1,
        v2,
    } = two_generations("state-current").await;
    corrupt(&proxy.state_dir.join(CURRENT));
    proxy.process.start_again();

    // From its first answer on, the proxy must never serve v2 (backend b).
    let served_corrupt = AtomicBool::new(false);
    fleet
        .eventually("the previous generation serves", DEADLINE, || async {
            let reply = proxy.get("app.test", "/").await?;
            if reply.backend() == Some("b") {
                served_corrupt.store(true, Ordering::SeqCst);
            }
            reply.expect_backend("a")
        })
        .await;
    assert!(
        !served_corrupt.load(Ordering::SeqCst),
        "the corrupt generation was served"
    );
    let status = proxy.status().await.unwrap();
    assert!(
        mentions_corruption(&status.state_error) && status.state_error.contains(CURRENT),
        "the corruption of {CURRENT} must be reported: {status:?}"
    );
    assert_eq!(status.version, v1, "{status:?}");
    assert_ne!(status.version, v2);
    assert_eq!(status.source, pb::SnapshotSource::Disk as i32, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_generations_corrupt_nothing_is_served_until_a_controller_returns() {
    let TwoGenerations {
        fleet,
        mut controller,
        mut proxy,
        a: _a,
        b: _b,
        v1: _,
        v2,
    } = two_generations("state-both").await;
    corrupt(&proxy.state_dir.join(CURRENT));
    corrupt(&proxy.state_dir.join(PREVIOUS));
    proxy.process.start_again();

    let status = fleet
        .eventually("the proxy reports the corruption", DEADLINE, || async {
            let status = proxy.status().await?;
            if status.state_error.is_empty() {
                Err(format!("no error reported yet: {status:?}"))
            } else {
                Ok(status)
            }
        })
        .await;
    assert!(
        mentions_corruption(&status.state_error),
        "the corruption must be reported: {status:?}"
    );
    assert_eq!(status.version, "", "nothing valid to serve: {status:?}");
    assert_eq!(status.source, pb::SnapshotSource::None as i32, "{status:?}");
    let reply = fleet
        .eventually("the web entry point answers", DEADLINE, || {
            proxy.get("app.test", "/")
        })
        .await;
    assert_eq!(
        reply.status, 404,
        "a corrupt snapshot must never be served: {reply}"
    );

    // The controller comes back: the proxy converges on the current version…
    controller.start_again();
    fleet
        .eventually("the proxy serves b again", RECONNECT_DEADLINE, || {
            proxy.serves("app.test", "b")
        })
        .await;
    assert_eq!(fleet.converged(&["p"], DEADLINE).await, v2);
    let status = fleet
        .eventually(
            "the state-file report is cleared once a snapshot is persisted",
            DEADLINE,
            || async {
                let status = proxy.status().await?;
                if status.state_error.is_empty() {
                    Ok(status)
                } else {
                    Err(format!("still reported: {status:?}"))
                }
            },
        )
        .await;
    assert_eq!(status.version, v2, "{status:?}");

    // …and has written a valid state file again: alone, it serves v2 from disk.
    controller.kill9();
    proxy.restart();
    fleet
        .eventually("the proxy serves v2 from disk", DEADLINE, || {
            proxy.serves("app.test", "b")
        })
        .await;
    let status = proxy.status().await.unwrap();
    assert_eq!(status.source, pb::SnapshotSource::Disk as i32, "{status:?}");
    assert_eq!(status.version, v2, "{status:?}");
}
