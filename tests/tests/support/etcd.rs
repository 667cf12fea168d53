//! A real etcd (Debian `etcd-server`) on loopback ports in a temporary data directory, with
//! `etcdctl` to read and write it; shared by `etcd.rs` and `acme.rs`.

// Test helpers: a failed setup step should panic loudly.
#![allow(dead_code)]

use std::{net::SocketAddr, path::PathBuf, process::Stdio};

use tokio::process::{Child, Command};

use crate::support::providers::{DEADLINE, TempDir, eventually, free_port};

pub const INSTALL_HINT: &str = "the etcd integration tests need a real etcd: install Debian's \
    `etcd-server` and `etcd-client` (`apt-get install -y etcd-server etcd-client`; \
    scripts/test.sh does this)";

/// A real etcd process; killed by PID on drop.
pub struct Etcd {
    dir: TempDir,
    pub client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
    /// Serve clients over TLS and require client certificates (files in `dir`).
    tls: bool,
}

impl Etcd {
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    pub async fn start_with(tls: bool) -> Self {
        let mut etcd = Self {
            dir: TempDir::new("etcd"),
            client: free_port().await,
            peer: free_port().await,
            child: None,
            tls,
        };
        if tls {
            etcd.write_pki();
        }
        etcd.spawn().await;
        etcd
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
    fn write_pki(&self) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        std::fs::write(self.file("ca.pem"), ca.pem()).unwrap();
        for (name, sans) in [
            ("server", vec!["127.0.0.1".to_owned()]),
            ("client", vec!["switchyard".to_owned()]),
        ] {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(sans)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            std::fs::write(self.file(&format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(self.file(&format!("{name}-key.pem")), key.serialize_pem()).unwrap();
        }
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    pub async fn spawn(&mut self) {
        let peer = format!("http://{}", self.peer);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("log file");
        let mut command = Command::new("etcd");
        if self.tls {
            command
                .arg(format!("--cert-file={}", self.file("server.pem")))
                .arg(format!("--key-file={}", self.file("server-key.pem")))
                .arg(format!("--trusted-ca-file={}", self.file("ca.pem")))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name=default")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `etcd` ({e}); {INSTALL_HINT}"));
        self.child = Some(child);
        eventually("etcd to answer", DEADLINE, || async {
            self.try_ctl(&["endpoint", "health"]).await.map(|_| ())
        })
        .await;
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills etcd by PID and waits for it; the data directory stays for `spawn`.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    pub async fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new("etcdctl");
        if self.tls {
            command
                .arg(format!("--cacert={}", self.file("ca.pem")))
                .arg(format!("--cert={}", self.file("client.pem")))
                .arg(format!("--key={}", self.file("client-key.pem")));
        }
        let output = command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url()))
            .arg("--command-timeout=5s")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run `etcdctl` ({e}); {INSTALL_HINT}"));
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    pub async fn ctl(&self, args: &[&str]) -> String {
        self.try_ctl(args)
            .await
            .unwrap_or_else(|e| panic!("etcdctl {args:?} failed: {e}"))
    }

    pub async fn put(&self, key: &str, value: &str) {
        // `--` so values such as `-1` are not taken for flags.
        self.ctl(&["put", "--", key, value]).await;
    }

    pub async fn del_prefix(&self, prefix: &str) {
        self.ctl(&["del", "--prefix", prefix]).await;
    }

    pub async fn revision(&self) -> i64 {
        let out = self.ctl(&["get", "none", "-w", "json"]).await;
        let json: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        json["header"]["revision"].as_i64().expect("revision")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
