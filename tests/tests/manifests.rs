//! `deploy/kubernetes/`: `kubectl kustomize` renders the base and every overlay, and every
//! rendered object parses into its `k8s-openapi` type (or the provider's CRD type) with unknown
//! fields rejected, so a typo in a manifest fails here instead of in a cluster. The controller's
//! static configuration in the ConfigMap must parse too.
//!
//! Needs `kubectl` (Debian's `kubernetes-client` works offline; `scripts/test.sh` installs it
//! when missing); without it the test fails and says so.

// Test helpers: a failed setup step should panic loudly.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use switchyard_controller::{
    config::StaticConfig,
    provider::kubernetes::crd::{
        IngressRoute, Middleware, Object, ServersTransport, TlsOption, TlsStore, TraefikKind,
        TraefikService,
    },
};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// The kustomization directories: the base and every overlay.
fn kustomizations() -> Vec<PathBuf> {
    let mut dirs = vec![deploy_dir().join("base")];
    let mut overlays: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("overlays"))
        .expect("deploy/kubernetes/overlays")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    overlays.sort();
    assert!(
        overlays.len() >= 2,
        "expected the daemonset and deployment overlays"
    );
    dirs.extend(overlays);
    dirs
}

fn kustomize(dir: &Path) -> String {
    let kubectl = std::env::var("SWITCHYARD_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let output = Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{kubectl} kustomize` ({e}): install kubectl (Debian: \
                 `apt-get install kubernetes-client`; scripts/test.sh does it) or point \
                 SWITCHYARD_KUBECTL at one"
            )
        });
    assert!(
        output.status.success(),
        "`kubectl kustomize {}` failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Every path of `original` must survive a round trip through `T`: a field `T` does not know
/// is dropped by deserialization and shows up here, with its path.
fn strict<T: DeserializeOwned + Serialize>(what: &str, original: &Value) -> T {
    let parsed: T = serde_path_to_error::deserialize(original)
        .unwrap_or_else(|e| panic!("{what}: {}: {}", e.path(), e.inner()));
    let round_trip = serde_json::to_value(&parsed).unwrap();
    let mut unknown = Vec::new();
    missing_paths("", original, &round_trip, &mut unknown);
    assert!(
        unknown.is_empty(),
        "{what}: unknown or misplaced fields {unknown:?}"
    );
    parsed
}

fn missing_paths(at: &str, original: &Value, parsed: &Value, out: &mut Vec<String>) {
    match (original, parsed) {
        (Value::Object(o), Value::Object(p)) => {
            for (k, v) in o {
                let path = format!("{at}.{k}");
                match p.get(k) {
                    Some(pv) => missing_paths(&path, v, pv, out),
                    // Empty values may be omitted when serialized back.
                    None if is_empty(v) => {}
                    None => out.push(path),
                }
            }
        }
        (Value::Array(o), Value::Array(p)) => {
            for (i, (ov, pv)) in o.iter().zip(p).enumerate() {
                missing_paths(&format!("{at}[{i}]"), ov, pv, out);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn strict_crd<K: TraefikKind>(what: &str, original: &Value) {
    let object: Object<K> = strict(what, original);
    let spec = object.decode().unwrap_or_else(|e| panic!("{what}: {e}"));
    let round_trip = serde_json::to_value(&spec).unwrap();
    let mut unknown = Vec::new();
    missing_paths(".spec", &original["spec"], &round_trip, &mut unknown);
    assert!(
        unknown.is_empty(),
        "{what}: unknown spec fields {unknown:?}"
    );
}

/// Parses every object of a rendered kustomization; returns the kinds seen.
fn check_rendered(dir: &Path, yaml: &str) -> Vec<String> {
    let mut kinds = Vec::new();
    for (index, document) in yaml.split("\n---\n").enumerate() {
        let value: Value = serde_yaml::from_str(document)
            .unwrap_or_else(|e| panic!("{}: document {index}: {e}", dir.display()));
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let what = format!(
            "{}: {kind} {}",
            dir.display(),
            value["metadata"]["name"].as_str().unwrap_or("?")
        );
        match kind.as_str() {
            "Namespace" => drop(strict::<Namespace>(&what, &value)),
            "ServiceAccount" => drop(strict::<ServiceAccount>(&what, &value)),
            "ClusterRole" => drop(strict::<ClusterRole>(&what, &value)),
            "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(&what, &value)),
            "Service" => drop(strict::<Service>(&what, &value)),
            "Deployment" => drop(strict::<Deployment>(&what, &value)),
            "DaemonSet" => drop(strict::<DaemonSet>(&what, &value)),
            "CustomResourceDefinition" => drop(strict::<CustomResourceDefinition>(&what, &value)),
            "ConfigMap" => {
                let map: ConfigMap = strict(&what, &value);
                for (file, text) in map.data.iter().flatten() {
                    if file.ends_with(".yml") || file.ends_with(".yaml") {
                        StaticConfig::parse(Path::new(file), text)
                            .unwrap_or_else(|e| panic!("{what}: {file}: {e}"));
                    }
                }
            }
            "IngressRoute" => strict_crd::<<IngressRoute as Crd>::K>(&what, &value),
            "Middleware" => strict_crd::<<Middleware as Crd>::K>(&what, &value),
            "TraefikService" => strict_crd::<<TraefikService as Crd>::K>(&what, &value),
            "TLSOption" => strict_crd::<<TlsOption as Crd>::K>(&what, &value),
            "TLSStore" => strict_crd::<<TlsStore as Crd>::K>(&what, &value),
            "ServersTransport" => strict_crd::<<ServersTransport as Crd>::K>(&what, &value),
            other => panic!("{what}: no type to check kind `{other}` against; add it here"),
        }
        kinds.push(kind);
    }
    kinds
}

/// Maps a CRD object type to its kind marker.
trait Crd {
    type K: TraefikKind;
}

impl<K: TraefikKind> Crd for Object<K> {
    type K = K;
}

#[test]
fn every_kustomization_renders_and_every_object_parses_strictly() {
    for dir in kustomizations() {
        let rendered = kustomize(&dir);
        let kinds = check_rendered(&dir, &rendered);
        for needed in [
            "CustomResourceDefinition",
            "ClusterRole",
            "Deployment",
            "ConfigMap",
        ] {
            assert!(
                kinds.iter().any(|k| k == needed),
                "{}: no {needed} in {kinds:?}",
                dir.display()
            );
        }
        let crds = kinds
            .iter()
            .filter(|k| *k == "CustomResourceDefinition")
            .count();
        assert_eq!(
            crds,
            10,
            "{}: Traefik's ten traefik.io kinds",
            dir.display()
        );
    }
}

#[test]
fn overlays_run_proxies_with_a_state_volume_and_snapshot_readiness() {
    for (overlay, kind) in [("daemonset", "DaemonSet"), ("deployment", "Deployment")] {
        let rendered = kustomize(&deploy_dir().join("overlays").join(overlay));
        let proxy: Value = rendered
            .split("\n---\n")
            .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
            .find(|v| v["kind"] == kind && v["metadata"]["name"] == "switchyard-proxy")
            .unwrap_or_else(|| panic!("{overlay}: no {kind} switchyard-proxy"));
        let container = &proxy["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.contains(&"--state-dir=/var/lib/switchyard"),
            "{overlay}: {args:?}"
        );
        let mounts = container["volumeMounts"].to_string();
        assert!(
            mounts.contains("/var/lib/switchyard"),
            "{overlay}: {mounts}"
        );
        let readiness = container["readinessProbe"].to_string();
        assert!(
            readiness.contains("snapshot.current"),
            "{overlay}: {readiness}"
        );
    }
}

#[test]
fn a_typo_in_a_manifest_is_caught() {
    let typo = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": 1, "selector": {}, "template": {"spec": {"containers": [
            {"name": "c", "image": "i", "imagePullPolicy": "Always", "readinesProbe": {"periodSeconds": 1}}
        ]}}}
    });
    let result = std::panic::catch_unwind(|| strict::<Deployment>("typo", &typo));
    assert!(result.is_err(), "`readinesProbe` must be refused");
    let crd_typo = serde_json::json!({
        "apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute",
        "metadata": {"name": "x"},
        "spec": {"routes": [{"match": "Path(`/`)", "servises": [{"name": "a"}]}]}
    });
    let result =
        std::panic::catch_unwind(|| strict_crd::<<IngressRoute as Crd>::K>("typo", &crd_typo));
    assert!(result.is_err(), "`servises` must be refused");
}
