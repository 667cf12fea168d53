//! ACME end to end against a real `pebble` (Debian package `pebble`, installed by
//! `scripts/test.sh`): the controller orders certificates for routers naming a resolver, a proxy
//! answers the HTTP-01 and TLS-ALPN-01 challenges the snapshot carries, serves the issued
//! certificates (verified against pebble's root), the controller renews them, and pebble being
//! down during a renewal keeps the valid certificate in service with the error in `GetVersion`.
//!
//! Pebble resolves every name through a tiny DNS responder run by the test (every A query →
//! 127.0.0.1), and validates on the proxy's entry-point ports (`httpPort`/`tlsPort`).
//!
//! Two controllers sharing ACME storage in a real etcd (`storageEtcd`) order a certificate once:
//! pebble issues exactly one, both snapshots carry it, and a restarted controller restores it
//! from etcd without ordering.

use crate::support::etcd as etcd_support;
use crate::support::providers as support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use support::{Controller, Proxy, TempDir, backend, eventually, free_port};
use switchyard_shared::pb;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UdpSocket,
    process::{Child, Command},
};

/// Orders involve several round trips and a proxy ACK per challenge; CI machines are small.
const ACME_DEADLINE: Duration = Duration::from_secs(90);

fn pebble_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHYARD_PEBBLE") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("pebble");
        if p.is_file() {
            return p;
        }
    }
    let p = PathBuf::from("/usr/bin/pebble");
    assert!(
        p.is_file(),
        "pebble is not installed: `apt-get install -y pebble` (scripts/test.sh does it), or set SWITCHYARD_PEBBLE"
    );
    p
}

/// Answers every DNS A query with 127.0.0.1 (other types: no answer), so pebble's validation
/// reaches the proxy on loopback whatever the test domain.
async fn dns_responder() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            if let Some(answer) = dns_answer(&buf[..n]) {
                let _ = socket.send_to(&answer, peer).await;
            }
        }
    });
    addr
}

fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // Question: labels up to the root, then QTYPE and QCLASS.
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + *query.get(i)? as usize;
    }
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let question_end = i + 5;
    let is_a = qtype == 1;
    let mut out = Vec::with_capacity(question_end + 16);
    out.extend_from_slice(&query[..2]); // id
    out.extend_from_slice(&[0x81 | (query[2] & 0x78), 0x80]); // QR, opcode, RD, RA, NOERROR
    out.extend_from_slice(&[0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..question_end)?);
    if is_a {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 1]);
    }
    Some(out)
}

/// A pebble process on loopback with its own WFE certificate (a test CA we trust).
struct Pebble {
    dir: TempDir,
    directory: String,
    management: SocketAddr,
    ca_file: PathBuf,
    ca_pem: String,
    config: PathBuf,
    dns: SocketAddr,
    child: Option<Child>,
}

impl Pebble {
    async fn start(http_port: u16, tls_port: u16) -> Self {
        let dir = TempDir::new("pebble");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble WFE test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let ca_file = dir.path().join("wfe-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("wfe.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("wfe.key"), leaf_key.serialize_pem()).unwrap();
        let listen = free_port().await;
        let management = free_port().await;
        let config = dir.path().join("pebble.json");
        std::fs::write(
            &config,
            serde_json::json!({"pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": dir.path().join("wfe.pem"),
                "privateKey": dir.path().join("wfe.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }})
            .to_string(),
        )
        .unwrap();
        let mut pebble = Self {
            directory: format!("https://{listen}/dir"),
            management,
            ca_pem: ca_cert.pem(),
            ca_file,
            config,
            dns: dns_responder().await,
            dir,
            child: None,
        };
        pebble.spawn().await;
        pebble
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("pebble.log")).unwrap();
        let child = Command::new(pebble_binary())
            .arg("-config")
            .arg(&self.config)
            .arg("-dnsserver")
            .arg(self.dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start pebble");
        self.child = Some(child);
        let directory = self.directory.clone();
        let ca = self.ca_pem.clone();
        eventually("pebble's directory", support::DEADLINE, || {
            let (directory, ca) = (directory.clone(), ca.clone());
            async move {
                let addr: SocketAddr = directory
                    .trim_start_matches("https://")
                    .trim_end_matches("/dir")
                    .parse()
                    .unwrap();
                https_get(addr, "localhost", "/dir", &roots(&ca))
                    .await
                    .and_then(|(status, _)| {
                        (status == 200).then_some(()).ok_or(format!("{status}"))
                    })
            }
        })
        .await;
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Pebble's current issuing root (a new one every start).
    async fn root_pem(&self) -> String {
        let (status, body) = https_get(
            self.management,
            "localhost",
            "/roots/0",
            &roots(&self.ca_pem),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

fn roots(pem: &str) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// HTTPS/1.1 GET with SNI `host`, verified against `roots`: `(status, body)`.
async fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    roots: &RootCertStore,
) -> Result<(u16, String), String> {
    let (status, body, _) = https_get_cert(addr, host, path, roots).await?;
    Ok((status, body))
}

/// As [`https_get`], also returning the server's leaf certificate.
async fn https_get_cert(
    addr: SocketAddr,
    host: &str,
    path: &str,
    roots: &RootCertStore,
) -> Result<(u16, String, Vec<u8>), String> {
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response))
        .await
        .map_err(|_| "read timed out".to_owned())?;
    if let Err(e) = read
        && response.is_empty()
    {
        return Err(format!("read: {e}"));
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body, leaf))
}

fn acme_status(
    v: &pb::GetVersionResponse,
    main: &str,
) -> Result<pb::AcmeCertificateStatus, String> {
    v.acme
        .iter()
        .find(|a| a.domains.first().map(String::as_str) == Some(main))
        .cloned()
        .ok_or_else(|| format!("no ACME status for {main}: {:?}", v.acme))
}

/// The certificate the snapshot carries for `name` (PEM chain).
async fn snapshot_cert(controller: &Controller, name: &str) -> Result<String, String> {
    let snapshot = controller.snapshot().await?.snapshot.unwrap_or_default();
    snapshot
        .certificates
        .iter()
        .find(|c| c.names.iter().any(|n| n == name))
        .map(|c| {
            assert_eq!(c.key_pem, "(redacted)", "GetSnapshot must redact keys");
            c.cert_pem.clone()
        })
        .ok_or_else(|| format!("no certificate for {name} in the snapshot"))
}

struct Fleet {
    controller: Controller,
    proxy: Proxy,
    web: SocketAddr,
    websecure: SocketAddr,
    dir: TempDir,
}

fn resolver_yaml(
    name: &str,
    pebble: &Pebble,
    storage: &Path,
    challenge: &str,
    extra: &str,
) -> String {
    format!(
        "  {name}:\n    acme:\n      email: ops@example.test\n      caServer: {}\n      caCertificates: [{}]\n      storage: {}\n{challenge}{extra}",
        pebble.directory,
        pebble.ca_file.display(),
        storage.display(),
    )
}

async fn start_fleet(
    pebble_ports: (SocketAddr, SocketAddr),
    resolvers: &str,
    dynamic: &str,
) -> Fleet {
    let (web, websecure) = pebble_ports;
    let dir = TempDir::new("acme");
    let dynamic_dir = dir.path().join("dynamic");
    std::fs::create_dir_all(&dynamic_dir).unwrap();
    std::fs::write(dynamic_dir.join("routes.yml"), dynamic).unwrap();
    let static_yaml = format!(
        "entryPoints:\n  web:\n    address: ':80'\n    http:\n      redirections:\n        entryPoint:\n          to: websecure\n  websecure:\n    address: ':443'\nproviders:\n  providersThrottleDuration: 10ms\n  file:\n    directory: {}\ncertificatesResolvers:\n{resolvers}",
        dynamic_dir.display()
    );
    let controller = Controller::start_static(&static_yaml).await;
    let proxy = Proxy::start_with(
        &controller.url,
        web,
        &[("web", web), ("websecure", websecure)],
    )
    .await;
    Fleet {
        controller,
        proxy,
        web,
        websecure,
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_through_http01_and_tls_alpn01_served_by_a_proxy() {
    let web = free_port().await;
    let websecure = free_port().await;
    let pebble = Pebble::start(web.port(), websecure.port()).await;
    let app = backend("acme-app").await;
    let storage_dir = TempDir::new("acme-storage");
    let storage = storage_dir.path().join("acme.json");
    let resolvers = format!(
        "{}{}",
        resolver_yaml(
            "le-http",
            &pebble,
            &storage,
            "      httpChallenge:\n        entryPoint: web\n",
            ""
        ),
        resolver_yaml("le-tls", &pebble, &storage, "      tlsChallenge: {}\n", ""),
    );
    let dynamic = format!(
        "http:\n  routers:\n    http01:\n      rule: Host(`http01.test`)\n      entryPoints: [websecure]\n      service: app\n      tls:\n        certResolver: le-http\n    alpn:\n      rule: Host(`alpn.test`)\n      entryPoints: [websecure]\n      service: app\n      tls:\n        certResolver: le-tls\n        domains:\n          - main: alpn.test\n            sans: [www.alpn.test]\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: http://{app}\n"
    );
    let fleet = start_fleet((web, websecure), &resolvers, &dynamic).await;

    for main in ["http01.test", "alpn.test"] {
        let status = eventually(
            &format!("a certificate for {main}"),
            ACME_DEADLINE,
            || async {
                let v = fleet.controller.version().await?;
                let s = acme_status(&v, main)?;
                if s.state == "valid" && s.not_after_unix > 0 {
                    Ok(s)
                } else {
                    Err(format!("{s:?}"))
                }
            },
        )
        .await;
        assert!(status.last_error.is_empty(), "{status:?}\n{}", pebble.log());
    }
    assert_eq!(
        acme_status(&fleet.controller.version().await.unwrap(), "alpn.test")
            .unwrap()
            .domains,
        vec!["alpn.test", "www.alpn.test"]
    );

    // The proxy serves both, verified against pebble's root (`www.alpn.test` is a SAN of the
    // certificate but no router matches it: the handshake verifies, the answer is a 404).
    let root = roots(&pebble.root_pem().await);
    for (host, want) in [
        ("http01.test", (200, "acme-app")),
        ("alpn.test", (200, "acme-app")),
        ("www.alpn.test", (404, "404 page not found\n")),
    ] {
        let (status, body) = eventually(&format!("HTTPS for {host}"), ACME_DEADLINE, || {
            let root = root.clone();
            async move { https_get(fleet.websecure, host, "/", &root).await }
        })
        .await;
        assert_eq!((status, body.as_str()), want, "{host}");
    }
    // No challenge is left in the snapshot once the orders are done.
    let snapshot = fleet.controller.snapshot().await.unwrap().snapshot.unwrap();
    assert!(snapshot.http_challenges.is_empty() && snapshot.tls_challenges.is_empty());
    // Plain HTTP on `web` is still redirected (challenges are answered only for known tokens).
    let (status, _) = fleet
        .proxy
        .get("http01.test", "/.well-known/acme-challenge/unknown")
        .await
        .unwrap();
    assert!(matches!(status, 301 | 308), "{status}");
    let _ = fleet.web;

    // Storage: 0600, both certificates and the accounts, keys never in GetSnapshot.
    let text = std::fs::read_to_string(&storage).unwrap();
    assert!(text.contains("http01.test") && text.contains("alpn.test"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&storage).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let served = snapshot_cert(&fleet.controller, "http01.test")
        .await
        .unwrap();
    drop(fleet);

    // A controller restarted with the same storage serves the stored certificate at once, even
    // with the CA gone.
    drop(pebble);
    let web2 = free_port().await;
    let websecure2 = free_port().await;
    let dead = Pebble {
        dir: TempDir::new("pebble-dead"),
        directory: format!("https://{}/dir", free_port().await),
        management: free_port().await,
        ca_file: storage_dir.path().join("none.pem"),
        ca_pem: String::new(),
        config: PathBuf::new(),
        dns: free_port().await,
        child: None,
    };
    std::fs::write(&dead.ca_file, root_ca_placeholder()).unwrap();
    let resolvers = format!(
        "{}{}",
        resolver_yaml(
            "le-http",
            &dead,
            &storage,
            "      httpChallenge:\n        entryPoint: web\n",
            ""
        ),
        resolver_yaml("le-tls", &dead, &storage, "      tlsChallenge: {}\n", ""),
    );
    let restarted = start_fleet((web2, websecure2), &resolvers, &dynamic).await;
    let again = eventually("the stored certificate", support::DEADLINE, || async {
        snapshot_cert(&restarted.controller, "http01.test").await
    })
    .await;
    assert_eq!(again, served);
    let (status, body) = eventually("HTTPS from storage", support::DEADLINE, || {
        let root = root.clone();
        async move { https_get(restarted.websecure, "http01.test", "/", &root).await }
    })
    .await;
    assert_eq!((status, body.as_str()), (200, "acme-app"));
    let _ = restarted.dir.path();
}

/// Any parseable CA certificate (the restarted controller needs a trust file, not a CA).
fn root_ca_placeholder() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(vec!["placeholder".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_and_keeps_the_certificate_while_the_ca_is_down() {
    let web = free_port().await;
    let websecure = free_port().await;
    let mut pebble = Pebble::start(web.port(), websecure.port()).await;
    let app = backend("renewed-app").await;
    let storage_dir = TempDir::new("acme-renew");
    let storage = storage_dir.path().join("acme.json");
    // Pebble's certificates live for years: a renewal window longer than that makes every check
    // a renewal, every 2 s.
    let resolvers = resolver_yaml(
        "le",
        &pebble,
        &storage,
        "      httpChallenge:\n        entryPoint: web\n",
        "      renewBefore: 100000h\n      renewCheckInterval: 2s\n",
    );
    let dynamic = format!(
        "http:\n  routers:\n    app:\n      rule: Host(`renew.test`)\n      entryPoints: [websecure]\n      service: app\n      tls:\n        certResolver: le\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: http://{app}\n"
    );
    let fleet = start_fleet((web, websecure), &resolvers, &dynamic).await;
    let first = eventually("the first certificate", ACME_DEADLINE, || async {
        snapshot_cert(&fleet.controller, "renew.test").await
    })
    .await;
    let renewed = eventually("a renewed certificate", ACME_DEADLINE, || {
        let first = first.clone();
        let fleet = &fleet;
        async move {
            let now = snapshot_cert(&fleet.controller, "renew.test").await?;
            if now != first {
                Ok(now)
            } else {
                Err("same certificate".into())
            }
        }
    })
    .await;
    let root = roots(&pebble.root_pem().await);
    eventually("the renewed certificate served", ACME_DEADLINE, || {
        let (root, renewed) = (root.clone(), renewed.clone());
        let fleet = &fleet;
        async move {
            let (status, _, leaf) =
                https_get_cert(fleet.websecure, "renew.test", "/", &root).await?;
            let want = CertificateDer::from_pem_slice(renewed.as_bytes()).unwrap();
            if status == 200 && leaf == want.as_ref() {
                Ok(())
            } else {
                Err(format!("status {status}, another certificate"))
            }
        }
    })
    .await;

    // The CA goes away: renewals fail, the error is reported, the certificate stays in service.
    pebble.stop().await;
    let failing = eventually("a failed renewal reported", ACME_DEADLINE, || async {
        let s = acme_status(&fleet.controller.version().await?, "renew.test")?;
        if s.last_error.is_empty() {
            Err(format!("{s:?}"))
        } else {
            Ok(s)
        }
    })
    .await;
    assert!(failing.not_after_unix > 0, "{failing:?}");
    assert_ne!(
        failing.state, "failed",
        "a valid certificate is kept: {failing:?}"
    );
    assert!(
        failing.next_attempt_unix_ms > failing.last_attempt_unix_ms,
        "{failing:?}"
    );
    let kept = snapshot_cert(&fleet.controller, "renew.test")
        .await
        .unwrap();
    let (status, body) = https_get(fleet.websecure, "renew.test", "/", &root)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "renewed-app"));

    // Back up (a fresh pebble: new root, the old account unknown): renewal resumes.
    pebble.spawn().await;
    eventually("renewal after the CA is back", ACME_DEADLINE, || {
        let kept = kept.clone();
        let fleet = &fleet;
        async move {
            let s = acme_status(&fleet.controller.version().await?, "renew.test")?;
            let now = snapshot_cert(&fleet.controller, "renew.test").await?;
            if s.last_error.is_empty() && now != kept {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    let new_root = roots(&pebble.root_pem().await);
    let (status, body) = eventually("HTTPS with the new CA's certificate", ACME_DEADLINE, || {
        let root = new_root.clone();
        let fleet = &fleet;
        async move { https_get(fleet.websecure, "renew.test", "/", &root).await }
    })
    .await;
    assert_eq!((status, body.as_str()), (200, "renewed-app"));
    let _ = (&fleet.proxy, fleet.web, fleet.dir.path());
}

/// Pebble's `httpPort` in front of several proxies (one per controller): each validation request
/// is tried on every proxy and the first 200 wins, since only the proxy following the controller
/// that orders knows the token.
async fn challenge_front(
    listen: SocketAddr,
    proxies: Vec<SocketAddr>,
) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let proxies = proxies.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                let host = text
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("host")
                            .then(|| value.trim().to_owned())
                    })
                    .unwrap_or_default();
                let mut answer = (404, String::new());
                for proxy in proxies {
                    if let Ok((200, body)) = support::http_get(proxy, &host, &path).await {
                        answer = (200, body);
                        break;
                    }
                }
                let response = format!(
                    "HTTP/1.1 {} -\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    answer.0,
                    answer.1.len(),
                    answer.1
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    })
}

/// The certificate a controller serves for `shared.test` once its status says valid.
async fn valid_cert(controller: &Controller) -> Result<String, String> {
    let s = acme_status(&controller.version().await?, "shared.test")?;
    if s.state != "valid" {
        return Err(format!("{s:?}"));
    }
    snapshot_cert(controller, "shared.test").await
}

/// How many certificates pebble issued (its log says `Issued certificate serial … for order …`).
fn issued(pebble: &Pebble) -> usize {
    pebble.log().matches("Issued certificate serial").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_sharing_etcd_storage_order_once() {
    let etcd = etcd_support::Etcd::start().await;
    let web = free_port().await;
    let pebble = Pebble::start(web.port(), free_port().await.port()).await;
    let app = backend("shared-app").await;
    let resolvers = format!(
        "  le:\n    acme:\n      email: ops@example.test\n      caServer: {}\n      caCertificates: [{}]\n      httpChallenge:\n        entryPoint: web\n      storageEtcd:\n        endpoints: ['{}']\n        rootKey: /sy/acme/\n        lockTTL: 10s\n",
        pebble.directory,
        pebble.ca_file.display(),
        etcd.client,
    );
    let dynamic = format!(
        "http:\n  routers:\n    app:\n      rule: Host(`shared.test`)\n      entryPoints: [websecure]\n      service: app\n      tls:\n        certResolver: le\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: http://{app}\n"
    );
    let (a_web, b_web) = (free_port().await, free_port().await);
    let _front = challenge_front(web, vec![a_web, b_web]).await;
    // Both controllers start at once and want the same certificate.
    let (a, b) = tokio::join!(
        start_fleet((a_web, free_port().await), &resolvers, &dynamic),
        start_fleet((b_web, free_port().await), &resolvers, &dynamic),
    );

    let from_a = eventually("controller A's certificate", ACME_DEADLINE, || {
        valid_cert(&a.controller)
    })
    .await;
    let from_b = eventually("controller B's certificate", ACME_DEADLINE, || {
        valid_cert(&b.controller)
    })
    .await;
    assert_eq!(from_a, from_b, "both snapshots carry the same certificate");
    for fleet in [&a, &b] {
        let s = acme_status(&fleet.controller.version().await.unwrap(), "shared.test").unwrap();
        assert!(s.last_error.is_empty(), "{s:?}");
    }
    assert_eq!(
        issued(&pebble),
        1,
        "one order reached pebble:\n{}",
        pebble.log()
    );
    // The certificate is in etcd, and no lock is left behind.
    let stored = etcd
        .ctl(&[
            "get",
            "sy/acme/le/certificates/shared.test",
            "--print-value-only",
        ])
        .await;
    assert!(stored.contains("BEGIN CERTIFICATE"), "{stored}");
    let locks = etcd.ctl(&["get", "--prefix", "sy/acme/le/locks/"]).await;
    assert!(locks.trim().is_empty(), "{locks}");
    // Both proxies serve it, verified against pebble's root.
    let root = roots(&pebble.root_pem().await);
    for fleet in [&a, &b] {
        let (status, body) = eventually("HTTPS through both proxies", ACME_DEADLINE, || {
            let root = root.clone();
            async move { https_get(fleet.websecure, "shared.test", "/", &root).await }
        })
        .await;
        assert_eq!((status, body.as_str()), (200, "shared-app"));
    }

    // Controller B restarts: the certificate comes back from etcd, without an order.
    drop(b);
    let b = start_fleet((free_port().await, free_port().await), &resolvers, &dynamic).await;
    let restored = eventually("the certificate restored from etcd", ACME_DEADLINE, || {
        valid_cert(&b.controller)
    })
    .await;
    assert_eq!(restored, from_a);
    assert_eq!(
        issued(&pebble),
        1,
        "no order after the restart:\n{}",
        pebble.log()
    );
    let _ = (&a.proxy, a.web, a.dir.path(), &b.proxy, b.web, b.dir.path());
}

/// The order lock on its own, against a real etcd: exclusive, released for the next controller,
/// and reported lost when its lease can no longer be renewed (etcd gone), so an order stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_order_lock_is_exclusive_and_reports_a_lost_lease() {
    use switchyard_controller::{acme::storage::etcd::EtcdStore, config::AcmeEtcdStorageConfig};

    let mut etcd = etcd_support::Etcd::start().await;
    let config: AcmeEtcdStorageConfig = serde_yaml::from_str(&format!(
        "endpoints: ['{}']\nrootKey: locktest\nlockTTL: 5s\n",
        etcd.client
    ))
    .unwrap();
    let mut a = EtcdStore::new(&config, "a".into());
    let mut b = EtcdStore::new(&config, "b".into());
    let domains = vec!["lock.test".to_owned()];

    let held = a
        .try_lock("le", &domains)
        .await
        .unwrap()
        .expect("first lock");
    assert!(
        b.try_lock("le", &domains).await.unwrap().is_none(),
        "held by a"
    );
    let other = vec!["other.test".to_owned()];
    let unrelated = b
        .try_lock("le", &other)
        .await
        .unwrap()
        .expect("another certificate");
    unrelated.release().await;
    let holder = etcd
        .ctl(&["get", "locktest/le/locks/lock.test", "--print-value-only"])
        .await;
    assert!(holder.contains("switchyard-controller"), "{holder}");
    // Renewed while held: still held after more than a TTL.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert!(!*held.lost().borrow(), "kept alive");
    assert!(
        b.try_lock("le", &domains).await.unwrap().is_none(),
        "still held by a"
    );
    held.release().await;
    // Released by revoking the lease, which deletes the lock key at once.
    let held = b
        .try_lock("le", &domains)
        .await
        .unwrap()
        .expect("b takes the released lock");
    // etcd goes away: the lease cannot be renewed and the holder is told, before it could
    // have expired on etcd's side.
    let mut lost = held.lost();
    etcd.kill().await;
    tokio::time::timeout(std::time::Duration::from_secs(20), lost.wait_for(|l| *l))
        .await
        .expect("the lease is reported lost")
        .expect("keep-alive task alive until then");
}
