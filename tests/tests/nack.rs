//! Guarantee: a snapshot the proxy cannot apply is NACKed with the reason, the proxy keeps serving
//! its previous one, and the controller does not resend that version in a loop — only new content
//! is sent again. The unappliable snapshot declares an entry point on a loopback port this test
//! holds (and the proxy does not override it with `--entrypoint`), so the proxy cannot bind it.

use std::time::Duration;

use switchyard_tests::harness::{DEADLINE, Fleet, RECONNECT_DEADLINE};

fn app_yaml(backend: &str, route: &str) -> String {
    format!(
        "http:\n  routers:\n    app:\n      rule: Host(`app.test`)\n      service: app\n    {route}:\n      rule: Host(`{route}.test`)\n      service: app\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: {backend}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unappliable_snapshot_is_nacked_once_and_the_previous_one_keeps_serving() {
    let fleet = Fleet::new("nack");
    let a = fleet.echo("a").await;
    fleet.write_dynamic("app.yml", &app_yaml(&a.url(), "first"));
    let mut controller = fleet.controller();
    let p = fleet.proxy("p");
    let v1 = fleet.converged(&["p"], DEADLINE).await;
    p.serves("app.test", "a").await.unwrap();

    // The same dynamic config under a static config with an entry point nobody can bind.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    controller.kill9();
    fleet.write_static(&fleet.static_config(&[("extra", &taken_addr)]));
    controller.start_again();

    let nacked = fleet
        .eventually("the NACK is recorded", RECONNECT_DEADLINE, || async {
            let version = fleet.version().await?.version;
            let entry = fleet.proxy_entry("p").await?;
            if !version.is_empty() && version != v1 && entry.last_nack_version == version {
                Ok(entry)
            } else {
                Err(format!("controller at {version:?}: {entry:?}"))
            }
        })
        .await;
    let v_bad = nacked.last_nack_version.clone();
    assert!(
        nacked.last_nack_error.contains(&taken_addr),
        "the NACK must say why (the address {taken_addr}): {nacked:?}"
    );
    assert_eq!(nacked.acked_version, v1, "the old version stays applied");
    assert_eq!(nacked.snapshots_sent, 1, "{nacked:?}");
    let status = p.status().await.unwrap();
    assert_eq!(status.version, v1, "{status:?}");
    assert_eq!(status.nacks_sent, 1, "{status:?}");
    assert!(!status.last_error.is_empty(), "{status:?}");
    assert!(
        !status.listening.iter().any(|l| l.contains(&taken_addr)),
        "{status:?}"
    );
    p.serves("app.test", "a").await.unwrap();
    p.serves("first.test", "a").await.unwrap();

    // Not resent in a loop: the counters on both sides stay put for a few seconds. (This is an
    // observation of an absence over a bounded window, not a wait for something to happen.)
    let received = status.snapshots_received;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let entry = fleet.proxy_entry("p").await.unwrap();
        assert_eq!(entry.snapshots_sent, 1, "NACKed snapshot resent: {entry:?}");
        assert_eq!(entry.last_nack_version, v_bad, "{entry:?}");
        let status = p.status().await.unwrap();
        assert_eq!(status.snapshots_received, received, "{status:?}");
        assert_eq!(status.nacks_sent, 1, "{status:?}");
    }
    p.serves("app.test", "a").await.unwrap();

    // Parking is per version: new content is sent (and, the port still being taken, NACKed too).
    fleet.write_dynamic("app.yml", &app_yaml(&a.url(), "second"));
    let again = fleet
        .eventually("the new version is sent and NACKed", DEADLINE, || async {
            let entry = fleet.proxy_entry("p").await?;
            if entry.snapshots_sent == 2 && entry.last_nack_version != v_bad {
                Ok(entry)
            } else {
                Err(format!("{entry:?}"))
            }
        })
        .await;
    assert_eq!(again.acked_version, v1, "{again:?}");
    let reply = p.get("second.test", "/").await.unwrap();
    assert_eq!(
        reply.status, 404,
        "a NACKed snapshot is not applied: {reply}"
    );

    // The port is free again; the next content change applies.
    drop(taken);
    fleet.write_dynamic("app.yml", &app_yaml(&a.url(), "third"));
    let v3 = fleet.converged(&["p"], DEADLINE).await;
    assert_ne!(v3, v1);
    p.serves("third.test", "a").await.unwrap();
    let status = p.status().await.unwrap();
    assert!(
        status.listening.iter().any(|l| l.contains(&taken_addr)),
        "the extra entry point listens now: {status:?}"
    );
}
