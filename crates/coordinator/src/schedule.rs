//! Phase 2: which worker builds each platform.

use crate::nodes::NodePlan;
use crate::plan::Planned;
use crate::request::Session;
use crate::worker::{local_agent_for, AgentAccess, AgentWorker, LocalWorker, Worker};
use anyhow::{bail, Result};
use std::sync::Arc;
use xbuild_engine::events::{Event, EventSink};
use xbuild_oci::Platform;
use xbuild_plan::BuildGraph;

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

/// One assignment per platform, in the planned order.
#[derive(Debug)]
pub struct Schedule {
    /// The assignments.
    pub assignments: Vec<Assignment>,
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
) -> Result<Schedule> {
    let on_node = |p: &Platform| nodes.and_then(|n| n.node_for(p)).is_some();
    let unrunnable: Vec<String> = planned
        .graphs
        .iter()
        .filter(|g| !on_node(&g.platform))
        .filter_map(|g| xbuild_engine::check_platforms(g).err())
        .map(|e| e.to_string())
        .collect();
    if !unrunnable.is_empty() {
        bail!("{}", unrunnable.join("\n"));
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
                        message: format!("{e:#}; building {p} on this machine instead"),
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
/// planned order (tests inject fake workers this way).
pub fn schedule_with(
    planned: &Planned,
    mut pick: impl FnMut(&BuildGraph) -> Result<Assignment>,
) -> Result<Schedule> {
    let assignments = planned
        .graphs
        .iter()
        .map(&mut pick)
        .collect::<Result<Vec<_>>>()?;
    Ok(Schedule { assignments })
}
