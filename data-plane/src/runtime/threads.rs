//! The two long-lived threads of an apply, and why each is a thread of its own: glibc gives every
//! thread its own malloc arena, and a block goes back to the arena it came from, whichever thread
//! frees it.
//!
//! - The **build thread** builds every table, so each table reuses the memory its predecessor
//!   freed. Tables built on tokio's blocking pool (on whichever thread was idle) left a
//!   table-sized high-water mark in several arenas: a proxy holding 50 000 routers grew to 174 MiB
//!   over ten one-router changes (82 MiB when built on one thread).
//! - The **decode thread** decodes whole snapshots and frees them, so its arena holds nothing but
//!   the snapshot being applied (~25 MB at 50 000 routers, half again the table built from it).
//!   Once the snapshot is freed that arena is empty, and glibc gives the empty top of an arena back
//!   to the system when a large free merges into it. Decoded on the build thread, the same
//!   megabytes were free holes below the table, never given back: 57 MiB of RSS at 50 000
//!   `Host && PathPrefix` routers instead of 33 (docs/benchmarks.md).

use std::{
    cell::RefCell,
    collections::VecDeque,
    ops::Range,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use switchyard_shared::snapshot::Snapshot;

type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs jobs in order; a panic in a job is an error for whoever waits on it, not
/// the thread's end. The queue is a mutex and a condition variable rather than a channel: a
/// channel's receiver allocates when it first blocks, and on the decode thread that block could
/// land at the top of the arena and keep it (see [`CacheBlocks`]). Waiting on a condition
/// variable allocates nothing. The thread ends once every handle is gone and the queue is empty.
#[derive(Clone)]
struct Worker {
    queue: Arc<Queue>,
}

#[derive(Default)]
struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    /// Set when the last handle goes.
    closed: AtomicBool,
}

impl Worker {
    fn start(name: &str) -> std::io::Result<Self> {
        let queue = Arc::new(Queue::default());
        let own = Arc::clone(&queue);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let abandoned =
                    || own.closed.load(Ordering::Acquire) || Arc::strong_count(&own) == 1;
                while let Some(job) = own.next(abandoned) {
                    // A panic (in a drop, say) is the job's end, not the thread's: jobs that
                    // answer catch their own and report it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        Ok(Self { queue })
    }

    /// Queues `job`; nothing waits for it.
    fn send(&self, job: impl FnOnce() + Send + 'static) {
        self.queue.push(Box::new(job));
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // This handle and the thread's own reference: the last handle is going (no other is
        // left to clone from), so the thread may end once the queue is empty.
        if Arc::strong_count(&self.queue) <= 2 {
            // Under the lock, so the thread cannot miss it between looking and waiting.
            let _jobs = self.queue.jobs.lock().unwrap_or_else(|p| p.into_inner());
            self.queue.closed.store(true, Ordering::Release);
            self.queue.ready.notify_one();
        }
    }
}

impl Queue {
    fn push(&self, job: Job) {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(job);
        self.ready.notify_one();
    }

    /// The next job, waiting for one; `None` once the queue is empty and `abandoned`.
    fn next(&self, abandoned: impl Fn() -> bool) -> Option<Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(job) = jobs.pop_front() {
                return Some(job);
            }
            if abandoned() {
                return None;
            }
            // Handles dropped at once may each see another one left, and none notify: look
            // again now and then (an idle proxy's threads wake once a minute, no more).
            jobs = self
                .ready
                .wait_timeout(jobs, Duration::from_secs(60))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// What went wrong running a job, in the words of the thread's caller.
struct Failures {
    panicked: &'static str,
    stopped_during: &'static str,
}

const BUILD: Failures = Failures {
    panicked: "the table build panicked",
    stopped_during: "the build thread stopped during a build",
};

const DECODE: Failures = Failures {
    panicked: "the snapshot decode panicked",
    stopped_during: "the decode thread stopped during a decode",
};

type Outcome<R> = std::thread::Result<R>;

fn outcome<R>(received: Option<Outcome<R>>, failures: &Failures) -> Result<R, String> {
    match received {
        Some(Ok(value)) => Ok(value),
        Some(Err(_)) => Err(failures.panicked.to_owned()),
        None => Err(failures.stopped_during.to_owned()),
    }
}

/// The one long-lived thread that builds every table (see the module documentation).
pub(super) struct BuildThread(Worker);

impl BuildThread {
    pub(super) fn start() -> std::io::Result<Self> {
        Worker::start("switchyard-build").map(Self)
    }

    /// Drops `garbage` (the replaced table, what the new one was patched from) on the build
    /// thread after the swap, then lets glibc merge what was freed. Freeing a big table leaves
    /// hundreds of thousands of small chunks in glibc's fast bins, and the next request for a
    /// larger block merges all of them first (`malloc_consolidate`): that is done here, between
    /// applies, instead of inside the next build. Nothing waits for it.
    pub(super) fn retire(&self, garbage: impl Send + 'static) {
        self.0.send(move || {
            drop(garbage);
            merge_freed_blocks();
        });
    }

    /// Runs `f` on the build thread.
    pub(super) async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, String> {
        let (reply, result) = tokio::sync::oneshot::channel();
        let job = move || {
            let _ = reply.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        };
        self.0.send(job);
        outcome(result.await.ok(), &BUILD)
    }
}

/// The thread that decodes whole snapshots and frees them (see the module documentation).
#[derive(Clone)]
pub(super) struct DecodeThread(Worker);

impl DecodeThread {
    pub(super) fn start() -> std::io::Result<Self> {
        Worker::start("switchyard-decode").map(Self)
    }

    /// Decodes the snapshot in `bytes[range]` for serving on the decode thread, waiting for it
    /// (called from the build thread). The outer error is the thread's, the inner the snapshot's.
    pub(super) fn decode(
        &self,
        bytes: Arc<Vec<u8>>,
        range: Range<usize>,
    ) -> Result<Result<Snapshot, String>, String> {
        // A channel with room for the reply made here, so that sending it allocates nothing on
        // the decode thread.
        let (reply, result) = std::sync::mpsc::sync_channel(1);
        let job = move || {
            let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                CACHE_BLOCKS.with_borrow_mut(|blocks| {
                    blocks.before_decode();
                    let decoded = Snapshot::decode_to_serve(bytes.get(range).unwrap_or_default())
                        .map_err(|e| e.to_string());
                    drop(bytes);
                    blocks.after_decode();
                    decoded
                })
            }));
            let _ = reply.send(decoded);
        };
        self.0.send(job);
        outcome(result.recv().ok(), &DECODE)
    }

    /// Frees a snapshot [`DecodeThread::decode`] made, on the decode thread, so that its arena
    /// is given back. Nothing waits for it.
    pub(super) fn free(&self, snapshot: Snapshot) {
        self.0.send(move || {
            CACHE_BLOCKS.with_borrow_mut(|blocks| blocks.free(snapshot));
        });
    }
}

/// A request above glibc's small-bin sizes and below its mmap threshold: it merges the fast bins
/// (`malloc_consolidate`), and freeing it trims the arena's top when that is large.
fn merge_freed_blocks() {
    let block: Vec<u8> = Vec::with_capacity(64 * 1024);
    drop(std::hint::black_box(block));
}

/// glibc's per-thread cache (tcache) keeps up to 7 freed blocks of each of its 64 smallest
/// sizes (24 to 1 032 bytes, in steps of 16) for the thread's next requests. To the arena they
/// are still in use, so a single one near the top of the arena keeps the whole free space below
/// it from being given back. The decode thread therefore keeps the cache full of blocks from the
/// bottom of its arena whenever a snapshot is freed:
/// - `ballast`: 7 blocks of each size, allocated before the first snapshot (so at the bottom of
///   the arena), put in the cache just before a snapshot is freed and taken out again after;
/// - `scrub`: what the cache held after a decode (blocks the decode freed, anywhere in the
///   snapshot), taken out of the cache then and freed with the snapshot.
///
/// Both lists are allocated once, with room for every block, so they never move. Should glibc's
/// cache differ from this, the arena is given back less or not at all; nothing else changes.
struct CacheBlocks {
    ballast: Vec<Vec<u8>>,
    scrub: Vec<Vec<u8>>,
}

const CACHE_SIZES: usize = 64;
const CACHE_COUNT: usize = 7;

thread_local! {
    static CACHE_BLOCKS: RefCell<CacheBlocks> = RefCell::new(CacheBlocks::new());
}

impl CacheBlocks {
    fn new() -> Self {
        let mut ballast = Vec::with_capacity(CACHE_SIZES * CACHE_COUNT);
        take_cache_sized(&mut ballast);
        Self {
            ballast,
            scrub: Vec::with_capacity(CACHE_SIZES * CACHE_COUNT),
        }
    }

    fn before_decode(&mut self) {
        // Left by a decode that failed.
        self.scrub.clear();
    }

    fn after_decode(&mut self) {
        take_cache_sized(&mut self.scrub);
    }

    fn free(&mut self, mut snapshot: Snapshot) {
        self.ballast.clear();
        // The list of routers is one block, mmapped when large (11.6 MB at 50 000 routers), and
        // freeing a mmapped block raises glibc's trim threshold to twice its size: freed before
        // the merge, it kept the arena's top (16 MB of free space there) from being given back.
        // So the routers are freed with the rest, and their list's block after the merge.
        let mut routers = std::mem::take(&mut snapshot.routers);
        routers.clear();
        drop(snapshot);
        self.scrub.clear();
        merge_freed_blocks();
        drop(routers);
        take_cache_sized(&mut self.ballast);
    }
}

/// Appends `CACHE_COUNT` blocks of each of the cache's sizes to `blocks` (which has room).
fn take_cache_sized(blocks: &mut Vec<Vec<u8>>) {
    for size in 0..CACHE_SIZES {
        for _ in 0..CACHE_COUNT {
            blocks.push(std::hint::black_box(Vec::with_capacity(24 + 16 * size)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_build_is_an_error_and_the_thread_goes_on() {
        let builder = BuildThread::start().expect("start the build thread");
        let first = builder.run(|| std::thread::current().id()).await;
        let failed = builder.run(|| -> u32 { panic!("bad table") }).await;
        assert_eq!(failed, Err("the table build panicked".to_owned()));
        // A panic in a job nothing waits for (a drop) does not end the thread either.
        struct PanicsOnDrop;
        impl Drop for PanicsOnDrop {
            fn drop(&mut self) {
                panic!("bad drop");
            }
        }
        builder.retire(PanicsOnDrop);
        let after = builder.run(|| std::thread::current().id()).await;
        // Every job, before and after the panics, ran on the same long-lived thread.
        assert_eq!(first, after);
        assert_ne!(first, Ok(std::thread::current().id()));
    }

    #[test]
    fn the_decode_thread_decodes_reports_errors_and_goes_on() {
        use prost::Message;
        use switchyard_shared::pb;

        let decoder = DecodeThread::start().expect("start the decode thread");
        let encoded = pb::Snapshot {
            entry_points: vec![pb::EntryPoint {
                name: "web".into(),
                address: ":80".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let len = encoded.len();
        let bytes = Arc::new(encoded);
        let snapshot = decoder
            .decode(Arc::clone(&bytes), 0..len)
            .expect("the thread answers")
            .expect("a valid snapshot");
        assert_eq!(snapshot.entry_points.len(), 1);
        assert_eq!(snapshot.entry_points[0].name, "web");
        decoder.free(snapshot);

        // Not a snapshot: field 1 with a wire type that cannot hold a message.
        let garbage = Arc::new(vec![0x08, 0x01]);
        let failed = decoder.decode(garbage, 0..2).expect("the thread answers");
        assert!(failed.is_err(), "{failed:?}");

        // The thread goes on after a failed decode.
        let again = decoder
            .decode(bytes, 0..len)
            .expect("the thread answers")
            .expect("a valid snapshot");
        assert_eq!(again.entry_points.len(), 1);
        decoder.free(again);
    }

    /// Resident memory of this process, in bytes.
    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("statm has a resident field");
        pages * 4096
    }

    /// Set in the process that measures [`a_freed_snapshot_gives_its_memory_back`].
    const MEASURE_HERE: &str = "SWITCHYARD_TEST_MEASURE_HERE";

    #[test]
    fn a_freed_snapshot_gives_its_memory_back() {
        // Resident memory is the whole process's, and `cargo test` runs a binary's tests on
        // threads of one process (nextest gives each its own): the measurement runs in a
        // process of its own, this test binary again with this test alone.
        if std::env::var_os(MEASURE_HERE).is_none() {
            let module = module_path!()
                .split_once("::")
                .map_or(module_path!(), |(_, rest)| rest);
            let name = format!("{module}::a_freed_snapshot_gives_its_memory_back");
            let run = std::process::Command::new(std::env::current_exe().expect("test binary"))
                .args(["--exact", &name, "--test-threads=1", "--nocapture"])
                .env(MEASURE_HERE, "1")
                .output()
                .expect("run the test binary");
            let out = String::from_utf8_lossy(&run.stdout);
            let err = String::from_utf8_lossy(&run.stderr);
            // A name that matched nothing would pass having measured nothing.
            assert!(
                run.status.success() && out.contains("test result: ok. 1 passed"),
                "the measurement in its own process failed:\n{out}\n{err}"
            );
            return;
        }
        use switchyard_shared::{
            rule::{Expr, Matcher},
            snapshot::{EntryPoint, LoadBalancer, Router, Server, Service, ServiceKind},
        };

        // 50 000 `Host && PathPrefix` routers, as in the route-scale bench.
        let routers = (0..50_000)
            .map(|i| Router {
                name: format!("r{i}@file"),
                provider: "file".into(),
                entry_points: vec!["web".into()],
                rule: Expr::All(vec![
                    Expr::Matcher(Matcher::Host(format!("h{}.bench.test", i / 10))),
                    Expr::Matcher(Matcher::PathPrefix(format!("/p{}", i % 10))),
                ]),
                priority: 0,
                middlewares: Vec::new(),
                service: "origin@file".into(),
                rule_text: String::new(),
                tls: None,
            })
            .collect();
        let snapshot = Snapshot {
            entry_points: vec![EntryPoint {
                name: "web".into(),
                address: ":80".into(),
                redirect: None,
            }],
            routers,
            services: vec![Service {
                name: "origin@file".into(),
                kind: ServiceKind::LoadBalancer(LoadBalancer {
                    servers: vec![Server {
                        url: "http://127.0.0.1:1".into(),
                        weight: 1,
                    }],
                    pass_host_header: true,
                }),
            }],
            ..Default::default()
        };
        // Kept until the end: freeing its router list (one mmapped block) would raise glibc's
        // mmap threshold for the whole process, and the decoded list of the same size would
        // then come from the decode thread's arena instead of its own mapping. A proxy frees no
        // such block before its first decode, and the test must see the arena the proxy sees:
        // with the list's block freed before the merge (as before d565483) this test fails
        // (29.4 MB resident after the decode, 17.8 MB still after the free).
        let encoded = snapshot.encode();
        let len = encoded.len();
        let bytes = Arc::new(encoded);

        let decoder = DecodeThread::start().expect("start the decode thread");
        let before = resident_bytes();
        let decoded = decoder
            .decode(Arc::clone(&bytes), 0..len)
            .expect("the thread answers")
            .expect("a valid snapshot");
        let held = resident_bytes().saturating_sub(before);
        assert_eq!(decoded.routers.len(), 50_000);
        decoder.free(decoded);
        // Jobs run in order: once this decode is answered, the free has run.
        let small = decoder
            .decode(Arc::new(Vec::new()), 0..0)
            .expect("the thread answers")
            .expect("an empty snapshot");
        decoder.free(small);
        let kept = resident_bytes().saturating_sub(before);
        assert!(
            held > 10 << 20,
            "decoding 50 000 routers took only {held} bytes"
        );
        assert!(
            kept < held / 4,
            "{held} bytes resident after the decode, {kept} still after the free"
        );
        drop(snapshot);
    }

    #[test]
    fn a_worker_thread_ends_with_its_last_handle() {
        thread_local! {
            static HELD: RefCell<Option<Arc<()>>> = const { RefCell::new(None) };
        }
        let decoder = DecodeThread::start().expect("start the decode thread");
        let marker = Arc::new(());
        let held = Arc::downgrade(&marker);
        // Kept in a thread-local of the worker thread: dropped when that thread ends.
        decoder
            .0
            .send(move || HELD.with(|h| *h.borrow_mut() = Some(marker)));
        // Jobs run in order: once this answers, the thread holds the marker; it is then waiting
        // for the next job well within the pause.
        let empty = decoder
            .decode(Arc::new(Vec::new()), 0..0)
            .expect("the thread answers")
            .expect("an empty snapshot");
        drop(empty);
        std::thread::sleep(Duration::from_millis(100));
        let other = decoder.clone();
        drop(decoder);
        drop(other);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while held.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread did not end once its last handle was dropped"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
