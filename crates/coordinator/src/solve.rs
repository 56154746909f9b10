//! Phase 3: every platform at once on its worker. The first platform that
//! fails cancels every other platform at once (their futures are dropped,
//! which stops local steps' waits and closes agents' channels), as
//! `docker buildx` does; each platform's state is reported.

use crate::report::PlatformResult;
use crate::schedule::{Assignment, Schedule};
use crate::worker::{WorkerError, WorkerOutput};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::path::Path;
use xbuild_engine::context::ContextIndex;
use xbuild_engine::events::{Event, EventSink};
use xbuild_engine::{EngineError, ImageSource, Secrets, SolveRequest, VertexIds};
use xbuild_oci::Platform;
use xbuild_plan::BuildGraph;

/// What every platform's solve shares.
pub struct SolveInputs<'a> {
    /// The graphs, in the order of the schedule's assignments.
    pub graphs: &'a [BuildGraph],
    /// The build context directory.
    pub context_dir: Option<&'a Path>,
    /// The scanned context.
    pub context: Option<&'a ContextIndex>,
    /// Where base images come from.
    pub source: &'a dyn ImageSource,
    /// Progress.
    pub events: &'a dyn EventSink,
    /// Vertex ids of this invocation.
    pub ids: &'a VertexIds,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--no-cache-filter`.
    pub no_cache_filter: &'a [String],
    /// Secret values.
    pub secrets: &'a Secrets,
    /// `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: Option<i64>,
}

impl<'a> SolveInputs<'a> {
    fn request(&self, graph: &'a BuildGraph) -> SolveRequest<'a> {
        SolveRequest {
            graph,
            context_dir: self.context_dir,
            context: self.context,
            source: self.source,
            events: self.events,
            ids: self.ids,
            no_cache: self.no_cache,
            no_cache_filter: self.no_cache_filter,
            secrets: self.secrets,
            source_date_epoch: self.source_date_epoch,
        }
    }
}

/// How one platform's solve ended.
#[derive(Debug)]
pub enum PlatformState {
    /// Built; the image is in the local store.
    Done(Box<PlatformResult>),
    /// Failed, with the worker it failed on.
    Failed {
        /// `local`, `qemu`, `node amd1`.
        worker: String,
        /// Why.
        error: EngineError,
    },
    /// Stopped because another platform failed.
    Cancelled,
}

/// One platform and its state.
#[derive(Debug)]
pub struct PlatformOutcome {
    /// The platform.
    pub platform: Platform,
    /// Its state.
    pub state: PlatformState,
}

/// Every platform's outcome, in the schedule's order.
#[derive(Debug)]
pub struct Solved {
    /// The outcomes.
    pub platforms: Vec<PlatformOutcome>,
}

impl Solved {
    /// Whether every platform built.
    pub fn ok(&self) -> bool {
        self.platforms
            .iter()
            .all(|p| matches!(p.state, PlatformState::Done(_)))
    }

    /// The built platforms, in order.
    pub fn done(&self) -> Vec<&PlatformResult> {
        self.platforms
            .iter()
            .filter_map(|p| match &p.state {
                PlatformState::Done(r) => Some(&**r),
                _ => None,
            })
            .collect()
    }
}

fn result_of(out: WorkerOutput) -> PlatformResult {
    PlatformResult {
        platform: out.result.platform.clone(),
        worker: out.worker,
        manifest: out.result.manifest.clone(),
        steps: out.result.steps,
        cached: out.result.cached,
        duration: out.result.duration,
        bytes_sent: out.bytes_sent,
    }
}

/// One platform on its worker, then on its fallback when the worker is
/// unreachable or lost (with a warning).
async fn solve_one(
    a: &Assignment,
    inputs: &SolveInputs<'_>,
    graph: &BuildGraph,
) -> Result<PlatformResult, (String, EngineError)> {
    let worker = a.worker.name();
    let e = match a.worker.solve(inputs.request(graph)).await {
        Ok(out) => return Ok(result_of(out)),
        Err(WorkerError::Build(e)) => return Err((worker, e)),
        Err(e) => e,
    };
    let Some(fallback) = &a.fallback else {
        return Err((
            worker.clone(),
            EngineError::Remote {
                worker,
                message: e.to_string(),
            },
        ));
    };
    let p = &a.platform;
    let message = match &e {
        WorkerError::Unreachable(m) => format!("{m}; building {p} on this machine instead"),
        _ => format!(
            "{e}; building {p} on this machine ({}) instead",
            fallback.name()
        ),
    };
    inputs.events.emit(Event::Warning { message });
    match fallback.solve(inputs.request(graph)).await {
        Ok(out) => Ok(result_of(out)),
        Err(WorkerError::Build(e)) => Err((fallback.name(), e)),
        Err(e) => Err((
            fallback.name(),
            EngineError::Remote {
                worker: fallback.name(),
                message: e.to_string(),
            },
        )),
    }
}

/// Solve every platform of `schedule` concurrently. When one fails, the
/// others are cancelled at once (their futures dropped) and reported as
/// [`PlatformState::Cancelled`] unless they had finished.
pub async fn solve(schedule: &Schedule, inputs: &SolveInputs<'_>) -> Solved {
    let n = schedule.assignments.len();
    let mut states: Vec<Option<PlatformState>> = (0..n).map(|_| None).collect();
    {
        let mut running: FuturesUnordered<_> = schedule
            .assignments
            .iter()
            .zip(inputs.graphs)
            .enumerate()
            .map(|(i, (a, g))| async move { (i, solve_one(a, inputs, g).await) })
            .collect();
        while let Some((i, r)) = running.next().await {
            match r {
                Ok(done) => states[i] = Some(PlatformState::Done(Box::new(done))),
                Err((worker, error)) => {
                    states[i] = Some(PlatformState::Failed { worker, error });
                    break;
                }
            }
        }
        // Dropping `running` here cancels whatever is still building.
    }
    Solved {
        platforms: schedule
            .assignments
            .iter()
            .zip(states)
            .map(|(a, s)| PlatformOutcome {
                platform: a.platform.clone(),
                state: s.unwrap_or(PlatformState::Cancelled),
            })
            .collect(),
    }
}
