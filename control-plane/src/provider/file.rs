//! The file provider (`providers.file`): one file or a directory of YAML/TOML files (recursively,
//! in path order, first definition wins as in Traefik), watched with inotify and debounced. Any
//! read or parse error rejects the whole new file configuration with `path:line:column: reason`;
//! the previous one stays in service.
//!
//! Reloads re-read every file but re-parse only those whose content changed (a per-file cache
//! keyed by content digest), and send nothing when no file changed: a one-line change next to a
//! 50 000-router file costs a read and a digest of the big file, not its YAML parse.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use super::{Provider, ProviderSink, ProviderTask};
use crate::{
    compile::Diagnostic,
    config::FileProviderConfig,
    dynamic::{DynamicConfig, HttpConfig},
};

/// Quiet period after the last file-system event before re-reading (editors write in bursts).
const FS_DEBOUNCE: Duration = Duration::from_millis(30);

/// Where the file provider reads from.
#[derive(Clone, Debug)]
pub enum Source {
    Directory(PathBuf),
    File(PathBuf),
}

/// The file provider.
#[derive(Debug)]
pub struct FileProvider {
    source: Source,
    watch: bool,
}

impl FileProvider {
    pub fn new(config: &FileProviderConfig) -> Self {
        let source = match (&config.directory, &config.filename) {
            (Some(dir), _) => Source::Directory(dir.clone()),
            (None, Some(file)) => Source::File(file.clone()),
            // Static validation requires one of them; an empty directory path reads nothing.
            (None, None) => Source::Directory(PathBuf::new()),
        };
        Self {
            source,
            watch: config.watch,
        }
    }
}

impl Provider for FileProvider {
    fn name(&self) -> &'static str {
        "file"
    }

    fn run(self: Box<Self>, sink: ProviderSink, shutdown: watch::Receiver<bool>) -> ProviderTask {
        Box::pin(run(*self, sink, shutdown))
    }
}

async fn run(provider: FileProvider, sink: ProviderSink, mut shutdown: watch::Receiver<bool>) {
    let (fs_tx, mut fs_rx) = mpsc::channel::<()>(16);
    // Keep the watcher alive for the life of the task.
    let _watcher = if provider.watch {
        match start_watcher(&provider.source, fs_tx) {
            Ok(w) => Some(w),
            Err(e) => {
                sink.error(format!(
                    "cannot watch {}: {e}",
                    source_path(&provider.source).display()
                ))
                .await;
                None
            }
        }
    } else {
        None
    };
    let mut cache = Some(ParseCache::default());
    reload(&provider.source, &sink, &mut cache).await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            event = fs_rx.recv() => {
                if event.is_none() {
                    // The watcher is gone; nothing more will change.
                    let _ = shutdown.changed().await;
                    return;
                }
                // Debounce: swallow the burst, then read once.
                while let Ok(Some(())) = tokio::time::timeout(FS_DEBOUNCE, fs_rx.recv()).await {}
                reload(&provider.source, &sink, &mut cache).await;
            }
        }
    }
}

fn source_path(source: &Source) -> &Path {
    match source {
        Source::Directory(p) | Source::File(p) => p,
    }
}

fn start_watcher(
    source: &Source,
    tx: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.as_ref().is_ok_and(changes_content) {
            // A full channel already holds a pending reload; dropping the event is fine.
            let _ = tx.try_send(());
        }
    })?;
    match source {
        Source::Directory(dir) => watcher.watch(dir, RecursiveMode::Recursive)?,
        // Watch the parent: editors and config-map mounts replace files by rename.
        Source::File(file) => {
            let parent = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            watcher.watch(parent, RecursiveMode::NonRecursive)?;
        }
    }
    Ok(watcher)
}

/// Whether an event can change what the files say. inotify also reports opens and reads
/// (`Access`), our own reads included: reloading on those would re-read the files forever.
fn changes_content(event: &notify::Event) -> bool {
    !matches!(event.kind, notify::EventKind::Access(_))
}

async fn reload(source: &Source, sink: &ProviderSink, cache: &mut Option<ParseCache>) {
    let source = source.clone();
    // The cache travels into the blocking task and back (a panic there loses it: start afresh).
    let mut owned = cache.take().unwrap_or_default();
    let loaded = tokio::task::spawn_blocking(move || {
        let result = owned.load(&source);
        (owned, result)
    })
    .await;
    match loaded {
        Ok((owned, result)) => {
            *cache = Some(owned);
            match result {
                Ok(None) => {}
                Ok(Some((config, warnings))) => {
                    tracing::info!(
                        routers = config.http.as_ref().map_or(0, |h| h.routers.len()),
                        "file provider configuration loaded"
                    );
                    sink.update(config, warnings).await;
                }
                Err(error) => {
                    sink.error(error).await;
                }
            }
        }
        Err(join) => {
            sink.error(format!("file provider reload failed: {join}"))
                .await;
        }
    }
}

/// Reads the whole source. Any error rejects everything (Traefik semantics).
pub fn load(source: &Source) -> Result<(DynamicConfig, Vec<Diagnostic>), String> {
    ParseCache::default()
        .load(source)
        .map(|loaded| loaded.unwrap_or_default())
}

/// Parsed files by path, with the digest of the text they were parsed from.
#[derive(Debug, Default)]
struct ParseCache {
    files: HashMap<PathBuf, CachedFile>,
    /// Whether the last `load` succeeded: after a failure the next good read must be sent even if
    /// it equals the configuration before the failure (the provider was reported unhealthy).
    last_ok: bool,
}

/// A file's path and what it says.
type ParsedFile = (PathBuf, Arc<DynamicConfig>);

#[derive(Debug)]
struct CachedFile {
    digest: [u8; 32],
    config: Arc<DynamicConfig>,
}

impl ParseCache {
    /// Reads every file of `source`, parsing only those whose text changed. `Ok(None)`: the same
    /// files with the same content as the last successful load, nothing to send.
    fn load(
        &mut self,
        source: &Source,
    ) -> Result<Option<(DynamicConfig, Vec<Diagnostic>)>, String> {
        let read = self.read(source);
        let was_ok = std::mem::replace(&mut self.last_ok, read.is_ok());
        let (changed, parsed) = read?;
        if !changed && was_ok {
            return Ok(None);
        }
        Ok(Some(merge(parsed)))
    }

    /// Every file's configuration in path order, and whether any file was added, removed or
    /// changed since the last read.
    fn read(&mut self, source: &Source) -> Result<(bool, Vec<ParsedFile>), String> {
        let files = match source {
            Source::File(path) => vec![path.clone()],
            Source::Directory(dir) => {
                let mut files = Vec::new();
                collect_files(dir, &mut files)?;
                files.sort();
                files
            }
        };
        let mut changed = false;
        let mut parsed = Vec::with_capacity(files.len());
        for path in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
            let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
            let config = match self.files.get(&path) {
                Some(cached) if cached.digest == digest => Arc::clone(&cached.config),
                _ => {
                    changed = true;
                    let config = Arc::new(parse_file(&path, &text)?);
                    self.files.insert(
                        path.clone(),
                        CachedFile {
                            digest,
                            config: Arc::clone(&config),
                        },
                    );
                    config
                }
            };
            parsed.push((path, config));
        }
        if self.files.len() != parsed.len() {
            // Forget removed files (`parsed` is sorted by path).
            self.files
                .retain(|path, _| parsed.binary_search_by(|(p, _)| p.cmp(path)).is_ok());
            changed = true;
        }
        Ok((changed, parsed))
    }
}

/// Merges files in path order; the first definition of a name wins, later ones are warnings.
fn merge(parsed: Vec<ParsedFile>) -> (DynamicConfig, Vec<Diagnostic>) {
    let mut merged = DynamicConfig {
        http: Some(HttpConfig::default()),
        ..Default::default()
    };
    let mut warnings = Vec::new();
    for (path, config) in parsed {
        // The cache keeps its copy; the merge takes one (far cheaper than a re-parse).
        let config = Arc::unwrap_or_clone(config);
        for skipped in merged.merge_first_wins(config) {
            warnings.push(Diagnostic::warning(
                "file",
                format!("file/{}", path.display()),
                format!("{skipped} is already defined in an earlier file; skipping this one"),
            ));
        }
    }
    (merged, warnings)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: cannot read directory: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            // Editors' swap files and Kubernetes' `..data` links.
            continue;
        }
        if file_type.is_dir() {
            collect_files(&path, out)?;
        } else if is_config_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_config_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yml" | "yaml" | "toml")
    )
}

/// Parses one file; errors read `path:line:column: reason`.
pub fn parse_file(path: &Path, text: &str) -> Result<DynamicConfig, String> {
    if text.trim().is_empty() {
        return Ok(DynamicConfig::default());
    }
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    if is_toml {
        toml::from_str::<DynamicConfig>(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            format!("{}:{line}:{col}: {}", path.display(), e.message())
        })
    } else {
        serde_yaml::from_str::<Option<DynamicConfig>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| match e.location() {
                Some(loc) => format!(
                    "{}:{}:{}: {}",
                    path.display(),
                    loc.line(),
                    loc.column(),
                    strip_location(&e.to_string())
                ),
                None => format!("{}: {e}", path.display()),
            })
    }
}

/// serde_yaml appends " at line X column Y" to its messages; we print the location up front.
fn strip_location(message: &str) -> &str {
    message.find(" at line ").map_or(message, |i| &message[..i])
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading the watched files (as every reload does) must not count as a change: with inotify
    /// reporting opens, that fed back into an endless re-read (a core busy at 50 000 routers).
    #[tokio::test]
    async fn reading_the_watched_files_is_not_a_change_but_writing_is() {
        let dir = std::env::temp_dir().join(format!("sy-file-watch-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.yml");
        std::fs::write(&file, "http: {}\n").unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let _watcher = start_watcher(&Source::Directory(dir.clone()), tx).unwrap();

        for _ in 0..5 {
            std::fs::read_to_string(&file).unwrap();
        }
        let spurious = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
        assert!(spurious.is_err(), "a read was reported as a change");

        std::fs::write(&file, "http:\n  routers: {}\n").unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
        assert!(matches!(seen, Ok(Some(()))), "a write was not reported");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn yaml_error_names_file_and_line() {
        let text = "http:\n  routers:\n    a:\n      rule: [unclosed\n";
        let err = parse_file(Path::new("/d/bad.yml"), text).unwrap_err();
        assert!(err.starts_with("/d/bad.yml:"), "{err}");
        let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
        assert!((4..=5).contains(&line), "{err}");
    }

    #[test]
    fn toml_error_names_file_and_line() {
        let text = "[http.routers.a]\nrule = \n";
        let err = parse_file(Path::new("/d/bad.toml"), text).unwrap_err();
        assert!(err.starts_with("/d/bad.toml:2:"), "{err}");
    }

    #[test]
    fn directory_is_read_recursively_in_order_first_wins() {
        let dir = std::env::temp_dir().join(format!("sy-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(
            dir.join("a.yml"),
            "http:\n  routers:\n    r:\n      rule: Path(`/a`)\n      service: s\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("sub/b.toml"),
            "[http.routers.r]\nrule = \"Path(`/b`)\"\nservice = \"s\"\n[http.routers.q]\nrule = \"Path(`/q`)\"\nservice = \"s\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("ignored.txt"), "garbage: [").unwrap();
        std::fs::write(dir.join(".hidden.yml"), "garbage: [").unwrap();
        let (config, warnings) = load(&Source::Directory(dir.clone())).unwrap();
        let http = config.http.unwrap();
        assert_eq!(http.routers["r"].rule, "Path(`/a`)");
        assert!(http.routers.contains_key("q"));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].message.contains("router r"));
        std::fs::write(dir.join("c.yml"), "http: [").unwrap();
        let err = load(&Source::Directory(dir.clone())).unwrap_err();
        assert!(err.contains("c.yml:1:"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Only changed files are parsed again; an unchanged directory sends nothing; removed files
    /// are forgotten; after a failed read the next good one is sent even if it is unchanged.
    #[test]
    fn reloads_parse_only_changed_files() {
        let dir = std::env::temp_dir().join(format!("sy-file-cache-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let router = |name: &str| {
            format!(
                "http:\n  routers:\n    {name}:\n      rule: Path(`/{name}`)\n      service: s\n"
            )
        };
        std::fs::write(dir.join("a.yml"), router("a")).unwrap();
        std::fs::write(dir.join("b.yml"), router("b")).unwrap();
        let source = Source::Directory(dir.clone());
        let mut cache = ParseCache::default();
        let names = |loaded: Option<(DynamicConfig, Vec<Diagnostic>)>| -> Vec<String> {
            let (config, _) = loaded.expect("a configuration to send");
            config.http.unwrap().routers.into_keys().collect()
        };

        assert_eq!(names(cache.load(&source).unwrap()), ["a", "b"]);
        let parsed_a = Arc::clone(&cache.files[&dir.join("a.yml")].config);
        assert!(cache.load(&source).unwrap().is_none(), "nothing changed");

        std::fs::write(dir.join("b.yml"), router("b2")).unwrap();
        assert_eq!(names(cache.load(&source).unwrap()), ["a", "b2"]);
        assert!(
            Arc::ptr_eq(&parsed_a, &cache.files[&dir.join("a.yml")].config),
            "the unchanged file was parsed again"
        );

        std::fs::remove_file(dir.join("b.yml")).unwrap();
        assert_eq!(names(cache.load(&source).unwrap()), ["a"]);
        assert_eq!(cache.files.len(), 1);

        std::fs::write(dir.join("c.yml"), "http: [").unwrap();
        assert!(cache.load(&source).unwrap_err().contains("c.yml:1:"));
        std::fs::remove_file(dir.join("c.yml")).unwrap();
        assert_eq!(
            names(cache.load(&source).unwrap()),
            ["a"],
            "the good configuration is sent again after an error"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn empty_file_is_an_empty_config() {
        let c = parse_file(Path::new("e.yml"), "\n# nothing\n").unwrap();
        assert!(c.http.is_none());
    }
}
