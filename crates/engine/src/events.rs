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

/// Why a step missed the cache. A step may have several (its text and a
/// build arg changed); [`std::fmt::Display`] gives the one-line form the
/// progress stream shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MissReason {
    /// `--no-cache`.
    NoCache,
    /// `--no-cache-filter` names the stage.
    NoCacheFilter {
        /// The stage.
        stage: String,
    },
    /// An earlier step of the stage missed, so this one rebuilds.
    ParentMissed {
        /// The step's direct parent, which missed (`[build 2/5] RUN make`).
        step: String,
    },
    /// The instruction text (after expansion) differs from the last build's.
    InstructionChanged {
        /// The last build's text.
        old: String,
        /// This build's text.
        new: String,
    },
    /// A RUN step's options (`--ulimit`, `--add-host`, `--shm-size`)
    /// differ from the last build's.
    RunOptionsChanged {
        /// The last build's, as flags (empty: none).
        old: String,
        /// This build's.
        new: String,
    },
    /// Build args the step uses have other values (names only, never values).
    BuildArgsChanged {
        /// The args, sorted.
        names: Vec<String>,
    },
    /// Files the step reads from the build context changed.
    ContextFilesChanged {
        /// The first few changed, added or removed paths.
        paths: Vec<String>,
        /// How many more are not listed.
        more: usize,
    },
    /// The files the step reads from another stage or an image changed.
    SourceChanged {
        /// What (`stage build`, `image alpine:3`).
        from: String,
    },
    /// The stage's base changed (a re-pushed tag, or a rebuilt stage).
    BaseChanged {
        /// What (`image alpine:3`, `stage build`).
        base: String,
        /// The last build's digest or key.
        old: String,
        /// This build's.
        new: String,
    },
    /// A record exists, but its layer is gone from the content store.
    LayerMissing,
    /// Nothing was ever built for this step under this parent.
    NoRecord,
}

fn short(s: &str) -> &str {
    match s.split_once(':') {
        Some((_, hex)) if hex.len() > 12 => &s[..s.len() - hex.len() + 12],
        _ => s,
    }
}

impl std::fmt::Display for MissReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MissReason::NoCache => write!(f, "--no-cache"),
            MissReason::NoCacheFilter { stage } => write!(f, "--no-cache-filter {stage}"),
            MissReason::ParentMissed { step } => write!(f, "parent missed: {step}"),
            MissReason::InstructionChanged { old, new } => {
                write!(f, "instruction changed: {old:?} -> {new:?}")
            }
            MissReason::RunOptionsChanged { old, new } => {
                let none = |s: &str| {
                    if s.is_empty() {
                        "none".to_string()
                    } else {
                        format!("{s:?}")
                    }
                };
                write!(f, "RUN options changed: {} -> {}", none(old), none(new))
            }
            MissReason::BuildArgsChanged { names } => {
                let s = if names.len() == 1 { "" } else { "s" };
                write!(f, "build arg{s} {} changed", names.join(", "))
            }
            MissReason::ContextFilesChanged { paths, more } => {
                write!(f, "context files changed: {}", paths.join(", "))?;
                if *more > 0 {
                    write!(f, " (+{more} more)")?;
                }
                Ok(())
            }
            MissReason::SourceChanged { from } => write!(f, "files from {from} changed"),
            MissReason::BaseChanged { base, old, new } => {
                write!(f, "base {base} changed: {} -> {}", short(old), short(new))
            }
            MissReason::LayerMissing => write!(f, "cached layer missing from the content store"),
            MissReason::NoRecord => write!(f, "no cache record"),
        }
    }
}

/// The one-line form of several reasons.
pub fn reasons_text(causes: &[MissReason]) -> String {
    causes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
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
        /// Step number in the stage, as BuildKit numbers it (`2` of
        /// `[build 2/5]`): FROM of an image and filesystem steps (RUN,
        /// COPY, ADD, WORKDIR) are numbered; 0 for a vertex without a
        /// number (metadata-only instructions, FROM scratch or a stage).
        index: usize,
        /// Numbered steps in the stage.
        total: usize,
        /// The instruction as written (`RUN make`).
        name: String,
        /// Where it runs (`local`, `qemu`, `node amd1`).
        worker: String,
        /// The target platforms a shared vertex serves (it runs once for
        /// all of them); empty for a vertex of one platform.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        shared_by: Vec<Platform>,
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
        /// Human-readable reason (`instruction changed`, `build arg VERSION changed`, ...):
        /// the causes below, joined by `; `.
        reason: String,
        /// The same, structured (empty from older agents).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        causes: Vec<MissReason>,
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

/// The platform part of a vertex label: `linux/arm64`, or for a vertex
/// shared by several targets the list of them (`linux/amd64,linux/arm64`).
pub fn platform_label(platform: &Platform, shared_by: &[Platform]) -> String {
    if shared_by.len() > 1 {
        shared_by
            .iter()
            .map(Platform::to_string)
            .collect::<Vec<_>>()
            .join(",")
    } else {
        platform.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miss_events_carry_structured_causes_and_read_old_ones() {
        let e = Event::Miss {
            id: VertexId(3),
            reason: "build arg V changed".into(),
            causes: vec![MissReason::BuildArgsChanged {
                names: vec!["V".into()],
            }],
        };
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["type"], "miss");
        assert_eq!(j["causes"][0]["kind"], "build_args_changed");
        assert_eq!(j["causes"][0]["names"][0], "V");
        assert_eq!(serde_json::from_value::<Event>(j).unwrap(), e);
        let old: Event =
            serde_json::from_str(r#"{"type":"miss","id":1,"reason":"no cache record"}"#).unwrap();
        assert!(matches!(old, Event::Miss { causes, .. } if causes.is_empty()));
        let b = MissReason::BaseChanged {
            base: "image alpine:3".into(),
            old: format!("sha256:{}", "a".repeat(64)),
            new: format!("sha256:{}", "b".repeat(64)),
        };
        assert_eq!(
            b.to_string(),
            "base image alpine:3 changed: sha256:aaaaaaaaaaaa -> sha256:bbbbbbbbbbbb"
        );
    }
}
