//! Phase 1: one build graph per platform, base images resolved.

use crate::request::{BuildRequest, Session};
use crate::resolve::ResolveError;
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
///
/// Fails when the state directory cannot be opened or a platform cannot be
/// planned (the error names the Dockerfile line).
pub async fn plan(req: &BuildRequest, session: &Session) -> Result<Planned, ResolveError> {
    let engine = session.open_engine("local")?;
    let mut graphs = crate::resolve::plan_resolved(
        &req.dockerfile,
        &req.plan,
        &req.platforms,
        &session.registry,
        engine.store(),
        req.pull,
    )
    .await?;
    for g in &mut graphs {
        g.labels = req.labels.clone();
    }
    let project = project_id(req);
    graphs.iter_mut().for_each(|g| g.project = project.clone());
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

/// The identity of a project for cache explanations: a short hash of the
/// canonical context directory and the Dockerfile's path (`-` for a
/// context on standard input). Builds compare their steps' records only
/// within one project; it never enters a cache key.
pub fn project_id(req: &BuildRequest) -> String {
    let canon = |p: &std::path::Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .to_string_lossy()
            .into_owned()
    };
    let ctx = req
        .context_dir
        .as_deref()
        .map(canon)
        .unwrap_or_else(|| "-".into());
    let file = match &req.dockerfile_in_context {
        Some(rel) => rel.clone(),
        None => canon(std::path::Path::new(&req.dockerfile.display)),
    };
    let d = xbuild_oci::Digest::sha256_of(format!("{ctx}\0{file}").as_bytes());
    format!("project:{}", &d.hex()[..16])
}
