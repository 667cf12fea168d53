use super::*;

const BACKENDS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: whoami}
spec:
  ports: [{name: web, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: whoami-abc
  labels: {kubernetes.io/service-name: whoami}
addressType: IPv4
ports: [{name: web, port: 8080}]
endpoints:
  - addresses: [10.0.0.1]
    conditions: {ready: true, serving: true}
  - addresses: [10.0.0.2]
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [10.0.0.3]
    conditions: {ready: false, serving: false}
  - addresses: [10.0.0.1]
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: team-b}
spec:
  ports: [{port: 80}]
"#;

fn run(extra: &str, settings: &Settings) -> Translation {
    let cluster = Cluster::from_manifests(&format!("{BACKENDS}\n---\n{extra}")).unwrap();
    translate(&cluster, settings)
}

fn servers(t: &Translation, service: &str) -> Vec<String> {
    let http = t.config.http.as_ref().unwrap();
    let lb = http.services[service].load_balancer.as_ref().unwrap();
    lb.servers.iter().map(|s| s.url.clone()).collect()
}

#[test]
fn only_serving_non_terminating_endpoints_are_servers_once_each() {
    let t = run(
        r#"
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: app}
spec:
  routes:
    - match: Host(`app.example`)
      services: [{name: whoami, port: web}]
"#,
        &Settings::default(),
    );
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let name = naming::router_name("default", "app", "Host(`app.example`)");
    assert_eq!(servers(&t, &name), ["http://10.0.0.1:8080"]);
    let http = t.config.http.as_ref().unwrap();
    assert_eq!(http.routers[&name].service, name);
}

#[test]
fn a_bad_route_costs_only_itself_and_is_reported() {
    let t = run(
        r#"
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: app, uid: u-1}
spec:
  routes:
    - match: Path(`/ok`)
      services: [{name: whoami, port: 80}]
    - match: Path(`/missing`)
      services: [{name: nope, port: 80}]
    - match: Path(`/cross`)
      services: [{name: other, namespace: team-b, port: 80}]
    - match: Path(`/mw`)
      middlewares: [{name: strip, namespace: team-b}]
      services: [{name: whoami, port: 80}]
"#,
        &Settings::default(),
    );
    let http = t.config.http.as_ref().unwrap();
    assert_eq!(http.routers.len(), 1, "{:?}", http.routers.keys());
    let reasons: Vec<(&str, &str)> = t
        .problems
        .iter()
        .map(|p| (p.reason, p.name.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("CrossNamespaceRefused", "app"),
            ("CrossNamespaceRefused", "app"),
            ("ServiceNotFound", "app")
        ]
    );
    assert!(t.problems.iter().all(|p| p.uid.as_deref() == Some("u-1")));
    assert_eq!(t.problems[0].object(), "ingressroute/default/app");

    let allowed = run(
        r#"
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: app}
spec:
  routes:
    - match: Path(`/cross`)
      services: [{name: other, namespace: team-b, port: 80}]
"#,
        &Settings {
            allow_cross_namespace: true,
            allow_empty_services: true,
            ..Default::default()
        },
    );
    assert!(allowed.problems.is_empty(), "{:?}", allowed.problems);
}

#[test]
fn ingress_class_selects_routes() {
    let manifests = r#"
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: annotated
  annotations: {kubernetes.io/ingress.class: edge}
spec:
  routes: [{match: Path(`/a`), services: [{name: whoami, port: 80}]}]
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: plain}
spec:
  routes: [{match: Path(`/b`), services: [{name: whoami, port: 80}]}]
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: spec-class
  annotations: {kubernetes.io/ingress.class: other}
spec:
  ingressClassName: edge
  routes: [{match: Path(`/c`), services: [{name: whoami, port: 80}]}]
"#;
    let rules = |settings: &Settings| -> Vec<String> {
        let t = run(manifests, settings);
        let mut rules: Vec<String> = t
            .config
            .http
            .unwrap()
            .routers
            .values()
            .map(|r| r.rule.clone())
            .collect();
        rules.sort();
        rules
    };
    assert_eq!(rules(&Settings::default()), ["Path(`/b`)"]);
    let edge = Settings {
        ingress_class: Some("edge".into()),
        ..Default::default()
    };
    assert_eq!(rules(&edge), ["Path(`/a`)", "Path(`/c`)"]);
}

#[test]
fn tls_secret_becomes_a_certificate_and_router_tls() {
    let t = run(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: app-cert}
type: kubernetes.io/tls
stringData: {tls.crt: CERT, tls.key: KEY}
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: app}
spec:
  entryPoints: [websecure]
  routes: [{match: Host(`app.example`), services: [{name: whoami, port: 80}]}]
  tls:
    secretName: app-cert
    options: {name: modern}
---
apiVersion: traefik.io/v1alpha1
kind: TLSOption
metadata: {name: modern}
spec: {minVersion: VersionTLS13}
"#,
        &Settings::default(),
    );
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let tls = t.config.tls.as_ref().unwrap();
    assert_eq!(tls.certificates.len(), 1);
    assert_eq!(tls.certificates[0].cert_file, "CERT");
    assert_eq!(tls.certificates[0].key_file, "KEY");
    assert_eq!(
        tls.options["default-modern"].min_version.as_deref(),
        Some("VersionTLS13")
    );
    let router = t
        .config
        .http
        .as_ref()
        .unwrap()
        .routers
        .values()
        .next()
        .unwrap();
    assert_eq!(
        router.tls.as_ref().unwrap().options.as_deref(),
        Some("default-modern")
    );
}

#[test]
fn malformed_spec_is_reported_with_its_path() {
    let t = run(
        r#"
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: broken}
spec:
  routes: [{match: Path(`/`), priority: high}]
"#,
        &Settings::default(),
    );
    assert_eq!(t.problems.len(), 1);
    assert_eq!(t.problems[0].reason, "InvalidSpec");
    assert!(
        t.problems[0].message.starts_with("spec.routes[0].priority"),
        "{}",
        t.problems[0].message
    );
}
