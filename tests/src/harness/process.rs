//! Real processes: the workspace binaries located next to the test executable, started with their
//! output in a log file, SIGKILLed by PID (never by name), restarted with the same arguments, and
//! killed on drop. One-shot CLI runs are bounded in time.

use std::{
    fmt,
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// Where the workspace binaries are: `SWITCHYARD_BIN_DIR`, else `target/<profile>/` derived from
/// this test executable (`target/<profile>/deps/<test>-<hash>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable's own path");
    let deps = exe
        .parent()
        .expect("the test executable sits in target/<profile>/deps/");
    // `cargo test` puts test executables in deps/; a binary run from target/<profile>/ directly
    // (e.g. an example) already sits next to the others.
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent()
            .expect("target/<profile>/ above deps/")
            .to_owned()
    } else {
        deps.to_owned()
    }
}

/// The path of workspace binary `name`; panics with the fix when it has not been built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{name} is missing at {}: run `cargo build --workspace --bins` first \
         (or point SWITCHYARD_BIN_DIR at the directory holding the binaries)",
        path.display()
    );
    path
}

/// A child process this test started. SIGKILLed (by PID) and reaped on drop.
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Process {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    pub fn start(name: &str, program: PathBuf, args: Vec<String>, log: PathBuf) -> Self {
        let mut process = Self {
            name: name.to_owned(),
            program,
            args,
            log,
            child: None,
            starts: 0,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open log {}: {e}", self.log.display()));
        self.starts += 1;
        // Separates the runs of one process in its log.
        let _ = std::io::Write::write_all(
            &mut log,
            format!("=== harness: start #{} of {}\n", self.starts, self.name).as_bytes(),
        );
        let child = Command::new(&self.program)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second handle on the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` this process (by its PID) and reap it. Nothing happens if it is not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL to this child's PID on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process if it runs, then starts it again with the same program and arguments.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the process again after [`Process::kill9`] (panics if it still runs).
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Whether it is still running (`false` once it exited or was killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `Err` with the log tail when the process has exited on its own.
    pub fn check_alive(&mut self) -> Result<(), String> {
        let status = match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => status,
            _ => return Ok(()),
        };
        Err(format!(
            "{} exited ({status})\n{}",
            self.name,
            self.log_tail(80)
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, headed by the process name (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.name, &self.log, lines)
    }
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("log", &self.log)
            .finish()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last `lines` lines of the log file at `path`, headed by `name`.
pub fn log_tail(name: &str, path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable: {e})\n"));
    let all: Vec<&str> = text.lines().collect();
    let skipped = all.len().saturating_sub(lines);
    let mut out = format!("----- {name} ({}) -----\n", path.display());
    if skipped > 0 {
        out.push_str(&format!("… {skipped} earlier lines …\n"));
    }
    for line in &all[skipped..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// What a one-shot command printed.
#[derive(Debug)]
pub struct CliOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs workspace binary `bin` with `args` to completion (at most 30 s; killed by PID past that).
pub async fn run_cli(bin: &str, args: &[&str]) -> CliOutput {
    let program = binary(bin);
    let child = tokio::process::Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{bin} {}` did not finish within 30 s", args.join(" ")))
        .unwrap_or_else(|e| panic!("`{bin} {}`: {e}", args.join(" ")));
    CliOutput {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
