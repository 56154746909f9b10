//! The coordinator↔agent protocol.
//!
//! Both directions are a sequence of frames:
//!
//! ```text
//! u32 big-endian payload length | u8 kind | payload
//! ```
//!
//! Kind 1 is a JSON [`Message`]; kind 2 is raw bytes belonging to the blob
//! announced by the preceding [`Message::Blob`] (file contents travel in
//! chunks of [`CHUNK`] bytes, so a layer is never held in memory whole).
//!
//! The conversation (C = coordinator, A = agent):
//!
//! ```text
//! C: Hello                 A: Welcome          (versions must match)
//! C: Solve                 A: WantRecords      C: Records
//!   ... A: Event*
//!       | Pull      -> C: Reply                (base image manifest)
//!       | Fetch     -> C: Blob* Reply          (store blobs the agent lacks)
//!       | WantFiles -> C: Blob* Reply          (context files it lacks)
//!       | SshAgent  -> C: Reply                (one ssh-agent request, `--ssh`)
//!       | SshAgentClose                        (a step closed its agent connection) ...
//!                          A: Solved | Failed
//! C: WantBlobs             A: Blob* BlobsDone
//! (next Solve, or C closes the agent's stdin and the agent exits)
//! ```
//!
//! After the handshake the agent also sends a [`Message::Heartbeat`] every
//! [`crate::liveness::HEARTBEAT`] from a task of its own, whatever the solve
//! is doing; the coordinator reads with a silence limit
//! ([`FrameReader::with_idle_limit`]) and treats a silent agent as lost.
//!
//! The agent asks for nothing it does not read: layers of cache hits and
//! of base images are fetched only when a step that misses needs their
//! files, and the context only when a step reads it, so a fully cached
//! build moves cache records, manifests and configs, not layers.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use xbuild_engine::cache::{CacheError, CacheRecord};
use xbuild_engine::context::ContextIndex;
use xbuild_engine::events::Event;
use xbuild_engine::EngineError;
use xbuild_oci::store::StoreError;
use xbuild_oci::{Descriptor, Digest, Platform};
use xbuild_plan::{BuildGraph, ImageRef, Location};

/// The protocol version; both ends must speak the same one.
/// Version 2 added the agent's heartbeat; version 3 the forwarding of
/// `--ssh` agents ([`Message::SshAgent`]).
pub const PROTOCOL_VERSION: u32 = 3;
/// The largest JSON message frame accepted (the largest messages are a
/// build graph, a context manifest with one entry per file, a platform's
/// cache records): 64 MiB. A header announcing more fails the read before
/// anything is allocated.
pub const MAX_FRAME: usize = 64 << 20;
/// Size of the data frames blob and file contents are sent in; also the
/// largest data frame accepted.
pub const CHUNK: usize = 256 << 10;

/// The largest payload of a frame of `kind`: [`CHUNK`] for data,
/// [`MAX_FRAME`] for a message.
fn max_payload(kind: u8) -> usize {
    if kind == KIND_DATA {
        CHUNK
    } else {
        MAX_FRAME
    }
}

fn kind_name(kind: u8) -> &'static str {
    if kind == KIND_DATA {
        "data"
    } else {
        "message"
    }
}

const KIND_JSON: u8 = 1;
const KIND_DATA: u8 = 2;

/// Errors of the remote layer: transport, protocol, and the remote build.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The peer went away (EOF, broken pipe, reset): the agent died or the
    /// connection dropped. The caller may build the platform elsewhere.
    #[error("{peer}: connection lost: {reason}")]
    Lost {
        /// Who (`node amd1 (local agent pid 42)`).
        peer: String,
        /// What happened.
        reason: String,
    },
    /// Nothing at all (not even a heartbeat) came from the peer for longer
    /// than the silence limit: the agent hangs, or the node does.
    #[error(
        "{peer}: no sign of life for {limit:?} (no heartbeat, no data): the node or its agent \
         is hung"
    )]
    Silent {
        /// Who.
        peer: String,
        /// The silence limit.
        limit: std::time::Duration,
    },
    /// A frame ended before its announced length.
    #[error("{peer}: truncated frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Who.
        peer: String,
        /// Announced length.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A frame is larger than its kind allows ([`MAX_FRAME`] for a
    /// message, [`CHUNK`] for data).
    #[error("{peer}: {what} frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Who.
        peer: String,
        /// `message` or `data`.
        what: &'static str,
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame of an unknown kind, or data where a message was expected.
    #[error("{peer}: protocol error: {what}")]
    Protocol {
        /// Who.
        peer: String,
        /// What was wrong.
        what: String,
    },
    /// A message could not be decoded.
    #[error("{peer}: malformed message: {source}")]
    Decode {
        /// Who.
        peer: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The two ends speak different protocol versions.
    #[error(
        "{peer}: protocol version mismatch: this xbuild {our_version} speaks protocol \
         {ours}, the other end (xbuild {their_version}) speaks protocol {theirs}; install the \
         same xbuild version on both machines"
    )]
    Version {
        /// Who.
        peer: String,
        /// Our protocol version.
        ours: u32,
        /// Theirs.
        theirs: u32,
        /// Our `CARGO_PKG_VERSION`.
        our_version: String,
        /// Theirs.
        their_version: String,
    },
    /// A local filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The node's disk is full (a step failed with ENOSPC, or its output
    /// said so): a node problem, not a Dockerfile one.
    #[error("No space left on device: {message}")]
    NoSpace {
        /// The failure.
        message: String,
    },
    /// The content store failed.
    #[error("content store: {0}")]
    Store(#[from] StoreError),
    /// The cache store failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The engine failed (agent side).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The other end reported an error it could not recover from.
    #[error("{peer}: {message}")]
    Remote {
        /// Who.
        peer: String,
        /// Its message.
        message: String,
    },
}

impl RemoteError {
    /// Whether the error means the connection (or the agent) is gone, so
    /// the platform should be built elsewhere.
    pub fn is_lost(&self) -> bool {
        matches!(
            self,
            RemoteError::Lost { .. } | RemoteError::Truncated { .. } | RemoteError::Silent { .. }
        )
    }
}

fn lost(peer: &str, e: &io::Error) -> RemoteError {
    RemoteError::Lost {
        peer: peer.to_string(),
        reason: match e.kind() {
            io::ErrorKind::UnexpectedEof => "the agent closed the connection".into(),
            io::ErrorKind::BrokenPipe => "broken pipe (the agent exited)".into(),
            _ => e.to_string(),
        },
    }
}

/// What a node reports about itself in the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Protocol version.
    pub protocol: u32,
    /// The agent's `CARGO_PKG_VERSION`.
    pub version: String,
    /// Features: `solve`, `context-cache`, `cache-sync`.
    pub capabilities: Vec<String>,
    /// The native platform of the node.
    pub native: Platform,
    /// Platforms it can also run through binfmt_misc emulation.
    pub emulated: Vec<Platform>,
    /// 1-minute load average.
    pub load: f64,
    /// Logical CPUs.
    pub cpus: usize,
    /// The agent's process id on the node, so that a coordinator giving up
    /// on a hung agent can kill it through the node's SSH connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// Secret values sent with a job; never shown by `Debug`.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct SecretValues(pub BTreeMap<String, Vec<u8>>);

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.0.keys().map(|k| format!("{k}=<redacted>")))
            .finish()
    }
}

/// The bytes of one ssh-agent message (they may carry a signature or a
/// key being added): base64 in JSON, never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AgentBytes(pub Vec<u8>);

impl fmt::Debug for AgentBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes redacted>", self.0.len())
    }
}

impl Serialize for AgentBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for AgentBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(AgentBytes)
            .map_err(serde::de::Error::custom)
    }
}

/// One platform's build, sent to an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SolveJob {
    /// The worker name for progress (`node amd1`).
    pub worker: String,
    /// The platform's graph.
    pub graph: BuildGraph,
    /// The context manifest (paths, metadata, content digests).
    pub context: Option<ContextIndex>,
    /// Modification times (seconds, nanoseconds) of context entries, so
    /// COPY writes the same layers as on the coordinator.
    pub mtimes: BTreeMap<String, (i64, i64)>,
    /// Cache keys of the platform the coordinator has records for.
    pub cache_keys: Vec<Digest>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--no-cache-filter`.
    pub no_cache_filter: Vec<String>,
    /// `--secret` values.
    pub secrets: SecretValues,
    /// `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: Option<i64>,
    /// Stages the coordinator already solved once for several targets:
    /// taken from the cache without progress (see `SolveRequest::presolved`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presolved: Vec<(usize, usize)>,
    /// The `--ssh` ids the coordinator forwards: the agent serves an
    /// ssh-agent socket for each, whose requests travel as
    /// [`Message::SshAgent`] (the keys stay on the coordinator).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<String>,
}

/// Where a received blob goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobDest {
    /// The content store (layers, configs, manifests).
    Store,
    /// The agent's cache of build-context file contents.
    Context,
}

/// The answer to a request the agent made during a solve.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplyBody {
    /// A base image is in the coordinator's store: its manifest and blobs.
    Pulled {
        /// The single-platform manifest.
        manifest: Box<Descriptor>,
        /// Manifest, config and layer digests.
        blobs: Vec<Digest>,
    },
    /// The requested blobs were sent.
    Fetched,
    /// The coordinator's ssh-agent answered a [`Message::SshAgent`].
    SshAgent {
        /// The agent's response message (without its length prefix).
        response: AgentBytes,
    },
}

/// Where a failed build failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepFailure {
    /// Dockerfile location.
    pub location: Location,
    /// The instruction.
    pub instruction: String,
}

/// The agent's build result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Solved {
    /// The image manifest (platform set).
    pub manifest: Descriptor,
    /// Manifest, config and layer digests of the image.
    pub blobs: Vec<Digest>,
    /// Cache records the agent wrote during the solve.
    pub records: Vec<CacheRecord>,
    /// Steps.
    pub steps: usize,
    /// Cached steps.
    pub cached: usize,
    /// Solve time in milliseconds.
    pub duration_ms: u64,
}

/// One protocol message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// C→A: first message.
    Hello {
        /// Protocol version.
        protocol: u32,
        /// `CARGO_PKG_VERSION`.
        version: String,
    },
    /// A→C: the handshake answer.
    Welcome(NodeInfo),
    /// C→A: build a platform.
    Solve(Box<SolveJob>),
    /// A→C: cache records the agent lacks.
    WantRecords {
        /// Keys.
        keys: Vec<Digest>,
    },
    /// C→A: the records asked for (those the coordinator still has).
    Records {
        /// Records.
        records: Vec<CacheRecord>,
    },
    /// A→C: context file contents the agent lacks.
    WantFiles {
        /// Request id.
        id: u64,
        /// Content digests.
        digests: Vec<Digest>,
    },
    /// Either way: a blob follows in data frames, `size` bytes in all.
    Blob {
        /// Content digest.
        digest: Digest,
        /// Size in bytes.
        size: u64,
        /// Where it goes.
        dest: BlobDest,
    },
    /// A→C: a progress event of the build.
    Event {
        /// The event.
        event: Event,
    },
    /// A→C: make a base image available.
    Pull {
        /// Request id.
        id: u64,
        /// The image.
        image: ImageRef,
    },
    /// A→C: send these store blobs.
    Fetch {
        /// Request id.
        id: u64,
        /// Digests.
        digests: Vec<Digest>,
    },
    /// A→C: one request of a RUN step to the ssh-agent of `--ssh` id
    /// `ssh_id`, made on the step's connection `conn`; the coordinator
    /// answers with [`ReplyBody::SshAgent`].
    SshAgent {
        /// Request id.
        id: u64,
        /// The `--ssh` id.
        ssh_id: String,
        /// The step's connection to the node's agent socket (requests of
        /// one connection go to one connection to the coordinator's agent).
        conn: u64,
        /// The request message (without its length prefix).
        request: AgentBytes,
    },
    /// A→C: the step closed its connection `conn` to the agent of
    /// `ssh_id`; no answer.
    SshAgentClose {
        /// The `--ssh` id.
        ssh_id: String,
        /// The connection.
        conn: u64,
    },
    /// C→A: answer to `Pull`, `Fetch`, `WantFiles` or `SshAgent`.
    Reply {
        /// Request id.
        id: u64,
        /// The answer, or an error message.
        result: Result<ReplyBody, String>,
    },
    /// A→C: the build succeeded.
    Solved(Box<Solved>),
    /// A→C: the build failed.
    Failed {
        /// The error, formatted.
        message: String,
        /// The failing step, when a step failed.
        step: Option<StepFailure>,
    },
    /// C→A: send these blobs of the result.
    WantBlobs {
        /// Digests.
        digests: Vec<Digest>,
    },
    /// A→C: all requested blobs were sent.
    BlobsDone,
    /// A→C: the agent is alive (sent every few seconds, whatever it does).
    Heartbeat,
    /// Either way: a fatal error; the sender closes the connection.
    Error {
        /// Message.
        message: String,
    },
}

impl Message {
    /// The message's name for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Welcome(_) => "welcome",
            Message::Solve(_) => "solve",
            Message::WantRecords { .. } => "want_records",
            Message::Records { .. } => "records",
            Message::WantFiles { .. } => "want_files",
            Message::Blob { .. } => "blob",
            Message::Event { .. } => "event",
            Message::Pull { .. } => "pull",
            Message::Fetch { .. } => "fetch",
            Message::SshAgent { .. } => "ssh_agent",
            Message::SshAgentClose { .. } => "ssh_agent_close",
            Message::Reply { .. } => "reply",
            Message::Solved(_) => "solved",
            Message::Failed { .. } => "failed",
            Message::WantBlobs { .. } => "want_blobs",
            Message::BlobsDone => "blobs_done",
            Message::Heartbeat => "heartbeat",
            Message::Error { .. } => "error",
        }
    }
}

/// One frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A JSON message.
    Json(Vec<u8>),
    /// Blob bytes.
    Data(Vec<u8>),
}

/// Reads frames from the peer.
pub struct FrameReader<R> {
    inner: R,
    peer: String,
    max: usize,
    idle: Option<std::time::Duration>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames from `inner`; `peer` names the other end in errors.
    pub fn new(inner: R, peer: impl Into<String>) -> Self {
        FrameReader {
            inner,
            peer: peer.into(),
            max: MAX_FRAME,
            idle: None,
        }
    }

    /// Fails every read that gets no byte at all for `limit` with
    /// [`RemoteError::Silent`] (the coordinator's side: agents send
    /// heartbeats, so silence means a hung agent or node).
    pub fn with_idle_limit(mut self, limit: std::time::Duration) -> Self {
        self.idle = Some(limit);
        self
    }

    /// One read from the stream, bounded by the silence limit.
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<io::Result<usize>, RemoteError> {
        match self.idle {
            None => Ok(self.inner.read(buf).await),
            Some(limit) => tokio::time::timeout(limit, self.inner.read(buf))
                .await
                .map_err(|_| RemoteError::Silent {
                    peer: self.peer.clone(),
                    limit,
                }),
        }
    }

    /// Lowers the frame size limit of every kind (tests).
    pub fn with_limit(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// The peer's name.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The next frame; `None` at a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, RemoteError> {
        let mut head = [0u8; 5];
        let mut got = 0;
        while got < head.len() {
            match self.read_some(&mut head[got..]).await? {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(RemoteError::Truncated {
                        peer: self.peer.clone(),
                        expected: head.len(),
                        got,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(lost(&self.peer, &e)),
            }
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = head[4];
        if kind != KIND_JSON && kind != KIND_DATA {
            return Err(RemoteError::Protocol {
                peer: self.peer.clone(),
                what: format!("unknown frame kind {kind}"),
            });
        }
        // Checked before the buffer is allocated.
        let max = self.max.min(max_payload(kind));
        if len > max {
            return Err(RemoteError::Oversized {
                peer: self.peer.clone(),
                what: kind_name(kind),
                len,
                max,
            });
        }
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match self.read_some(&mut buf[got..]).await? {
                Ok(0) => {
                    return Err(RemoteError::Truncated {
                        peer: self.peer.clone(),
                        expected: len,
                        got,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(lost(&self.peer, &e)),
            }
        }
        Ok(Some(if kind == KIND_JSON {
            Frame::Json(buf)
        } else {
            Frame::Data(buf)
        }))
    }

    /// The next message; `None` at a clean end of stream.
    pub async fn next_message(&mut self) -> Result<Option<Message>, RemoteError> {
        self.next_json().await
    }

    /// The next JSON frame decoded as `T`; `None` at a clean end of stream.
    pub async fn next_json<T: DeserializeOwned>(&mut self) -> Result<Option<T>, RemoteError> {
        match self.read_frame().await? {
            None => Ok(None),
            Some(Frame::Json(b)) => {
                serde_json::from_slice(&b)
                    .map(Some)
                    .map_err(|source| RemoteError::Decode {
                        peer: self.peer.clone(),
                        source,
                    })
            }
            Some(Frame::Data(_)) => Err(RemoteError::Protocol {
                peer: self.peer.clone(),
                what: "blob data without a blob header".into(),
            }),
        }
    }

    /// The next message; the end of stream is [`RemoteError::Lost`].
    pub async fn expect_message(&mut self) -> Result<Message, RemoteError> {
        self.next_message().await?.ok_or_else(|| RemoteError::Lost {
            peer: self.peer.clone(),
            reason: "the agent closed the connection".into(),
        })
    }

    /// Reads one blob's `size` bytes of data frames into `store`, verifying
    /// its digest and size before it appears under its name. Both ends
    /// receive blobs this way (layers, configs, context files).
    pub async fn read_blob_into(
        &mut self,
        store: &xbuild_oci::BlobStore,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RemoteError> {
        use std::io::Write;
        let mut w = store.writer(digest.algorithm())?;
        // A write error is kept and reported after the data is drained, so
        // the stream stays in step.
        let mut failed = None;
        self.read_data(size, |b| {
            if failed.is_none() {
                failed = w.write_all(b).err();
            }
            Ok(())
        })
        .await?;
        if let Some(source) = failed {
            return Err(RemoteError::Io {
                op: "write blob into",
                path: store.root().display().to_string(),
                source,
            });
        }
        w.commit_checked(Some(digest), Some(size))?;
        Ok(())
    }

    /// Reads `size` bytes of blob data frames into `sink`.
    pub async fn read_data(
        &mut self,
        size: u64,
        mut sink: impl FnMut(&[u8]) -> Result<(), RemoteError>,
    ) -> Result<(), RemoteError> {
        let mut left = size;
        while left > 0 {
            match self.read_frame().await? {
                Some(Frame::Data(b)) => {
                    if b.len() as u64 > left {
                        return Err(RemoteError::Protocol {
                            peer: self.peer.clone(),
                            what: format!("blob data overruns its announced size of {size} bytes"),
                        });
                    }
                    left -= b.len() as u64;
                    sink(&b)?;
                }
                Some(Frame::Json(_)) => {
                    return Err(RemoteError::Protocol {
                        peer: self.peer.clone(),
                        what: format!("a message arrived with {left} bytes of a blob outstanding"),
                    })
                }
                None => {
                    return Err(RemoteError::Lost {
                        peer: self.peer.clone(),
                        reason: format!("end of stream with {left} bytes of a blob outstanding"),
                    })
                }
            }
        }
        Ok(())
    }
}

/// Writes frames to the peer, counting the bytes.
pub struct FrameWriter<W> {
    inner: W,
    peer: String,
    sent: Arc<AtomicU64>,
    idle: Option<std::time::Duration>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Frames to `inner`; `peer` names the other end in errors.
    pub fn new(inner: W, peer: impl Into<String>) -> Self {
        FrameWriter {
            inner,
            peer: peer.into(),
            sent: Arc::new(AtomicU64::new(0)),
            idle: None,
        }
    }

    /// Fails a frame (at most [`CHUNK`] bytes) or a flush that the peer
    /// does not take within `limit` with [`RemoteError::Silent`]: a stopped
    /// agent stops reading, and its pipe fills.
    pub fn with_idle_limit(mut self, limit: std::time::Duration) -> Self {
        self.idle = Some(limit);
        self
    }

    /// The counter of bytes written (frame headers included).
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }

    /// Bytes written so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    async fn frame(&mut self, kind: u8, payload: &[u8]) -> Result<(), RemoteError> {
        if payload.len() > max_payload(kind) {
            return Err(RemoteError::Oversized {
                peer: self.peer.clone(),
                what: kind_name(kind),
                len: payload.len(),
                max: max_payload(kind),
            });
        }
        let mut head = [0u8; 5];
        head[..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        head[4] = kind;
        let inner = &mut self.inner;
        bounded(self.idle, &self.peer, async {
            inner.write_all(&head).await?;
            inner.write_all(payload).await
        })
        .await?;
        self.sent
            .fetch_add((head.len() + payload.len()) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &Message) -> Result<(), RemoteError> {
        self.send_json(msg).await
    }

    /// Sends any JSON value as a message frame.
    pub async fn send_json<T: Serialize>(&mut self, msg: &T) -> Result<(), RemoteError> {
        let bytes = serde_json::to_vec(msg).map_err(|source| RemoteError::Decode {
            peer: self.peer.clone(),
            source,
        })?;
        self.frame(KIND_JSON, &bytes).await
    }

    /// Sends raw data frames.
    pub async fn send_data(&mut self, data: &[u8]) -> Result<(), RemoteError> {
        for chunk in data.chunks(CHUNK) {
            self.frame(KIND_DATA, chunk).await?;
        }
        Ok(())
    }

    /// Sends a blob header and the file's bytes, streamed in chunks. The
    /// file must hold exactly `size` bytes.
    pub async fn send_file(
        &mut self,
        digest: &Digest,
        size: u64,
        dest: BlobDest,
        path: &std::path::Path,
    ) -> Result<(), RemoteError> {
        let io_err = |source| RemoteError::Io {
            op: "read",
            path: path.display().to_string(),
            source,
        };
        let mut f = tokio::fs::File::open(path).await.map_err(io_err)?;
        self.send(&Message::Blob {
            digest: digest.clone(),
            size,
            dest,
        })
        .await?;
        let mut buf = vec![0u8; CHUNK];
        let mut left = size;
        while left > 0 {
            let want = (left as usize).min(CHUNK);
            f.read_exact(&mut buf[..want]).await.map_err(io_err)?;
            self.frame(KIND_DATA, &buf[..want]).await?;
            left -= want as u64;
        }
        Ok(())
    }

    /// Flushes buffered bytes.
    pub async fn flush(&mut self) -> Result<(), RemoteError> {
        bounded(self.idle, &self.peer, self.inner.flush()).await
    }

    /// Flushes and closes the write side.
    pub async fn shutdown(&mut self) -> Result<(), RemoteError> {
        self.inner
            .shutdown()
            .await
            .map_err(|e| lost(&self.peer, &e))
    }
}

/// Runs one write, bounded by the silence limit when there is one.
async fn bounded<T>(
    idle: Option<std::time::Duration>,
    peer: &str,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, RemoteError> {
    let r = match idle {
        None => f.await,
        Some(limit) => tokio::time::timeout(limit, f)
            .await
            .map_err(|_| RemoteError::Silent {
                peer: peer.to_string(),
                limit,
            })?,
    };
    r.map_err(|e| lost(peer, &e))
}

/// Checks the other end's handshake values.
pub fn check_version(peer: &str, protocol: u32, version: &str) -> Result<(), RemoteError> {
    if protocol != PROTOCOL_VERSION {
        return Err(RemoteError::Version {
            peer: peer.to_string(),
            ours: PROTOCOL_VERSION,
            theirs: protocol,
            our_version: env!("CARGO_PKG_VERSION").to_string(),
            their_version: version.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames_of(bytes: Vec<u8>, limit: usize) -> Vec<Result<Option<Frame>, String>> {
        let mut r = FrameReader::new(&bytes[..], "test peer").with_limit(limit);
        let mut out = Vec::new();
        loop {
            let f = r.read_frame().await;
            let stop = !matches!(f, Ok(Some(_)));
            out.push(f.map_err(|e| e.to_string()));
            if stop {
                return out;
            }
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    /// A header alone, announcing `len` bytes of `kind`.
    fn header(len: u32, kind: u8) -> Vec<u8> {
        let mut b = len.to_be_bytes().to_vec();
        b.push(kind);
        b
    }

    #[test]
    fn each_frame_kind_has_its_own_cap_checked_before_the_payload_is_read() {
        rt().block_on(async {
            // Only the header is there: a reader that allocated and read
            // would report a truncated frame, not an oversized one.
            let f = frames_of(header(CHUNK as u32 + 1, KIND_DATA), MAX_FRAME).await;
            let e = f[0].as_ref().unwrap_err();
            assert!(
                e.contains(&format!(
                    "test peer: data frame of {} bytes exceeds the limit of {CHUNK} bytes",
                    CHUNK + 1
                )),
                "{e}"
            );
            let f = frames_of(header(MAX_FRAME as u32 + 1, KIND_JSON), MAX_FRAME).await;
            let e = f[0].as_ref().unwrap_err();
            assert!(
                e.contains(&format!(
                    "test peer: message frame of {} bytes exceeds the limit of {MAX_FRAME} bytes",
                    MAX_FRAME + 1
                )),
                "{e}"
            );
            // The largest header is refused the same way.
            let f = frames_of(header(u32::MAX, KIND_JSON), MAX_FRAME).await;
            assert!(f[0].as_ref().unwrap_err().contains("exceeds the limit"));
            // A full-size data frame and a message larger than a chunk pass.
            let mut b = header(CHUNK as u32, KIND_DATA);
            b.extend(vec![5u8; CHUNK]);
            let json = serde_json::to_vec(&"x".repeat(CHUNK * 2)).unwrap();
            b.extend(header(json.len() as u32, KIND_JSON));
            b.extend(&json);
            let f = frames_of(b, MAX_FRAME).await;
            assert!(
                matches!(&f[0], Ok(Some(Frame::Data(d))) if d.len() == CHUNK),
                "{f:?}"
            );
            assert!(matches!(&f[1], Ok(Some(Frame::Json(j))) if *j == json));
            assert!(matches!(&f[2], Ok(None)));
            // The writer never sends what the reader would refuse.
            let mut buf = Vec::new();
            let mut w = FrameWriter::new(&mut buf, "peer");
            let e = w
                .frame(KIND_DATA, &vec![0u8; CHUNK + 1])
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("data frame of"), "{e}");
            assert!(buf.is_empty());
        });
    }

    #[test]
    fn messages_and_data_round_trip() {
        rt().block_on(async {
            let mut buf = Vec::new();
            let mut w = FrameWriter::new(&mut buf, "peer");
            w.send(&Message::Hello {
                protocol: PROTOCOL_VERSION,
                version: "9.9.9".into(),
            })
            .await
            .unwrap();
            let data = vec![7u8; CHUNK * 2 + 10];
            w.send_data(&data).await.unwrap();
            let sent = w.sent();
            assert_eq!(sent as usize, buf.len());
            let mut r = FrameReader::new(&buf[..], "peer");
            match r.next_message().await.unwrap() {
                Some(Message::Hello { protocol, version }) => {
                    assert_eq!((protocol, version.as_str()), (PROTOCOL_VERSION, "9.9.9"))
                }
                other => panic!("{other:?}"),
            }
            let mut got = Vec::new();
            r.read_data(data.len() as u64, |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(got, data);
            assert!(r.next_message().await.unwrap().is_none());
        });
    }

    #[test]
    fn truncated_oversized_and_garbage_frames_are_errors() {
        rt().block_on(async {
            // A header announcing 10 bytes, followed by 3.
            let mut b = 10u32.to_be_bytes().to_vec();
            b.push(KIND_JSON);
            b.extend_from_slice(b"{\"a");
            let f = frames_of(b, MAX_FRAME).await;
            assert!(
                f[0].as_ref()
                    .unwrap_err()
                    .contains("truncated frame: expected 10 bytes, got 3"),
                "{f:?}"
            );
            // A header cut short.
            let f = frames_of(vec![0, 0], MAX_FRAME).await;
            assert!(f[0].as_ref().unwrap_err().contains("truncated"), "{f:?}");
            // Oversized.
            let mut b = 1000u32.to_be_bytes().to_vec();
            b.push(KIND_DATA);
            let f = frames_of(b, 100).await;
            assert!(
                f[0].as_ref()
                    .unwrap_err()
                    .contains("frame of 1000 bytes exceeds the limit of 100 bytes"),
                "{f:?}"
            );
            // Unknown kind.
            let f = frames_of(vec![0, 0, 0, 1, 9, 0], MAX_FRAME).await;
            assert!(
                f[0].as_ref().unwrap_err().contains("unknown frame kind 9"),
                "{f:?}"
            );
            // Garbage JSON.
            let mut b = 4u32.to_be_bytes().to_vec();
            b.push(KIND_JSON);
            b.extend_from_slice(b"nope");
            let mut r = FrameReader::new(&b[..], "peer x");
            let e = r.next_message().await.unwrap_err().to_string();
            assert!(e.starts_with("peer x: malformed message"), "{e}");
            // Data where a message is expected.
            let mut b = 1u32.to_be_bytes().to_vec();
            b.push(KIND_DATA);
            b.push(0);
            let mut r = FrameReader::new(&b[..], "peer x");
            let e = r.next_message().await.unwrap_err().to_string();
            assert!(e.contains("blob data without a blob header"), "{e}");
            // Data overrunning the announced blob size.
            let mut buf = Vec::new();
            let mut w = FrameWriter::new(&mut buf, "p");
            w.send_data(&[1, 2, 3]).await.unwrap();
            let mut r = FrameReader::new(&buf[..], "peer x");
            let e = r.read_data(2, |_| Ok(())).await.unwrap_err().to_string();
            assert!(e.contains("overruns its announced size of 2"), "{e}");
        });
    }

    #[test]
    fn lost_and_version_errors() {
        let e = check_version("node a", PROTOCOL_VERSION + 1, "7.0.0").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains(&format!("speaks protocol {PROTOCOL_VERSION}")),
            "{s}"
        );
        assert!(s.contains(&format!(
            "xbuild 7.0.0) speaks protocol {}",
            PROTOCOL_VERSION + 1
        )));
        assert!(s.contains(env!("CARGO_PKG_VERSION")));
        assert!(!e.is_lost());
        assert!(check_version("n", PROTOCOL_VERSION, "x").is_ok());
        let e = lost("node a", &io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(e.is_lost());
        assert_eq!(
            e.to_string(),
            "node a: connection lost: broken pipe (the agent exited)"
        );
    }

    #[test]
    fn ssh_agent_bytes_travel_as_base64_and_are_redacted_in_debug() {
        let m = Message::SshAgent {
            id: 3,
            ssh_id: "default".into(),
            conn: 9,
            request: AgentBytes(vec![0, 1, 2, 250, 255]),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"request\":\"AAEC+v8=\""), "{json}");
        match serde_json::from_str::<Message>(&json).unwrap() {
            Message::SshAgent { request, conn, .. } => {
                assert_eq!((request.0, conn), (vec![0, 1, 2, 250, 255], 9))
            }
            other => panic!("{other:?}"),
        }
        let d = format!("{m:?}");
        assert!(
            d.contains("<5 bytes redacted>") && !d.contains("250"),
            "{d}"
        );
        assert!(serde_json::from_str::<AgentBytes>("\"not base64!\"").is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut s = SecretValues::default();
        s.0.insert("token".into(), b"hunter2".to_vec());
        let d = format!("{s:?}");
        assert!(
            d.contains("token=<redacted>") && !d.contains("hunter2"),
            "{d}"
        );
    }
}
