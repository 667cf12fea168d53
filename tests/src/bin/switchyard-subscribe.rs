//! `switchyard-subscribe`: N lightweight subscribers on one controller, for `bench/run.sh`'s
//! propagation section. Each stands for a proxy: it applies every snapshot as a proxy does
//! (reassemble chunks, verify the content hash, decode into the domain `Snapshot`), every delta
//! as a proxy does (rebuild from the snapshot held, check it against the delta's quick check,
//! find the changed routers and services), and ACKs it.
//!
//! A binary of its own, not a `switchyard-bench` command: it runs on the proxy's allocator
//! (glibc's), where `switchyard-bench` runs on the controller's (mimalloc). On mimalloc every
//! delta's rebuilt snapshot (~0.9 MB at 10 000 routers) landed on pages given back to the kernel
//! since the last one and faulted in again, which a proxy's heap does not do
//! (docs/benchmarks.md, "Light subscribers on the proxy's allocator").
//!
//! Everything talks to 127.0.0.1 only; every wait has a deadline.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use switchyard_shared::{
    chunk::{self, Reassembled, Reassembler},
    delta,
    pb::{self, control_plane_client::ControlPlaneClient, subscribe_request, subscribe_response},
};
use switchyard_tests::flags::Flags;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

const USAGE: &str =
    "usage: switchyard-subscribe --controller URL --count N [--prefix NAME] [--duration-s S]";

fn main() -> ExitCode {
    let result = Flags::parse(std::env::args().skip(1).collect(), USAGE).and_then(|f| {
        // Multi-thread even on one CPU: its worker runs a task woken by the one it is running
        // next (the LIFO slot), so each ACK goes out as soon as its subscriber sends it. On the
        // current-thread scheduler a proxy would use there, the connections' tasks ran after every
        // subscriber woken with them, and 100 subscribers' ACKs went out together (ad hoc, 10 000
        // routers: p50 125–135 ms from the write against 90–92, p99 the same).
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(subscribe(&f))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-subscribe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

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
                let rebuild = base_fields.rebuild(&delta).map_err(anyhow::Error::msg)?;
                rebuild.check().map_err(anyhow::Error::msg)?;
                let delta::Rebuild {
                    snapshot: rebuilt,
                    index: rebuilt_index,
                    ..
                } = rebuild;
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
