//! A REAL Docker engine for the Docker and Swarm provider tests (`tests/tests/docker.rs`,
//! `tests/tests/swarm.rs`).
//!
//! [`Dockerd::start`] uses the daemon named by `SWITCHYARD_DOCKER_HOST` (`unix:///…` or
//! `tcp://…`) when it is set — never stopping it — and otherwise starts a private `dockerd`
//! (Debian's `docker.io`) in a fresh temporary directory: its own socket, data root, exec root,
//! pid file and log, no default bridge and no iptables rules, so several tests (and a developer's
//! own Docker) can run side by side. [`Dockerd::private`] always starts one (tests that stop the
//! daemon or put it in Swarm mode need their own).
//!
//! What we start we stop, by PID: on drop the containers we created are removed and the private
//! daemon gets SIGTERM (SIGKILL after a deadline). A watchdog shell, also ours, does the same if
//! the test process dies without unwinding. No image can be pulled on test machines: [`image`]
//! builds one with `docker import` from Debian's statically linked busybox (`busybox-static`).
//!
//! Every test labels its containers `switchyard.test=<id>` and restricts its provider with a
//! `constraints` expression on that label ([`Dockerd::constraint`]), so tests sharing a daemon
//! never see each other's containers.
//!
//! [`image`]: Dockerd::image

// A test helper: a failed setup step panics loudly, naming the fix.
#![allow(clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::Command;

/// The label every test container carries.
pub const TEST_LABEL: &str = "switchyard.test";

/// The image every test container runs: `/bin/busybox` and `/bin/sh` linked to it.
pub const IMAGE: &str = "switchyard-test/busybox:1";

const INSTALL_HINT: &str = "the Docker provider tests need a real Docker engine: install \
    Debian's `docker.io` and `busybox-static` (`apt-get install -y docker.io busybox-static`; \
    scripts/test.sh does this), run as root, or point SWITCHYARD_DOCKER_HOST at a daemon";

/// How long a daemon may take to answer after being started, and to exit after SIGTERM.
const START_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// A Docker daemon for one test.
pub struct Dockerd {
    /// `unix:///…/docker.sock` or the external `tcp://…`.
    host: String,
    /// This test's id (container names and the `switchyard.test` label).
    id: String,
    private: Option<Private>,
}

/// What we started: the daemon and its watchdog.
struct Private {
    dir: PathBuf,
    live_restore: bool,
    /// More `dockerd` arguments (another `--host`, TLS files…).
    extra_args: Vec<String>,
    daemon: Option<tokio::process::Child>,
    watchdog: Option<std::process::Child>,
}

impl Dockerd {
    /// The daemon named by `SWITCHYARD_DOCKER_HOST`, else a private one. Panics with the fix
    /// when no daemon can be had.
    pub async fn start() -> Self {
        match std::env::var("SWITCHYARD_DOCKER_HOST") {
            Ok(host) if !host.is_empty() => {
                let d = Self {
                    host,
                    id: new_id(),
                    private: None,
                };
                if let Err(e) = d
                    .docker(&["version", "--format", "{{.Server.Version}}"])
                    .await
                {
                    panic!("SWITCHYARD_DOCKER_HOST={} does not answer: {e}", d.host);
                }
                d
            }
            _ => Self::private(true).await,
        }
    }

    /// A private daemon. `live_restore` keeps containers running while the daemon is stopped
    /// (what an outage test needs); Swarm mode requires it off.
    pub async fn private(live_restore: bool) -> Self {
        Self::private_with(live_restore, Vec::new()).await
    }

    /// A private daemon started with more arguments, e.g. a TLS `tcp://` listener:
    /// `--tlsverify --tlscacert … --tlscert … --tlskey … --host tcp://127.0.0.1:PORT`.
    pub async fn private_with(live_restore: bool, extra_args: Vec<String>) -> Self {
        let id = new_id();
        // Short: the socket path must stay under the 108-byte limit of unix addresses.
        let dir = std::env::temp_dir().join(format!("sy-dockerd-{id}"));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut d = Self {
            host: format!("unix://{}", dir.join("docker.sock").display()),
            id,
            private: Some(Private {
                dir,
                live_restore,
                extra_args,
                daemon: None,
                watchdog: None,
            }),
        };
        d.spawn_daemon().await;
        d.spawn_watchdog();
        d
    }

    /// `DOCKER_HOST` of this daemon (also the provider's `endpoint`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// This test's unique id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `<prefix>-<id>`: a container/service/network name unique to this test.
    pub fn name(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.id)
    }

    /// The provider `constraints` expression that selects this test's containers only.
    pub fn constraint(&self) -> String {
        format!("Label(`{TEST_LABEL}`, `{}`)", self.id)
    }

    /// The private daemon's directory (its log is `dockerd.log`).
    pub fn dir(&self) -> Option<&Path> {
        self.private.as_ref().map(|p| p.dir.as_path())
    }

    /// The private daemon's log, for failure messages.
    pub fn log(&self) -> String {
        match self.dir() {
            Some(dir) => format!(
                "--- dockerd log ---\n{}",
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            ),
            None => String::new(),
        }
    }

    /// Runs the docker CLI against this daemon; stdout on success, stderr on failure.
    pub async fn docker(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new("docker")
            .arg("--host")
            .arg(&self.host)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run `docker`: {e}; {INSTALL_HINT}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(format!(
                "`docker {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Like [`Dockerd::docker`], panicking with the daemon log on failure.
    pub async fn must(&self, args: &[&str]) -> String {
        match self.docker(args).await {
            Ok(out) => out,
            Err(e) => panic!("{e}\n{}", self.log()),
        }
    }

    /// Imports the busybox image unless the daemon has it.
    pub async fn image(&self) -> &'static str {
        if self.docker(&["image", "inspect", IMAGE]).await.is_ok() {
            return IMAGE;
        }
        let busybox = Path::new("/bin/busybox");
        assert!(busybox.is_file(), "/bin/busybox is missing; {INSTALL_HINT}");
        let work = std::env::temp_dir().join(format!("sy-image-{}", new_id()));
        let root = work.join("root");
        std::fs::create_dir_all(root.join("bin")).expect("image root");
        std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
        // Docker runs `--health-cmd` (and shell-form commands) with /bin/sh.
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("link /bin/sh");
        let tarball = work.join("image.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .await
            .expect("run tar");
        assert!(status.success(), "tar failed building the test image");
        let tarball = tarball.display().to_string();
        self.must(&["import", &tarball, IMAGE]).await;
        let _ = std::fs::remove_dir_all(&work);
        IMAGE
    }

    /// `docker run -d` of the test image with this test's label; returns the container id.
    /// `options` go before the image (`--network host`, `--label …`), `command` after it.
    pub async fn run(&self, name: &str, options: &[&str], command: &[&str]) -> String {
        let image = self.image().await;
        let label = format!("{TEST_LABEL}={}", self.id);
        let mut args = vec!["run", "-d", "--name", name, "--label", &label];
        args.extend_from_slice(options);
        args.push(image);
        args.extend_from_slice(command);
        self.must(&args).await
    }

    /// Stops the private daemon (SIGTERM by PID, then wait). With live restore its containers
    /// keep running.
    pub async fn stop(&mut self) {
        let Some(private) = self.private.as_mut() else {
            panic!("cannot stop an external daemon (SWITCHYARD_DOCKER_HOST)");
        };
        if let Some(mut child) = private.daemon.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(STOP_DEADLINE, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    /// Starts the private daemon again on the same directories.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn_daemon().await;
    }

    async fn spawn_daemon(&mut self) {
        let Some(private) = self.private.as_mut() else {
            return;
        };
        let dir = private.dir.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .expect("dockerd log");
        // Debian puts dockerd in /usr/sbin, which a non-login PATH may lack.
        let program = if Path::new("/usr/sbin/dockerd").is_file() {
            "/usr/sbin/dockerd"
        } else {
            "dockerd"
        };
        let mut command = Command::new(program);
        command
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--host")
            .arg(&self.host)
            // No docker0 bridge and no iptables rules: nothing shared with other daemons.
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"]);
        if private.live_restore {
            command.arg("--live-restore");
        }
        command.args(&private.extra_args);
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .kill_on_drop(false)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dockerd: {e}; {INSTALL_HINT}"));
        private.daemon = Some(child);
        let end = tokio::time::Instant::now() + START_DEADLINE;
        loop {
            match self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .await
            {
                Ok(_) => return,
                Err(e) if tokio::time::Instant::now() >= end => {
                    panic!(
                        "dockerd did not answer within {START_DEADLINE:?}: {e}; {INSTALL_HINT}\n{}",
                        self.log()
                    )
                }
                Err(_) => {}
            }
            if let Some(p) = self.private.as_mut()
                && let Some(child) = p.daemon.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "dockerd exited at start ({status}); {INSTALL_HINT}\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A shell that waits for this test process to end, then removes our containers and stops
    /// our daemon (by the PID in its pid file) — for test processes killed without unwinding.
    fn spawn_watchdog(&mut self) {
        let host = self.host.clone();
        let Some(private) = self.private.as_mut() else {
            return;
        };
        let pid_file = private.dir.join("docker.pid").display().to_string();
        let script = format!(
            "while kill -0 {test} 2>/dev/null; do sleep 1; done; \
             [ -f '{pid_file}' ] || exit 0; \
             docker --host '{host}' ps -aq | xargs -r docker --host '{host}' rm -f; \
             kill -TERM \"$(cat '{pid_file}')\"",
            test = std::process::id(),
        );
        let mut command = std::process::Command::new("sh");
        command
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: a signal to the test's group must not take it too.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        private.watchdog = command.spawn().ok();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let docker = |args: &[&str]| {
            std::process::Command::new("docker")
                .arg("--host")
                .arg(&self.host)
                .args(args)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        // Our containers (only ours on a shared daemon).
        let filter = format!("label={TEST_LABEL}={}", self.id);
        let ids = docker(&["ps", "-aq", "--filter", &filter]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            docker(&args);
        }
        let Some(private) = self.private.as_mut() else {
            return;
        };
        if let Some(child) = private.daemon.take()
            && let Some(pid) = child.id()
        {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            // Bounded wait for the daemon to exit (it removes its pid file when done).
            let pid_file = private.dir.join("docker.pid");
            let end = std::time::Instant::now() + STOP_DEADLINE;
            while pid_file.exists() && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
            }
            if pid_file.exists() {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        if let Some(mut watchdog) = private.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // dockerd leaves a few mounts of its own behind (the data-root bind mount, the default
        // network namespace); unmount what lies below our directory, deepest first, then remove it.
        for mount_point in mounts_below(&private.dir) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&mount_point)
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&private.dir);
    }
}

/// Mount points at or below `dir` (from /proc/self/mountinfo), deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// A short unique id (pid + random) for names and labels.
fn new_id() -> String {
    format!(
        "{:x}{:06x}",
        std::process::id(),
        fastrand::u32(..0x100_0000)
    )
}
