//! Guarantee: losing the controller changes nothing on the data path. `kill -9` it under a client
//! loop against two proxies: zero failed requests. Restart a proxy while it is gone: the proxy
//! serves its persisted snapshot. Start the controller again: the proxies reconnect by themselves
//! (trying every `--controller` URL in turn), converge on the same version, and are not sent what
//! they already hold.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use switchyard_shared::pb;
use switchyard_tests::harness::{
    DEADLINE, Fleet, RECONNECT_DEADLINE, free_port,
    http::{self, Pool},
};

fn app_yaml(backend: &str) -> String {
    format!(
        "http:\n  routers:\n    app:\n      rule: Host(`app.test`)\n      service: app\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: {backend}\n"
    )
}

/// What a load loop saw.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    failed: AtomicU64,
    first_failures: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, outcome: Result<(), String>) {
        self.sent.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = outcome {
            self.failed.fetch_add(1, Ordering::SeqCst);
            let mut first = self.first_failures.lock().unwrap();
            if first.len() < 5 {
                first.push(e);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_controller_costs_no_request_and_proxies_come_back() {
    let fleet = Fleet::new("kill");
    let a = fleet.echo("a").await;
    fleet.write_dynamic("app.yml", &app_yaml(&a.url()));
    let mut controller = fleet.controller();
    let mut p1 = fleet.proxy("p1");
    let p2 = fleet.proxy("p2");
    let version = fleet.converged(&["p1", "p2"], DEADLINE).await;
    fleet
        .eventually("both proxies serve", DEADLINE, || async {
            p1.serves("app.test", "a").await?;
            p2.serves("app.test", "a").await
        })
        .await;
    let p2_received = p2.status().await.unwrap().snapshots_received;
    assert_eq!(p2_received, 1, "one snapshot so far");

    // A client loop per proxy, bounded in count and time; requests alternate between a pooled
    // keep-alive client and fresh connections.
    const PER_PROXY: u64 = 1000;
    let tally = Arc::new(Tally::default());
    let killed_at = Arc::new(AtomicU64::new(u64::MAX));
    let load: Vec<_> = [p1.web, p2.web]
        .into_iter()
        .map(|web| {
            let tally = tally.clone();
            tokio::spawn(async move {
                let pool = Pool::new();
                let end = tokio::time::Instant::now() + Duration::from_secs(20);
                for i in 0..PER_PROXY {
                    if tokio::time::Instant::now() >= end {
                        break;
                    }
                    let reply = if i.is_multiple_of(2) {
                        pool.get(web, "app.test", "/").await
                    } else {
                        http::get(web, "app.test", "/").await
                    };
                    tally.record(
                        reply
                            .and_then(|r| r.expect_backend("a"))
                            .map_err(|e| format!("{web} request {i}: {e}")),
                    );
                }
            })
        })
        .collect();
    fleet
        .eventually("the load is running", DEADLINE, || async {
            match tally.sent.load(Ordering::SeqCst) {
                n if n >= 100 => Ok(()),
                n => Err(format!("{n} requests sent")),
            }
        })
        .await;
    controller.kill9();
    killed_at.store(tally.sent.load(Ordering::SeqCst), Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let sent = tally.sent.load(Ordering::SeqCst);
    let after_kill = sent - killed_at.load(Ordering::SeqCst);
    assert_eq!(
        tally.failed.load(Ordering::SeqCst),
        0,
        "requests failed while the controller died ({sent} sent): {:?}",
        tally.first_failures.lock().unwrap()
    );
    assert!(
        after_kill >= 100,
        "the loop must run on after the kill: only {after_kill} of {sent} requests came after it"
    );

    // Restart a proxy while the controller is still gone: it serves its persisted snapshot.
    p1.restart();
    fleet
        .eventually("the restarted proxy serves from disk", DEADLINE, || {
            p1.serves("app.test", "a")
        })
        .await;
    let status = p1.status().await.unwrap();
    assert_eq!(
        status.source,
        pb::SnapshotSource::Disk as i32,
        "served from the state dir: {status:?}"
    );
    assert_eq!(status.version, version, "{status:?}");
    assert!(!status.controller_connected, "{status:?}");
    p2.serves("app.test", "a").await.unwrap();

    // The controller comes back: both reconnect by themselves and converge on the same version
    // (same inputs, same version), and neither is sent the snapshot it already holds.
    controller.start_again();
    let again = fleet.converged(&["p1", "p2"], RECONNECT_DEADLINE).await;
    assert_eq!(again, version, "same inputs must give the same version");
    let list = fleet.proxies().await.unwrap();
    for node in ["p1", "p2"] {
        let entry = list.proxies.iter().find(|p| p.node_id == node).unwrap();
        assert_eq!(
            entry.snapshots_sent, 0,
            "{node} already held {version} and was sent it again: {entry:?}"
        );
    }
    // The controller counts a proxy in when its hello arrives, the proxy itself once the
    // stream's response has begun: a moment later.
    fleet
        .eventually("both proxies see their stream up", DEADLINE, || async {
            let s1 = p1.status().await?;
            let s2 = p2.status().await?;
            if s1.controller_connected && s2.controller_connected {
                Ok(())
            } else {
                Err(format!("{s1:?}\n{s2:?}"))
            }
        })
        .await;
    let s1 = p1.status().await.unwrap();
    let s2 = p2.status().await.unwrap();
    assert_eq!(s1.snapshots_received, 0, "{s1:?}");
    assert_eq!(s2.snapshots_received, p2_received, "{s2:?}");
    p1.serves("app.test", "a").await.unwrap();
    p2.serves("app.test", "a").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_tries_every_controller_url_in_turn() {
    let fleet = Fleet::new("failover");
    let a = fleet.echo("a").await;
    fleet.write_dynamic("app.yml", &app_yaml(&a.url()));
    let _controller = fleet.controller();
    // Nothing listens on the first URL.
    let dead = format!("http://{}", free_port());
    let p = fleet.proxy_with("p", &[dead, fleet.url.clone()]);
    fleet.converged(&["p"], RECONNECT_DEADLINE).await;
    p.serves("app.test", "a").await.unwrap();
    let status = p.status().await.unwrap();
    assert_eq!(status.controller, fleet.url, "{status:?}");
    assert!(status.controller_connected, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_before_its_controller_connects_when_it_appears() {
    let fleet = Fleet::new("late");
    let a = fleet.echo("a").await;
    fleet.write_dynamic("app.yml", &app_yaml(&a.url()));
    let p = fleet.proxy("p");
    let status = fleet
        .eventually("the proxy answers its admin port", DEADLINE, || p.status())
        .await;
    assert_eq!(status.version, "", "nothing to serve yet: {status:?}");
    assert!(!status.controller_connected, "{status:?}");
    // With nothing applied, nothing is routed (404, or no listener at all yet).
    if let Ok(reply) = p.get("app.test", "/").await {
        assert_eq!(
            reply.status, 404,
            "a proxy without a snapshot routes nothing: {reply}"
        );
    }

    let _controller = fleet.controller();
    fleet.converged(&["p"], RECONNECT_DEADLINE).await;
    fleet
        .eventually("the proxy serves", DEADLINE, || p.serves("app.test", "a"))
        .await;
    let status = p.status().await.unwrap();
    assert_eq!(
        status.source,
        pb::SnapshotSource::Controller as i32,
        "{status:?}"
    );
}
