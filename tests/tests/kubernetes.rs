//! The Kubernetes CRD provider (`kubernetescrd`) driving the real `kube::Client` against the
//! Kubernetes API server SIMULATOR (`switchyard_tests::sim::kube`) over HTTP with a bearer token:
//! IngressRoute + Service + EndpointSlice → routes on a proxy; scale up/down through the
//! EndpointSlice; Middleware and TraefikService references; a TLS Secret; cross-namespace
//! refusal and an unknown Service reported as Events and diagnostics while the rest routes; the
//! watch restarting after `410 Gone`; the API server going away (routes stay, status reported)
//! and coming back. The Traefik-documented fixtures (`tests/fixtures/kubernetes/`) are checked
//! against the pure translation.

// Test helpers: a failed setup step should panic loudly.

use crate::support::providers as support;

use std::{collections::BTreeSet, net::SocketAddr, path::Path};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::{Controller, DEADLINE, Proxy, eventually};
use switchyard_controller::provider::kubernetes::{
    naming,
    translate::{Cluster, Settings, translate},
};
use switchyard_tests::sim::kube::{KubeSim, KubeSimOptions};
use tokio::net::TcpListener;

const TOKEN: &str = "sim-token";

/// Backends answering `<name> <path>`, one per loopback address, all on the same port (an
/// EndpointSlice has one port for all its endpoints).
async fn backends(names: &[(&str, &str)]) -> u16 {
    let mut port = 0;
    for (ip, name) in names {
        let listener = TcpListener::bind(format!("{ip}:{port}"))
            .await
            .expect("bind a backend");
        port = listener.local_addr().unwrap().port();
        let name = name.to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let body = format!("{name} {}", req.uri().path());
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }
    port
}

fn slice(name: &str, service: &str, port: u16, endpoints: &[(&str, bool)]) -> String {
    let mut text = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: [{{name: web, port: {port}, protocol: TCP}}]\nendpoints:\n"
    );
    for (ip, serving) in endpoints {
        text.push_str(&format!(
            "  - addresses: ['{ip}']\n    conditions: {{ready: {serving}, serving: {serving}, terminating: false}}\n"
        ));
    }
    text
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: whoami}
spec:
  ports: [{name: web, port: 80, targetPort: web}]
---
apiVersion: v1
kind: Service
metadata: {name: other}
spec:
  ports: [{name: web, port: 8080}]
"#;

const ROUTES: &str = r#"
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: app}
spec:
  entryPoints: [web]
  routes:
    - match: Host(`app.example`)
      kind: Rule
      services: [{name: whoami, port: 80}]
    - match: Host(`app.example`) && PathPrefix(`/api`)
      kind: Rule
      middlewares: [{name: strip-api}]
      services: [{name: whoami, port: web}]
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: strip-api}
spec:
  stripPrefix: {prefixes: [/api]}
---
apiVersion: traefik.io/v1alpha1
kind: TraefikService
metadata: {name: split}
spec:
  weighted:
    services:
      - {name: whoami, port: 80, weight: 1}
      - {name: other, port: 8080, weight: 1}
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: canary}
spec:
  routes:
    - match: Host(`split.example`)
      services: [{name: split, kind: TraefikService}]
"#;

fn provider_yaml(sim: &KubeSim) -> String {
    format!(
        "providersThrottleDuration: 10ms\nkubernetesCRD:\n  endpoint: '{}'\n  token: {TOKEN}\n",
        sim.url()
    )
}

/// The backends that answered `host` + `path` through the proxy (a bounded number of requests).
async fn answering(proxy: &Proxy, host: &str, path: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        if let Ok((200, body)) = proxy.get(host, path).await {
            seen.insert(body);
        }
    }
    seen
}

async fn expect_answers(proxy: &Proxy, host: &str, path: &str, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    eventually(
        &format!("{host}{path} answered by {want:?}"),
        DEADLINE,
        || async {
            let seen = answering(proxy, host, path).await;
            if seen == want {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
}

async fn provider_health(controller: &Controller, healthy: bool) -> String {
    eventually(
        &format!("kubernetescrd healthy={healthy}"),
        DEADLINE,
        || async {
            let status = controller.provider("kubernetescrd").await?;
            if status.healthy == healthy {
                Ok(status.error)
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await
}

async fn start_sim() -> KubeSim {
    KubeSim::start_with(KubeSimOptions {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await
    .expect("simulator")
}

#[tokio::test]
async fn simulator_lists_and_watches_with_resource_versions_and_410() {
    let sim = start_sim().await;
    sim.apply(SERVICES).unwrap();
    let client = reqwest_like(&sim);
    // Unauthenticated requests are refused.
    let (status, _) = raw_get(sim.url(), "/api/v1/services", None).await;
    assert_eq!(status, 401);
    let (status, list) = client("/api/v1/namespaces/default/services?limit=1").await;
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(
        list["items"][0].get("kind").is_none(),
        "typed list items carry no kind"
    );
    let token = list["metadata"]["continue"].as_str().unwrap().to_owned();
    let (_, rest) = client(&format!(
        "/api/v1/namespaces/default/services?limit=1&continue={token}"
    ))
    .await;
    let rest: Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["metadata"].get("continue").is_none());
    // A watch from a compacted resourceVersion gets one 410 ERROR event.
    let rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    sim.expire_watches();
    let (status, body) = client(&format!("/api/v1/services?watch=1&resourceVersion={rv}")).await;
    assert_eq!(status, 200);
    let event: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    // Label selectors filter lists.
    let (_, selected) = client("/api/v1/services?labelSelector=owner%21%3Dhelm").await;
    let selected: Value = serde_json::from_str(&selected).unwrap();
    assert_eq!(selected["items"].as_array().unwrap().len(), 2);
}

/// GET with the simulator's token; returns `(status, body)`.
fn reqwest_like(
    sim: &KubeSim,
) -> impl Fn(&str) -> std::pin::Pin<Box<dyn Future<Output = (u16, String)>>> {
    let url = sim.url();
    move |path: &str| {
        let url = url.clone();
        let path = path.to_owned();
        Box::pin(async move { raw_get(url, &path, Some(TOKEN)).await })
    }
}

/// One GET; a watch is read until the server ends it (or for at most two seconds).
async fn raw_get(url: String, path: &str, token: Option<&str>) -> (u16, String) {
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, "kubernetes");
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(http_body_util::Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        http_body_util::BodyExt::collect(response.into_body()),
    )
    .await
    .expect("the response ends")
    .unwrap()
    .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn ingressroutes_route_scale_with_endpointslices_and_report_bad_resources() {
    let mut sim = start_sim().await;
    let port = backends(&[("127.0.0.2", "a"), ("127.0.0.3", "b")]).await;
    let other_port = backends(&[("127.0.0.4", "other")]).await;
    sim.apply(SERVICES).unwrap();
    sim.apply(&slice("whoami-1", "whoami", port, &[("127.0.0.2", true)]))
        .unwrap();
    sim.apply(&slice(
        "other-1",
        "other",
        other_port,
        &[("127.0.0.4", true)],
    ))
    .unwrap();
    sim.apply(ROUTES).unwrap();
    // Unusable: an unknown Service, and a Service of another namespace.
    sim.apply(
        r#"
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: broken}
spec:
  routes: [{match: Host(`broken.example`), services: [{name: missing, port: 80}]}]
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: sneaky, namespace: team-b}
spec:
  routes: [{match: Host(`sneaky.example`), services: [{name: whoami, namespace: default, port: 80}]}]
"#,
    )
    .unwrap();

    let controller = Controller::start(&provider_yaml(&sim)).await;
    let proxy = Proxy::start(&controller.url).await;

    // Routes with Traefik's names, on the proxy.
    expect_answers(&proxy, "app.example", "/", &["a /"]).await;
    expect_answers(&proxy, "app.example", "/api/users", &["a /users"]).await;
    expect_answers(&proxy, "split.example", "/", &["a /", "other /"]).await;
    let routes = controller.routes().await.unwrap();
    let app = naming::router_name("default", "app", "Host(`app.example`)");
    assert!(
        routes.routers.contains_key(&format!("{app}@kubernetescrd")),
        "{routes:?}"
    );
    assert!(
        routes
            .services
            .contains_key("default-whoami-80@kubernetescrd"),
        "{routes:?}"
    );

    // Left out, reported as diagnostics and as Events; the rest routes.
    assert_eq!(proxy.get("broken.example", "/").await.unwrap().0, 404);
    assert_eq!(proxy.get("sneaky.example", "/").await.unwrap().0, 404);
    let version = controller.version().await.unwrap();
    let objects: BTreeSet<&str> = version
        .diagnostics
        .iter()
        .filter(|d| d.provider == "kubernetescrd")
        .map(|d| d.object.as_str())
        .collect();
    assert!(
        objects.contains("ingressroute/default/broken"),
        "{objects:?}"
    );
    assert!(
        objects.contains("ingressroute/team-b/sneaky"),
        "{objects:?}"
    );
    let events = eventually("the Events", DEADLINE, || async {
        let events = sim.events();
        if events.len() >= 2 {
            Ok(events)
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await;
    let summary: BTreeSet<(String, String, String, String)> = events
        .iter()
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&e["involvedObject"]["namespace"]),
                s(&e["involvedObject"]["name"]),
                s(&e["reason"]),
                s(&e["type"]),
            )
        })
        .collect();
    assert!(
        summary.contains(&(
            "default".into(),
            "broken".into(),
            "ServiceNotFound".into(),
            "Warning".into()
        )),
        "{summary:?}"
    );
    assert!(
        summary.contains(&(
            "team-b".into(),
            "sneaky".into(),
            "CrossNamespaceRefused".into(),
            "Warning".into()
        )),
        "{summary:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["involvedObject"]["kind"] == "IngressRoute"
                && e["involvedObject"]["uid"].is_string())
    );

    // Scale up, then down (one endpoint stops serving, the other goes away).
    sim.apply(&slice(
        "whoami-1",
        "whoami",
        port,
        &[("127.0.0.2", true), ("127.0.0.3", true)],
    ))
    .unwrap();
    expect_answers(&proxy, "app.example", "/", &["a /", "b /"]).await;
    sim.apply(&slice(
        "whoami-1",
        "whoami",
        port,
        &[("127.0.0.2", false), ("127.0.0.3", true)],
    ))
    .unwrap();
    expect_answers(&proxy, "app.example", "/", &["b /"]).await;

    // A TLS secret becomes a certificate of the snapshot.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["secure.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "secure-cert"},
        "stringData": {"tls.crt": cert.pem(), "tls.key": key.serialize_pem()},
    });
    sim.apply_value(secret).unwrap();
    sim.apply(
        r#"
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: secure}
spec:
  routes: [{match: Host(`secure.example`), services: [{name: whoami, port: 80}]}]
  tls: {secretName: secure-cert}
"#,
    )
    .unwrap();
    eventually(
        "the secret's certificate in the snapshot",
        DEADLINE,
        || async {
            let snapshot = controller.snapshot().await?.snapshot.unwrap_or_default();
            let names: Vec<&Vec<String>> = snapshot.certificates.iter().map(|c| &c.names).collect();
            if snapshot
                .certificates
                .iter()
                .any(|c| c.names == ["secure.example"])
            {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        },
    )
    .await;

    // Deleting an IngressRoute removes its routes.
    assert!(sim.delete("IngressRoute", "default", "canary"));
    eventually("split.example gone", DEADLINE, || async {
        match proxy.get("split.example", "/").await? {
            (404, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(provider_health(&controller, true).await, "");
    sim.stop();
}

#[tokio::test]
async fn watches_list_again_after_410_gone() {
    let sim = start_sim().await;
    let port = backends(&[("127.0.0.5", "c"), ("127.0.0.6", "d")]).await;
    sim.apply(SERVICES).unwrap();
    sim.apply(&slice("whoami-1", "whoami", port, &[("127.0.0.5", true)]))
        .unwrap();
    sim.apply(ROUTES).unwrap();
    let controller = Controller::start(&provider_yaml(&sim)).await;
    let proxy = Proxy::start(&controller.url).await;
    expect_answers(&proxy, "app.example", "/", &["c /"]).await;
    let lists_before = sim.requests("endpointslices", "list");
    assert!(lists_before >= 1);
    eventually("watching endpointslices", DEADLINE, || async {
        let watches = sim.requests("endpointslices", "watch");
        if watches >= 1 {
            Ok(())
        } else {
            Err(format!("{watches} watches"))
        }
    })
    .await;

    // History is compacted and every watch cut with 410: the reflectors must list again, and a
    // change made after that must still arrive.
    sim.expire_watches();
    eventually("endpointslices listed again", DEADLINE, || async {
        let lists = sim.requests("endpointslices", "list");
        if lists > lists_before {
            Ok(())
        } else {
            Err(format!("{lists} lists"))
        }
    })
    .await;
    sim.apply(&slice("whoami-1", "whoami", port, &[("127.0.0.6", true)]))
        .unwrap();
    expect_answers(&proxy, "app.example", "/", &["d /"]).await;
    // A routine 410 is not an outage.
    assert_eq!(provider_health(&controller, true).await, "");
}

#[tokio::test]
async fn api_server_outage_keeps_routes_and_reports_status() {
    let mut sim = start_sim().await;
    let port = backends(&[("127.0.0.7", "e"), ("127.0.0.8", "f")]).await;
    sim.apply(SERVICES).unwrap();
    sim.apply(&slice("whoami-1", "whoami", port, &[("127.0.0.7", true)]))
        .unwrap();
    sim.apply(ROUTES).unwrap();
    let controller = Controller::start(&provider_yaml(&sim)).await;
    let proxy = Proxy::start(&controller.url).await;
    expect_answers(&proxy, "app.example", "/", &["e /"]).await;
    let version = controller.version().await.unwrap().version;

    sim.stop();
    let error = provider_health(&controller, false).await;
    assert!(error.contains("kubernetes API"), "{error}");
    // Nothing changed on the data path.
    expect_answers(&proxy, "app.example", "/", &["e /"]).await;
    assert_eq!(controller.version().await.unwrap().version, version);

    // The server comes back with a change made meanwhile (as if written by another client).
    sim.apply(&slice("whoami-1", "whoami", port, &[("127.0.0.8", true)]))
        .unwrap();
    sim.resume().await.unwrap();
    expect_answers(&proxy, "app.example", "/", &["f /"]).await;
    assert_eq!(provider_health(&controller, true).await, "");
}

// ---- Traefik-documented fixtures ------------------------------------------------------------

/// `tests/fixtures/kubernetes/*.yml`: manifests from Traefik's documentation followed by one
/// `kind: Expected` document (see the README there).
#[test]
fn traefik_documented_manifests_translate_as_documented() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "fixtures missing in {}", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        check_fixture(&file, &text);
    }
}

fn check_fixture(file: &Path, text: &str) {
    let name = file.file_name().unwrap().to_string_lossy();
    let cluster = Cluster::from_manifests(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: Value = text
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .find(|doc| doc["kind"] == "Expected")
        .unwrap_or_else(|| panic!("{name}: no `kind: Expected` document"));
    let settings = Settings {
        allow_cross_namespace: expected["settings"]["allowCrossNamespace"]
            .as_bool()
            .unwrap_or(false),
        allow_empty_services: expected["settings"]["allowEmptyServices"]
            .as_bool()
            .unwrap_or(false),
        allow_external_name_services: expected["settings"]["allowExternalNameServices"]
            .as_bool()
            .unwrap_or(false),
        ingress_class: expected["settings"]["ingressClass"]
            .as_str()
            .map(str::to_owned),
    };
    let translation = translate(&cluster, &settings);
    let got = serde_json::to_value(&translation.config).unwrap();
    let http = &got["http"];
    for section in ["routers", "services", "middlewares"] {
        let want = &expected[section];
        let have = &http[section];
        let want_names: BTreeSet<&String> = want
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        let have_names: BTreeSet<&String> = have
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(want_names, have_names, "{name}: {section} names");
        for (object, fields) in want.as_object().into_iter().flatten() {
            subset(
                &format!("{name}: {section}.{object}"),
                fields,
                &have[object],
            );
        }
    }
    let problems: Vec<String> = translation
        .problems
        .iter()
        .map(|p| format!("{} {}/{} {}", p.kind, p.namespace, p.name, p.reason))
        .collect();
    let want_problems: Vec<String> = expected["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        problems, want_problems,
        "{name}: problems {:?}",
        translation.problems
    );
}

/// Every field of `want` is in `have` with the same value (objects recursively; lists of the
/// same length, element by element).
fn subset(at: &str, want: &Value, have: &Value) {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for (k, v) in w {
                subset(&format!("{at}.{k}"), v, h.get(k).unwrap_or(&Value::Null));
            }
        }
        (Value::Array(w), Value::Array(h)) => {
            assert_eq!(w.len(), h.len(), "{at}: {have}");
            for (i, (w, h)) in w.iter().zip(h).enumerate() {
                subset(&format!("{at}[{i}]"), w, h);
            }
        }
        _ => assert_eq!(want, have, "{at}"),
    }
}
