//! The build as a library, in explicit phases.
//!
//! A [`BuildRequest`] (plain data) goes through:
//!
//! 1. [`plan()`] — one build graph per platform, base images resolved, with
//!    the Dockerfile's warnings;
//! 2. [`schedule()`] — which [`Worker`] builds each platform (node, local
//!    agent, this machine), with a local fallback;
//! 3. [`solve()`] — every platform at once; the first failure cancels every
//!    other platform at once, and each platform's [`PlatformState`] is reported;
//! 4. [`assemble()`] — manifests, the index in the requested platform
//!    order, Docker media-type variants, annotation hooks;
//! 5. [`export()`] — each output (store tags, archives, local trees) and pushes;
//!    [`export_cache()`] for `--cache-to`;
//! 6. [`report()`] — the metadata file's JSON and the summary's data.
//!
//! Progress leaves only as engine [`Event`](xbuild_engine::events::Event)s
//! sent to the caller's [`EventSink`](xbuild_engine::events::EventSink), and
//! results as return values: this crate never prints.
//!
//! Errors are typed, one enum per module ([`ResolveError`], [`ScheduleError`],
//! [`AssembleError`], [`ExportError`], [`CacheIoError`], ...). Each variant
//! names what was being done and the file, reference or node concerned, and
//! keeps the lower crate's error as its [`source`](std::error::Error::source),
//! so a caller that prints the chain (`anyhow`'s `{:#}`, or [`error_chain`])
//! shows every cause once.

pub mod assemble;
pub mod attest;
pub mod cache_io;
pub mod export;
pub mod merge;
pub mod nodes;
pub mod plan;
pub mod report;
pub mod request;
pub mod resolve;
pub mod rewrite;
pub mod schedule;
pub mod solve;
pub mod worker;

pub use assemble::{assemble, AssembleHook, AssembleOptions, Assembled, Attach};
pub use cache_io::{export_cache, import_cache, CacheSpec};
pub use export::{export, Exported, OutputSpec};
pub use nodes::NodePlan;
pub use plan::{plan, Planned};
pub use report::{report, PlatformResult, Report, SharedResult};
pub use request::{scan_context, BuildRequest, DockerfileSource, Session};
pub use resolve::RegistrySource;
pub use rewrite::Rewrite;
pub use schedule::{schedule, schedule_with, Assignment, Schedule, SharedRun};
pub use solve::{solve, PlatformOutcome, PlatformState, SolveInputs, Solved};
pub use worker::{LocalWorker, Worker, WorkerError, WorkerOutput};

/// An error with its causes, `outer: cause: cause`, the way the CLI prints
/// errors (`anyhow`'s `{:#}`, leaving out a cause whose text is already
/// shown): for messages this crate builds around a typed error (warnings,
/// a worker's fallback reason).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = c.source();
    }
    out
}

/// Hidden first argument that turns the `xbuild` binary into the sandbox
/// init (the engine re-executes the binary so the multi-threaded build
/// never forks).
pub const SANDBOX_INIT_ARG: &str = "__xbuild-sandbox-init";
