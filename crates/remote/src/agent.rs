//! The agent: serves one coordinator over a byte stream (its stdin and
//! stdout), building platforms with the engine in its own state directory.
//!
//! Two tasks move frames: a reader that stores incoming blobs as they
//! stream in (context files into a content-addressed cache of context
//! files, everything else into the engine's content store), hands each
//! reply to the request waiting for it (so a step blocked on the
//! coordinator, such as an ssh-agent request, never depends on the solve
//! being polled) and forwards the other messages; and a writer that
//! serializes what the solve emits (events, requests) and streams files
//! out in chunks. The main loop runs the conversation described in
//! [`crate::protocol`]; `--ssh` agents are served by [`crate::sshfwd`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use xbuild_engine::cache::CacheRecord;
use xbuild_engine::context::{host_path, names, ContextIndex, EntryKind};
use xbuild_engine::events::{Event, EventSink};
use xbuild_engine::source::BoxFuture;
use xbuild_engine::{
    Engine, EngineConfig, EngineError, ImageSource, PullFuture, PulledImage, Secrets, SolveRequest,
    VertexIds,
};
use xbuild_oci::{BlobStore, Descriptor, Digest, Platform};
use xbuild_plan::ImageRef;

use crate::protocol::{
    check_version, AgentBytes, BlobDest, FrameReader, FrameWriter, Message, NodeInfo, RemoteError,
    ReplyBody, SolveJob, Solved, StepFailure, PROTOCOL_VERSION,
};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Its state directory.
    pub root: PathBuf,
    /// The sandbox init program (this binary).
    pub init_program: PathBuf,
    /// Arguments that make it the init.
    pub init_args: Vec<String>,
    /// The node's native platform.
    pub native: Platform,
    /// Platforms it runs through binfmt_misc emulation.
    pub emulated: Vec<Platform>,
    /// Name used for the coordinator in messages.
    pub peer: String,
}

/// The capabilities this agent announces.
pub const CAPABILITIES: &[&str] = &["solve", "context-cache", "cache-sync", "heartbeat"];

/// Env var honoured only by the end-to-end tests: the agent claims this
/// protocol version in the handshake (and checks the coordinator's against
/// it), as an agent of an older xbuild would.
pub const CLAIM_PROTOCOL_ENV: &str = "XBUILD_TEST_AGENT_PROTOCOL";

fn claimed_protocol() -> u32 {
    std::env::var(CLAIM_PROTOCOL_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(PROTOCOL_VERSION)
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends [`Message::Heartbeat`] every [`crate::liveness::HEARTBEAT`] until
/// dropped. It runs on its own task, so a long step, a blocked solve or a
/// slow transfer does not silence it; only a stopped or wedged agent does.
fn heartbeat(out: mpsc::UnboundedSender<Outgoing>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::liveness::HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if out.send(Outgoing::Msg(Message::Heartbeat)).is_err() {
                return;
            }
        }
    }))
}

/// Whether `e` or one of its causes is ENOSPC.
pub fn is_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if let Some(io) = x.downcast_ref::<io::Error>() {
            if io.raw_os_error() == Some(libc::ENOSPC) {
                return true;
            }
        }
        if x.to_string().contains("No space left on device") {
            return true;
        }
        cur = x.source();
    }
    false
}

/// Bytes available to unprivileged writers on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The message sent to the coordinator for an error that ends the
/// conversation; a full disk says so plainly, with the state directory.
fn fatal_message(e: &RemoteError, root: &Path) -> String {
    if is_no_space(e) {
        let free = free_bytes(root).map_or_else(|| "unknown".into(), |b| format!("{b} bytes"));
        format!(
            "no space left on device in the agent's state directory {} ({free} free): {e}",
            root.display()
        )
    } else {
        e.to_string()
    }
}

/// What leaves the agent. Messages are by far the common case (events),
/// so they are not boxed.
#[allow(clippy::large_enum_variant)]
enum Outgoing {
    Msg(Message),
    File {
        digest: Digest,
        size: u64,
        dest: BlobDest,
        path: PathBuf,
    },
}

/// The 1-minute load average (`0` when unknown).
pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The directory under the agent root where context file contents are kept.
pub fn context_cache_dir(root: &Path) -> PathBuf {
    root.join("remote").join("context")
}

type ReplyTx = oneshot::Sender<Result<ReplyBody, String>>;

/// Requests waiting for the coordinator's reply, by request id (ids are
/// unique for the life of the agent, so a late reply never answers a
/// later job's request).
#[derive(Default)]
struct Pending {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, ReplyTx>>,
}

impl Pending {
    fn add(&self) -> (u64, oneshot::Receiver<Result<ReplyBody, String>>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.waiting.lock() {
            p.insert(id, tx);
        }
        (id, rx)
    }

    fn complete(&self, id: u64, result: Result<ReplyBody, String>) {
        let tx = self.waiting.lock().ok().and_then(|mut p| p.remove(&id));
        if let Some(tx) = tx {
            let _ = tx.send(result);
        }
    }

    /// Fails every waiting request (the job is over, or the coordinator gone).
    fn abandon_all(&self) {
        if let Ok(mut p) = self.waiting.lock() {
            p.clear();
        }
    }
}

/// Requests the solve makes to the coordinator, and their answers.
struct Link {
    out: mpsc::UnboundedSender<Outgoing>,
    pending: Arc<Pending>,
}

const CLOSED: &str = "the connection to the coordinator is closed";

impl Link {
    fn send(&self, m: Message) -> Result<(), String> {
        self.out
            .send(Outgoing::Msg(m))
            .map_err(|_| CLOSED.to_string())
    }

    async fn request(&self, make: impl FnOnce(u64) -> Message) -> Result<ReplyBody, String> {
        let (id, rx) = self.pending.add();
        self.send(make(id))?;
        rx.await.map_err(|_| CLOSED.to_string())?
    }

    /// [`Link::request`] for a thread outside the async runtime.
    fn request_blocking(&self, make: impl FnOnce(u64) -> Message) -> Result<ReplyBody, String> {
        let (id, rx) = self.pending.add();
        self.send(make(id))?;
        rx.blocking_recv().map_err(|_| CLOSED.to_string())?
    }

    async fn fetch(&self, store: &BlobStore, digests: &[Digest]) -> Result<(), String> {
        let missing: Vec<Digest> = digests
            .iter()
            .filter(|d| !store.exists(d))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        match self
            .request(|id| Message::Fetch {
                id,
                digests: missing.clone(),
            })
            .await?
        {
            ReplyBody::Fetched => {}
            other => return Err(format!("unexpected answer to a fetch: {other:?}")),
        }
        match missing.iter().find(|d| !store.exists(d)) {
            Some(d) => Err(format!("the coordinator did not send blob {d}")),
            None => Ok(()),
        }
    }
}

impl crate::sshfwd::AgentLink for Link {
    fn request(&self, ssh_id: &str, conn: u64, request: Vec<u8>) -> Result<Vec<u8>, String> {
        let answer = self.request_blocking(|id| Message::SshAgent {
            id,
            ssh_id: ssh_id.to_string(),
            conn,
            request: AgentBytes(request),
        })?;
        match answer {
            ReplyBody::SshAgent { response } => Ok(response.0),
            _ => Err("unexpected answer to an ssh agent request".into()),
        }
    }

    fn closed(&self, ssh_id: &str, conn: u64) {
        let _ = self.send(Message::SshAgentClose {
            ssh_id: ssh_id.to_string(),
            conn,
        });
    }
}

/// Ends a job's side channels, whichever way the job ends: the forwarded
/// ssh agents stop, and requests still waiting for the coordinator fail
/// (so no thread of the job outlives it waiting).
struct JobEnd {
    pending: Arc<Pending>,
    ssh: Option<crate::sshfwd::NodeAgents>,
}

impl Drop for JobEnd {
    fn drop(&mut self) {
        self.ssh.take();
        self.pending.abandon_all();
    }
}

/// The job's context, fetched and laid out the first time a step reads it.
struct LazyContext {
    index: ContextIndex,
    mtimes: BTreeMap<String, (i64, i64)>,
    files: BlobStore,
    dir: PathBuf,
    ready: tokio::sync::Mutex<bool>,
}

/// Base images, layers and the context come from the coordinator, each
/// only when the solve needs it.
struct CoordinatorSource {
    link: Arc<Link>,
    context: Option<LazyContext>,
}

impl CoordinatorSource {
    async fn ensure_context(&self) -> Result<(), String> {
        let Some(c) = &self.context else {
            return Ok(());
        };
        let mut ready = c.ready.lock().await;
        if *ready {
            return Ok(());
        }
        let missing: Vec<Digest> = c
            .index
            .entries
            .iter()
            .filter_map(|e| e.digest.clone())
            .filter(|d| !c.files.exists(d))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            match self
                .link
                .request(|id| Message::WantFiles {
                    id,
                    digests: missing.clone(),
                })
                .await?
            {
                ReplyBody::Fetched => {}
                other => return Err(format!("unexpected answer to a context request: {other:?}")),
            }
            if let Some(d) = missing.iter().find(|d| !c.files.exists(d)) {
                return Err(format!("the coordinator did not send context file {d}"));
            }
        }
        let (index, mtimes, files, dir) = (
            c.index.clone(),
            c.mtimes.clone(),
            c.files.clone(),
            c.dir.clone(),
        );
        tokio::task::spawn_blocking(move || materialize(&index, &mtimes, &files, &dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        *ready = true;
        Ok(())
    }
}

/// An image by manifest digest whose manifest and config are in the store
/// (its layers are fetched when a step reads them).
fn manifest_in_store(store: &BlobStore, digest: &Digest) -> Result<PulledImage, String> {
    let image = xbuild_engine::image::read_manifest(store, digest).map_err(|e| e.to_string())?;
    let config = xbuild_engine::image::read_config(store, &image.config.digest)
        .map_err(|e| e.to_string())?;
    let size = store.size_of(digest).map_err(|e| e.to_string())?;
    let manifest = Descriptor::new(
        image.effective_media_type().to_string(),
        digest.clone(),
        size,
    )
    .with_platform(&config.platform());
    Ok(PulledImage {
        manifest,
        image,
        config,
    })
}

fn known_in_store(image: &ImageRef, store: &BlobStore) -> Option<PulledImage> {
    let d = Digest::parse(image.digest.as_ref()?).ok()?;
    manifest_in_store(store, &d).ok()
}

impl ImageSource for CoordinatorSource {
    fn pull<'a>(
        &'a self,
        image: &'a ImageRef,
        store: &'a BlobStore,
        _events: &'a dyn EventSink,
    ) -> PullFuture<'a> {
        Box::pin(async move {
            if let Some(p) = known_in_store(image, store) {
                return Ok(p);
            }
            let (manifest, blobs) = match self
                .link
                .request(|id| Message::Pull {
                    id,
                    image: image.clone(),
                })
                .await?
            {
                ReplyBody::Pulled { manifest, blobs } => (manifest, blobs),
                other => return Err(format!("unexpected answer to a pull: {other:?}")),
            };
            // Manifest and config now; layers when a step reads them.
            self.link.fetch(store, &blobs[..blobs.len().min(2)]).await?;
            manifest_in_store(store, &manifest.digest)
        })
    }

    fn can_fetch(&self, _blob: &Descriptor) -> bool {
        // The coordinator offers only records whose blobs it has.
        true
    }

    fn fetch_blobs<'a>(&'a self, blobs: &'a [Descriptor], store: &'a BlobStore) -> BoxFuture<'a> {
        Box::pin(async move {
            let digests: Vec<Digest> = blobs.iter().map(|b| b.digest.clone()).collect();
            self.link.fetch(store, &digests).await
        })
    }

    fn prepare_context(&self) -> BoxFuture<'_> {
        Box::pin(self.ensure_context())
    }
}

/// Serves one coordinator until it closes the stream. Returns `Ok` when
/// the coordinator hung up between jobs.
pub async fn serve<R, W>(reader: R, writer: W, cfg: AgentConfig) -> Result<(), RemoteError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let peer = cfg.peer.clone();
    remove_stale_contexts(&cfg.root.join("remote"));
    let store = BlobStore::open(cfg.root.join("content"))?;
    let ctx_store = BlobStore::open(context_cache_dir(&cfg.root))?;

    // Reader task: blobs go straight to disk; messages to the main loop.
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Result<Message, RemoteError>>();
    let mut frames = FrameReader::new(reader, peer.clone());
    let (rstore, rctx) = (store.clone(), ctx_store.clone());
    let pending = Arc::new(Pending::default());
    let rpending = pending.clone();
    let reader_task = tokio::spawn(async move {
        loop {
            let m = match frames.next_message().await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    let _ = in_tx.send(Err(e));
                    return;
                }
            };
            if let Message::Blob { digest, size, dest } = &m {
                let s = match dest {
                    BlobDest::Store => &rstore,
                    BlobDest::Context => &rctx,
                };
                if let Err(e) = frames.read_blob_into(s, digest, *size).await {
                    let _ = in_tx.send(Err(e));
                    return;
                }
                continue;
            }
            if let Message::Reply { id, result } = m {
                rpending.complete(id, result);
                continue;
            }
            if in_tx.send(Ok(m)).is_err() {
                return;
            }
        }
    });

    // Writer task.
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let mut w = FrameWriter::new(writer, peer.clone());
    let writer_task = tokio::spawn(async move {
        while let Some(o) = out_rx.recv().await {
            let r = match o {
                Outgoing::Msg(m) => w.send(&m).await,
                Outgoing::File {
                    digest,
                    size,
                    dest,
                    path,
                } => w.send_file(&digest, size, dest, &path).await,
            };
            if r.is_err() {
                return;
            }
            if out_rx.is_empty() && w.flush().await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });

    let err_tx = out_tx.clone();
    let r = conversation(&cfg, &store, &ctx_store, &pending, &mut in_rx, out_tx).await;
    reader_task.abort();
    pending.abandon_all();
    // Tell the coordinator why, unless it is the coordinator that went away.
    if let Err(e) = &r {
        if !e.is_lost() {
            let _ = err_tx.send(Outgoing::Msg(Message::Error {
                message: fatal_message(e, &cfg.root),
            }));
        }
    }
    drop(err_tx);
    // The writer ends once every sender is gone; let it flush what is queued.
    let _ = writer_task.await;
    r
}

/// Removes context directories (`ctx-PID-N`) left by agents that died.
fn remove_stale_contexts(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("ctx-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

async fn recv(
    rx: &mut mpsc::UnboundedReceiver<Result<Message, RemoteError>>,
    peer: &str,
) -> Result<Option<Message>, RemoteError> {
    match rx.recv().await {
        None => Ok(None),
        Some(r) => r.map(Some),
    }
    .map_err(|e| match e {
        RemoteError::Lost { .. } => RemoteError::Lost {
            peer: peer.to_string(),
            reason: "the coordinator closed the connection".into(),
        },
        other => other,
    })
}

async fn expect(
    rx: &mut mpsc::UnboundedReceiver<Result<Message, RemoteError>>,
    peer: &str,
) -> Result<Message, RemoteError> {
    recv(rx, peer).await?.ok_or_else(|| RemoteError::Lost {
        peer: peer.to_string(),
        reason: "the coordinator closed the connection".into(),
    })
}

fn unexpected(peer: &str, want: &str, got: &Message) -> RemoteError {
    RemoteError::Protocol {
        peer: peer.to_string(),
        what: format!("expected {want}, got {}", got.name()),
    }
}

async fn conversation(
    cfg: &AgentConfig,
    store: &BlobStore,
    ctx_store: &BlobStore,
    pending: &Arc<Pending>,
    rx: &mut mpsc::UnboundedReceiver<Result<Message, RemoteError>>,
    out: mpsc::UnboundedSender<Outgoing>,
) -> Result<(), RemoteError> {
    let peer = cfg.peer.as_str();
    let closed = || RemoteError::Lost {
        peer: peer.to_string(),
        reason: "the writer stopped (broken pipe)".into(),
    };
    let send = |m: Message| out.send(Outgoing::Msg(m)).map_err(|_| closed());

    let (protocol, version) = match expect(rx, peer).await? {
        Message::Hello { protocol, version } => (protocol, version),
        other => return Err(unexpected(peer, "hello", &other)),
    };
    // Answer even on a mismatch, so the coordinator can name both versions.
    let ours = claimed_protocol();
    send(Message::Welcome(NodeInfo {
        protocol: ours,
        version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
        native: cfg.native.clone(),
        emulated: cfg.emulated.clone(),
        load: load_average(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        pid: Some(std::process::id()),
    }))?;
    if ours != PROTOCOL_VERSION {
        if protocol != ours {
            return Err(RemoteError::Version {
                peer: peer.to_string(),
                ours,
                theirs: protocol,
                our_version: env!("CARGO_PKG_VERSION").to_string(),
                their_version: version,
            });
        }
    } else {
        check_version(peer, protocol, &version)?;
    }
    let _heartbeat = heartbeat(out.clone());

    let mut jobs = 0u64;
    loop {
        let job = match recv(rx, peer).await? {
            None => return Ok(()),
            Some(Message::Solve(job)) => job,
            Some(other) => return Err(unexpected(peer, "solve", &other)),
        };
        jobs += 1;
        let ctx_dir = cfg
            .root
            .join("remote")
            .join(format!("ctx-{}-{jobs}", std::process::id()));
        let r = run_job(cfg, store, ctx_store, pending, rx, &out, *job, &ctx_dir).await;
        let _ = fs::remove_dir_all(&ctx_dir);
        r?;
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_job(
    cfg: &AgentConfig,
    store: &BlobStore,
    ctx_store: &BlobStore,
    pending: &Arc<Pending>,
    rx: &mut mpsc::UnboundedReceiver<Result<Message, RemoteError>>,
    out: &mpsc::UnboundedSender<Outgoing>,
    job: SolveJob,
    ctx_dir: &Path,
) -> Result<(), RemoteError> {
    let peer = cfg.peer.as_str();
    let closed = || RemoteError::Lost {
        peer: peer.to_string(),
        reason: "the writer stopped (broken pipe)".into(),
    };
    let send = |m: Message| out.send(Outgoing::Msg(m)).map_err(|_| closed());
    let engine = match Engine::open(EngineConfig {
        root: cfg.root.clone(),
        init_program: cfg.init_program.clone(),
        init_args: cfg.init_args.clone(),
        worker: job.worker.clone(),
        snapshotter: None,
    }) {
        Ok(e) => e,
        Err(e) => {
            send(Message::Failed {
                message: e.to_string(),
                step: None,
            })?;
            return Ok(());
        }
    };

    // Cache records the agent lacks, of every platform that executes a
    // step of the graph.
    let exec_platforms = job.graph.execution_platforms();
    let list_all = || -> Result<Vec<CacheRecord>, RemoteError> {
        let mut all = Vec::new();
        for p in &exec_platforms {
            all.extend(engine.cache().list(p)?);
        }
        Ok(all)
    };
    let before: BTreeMap<Digest, CacheRecord> = list_all()?
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect();
    let want: Vec<Digest> = job
        .cache_keys
        .iter()
        .filter(|k| !before.contains_key(k))
        .cloned()
        .collect();
    send(Message::WantRecords { keys: want.clone() })?;
    let want: BTreeSet<Digest> = want.into_iter().collect();
    let mut before = before;
    match expect(rx, peer).await? {
        Message::Records { records } => {
            for r in records {
                let filed = exec_platforms.iter().find(|p| r.platform == p.to_string());
                if let (true, Some(p)) = (want.contains(&r.key), filed) {
                    engine.cache().put(p, &r)?;
                    before.insert(r.key.clone(), r);
                }
            }
        }
        other => return Err(unexpected(peer, "records", &other)),
    }

    let link = Arc::new(Link {
        out: out.clone(),
        pending: pending.clone(),
    });
    let mut end = JobEnd {
        pending: pending.clone(),
        ssh: None,
    };
    let source = CoordinatorSource {
        link: link.clone(),
        context: job.context.as_ref().map(|index| LazyContext {
            index: index.clone(),
            mtimes: job.mtimes.clone(),
            files: ctx_store.clone(),
            dir: ctx_dir.to_path_buf(),
            ready: tokio::sync::Mutex::new(false),
        }),
    };
    let ev_out = out.clone();
    // A step whose output says the disk is full failed because of the node.
    let saw_no_space = Arc::new(AtomicBool::new(false));
    let saw = saw_no_space.clone();
    let events = move |event: Event| {
        if let Event::Log { data, .. } = &event {
            if String::from_utf8_lossy(data).contains("No space left on device") {
                saw.store(true, Ordering::Relaxed);
            }
        }
        let _ = ev_out.send(Outgoing::Msg(Message::Event { event }));
    };
    let ids = VertexIds::new();
    let mut secrets = Secrets::from(job.secrets.0.clone());
    // `--ssh`: a socket per id that acts as an ssh-agent, answered by the
    // coordinator's agent; the step's ssh mount forwards to it.
    if !job.ssh.is_empty() {
        match crate::sshfwd::NodeAgents::start(&job.ssh, None, link.clone()) {
            Ok(agents) => {
                for (id, sock) in agents.sockets() {
                    secrets.insert_ssh(id.clone(), sock.clone());
                }
                end.ssh = Some(agents);
            }
            Err(e) => {
                send(Message::Failed {
                    message: format!("forwarding the --ssh agents: {e}"),
                    step: None,
                })?;
                return Ok(());
            }
        }
    }
    let req = SolveRequest {
        graph: &job.graph,
        context_dir: job.context.as_ref().map(|_| ctx_dir),
        context: job.context.as_ref(),
        source: &source,
        events: &events,
        ids: &ids,
        no_cache: job.no_cache,
        no_cache_filter: &job.no_cache_filter,
        secrets: &secrets,
        source_date_epoch: job.source_date_epoch,
        presolved: &job.presolved,
    };
    let solve = engine.solve(req);
    tokio::pin!(solve);
    // Replies reach the solve through the reader task; anything else
    // during a build is a protocol error.
    let result = tokio::select! {
        r = &mut solve => r,
        m = recv(rx, peer) => {
            return Err(match m? {
                Some(other) => unexpected(peer, "nothing during a build", &other),
                None => RemoteError::Lost {
                    peer: peer.to_string(),
                    reason: "the coordinator closed the connection during the build".into(),
                },
            })
        }
    };
    // The steps are done: stop serving their ssh agents.
    drop(end.ssh.take());
    let res = match result {
        Ok(res) => res,
        Err(e) if is_no_space(&e) || saw_no_space.load(Ordering::Relaxed) => {
            // Not the Dockerfile's fault: end the conversation with an error
            // naming the full disk, so the coordinator builds elsewhere.
            return Err(RemoteError::NoSpace {
                message: e.to_string(),
            });
        }
        Err(e) => {
            let (message, step) = match &e {
                EngineError::Step {
                    location,
                    instruction,
                    source,
                    ..
                } => (
                    source.to_string(),
                    Some(StepFailure {
                        location: location.clone(),
                        instruction: instruction.clone(),
                    }),
                ),
                other => (other.to_string(), None),
            };
            send(Message::Failed { message, step })?;
            return Ok(());
        }
    };

    // Records written (or rewritten) by this solve go back with the image.
    let records: Vec<CacheRecord> = list_all()?
        .into_iter()
        .filter(|r| before.get(&r.key) != Some(r))
        .collect();
    let manifest = xbuild_engine::image::read_manifest(store, &res.manifest.digest)
        .map_err(EngineError::from)?;
    let mut blobs = vec![res.manifest.digest.clone(), manifest.config.digest.clone()];
    blobs.extend(manifest.layers.iter().map(|l| l.digest.clone()));
    send(Message::Solved(Box::new(Solved {
        manifest: res.manifest.clone(),
        blobs,
        records,
        steps: res.steps,
        cached: res.cached,
        duration_ms: res.duration.as_millis() as u64,
    })))?;
    let wanted = match expect(rx, peer).await? {
        Message::WantBlobs { digests } => digests,
        other => return Err(unexpected(peer, "want_blobs", &other)),
    };
    for d in wanted {
        let size = store.size_of(&d)?;
        out.send(Outgoing::File {
            digest: d.clone(),
            size,
            dest: BlobDest::Store,
            path: store.path_of(&d),
        })
        .map_err(|_| closed())?;
    }
    send(Message::BlobsDone)?;
    Ok(())
}

fn io_err<'a>(op: &'static str, p: &'a Path) -> impl FnOnce(io::Error) -> RemoteError + 'a {
    move |source| RemoteError::Io {
        op,
        path: p.display().to_string(),
        source,
    }
}

fn set_times(p: &Path, (sec, nsec): (i64, i64)) -> Result<(), RemoteError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| RemoteError::Io {
        op: "set times of",
        path: p.display().to_string(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let t = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    };
    let times = [t, t];
    // SAFETY: a valid NUL-terminated path and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io_err("set times of", p)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Lays the context out under `dir` from the context file cache, with the
/// coordinator's modes, owners, link targets and modification times.
pub fn materialize(
    index: &ContextIndex,
    mtimes: &BTreeMap<String, (i64, i64)>,
    files: &BlobStore,
    dir: &Path,
) -> Result<(), RemoteError> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let mut dirs = Vec::new();
    for e in &index.entries {
        if e.path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(RemoteError::Protocol {
                peer: "coordinator".into(),
                what: format!("invalid context path {:?}", names::lossy(&e.path)),
            });
        }
        // Paths travel escaped (JSON strings); the files get their bytes.
        let p = host_path(dir, &e.path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        }
        match e.kind {
            EntryKind::Dir => {
                match fs::create_dir(&p) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => return Err(io_err("create directory", &p)(err)),
                }
                dirs.push(e);
                continue;
            }
            EntryKind::File => {
                let d = e.digest.as_ref().ok_or_else(|| RemoteError::Protocol {
                    peer: "coordinator".into(),
                    what: format!("context file {:?} has no digest", names::lossy(&e.path)),
                })?;
                fs::copy(files.path_of(d), &p).map_err(io_err("write", &p))?;
                std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid))
                    .map_err(io_err("chown", &p))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))
                    .map_err(io_err("chmod", &p))?;
            }
            EntryKind::Symlink => {
                let t = e.link_target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(names::to_os(t), &p).map_err(io_err("symlink", &p))?;
                std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid))
                    .map_err(io_err("chown", &p))?;
            }
        }
        if let Some(t) = mtimes.get(&e.path) {
            set_times(&p, *t)?;
        }
    }
    // Directories last, deepest first, so their contents do not touch them again.
    for e in dirs.iter().rev() {
        let p = host_path(dir, &e.path);
        std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid)).map_err(io_err("chown", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(e.mode)).map_err(io_err("chmod", &p))?;
        if let Some(t) = mtimes.get(&e.path) {
            set_times(&p, *t)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xbuild_engine::context::IndexEntry;

    fn entry(path: &str, kind: EntryKind, mode: u32, digest: Option<Digest>) -> IndexEntry {
        IndexEntry {
            path: path.into(),
            kind,
            mode,
            uid: 1000,
            gid: 1001,
            size: 0,
            link_target: (kind == EntryKind::Symlink).then(|| "f.txt".into()),
            digest,
        }
    }

    #[test]
    fn the_context_is_laid_out_with_modes_owners_links_and_times() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let files = BlobStore::open(dir.path().join("files")).unwrap();
        let d = files.put_bytes(b"hello\n").unwrap();
        let index = ContextIndex {
            entries: vec![
                entry("sub", EntryKind::Dir, 0o750, None),
                entry("sub/f.txt", EntryKind::File, 0o640, Some(d)),
                entry("sub/link", EntryKind::Symlink, 0o777, None),
            ],
            ..Default::default()
        };
        let mut mtimes = BTreeMap::new();
        mtimes.insert("sub".to_string(), (1_600_000_000, 5));
        mtimes.insert("sub/f.txt".to_string(), (1_500_000_000, 7));
        let out = dir.path().join("ctx");
        materialize(&index, &mtimes, &files, &out).unwrap();
        let f = fs::symlink_metadata(out.join("sub/f.txt")).unwrap();
        assert_eq!(fs::read(out.join("sub/f.txt")).unwrap(), b"hello\n");
        assert_eq!(f.mode() & 0o7777, 0o640);
        assert_eq!((f.mtime(), f.mtime_nsec()), (1_500_000_000, 7));
        let dm = fs::symlink_metadata(out.join("sub")).unwrap();
        assert_eq!(dm.mode() & 0o7777, 0o750);
        assert_eq!((dm.mtime(), dm.mtime_nsec()), (1_600_000_000, 5));
        assert_eq!(
            fs::read_link(out.join("sub/link")).unwrap(),
            Path::new("f.txt")
        );
        if nix_is_root() {
            assert_eq!((f.uid(), f.gid()), (1000, 1001));
        }
        // Paths that leave the directory are refused.
        let bad = ContextIndex {
            entries: vec![entry("../x", EntryKind::Dir, 0o755, None)],
            ..Default::default()
        };
        let e = materialize(&bad, &BTreeMap::new(), &files, &out).unwrap_err();
        assert!(e.to_string().contains("invalid context path"), "{e}");
    }

    /// A context scanned on the coordinator with non-UTF-8 names travels
    /// as JSON and is laid out on the node with the same bytes (names and
    /// link targets), so COPY there makes the same layer.
    #[test]
    fn non_utf8_names_survive_the_json_trip_to_the_node() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let os = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join(os(b"d\xff"))).unwrap();
        fs::write(src.join(os(b"d\xff")).join(os(b"caf\xe9.txt")), b"x").unwrap();
        std::os::unix::fs::symlink(os(b"d\xff/caf\xe9.txt"), src.join(os(b"l\xfe"))).unwrap();
        let index = xbuild_engine::context::scan(
            &src,
            None,
            &xbuild_engine::context::ScanOptions::default(),
            None,
        )
        .unwrap();
        let json = serde_json::to_vec(&index).unwrap();
        let index: ContextIndex = serde_json::from_slice(&json).unwrap();
        let files = BlobStore::open(dir.path().join("files")).unwrap();
        files.put_bytes(b"x").unwrap();
        let out = dir.path().join("ctx");
        materialize(&index, &BTreeMap::new(), &files, &out).unwrap();
        assert_eq!(
            fs::read(out.join(os(b"d\xff")).join(os(b"caf\xe9.txt"))).unwrap(),
            b"x"
        );
        assert_eq!(
            fs::read_link(out.join(os(b"l\xfe")))
                .unwrap()
                .as_os_str()
                .as_bytes(),
            b"d\xff/caf\xe9.txt"
        );
        // The node's own scan of the laid-out context is the same index.
        let again = xbuild_engine::context::scan(
            &out,
            None,
            &xbuild_engine::context::ScanOptions::default(),
            None,
        )
        .unwrap();
        let strip = |ix: &ContextIndex| {
            ix.entries
                .iter()
                .map(|e| {
                    (
                        e.path.clone(),
                        e.kind,
                        e.link_target.clone(),
                        e.digest.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&again), strip(&index));
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn stale_context_directories_of_dead_agents_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join("ctx-999999999-1");
        let mine = dir.path().join(format!("ctx-{}-1", std::process::id()));
        let other = dir.path().join("context");
        for d in [&dead, &mine, &other] {
            fs::create_dir_all(d).unwrap();
        }
        remove_stale_contexts(dir.path());
        assert!(!dead.exists() && mine.exists() && other.exists());
    }
}
