//! The Docker provider against a REAL Docker engine (Debian's `docker.io`, a private `dockerd`
//! per test unless SWITCHYARD_DOCKER_HOST names one; see `switchyard_tests::docker`).
//! Containers that receive requests run busybox `httpd` with host networking on loopback ports;
//! discovery-only checks read the compiled snapshot over gRPC.

// Test helpers: a failed setup step should panic loudly.

use crate::support::providers as support;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use support::{Controller, DEADLINE, Proxy, eventually, free_port};
use switchyard_shared::pb;
use switchyard_tests::docker::{Dockerd, TEST_LABEL};

/// `providers.docker` for this test's daemon, seeing only this test's containers.
fn provider_yaml(docker: &Dockerd, extra: &str) -> String {
    format!(
        "docker:\n  endpoint: {}\n  constraints: '{}'\n{extra}",
        docker.host(),
        docker.constraint()
    )
}

/// A busybox httpd on `127.0.0.1:port` (host network) answering `GET /` with `body`.
async fn web(docker: &Dockerd, name: &str, port: u16, body: &str, labels: &[String]) -> String {
    let script = format!(
        "/bin/busybox mkdir -p /www && echo {body} > /www/index.html && \
         exec /bin/busybox httpd -f -p 127.0.0.1:{port} -h /www"
    );
    let mut options = vec!["--network", "host"];
    for label in labels {
        options.push("--label");
        options.push(label);
    }
    docker
        .run(name, &options, &["/bin/busybox", "sh", "-c", &script])
        .await
}

/// A container that only sleeps (discovery-only checks).
async fn sleeper(docker: &Dockerd, name: &str, options: &[&str]) -> String {
    docker
        .run(name, options, &["/bin/busybox", "sleep", "3600"])
        .await
}

/// Waits until `proxy` answers `host`+`path` with 200 and a body containing `expected`.
async fn serves(proxy: &Proxy, host: &str, path: &str, expected: &str) {
    eventually(
        &format!("{host}{path} → {expected} via {}", proxy.web),
        DEADLINE,
        || async {
            match proxy.get(host, path).await? {
                (200, body) if body.contains(expected) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// Waits until `proxy` answers `host` with `status`.
async fn answers(proxy: &Proxy, host: &str, path: &str, status: u16) {
    eventually(&format!("{host}{path} → {status}"), DEADLINE, || async {
        match proxy.get(host, path).await? {
            (s, _) if s == status => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// The current snapshot.
async fn snapshot(controller: &Controller) -> Result<pb::Snapshot, String> {
    controller
        .snapshot()
        .await?
        .snapshot
        .ok_or_else(|| "no snapshot yet".to_owned())
}

fn servers(snapshot: &pb::Snapshot, service: &str) -> Option<Vec<String>> {
    snapshot
        .services
        .iter()
        .find(|s| s.name == service)
        .map(|s| match &s.kind {
            Some(pb::service::Kind::LoadBalancer(lb)) => {
                let mut urls: Vec<String> = lb.servers.iter().map(|s| s.url.clone()).collect();
                urls.sort();
                urls
            }
            _ => Vec::new(),
        })
}

async fn container_ip(docker: &Dockerd, container: &str, network: &str) -> String {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    docker
        .must(&["inspect", "--format", &format, container])
        .await
}

fn port_of(addr: SocketAddr) -> u16 {
    addr.port()
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_route_on_both_proxies_and_follow_start_stop_and_scale() {
    let docker = Dockerd::start().await;
    docker.image().await;
    let controller = Controller::start(&provider_yaml(&docker, "")).await;
    let proxies = [
        Proxy::start(&controller.url).await,
        Proxy::start(&controller.url).await,
    ];
    let (p1, p2) = (port_of(free_port().await), port_of(free_port().await));
    let labels = |port: u16| {
        vec![
            "traefik.http.routers.web.rule=Host(`web.docker.test`)".to_owned(),
            "traefik.http.routers.web.middlewares=strip".to_owned(),
            "traefik.http.middlewares.strip.stripprefix.prefixes=/app".to_owned(),
            format!("traefik.http.services.web.loadbalancer.server.port={port}"),
        ]
    };
    let first = docker.name("web1");
    web(&docker, &first, p1, "replica-one", &labels(p1)).await;
    // The strip-prefix middleware is applied (httpd has no /app), on every proxy.
    for proxy in &proxies {
        serves(proxy, "web.docker.test", "/app/", "replica-one").await;
    }

    // Scale to two: the service gains a server and traffic reaches both.
    let second = docker.name("web2");
    web(&docker, &second, p2, "replica-two", &labels(p2)).await;
    eventually("both replicas in service web@docker", DEADLINE, || async {
        let s = snapshot(&controller).await?;
        let urls = servers(&s, "web@docker").unwrap_or_default();
        let want = {
            let mut w = vec![
                format!("http://127.0.0.1:{p1}"),
                format!("http://127.0.0.1:{p2}"),
            ];
            w.sort();
            w
        };
        if urls == want {
            Ok(())
        } else {
            Err(format!("{urls:?}"))
        }
    })
    .await;
    for proxy in &proxies {
        // Round robin over two servers: a bounded number of requests reaches both.
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..40 {
            let (status, body) = proxy.get("web.docker.test", "/app/").await.unwrap();
            assert_eq!(status, 200, "{body}");
            *seen.entry(body.trim().to_owned()).or_default() += 1;
            if seen.len() == 2 {
                break;
            }
        }
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            ["replica-one", "replica-two"],
            "{seen:?}"
        );
    }

    // Stop one: only the other serves.
    docker.must(&["stop", "--time", "1", &first]).await;
    eventually(
        "replica one leaves service web@docker",
        DEADLINE,
        || async {
            let s = snapshot(&controller).await?;
            match servers(&s, "web@docker") {
                Some(urls) if urls == [format!("http://127.0.0.1:{p2}")] => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    for proxy in &proxies {
        serves(proxy, "web.docker.test", "/app/", "replica-two").await;
        for _ in 0..6 {
            let (status, body) = proxy.get("web.docker.test", "/app/").await.unwrap();
            assert_eq!((status, body.trim()), (200, "replica-two"));
        }
    }

    // Start it again: back in service.
    docker.must(&["start", &first]).await;
    eventually("replica one back in service", DEADLINE, || async {
        let s = snapshot(&controller).await?;
        match servers(&s, "web@docker") {
            Some(urls) if urls.len() == 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Remove both: the router is gone (404), not a 503.
    docker.must(&["rm", "-f", &first, &second]).await;
    for proxy in &proxies {
        answers(proxy, "web.docker.test", "/app/", 404).await;
    }
    let status = controller.provider("docker").await.unwrap();
    assert!(status.healthy, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_naming_default_rule_ports_networks_and_health() {
    let docker = Dockerd::start().await;
    docker.image().await;
    let (front, back) = (docker.name("front"), docker.name("back"));
    docker.must(&["network", "create", &front]).await;
    docker.must(&["network", "create", &back]).await;
    let project = format!("shop{}", docker.id());
    let controller = Controller::start(&provider_yaml(
        &docker,
        "  defaultRule: 'Host(`{{ normalize .Name }}.example.com`)'\n",
    ))
    .await;

    // Two replicas of Compose service `api`: one service `api-<project>`, lowest exposed port.
    let compose = [
        "com.docker.compose.service=api".to_owned(),
        format!("com.docker.compose.project={project}"),
    ];
    let mut api_ips = Vec::new();
    for replica in 1..=2 {
        let name = docker.name(&format!("api{replica}"));
        sleeper(
            &docker,
            &name,
            &[
                "--network",
                &front,
                "--expose",
                "9000",
                "--expose",
                "8080",
                "--label",
                &compose[0],
                "--label",
                &compose[1],
            ],
        )
        .await;
        api_ips.push(container_ip(&docker, &name, &front).await);
    }
    // On two networks; `traefik.docker.network` picks one.
    let multi = docker.name("multi");
    let network_label = format!("traefik.docker.network={back}");
    sleeper(
        &docker,
        &multi,
        &[
            "--network",
            &front,
            "--expose",
            "80",
            "--label",
            &network_label,
        ],
    )
    .await;
    docker.must(&["network", "connect", &back, &multi]).await;
    let multi_back_ip = container_ip(&docker, &multi, &back).await;
    // `traefik.enable=false` is not exposed.
    let hidden = docker.name("hidden");
    sleeper(
        &docker,
        &hidden,
        &[
            "--network",
            &front,
            "--expose",
            "80",
            "--label",
            "traefik.enable=false",
        ],
    )
    .await;
    // A health check that fails until /ok exists.
    let checked = docker.name("checked");
    sleeper(
        &docker,
        &checked,
        &[
            "--network",
            &front,
            "--expose",
            "80",
            "--health-cmd",
            "/bin/busybox test -f /ok",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
        ],
    )
    .await;

    let api_service = format!("api-{project}@docker");
    let snap = eventually(
        "compose service and multi-network container",
        DEADLINE,
        || async {
            let s = snapshot(&controller).await?;
            let have_api = servers(&s, &api_service).is_some_and(|u| u.len() == 2);
            let have_multi = servers(&s, &format!("{multi}@docker")).is_some();
            if have_api && have_multi {
                Ok(s)
            } else {
                Err(format!(
                    "routers {:?}",
                    s.routers.iter().map(|r| &r.name).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;
    let mut want: Vec<String> = api_ips
        .iter()
        .map(|ip| format!("http://{ip}:8080"))
        .collect();
    want.sort();
    assert_eq!(servers(&snap, &api_service).unwrap(), want);
    let router = snap
        .routers
        .iter()
        .find(|r| r.name == api_service)
        .expect("router named after the compose service");
    assert_eq!(
        router.rule_text,
        format!("Host(`api-{project}.example.com`)")
    );
    assert_eq!(router.service, api_service);
    assert_eq!(
        servers(&snap, &format!("{multi}@docker")).unwrap(),
        [format!("http://{multi_back_ip}:80")]
    );
    assert!(
        !snap.routers.iter().any(|r| r.name.starts_with(&hidden)),
        "traefik.enable=false must hide the container"
    );
    assert!(
        !snap.routers.iter().any(|r| r.name.starts_with(&checked)),
        "an unhealthy container must be left out"
    );

    // Healthy → in service (driven by the health_status event).
    docker
        .must(&["exec", &checked, "/bin/busybox", "touch", "/ok"])
        .await;
    eventually("healthy container enters service", DEADLINE, || async {
        let s = snapshot(&controller).await?;
        servers(&s, &format!("{checked}@docker"))
            .filter(|u| u.len() == 1)
            .map(|_| ())
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    // Networks can be removed once their containers are gone (containers go on drop too).
    let ids = docker
        .must(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={TEST_LABEL}={}", docker.id()),
        ])
        .await;
    for id in ids.split_whitespace() {
        docker.must(&["rm", "-f", id]).await;
    }
    let _ = docker.docker(&["network", "rm", &front, &back]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_label_leaves_only_that_container_out_and_names_it() {
    let docker = Dockerd::start().await;
    docker.image().await;
    let controller = Controller::start(&provider_yaml(&docker, "")).await;
    let proxy = Proxy::start(&controller.url).await;
    let port = port_of(free_port().await);
    let good = docker.name("good");
    web(
        &docker,
        &good,
        port,
        "good-backend",
        &[
            "traefik.http.routers.good.rule=Host(`good.docker.test`)".to_owned(),
            format!("traefik.http.services.good.loadbalancer.server.port={port}"),
        ],
    )
    .await;
    let bad = docker.name("bad");
    sleeper(
        &docker,
        &bad,
        &[
            "--network",
            "host",
            "--label",
            "traefik.http.routers.bad.rule=Host(`bad.docker.test`)",
            "--label",
            "traefik.http.services.bad.loadbalancer.server.port=eighty",
        ],
    )
    .await;
    serves(&proxy, "good.docker.test", "/", "good-backend").await;
    let diagnostic = eventually(
        "a diagnostic naming the bad container",
        DEADLINE,
        || async {
            let version = controller.version().await?;
            version
                .diagnostics
                .iter()
                .find(|d| d.provider == "docker" && d.message.contains(&bad))
                .cloned()
                .ok_or_else(|| format!("{:?}", version.diagnostics))
        },
    )
    .await;
    assert_eq!(diagnostic.severity, "error");
    assert!(
        diagnostic
            .message
            .contains("traefik.http.services.bad.loadbalancer.server.port")
            && diagnostic.message.contains("`eighty` is not a port"),
        "{diagnostic:?}"
    );
    answers(&proxy, "bad.docker.test", "/", 404).await;
    let status = controller.provider("docker").await.unwrap();
    assert!(
        status.healthy,
        "a bad label is not a provider outage: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_outage_keeps_routes_and_resyncs_when_it_returns() {
    // Our own daemon, with live restore: containers keep serving while it is down.
    let mut docker = Dockerd::private(true).await;
    docker.image().await;
    let controller = Controller::start(&provider_yaml(&docker, "")).await;
    let proxy = Proxy::start(&controller.url).await;
    let port = port_of(free_port().await);
    let before = docker.name("before");
    web(
        &docker,
        &before,
        port,
        "steady-backend",
        &[
            "traefik.http.routers.steady.rule=Host(`steady.docker.test`)".to_owned(),
            format!("traefik.http.services.steady.loadbalancer.server.port={port}"),
        ],
    )
    .await;
    serves(&proxy, "steady.docker.test", "/", "steady-backend").await;

    docker.stop().await;
    let status = eventually("the outage in the provider status", DEADLINE, || async {
        let p = controller.provider("docker").await?;
        if p.healthy {
            Err(format!("{p:?}"))
        } else {
            Ok(p)
        }
    })
    .await;
    assert!(
        status.error.contains(docker.host()) && status.error.contains("keeping the last good"),
        "{status:?}"
    );
    // Routes stay: the same traffic keeps flowing, for a while and across retries.
    for _ in 0..20 {
        let (code, body) = proxy.get("steady.docker.test", "/").await.unwrap();
        assert_eq!((code, body.trim()), (200, "steady-backend"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !controller.provider("docker").await.unwrap().healthy,
        "still down"
    );

    docker.restart().await;
    eventually("provider healthy again", DEADLINE, || async {
        let p = controller.provider("docker").await?;
        if p.healthy {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    // Events flow again: a new container is routed.
    let port2 = port_of(free_port().await);
    let after = docker.name("after");
    web(
        &docker,
        &after,
        port2,
        "after-backend",
        &[
            "traefik.http.routers.after.rule=Host(`after.docker.test`)".to_owned(),
            format!("traefik.http.services.after.loadbalancer.server.port={port2}"),
        ],
    )
    .await;
    serves(&proxy, "after.docker.test", "/", "after-backend").await;
    serves(&proxy, "steady.docker.test", "/", "steady-backend").await;
}

/// One differential case: labelled containers and the configuration Traefik's documentation
/// says they produce.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    /// Where in Traefik's documentation the example comes from.
    source: String,
    #[serde(default)]
    provider: BTreeMap<String, serde_yaml::Value>,
    containers: Vec<FixtureContainer>,
    expected: Expected,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureContainer {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    expose: Vec<u16>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Expected {
    #[serde(default)]
    routers: BTreeMap<String, ExpectedRouter>,
    /// Service → server URLs (sorted).
    #[serde(default)]
    services: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    middlewares: Vec<String>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ExpectedRouter {
    rule: String,
    service: String,
    #[serde(default)]
    middlewares: Vec<String>,
    #[serde(default)]
    priority: Option<i64>,
}

fn fixtures() -> Vec<(PathBuf, Fixture)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/docker");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let fixture: Fixture =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, fixture)
        })
        .collect()
}

/// What a snapshot holds, in the fixtures' terms (provider suffixes stripped).
fn observed(snapshot: &pb::Snapshot) -> Expected {
    let strip = |s: &str| s.trim_end_matches("@docker").to_owned();
    Expected {
        routers: snapshot
            .routers
            .iter()
            .map(|r| {
                (
                    strip(&r.name),
                    ExpectedRouter {
                        rule: r.rule_text.clone(),
                        service: strip(&r.service),
                        middlewares: r.middlewares.iter().map(|m| strip(m)).collect(),
                        priority: Some(r.priority),
                    },
                )
            })
            .collect(),
        services: snapshot
            .services
            .iter()
            .map(|s| {
                (
                    strip(&s.name),
                    servers(snapshot, &s.name).unwrap_or_default(),
                )
            })
            .collect(),
        middlewares: snapshot
            .middlewares
            .iter()
            .map(|m| strip(&m.name))
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn label_sets_from_traefik_documentation_compile_as_documented() {
    let docker = Dockerd::start().await;
    docker.image().await;
    let cases = fixtures();
    assert!(
        cases.len() >= 6,
        "expected the documented cases in tests/fixtures/docker"
    );
    for (path, fixture) in cases {
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        let case_label = format!("switchyard.fixture={case}-{}", docker.id());
        let mut extra = String::new();
        for (key, value) in &fixture.provider {
            extra.push_str(&format!(
                "  {key}: {}\n",
                serde_json::to_string(value).unwrap()
            ));
        }
        let yaml = format!(
            "docker:\n  endpoint: {}\n  constraints: 'Label(`switchyard.fixture`, `{case}-{}`)'\n{extra}",
            docker.host(),
            docker.id()
        );
        let controller = Controller::start(&yaml).await;
        let mut ids = Vec::new();
        for container in &fixture.containers {
            let mut options: Vec<String> = vec![
                "--network".into(),
                "host".into(),
                "--label".into(),
                case_label.clone(),
            ];
            for (k, v) in &container.labels {
                options.push("--label".into());
                options.push(format!("{k}={v}"));
            }
            for port in &container.expose {
                options.push("--expose".into());
                options.push(port.to_string());
            }
            let options: Vec<&str> = options.iter().map(String::as_str).collect();
            ids.push(sleeper(&docker, &container.name, &options).await);
        }
        let want = fixture.expected;
        eventually(
            &format!("{case} ({}) compiles as documented", fixture.source),
            DEADLINE,
            || async {
                let s = snapshot(&controller).await?;
                let mut got = observed(&s);
                // Priorities are compared only where the fixture states one.
                for (name, router) in &mut got.routers {
                    if want.routers.get(name).is_some_and(|r| r.priority.is_none()) {
                        router.priority = None;
                    }
                }
                if got == want {
                    Ok(())
                } else {
                    let diags = controller.version().await?.diagnostics;
                    Err(format!("{got:#?}\ndiagnostics: {diags:#?}"))
                }
            },
        )
        .await;
        let mut rm = vec!["rm", "-f"];
        rm.extend(ids.iter().map(String::as_str));
        docker.must(&rm).await;
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn write_pki(dir: &std::path::Path) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, sans) in [("server", "127.0.0.1"), ("client", "switchyard")] {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![sans.to_owned()]).unwrap();
        if name == "client" {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_endpoint_with_mutual_tls() {
    let pki = support::TempDir::new("docker-pki");
    write_pki(pki.path());
    let file = |name: &str| pki.path().join(name).display().to_string();
    let port = port_of(free_port().await);
    let docker = Dockerd::private_with(
        true,
        vec![
            "--tlsverify".into(),
            "--tlscacert".into(),
            file("ca.pem"),
            "--tlscert".into(),
            file("server.pem"),
            "--tlskey".into(),
            file("server-key.pem"),
            "--host".into(),
            format!("tcp://127.0.0.1:{port}"),
        ],
    )
    .await;
    docker.image().await;
    let controller = Controller::start(&format!(
        "docker:\n  endpoint: tcp://127.0.0.1:{port}\n  constraints: '{}'\n  tls:\n    ca: {}\n    cert: {}\n    key: {}\n",
        docker.constraint(),
        file("ca.pem"),
        file("client.pem"),
        file("client-key.pem"),
    ))
    .await;
    // Without TLS the same listener refuses us: an outage, reported.
    let plain = Controller::start(&format!(
        "docker:\n  endpoint: tcp://127.0.0.1:{port}\n  constraints: '{}'\n",
        docker.constraint()
    ))
    .await;
    let name = docker.name("tls");
    sleeper(
        &docker,
        &name,
        &[
            "--network",
            "host",
            "--label",
            "traefik.http.routers.tls.rule=Host(`tls.docker.test`)",
            "--label",
            "traefik.http.services.tls.loadbalancer.server.port=8443",
        ],
    )
    .await;
    eventually("the container seen over mutual TLS", DEADLINE, || async {
        let s = snapshot(&controller).await?;
        match servers(&s, "tls@docker") {
            Some(urls) if urls == ["http://127.0.0.1:8443"] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(controller.provider("docker").await.unwrap().healthy);
    let refused = eventually("the plain client reported unhealthy", DEADLINE, || async {
        let p = plain.provider("docker").await?;
        if p.healthy {
            Err(format!("{p:?}"))
        } else {
            Ok(p)
        }
    })
    .await;
    assert!(
        refused.error.contains(&format!("tcp://127.0.0.1:{port}")),
        "{refused:?}"
    );
}
