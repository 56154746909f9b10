//! Phase 2: which worker builds each platform.

use crate::merge::{Merged, Presolved, SharedGraph};
use crate::nodes::NodePlan;
use crate::plan::Planned;
use crate::request::Session;
use crate::worker::{local_agent_for, AgentAccess, AgentWorker, LocalWorker, Worker};
use std::sync::Arc;
use xbuild_engine::events::{Event, EventSink};
use xbuild_engine::EngineError;
use xbuild_oci::Platform;
use xbuild_plan::BuildGraph;

/// Why a build could not be scheduled.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// Platforms whose RUN steps cannot run on this machine and that no
    /// node builds (each error names the platform and the fix).
    #[error("{}", lines(.0))]
    Unrunnable(Vec<EngineError>),
    /// A platform's engine could not be opened.
    #[error(transparent)]
    Engine(#[from] crate::resolve::ResolveError),
}

fn lines(errors: &[EngineError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where one platform builds.
pub struct Assignment {
    /// The platform.
    pub platform: Platform,
    /// Its worker.
    pub worker: Box<dyn Worker>,
    /// Who builds it when `worker` cannot be reached or is lost (this
    /// machine); `None` when the worker is this machine already.
    pub fallback: Option<Box<dyn Worker>>,
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignment")
            .field("platform", &self.platform.to_string())
            .field("worker", &self.worker.name())
            .field("fallback", &self.fallback.as_ref().map(|w| w.name()))
            .finish()
    }
}

/// The shared prefixes of a build (work that does not depend on the target,
/// see [`crate::merge`]) and where they run: once, before the targets, on a
/// worker for their execution platform (a native one: a node for that
/// platform, else this machine).
#[derive(Debug)]
pub struct SharedRun {
    /// The shared stages as one graph.
    pub shared: SharedGraph,
    /// Its worker.
    pub assignment: Assignment,
    /// For each target graph (in the assignments' order), its presolved
    /// prefixes: `(stage, steps)`.
    pub presolved: Vec<Vec<Presolved>>,
}

/// One assignment per platform, in the planned order, and the shared run.
#[derive(Debug)]
pub struct Schedule {
    /// The assignments.
    pub assignments: Vec<Assignment>,
    /// The work shared by several targets, when there is some.
    pub shared: Option<SharedRun>,
}

impl Schedule {
    /// The presolved prefixes of the `i`th target graph.
    pub fn presolved(&self, i: usize) -> &[Presolved] {
        self.shared
            .as_ref()
            .and_then(|s| s.presolved.get(i))
            .map_or(&[], Vec::as_slice)
    }
}

/// Give each planned platform a worker: the node `nodes` chose for it (its
/// agent started over the node's SSH connection), else an
/// `XBUILD_LOCAL_AGENT` agent (tests), else this machine. A platform
/// whose RUN steps cannot run here and that no node builds fails the
/// whole build before any work starts. An `XBUILD_LOCAL_AGENT` that
/// cannot be parsed is a warning (`events`) and the platform builds here.
pub fn schedule(
    planned: &Planned,
    nodes: Option<&Arc<NodePlan>>,
    session: &Session,
    events: &dyn EventSink,
) -> Result<Schedule, ScheduleError> {
    let on_node = |p: &Platform| nodes.and_then(|n| n.node_for(p)).is_some();
    let merged = Merged::new(&planned.graphs);
    let shared = merged.shared_graph(&planned.graphs);
    let unrunnable: Vec<EngineError> = planned
        .graphs
        .iter()
        .enumerate()
        .filter(|(_, g)| !on_node(&g.platform))
        .filter_map(|(i, g)| xbuild_engine::check_platforms_except(g, &merged.presolved(i)).err())
        .chain(
            shared
                .iter()
                .filter(|s| !on_node(&s.graph.platform))
                .filter_map(|s| xbuild_engine::check_platforms(&s.graph).err()),
        )
        .collect();
    if !unrunnable.is_empty() {
        return Err(ScheduleError::Unrunnable(unrunnable));
    }
    schedule_with(planned, |g| {
        let p = &g.platform;
        let engine = session.open_engine(crate::resolve::local_worker(p))?;
        let local = LocalWorker::new(engine.clone(), p);
        let remote = match nodes.and_then(|n| Some((n, n.node_for(p)?))) {
            Some((plan, name)) => Some(AgentWorker::new(
                engine,
                name.to_string(),
                AgentAccess::Node(plan.clone()),
            )),
            None => match local_agent_for(p) {
                Ok(Some((name, root))) => {
                    Some(AgentWorker::new(engine, name, AgentAccess::Spawn(root)))
                }
                Ok(None) => None,
                Err(e) => {
                    events.emit(Event::Warning {
                        message: format!(
                            "{}; building {p} on this machine instead",
                            crate::error_chain(&e)
                        ),
                    });
                    None
                }
            },
        };
        Ok(match remote {
            Some(r) => Assignment {
                platform: p.clone(),
                worker: Box::new(r),
                fallback: Some(Box::new(local)),
            },
            None => Assignment {
                platform: p.clone(),
                worker: Box::new(local),
                fallback: None,
            },
        })
    })
}

/// A schedule whose workers `pick` chooses for each planned graph, in the
/// planned order (tests inject fake workers this way), then for the graph
/// of the stages several targets share, if any (its platform is the one
/// those stages execute on).
pub fn schedule_with(
    planned: &Planned,
    mut pick: impl FnMut(&BuildGraph) -> Result<Assignment, ScheduleError>,
) -> Result<Schedule, ScheduleError> {
    let assignments = planned
        .graphs
        .iter()
        .map(&mut pick)
        .collect::<Result<Vec<_>, _>>()?;
    let merged = Merged::new(&planned.graphs);
    let shared = match merged.shared_graph(&planned.graphs) {
        Some(shared) => Some(SharedRun {
            assignment: pick(&shared.graph)?,
            presolved: (0..planned.graphs.len())
                .map(|i| merged.presolved(i))
                .collect(),
            shared,
        }),
        None => None,
    };
    Ok(Schedule {
        assignments,
        shared,
    })
}
