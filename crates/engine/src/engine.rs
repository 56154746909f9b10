//! The public face of the engine: [`Engine`] (one state directory),
//! [`SolveRequest`] in, [`SolveResult`] out, and [`EngineError`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xbuild_oci::store::StoreError;
use xbuild_oci::{BlobStore, Descriptor, Digest, ImageConfig, Platform};
use xbuild_plan::{BuildGraph, Location};

use crate::cache::{CacheError, CacheStore};
use crate::context::{ContextError, ContextIndex};
use crate::copy::CopyError;
use crate::copyfs::{CopyFsError, Snapshotter};
use crate::events::{EventSink, VertexId};
use crate::exec::ExecError;
use crate::image::ImageError;
use crate::mount::MountError;
use crate::secrets::Secrets;
use crate::snapshot::{cleanup_scratch, SnapshotError, Snapshots};
use crate::source::ImageSource;

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The state directory (`$XBUILD_ROOT`).
    pub root: PathBuf,
    /// The program that runs the sandbox init (calls `xbuild_sandbox::init_main`).
    pub init_program: PathBuf,
    /// Arguments that make `init_program` act as the init.
    pub init_args: Vec<String>,
    /// The worker name shown in progress (`local`, `qemu`, `node amd1`).
    pub worker: String,
    /// How snapshots are stacked for steps that change files; `None`:
    /// `XBUILD_SNAPSHOTTER` (`overlay`, `copy`, `auto`), else overlayfs when
    /// a probe mount works and the copy snapshotter when it does not.
    pub snapshotter: Option<Snapshotter>,
}

/// Errors of the engine. Step failures are wrapped in [`EngineError::Step`],
/// which names the Dockerfile location, the instruction and the platform.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A filesystem operation on the state directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The state directory cannot be used.
    #[error("state directory {path}: {reason}")]
    BadRoot {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Snapshot handling failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A mount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The copy snapshotter failed.
    #[error(transparent)]
    CopyFs(#[from] CopyFsError),
    /// The cache store failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The content store failed.
    #[error("content store: {0}")]
    Store(#[from] StoreError),
    /// Writing the image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Writing a layer failed.
    #[error("writing layer: {0}")]
    Layer(#[from] xbuild_oci::layer::WriteError),
    /// A RUN could not be set up or run.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// COPY/ADD failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// Reading the build context failed.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A RUN exited non-zero.
    #[error("process {command:?} did not complete successfully: exit code: {code}")]
    ProcessFailed {
        /// The command line, arguments joined by spaces.
        command: String,
        /// The exit status (128 + n for signal n).
        code: i32,
    },
    /// Binaries of the platform cannot run here.
    #[error(
        "cannot run {platform} binaries on this machine: no binfmt_misc handler (QEMU user \
         emulation) is registered for them; run `xbuild binfmt install {platform}`"
    )]
    Binfmt {
        /// The platform (`linux/arm64`).
        platform: String,
    },
    /// A step reads the build context, but the request has none.
    #[error("this step reads the build context, but the build has no context directory")]
    NoContext,
    /// A base image could not be pulled.
    #[error("{location}: {reference} ({platform}): {message}")]
    Pull {
        /// The FROM (or COPY --from) line.
        location: Location,
        /// The image reference.
        reference: String,
        /// The platform.
        platform: String,
        /// The source's message.
        message: String,
    },
    /// The graph is inconsistent (a stage refers to a later or missing stage).
    #[error("invalid build graph: {0}")]
    Graph(String),
    /// A worker task died.
    #[error("internal task failed: {0}")]
    Task(String),
    /// The build failed on another worker (a remote node); the message is
    /// the worker's.
    #[error("{message} (on {worker})")]
    Remote {
        /// The worker (`node amd1`).
        worker: String,
        /// Its error, formatted.
        message: String,
    },
    /// A step failed.
    #[error("[{platform}] {location}: {instruction}: {source}")]
    Step {
        /// The Dockerfile location.
        location: Location,
        /// The instruction text.
        instruction: String,
        /// The platform.
        platform: String,
        /// What went wrong.
        #[source]
        source: Box<EngineError>,
    },
}

impl EngineError {
    /// The innermost error (below [`EngineError::Step`]).
    pub fn root_cause(&self) -> &EngineError {
        match self {
            EngineError::Step { source, .. } => source.root_cause(),
            other => other,
        }
    }
}

/// Allocates vertex ids, shared by the solves of all platforms of one build.
#[derive(Debug, Default)]
pub struct VertexIds(AtomicU64);

impl VertexIds {
    /// An allocator starting at 1.
    pub fn new() -> Self {
        VertexIds(AtomicU64::new(0))
    }

    /// The next id.
    pub fn next_id(&self) -> VertexId {
        VertexId(self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// One platform's build.
pub struct SolveRequest<'a> {
    /// The graph to solve.
    pub graph: &'a BuildGraph,
    /// The build context directory, when there is one.
    pub context_dir: Option<&'a Path>,
    /// The context index (`.dockerignore` applied, checksums), when scanned.
    pub context: Option<&'a ContextIndex>,
    /// Where base images come from.
    pub source: &'a dyn ImageSource,
    /// Progress.
    pub events: &'a dyn EventSink,
    /// Vertex id allocator.
    pub ids: &'a VertexIds,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--no-cache-filter`: stage names not to look up.
    pub no_cache_filter: &'a [String],
    /// Secret values.
    pub secrets: &'a Secrets,
    /// `SOURCE_DATE_EPOCH`: clamps layer mtimes and config times.
    pub source_date_epoch: Option<i64>,
    /// Shared prefixes this build already solved once for several targets
    /// (the start of a build-platform stage that does not depend on the
    /// target): `(stage index, steps)` — the stage's FROM and its first
    /// `steps` steps are taken from the cache without progress events,
    /// without counting them, and regardless of `--no-cache` (the shared
    /// solve honoured it).
    pub presolved: &'a [(usize, usize)],
}

/// The outcome of a solve.
#[derive(Debug, Clone)]
pub struct SolveResult {
    /// The platform built.
    pub platform: Platform,
    /// The image manifest in the store (platform set).
    pub manifest: Descriptor,
    /// The image config.
    pub config: ImageConfig,
    /// Steps solved (every instruction after FROM, metadata-only ones
    /// included; FROM not counted): what the summary's STEPS column and
    /// the tty view's counters show.
    pub steps: usize,
    /// Of those, the steps that came from the cache.
    pub cached: usize,
    /// Wall-clock time of the solve.
    pub duration: Duration,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: EngineConfig,
    pub(crate) root: PathBuf,
    pub(crate) store: BlobStore,
    pub(crate) snapshots: Snapshots,
    pub(crate) cache: CacheStore,
    pub(crate) tmp: PathBuf,
    pub(crate) mounts: PathBuf,
    pub(crate) cache_mounts: PathBuf,
    /// How snapshots are stacked (chosen once, at open).
    pub(crate) snapshotter: Snapshotter,
    /// Serializes base image pulls of this engine.
    pub(crate) pull_lock: tokio::sync::Mutex<()>,
    /// Held while the engine lives: `xbuild cache prune` waits for it.
    _build_lock: crate::housekeeping::BuildLock,
}

/// The build engine over one state directory. Cheap to clone; any number
/// of engines (in one or several processes) may share a root.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

fn mkdir(p: &Path) -> Result<(), EngineError> {
    fs::create_dir_all(p).map_err(|source| EngineError::Io {
        op: "create directory",
        path: p.to_path_buf(),
        source,
    })
}

impl Engine {
    /// Opens (creating) the state directory: `content/` (blob store),
    /// `snapshots/`, `cache/`, `cachemounts/`, `mounts/`, `tmp/`. Leftovers
    /// of killed processes (scratch directories, mounts) are removed.
    pub fn open(cfg: EngineConfig) -> Result<Engine, EngineError> {
        if !cfg.root.is_dir() {
            // Private to its owner: it holds contexts, layers and records.
            use std::os::unix::fs::DirBuilderExt;
            if let Some(parent) = cfg.root.parent() {
                mkdir(parent)?;
            }
            match fs::DirBuilder::new().mode(0o700).create(&cfg.root) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(EngineError::Io {
                        op: "create directory",
                        path: cfg.root.clone(),
                        source,
                    })
                }
            }
        }
        let root = fs::canonicalize(&cfg.root).map_err(|source| EngineError::Io {
            op: "resolve",
            path: cfg.root.clone(),
            source,
        })?;
        let s = root.to_string_lossy();
        if s.contains(',') || s.contains(':') {
            return Err(EngineError::BadRoot {
                path: root.clone(),
                reason: "the path must not contain ',' or ':' (overlayfs options)".into(),
            });
        }
        let build_lock = crate::housekeeping::lock_shared(&root).map_err(|e| EngineError::Io {
            op: "lock",
            path: root.join("build.lock"),
            source: std::io::Error::other(e.to_string()),
        })?;
        let tmp = root.join("tmp");
        let mounts = root.join("mounts");
        let cache_mounts = root.join("cachemounts");
        for d in [&tmp, &mounts, &cache_mounts] {
            mkdir(d)?;
        }
        cleanup_scratch(&mounts)?;
        cleanup_scratch(&tmp)?;
        let snapshotter = Snapshotter::choose(cfg.snapshotter, &mounts)?;
        let store = BlobStore::open(root.join("content"))?;
        let snapshots = Snapshots::open(&root.join("snapshots"), &tmp)?;
        let cache = CacheStore::open(&root.join("cache"))?;
        Ok(Engine {
            inner: Arc::new(Inner {
                cfg,
                root,
                store,
                snapshots,
                cache,
                tmp,
                mounts,
                cache_mounts,
                snapshotter,
                pull_lock: tokio::sync::Mutex::new(()),
                _build_lock: build_lock,
            }),
        })
    }

    /// The content store.
    pub fn store(&self) -> &BlobStore {
        &self.inner.store
    }

    /// The build cache records.
    pub fn cache(&self) -> &CacheStore {
        &self.inner.cache
    }

    /// The state directory (canonical).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// How this engine stacks snapshots (overlayfs, or copies where it cannot).
    pub fn snapshotter(&self) -> Snapshotter {
        self.inner.snapshotter
    }

    /// The worker name given at open.
    pub fn worker(&self) -> &str {
        &self.inner.cfg.worker
    }

    /// Layer blobs referenced by cache records (roots for garbage collection).
    pub fn cache_roots(&self) -> Result<Vec<Digest>, EngineError> {
        Ok(self.inner.cache.roots()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync>() {}

    /// The coordinator spawns solves as tokio tasks: the future must be `Send`.
    #[allow(dead_code)]
    fn solve_future_is_send(e: &Engine, r: SolveRequest<'_>) {
        let f = e.solve(r);
        assert_send(&f);
    }

    #[test]
    fn engine_is_send_sync_and_ids_count_up() {
        assert_send_sync::<Engine>();
        let ids = VertexIds::new();
        assert_eq!(ids.next_id(), VertexId(1));
        assert_eq!(ids.next_id(), VertexId(2));
    }

    #[test]
    fn open_creates_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(EngineConfig {
            root: dir.path().join("root"),
            init_program: PathBuf::from("/nonexistent"),
            init_args: Vec::new(),
            worker: "local".into(),
            snapshotter: Some(Snapshotter::Copy),
        })
        .unwrap();
        for d in [
            "content",
            "snapshots",
            "cache",
            "mounts",
            "tmp",
            "cachemounts",
        ] {
            assert!(e.root().join(d).is_dir(), "{d}");
        }
        assert!(e.cache_roots().unwrap().is_empty());
        let bad = Engine::open(EngineConfig {
            root: dir.path().join("a,b"),
            init_program: PathBuf::from("/nonexistent"),
            init_args: Vec::new(),
            worker: "local".into(),
            snapshotter: Some(Snapshotter::Copy),
        });
        assert!(matches!(bad, Err(EngineError::BadRoot { .. })));
    }
}
