//! Phase 3: every platform at once on its worker. The first platform that
//! fails cancels every other platform at once (their futures are dropped,
//! which stops local steps' waits and closes agents' channels), as
//! `docker buildx` does; each platform's state is reported.

use crate::merge::{Presolved, SharedStage};
use crate::report::{PlatformResult, SharedResult};
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
    fn request(
        &self,
        graph: &'a BuildGraph,
        presolved: &'a [Presolved],
        events: &'a dyn EventSink,
    ) -> SolveRequest<'a> {
        SolveRequest {
            graph,
            context_dir: self.context_dir,
            context: self.context,
            source: self.source,
            events,
            ids: self.ids,
            no_cache: self.no_cache,
            no_cache_filter: self.no_cache_filter,
            secrets: self.secrets,
            source_date_epoch: self.source_date_epoch,
            presolved,
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
    /// The work several targets shared, solved once, when there was some
    /// and it built.
    pub shared: Option<SharedResult>,
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
async fn solve_one<'a>(
    a: &Assignment,
    inputs: &SolveInputs<'a>,
    (graph, presolved): (&'a BuildGraph, &'a [Presolved]),
    events: &'a dyn EventSink,
) -> Result<PlatformResult, (String, EngineError)> {
    let worker = a.worker.name();
    let e = match a
        .worker
        .solve(inputs.request(graph, presolved, events))
        .await
    {
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
    match fallback
        .solve(inputs.request(graph, presolved, events))
        .await
    {
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
    // Work several targets share runs first, once; the targets then take
    // it from the cache (records travel to their workers by key, layers by
    // digest when a step reads them).
    let mut shared = None;
    if let Some(run) = &schedule.shared {
        let sink = SharedSink {
            inner: inputs.events,
            stages: &run.shared.stages,
        };
        let g = &run.shared.graph;
        match solve_one(&run.assignment, inputs, (g, &[]), &sink).await {
            Ok(r) => {
                shared = Some(SharedResult {
                    platform: g.platform.clone(),
                    served: run.shared.targets(),
                    stages: run.shared.stages.iter().map(|s| s.name.clone()).collect(),
                    worker: r.worker,
                    steps: r.steps,
                    cached: r.cached,
                    duration: r.duration,
                });
            }
            Err((worker, error)) => {
                // Reported on the first target it serves; the others did
                // not start.
                let first = run.shared.targets().into_iter().next();
                let at = schedule
                    .assignments
                    .iter()
                    .position(|a| Some(&a.platform) == first.as_ref())
                    .unwrap_or(0);
                if let Some(s) = states.get_mut(at) {
                    *s = Some(PlatformState::Failed { worker, error });
                }
                return finish(schedule, states, None);
            }
        }
    }
    {
        let mut running: FuturesUnordered<_> = schedule
            .assignments
            .iter()
            .zip(inputs.graphs)
            .enumerate()
            .map(|(i, (a, g))| async move {
                let presolved = schedule.presolved(i);
                (i, solve_one(a, inputs, (g, presolved), inputs.events).await)
            })
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
    finish(schedule, states, shared)
}

fn finish(
    schedule: &Schedule,
    states: Vec<Option<PlatformState>>,
    shared: Option<SharedResult>,
) -> Solved {
    Solved {
        shared,
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

/// The progress of the shared solve: each vertex is marked with the targets
/// it serves and counted against its whole stage (`[build 2/4]`).
struct SharedSink<'a> {
    inner: &'a dyn EventSink,
    stages: &'a [SharedStage],
}

impl EventSink for SharedSink<'_> {
    fn emit(&self, mut event: Event) {
        if let Event::Started {
            stage,
            total,
            shared_by,
            ..
        } = &mut event
        {
            if let Some(s) = self.stages.iter().find(|s| s.name == *stage) {
                *total = s.total;
                *shared_by = s.served.clone();
            }
        }
        self.inner.emit(event)
    }
}
