//! The one progress stream of a build. The engine, the registry glue and
//! remote agents emit [`Event`]s; only the CLI renders them (plain, tty,
//! rawjson). Events are plain data so they can cross the agent protocol.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use xbuild_oci::Platform;

/// Identifies one vertex (a FROM or a step of one platform's graph) in the
/// stream. Unique within one build invocation; the CLI numbers vertices
/// (`#3`) in the order they start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VertexId(pub u64);

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The process's stdout.
    Stdout,
    /// The process's stderr.
    Stderr,
}

/// What bytes are moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transfer {
    /// Pulling a blob from a registry.
    Pull,
    /// Pushing a blob to a registry.
    Push,
    /// Sending build-context files to a node.
    Context,
    /// Writing an output (archive, local directory).
    Export,
}

/// One progress event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A vertex began (or was found in the cache: then `Cached` follows at once).
    Started {
        /// Vertex.
        id: VertexId,
        /// Target platform of the graph.
        platform: Platform,
        /// Stage display name (`build`, `stage-1`).
        stage: String,
        /// 1-based position in the stage, FROM being 1.
        index: usize,
        /// Number of vertices in the stage, FROM included.
        total: usize,
        /// The instruction text (`RUN make`).
        name: String,
        /// Where it runs (`local`, `qemu`, `node amd1`).
        worker: String,
    },
    /// The vertex's result came from the cache.
    Cached {
        /// Vertex.
        id: VertexId,
    },
    /// The vertex missed the cache, and why.
    Miss {
        /// Vertex.
        id: VertexId,
        /// Human-readable reason (`instruction changed`, `build arg VERSION changed`, ...).
        reason: String,
    },
    /// Output of a running step.
    Log {
        /// Vertex.
        id: VertexId,
        /// stdout or stderr.
        stream: LogStream,
        /// Time since the vertex started.
        elapsed: Duration,
        /// Raw bytes (may split lines; the renderer re-assembles them).
        data: Vec<u8>,
    },
    /// The vertex finished.
    Done {
        /// Vertex.
        id: VertexId,
        /// How long it ran.
        duration: Duration,
    },
    /// The vertex failed; the build stops.
    Failed {
        /// Vertex.
        id: VertexId,
        /// The error, fully formatted.
        error: String,
    },
    /// Bytes moved for a vertex (or for the build when `id` is `None`).
    Bytes {
        /// Vertex, if the transfer belongs to one.
        id: Option<VertexId>,
        /// Kind of transfer.
        kind: Transfer,
        /// What is moving (a digest, a reference, a file name).
        label: String,
        /// Bytes done so far.
        current: u64,
        /// Total, when known.
        total: Option<u64>,
    },
    /// Something the user should know that does not stop the build.
    Warning {
        /// Message.
        message: String,
    },
}

/// Receives events. Implementations must be cheap and never block for long.
pub trait EventSink: Send + Sync {
    /// Handle one event.
    fn emit(&self, event: Event);
}

/// A sink that drops everything (tests, `--progress quiet` internals).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _event: Event) {}
}

/// A sink that collects events in memory (tests).
#[derive(Debug, Default)]
pub struct VecSink(pub std::sync::Mutex<Vec<Event>>);

impl EventSink for VecSink {
    fn emit(&self, event: Event) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event);
        }
    }
}

impl VecSink {
    /// A copy of everything collected so far.
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl<F: Fn(Event) + Send + Sync> EventSink for F {
    fn emit(&self, event: Event) {
        self(event)
    }
}
