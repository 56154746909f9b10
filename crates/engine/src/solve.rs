//! Solving one platform's graph: stages run concurrently as their
//! dependencies finish; inside a stage, steps run in order, each keyed,
//! looked up in the cache, and on a miss executed on a blocking thread over
//! an overlay of the stage's snapshots.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use xbuild_oci::digest::Algorithm;
use xbuild_oci::layer::{write_layer, SourceMode, WriteOptions};
use xbuild_oci::{Descriptor, Digest, Platform};
use xbuild_plan::{Base, ConfigOp, CopyOp, ExecOp, FileSource, ImageRef, Op, Step};
use xbuild_sandbox::binfmt::{self, Support};
use xbuild_sandbox::{InitError, OutputStream, SandboxError};

use crate::cache::{platform_dir_name, CacheRecord};
use crate::context::ContextIndex;
use crate::copy::{self, AddOptions, CopyRequest};
use crate::copyfs::{self, Snapshotter};
use crate::engine::{Engine, EngineError, Inner, SolveRequest, SolveResult};
use crate::events::{reasons_text, Event, EventSink, LogStream, MissReason, VertexId};
use crate::exec::{self, ExecEnv, ExecError, ExecPlan, MountSource, Setup};
use crate::image::{timestamp, ImageBuilder};
use crate::keys::StepKey;
use crate::mount::mount_overlay;
use crate::redact::Redactor;
use crate::snapshot::{Scratch, SnapshotError};
use crate::source::PulledImage;
use xbuild_dockerfile::instructions::MountType;

/// One layer of a filesystem being built: an extracted snapshot, or a
/// layer known by its blob and diffID and extracted only when a later step
/// needs the files (a fully cached build extracts nothing, and a remote
/// agent fetches no layer it does not read).
#[derive(Debug, Clone)]
pub(crate) enum ChainLayer {
    /// Extracted.
    Ready(PathBuf),
    /// Not extracted yet.
    Pending {
        /// The layer blob.
        layer: Box<Descriptor>,
        /// Its diffID (the snapshot's name).
        diff_id: Digest,
    },
}

/// A finished stage: its layers (bottom first), image state and final key.
#[derive(Debug, Clone)]
pub(crate) struct StageOut {
    chain: Vec<ChainLayer>,
    builder: ImageBuilder,
    key: Digest,
    /// A step ran although its key had a record (`--no-cache`,
    /// `--no-cache-filter`, or a forced base stage): a stage built FROM this
    /// one runs again too (its keys follow this stage's keys, not its files).
    forced: bool,
    steps: usize,
    cached: usize,
}

/// A pulled image and its layers, bottom first.
type ImageLayers = (Arc<PulledImage>, Vec<ChainLayer>);

/// What one solve shares between its stages.
pub(crate) struct Shared<'r, 'a> {
    pub(crate) req: &'r SolveRequest<'a>,
    pub(crate) platform: Platform,
    pub(crate) index: Option<Arc<ContextIndex>>,
    pub(crate) context_dir: Option<PathBuf>,
    pub(crate) pulled: tokio::sync::Mutex<HashMap<String, ImageLayers>>,
    /// Cache-mount ids already emptied by this solve (`--no-cache`).
    pub(crate) fresh_caches: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl<'r, 'a> Shared<'r, 'a> {
    pub(crate) fn new(req: &'r SolveRequest<'a>) -> Self {
        Shared {
            req,
            platform: req.graph.platform.clone(),
            index: req.context.map(|c| Arc::new(c.clone())),
            context_dir: req.context_dir.map(Path::to_path_buf),
            pulled: tokio::sync::Mutex::new(HashMap::new()),
            fresh_caches: Default::default(),
        }
    }
}

type LogTx = tokio::sync::mpsc::UnboundedSender<(OutputStream, Vec<u8>)>;

/// Runs `f` on a blocking thread, forwarding the log chunks it sends as
/// [`Event::Log`] of `vid`.
async fn blocking<T, F>(
    events: &dyn EventSink,
    vid: VertexId,
    started: Instant,
    f: F,
) -> Result<T, EngineError>
where
    T: Send + 'static,
    F: FnOnce(LogTx) -> Result<T, EngineError> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(OutputStream, Vec<u8>)>();
    let mut handle = tokio::task::spawn_blocking(move || f(tx));
    let emit = |(s, data): (OutputStream, Vec<u8>)| {
        events.emit(Event::Log {
            id: vid,
            stream: match s {
                OutputStream::Stdout => LogStream::Stdout,
                OutputStream::Stderr => LogStream::Stderr,
            },
            elapsed: started.elapsed(),
            data,
        })
    };
    loop {
        tokio::select! {
            Some(chunk) = rx.recv() => emit(chunk),
            r = &mut handle => {
                while let Ok(chunk) = rx.try_recv() {
                    emit(chunk);
                }
                return r.map_err(|e| EngineError::Task(e.to_string()))?;
            }
        }
    }
}

/// What a step reads from a stage: (stage, map key, sources, exclude,
/// parents).
type StageRead = (usize, String, Vec<String>, Vec<String>, bool);

/// A layer made by a step.
type NewLayer = (Descriptor, Digest, PathBuf);

/// Mounts a writable overlay over `chain`, lets `work` change the merged
/// tree, then turns the upper directory into a layer and a snapshot.
/// `work` returns mount points to drop from the diff. `None`: nothing changed.
/// `keep_empty`: a step that changed nothing still gets a layer (an empty
/// tar), as BuildKit gives RUN, COPY and ADD (testExportedHistory: `RUN ls`
/// has a layer and `empty_layer` false).
fn fs_step(
    inner: &Inner,
    chain: &[PathBuf],
    (sde, keep_empty): (Option<i64>, bool),
    work: impl FnOnce(&Path) -> Result<Vec<PathBuf>, EngineError>,
) -> Result<Option<NewLayer>, EngineError> {
    let scratch = inner.snapshots.scratch()?;
    let upper = scratch.path().join("fs");
    let created = if inner.snapshotter == Snapshotter::Copy {
        copyfs::run_step(&inner.tmp, chain, &upper, work)?
    } else {
        let workdir = scratch.path().join("work");
        let mp = Scratch::new(&inner.mounts)?;
        let target = mp.subdir("m")?;
        let mut lowers: Vec<PathBuf> = chain.iter().rev().cloned().collect();
        lowers.push(inner.snapshots.empty());
        let guard = mount_overlay(&lowers, Some((&upper, &workdir)), &target)?;
        let created = work(&target)?;
        guard.unmount()?;
        drop(mp);
        created
    };
    prune_created(&upper, chain, &created);
    let empty = fs::read_dir(&upper)
        .map_err(|source| EngineError::Io {
            op: "read directory",
            path: upper.clone(),
            source,
        })?
        .next()
        .is_none();
    if empty && !keep_empty {
        return Ok(None);
    }
    let opts = WriteOptions {
        mode: SourceMode::OverlayUpper,
        source_date_epoch: sde.map(|e| e.max(0) as u64),
        ..Default::default()
    };
    let mut w = inner.store.writer(Algorithm::Sha256)?;
    let (out, _) = write_layer(&upper, &mut w, &opts)?;
    let (digest, size) = w.commit(Some(&out.digest))?;
    let snap = inner.snapshots.commit(scratch, &out.diff_id)?;
    Ok(Some((
        Descriptor::new(out.media_type, digest, size),
        out.diff_id,
        snap,
    )))
}

/// Removes from `upper` the mount points the sandbox created, and parent
/// directories that were only copied up to hold them.
fn prune_created(upper: &Path, chain: &[PathBuf], created: &[PathBuf]) {
    let rel_of = |p: &Path| -> PathBuf {
        p.components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect()
    };
    for c in created.iter().rev() {
        let rel = rel_of(c);
        if rel.as_os_str().is_empty() {
            continue;
        }
        let p = upper.join(&rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                let _ = fs::remove_dir(&p);
            }
            Ok(m) if m.is_file() && m.len() == 0 => {
                let _ = fs::remove_file(&p);
            }
            _ => {}
        }
        let mut cur = rel.parent();
        while let Some(par) = cur {
            if par.as_os_str().is_empty() {
                break;
            }
            let up = upper.join(par);
            let is_empty_dir = fs::read_dir(&up)
                .map(|mut r| r.next().is_none())
                .unwrap_or(false);
            let opaque = xattr_present(&up, "trusted.overlay.opaque");
            if !is_empty_dir || opaque || !lower_has_same_dir(&up, chain, par) {
                break;
            }
            let _ = fs::remove_dir(&up);
            cur = par.parent();
        }
    }
}

fn xattr_present(p: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(c), Ok(n)) = (
        std::ffi::CString::new(p.as_os_str().as_bytes()),
        std::ffi::CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: valid NUL-terminated strings; a NULL buffer asks for the size.
    unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// Whether the topmost lower layer that has `rel` has it as a directory
/// with the same mode and owner as `up`.
fn lower_has_same_dir(up: &Path, chain: &[PathBuf], rel: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(um) = fs::symlink_metadata(up) else {
        return false;
    };
    for snap in chain.iter().rev() {
        match fs::symlink_metadata(snap.join(rel)) {
            Ok(m) if m.is_dir() => {
                return m.mode() == um.mode() && m.uid() == um.uid() && m.gid() == um.gid()
            }
            Ok(_) => return false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => return false,
        }
    }
    false
}

/// ONBUILD leaves no history entry (BuildKit's dispatchOnbuild commits
/// none).
fn no_history(step: &Step) -> bool {
    matches!(step.op, Op::Config(ConfigOp::Onbuild(_)))
}

fn map_exec_err(e: ExecError, platform: &Platform) -> EngineError {
    if let ExecError::Sandbox(SandboxError::Setup(b)) = &e {
        if matches!(**b, InitError::ExecFormat { .. }) {
            return EngineError::Binfmt {
                platform: platform.to_string(),
            };
        }
    }
    EngineError::Exec(e)
}

/// Fails early when a stage with RUN steps targets a platform this machine
/// cannot execute.
pub fn check_platforms(graph: &xbuild_plan::BuildGraph) -> Result<(), EngineError> {
    check_platforms_except(graph, &[])
}

/// [`check_platforms`] for the stages not in `presolved` (those come from
/// the cache: a shared build-platform stage solved elsewhere runs nothing).
pub fn check_platforms_except(
    graph: &xbuild_plan::BuildGraph,
    presolved: &[(usize, usize)],
) -> Result<(), EngineError> {
    for (i, st) in graph.stages.iter().enumerate() {
        let skip = presolved
            .iter()
            .find(|(s, _)| *s == i)
            .map_or(0, |(_, k)| *k);
        let runs = st
            .steps
            .iter()
            .skip(skip)
            .any(|s| matches!(s.op, Op::Exec(_)));
        if runs && binfmt::can_run(st.platform.architecture()) == Support::Missing {
            return Err(EngineError::Binfmt {
                platform: st.platform.to_string(),
            });
        }
    }
    Ok(())
}

impl Engine {
    /// Solves one platform's graph and writes its image into the store.
    pub async fn solve(&self, req: SolveRequest<'_>) -> Result<SolveResult, EngineError> {
        let started = Instant::now();
        let g = req.graph;
        check_platforms_except(g, req.presolved)?;
        for (i, st) in g.stages.iter().enumerate() {
            if st.dependencies().iter().any(|d| *d >= i) {
                return Err(EngineError::Graph(format!(
                    "stage {} depends on a stage that comes after it",
                    st.display_name()
                )));
            }
        }
        if g.target >= g.stages.len() {
            return Err(EngineError::Graph("target stage out of range".into()));
        }
        let shared = Shared::new(&req);
        let mut results: Vec<Option<Arc<StageOut>>> = vec![None; g.stages.len()];
        let mut started_stages = vec![false; g.stages.len()];
        let mut running = FuturesUnordered::new();
        loop {
            for (i, st) in g.stages.iter().enumerate() {
                if started_stages[i] {
                    continue;
                }
                let deps = st.dependencies();
                if deps.iter().all(|d| results[*d].is_some()) {
                    started_stages[i] = true;
                    let dep_outs: HashMap<usize, Arc<StageOut>> = deps
                        .iter()
                        .map(|d| (*d, results[*d].clone().expect("dependency finished")))
                        .collect();
                    let shared = &shared;
                    running.push(async move { (i, self.solve_stage(shared, i, dep_outs).await) });
                }
            }
            match running.next().await {
                Some((i, r)) => results[i] = Some(Arc::new(r?)),
                None => break,
            }
        }
        let out = results[g.target]
            .clone()
            .ok_or_else(|| EngineError::Graph("target stage was not built".into()))?;
        let (steps, cached) = results
            .iter()
            .flatten()
            .fold((0, 0), |(s, c), o| (s + o.steps, c + o.cached));
        let store = self.inner.store.clone();
        let mut builder = out.builder.clone();
        if !g.labels.is_empty() {
            builder.apply_config(&xbuild_plan::ConfigOp::Label(
                g.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ));
        }
        let sde = req.source_date_epoch;
        // Layers the store lacks are fine when the source holds them (a
        // remote agent's cache hits, never fetched because nothing read them).
        let elsewhere: std::collections::HashSet<Digest> = builder
            .layers()
            .iter()
            .filter(|l| !store.exists(&l.digest) && req.source.can_fetch(l))
            .map(|l| l.digest.clone())
            .collect();
        let (manifest, config) = tokio::task::spawn_blocking(move || {
            builder.write_with(&store, sde, &|l| elsewhere.contains(&l.digest))
        })
        .await
        .map_err(|e| EngineError::Task(e.to_string()))??;
        Ok(SolveResult {
            platform: g.platform.clone(),
            manifest,
            config,
            steps,
            cached,
            duration: started.elapsed(),
        })
    }

    /// Pulls `r` (once per solve) and makes sure its layers have snapshots.
    pub(crate) async fn image_chain(
        &self,
        shared: &Shared<'_, '_>,
        r: &ImageRef,
        location: &xbuild_plan::Location,
    ) -> Result<ImageLayers, EngineError> {
        let id = format!("{}|{}|{:?}", r.reference, r.platform, r.digest);
        let mut pulled = shared.pulled.lock().await;
        if let Some(p) = pulled.get(&id) {
            return Ok(p.clone());
        }
        let pull_err = |message: String| EngineError::Pull {
            location: location.clone(),
            reference: r.reference.clone(),
            platform: r.platform.to_string(),
            message,
        };
        let pull = async {
            let _g = self.inner.pull_lock.lock().await;
            shared
                .req
                .source
                .pull(r, &self.inner.store, shared.req.events)
                .await
        };
        // A pull that takes long says what it waits for (a registry that
        // does not answer fails at its deadline; until then the user sees
        // why nothing moves).
        let img = {
            tokio::pin!(pull);
            let mut waited = 0u64;
            loop {
                let tick = std::time::Duration::from_secs(if waited == 0 { 5 } else { 30 });
                match tokio::time::timeout(tick, &mut pull).await {
                    Ok(res) => break res.map_err(pull_err)?,
                    Err(_) => {
                        waited += tick.as_secs();
                        shared.req.events.emit(Event::Warning {
                            message: format!(
                                "still pulling {} for {} after {waited}s: waiting for its registry",
                                r.reference, r.platform
                            ),
                        });
                    }
                }
            }
        };
        let diff_ids = img.config.rootfs.diff_ids.clone();
        if diff_ids.len() != img.image.layers.len() {
            return Err(pull_err(format!(
                "the config lists {} diffIDs for {} layers",
                diff_ids.len(),
                img.image.layers.len()
            )));
        }
        let chain = img
            .image
            .layers
            .iter()
            .zip(&diff_ids)
            .map(|(l, d)| ChainLayer::Pending {
                layer: Box::new(l.clone()),
                diff_id: d.clone(),
            })
            .collect();
        let v = (Arc::new(img), chain);
        pulled.insert(id, v.clone());
        Ok(v)
    }

    async fn solve_stage(
        &self,
        shared: &Shared<'_, '_>,
        idx: usize,
        deps: HashMap<usize, Arc<StageOut>>,
    ) -> Result<StageOut, EngineError> {
        let req = shared.req;
        let stage = &req.graph.stages[idx];
        let numbers = stage.numbers();
        let total = numbers.total;
        let platform = &shared.platform;
        // A stage this build already solved for several targets: taken from
        // the cache without showing it again (it was shown once, shared).
        let presolved = req.presolved.iter().find(|(s, _)| *s == idx).map(|p| p.1);
        let quiet = crate::events::NullSink;
        // Vertex at position `pos` (FROM is 1) of a presolved prefix shows nothing.
        let sink = |pos: usize| -> &dyn EventSink {
            match presolved {
                Some(k) if pos <= k + 1 => &quiet,
                _ => req.events,
            }
        };
        // `pos` is the vertex's position in the stage (FROM is 1); `index`
        // the number BuildKit shows for it, if any.
        let start_vertex = |pos: usize, index: Option<usize>, name: &str| {
            let id = req.ids.next_id();
            sink(pos).emit(Event::Started {
                id,
                platform: platform.clone(),
                stage: stage.display_name(),
                index: index.unwrap_or(0),
                total,
                name: name.to_string(),
                worker: self.inner.cfg.worker.clone(),
                shared_by: Vec::new(),
            });
            id
        };
        // FROM.
        let vid = start_vertex(1, numbers.from, &stage.from_text);
        let t0 = Instant::now();
        let dep_keys: HashMap<usize, Digest> =
            deps.iter().map(|(i, d)| (*i, d.key.clone())).collect();
        let dep_names: HashMap<usize, String> = deps
            .keys()
            .map(|i| (*i, req.graph.stages[*i].display_name()))
            .collect();
        let from = async {
            let (key, base) = self
                .stage_base_key(shared, stage, &dep_keys, &dep_names)
                .await?;
            let (chain, builder) = match &stage.base {
                Base::Scratch => (Vec::new(), ImageBuilder::scratch(platform)),
                Base::Image(r) => {
                    let (img, chain) = self.image_chain(shared, r, &stage.location).await?;
                    (
                        chain,
                        ImageBuilder::from_base(&img.image, &img.config, platform),
                    )
                }
                Base::Stage(i) => {
                    let d = &deps[i];
                    (d.chain.clone(), d.builder.for_child_stage())
                }
            };
            Ok::<_, EngineError>((chain, builder, key, base))
        };
        let (mut chain, mut builder, mut key, base) = match from.await {
            Ok(v) => v,
            Err(e) => {
                sink(1).emit(Event::Failed {
                    id: vid,
                    error: e.to_string(),
                });
                return Err(e);
            }
        };
        sink(1).emit(Event::Done {
            id: vid,
            duration: t0.elapsed(),
        });

        let filtered = req.no_cache
            || stage.name.as_deref().is_some_and(|n| {
                req.no_cache_filter
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(n))
            });
        // A base stage that was forced: every step here reads its files.
        let forced_base = match &stage.base {
            Base::Stage(i) => deps.get(i).filter(|d| d.forced).map(|_| *i),
            _ => None,
        };
        let forced_dep = |i: usize| -> MissReason {
            MissReason::SourceChanged {
                from: format!("stage {}", req.graph.stages[i].display_name()),
            }
        };
        let mut forced = false;
        let mut missed: Option<String> = None;
        let mut cached = 0;
        for (si, step) in stage.steps.iter().enumerate() {
            let vid = start_vertex(si + 2, numbers.steps[si], step.title());
            let shared_step = presolved.is_some_and(|k| si < k);
            let events = sink(si + 2);
            let t0 = Instant::now();
            let r = async {
                let sums = self.bind_sums(shared, step, &deps).await?;
                let sk = self
                    .step_key(
                        shared,
                        stage,
                        si + 2,
                        step,
                        &key,
                        base.as_ref(),
                        &dep_keys,
                        &dep_names,
                        &sums,
                    )
                    .await?;
                // A step keyed by the files it reads from a stage is also
                // found under the key of the stage's instructions (records
                // imported from a cache, made before the stage was rebuilt
                // here), unless that stage was forced to re-run: then only
                // its files decide. As BuildKit's two keys per step.
                let alt = if sums.is_empty() {
                    None
                } else {
                    let reads_forced = sums
                        .keys()
                        .any(|(i, _)| deps.get(i).is_some_and(|d| d.forced));
                    let ak = self
                        .step_key(
                            shared,
                            stage,
                            si + 2,
                            step,
                            &key,
                            base.as_ref(),
                            &dep_keys,
                            &dep_names,
                            &HashMap::new(),
                        )
                        .await?
                        .key;
                    Some((ak, !reads_forced))
                };
                let force = if shared_step {
                    // Solved once for several platforms, never forced here.
                    None
                } else if req.no_cache {
                    Some(MissReason::NoCache)
                } else if filtered {
                    Some(MissReason::NoCacheFilter {
                        stage: stage.display_name(),
                    })
                } else {
                    forced_base.map(forced_dep)
                };
                if force.is_some() {
                    forced = true;
                }
                self.solve_step(
                    shared,
                    step,
                    &deps,
                    (vid, t0, events),
                    (&mut chain, &mut builder, &mut key),
                    (sk, alt),
                    force,
                    &mut missed,
                )
                .await
            }
            .await;
            // A miss makes every later step rebuild; the next one names
            // this one, its direct parent, as the reason.
            if r.as_ref().is_ok_and(|hit| !hit) {
                missed = Some(crate::keys::step_label(stage, si + 2));
            }
            match r {
                Ok(hit) => {
                    if hit && !shared_step {
                        cached += 1;
                    }
                    events.emit(Event::Done {
                        id: vid,
                        duration: t0.elapsed(),
                    });
                }
                Err(e) => {
                    let e = EngineError::Step {
                        location: step.location.clone(),
                        instruction: step.text.clone(),
                        platform: platform.to_string(),
                        source: Box::new(e),
                    };
                    events.emit(Event::Failed {
                        id: vid,
                        error: e.to_string(),
                    });
                    return Err(e);
                }
            }
        }
        Ok(StageOut {
            chain,
            builder,
            key,
            forced,
            // Counted once, by the shared solve.
            steps: stage.steps.len() - presolved.unwrap_or(0).min(stage.steps.len()),
            cached,
        })
    }

    /// Content checksums of what `step` reads from stages (`COPY --from`,
    /// `RUN --mount=from=`), keyed by (stage, [`crate::keys::copy_sum_key`]
    /// or the mount's source path). BuildKit keys these reads by content:
    /// a stage re-run with the same files keeps them cached, with other
    /// files (a `--no-cache-filter` re-run) never reuses a stale result.
    async fn bind_sums(
        &self,
        shared: &Shared<'_, '_>,
        step: &Step,
        deps: &HashMap<usize, Arc<StageOut>>,
    ) -> Result<HashMap<(usize, String), Digest>, EngineError> {
        let mut out = HashMap::new();
        let mut wanted: Vec<StageRead> = Vec::new();
        match &step.op {
            Op::Exec(e) => {
                for m in &e.mounts {
                    if let (MountType::Bind, Some(FileSource::Stage(i))) = (&m.kind, &m.from) {
                        let src = m.source.clone().unwrap_or_else(|| ".".into());
                        wanted.push((*i, src.clone(), vec![src], Vec::new(), false));
                    }
                }
            }
            Op::Copy(c) => {
                if let FileSource::Stage(i) = c.from {
                    if !c.sources.is_empty() {
                        let k = crate::keys::copy_sum_key(c);
                        wanted.push((i, k, c.sources.clone(), c.exclude.clone(), c.parents));
                    }
                }
            }
            Op::Config(_) => {}
        }
        for (i, key, sources, exclude, parents) in wanted {
            let Some(dep) = deps.get(&i) else { continue };
            let layers = self.materialize(shared.req, &dep.chain).await?;
            let env = self.exec_env(&shared.platform);
            let sum =
                tokio::task::spawn_blocking(move || -> Result<Option<Digest>, EngineError> {
                    let mut setup = Setup::default();
                    let root = exec::overlay_view(&env, &layers, false, &mut setup)?;
                    let r = crate::context::checksum_dir(&root, &sources, &exclude, parents);
                    drop(setup);
                    match r {
                        Ok(sum) => Ok(Some(sum)),
                        // Missing: the step fails later with BuildKit's words.
                        Err(crate::context::ContextError::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e.into()),
                    }
                })
                .await
                .map_err(|e| EngineError::Task(e.to_string()))??;
            if let Some(sum) = sum {
                out.insert((i, key), sum);
            }
        }
        Ok(out)
    }

    async fn layers_of(
        &self,
        shared: &Shared<'_, '_>,
        from: &FileSource,
        deps: &HashMap<usize, Arc<StageOut>>,
        step: &Step,
    ) -> Result<MountSource, EngineError> {
        Ok(match from {
            FileSource::Context => {
                let dir = shared.context_dir.clone().ok_or(EngineError::NoContext)?;
                shared
                    .req
                    .source
                    .prepare_context()
                    .await
                    .map_err(|message| EngineError::Remote {
                        worker: self.inner.cfg.worker.clone(),
                        message: format!("getting the build context: {message}"),
                    })?;
                MountSource::Context(dir)
            }
            FileSource::Stage(i) => MountSource::Layers(
                self.materialize(
                    shared.req,
                    &deps
                        .get(i)
                        .ok_or_else(|| EngineError::Graph(format!("stage {i} not built")))?
                        .chain,
                )
                .await?,
            ),
            FileSource::Image(r) => {
                let chain = self.image_chain(shared, r, &step.location).await?.1;
                MountSource::Layers(self.materialize(shared.req, &chain).await?)
            }
        })
    }

    fn exec_env(&self, platform: &Platform) -> ExecEnv {
        let i = &self.inner;
        ExecEnv {
            init_program: i.cfg.init_program.clone(),
            init_args: i.cfg.init_args.clone(),
            cache_mounts: i.cache_mounts.join(platform_dir_name(platform)),
            mounts_dir: i.mounts.clone(),
            tmp_dir: i.tmp.clone(),
            empty: i.snapshots.empty(),
            snapshotter: i.snapshotter,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn solve_step(
        &self,
        shared: &Shared<'_, '_>,
        step: &Step,
        deps: &HashMap<usize, Arc<StageOut>>,
        (vid, t0, events): (VertexId, Instant, &dyn EventSink),
        (chain, builder, key): (&mut Vec<ChainLayer>, &mut ImageBuilder, &mut Digest),
        (sk, alt): (StepKey, Option<(Digest, bool)>),
        force: Option<MissReason>,
        missed: &mut Option<String>,
    ) -> Result<bool, EngineError> {
        let req = shared.req;
        // Records are filed under the platform that executes the step.
        let platform = &sk.platform.clone();
        let inner = &self.inner;
        let parent = key.clone();
        let new_key = sk.key.clone();

        let no_cache_step = matches!(
            force,
            Some(MissReason::NoCache | MissReason::NoCacheFilter { .. })
        );
        let record = if force.is_some() || missed.is_some() {
            None
        } else {
            match self.lookup(req, platform, &new_key).await {
                Some(rec) => Some((rec, new_key.clone())),
                None => match &alt {
                    Some((ak, true)) => self
                        .lookup(req, platform, ak)
                        .await
                        .map(|rec| (rec, ak.clone())),
                    _ => None,
                },
            }
        };
        if let Some((rec, hit_key)) = record {
            if let Op::Config(c) = &step.op {
                builder.apply_config(c);
            }
            match (rec.layer, rec.diff_id) {
                (Some(layer), Some(diff_id)) => {
                    chain.push(ChainLayer::Pending {
                        layer: Box::new(layer.clone()),
                        diff_id: diff_id.clone(),
                    });
                    builder.add_layer(layer, diff_id, &step.created_by, Some(rec.created));
                }
                _ if no_history(step) => {}
                _ => builder.add_empty_history(&step.created_by, Some(rec.created)),
            }
            events.emit(Event::Cached { id: vid });
            // The chain goes on from the instructions' key, so later steps
            // (and `--call explain`, cache export) find their records.
            *key = alt.map_or(hit_key, |(ak, _)| ak);
            return Ok(true);
        }

        let causes = if let Some(reason) = force {
            vec![reason]
        } else if let Some(step) = missed.clone() {
            vec![MissReason::ParentMissed { step }]
        } else {
            self.miss_causes(platform, &parent, &sk)
        };
        events.emit(Event::Miss {
            id: vid,
            reason: reasons_text(&causes),
            causes,
        });

        let sde = req.source_date_epoch;
        let layer: Option<NewLayer> = match &step.op {
            Op::Config(c) => {
                builder.apply_config(c);
                match c {
                    ConfigOp::Workdir(dir) => {
                        let user = builder.config().config.user.clone();
                        let chain2 = self.materialize(req, chain).await?;
                        let (inner2, dir) = (inner.clone(), dir.clone());
                        blocking(req.events, vid, t0, move |_tx| {
                            // BuildKit: WORKDIR other than "/" is a layer.
                            let keep = dir != "/";
                            fs_step(&inner2, &chain2, (sde, keep), |root| {
                                let (uid, gid) = if user.is_empty() {
                                    (0, 0)
                                } else {
                                    copy::resolve_chown(root, &user).unwrap_or((0, 0))
                                };
                                copy::mkdir_p(root, &dir, uid, gid)?;
                                Ok(Vec::new())
                            })
                        })
                        .await?
                    }
                    _ => None,
                }
            }
            Op::Exec(e) => {
                let fresh = req.no_cache || no_cache_step;
                self.run_exec(shared, e, deps, (step, platform), (vid, t0, fresh), chain)
                    .await?
            }
            Op::Copy(c) => {
                self.run_copy(shared, c, deps, (step, platform), vid, t0, chain)
                    .await?
            }
        };
        let now = timestamp(None);
        let (desc, diff_id) = match layer {
            Some((desc, diff_id, snap)) => {
                chain.push(ChainLayer::Ready(snap));
                builder.add_layer(
                    desc.clone(),
                    diff_id.clone(),
                    &step.created_by,
                    Some(now.clone()),
                );
                (Some(desc), Some(diff_id))
            }
            None if no_history(step) => (None, None),
            None => {
                builder.add_empty_history(&step.created_by, Some(now.clone()));
                (None, None)
            }
        };
        let rec = CacheRecord {
            key: new_key.clone(),
            parent: Some(parent),
            platform: platform.to_string(),
            text: sk.text.clone(),
            layer: desc,
            diff_id,
            created: now,
            trace: Some(sk.trace),
        };
        inner.cache.put(platform, &rec)?;
        inner.cache.index(platform, &rec)?;
        *key = new_key;
        if let Some((ak, _)) = alt {
            // The instructions' key now holds this result too, so a later
            // build that finds it there gets these files, not older ones;
            // the chain goes on from it.
            let mut by_def = rec.clone();
            by_def.key = ak.clone();
            by_def.trace = None;
            inner.cache.put(platform, &by_def)?;
            *key = ak;
        }
        Ok(false)
    }

    /// A usable cache record of `key`: its layer blob is in the store, or
    /// the request's source can fetch it when a later step needs the
    /// layer's files (a remote agent, from its coordinator).
    async fn lookup(
        &self,
        req: &SolveRequest<'_>,
        platform: &Platform,
        key: &Digest,
    ) -> Option<CacheRecord> {
        let inner = &self.inner;
        if let Some(rec) = inner.cache.get(platform, key, &inner.store) {
            inner.cache.touch(platform, key);
            return Some(rec);
        }
        let rec = inner.cache.get_raw(platform, key)?;
        rec.diff_id.as_ref()?;
        let layer = rec.layer.as_ref()?;
        let usable = req.source.can_fetch(layer);
        if usable {
            inner.cache.touch(platform, key);
        }
        usable.then_some(rec)
    }

    /// Extracts the pending layers of `chain` (fetching blobs the store
    /// lacks from the request's source) and returns the snapshot paths.
    async fn materialize(
        &self,
        req: &SolveRequest<'_>,
        chain: &[ChainLayer],
    ) -> Result<Vec<PathBuf>, EngineError> {
        let inner = &self.inner;
        let missing = unfetched(inner, chain);
        if !missing.is_empty() {
            req.source
                .fetch_blobs(&missing, &inner.store)
                .await
                .map_err(|message| EngineError::Remote {
                    worker: inner.cfg.worker.clone(),
                    message: format!("fetching layers: {message}"),
                })?;
        }
        let extract = |inner: Arc<Inner>, chain: Vec<ChainLayer>| {
            tokio::task::spawn_blocking(move || {
                chain
                    .iter()
                    .map(|c| match c {
                        ChainLayer::Ready(p) => Ok(p.clone()),
                        ChainLayer::Pending { layer, diff_id } => {
                            inner.snapshots.ensure(&inner.store, layer, diff_id)
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
        };
        let first = extract(inner.clone(), chain.to_vec())
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?;
        let Err(SnapshotError::CorruptBlob(corrupt)) = first else {
            return first.map_err(EngineError::from);
        };
        // A layer blob did not match its digest; it was quarantined. Fetch
        // it again from where it came from (a base layer from its registry)
        // and extract once more; when nothing can provide it, report it.
        let gone = unfetched(inner, chain);
        req.events.emit(Event::Warning {
            message: format!("{corrupt}; fetching it again"),
        });
        let _ = req.source.fetch_blobs(&gone, &inner.store).await;
        if gone.iter().any(|l| !inner.store.exists(&l.digest)) {
            return Err(EngineError::from(SnapshotError::CorruptBlob(corrupt)));
        }
        extract(inner.clone(), chain.to_vec())
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?
            .map_err(EngineError::from)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_exec(
        &self,
        shared: &Shared<'_, '_>,
        op: &ExecOp,
        deps: &HashMap<usize, Arc<StageOut>>,
        (step, platform): (&Step, &Platform),
        (vid, t0, no_cache): (VertexId, Instant, bool),
        chain: &[ChainLayer],
    ) -> Result<Option<NewLayer>, EngineError> {
        let req = shared.req;
        let mut sources = Vec::with_capacity(op.mounts.len());
        // Under --no-cache a cache mount's old contents are not reused: the
        // first RUN of this build that mounts an id starts it empty.
        let fresh_caches: Vec<bool> = op
            .mounts
            .iter()
            .map(|m| {
                if !no_cache || m.kind != MountType::Cache {
                    return false;
                }
                let id =
                    m.id.clone()
                        .or_else(|| m.target.clone())
                        .unwrap_or_default();
                shared
                    .fresh_caches
                    .lock()
                    .map(|mut set| set.insert(id))
                    .unwrap_or(false)
            })
            .collect();
        let mut secrets = Vec::with_capacity(op.mounts.len());
        for m in &op.mounts {
            sources.push(match (&m.kind, &m.from) {
                (MountType::Bind, from) => {
                    match self
                        .layers_of(
                            shared,
                            from.as_ref().unwrap_or(&FileSource::Context),
                            deps,
                            step,
                        )
                        .await?
                    {
                        MountSource::Context(dir) => match &shared.index {
                            Some(index) => MountSource::FilteredContext(dir, index.clone()),
                            None => MountSource::Context(dir),
                        },
                        other => other,
                    }
                }
                _ => MountSource::None,
            });
            secrets.push(match m.kind {
                MountType::Secret => {
                    m.id.as_deref()
                        .and_then(|id| req.secrets.get(id))
                        .map(<[u8]>::to_vec)
                }
                _ => None,
            });
        }
        let ssh = op
            .mounts
            .iter()
            .map(|m| match m.kind {
                MountType::Ssh => req
                    .secrets
                    .ssh_socket(m.id.as_deref().unwrap_or("default"))
                    .map(Path::to_path_buf),
                _ => None,
            })
            .collect();
        let plan = ExecPlan {
            op: op.clone(),
            sources,
            secrets,
            allow: req.graph.entitlements,
            ssh,
            fresh_caches,
        };
        let env = self.exec_env(platform);
        let platform = platform.clone();
        let inner = self.inner.clone();
        let chain = self.materialize(req, chain).await?;
        let sde = req.source_date_epoch;
        blocking(req.events, vid, t0, move |tx| {
            fs_step(&inner, &chain, (sde, true), |root| {
                // Secret values never reach the log: masked per stream.
                let values = || plan.secrets.iter().flatten().map(Vec::as_slice);
                let mut out_mask = Redactor::new(values());
                let mut err_mask = Redactor::new(values());
                let mut log = |s: OutputStream, d: &[u8]| {
                    let masked = match s {
                        OutputStream::Stdout => out_mask.push(d),
                        OutputStream::Stderr => err_mask.push(d),
                    };
                    if !masked.is_empty() {
                        let _ = tx.send((s, masked));
                    }
                };
                let r = exec::run(&env, &plan, root, &mut log);
                for (s, m) in [
                    (OutputStream::Stdout, &mut out_mask),
                    (OutputStream::Stderr, &mut err_mask),
                ] {
                    let rest = m.finish();
                    if !rest.is_empty() {
                        let _ = tx.send((s, rest));
                    }
                }
                let r = r.map_err(|e| map_exec_err(e, &platform))?;
                if !r.success() {
                    return Err(EngineError::ProcessFailed {
                        command: plan.op.args.join(" "),
                        code: r.exit_code,
                    });
                }
                Ok(r.created_mountpoints)
            })
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_copy(
        &self,
        shared: &Shared<'_, '_>,
        op: &CopyOp,
        deps: &HashMap<usize, Arc<StageOut>>,
        (step, platform): (&Step, &Platform),
        vid: VertexId,
        t0: Instant,
        chain: &[ChainLayer],
    ) -> Result<Option<NewLayer>, EngineError> {
        let req = shared.req;
        // `ADD git@host:…` uses the build's `--ssh default` agent.
        let ssh_sock = req.secrets.ssh_socket("default").map(Path::to_path_buf);
        let needs_source = !op.sources.is_empty();
        let source = if needs_source {
            self.layers_of(shared, &op.from, deps, step).await?
        } else {
            MountSource::None
        };
        let index = match source {
            MountSource::Context(_) => shared.index.clone(),
            _ => None,
        };
        let env = self.exec_env(platform);
        let inner = self.inner.clone();
        let chain = self.materialize(req, chain).await?;
        let sde = req.source_date_epoch;
        let from_label = match &op.from {
            FileSource::Context => String::new(),
            FileSource::Stage(i) => format!("stage {}", req.graph.stages[*i].display_name()),
            FileSource::Image(r) => format!("image {}", r.reference),
        };
        let op = op.clone();
        blocking(req.events, vid, t0, move |_tx| {
            fs_step(&inner, &chain, (sde, true), |root| {
                let mut setup = Setup::default();
                let empty;
                let src_root: &Path = match &source {
                    MountSource::Context(dir) | MountSource::FilteredContext(dir, _) => dir,
                    MountSource::Layers(l) => {
                        empty = exec::overlay_view(&env, l, false, &mut setup)?;
                        &empty
                    }
                    MountSource::None => &env.empty,
                };
                let creq = CopyRequest {
                    src_root,
                    src_filter: index.as_deref(),
                    sources: &op.sources,
                    inline: &op.inline,
                    dest_root: root,
                    dest: &op.dest,
                    chown: op.chown.as_deref(),
                    chmod: op.chmod.as_deref(),
                    exclude: &op.exclude,
                    parents: op.parents,
                    add: op.add.then(|| AddOptions {
                        unpack: op.unpack,
                        checksum: op.checksum.clone(),
                        keep_git_dir: op.keep_git_dir,
                        timeout: None,
                        ssh_auth_sock: ssh_sock.clone(),
                    }),
                };
                let r = copy::copy_into(&creq);
                drop(setup);
                r.map_err(|e| match e {
                    copy::CopyError::Source(crate::context::ContextError::NotFound { path })
                        if !from_label.is_empty() =>
                    {
                        copy::CopyError::NotFoundIn {
                            path,
                            from: from_label,
                        }
                    }
                    e => e,
                })?;
                Ok(Vec::new())
            })
        })
        .await
    }
}

/// The layers of `chain` that are neither extracted nor in the store.
fn unfetched(inner: &Inner, chain: &[ChainLayer]) -> Vec<Descriptor> {
    chain
        .iter()
        .filter_map(|c| match c {
            ChainLayer::Pending { layer, diff_id }
                if inner.snapshots.get(diff_id).is_none() && !inner.store.exists(&layer.digest) =>
            {
                Some((**layer).clone())
            }
            _ => None,
        })
        .collect()
}
