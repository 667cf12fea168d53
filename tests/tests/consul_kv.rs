//! The Consul KV provider against the Consul agent SIMULATOR (`switchyard_tests::sim::consul`):
//! blocking queries carry changes at once, the ACL token is sent, an index reset forces a
//! re-read, a malformed key and the agent going away keep the last good configuration.

// Test helpers: a failed setup step should panic loudly.

use crate::support::providers as support;

use std::net::SocketAddr;

use support::{Controller, DEADLINE, Proxy, backend, eventually};
use switchyard_tests::sim::consul::ConsulSim;

fn put_route(sim: &ConsulSim, router: &str, host: &str, service: &str, backend: SocketAddr) {
    sim.kv_put(
        &format!("traefik/http/services/{service}/loadBalancer/servers/0/url"),
        &format!("http://{backend}"),
    );
    sim.kv_put(&format!("traefik/http/routers/{router}/service"), service);
    sim.kv_put(
        &format!("traefik/http/routers/{router}/rule"),
        &format!("Host(`{host}`)"),
    );
}

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

async fn provider_healthy(controller: &Controller, healthy: bool) -> String {
    eventually(
        &format!("consul provider healthy={healthy}"),
        DEADLINE,
        || async {
            let status = controller.provider("consul").await?;
            if status.healthy == healthy {
                Ok(status.error)
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await
}

/// Waits until the provider is parked in a blocking query, so the next write must be delivered
/// by the simulator answering that query.
async fn parked(sim: &ConsulSim) {
    eventually(
        "a blocking query parked in the simulator",
        DEADLINE,
        || async {
            if sim.blocked_queries() > 0 {
                Ok(())
            } else {
                Err("none".into())
            }
        },
    )
    .await;
}

fn config(sim: &ConsulSim) -> String {
    format!(
        "consul:\n  endpoints: ['{}']\n  rootKey: traefik\n  token: s3cr3t\n",
        sim.address()
    )
}

#[tokio::test]
async fn kv_changes_arrive_through_blocking_queries() {
    let sim = ConsulSim::start().await.expect("simulator");
    sim.require_token("s3cr3t");
    let a = backend("backend-a").await;
    let b = backend("backend-b").await;
    put_route(&sim, "web", "web.example", "svc", a);
    let controller = Controller::start(&config(&sim)).await;
    let proxy = Proxy::start(&controller.url).await;
    traffic(&proxy, "web.example", "backend-a").await;
    provider_healthy(&controller, true).await;

    parked(&sim).await;
    sim.kv_put(
        "traefik/http/services/svc/loadBalancer/servers/0/url",
        &format!("http://{b}"),
    );
    traffic(&proxy, "web.example", "backend-b").await;

    // The store's index goes backwards (snapshot restore): the provider re-reads and goes on.
    parked(&sim).await;
    let before = sim.answered("/v1/kv/traefik");
    sim.reset_index(1);
    // Woken by the reset, the provider sees the index go backwards, re-reads (index 0), and
    // blocks again from the new index.
    eventually(
        "the provider to re-read and park again",
        DEADLINE,
        || async {
            let answered = sim.answered("/v1/kv/traefik");
            if answered >= before + 2 && sim.blocked_queries() > 0 {
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
    put_route(&sim, "api", "api.example", "svc-a", a);
    traffic(&proxy, "api.example", "backend-a").await;

    // Root key emptied while Consul is reachable: the provider's routes are removed.
    sim.kv_delete("traefik/", true);
    traffic(&proxy, "web.example", "404").await;
    traffic(&proxy, "api.example", "404").await;
    let routes = controller.routes().await.expect("routes");
    assert!(routes.routers.is_empty(), "{routes:?}");
    provider_healthy(&controller, true).await;
}

#[tokio::test]
async fn malformed_key_and_agent_outage_keep_the_last_good_config() {
    let mut sim = ConsulSim::start().await.expect("simulator");
    let a = backend("backend-a").await;
    put_route(&sim, "web", "web.example", "svc", a);
    let controller = Controller::start(&config(&sim)).await;
    let proxy = Proxy::start(&controller.url).await;
    traffic(&proxy, "web.example", "backend-a").await;
    let good = controller.snapshot().await.expect("snapshot").version;

    sim.kv_put(
        "traefik/http/services/svc/loadBalancer/servers/0/weight",
        "heavy",
    );
    let error = provider_healthy(&controller, false).await;
    assert!(
        error.contains("traefik/http/services/svc/loadBalancer/servers/0/weight"),
        "{error}"
    );
    assert_eq!(controller.snapshot().await.expect("snapshot").version, good);
    sim.kv_delete(
        "traefik/http/services/svc/loadBalancer/servers/0/weight",
        false,
    );
    provider_healthy(&controller, true).await;

    // The agent goes away: routes stay, the status says why; it comes back: healthy again.
    sim.stop();
    let error = provider_healthy(&controller, false).await;
    assert!(error.contains("consul"), "{error}");
    traffic(&proxy, "web.example", "backend-a").await;
    assert_eq!(controller.snapshot().await.expect("snapshot").version, good);
    sim.resume().await.expect("resume");
    provider_healthy(&controller, true).await;
    traffic(&proxy, "web.example", "backend-a").await;
}

#[tokio::test]
async fn kv_over_https_trusts_the_configured_ca() {
    // A CA and a server certificate for 127.0.0.1, as an agent with `tls.https` would have.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let sim = ConsulSim::start_tls(server).await.unwrap();
    let dir = support::TempDir::new("consul-tls");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let a = backend("backend-a").await;
    put_route(&sim, "web", "tls.example", "svc", a);

    let controller = Controller::start(&format!(
        "consul:\n  endpoints: ['https://{}']\n  rootKey: traefik\n  tls:\n    ca: {}\n",
        sim.address(),
        ca_file.display()
    ))
    .await;
    let proxy = Proxy::start(&controller.url).await;
    traffic(&proxy, "tls.example", "backend-a").await;

    // Without the CA, the agent's certificate is not trusted: an error, no routes.
    let untrusted = Controller::start(&format!(
        "consul:\n  endpoints: ['https://{}']\n  rootKey: traefik\n",
        sim.address()
    ))
    .await;
    let error = provider_healthy(&untrusted, false).await;
    assert!(!error.is_empty());
    assert!(untrusted.routes().await.unwrap().routers.is_empty());
}
