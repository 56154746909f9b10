//! `xbuild build --call explain[,format=json]`: per platform and step, would
//! the build hit the cache, and why not — base images resolved, the context
//! hashed and keys computed exactly as a build would, nothing run.

use crate::cli::BuildArgs;
use anyhow::{Context, Result};
use xbuild_coordinator::DockerfileSource as LoadedDockerfile;
use xbuild_coordinator::{RegistrySource, Session};
use xbuild_engine::events::{reasons_text, NullSink};
use xbuild_engine::explain::ExplainStep;
use xbuild_engine::{Secrets, SolveRequest, VertexIds};
use xbuild_oci::Platform;
use xbuild_plan::PlanOptions;

/// Print the explanation.
pub fn run(
    args: &BuildArgs,
    df: &LoadedDockerfile,
    opts: &PlanOptions,
    platforms: &[Platform],
    json: bool,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let steps = rt.block_on(explain(args, df, opts, platforms))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&steps)?);
    } else {
        print!("{}", table(&steps));
    }
    Ok(())
}

async fn explain(
    args: &BuildArgs,
    df: &LoadedDockerfile,
    opts: &PlanOptions,
    platforms: &[Platform],
) -> Result<Vec<ExplainStep>> {
    let root = crate::paths::xbuild_root()?;
    let session = Session {
        registry: crate::config::registry(Some(&root))?,
        root,
    };
    let req = crate::request::base(args, df, opts, platforms);
    let engine = session.open_engine("local")?;
    let graphs = xbuild_coordinator::plan(&req, &session).await?.graphs;
    let context_dir = req.context_dir.clone();
    let index = xbuild_coordinator::scan_context(&req, &session)?;
    let source = RegistrySource {
        registry: session.registry.clone(),
    };
    let secrets = Secrets::default();
    let ids = VertexIds::new();
    let mut out = Vec::new();
    for g in &graphs {
        let req = SolveRequest {
            graph: g,
            context_dir: context_dir.as_deref(),
            context: index.as_ref(),
            source: &source,
            events: &NullSink,
            ids: &ids,
            no_cache: args.no_cache,
            no_cache_filter: &args.no_cache_filter,
            secrets: &secrets,
            source_date_epoch: None,
            presolved: &[],
        };
        out.extend(engine.explain(req).await?);
    }
    Ok(out)
}

/// The human table: one line per vertex.
pub fn table(steps: &[ExplainStep]) -> String {
    let label = |s: &ExplainStep| {
        if s.label.is_empty() {
            format!("[{} {}/{}] {}", s.stage, s.index, s.total, s.name)
        } else {
            s.label.clone()
        }
    };
    let width = steps
        .iter()
        .map(|s| label(s).chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 60);
    let mut out = format!(
        "{:<14} {:<width$} {:<6} REASON\n",
        "PLATFORM", "STEP", "CACHE"
    );
    for s in steps {
        let mut l = label(s);
        if l.chars().count() > width {
            l = l.chars().take(width - 3).collect::<String>() + "...";
        }
        let verdict = match (s.index, s.cached) {
            (1, _) => "-",
            (_, true) => "HIT",
            (_, false) => "MISS",
        };
        out.push_str(
            format!(
                "{:<14} {:<width$} {:<6} {}",
                s.platform.to_string(),
                l,
                verdict,
                reasons_text(&s.causes)
            )
            .trim_end(),
        );
        out.push('\n');
    }
    let misses = steps.iter().filter(|s| !s.cached).count();
    let total = steps.iter().filter(|s| s.index > 1).count();
    out.push_str(&format!(
        "{} of {total} step(s) would be cached, {misses} would run\n",
        total - misses
    ));
    out
}
