//! The product's guarantees, each checked with the real binaries as separate processes: losing the
//! controller costs no request; a proxy restarted alone serves its persisted snapshot; corrupt
//! state is never served; an unappliable snapshot is NACKed once, not resent in a loop; config
//! changes cost no request and cut no connection; proxies reconnect (trying every controller URL)
//! without being sent what they already hold; bad input keeps the last good configuration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/providers.rs"]
mod support;

#[path = "support/process.rs"]
mod process;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use process::{controller, controller_version, proxies, proxy, proxy_status};
use support::{DEADLINE, TempDir, backend, eventually, free_port, http_get};
use switchyard_shared::pb;

fn static_yaml(dynamic: &Path, grpc: SocketAddr, extra: &str) -> String {
    format!(
        "entryPoints:\n  web:\n    address: '127.0.0.1:1'\n{extra}providers:\n  providersThrottleDuration: 10ms\n  file:\n    directory: {}\ncontroller:\n  grpc:\n    address: {grpc}\n",
        dynamic.display()
    )
}

fn app_yaml(backend: SocketAddr, header: &str) -> String {
    format!(
        "http:\n  routers:\n    app:\n      rule: Host(`app.test`)\n      service: app\n      middlewares: [mark]\n  middlewares:\n    mark:\n      headers:\n        customResponseHeaders:\n          X-Gen: '{header}'\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: http://{backend}\n"
    )
}

/// Writes a dynamic file atomically (as editors and config management do).
fn write_dynamic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

struct Fleet {
    dir: TempDir,
    dynamic: std::path::PathBuf,
    grpc: SocketAddr,
    url: String,
}

impl Fleet {
    async fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let dynamic = dir.path().join("dynamic");
        std::fs::create_dir_all(&dynamic).unwrap();
        let grpc = free_port().await;
        Self {
            url: format!("http://{grpc}"),
            dynamic,
            grpc,
            dir,
        }
    }

    fn controller(&self, extra: &str) -> process::Process {
        controller(
            self.dir.path(),
            &static_yaml(&self.dynamic, self.grpc, extra),
        )
    }

    async fn proxy(&self, node: &str) -> (process::Process, SocketAddr, SocketAddr) {
        let web = free_port().await;
        let admin = free_port().await;
        let p = proxy(self.dir.path(), node, &[&self.url], admin, &[("web", web)]);
        (p, web, admin)
    }
}

async fn serves(web: SocketAddr, body: &str) -> Result<(), String> {
    match http_get(web, "app.test", "/").await? {
        (200, b) if b == body => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

async fn converged(url: &str, nodes: &[&str]) -> Result<String, String> {
    let version = controller_version(url).await?.version;
    if version.is_empty() {
        return Err("no version yet".into());
    }
    let list = proxies(url).await?;
    for node in nodes {
        let p = list
            .proxies
            .iter()
            .find(|p| p.node_id == *node)
            .ok_or_else(|| format!("{node} not registered: {list:?}"))?;
        if !p.connected || p.acked_version != version {
            return Err(format!("{node} not converged on {version}: {p:?}"));
        }
    }
    Ok(version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_loss_costs_nothing_and_proxies_come_back() {
    let fleet = Fleet::new("kill").await;
    let one = backend("one").await;
    write_dynamic(&fleet.dynamic, "app.yml", &app_yaml(one, "1"));
    let mut ctl = fleet.controller("");
    let (mut pa, a_web, a_admin) = fleet.proxy("pa").await;
    let (_pb, b_web, b_admin) = fleet.proxy("pb").await;
    let version = eventually("both proxies converge", DEADLINE, || {
        converged(&fleet.url, &["pa", "pb"])
    })
    .await;
    eventually("both proxies serve", DEADLINE, || async {
        serves(a_web, "one").await?;
        serves(b_web, "one").await
    })
    .await;

    // A client loop against both proxies while the controller is SIGKILLed.
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let load = {
        let (sent, failed) = (sent.clone(), failed.clone());
        tokio::spawn(async move {
            let end = tokio::time::Instant::now() + Duration::from_secs(6);
            let mut i = 0u64;
            while tokio::time::Instant::now() < end && i < 20_000 {
                let web = if i.is_multiple_of(2) { a_web } else { b_web };
                if serves(web, "one").await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    eventually("load is running", DEADLINE, || async {
        let n = sent.load(Ordering::Relaxed);
        if n >= 100 {
            Ok(())
        } else {
            Err(format!("{n} sent"))
        }
    })
    .await;
    ctl.kill9();
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while the controller died ({} sent)",
        sent.load(Ordering::Relaxed)
    );
    assert!(sent.load(Ordering::Relaxed) > 200);

    // Restart a proxy while the controller is still gone: it serves its persisted snapshot.
    pa.restart();
    eventually("restarted proxy serves from disk", DEADLINE, || {
        serves(a_web, "one")
    })
    .await;
    let status = proxy_status(a_admin).await.unwrap();
    assert_eq!(status.source, pb::SnapshotSource::Disk as i32, "{status:?}");
    assert_eq!(status.version, version);
    assert!(!status.controller_connected);

    // The controller comes back: both reconnect by themselves and converge on the same version
    // (same inputs, same version), and neither is sent what it already holds.
    ctl.restart();
    let again = eventually("reconnect and converge", Duration::from_secs(60), || {
        converged(&fleet.url, &["pa", "pb"])
    })
    .await;
    assert_eq!(again, version, "same inputs must give the same version");
    let list = proxies(&fleet.url).await.unwrap();
    for p in &list.proxies {
        assert_eq!(
            p.snapshots_sent, 0,
            "{} was resent its snapshot: {p:?}",
            p.node_id
        );
    }
    let b = proxy_status(b_admin).await.unwrap();
    assert!(b.controller_connected);
    assert_eq!(b.snapshots_received, 1, "{b:?}");
}

fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_is_detected_and_never_served() {
    let fleet = Fleet::new("state").await;
    let one = backend("one").await;
    let two = backend("two").await;
    write_dynamic(&fleet.dynamic, "app.yml", &app_yaml(one, "1"));
    let mut ctl = fleet.controller("");
    let (mut pa, web, admin) = fleet.proxy("pa").await;
    eventually("serves one", DEADLINE, || serves(web, "one")).await;
    write_dynamic(&fleet.dynamic, "app.yml", &app_yaml(two, "2"));
    eventually("serves two", DEADLINE, || serves(web, "two")).await;
    let v2 = eventually("converged on two", DEADLINE, || {
        converged(&fleet.url, &["pa"])
    })
    .await;

    ctl.kill9();
    pa.kill9();
    let state = fleet.dir.path().join("state-pa");
    flip_byte(&state.join("snapshot.current"));
    pa.restart();
    // The corrupt newest generation is skipped for the previous one.
    eventually("serves the previous generation", DEADLINE, || {
        serves(web, "one")
    })
    .await;
    let status = proxy_status(admin).await.unwrap();
    assert!(
        status.last_error.contains("checksum"),
        "the corruption must be reported: {status:?}"
    );
    assert_ne!(status.version, v2);

    pa.kill9();
    flip_byte(&state.join("snapshot.previous"));
    pa.restart();
    let status = eventually("proxy up", DEADLINE, || proxy_status(admin)).await;
    assert_eq!(status.version, "", "nothing valid to serve: {status:?}");
    assert!(status.last_error.contains("snapshot.current"), "{status:?}");
    assert!(
        status.last_error.contains("snapshot.previous"),
        "{status:?}"
    );
    let (code, _) = http_get(web, "app.test", "/").await.unwrap();
    assert_eq!(code, 404, "a corrupt snapshot must never be served");

    // The controller comes back: the proxy converges on the current version.
    ctl.restart();
    eventually("serves two again", DEADLINE, || serves(web, "two")).await;
    assert_eq!(
        eventually("converged", DEADLINE, || converged(&fleet.url, &["pa"])).await,
        v2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unappliable_snapshot_is_nacked_once_and_the_old_one_keeps_serving() {
    let fleet = Fleet::new("nack").await;
    let one = backend("one").await;
    write_dynamic(&fleet.dynamic, "app.yml", &app_yaml(one, "1"));
    let mut ctl = fleet.controller("");
    let (_pa, web, admin) = fleet.proxy("pa").await;
    let v1 = eventually("converged", DEADLINE, || converged(&fleet.url, &["pa"])).await;
    eventually("serves", DEADLINE, || serves(web, "one")).await;

    // A new entry point on a port someone else holds: the proxy cannot bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    ctl.kill9();
    std::fs::write(
        fleet.dir.path().join("static.yml"),
        static_yaml(
            &fleet.dynamic,
            fleet.grpc,
            &format!("  extra:\n    address: '{taken_addr}'\n"),
        ),
    )
    .unwrap();
    ctl.restart();
    let nacked = eventually("NACK recorded", DEADLINE, || async {
        let version = controller_version(&fleet.url).await?.version;
        let list = proxies(&fleet.url).await?;
        let p = list.proxies.into_iter().find(|p| p.node_id == "pa");
        match p {
            Some(p) if !version.is_empty() && p.last_nack_version == version => Ok(p),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        nacked.last_nack_error.contains(&taken_addr.to_string()),
        "the NACK must say why: {nacked:?}"
    );
    assert_eq!(nacked.acked_version, v1, "the old version stays applied");
    assert_eq!(nacked.snapshots_sent, 1);
    serves(web, "one").await.unwrap();

    // Not resent in a loop: the counters stay put while we keep looking.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let list = proxies(&fleet.url).await.unwrap();
        let p = list.proxies.iter().find(|p| p.node_id == "pa").unwrap();
        assert_eq!(p.snapshots_sent, 1, "NACKed snapshot resent: {p:?}");
    }
    let status = proxy_status(admin).await.unwrap();
    assert_eq!(status.nacks_sent, 1, "{status:?}");
    assert_eq!(status.version, v1);
    assert!(status.last_error.contains("rejected"), "{status:?}");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_cost_no_request_and_cut_no_connection() {
    let fleet = Fleet::new("reload").await;
    let one = backend("one").await;
    write_dynamic(&fleet.dynamic, "app.yml", &app_yaml(one, "0"));
    let _ctl = fleet.controller("");
    let (pa, web, _) = fleet.proxy("pa").await;
    eventually("serves", DEADLINE, || serves(web, "one")).await;

    // One keep-alive connection for the whole test.
    let stream = tokio::net::TcpStream::connect(web).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut requests = 0u32;
    for generation in 1..=20u32 {
        write_dynamic(
            &fleet.dynamic,
            "app.yml",
            &app_yaml(one, &generation.to_string()),
        );
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            assert!(
                tokio::time::Instant::now() < end,
                "generation {generation} never served"
            );
            let request = hyper::Request::get("/")
                .header("host", "app.test")
                .body(Empty::<Bytes>::new())
                .unwrap();
            sender
                .ready()
                .await
                .unwrap_or_else(|e| panic!("the keep-alive connection closed: {e}\n{}", pa.log()));
            let response = sender
                .send_request(request)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "the keep-alive connection broke at generation {generation} after {requests} requests: {e:?}\n{}",
                        pa.log()
                    )
                });
            requests += 1;
            assert_eq!(response.status(), 200, "request {requests} failed");
            let seen = response
                .headers()
                .get("x-gen")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"one");
            if seen == generation.to_string() {
                break;
            }
        }
    }
    assert!(!conn.is_finished(), "the connection must still be open");
    assert!(requests >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_try_every_controller_url_in_turn() {
    let fleet = Fleet::new("failover").await;
    let one = backend("one").await;
    write_dynamic(&fleet.dynamic, "app.yml", &app_yaml(one, "1"));
    let _ctl = fleet.controller("");
    let dead = free_port().await;
    let web = free_port().await;
    let admin = free_port().await;
    let _p = proxy(
        fleet.dir.path(),
        "pf",
        &[&format!("http://{dead}"), &fleet.url],
        admin,
        &[("web", web)],
    );
    eventually(
        "converges through the second URL",
        Duration::from_secs(60),
        || converged(&fleet.url, &["pf"]),
    )
    .await;
    serves(web, "one").await.unwrap();
    let status = proxy_status(admin).await.unwrap();
    assert_eq!(status.controller, fleet.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_keeps_the_last_good_configuration() {
    let fleet = Fleet::new("bad").await;
    let one = backend("one").await;
    write_dynamic(&fleet.dynamic, "app.yml", &app_yaml(one, "1"));
    let _ctl = fleet.controller("");
    let (_pa, web, _) = fleet.proxy("pa").await;
    let v1 = eventually("converged", DEADLINE, || converged(&fleet.url, &["pa"])).await;

    // A file that does not parse: reported with its path and line; nothing changes.
    write_dynamic(
        &fleet.dynamic,
        "broken.yml",
        "http:\n  routers:\n    x: [\n",
    );
    let error = eventually("parse error reported", DEADLINE, || async {
        let v = controller_version(&fleet.url).await?;
        let file = v.providers.iter().find(|p| p.name == "file").cloned();
        match file {
            Some(p) if !p.healthy => Ok(p.error),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(error.contains("broken.yml:"), "{error}");
    assert_eq!(controller_version(&fleet.url).await.unwrap().version, v1);
    serves(web, "one").await.unwrap();

    // Fixed, plus one bad router next to a good one: only the bad one is left out.
    write_dynamic(
        &fleet.dynamic,
        "broken.yml",
        "http:\n  routers:\n    bad:\n      rule: Host(`bad.test`) &&\n      service: app\n    nosvc:\n      rule: Host(`x.test`)\n      service: ghost\n",
    );
    let diagnostics = eventually("diagnostics", DEADLINE, || async {
        let v = controller_version(&fleet.url).await?;
        if v.diagnostics.len() >= 2 {
            Ok(v.diagnostics)
        } else {
            Err(format!("{v:?}"))
        }
    })
    .await;
    assert!(
        diagnostics
            .iter()
            .any(|d| d.object == "router/bad@file" && d.message.contains("parsing rule"))
    );
    assert!(
        diagnostics.iter().any(|d| d.object == "router/nosvc@file"
            && d.message.contains("\"ghost@file\" does not exist"))
    );
    serves(web, "one").await.unwrap();
    let (code, _) = http_get(web, "x.test", "/").await.unwrap();
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_commands_print_tables_and_json() {
    let fleet = Fleet::new("cli").await;
    let one = backend("one").await;
    write_dynamic(&fleet.dynamic, "app.yml", &app_yaml(one, "1"));
    let _ctl = fleet.controller("");
    let (_pa, _, admin) = fleet.proxy("pa").await;
    let version = eventually("converged", DEADLINE, || converged(&fleet.url, &["pa"])).await;

    let run = |bin: &str, args: &[&str]| {
        let out = std::process::Command::new(process::binary(bin))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, json, _) = run(
        "switchyard-controller",
        &["status", "--controller", &fleet.url, "--json"],
    );
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["version"], version.as_str());
    assert_eq!(v["proxies"][0]["node_id"], "pa");
    assert_eq!(v["proxies"][0]["acked_version"], version.as_str());
    assert_eq!(v["proxies"][0]["connected"], true);
    assert_eq!(v["providers"][0]["name"], "file");

    let (ok, table, _) = run(
        "switchyard-controller",
        &["status", "--controller", &fleet.url],
    );
    assert!(ok);
    assert!(table.contains(&version) && table.contains("pa"), "{table}");

    let admin_addr = admin.to_string();
    let (ok, json, _) = run(
        "switchyard-proxy",
        &["status", "--admin", &admin_addr, "--json"],
    );
    assert!(ok);
    let s: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(s["version"], version.as_str());
    assert_eq!(s["source"], "controller");
    assert_eq!(s["controller_connected"], true);
    let (ok, table, _) = run("switchyard-proxy", &["status", "--admin", &admin_addr]);
    assert!(ok && table.contains(&version), "{table}");

    // Unreachable: non-zero exit and one line naming the target.
    let dead = free_port().await;
    let (ok, _, err) = run(
        "switchyard-controller",
        &["status", "--controller", &format!("http://{dead}")],
    );
    assert!(!ok);
    assert!(err.contains(&dead.to_string()), "{err}");
}
