//! A fleet under test: one temp dir holding the controller's static config (`static.yml`), the
//! watched dynamic directory (`dynamic/`), every proxy's state dir (`state-<node>/`) and every
//! process's log (`<name>.log`). The fleet remembers the logs of everything it started: a timed-out
//! [`Fleet::eventually`] prints them, and so does dropping the fleet while a test panics (the temp
//! dir is then kept for inspection and its path printed).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use switchyard_shared::pb;

use super::{
    grpc,
    http::{self, Reply},
    poll::{DEADLINE, poll},
    process::{Process, binary, log_tail},
};

/// A loopback address nobody listens on right now, never handed out before by this process, and
/// outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`). Tests run as parallel
/// processes: a port taken with `bind(:0)` and released came from that range, where any other
/// process's outgoing connection may be given it before the test listens on it again (seen as
/// `AddrInUse` in a test next to the conformance suite's 1 900 connections). A random port below
/// the range is only ever taken by a listener that asked for it.
pub fn free_port() -> SocketAddr {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (
        ephemeral_low.saturating_sub(12_000).max(1024),
        ephemeral_low,
    );
    loop {
        let port = fastrand::u16(low..high);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_err() {
            continue;
        }
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if handed_out.insert(port) {
            return addr;
        }
    }
}

type Logs = Arc<Mutex<Vec<(String, PathBuf)>>>;

/// How many lines of each process's log a failure prints.
const LOG_LINES: usize = 120;

pub struct Fleet {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    /// The controller's watched directory (`providers.file.directory`).
    pub dynamic: PathBuf,
    /// The controller's gRPC listen address and its URL.
    pub grpc: SocketAddr,
    pub url: String,
    logs: Logs,
    dumped: AtomicBool,
}

impl Fleet {
    /// A fresh temp dir (`sy-<tag>-…`) with an empty `dynamic/`, and a free gRPC port.
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sy-{tag}-"))
            .tempdir()
            .expect("create the fleet's temp dir");
        let root = dir.path().to_owned();
        let dynamic = root.join("dynamic");
        std::fs::create_dir_all(&dynamic).expect("create the dynamic config dir");
        let grpc = free_port();
        Self {
            dir: Some(dir),
            root,
            dynamic,
            grpc,
            url: format!("http://{grpc}"),
            logs: Arc::default(),
            dumped: AtomicBool::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The controller's static configuration: entry point `web` (every proxy overrides it), any
    /// `extra` entry points as `(name, address)`, the file provider on `dynamic/` with a 10 ms
    /// throttle, and gRPC on this fleet's port.
    pub fn static_config(&self, extra_entry_points: &[(&str, &str)]) -> String {
        let mut text = String::from("entryPoints:\n  web:\n    address: '127.0.0.1:0'\n");
        for (name, address) in extra_entry_points {
            text.push_str(&format!("  {name}:\n    address: '{address}'\n"));
        }
        text.push_str(&format!(
            "providers:\n  providersThrottleDuration: 10ms\n  file:\n    directory: '{}'\n    watch: true\ncontroller:\n  grpc:\n    address: '{}'\n",
            self.dynamic.display(),
            self.grpc
        ));
        text
    }

    /// Where the controller reads its static configuration.
    pub fn static_path(&self) -> PathBuf {
        self.root.join("static.yml")
    }

    /// Replaces `static.yml` (the controller reads it when it (re)starts).
    pub fn write_static(&self, text: &str) {
        std::fs::write(self.static_path(), text).expect("write static.yml");
    }

    /// Writes `static.yml` from [`Fleet::static_config`] and starts the controller.
    pub fn controller(&self) -> Process {
        self.controller_with(&[])
    }

    /// Like [`Fleet::controller`], with extra entry points.
    pub fn controller_with(&self, extra_entry_points: &[(&str, &str)]) -> Process {
        self.controller_from(&self.static_config(extra_entry_points))
    }

    /// Writes `static` as `static.yml` and starts the controller on it (for static configs the
    /// test brings along, e.g. the demo's; it must use [`Fleet::grpc`] to be reachable).
    pub fn controller_from(&self, static_yaml: &str) -> Process {
        self.write_static(static_yaml);
        self.start(
            "controller",
            binary("switchyard-controller"),
            vec![
                "run".into(),
                "--config".into(),
                self.static_path().display().to_string(),
            ],
        )
    }

    /// A proxy subscribed to this fleet's controller, entry point `web` on a free port.
    pub fn proxy(&self, node: &str) -> ProxyNode {
        self.proxy_with(node, std::slice::from_ref(&self.url))
    }

    /// A proxy trying the `controllers` URLs in turn.
    pub fn proxy_with(&self, node: &str, controllers: &[String]) -> ProxyNode {
        let web = free_port();
        let admin = free_port();
        let state_dir = self.root.join(format!("state-{node}"));
        let mut args = vec![
            "run".to_owned(),
            "--node-id".into(),
            node.into(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--admin".into(),
            admin.to_string(),
            "--entrypoint".into(),
            format!("web={web}"),
        ];
        for url in controllers {
            args.push("--controller".into());
            args.push(url.clone());
        }
        let process = self.start(node, binary("switchyard-proxy"), args);
        ProxyNode {
            process,
            node: node.to_owned(),
            web,
            admin,
            state_dir,
        }
    }

    /// A `switchyard-echo` backend named `name` on a port of its own choosing (it reports the
    /// bound address in its log, so no port can be taken between choosing and binding).
    pub async fn echo(&self, name: &str) -> Echo {
        let mut process = self.start(
            &format!("echo-{name}"),
            binary("switchyard-echo"),
            vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--name".into(),
                name.into(),
            ],
        );
        let addr = poll(DEADLINE, || {
            let alive = process.check_alive();
            let log = process.log();
            async move {
                alive?;
                log.lines()
                    .find_map(|l| l.split_once("listening on ").map(|(_, a)| a.trim()))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .ok_or_else(|| format!("no `listening on ADDR` in its log yet: {log:?}"))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("switchyard-echo {name} did not start: {e}"));
        Echo {
            process,
            name: name.to_owned(),
            addr,
        }
    }

    fn start(&self, name: &str, program: PathBuf, args: Vec<String>) -> Process {
        let log = self.root.join(format!("{name}.log"));
        {
            let mut logs = self.logs.lock().expect("log registry");
            if !logs.iter().any(|(n, _)| n == name) {
                logs.push((name.to_owned(), log.clone()));
            }
        }
        Process::start(name, program, args, log)
    }

    /// Writes `dynamic/<name>` atomically (temp file + rename, as editors and config management
    /// do), so the watcher never reads half a file.
    pub fn write_dynamic(&self, name: &str, text: &str) {
        let tmp = self.root.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write a dynamic config file");
        std::fs::rename(&tmp, self.dynamic.join(name)).expect("move it into dynamic/");
    }

    pub fn remove_dynamic(&self, name: &str) {
        std::fs::remove_file(self.dynamic.join(name)).expect("remove a dynamic config file");
    }

    /// The tail of every log of this fleet's processes.
    pub fn logs(&self) -> String {
        let logs = self.logs.lock().map(|l| l.clone()).unwrap_or_default();
        logs.iter()
            .map(|(name, path)| log_tail(name, path, LOG_LINES))
            .collect()
    }

    /// Polls `check` until it returns `Ok` (see [`super::poll::poll`]); on timeout prints every
    /// process log of the fleet and panics with what was awaited and the last observation.
    pub async fn eventually<T, F, Fut>(&self, what: &str, deadline: Duration, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        match poll(deadline, check).await {
            Ok(value) => value,
            Err(seen) => {
                self.dump_logs();
                panic!("timed out after {deadline:?} waiting for {what}; last seen: {seen}")
            }
        }
    }

    /// Waits until every proxy in `nodes` has acknowledged the controller's version; returns it.
    pub async fn converged(&self, nodes: &[&str], deadline: Duration) -> String {
        self.eventually(
            &format!("{nodes:?} to converge on the controller's version"),
            deadline,
            || grpc::converged(&self.url, nodes),
        )
        .await
    }

    /// `GetVersion` on this fleet's controller.
    pub async fn version(&self) -> Result<pb::GetVersionResponse, String> {
        grpc::controller_version(&self.url).await
    }

    /// `ListProxies` on this fleet's controller.
    pub async fn proxies(&self) -> Result<pb::ListProxiesResponse, String> {
        grpc::list_proxies(&self.url).await
    }

    /// The controller's entry for one proxy.
    pub async fn proxy_entry(&self, node: &str) -> Result<pb::ProxyStatus, String> {
        let list = self.proxies().await?;
        grpc::find_proxy(&list, node)
            .cloned()
            .ok_or_else(|| format!("{node} not registered: {list:?}"))
    }

    fn dump_logs(&self) {
        if !self.dumped.swap(true, Ordering::SeqCst) {
            eprintln!(
                "===== logs of the fleet in {} =====\n{}",
                self.root.display(),
                self.logs()
            );
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "(kept the failed fleet's files in {})",
                    dir.keep().display()
                );
            }
        }
    }
}

/// A `switchyard-proxy` of a fleet.
pub struct ProxyNode {
    pub process: Process,
    pub node: String,
    /// Where entry point `web` listens (`--entrypoint web=…`).
    pub web: SocketAddr,
    /// `--admin`.
    pub admin: SocketAddr,
    /// `--state-dir`.
    pub state_dir: PathBuf,
}

impl ProxyNode {
    /// `GET path` with `Host: host` on entry point `web`, on a fresh connection.
    pub async fn get(&self, host: &str, path: &str) -> Result<Reply, String> {
        http::get(self.web, host, path).await
    }

    /// `Ok` when `host` answers 200 from echo backend `backend`.
    pub async fn serves(&self, host: &str, backend: &str) -> Result<(), String> {
        self.get(host, "/")
            .await?
            .expect_backend(backend)
            .map_err(|e| format!("{}: {e}", self.node))
    }

    /// `GetStatus` on this proxy's admin address.
    pub async fn status(&self) -> Result<pb::GetStatusResponse, String> {
        grpc::proxy_status(self.admin).await
    }

    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Kill (if running) and start again with the same arguments.
    pub fn restart(&mut self) {
        self.process.restart();
    }
}

/// A `switchyard-echo` backend of a fleet.
pub struct Echo {
    pub process: Process,
    pub name: String,
    pub addr: SocketAddr,
}

impl Echo {
    /// `http://ADDR`, for `loadBalancer.servers[].url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `h2c://ADDR`: the same backend spoken to in HTTP/2 without TLS.
    pub fn h2c_url(&self) -> String {
        format!("h2c://{}", self.addr)
    }
}
