//! Guarantee: no request fails because of a configuration change, and existing connections are
//! never cut by one. Twenty edits (each adding a router, changing a response header and the
//! service's servers) are applied while clients keep sending; one raw keep-alive connection
//! carries requests across all of them and sees every new route.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use switchyard_tests::harness::{
    DEADLINE, Fleet,
    http::{self, KeepAlive, Pool},
};

const GENERATIONS: u32 = 20;

/// Generation `n`: `app.test` answers with `X-Gen: n` from `a` (even n) or `a` and `b` (odd n),
/// and routers `gen-1.test` … `gen-n.test` exist.
fn generation(n: u32, a: &str, b: &str) -> String {
    let mut routers = String::from(
        "    app:\n      rule: Host(`app.test`)\n      service: app\n      middlewares: [mark]\n",
    );
    for i in 1..=n {
        routers.push_str(&format!(
            "    gen-{i}:\n      rule: Host(`gen-{i}.test`)\n      service: app\n"
        ));
    }
    let servers = if n.is_multiple_of(2) {
        format!("          - url: {a}\n")
    } else {
        format!("          - url: {a}\n          - url: {b}\n")
    };
    format!(
        "http:\n  routers:\n{routers}  middlewares:\n    mark:\n      headers:\n        customResponseHeaders:\n          X-Gen: '{n}'\n  services:\n    app:\n      loadBalancer:\n        servers:\n{servers}"
    )
}

fn served_ok(reply: &http::Reply) -> Result<(), String> {
    match (reply.status, reply.backend()) {
        (200, Some("a" | "b")) => Ok(()),
        _ => Err(format!("{reply}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_changes_under_load_fail_no_request() {
    let fleet = Fleet::new("zero-load");
    let a = fleet.echo("a").await;
    let b = fleet.echo("b").await;
    fleet.write_dynamic("app.yml", &generation(0, &a.url(), &b.url()));
    let _controller = fleet.controller();
    let p = fleet.proxy("p");
    fleet.converged(&["p"], DEADLINE).await;
    fleet
        .eventually("app.test serves", DEADLINE, || p.serves("app.test", "a"))
        .await;

    // Four clients, two pooled (keep-alive) and two opening a connection per request, each
    // bounded in requests and time; they stop early once the edits are done.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let web = p.web;
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
            tokio::spawn(async move {
                let pool = Pool::new();
                let end = tokio::time::Instant::now() + Duration::from_secs(120);
                for i in 0..20_000u32 {
                    if stop.load(Ordering::SeqCst) || tokio::time::Instant::now() >= end {
                        break;
                    }
                    let reply = if client < 2 {
                        pool.get(web, "app.test", "/").await
                    } else {
                        http::get(web, "app.test", "/").await
                    };
                    sent.fetch_add(1, Ordering::SeqCst);
                    if let Err(e) = reply.and_then(|r| served_ok(&r)) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("client {client} request {i}: {e}"));
                    }
                }
            })
        })
        .collect();

    for n in 1..=GENERATIONS {
        fleet.write_dynamic("app.yml", &generation(n, &a.url(), &b.url()));
        let want = n.to_string();
        fleet
            .eventually(&format!("generation {n} is served"), DEADLINE, || async {
                served_ok(&p.get(&format!("gen-{n}.test"), "/").await?)?;
                let reply = p.get("app.test", "/").await?;
                served_ok(&reply)?;
                match reply.header("x-gen") {
                    Some(seen) if seen == want => Ok(()),
                    other => Err(format!("X-Gen {other:?}")),
                }
            })
            .await;
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let sent = sent.load(Ordering::SeqCst);
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during {GENERATIONS} config changes; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        sent >= 100,
        "the load must overlap the changes: {sent} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_survives_config_changes() {
    let fleet = Fleet::new("zero-keepalive");
    let a = fleet.echo("a").await;
    let b = fleet.echo("b").await;
    fleet.write_dynamic("app.yml", &generation(0, &a.url(), &b.url()));
    let _controller = fleet.controller();
    let mut p = fleet.proxy("p");
    fleet.converged(&["p"], DEADLINE).await;
    fleet
        .eventually("app.test serves", DEADLINE, || p.serves("app.test", "a"))
        .await;

    // ONE connection for the whole test.
    let mut conn = KeepAlive::connect(p.web).await.unwrap();
    served_ok(&conn.get("app.test", "/").await.unwrap()).unwrap();
    for n in 1..=GENERATIONS {
        fleet.write_dynamic("app.yml", &generation(n, &a.url(), &b.url()));
        let want = n.to_string();
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            assert!(
                tokio::time::Instant::now() < end,
                "generation {n} never reached the keep-alive connection"
            );
            let reply = conn.get("app.test", "/").await.unwrap_or_else(|e| {
                panic!("the keep-alive connection broke at generation {n}: {e}")
            });
            served_ok(&reply).unwrap();
            if reply.header("x-gen") == Some(want.as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The route added by this generation, on the same connection.
        let reply = conn.get(&format!("gen-{n}.test"), "/").await.unwrap();
        served_ok(&reply).unwrap();
    }
    assert!(
        conn.requests() > u64::from(GENERATIONS) * 2,
        "{} requests on the connection",
        conn.requests()
    );
    // Still the same connection, still open, still routing.
    served_ok(&conn.get("gen-1.test", "/").await.unwrap()).unwrap();
    p.process.check_alive().unwrap();
}
