//! `switchyard-apply`: the proxy's apply, in-process, for `bench/run.sh`. Reads a snapshot as the
//! controller sends it (an encoded `VersionedSnapshot`, written by `switchyard-bench compile
//! --out`) and applies it several times the way the proxy's build thread does: verify the content
//! hash and decode (`chunk::open`), build the table over the previous one (`Table::from_snapshot`),
//! then free the decoded snapshot and the replaced table; then a one-router change applied as a
//! patch (`Table::patch`, the served snapshot read back from a file as from the state dir). Prints the medians as one JSON object.
//!
//! A binary of its own, not a `switchyard-bench` command: it must run on the proxy's allocator
//! (glibc's), and `switchyard-bench` runs on mimalloc like the controller.

use std::{process::ExitCode, time::Instant};

use anyhow::Context;
use switchyard_proxy::state::{Table, patch_limit};
use switchyard_shared::{
    changes, chunk, pb,
    rule::{Expr, Matcher},
    snapshot::Snapshot,
    version::encoded_version,
};

const USAGE: &str = "usage: switchyard-apply SNAPSHOT_FILE [ROUNDS]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-apply: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().context(USAGE)?;
    let rounds: usize = match args.next() {
        Some(r) => r
            .parse()
            .with_context(|| format!("ROUNDS `{r}`\n{USAGE}"))?,
        None => 5,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {path}"))?;
    let version = header_version(&bytes)?;
    let (mut open_ms, mut build_ms, mut free_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut previous: Option<Table> = None;
    let mut routers = 0;
    // The first apply builds over nothing (a proxy's first snapshot); the others over the previous
    // table, like a change.
    for _ in 0..rounds.max(2) {
        let t = Instant::now();
        let opened = chunk::open(&version, &bytes).map_err(anyhow::Error::msg)?;
        open_ms.push(ms(t));
        let t = Instant::now();
        let (table, input) = Table::from_snapshot(
            opened.version,
            opened.generation,
            opened.snapshot,
            previous.as_ref(),
        )?;
        build_ms.push(ms(t));
        routers = table.router_count;
        let t = Instant::now();
        drop(input);
        drop(previous.replace(table));
        free_ms.push(ms(t));
    }
    let patch_ms = patch_rounds(&bytes, &version, rounds.max(2))?;
    // Changes only: the first apply had nothing to reuse or free.
    println!(
        "{{\"routers\":{routers},\"open_ms\":{:.2},\"build_ms\":{:.2},\"free_ms\":{:.2},\"patch_ms\":{:.2}}}",
        median(&mut open_ms[1..]),
        median(&mut build_ms[1..]),
        median(&mut free_ms[1..]),
        patch_ms
    );
    Ok(())
}

/// One router added, then removed again, `rounds` times, the way the proxy applies a snapshot
/// that differs from the served one in a few objects: verify the hash, read the served snapshot
/// back from its file (the proxy's state file) and compare, patch the table (`Table::patch`).
/// Returns the median ms.
fn patch_rounds(bytes: &[u8], version: &str, rounds: usize) -> anyhow::Result<f64> {
    let checked = chunk::check(version, bytes).map_err(anyhow::Error::msg)?;
    let content = &bytes[checked.content.clone()];
    // The same snapshot with one more router (a copy of the last one, on a host of its own).
    let mut changed = Snapshot::decode(content)?;
    let mut extra = changed
        .routers
        .last()
        .cloned()
        .context("no router to copy")?;
    extra.name = format!("zzz-added-{}", extra.name);
    extra.rule = Expr::Matcher(Matcher::Host("added.bench.test".into()));
    changed.routers.push(extra);
    let changed = changed.encode();
    let header = pb::VersionedSnapshot {
        version: encoded_version(&changed),
        ..Default::default()
    };
    let changed: Vec<u8> = chunk::messages_encoded(&header, &changed)
        .into_iter()
        .filter_map(|m| match m.kind {
            Some(pb::subscribe_response::Kind::Chunk(c)) => Some(c.data),
            _ => None,
        })
        .flatten()
        .collect();
    let sides = [
        (version.to_owned(), bytes.to_vec()),
        (header.version, changed),
    ];
    let served_file = std::env::temp_dir().join(format!("switchyard-apply-{}", std::process::id()));
    let opened = chunk::open(version, bytes).map_err(anyhow::Error::msg)?;
    let (mut table, input) =
        Table::from_snapshot(opened.version, opened.generation, opened.snapshot, None)?;
    drop(input);
    let mut patch_ms = Vec::new();
    for round in 0..rounds * 2 {
        let (served, next) = (&sides[round % 2], &sides[(round + 1) % 2]);
        std::fs::write(&served_file, &served.1)
            .with_context(|| format!("cannot write {}", served_file.display()))?;
        let t = Instant::now();
        let new = chunk::check(&next.0, &next.1).map_err(anyhow::Error::msg)?;
        let old_bytes = std::fs::read(&served_file)?;
        let old = chunk::check(&served.0, &old_bytes).map_err(anyhow::Error::msg)?;
        let changes = changes::between(
            &old_bytes[old.content],
            &next.1[new.content],
            patch_limit(table.router_count),
        )
        .context("one router added or removed is a patch")?;
        drop(old_bytes);
        let patched = table
            .patch(new.version, new.generation, &changes)
            .context("one router added or removed is a patch")?;
        patch_ms.push(ms(t));
        drop(std::mem::replace(&mut table, patched));
    }
    let _ = std::fs::remove_file(&served_file);
    Ok(median(&mut patch_ms))
}

/// The version a `VersionedSnapshot`'s header announces (what its chunks would carry).
fn header_version(bytes: &[u8]) -> anyhow::Result<String> {
    use prost::Message;
    #[derive(Clone, PartialEq, prost::Message)]
    struct Header {
        #[prost(string, tag = "1")]
        version: String,
    }
    Ok(Header::decode(bytes)
        .context("not an encoded VersionedSnapshot")?
        .version)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}
