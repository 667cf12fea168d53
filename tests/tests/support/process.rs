//! Real processes for the guarantee tests: the `switchyard-controller` and `switchyard-proxy`
//! binaries from the workspace's target directory, each with its log in a temp dir, killed with
//! SIGKILL by PID (never by name) and always on drop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use switchyard_shared::pb::{
    self, control_plane_client::ControlPlaneClient, proxy_admin_client::ProxyAdminClient,
};

/// The directory holding the workspace binaries (`SWITCHYARD_BIN_DIR`, else next to the test
/// executable's `deps/`). Panics with the fix when a binary is missing.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SWITCHYARD_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent()
                .and_then(Path::parent)
                .expect("target/<profile>/deps/<test>")
                .to_owned()
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (or set SWITCHYARD_BIN_DIR)",
        path.display()
    );
    path
}

/// A child process we started; SIGKILLed on drop.
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    pub fn start(name: &str, program: PathBuf, args: Vec<String>, log_dir: &Path) -> Self {
        let mut p = Self {
            name: name.to_owned(),
            program,
            args,
            log: log_dir.join(format!("{name}.log")),
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Same program, same arguments.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The log so far (for failure messages).
    pub fn log(&self) -> String {
        format!(
            "--- {} log ---\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `switchyard-controller run --config <dir>/static.yml`.
pub fn controller(dir: &Path, static_yaml: &str) -> Process {
    let config = dir.join("static.yml");
    std::fs::write(&config, static_yaml).expect("write static config");
    Process::start(
        "controller",
        binary("switchyard-controller"),
        vec![
            "run".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        dir,
    )
}

/// `switchyard-proxy run …` with one or more controller URLs and entry-point overrides.
pub fn proxy(
    dir: &Path,
    node: &str,
    controllers: &[&str],
    admin: SocketAddr,
    entry_points: &[(&str, SocketAddr)],
) -> Process {
    let mut args = vec![
        "run".to_owned(),
        "--node-id".into(),
        node.into(),
        "--state-dir".into(),
        dir.join(format!("state-{node}")).display().to_string(),
        "--admin".into(),
        admin.to_string(),
    ];
    for c in controllers {
        args.push("--controller".into());
        args.push((*c).to_owned());
    }
    for (name, addr) in entry_points {
        args.push("--entrypoint".into());
        args.push(format!("{name}={addr}"));
    }
    Process::start(node, binary("switchyard-proxy"), args, dir)
}

pub async fn controller_version(url: &str) -> Result<pb::GetVersionResponse, String> {
    let mut c = ControlPlaneClient::connect(url.to_owned())
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    c.get_version(pb::GetVersionRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("GetVersion: {e}"))
}

pub async fn proxies(url: &str) -> Result<pb::ListProxiesResponse, String> {
    let mut c = ControlPlaneClient::connect(url.to_owned())
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    c.list_proxies(pb::ListProxiesRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("ListProxies: {e}"))
}

pub async fn proxy_status(admin: SocketAddr) -> Result<pb::GetStatusResponse, String> {
    let mut c = ProxyAdminClient::connect(format!("http://{admin}"))
        .await
        .map_err(|e| format!("connect {admin}: {e}"))?;
    c.get_status(pb::GetStatusRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("GetStatus: {e}"))
}
