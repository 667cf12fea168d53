//! The Consul Catalog provider against the Consul agent SIMULATOR
//! (`switchyard_tests::sim::consul`): the simulator's blocking queries, tags → routes with
//! instances merged into one load balancer, a check going critical, an index reset, the agent
//! going away and coming back, and everything deregistered.

// Test helpers: a failed setup step should panic loudly.

use crate::support::providers as support;

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use support::{Controller, DEADLINE, Proxy, backend, eventually, http_get};
use switchyard_tests::sim::consul::{ConsulSim, Registration};

fn web_instance(id: &str, node: &str, backend: SocketAddr) -> Registration {
    Registration {
        node: node.into(),
        node_address: backend.ip().to_string(),
        id: id.into(),
        name: "web".into(),
        tags: vec![
            "traefik.enable=true".into(),
            "traefik.http.routers.web.rule=Host(`web.example`)".into(),
            "traefik.http.routers.web.entrypoints=web".into(),
            "v1".into(),
        ],
        // Empty: the provider must fall back to the node address.
        address: String::new(),
        port: backend.port(),
    }
}

/// Raw GET against the simulator: `(status, X-Consul-Index, body)` parsed from the wire.
async fn raw(sim: &ConsulSim, path: &str) -> (u16, u64, String) {
    let stream = tokio::net::TcpStream::connect(sim.address()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "consul")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let index = response.headers()["X-Consul-Index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, index, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn simulator_answers_a_blocking_query_only_when_the_catalog_changes() {
    let sim = ConsulSim::start().await.expect("simulator");
    let a = backend("a").await;
    sim.register(web_instance("web-1", "node-1", a));
    let (status, index, body) = raw(&sim, "/v1/catalog/services").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        r#"{"web":["traefik.enable=true","traefik.http.routers.web.rule=Host(`web.example`)","traefik.http.routers.web.entrypoints=web","v1"]}"#
    );

    // Nothing changes: the query runs to its `wait` and answers the same index.
    let started = tokio::time::Instant::now();
    let (_, same, _) = raw(
        &sim,
        &format!("/v1/catalog/services?index={index}&wait=300ms"),
    )
    .await;
    assert_eq!(same, index);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A check change does not move the catalog index…
    let pending = tokio::spawn({
        let addr = sim.address();
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let request =
                hyper::Request::get(format!("/v1/catalog/services?index={index}&wait=60s"))
                    .header(hyper::header::HOST, "consul")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
            let response = sender.send_request(request).await.unwrap();
            response.headers()["X-Consul-Index"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        }
    });
    eventually("the query to park", DEADLINE, || async {
        if sim.blocked_queries() == 1 {
            Ok(())
        } else {
            Err(format!("{}", sim.blocked_queries()))
        }
    })
    .await;
    sim.set_check("node-1", "web-1", "critical");
    let (_, health_index, health) = raw(&sim, "/v1/health/service/web").await;
    assert!(health_index > index);
    assert!(health.contains(r#""Status":"critical""#), "{health}");
    assert!(
        !pending.is_finished(),
        "a check change must not answer a catalog query"
    );
    assert_eq!(sim.blocked_queries(), 1);

    // …a registration does, well before the 60 s wait.
    let b = backend("b").await;
    sim.register(web_instance("web-2", "node-2", b));
    let new_index = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("answered on change")
        .unwrap();
    assert!(new_index > index);
}

async fn servers(controller: &Controller) -> Result<Vec<String>, String> {
    let routes = controller.routes().await?;
    if !routes.routers.contains_key("web@consulcatalog") {
        return Err(format!("no router web@consulcatalog: {routes:?}"));
    }
    let mut urls = routes
        .services
        .get("web@consulcatalog")
        .cloned()
        .ok_or_else(|| format!("no service web@consulcatalog: {routes:?}"))?;
    urls.sort();
    Ok(urls)
}

async fn expect_servers(controller: &Controller, expected: &[SocketAddr]) {
    let mut want: Vec<String> = expected.iter().map(|a| format!("http://{a}")).collect();
    want.sort();
    eventually(&format!("servers {want:?}"), DEADLINE, || async {
        let got = servers(controller).await?;
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

async fn provider_healthy(controller: &Controller, healthy: bool) -> String {
    eventually(
        &format!("consulcatalog healthy={healthy}"),
        DEADLINE,
        || async {
            let status = controller.provider("consulcatalog").await?;
            if status.healthy == healthy {
                Ok(status.error)
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await
}

/// Backends that answered requests for `host` through the proxy (bounded number of requests).
async fn answering(proxy: &Proxy, host: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        if let Ok((200, body)) = http_get(proxy.web, host, "/").await {
            seen.insert(body);
        }
    }
    seen
}

#[tokio::test]
async fn tags_become_routes_and_follow_health_outages_and_deregistration() {
    let mut sim = ConsulSim::start().await.expect("simulator");
    let a = backend("backend-a").await;
    let b = backend("backend-b").await;
    sim.register(web_instance("web-1", "node-1", a));
    sim.register(web_instance("web-2", "node-2", b));
    // Not enabled (exposedByDefault: false) and filtered by constraints.
    let mut hidden = web_instance("hidden-1", "node-1", a);
    hidden.name = "hidden".into();
    hidden.tags = vec!["traefik.enable=false".into()];
    sim.register(hidden);
    let mut canary = web_instance("canary-1", "node-3", a);
    canary.name = "canary".into();
    canary.tags = vec!["traefik.enable=true".into(), "canary".into()];
    sim.register(canary);

    let controller = Controller::start(&format!(
        "consulCatalog:\n  endpoint:\n    address: '{}'\n    endpointWaitTime: 60s\n  exposedByDefault: false\n  constraints: '!Tag(`canary`)'\n  strictChecks: [passing]\n",
        sim.address()
    ))
    .await;
    let proxy = Proxy::start(&controller.url).await;

    // Two instances → one load balancer with both servers; traffic reaches both.
    expect_servers(&controller, &[a, b]).await;
    let routes = controller.routes().await.expect("routes");
    assert_eq!(routes.routers["web@consulcatalog"], "Host(`web.example`)");
    assert_eq!(routes.routers.len(), 1, "{routes:?}");
    eventually("both backends answer", DEADLINE, || async {
        let seen = answering(&proxy, "web.example").await;
        if seen.len() == 2 {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;

    // A check goes critical: that instance leaves (within the 60 s wait: the blocking query on
    // health state answered at once).
    sim.set_check("node-1", "web-1", "critical");
    expect_servers(&controller, &[b]).await;
    eventually("only backend-b answers", DEADLINE, || async {
        let seen = answering(&proxy, "web.example").await;
        if seen.len() == 1 && seen.contains("backend-b") {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
    sim.set_check("node-1", "web-1", "passing");
    expect_servers(&controller, &[a, b]).await;

    // Index reset (snapshot restore): the provider re-reads and keeps following changes.
    let before = sim.answered("/v1/catalog/services");
    sim.reset_index(1);
    // Woken by the reset, the provider sees the index go backwards and re-reads everything.
    eventually(
        "the provider to re-read after the reset",
        DEADLINE,
        || async {
            let answered = sim.answered("/v1/catalog/services");
            if answered >= before + 2 && sim.blocked_queries() >= 2 {
                Ok(())
            } else {
                Err(format!(
                    "answered {answered} (before {before}), blocked {}",
                    sim.blocked_queries()
                ))
            }
        },
    )
    .await;
    let c = backend("backend-c").await;
    sim.register(web_instance("web-3", "node-3", c));
    expect_servers(&controller, &[a, b, c]).await;

    // The agent goes away: last good config stays and the status says why.
    sim.stop();
    let error = provider_healthy(&controller, false).await;
    assert!(error.contains("consul"), "{error}");
    expect_servers(&controller, &[a, b, c]).await;
    assert!(!answering(&proxy, "web.example").await.is_empty());
    sim.deregister("node-3", "web-3");
    sim.resume().await.expect("resume");
    provider_healthy(&controller, true).await;
    expect_servers(&controller, &[a, b]).await;

    // Everything deregistered while reachable: the routes are removed.
    sim.deregister("node-1", "web-1");
    sim.deregister("node-2", "web-2");
    eventually("no consulcatalog routers", DEADLINE, || async {
        let routes = controller.routes().await?;
        if routes.routers.is_empty() {
            Ok(())
        } else {
            Err(format!("{routes:?}"))
        }
    })
    .await;
    eventually("web.example → 404", DEADLINE, || async {
        match proxy.get("web.example", "/").await? {
            (404, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
