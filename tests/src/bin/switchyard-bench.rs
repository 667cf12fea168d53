//! `switchyard-bench`: the helpers `bench/run.sh` needs that a shell cannot do well.
//!
//! - `gen`: a Traefik dynamic configuration with N routers (the same file feeds Switchyard's and
//!   Traefik's file providers).
//! - `compile`: parse + compile + encode a dynamic configuration in-process, as the controller
//!   does, and report the times, the encoded snapshot size and the largest stream message.
//! - `subscribe`: N lightweight subscribers on one controller; each applies every snapshot as a
//!   proxy does (reassemble chunks, verify the content hash, decode into the domain `Snapshot`)
//!   and ACKs it.
//! - `etcd-load`: the same routers as `gen`, written as Traefik's KV keys into a real etcd.
//! - `propagate`: writes K changes into a file-provider directory (or into etcd) and measures
//!   write → applied, from the controller's ACK timestamps (`ListProxies`) or, for Traefik, by
//!   polling HTTP until the new router answers.
//! - `coldstart`: starts a command and measures the time until a URL answers 200.
//!
//! Everything talks to 127.0.0.1 only; every wait has a deadline. Output is one JSON object per
//! result on stdout, so the shell script can collect it.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use prost::Message;
use switchyard_controller::{
    compile,
    provider::{
        file::parse_file,
        kv::etcd::client::{EtcdClient, EtcdTarget},
    },
};
use switchyard_shared::{
    chunk::{self, Reassembled, Reassembler},
    delta,
    pb::{self, control_plane_client::ControlPlaneClient, subscribe_request, subscribe_response},
    snapshot::EntryPoint,
    version::encoded_version,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

/// The controller's allocator, so `compile` measures what the controller does; `subscribe` runs
/// N subscribers in one process, whose shared glibc heap spent most of its time consolidating
/// chunks that N separate proxies never would.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: switchyard-bench <command> [--flag value]…
  gen        --kind host|host-path|path --routers N --backend URL --out FILE
  compile    --file FILE [--out FILE]
  subscribe  --controller URL --count N [--prefix NAME] [--duration-s S]
  etcd-load  --etcd IP:PORT --root KEY --kind host|host-path|path --routers N --backend URL
  propagate  (--dir DIR | --etcd IP:PORT --root KEY) --changes K --backend URL
             (--controller URL --nodes N [--warmup W] | --http ADDR) [--gap-ms MS] [--timeout-s S]
  coldstart  --addr IP:PORT --host HOST --path PATH [--repeat R] -- CMD ARGS…";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::FAILURE;
    }
    let command = args.remove(0);
    let result = match command.as_str() {
        "gen" => Flags::parse(args).and_then(|f| gen_config(&f)),
        "compile" => Flags::parse(args).and_then(|f| compile_config(&f)),
        "subscribe" => Flags::parse(args).and_then(|f| runtime()?.block_on(subscribe(&f))),
        "etcd-load" => Flags::parse(args).and_then(|f| runtime()?.block_on(etcd_load(&f))),
        "propagate" => Flags::parse(args).and_then(|f| runtime()?.block_on(propagate(&f))),
        "coldstart" => coldstart(args),
        _ => Err(anyhow::anyhow!("unknown command `{command}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-bench {command}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `--name value` pairs.
struct Flags(BTreeMap<String, String>);

impl Flags {
    fn parse(args: Vec<String>) -> anyhow::Result<Self> {
        let mut map = BTreeMap::new();
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let Some(name) = flag.strip_prefix("--") else {
                bail!("unexpected argument `{flag}`\n{USAGE}");
            };
            let value = it
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            map.insert(name.to_owned(), value);
        }
        Ok(Self(map))
    }

    fn str(&self, name: &str) -> anyhow::Result<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("--{name} is required\n{USAGE}"))
    }

    fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn num(&self, name: &str, default: Option<u64>) -> anyhow::Result<u64> {
        match (self.0.get(name), default) {
            (Some(v), _) => v
                .parse()
                .with_context(|| format!("--{name} `{v}` is not a number")),
            (None, Some(d)) => Ok(d),
            (None, None) => bail!("--{name} is required\n{USAGE}"),
        }
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------------------------
// gen
// ---------------------------------------------------------------------------------------------

/// Router `i`'s rule. `host`: one distinct host each; `host-path`: ten path prefixes under each of
/// N/10 hosts; `path`: N path prefixes under one host.
fn rule(kind: &str, i: u64) -> anyhow::Result<String> {
    Ok(match kind {
        "host" => format!("Host(`h{i}.bench.test`)"),
        "host-path" => format!(
            "Host(`h{}.bench.test`) && PathPrefix(`/p{}`)",
            i / 10,
            i % 10
        ),
        "path" => format!("Host(`app.bench.test`) && PathPrefix(`/p{i}`)"),
        other => bail!("--kind `{other}`: expected host, host-path or path"),
    })
}

fn gen_config(f: &Flags) -> anyhow::Result<()> {
    let kind = f.str("kind")?;
    let n = f.num("routers", None)?;
    let backend = f.str("backend")?;
    let out = PathBuf::from(f.str("out")?);
    let mut text = String::with_capacity(usize::try_from(n).unwrap_or(0) * 80 + 256);
    text.push_str("# generated by switchyard-bench gen\nhttp:\n  routers:\n");
    for i in 0..n {
        text.push_str(&format!(
            "    r{i}:\n      entryPoints: [web]\n      rule: \"{}\"\n      service: origin\n",
            rule(kind, i)?
        ));
    }
    text.push_str(&format!(
        "  services:\n    origin:\n      loadBalancer:\n        servers:\n          - url: \"{backend}\"\n"
    ));
    write_atomically(&out, text.as_bytes())?;
    println!(
        "{{\"kind\":\"{kind}\",\"routers\":{n},\"yaml_bytes\":{}}}",
        text.len()
    );
    Ok(())
}

/// Writes a hidden temp file next to `path` and renames it over `path`, so a watcher never reads
/// a half-written file (the file provider skips dot files).
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// etcd-load
// ---------------------------------------------------------------------------------------------

/// Keys written per transaction (etcd allows 128 operations by default).
const ETCD_BATCH: usize = 120;

async fn etcd_connect(endpoint: &str) -> anyhow::Result<EtcdClient> {
    let target = EtcdTarget::new(&[endpoint.to_owned()], None, None, "--etcd".into());
    EtcdClient::connect(&target)
        .await
        .with_context(|| format!("cannot connect to etcd at {endpoint}"))
}

/// The keys of router `name` under `root`, as a Traefik user writes them.
fn router_keys(root: &str, name: &str, rule: &str, service: &str) -> [(String, Vec<u8>); 3] {
    let key = |field: &str| format!("{root}/http/routers/{name}/{field}");
    [
        (key("entrypoints/0"), b"web".to_vec()),
        (key("rule"), rule.as_bytes().to_vec()),
        (key("service"), service.as_bytes().to_vec()),
    ]
}

fn service_key(root: &str, name: &str, backend: &str) -> (String, Vec<u8>) {
    (
        format!("{root}/http/services/{name}/loadbalancer/servers/0/url"),
        backend.as_bytes().to_vec(),
    )
}

/// `gen`'s configuration as etcd keys under `--root`.
async fn etcd_load(f: &Flags) -> anyhow::Result<()> {
    let client = etcd_connect(f.str("etcd")?).await?;
    let root = f.str("root")?;
    let kind = f.str("kind")?;
    let n = f.num("routers", None)?;
    let mut pairs = vec![service_key(root, "origin", f.str("backend")?)];
    for i in 0..n {
        pairs.extend(router_keys(
            root,
            &format!("r{i}"),
            &rule(kind, i)?,
            "origin",
        ));
    }
    for batch in pairs.chunks(ETCD_BATCH) {
        client
            .put_all(batch.to_vec())
            .await
            .context("writing the routers")?;
    }
    println!(
        "{{\"kind\":\"{kind}\",\"routers\":{n},\"keys\":{}}}",
        pairs.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// compile
// ---------------------------------------------------------------------------------------------

fn compile_config(f: &Flags) -> anyhow::Result<()> {
    let path = PathBuf::from(f.str("file")?);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let entry_points = vec![EntryPoint {
        name: "web".into(),
        address: "127.0.0.1:80".into(),
        redirect: None,
    }];
    // Median of three: the first run pays for page faults.
    let mut parse_ms = Vec::new();
    let mut compile_ms = Vec::new();
    let mut version_ms = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        let config = parse_file(&path, &text).map_err(anyhow::Error::msg)?;
        parse_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let providers = BTreeMap::from([("file".to_owned(), config)]);
        let t = Instant::now();
        let (snapshot, diags) = compile::compile(&entry_points, &providers);
        compile_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(d) = diags.first() {
            bail!("compile diagnostics, first: {} {}", d.object, d.message);
        }
        // What the publisher adds (publish.rs): the encoding, the content hash and the messages.
        let t = Instant::now();
        let encoded = snapshot.encode();
        let header = pb::VersionedSnapshot {
            version: encoded_version(&encoded),
            generation: 1,
            created_at_unix_ms: 0,
            snapshot: None,
        };
        let messages = chunk::messages_encoded(&header, &encoded);
        version_ms.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some((snapshot.routers.len(), messages));
    }
    let Some((routers, messages)) = last else {
        bail!("nothing compiled");
    };
    // The encoded `VersionedSnapshot`: its chunks put together.
    let bytes: Vec<u8> = messages
        .iter()
        .filter_map(|m| match &m.kind {
            Some(subscribe_response::Kind::Chunk(c)) => Some(&c.data[..]),
            _ => None,
        })
        .flatten()
        .copied()
        .collect();
    if let Some(out) = f.opt("out") {
        std::fs::write(out, &bytes).with_context(|| format!("cannot write {out}"))?;
    }
    let max_message = messages.iter().map(Message::encoded_len).max().unwrap_or(0);
    println!(
        "{{\"routers\":{routers},\"parse_ms\":{:.2},\"compile_ms\":{:.2},\"publish_ms\":{:.2},\"snapshot_bytes\":{},\"messages\":{},\"max_message_bytes\":{max_message}}}",
        median(&mut parse_ms),
        median(&mut compile_ms),
        median(&mut version_ms),
        bytes.len(),
        messages.len()
    );
    Ok(())
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------
// subscribe
// ---------------------------------------------------------------------------------------------

async fn subscribe(f: &Flags) -> anyhow::Result<()> {
    let url = f.str("controller")?.to_owned();
    let count = f.num("count", None)?;
    let prefix = f.opt("prefix").unwrap_or("sub").to_owned();
    let duration = Duration::from_secs(f.num("duration-s", Some(600))?);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let url = url.clone();
        let node = format!("{prefix}-{i}");
        tasks.spawn(async move {
            if let Err(e) = subscriber(&url, &node).await {
                eprintln!("{node}: {e:#}");
            }
        });
    }
    eprintln!("{count} subscribers on {url}");
    // Runs until the deadline or until the script stops it.
    let _ = tokio::time::timeout(duration, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// One subscriber: Hello, then for every snapshot: reassemble → verify → decode → ACK; for
/// every delta: rebuild from the snapshot held → verify → find the changed objects (what a proxy
/// patches its table from) → ACK.
async fn subscriber(url: &str, node: &str) -> anyhow::Result<()> {
    // The controller may still be starting: retry for a bounded while, like a proxy would.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let client = loop {
        // The proxy's channel settings (data-plane join.rs): a chunk fits the receive window.
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .initial_stream_window_size(chunk::RECEIVE_WINDOW_BYTES)
            .initial_connection_window_size(chunk::RECEIVE_WINDOW_BYTES);
        match endpoint.connect().await {
            Ok(channel) => break ControlPlaneClient::new(channel),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("cannot connect to {url} within 60 s"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut client = client.max_decoding_message_size(256 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::SubscribeRequest {
        kind: Some(subscribe_request::Kind::Hello(pb::Hello {
            node_id: node.to_owned(),
            held_version: String::new(),
            build_info: "switchyard-bench subscriber".into(),
            labels: Vec::new(),
            protocol: pb::PROTOCOL,
            accepts_deltas: true,
        })),
    })
    .await?;
    let mut inbound = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .context("subscribe refused")?
        .into_inner();
    let mut chunks = Reassembler::default();
    // The snapshot held as received: the base of the next delta (a proxy reads it back from its
    // state file). The decoded snapshot stands for the table a proxy would build from it.
    let mut held: Option<Reassembled> = None;
    // Its index, when a delta made it: the next delta's base is not walked (as in a proxy).
    let mut index: Option<delta::Index> = None;
    while let Some(message) = inbound.next().await {
        // Verified and decoded as the proxy does (subscriber.rs, runtime.rs): a chunked snapshot
        // by its received bytes, decoded straight into the domain snapshot.
        let (version, decoded) = match message?.kind {
            Some(subscribe_response::Kind::Chunk(c)) => match chunks.push(c) {
                Ok(Some(r)) => match chunk::open(&r.version, &r.bytes) {
                    Ok(opened) => {
                        index = None;
                        (opened.version, Ok(r))
                    }
                    Err(e) => (r.version, Err(e)),
                },
                Ok(None) => continue,
                Err(e) => bail!("{e}"),
            },
            Some(subscribe_response::Kind::Delta(delta)) => {
                let Some(base) = held.take() else {
                    bail!("a delta arrived before any snapshot");
                };
                let base_fields =
                    delta::Base::of(&base.bytes, index.take()).map_err(anyhow::Error::msg)?;
                let delta::Rebuild {
                    snapshot: rebuilt,
                    index: rebuilt_index,
                } = base_fields.rebuild(&delta).map_err(anyhow::Error::msg)?;
                chunk::check(&rebuilt.version, &rebuilt.bytes).map_err(anyhow::Error::msg)?;
                // What a proxy patches its table from (`Table::patch`): the objects that changed,
                // read from the delta once its snapshot is verified, and decoded.
                let changes = base_fields
                    .changes(&delta.parts, usize::MAX)
                    .context("the delta changes more than routers and services")?;
                drop(changes);
                index = Some(rebuilt_index);
                (rebuilt.version.clone(), Ok(rebuilt))
            }
            _ => continue,
        };
        let reply = match decoded {
            Ok(decoded) => {
                held = Some(decoded);
                subscribe_request::Kind::Ack(pb::Ack { version })
            }
            Err(error) => subscribe_request::Kind::Nack(pb::Nack { version, error }),
        };
        tx.send(pb::SubscribeRequest { kind: Some(reply) }).await?;
    }
    drop(held);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// propagate
// ---------------------------------------------------------------------------------------------

/// The change file: one router whose host changes with every step.
fn change_file(step: u64, backend: &str) -> String {
    format!(
        "http:\n  routers:\n    bench-change:\n      entryPoints: [web]\n      rule: \"Host(`change-{step}.bench.test`)\"\n      service: change\n  services:\n    change:\n      loadBalancer:\n        servers:\n          - url: \"{backend}\"\n"
    )
}

/// Where a change is written: a file-provider directory, or etcd.
enum ChangeTarget {
    /// The change file's path.
    File(PathBuf),
    /// The change file's router and service as keys under `root`, in one transaction.
    Etcd { client: EtcdClient, root: String },
}

impl ChangeTarget {
    async fn of(f: &Flags) -> anyhow::Result<Self> {
        Ok(match f.opt("etcd") {
            Some(endpoint) => Self::Etcd {
                client: etcd_connect(endpoint).await?,
                root: f.str("root")?.to_owned(),
            },
            None => Self::File(PathBuf::from(f.str("dir")?).join("zz-change.yml")),
        })
    }

    async fn write(&self, step: u64, backend: &str) -> anyhow::Result<()> {
        match self {
            Self::File(path) => write_atomically(path, change_file(step, backend).as_bytes()),
            Self::Etcd { client, root } => {
                let rule = format!("Host(`change-{step}.bench.test`)");
                let mut pairs = router_keys(root, "bench-change", &rule, "change").to_vec();
                pairs.push(service_key(root, "change", backend));
                client.put_all(pairs).await.context("writing the change")
            }
        }
    }
}

async fn propagate(f: &Flags) -> anyhow::Result<()> {
    let target = ChangeTarget::of(f).await?;
    let changes = f.num("changes", None)?;
    let backend = f.str("backend")?.to_owned();
    let gap = Duration::from_millis(f.num("gap-ms", Some(300))?);
    let timeout = Duration::from_secs(f.num("timeout-s", Some(30))?);
    let warmup = f.num("warmup", Some(1))?;
    // The slowest ACK of the warm-up changes (NaN without any).
    let mut warmup_max_ms = f64::NAN;
    let mut latencies_ms: Vec<f64> = Vec::new();
    let mut published_ms: Vec<f64> = Vec::new();
    let mut failed = 0u64;
    let epoch = u64::try_from(now_us() / 1_000_000).unwrap_or(0);
    if let Some(addr) = f.opt("http") {
        // Traefik: poll the new host until it is routed (200).
        let addr: SocketAddr = addr.parse().context("--http must be IP:PORT")?;
        for step in 1..=changes {
            let step = epoch * 1000 + step;
            let host = format!("change-{step}.bench.test");
            let t0 = Instant::now();
            target.write(step, &backend).await?;
            let deadline = t0 + timeout;
            let mut ok = false;
            while Instant::now() < deadline {
                if http_status(addr, &host, "/") == Some(200) {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if ok {
                latencies_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            } else {
                failed += 1;
            }
            tokio::time::sleep(gap).await;
        }
    } else {
        let url = f.str("controller")?.to_owned();
        let nodes = usize::try_from(f.num("nodes", None)?)?;
        let mut client = ControlPlaneClient::connect(url.clone())
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        // Everyone must be connected and current first.
        let start = Instant::now();
        loop {
            let version = current_version(&mut client).await?;
            let list = client
                .list_proxies(pb::ListProxiesRequest {})
                .await?
                .into_inner();
            let current = list
                .proxies
                .iter()
                .filter(|p| p.connected && p.acked_version == version && !version.is_empty())
                .count();
            if current >= nodes {
                break;
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("only {current}/{nodes} proxies hold version {version} after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The first change after a start pays once for what later ones reuse (fresh pages for
        // the rebuilt snapshots, the first delta's walk of its base, the controller's first
        // incremental compile): measured on its own, not among the K.
        for step in 1..=warmup + changes {
            let measured = step > warmup;
            let before = current_version(&mut client).await?;
            let t0_ms = now_us() as f64 / 1e3;
            let t0 = Instant::now();
            target.write(epoch * 1000 + step, &backend).await?;
            let deadline = t0 + timeout;
            let mut version = before.clone();
            while version == before && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
                version = current_version(&mut client).await?;
            }
            let mut done = false;
            while !done && Instant::now() < deadline {
                let list = client
                    .list_proxies(pb::ListProxiesRequest {})
                    .await?
                    .into_inner();
                let acked: Vec<i64> = list
                    .proxies
                    .iter()
                    .filter(|p| p.acked_version == version)
                    .map(|p| p.acked_at_unix_ms)
                    .collect();
                if acked.len() >= nodes {
                    let applied = acked.iter().map(|a| *a as f64 - t0_ms);
                    if measured {
                        latencies_ms.extend(applied);
                    } else {
                        warmup_max_ms = applied.fold(warmup_max_ms, f64::max);
                    }
                    done = true;
                } else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            if !done {
                failed += 1;
            }
            let created = client
                .get_version(pb::GetVersionRequest {})
                .await?
                .into_inner()
                .created_at_unix_ms;
            if measured {
                published_ms.push(created as f64 - t0_ms);
            }
            tokio::time::sleep(gap).await;
        }
    }
    let p = |xs: &mut Vec<f64>, q: f64| -> f64 {
        xs.sort_by(f64::total_cmp);
        if xs.is_empty() {
            return f64::NAN;
        }
        // Nearest rank.
        let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
        xs[rank - 1]
    };
    let samples = latencies_ms.len();
    println!(
        "{{\"changes\":{changes},\"samples\":{samples},\"failed\":{failed},\"p50_ms\":{:.1},\"p99_ms\":{:.1},\"max_ms\":{:.1},\"published_p50_ms\":{:.1},\"warmup_max_ms\":{warmup_max_ms:.1}}}",
        p(&mut latencies_ms, 0.50),
        p(&mut latencies_ms, 0.99),
        p(&mut latencies_ms, 1.0),
        p(&mut published_ms, 0.50),
    );
    Ok(())
}

async fn current_version(
    client: &mut ControlPlaneClient<tonic::transport::Channel>,
) -> anyhow::Result<String> {
    Ok(client
        .get_version(pb::GetVersionRequest {})
        .await?
        .into_inner()
        .version)
}

// ---------------------------------------------------------------------------------------------
// coldstart
// ---------------------------------------------------------------------------------------------

/// A minimal HTTP/1.1 GET; the status code, or `None` when nothing (valid) answered.
fn http_status(addr: SocketAddr, host: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.set_nodelay(true).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    let text = std::str::from_utf8(&head).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn coldstart(args: Vec<String>) -> anyhow::Result<()> {
    let split = args
        .iter()
        .position(|a| a == "--")
        .context("coldstart needs `-- CMD ARGS…`")?;
    let flags = Flags::parse(args[..split].to_vec())?;
    let cmd = &args[split + 1..];
    let (program, rest) = cmd.split_first().context("empty command")?;
    let addr: SocketAddr = flags
        .str("addr")?
        .parse()
        .context("--addr must be IP:PORT")?;
    let host = flags.str("host")?;
    let path = flags.str("path")?;
    let repeat = flags.num("repeat", Some(5))?;
    let mut times = Vec::new();
    for _ in 0..repeat {
        let t0 = Instant::now();
        let mut child = Command::new(program)
            .args(rest)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let deadline = t0 + Duration::from_secs(30);
        let mut elapsed = None;
        while Instant::now() < deadline {
            if http_status(addr, host, path) == Some(200) {
                elapsed = Some(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Our own child, stopped by its handle.
        let _ = child.kill();
        let _ = child.wait();
        times.push(elapsed.context("no 200 within 30 s")?);
        std::thread::sleep(Duration::from_millis(300));
    }
    let all: Vec<String> = times.iter().map(|t| format!("{t:.1}")).collect();
    println!(
        "{{\"repeat\":{repeat},\"median_ms\":{:.1},\"max_ms\":{:.1},\"all_ms\":[{}]}}",
        median(&mut times.clone()),
        times.iter().copied().fold(0.0, f64::max),
        all.join(",")
    );
    Ok(())
}
