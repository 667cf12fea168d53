//! The proxy's live state and the one way to change it: [`Runtime::apply`]. Build the table (can
//! fail → NACK) → bind new listeners (can fail → NACK) → persist (a disk error is reported, never
//! blocks serving) → swap the table → start/stop listeners. The request path only ever reads the
//! `ArcSwap<Table>`.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use prost::Message;
use switchyard_shared::{
    changes,
    chunk::{self, Reassembled},
    delta, pb,
    snapshot::Snapshot,
    time::now_unix_ms,
};
use tokio::sync::Mutex as AsyncMutex;

use crate::{
    listener::{Listeners, parse_listen_address},
    state::{self, Table},
    store::Store,
};

#[cfg(test)]
mod tests;
mod threads;

use threads::{BuildThread, DecodeThread};

/// Where the applied snapshot came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    None,
    Disk,
    Controller,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::None => "none",
            Source::Disk => "disk",
            Source::Controller => "controller",
        }
    }
}

/// Status served by `ProxyAdmin/GetStatus`.
#[derive(Clone, Debug)]
pub struct Status {
    pub source: Source,
    pub applied_at_unix_ms: i64,
    pub controller_connected: bool,
    pub controller: String,
    pub last_error: String,
    /// Problems with the state files (`GetStatus.state_error`).
    pub state_error: String,
    pub snapshots_received: u64,
    pub nacks_sent: u64,
    pub deltas_received: u64,
    pub resyncs_requested: u64,
}

/// The table for `content` (the encoded snapshot `checked`) patched from `served`, when the two
/// snapshots differ only in a few routers and services. A snapshot rebuilt from a delta against
/// the version served says what changed itself (`delta`); otherwise the served snapshot's bytes are
/// read back from the state file (where they were persisted before it was served) rather than
/// kept in memory — 4.6 MB at 50 000 routers, next to a table of ~45 MB — and compared with the
/// new ones. A state file that is missing, stale or corrupt (its content does not hash to the
/// served version) means a full build.
fn patch(
    store: &Store,
    served: &Table,
    checked: &chunk::Checked,
    content: &[u8],
    delta: Option<DeltaChanges>,
) -> Option<(Table, changes::Changes)> {
    if served.version.is_empty() {
        return None;
    }
    let changes = match delta.filter(|d| d.base_version == served.version) {
        Some(delta) => delta.changes?,
        None => {
            let read = store.current_payload().ok()?;
            let old_checked = chunk::check(&served.version, &read).ok()?;
            let old_content = read.get(old_checked.content)?;
            let limit = state::patch_limit(served.router_count);
            changes::between(old_content, content, limit)?
        }
    };
    let table = served.patch(checked.version.clone(), checked.generation, &changes)?;
    Some((table, changes))
}

/// What a delta changed, read from its parts once the snapshot it rebuilt was verified.
struct DeltaChanges {
    /// The version the delta was made against: the changes hold for a table of that version.
    base_version: String,
    /// `None`: more than a table patch (see [`changes::between`]).
    changes: Option<changes::Changes>,
}

/// A snapshot rebuilt from a delta: verified, with what it changed.
pub struct Rebuilt {
    pub received: Reassembled,
    checked: chunk::Checked,
    delta: DeltaChanges,
    /// Its content's fields, kept once it is served for the next delta's base.
    index: delta::Index,
}

/// A table built by the build thread, with what it leaves to free once the new table is live:
/// the decoded snapshot or changes it was built from.
struct Built {
    table: Table,
    /// Freed on the build thread.
    garbage: Box<dyn Send>,
    /// A snapshot the decode thread decoded, freed there.
    decoded: Option<Snapshot>,
    /// Patched from the table served: how many routers and services changed.
    patched: Option<usize>,
}

impl Built {
    fn whole(table: Table, input: Snapshot) -> Self {
        Self {
            table,
            garbage: Box::new(input),
            decoded: None,
            patched: None,
        }
    }

    fn decoded(table: Table, input: Snapshot) -> Self {
        Self {
            table,
            garbage: Box::new(()),
            decoded: Some(input),
            patched: None,
        }
    }
}

/// Shared proxy state.
pub struct Runtime {
    pub node_id: String,
    pub table: Arc<ArcSwap<Table>>,
    pub status: std::sync::Mutex<Status>,
    store: Store,
    /// Local listen-address overrides (`--entrypoint NAME=ADDR`).
    overrides: BTreeMap<String, SocketAddr>,
    /// Serialises applies; held across awaits, so an async mutex.
    listeners: AsyncMutex<Listeners>,
    builder: BuildThread,
    decoder: DecodeThread,
    /// The top-level fields of the snapshot served, by its version, when a delta made it: the
    /// next delta's base is then not walked again ([`delta::Index`]).
    base_index: std::sync::Mutex<Option<(String, delta::Index)>>,
}

impl Runtime {
    pub fn new(
        node_id: String,
        table: Arc<ArcSwap<Table>>,
        store: Store,
        overrides: BTreeMap<String, SocketAddr>,
        listeners: Listeners,
    ) -> std::io::Result<Self> {
        Ok(Self {
            node_id,
            table,
            status: std::sync::Mutex::new(Status {
                source: Source::None,
                applied_at_unix_ms: 0,
                controller_connected: false,
                controller: String::new(),
                last_error: String::new(),
                state_error: String::new(),
                snapshots_received: 0,
                deltas_received: 0,
                resyncs_requested: 0,
                nacks_sent: 0,
            }),
            store,
            overrides,
            listeners: AsyncMutex::new(listeners),
            builder: BuildThread::start()?,
            decoder: DecodeThread::start()?,
            base_index: std::sync::Mutex::new(None),
        })
    }

    pub fn with_status<R>(&self, f: impl FnOnce(&mut Status) -> R) -> R {
        let mut guard = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// The version being served ("" when none).
    pub fn version(&self) -> String {
        self.table.load().version.clone()
    }

    /// Desired listeners: the snapshot's entry points with local overrides, plus overridden entry
    /// points the snapshot does not (yet) declare, so `--entrypoint` ports are bound from boot.
    fn desired(&self, table: &Table) -> Result<Vec<(String, SocketAddr)>, String> {
        let mut out: BTreeMap<String, SocketAddr> = self.overrides.clone();
        for (name, address) in &table.entry_points {
            if !out.contains_key(name) {
                let addr = parse_listen_address(address)
                    .map_err(|e| format!("entry point {name}: {e}"))?;
                out.insert(name.clone(), addr);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Binds the listeners for the current table (boot).
    pub async fn start_listeners(&self) -> Result<(), String> {
        let table = self.table.load_full();
        let desired = self.desired(&table)?;
        let mut listeners = self.listeners.lock().await;
        let prepared = listeners.prepare(&desired).await?;
        listeners.commit(prepared);
        Ok(())
    }

    /// Validates and applies a snapshot. `Err` carries the NACK reason; nothing changed then.
    pub async fn apply(
        &self,
        snapshot: pb::VersionedSnapshot,
        source: Source,
    ) -> Result<(), String> {
        let encoded = (source == Source::Controller).then(|| Arc::new(snapshot.encode_to_vec()));
        self.apply_with(encoded, source, move |previous| {
            let (table, input) =
                Table::build_keeping_input(snapshot, Some(previous)).map_err(|e| e.to_string())?;
            Ok(Built::whole(table, input))
        })
        .await
    }

    /// Rebuilds the snapshot a delta describes from the one served (read back from the state
    /// file, which holds it), checks the result ([`delta::Rebuild::check`]: against the delta's
    /// quick check, else against the announced version), and reads the routers and services it
    /// changes from the delta; the apply then neither reads nor hashes anything again, nor
    /// compares the two snapshots. An error asks for the snapshot whole (`Resync`); it does not
    /// reject it.
    pub async fn rebuild_delta(&self, delta: pb::SnapshotDelta) -> Result<Rebuilt, String> {
        let served = self.table.load_full();
        let held = served.version.clone();
        if delta.base_version != held {
            return Err(format!(
                "the delta is against {}; this proxy serves {}",
                delta.base_version,
                if held.is_empty() { "nothing" } else { &held }
            ));
        }
        let limit = state::patch_limit(served.router_count);
        drop(served);
        let kept = self
            .take_base_index()
            .and_then(|(version, index)| (version == held).then_some(index));
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            // Not hashed again: this proxy wrote only checked content there, and damage since
            // then is found by the check of the rebuild. Its header says which version it holds.
            let payload = store
                .current_payload()
                .map_err(|e| format!("the snapshot served cannot be read back: {e}"))?;
            let stored = chunk::announced_version(&payload)
                .map_err(|e| format!("the state file cannot be read: {e}"))?;
            if stored != held {
                return Err(format!(
                    "the state file holds snapshot {stored}, not {held}, the one served"
                ));
            }
            let base = delta::Base::of(&payload, kept)?;
            let rebuild = base.rebuild(&delta)?;
            let checked = rebuild.check()?;
            let delta::Rebuild {
                snapshot, index, ..
            } = rebuild;
            let changes = base.changes(&delta.parts, limit);
            Ok(Rebuilt {
                received: snapshot,
                checked,
                delta: DeltaChanges {
                    base_version: held,
                    changes,
                },
                index,
            })
        })
        .await
        .map_err(|e| format!("rebuilding the delta failed: {e}"))?
    }

    /// [`Runtime::apply`] for a snapshot as its chunks delivered it: verified and built on the
    /// build thread (the request path never waits for the hash or the decode), and persisted as
    /// received instead of being encoded again. When the snapshot being served differs from this
    /// one only in a few routers and services, just those are decoded and the table is patched
    /// ([`Table::patch`]); otherwise the whole snapshot is decoded and built.
    pub async fn apply_received(&self, received: Reassembled) -> Result<(), String> {
        self.apply_encoded(received, None, Source::Controller).await
    }

    /// [`Runtime::apply_received`] for a snapshot rebuilt from a delta, already verified.
    pub async fn apply_rebuilt(&self, rebuilt: Rebuilt) -> Result<(), String> {
        let Rebuilt {
            received,
            checked,
            delta,
            index,
        } = rebuilt;
        let version = received.version.clone();
        self.apply_encoded(received, Some((checked, delta)), Source::Controller)
            .await?;
        *self.base_index.lock().unwrap_or_else(|p| p.into_inner()) = Some((version, index));
        Ok(())
    }

    /// The index kept for the next delta, if any, taken: an apply replaces it.
    fn take_base_index(&self) -> Option<(String, delta::Index)> {
        self.base_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The apply of an encoded snapshot, from the controller (persisted as received) or from the
    /// state dir at boot.
    async fn apply_encoded(
        &self,
        received: Reassembled,
        verified: Option<(chunk::Checked, DeltaChanges)>,
        source: Source,
    ) -> Result<(), String> {
        let Reassembled { version, bytes } = received;
        let bytes = Arc::new(bytes);
        let encoded = (source == Source::Controller).then(|| Arc::clone(&bytes));
        let store = self.store.clone();
        let decoder = self.decoder.clone();
        self.apply_with(encoded, source, move |previous| {
            let (checked, delta) = match verified {
                Some((checked, delta)) => (checked, Some(delta)),
                None => (chunk::check(&version, &bytes)?, None),
            };
            let content = bytes.get(checked.content.clone()).unwrap_or_default();
            let patched = patch(&store, previous, &checked, content, delta);
            if let Some((table, changes)) = patched {
                let changed = changes
                    .routers_added
                    .len()
                    .max(changes.routers_removed.len())
                    + changes
                        .services_added
                        .len()
                        .max(changes.services_removed.len());
                return Ok(Built {
                    table,
                    garbage: Box::new(changes),
                    decoded: None,
                    patched: Some(changed),
                });
            }
            let snapshot = decoder
                .decode(bytes, checked.content.clone())?
                .map_err(|e| format!("snapshot {version}: {e}"))?;
            // A snapshot the build refuses is freed here, on the build thread (rare: a NACK).
            let (table, input) = Table::from_snapshot(
                checked.version,
                checked.generation,
                snapshot,
                Some(previous),
            )
            .map_err(|e| e.to_string())?;
            Ok(Built::decoded(table, input))
        })
        .await
    }

    /// The apply sequence around `build` (which runs on the build thread, given the table being
    /// served). `encoded`: the snapshot's encoding to persist (controller snapshots only).
    async fn apply_with(
        &self,
        encoded: Option<Arc<Vec<u8>>>,
        source: Source,
        build: impl FnOnce(&Table) -> Result<Built, String> + Send + 'static,
    ) -> Result<(), String> {
        let started = std::time::Instant::now();
        let mut listeners = self.listeners.lock().await;
        // Whatever this apply serves, the index kept is not its own (a delta's apply keeps the
        // new one once served).
        drop(self.take_base_index());
        let previous = self.table.load_full();
        // The new generation is written and synced to the state dir while the table builds (the
        // build is CPU, the sync mostly waiting on the disk); it becomes current only once the
        // table is built and the listeners prepared, before the swap and the ACK.
        let staging = encoded.map(|encoded| {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.stage_encoded(&encoded))
        });
        let built = self.builder.run(move || build(&previous)).await;
        let built_ms = started.elapsed().as_millis();
        // Always waited for, so no staging outlives this apply.
        let staged = match staging {
            Some(task) => Some(match task.await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }),
            None => None,
        };
        // The decoded snapshot is freed with the replaced table, after the swap.
        let Built {
            table,
            garbage: input,
            decoded,
            patched,
        } = built??;
        let prepared = match self.desired(&table) {
            Ok(desired) => listeners.prepare(&desired).await,
            Err(e) => Err(e),
        };
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                // NACKed: the unused table is freed where it was built, like a replaced one.
                self.builder.retire((table, input));
                if let Some(decoded) = decoded {
                    self.decoder.free(decoded);
                }
                return Err(e);
            }
        };
        if let Some(staged) = staged {
            let store = self.store.clone();
            let saved = match staged {
                Ok(()) => tokio::task::spawn_blocking(move || store.commit_staged())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string())),
                Err(e) => Err(e),
            };
            match saved {
                Ok(()) => self.with_status(|s| s.state_error.clear()),
                Err(e) => {
                    tracing::error!(error = %e, "cannot persist snapshot; serving it anyway");
                    let message = format!("cannot persist snapshot: {e}");
                    self.with_status(|s| {
                        s.last_error.clone_from(&message);
                        s.state_error = message;
                    });
                }
            }
        }
        let version = table.version.clone();
        let routers = table.router_count;
        let replaced = self.table.swap(Arc::new(table));
        // The replaced table (often the last reference) is freed on the build thread, not here
        // where requests are served; see `BuildThread::retire`.
        self.builder.retire((replaced, input));
        if let Some(decoded) = decoded {
            self.decoder.free(decoded);
        }
        listeners.commit(prepared);
        self.with_status(|s| {
            s.source = source;
            s.applied_at_unix_ms = now_unix_ms();
        });
        tracing::info!(
            %version,
            routers,
            source = source.as_str(),
            patched = patched.is_some(),
            changed = patched.unwrap_or(routers),
            built_ms,
            elapsed_ms = started.elapsed().as_millis(),
            "snapshot applied"
        );
        Ok(())
    }

    /// Loads the newest valid persisted snapshot (boot). Corrupt generations are reported and
    /// skipped, never served.
    pub async fn load_from_disk(&self) {
        let mut errors = Vec::new();
        for candidate in self.store.load_each() {
            // A file that cannot be read, fails its checksum or announces no version.
            let stored = candidate.and_then(|stored| Ok((stored.version()?, stored.payload)));
            let (version, bytes) = match stored {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::error!(error = %e, "skipping state file");
                    errors.push(e.to_string());
                    continue;
                }
            };
            let received = Reassembled {
                version: version.clone(),
                bytes,
            };
            match self.apply_encoded(received, None, Source::Disk).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(%version, error = %e, "persisted snapshot cannot be applied");
                    errors.push(format!("persisted snapshot {version}: {e}"));
                }
            }
        }
        if !errors.is_empty() {
            let message = errors.join("; ");
            self.with_status(|s| {
                s.last_error.clone_from(&message);
                s.state_error = message;
            });
        }
    }

    pub async fn listening(&self) -> Vec<String> {
        self.listeners.lock().await.describe()
    }

    pub async fn stop_listeners(&self) {
        self.listeners.lock().await.stop_all();
    }
}
