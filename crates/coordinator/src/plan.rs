//! Phase 1: one build graph per platform, base images resolved.

use crate::request::{BuildRequest, Session};
use anyhow::Result;
use xbuild_plan::BuildGraph;

/// The graphs of a build and what the Dockerfile's checks found.
#[derive(Debug, Clone)]
pub struct Planned {
    /// One graph per requested platform, in the requested order.
    pub graphs: Vec<BuildGraph>,
    /// Warnings of the checks, formatted (`Dockerfile:3: message (Rule)`),
    /// in graph order.
    pub warnings: Vec<String>,
}

/// Plan every platform of `req` with its base images resolved (through
/// the session's registry, or the local store unless `req.pull`).
pub async fn plan(req: &BuildRequest, session: &Session) -> Result<Planned> {
    let engine = session.open_engine("local")?;
    let graphs = crate::resolve::plan_resolved(
        &req.dockerfile,
        &req.plan,
        &req.platforms,
        &session.registry,
        engine.store(),
        req.pull,
    )
    .await?;
    let warnings = graphs
        .iter()
        .flat_map(|g| &g.warnings)
        .map(|w| match &w.location {
            Some(l) => format!("{l}: {} ({})", w.message, w.rule),
            None => format!("{} ({})", w.message, w.rule),
        })
        .collect();
    Ok(Planned { graphs, warnings })
}
