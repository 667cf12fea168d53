//! The etcd provider against a REAL etcd (Debian `etcd-server`, started per test on loopback
//! ports in a temporary data directory): keys → snapshot → traffic through a proxy, list
//! encoding, malformed keys, watch resumption, compaction, and outages.

// Test helpers: a failed setup step should panic loudly.

use crate::support::etcd as etcd_support;
use crate::support::providers as support;

use std::net::SocketAddr;

use etcd_support::Etcd;
use support::{Controller, DEADLINE, Proxy, backend, eventually, free_port};
use switchyard_controller::provider::kv::etcd::client::{EtcdClient, EtcdTarget};
use tokio::{net::TcpListener, task::JoinSet};

/// A TCP forwarder we can cut and restore: the controller talks to etcd through it, so the
/// provider can lose etcd while etcd itself keeps running (and is written to, and compacted).
struct Cable {
    listen: SocketAddr,
    target: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Cable {
    async fn new(target: SocketAddr) -> Self {
        let mut cable = Self {
            listen: free_port().await,
            target,
            task: None,
        };
        cable.restore().await;
        cable
    }

    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.listen).await.expect("bind cable");
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        self.cut();
    }
}

fn provider_config(endpoint: impl std::fmt::Display) -> String {
    format!("etcd:\n  endpoints: ['{endpoint}']\n  rootKey: traefik\n")
}

async fn put_route(etcd: &Etcd, router: &str, host: &str, service: &str, backend: SocketAddr) {
    etcd.put(
        &format!("traefik/http/services/{service}/loadbalancer/servers/0/url"),
        &format!("http://{backend}"),
    )
    .await;
    etcd.put(&format!("traefik/http/routers/{router}/service"), service)
        .await;
    etcd.put(
        &format!("traefik/http/routers/{router}/rule"),
        &format!("Host(`{host}`)"),
    )
    .await;
}

/// Waits until requests for `host` through the proxy are answered by `expected` (a backend name,
/// or a status code such as "404").
async fn traffic(proxy: &Proxy, host: &str, expected: &str) {
    eventually(&format!("{host} → {expected}"), DEADLINE, || async {
        let (status, body) = proxy.get(host, "/").await?;
        if body == expected || status.to_string() == expected {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
}

#[tokio::test]
async fn routers_and_services_follow_puts_changes_and_deletes() {
    let etcd = Etcd::start().await;
    let a = backend("backend-a").await;
    let b = backend("backend-b").await;
    put_route(&etcd, "web", "web.example", "svc", a).await;
    let controller = Controller::start(&provider_config(etcd.client)).await;
    let proxy = Proxy::start(&controller.url).await;

    traffic(&proxy, "web.example", "backend-a").await;
    let routes = controller.routes().await.expect("routes");
    assert_eq!(routes.routers["web@etcd"], "Host(`web.example`)");
    assert_eq!(routes.services["svc@etcd"], [format!("http://{a}")]);

    // Change a service's server: traffic moves.
    etcd.put(
        "traefik/http/services/svc/loadbalancer/servers/0/url",
        &format!("http://{b}"),
    )
    .await;
    traffic(&proxy, "web.example", "backend-b").await;

    // Add a router, then delete the first one.
    put_route(&etcd, "api", "api.example", "svc2", a).await;
    traffic(&proxy, "api.example", "backend-a").await;
    etcd.del_prefix("traefik/http/routers/web/").await;
    traffic(&proxy, "web.example", "404").await;
    let routes = controller.routes().await.expect("routes");
    assert!(!routes.routers.contains_key("web@etcd"), "{routes:?}");
    assert!(routes.routers.contains_key("api@etcd"), "{routes:?}");

    // Deleting the whole root key while etcd is reachable removes the provider's routes.
    etcd.del_prefix("traefik/").await;
    traffic(&proxy, "api.example", "404").await;
    eventually("no etcd routers", DEADLINE, || async {
        let routes = controller.routes().await?;
        if routes.routers.is_empty() {
            Ok(())
        } else {
            Err(format!("{routes:?}"))
        }
    })
    .await;
    let status = controller.provider("etcd").await.expect("status");
    assert!(status.healthy, "{status:?}");
}

#[tokio::test]
async fn list_indexes_are_ordered_numerically() {
    let etcd = Etcd::start().await;
    let a = backend("a").await;
    let b = backend("b").await;
    for i in 0..12 {
        etcd.put(
            &format!("traefik/http/middlewares/m{i}/addprefix/prefix"),
            &format!("/p{i}"),
        )
        .await;
        etcd.put(
            &format!("traefik/http/routers/r/middlewares/{i}"),
            &format!("m{i}"),
        )
        .await;
    }
    etcd.put("traefik/http/routers/r/entrypoints/0", "web")
        .await;
    etcd.put(
        "traefik/http/services/s/loadbalancer/servers/1/url",
        &format!("http://{b}"),
    )
    .await;
    etcd.put(
        "traefik/http/services/s/loadbalancer/servers/0/url",
        &format!("http://{a}"),
    )
    .await;
    etcd.put("traefik/http/routers/r/service", "s").await;
    etcd.put("traefik/http/routers/r/rule", "PathPrefix(`/`)")
        .await;
    let controller = Controller::start(&provider_config(etcd.client)).await;

    let snapshot = eventually("router r@etcd", DEADLINE, || async {
        let snap = controller.snapshot().await?.snapshot.unwrap_or_default();
        if snap.routers.iter().any(|r| r.name == "r@etcd") {
            Ok(snap)
        } else {
            Err(format!("{:?}", snap.routers))
        }
    })
    .await;
    let router = snapshot
        .routers
        .iter()
        .find(|r| r.name == "r@etcd")
        .expect("router");
    let expected: Vec<String> = (0..12).map(|i| format!("m{i}@etcd")).collect();
    assert_eq!(router.middlewares, expected, "numeric index order");
    assert_eq!(router.entry_points, ["web"]);
    let routes = controller.routes().await.expect("routes");
    assert_eq!(
        routes.services["s@etcd"],
        [format!("http://{a}"), format!("http://{b}")]
    );
    // The difference from Traefik's string ordering is reported.
    let version = controller.version().await.expect("version");
    assert!(
        version
            .diagnostics
            .iter()
            .any(|d| d.provider == "etcd" && d.message.contains("numerically")),
        "{:?}",
        version.diagnostics
    );
}

#[tokio::test]
async fn malformed_key_keeps_the_last_good_config_and_names_the_key() {
    let etcd = Etcd::start().await;
    let a = backend("backend-a").await;
    put_route(&etcd, "web", "web.example", "svc", a).await;
    let controller = Controller::start(&provider_config(etcd.client)).await;
    let proxy = Proxy::start(&controller.url).await;
    traffic(&proxy, "web.example", "backend-a").await;
    let good = controller.snapshot().await.expect("snapshot").version;

    etcd.put("traefik/http/routers/web/priority", "high").await;
    etcd.put("traefik/http/routers/other/rule", "Host(`other.example`)")
        .await;
    etcd.put("traefik/http/routers/other/service", "svc").await;
    let status = eventually("etcd provider error", DEADLINE, || async {
        let status = controller.provider("etcd").await?;
        if status.healthy {
            Err(format!("{status:?}"))
        } else {
            Ok(status)
        }
    })
    .await;
    assert!(
        status.error.contains("traefik/http/routers/web/priority"),
        "{status:?}"
    );
    assert!(status.error.contains("high"), "{status:?}");
    // Nothing of the rejected update is applied; traffic is unchanged.
    assert_eq!(controller.snapshot().await.expect("snapshot").version, good);
    traffic(&proxy, "web.example", "backend-a").await;

    // Fixing the key applies the whole update and clears the error.
    etcd.put("traefik/http/routers/web/priority", "10").await;
    traffic(&proxy, "other.example", "backend-a").await;
    eventually(
        "healthy etcd provider with router other",
        DEADLINE,
        || async {
            let status = controller.provider("etcd").await?;
            let routes = controller.routes().await?;
            if status.healthy && routes.routers.contains_key("other@etcd") {
                Ok(())
            } else {
                Err(format!("{status:?} {routes:?}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn etcd_down_keeps_routes_and_watch_resumes_after_restart() {
    let mut etcd = Etcd::start().await;
    let a = backend("backend-a").await;
    let b = backend("backend-b").await;
    put_route(&etcd, "web", "web.example", "svc", a).await;
    let controller = Controller::start(&provider_config(etcd.client)).await;
    let proxy = Proxy::start(&controller.url).await;
    traffic(&proxy, "web.example", "backend-a").await;

    etcd.kill().await;
    let status = eventually("etcd provider unhealthy", DEADLINE, || async {
        let status = controller.provider("etcd").await?;
        if status.healthy {
            Err(format!("{status:?}"))
        } else {
            Ok(status)
        }
    })
    .await;
    assert!(status.error.contains("etcd"), "{status:?}");
    // Routes stay while etcd is down.
    assert!(
        controller
            .routes()
            .await
            .expect("routes")
            .routers
            .contains_key("web@etcd")
    );
    traffic(&proxy, "web.example", "backend-a").await;

    etcd.spawn().await;
    etcd.put(
        "traefik/http/services/svc/loadbalancer/servers/0/url",
        &format!("http://{b}"),
    )
    .await;
    traffic(&proxy, "web.example", "backend-b").await;
    eventually("etcd provider healthy again", DEADLINE, || async {
        let status = controller.provider("etcd").await?;
        if status.healthy {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn dropped_watch_replays_missed_changes_and_compaction_forces_a_reread() {
    let etcd = Etcd::start().await;
    let mut cable = Cable::new(etcd.client).await;
    let a = backend("backend-a").await;
    let b = backend("backend-b").await;
    put_route(&etcd, "web", "web.example", "svc", a).await;
    let controller = Controller::start(&provider_config(cable.listen)).await;
    let proxy = Proxy::start(&controller.url).await;
    traffic(&proxy, "web.example", "backend-a").await;

    // Lose etcd (etcd keeps running), change things meanwhile, come back: the watch resumes
    // from the last revision seen and replays what was missed.
    cable.cut();
    eventually("etcd provider unhealthy", DEADLINE, || async {
        let status = controller.provider("etcd").await?;
        if status.healthy {
            Err(format!("{status:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    put_route(&etcd, "missed", "missed.example", "svc-b", b).await;
    cable.restore().await;
    traffic(&proxy, "missed.example", "backend-b").await;

    // Again, but this time compact past the provider's resume point: it must re-read.
    cable.cut();
    eventually("etcd provider unhealthy", DEADLINE, || async {
        let status = controller.provider("etcd").await?;
        if status.healthy {
            Err(format!("{status:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    etcd.del_prefix("traefik/http/routers/missed/").await;
    put_route(&etcd, "late", "late.example", "svc", b).await;
    etcd.put(
        "traefik/http/services/svc/loadbalancer/servers/0/url",
        &format!("http://{b}"),
    )
    .await;
    let revision = etcd.revision().await;
    etcd.ctl(&["compact", &revision.to_string()]).await;
    cable.restore().await;
    traffic(&proxy, "late.example", "backend-b").await;
    traffic(&proxy, "web.example", "backend-b").await;
    traffic(&proxy, "missed.example", "404").await;
    eventually("healthy etcd provider", DEADLINE, || async {
        let status = controller.provider("etcd").await?;
        if status.healthy {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn mutual_tls_to_etcd() {
    let etcd = Etcd::start_with(true).await;
    let a = backend("backend-a").await;
    put_route(&etcd, "web", "tls.example", "svc", a).await;

    // The right CA and client certificate: routes arrive.
    let controller = Controller::start(&format!(
        "etcd:\n  endpoints: ['{}']\n  rootKey: traefik\n  tls:\n    ca: {}\n    cert: {}\n    key: {}\n",
        etcd.client,
        etcd.file("ca.pem"),
        etcd.file("client.pem"),
        etcd.file("client-key.pem"),
    ))
    .await;
    let proxy = Proxy::start(&controller.url).await;
    traffic(&proxy, "tls.example", "backend-a").await;

    // No client certificate: etcd refuses the handshake and the provider says so.
    let refused = Controller::start(&format!(
        "etcd:\n  endpoints: ['{}']\n  rootKey: traefik\n  tls:\n    ca: {}\n",
        etcd.client,
        etcd.file("ca.pem"),
    ))
    .await;
    let status = eventually(
        "the refused provider reports an error",
        DEADLINE,
        || async {
            let p = refused.provider("etcd").await?;
            if !p.healthy && !p.error.is_empty() {
                Ok(p)
            } else {
                Err(format!("{p:?}"))
            }
        },
    )
    .await;
    assert!(status.error.contains("etcd"), "{status:?}");
    assert!(refused.routes().await.unwrap().routers.is_empty());
}

/// `http/routers/<r>/tls = true` and `tls/certificates/<n>/{certFile,keyFile}` (inline PEM), as
/// Traefik's KV providers take them: the certificate reaches the snapshot, keys are redacted in
/// `GetSnapshot`; a bad certificate is reported naming its provider and the good one stays.
#[tokio::test]
async fn tls_certificates_from_kv_reach_the_snapshot_and_a_bad_one_is_named() {
    let etcd = Etcd::start().await;
    let a = backend("backend-a").await;
    put_route(&etcd, "web", "secure.example", "svc", a).await;
    etcd.put("traefik/http/routers/web/tls", "true").await;
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["secure.example".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    etcd.put("traefik/tls/certificates/0/certFile", &cert.pem())
        .await;
    etcd.put("traefik/tls/certificates/0/keyFile", &key.serialize_pem())
        .await;
    let controller = Controller::start(&provider_config(etcd.client)).await;

    let certs = eventually("the KV certificate in the snapshot", DEADLINE, || async {
        let s = controller.snapshot().await?;
        let content = s.snapshot.unwrap_or_default();
        let tls_router = content.routers.iter().any(|r| r.tls.is_some());
        let certs = content.certificates;
        if tls_router && certs.iter().any(|c| c.names == ["secure.example"]) {
            Ok(certs)
        } else {
            let status = controller.provider("etcd").await?;
            Err(format!(
                "tls router: {tls_router}; certificates: {certs:?}; {status:?}"
            ))
        }
    })
    .await;
    assert!(
        certs.iter().all(|c| !c.key_pem.contains("PRIVATE KEY")),
        "keys are redacted in GetSnapshot"
    );

    etcd.put("traefik/tls/certificates/1/certFile", "not a certificate")
        .await;
    etcd.put("traefik/tls/certificates/1/keyFile", "not a key")
        .await;
    let bad = eventually("the bad certificate reported", DEADLINE, || async {
        let v = controller.version().await?;
        let bad: Vec<String> = v
            .diagnostics
            .iter()
            .filter(|d| d.provider == "etcd" && d.object.starts_with("certificate/"))
            .map(|d| format!("{}: {}", d.object, d.message))
            .collect();
        if bad.is_empty() {
            Err(format!("{:?}", v.diagnostics))
        } else {
            Ok(bad)
        }
    })
    .await;
    assert_eq!(bad.len(), 1, "{bad:?}");
    let content = controller
        .snapshot()
        .await
        .expect("snapshot")
        .snapshot
        .unwrap_or_default();
    assert!(
        content
            .certificates
            .iter()
            .any(|c| c.names == ["secure.example"]),
        "the good certificate stays: {:?}",
        content.certificates
    );
}

/// The benchmark writes its routers and changes with `EtcdClient::put_all`: the keys of one
/// transaction all land, in one revision (one watch event for the provider).
#[tokio::test]
async fn keys_put_together_land_in_one_revision() {
    let etcd = Etcd::start().await;
    let target = EtcdTarget::new(&[etcd.client.to_string()], None, None, "test".into());
    let client = EtcdClient::connect(&target).await.expect("connect");
    let before = etcd.revision().await;
    let pairs = vec![
        ("bench/a/rule".to_owned(), b"Host(`a.test`)".to_vec()),
        ("bench/a/service".to_owned(), b"svc".to_vec()),
    ];
    client.put_all(pairs.clone()).await.expect("transaction");
    assert_eq!(etcd.revision().await, before + 1);
    assert_eq!(client.get_prefix("bench/").await.expect("read back"), pairs);
}
