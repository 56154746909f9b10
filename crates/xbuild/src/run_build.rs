//! `xbuild build` when it really builds: plan with resolved bases, solve
//! every platform concurrently on this machine, assemble the index, then
//! tag, export and push. Nothing is pushed unless every platform built.

use crate::build::LoadedDockerfile;
use crate::cli::{BuildArgs, ProgressMode};
use crate::coordinator::{self, PlatformResult, RegistrySource};
use crate::output::{self, OutputSpec};
use crate::progress::{Renderer, Style};
use crate::Exit;
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use xbuild_engine::context::{self, ContextIndex, HashCache, ScanOptions};
use xbuild_engine::events::EventSink;
use xbuild_engine::{EngineError, Secrets, SolveRequest, VertexIds};
use xbuild_oci::reference::Reference;
use xbuild_oci::{Descriptor, Platform};
use xbuild_plan::PlanOptions;
use xbuild_registry::{Progress, Registry};

fn style(mode: ProgressMode) -> Style {
    match mode {
        ProgressMode::Quiet => Style::Quiet,
        ProgressMode::Rawjson => Style::RawJson,
        ProgressMode::Plain => Style::Plain,
        ProgressMode::Tty => Style::Tty,
        ProgressMode::Auto if std::io::IsTerminal::is_terminal(&std::io::stderr()) => Style::Tty,
        ProgressMode::Auto => Style::Plain,
    }
}

/// The Dockerfile's path relative to the context, when it lies inside it
/// (so `<Dockerfile>.dockerignore` is found and the file is always sent).
pub(crate) fn dockerfile_rel(context_dir: &Path, args: &BuildArgs) -> Option<String> {
    let file = match &args.file {
        Some(f) => f.clone(),
        None => context_dir.join("Dockerfile"),
    };
    let ctx = std::fs::canonicalize(context_dir).ok()?;
    let f = std::fs::canonicalize(&file).ok()?;
    f.strip_prefix(&ctx)
        .ok()
        .map(|p| p.to_string_lossy().replace('\\', "/"))
}

/// Lines of an instruction shown at most; longer spans show their first and
/// last lines around a count of the ones left out.
const EXCERPT_MAX_SPAN: usize = 12;
/// Characters of one line shown at most.
const EXCERPT_MAX_WIDTH: usize = 240;

/// A few lines of the Dockerfile around `line`, numbered, the line marked.
/// Bounded: a span of thousands of continuation lines or a megabyte-long
/// line does not flood the terminal.
pub fn excerpt(text: &str, file: &str, start: usize, end: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = start.saturating_sub(3).max(1);
    let to = (end + 2).min(lines.len());
    let mut s = format!("{file}:{start}\n--------------------\n");
    let skip = if end.saturating_sub(start) + 1 > EXCERPT_MAX_SPAN {
        Some((start + 6, end.saturating_sub(3)))
    } else {
        None
    };
    for n in from..=to {
        if let Some((a, b)) = skip {
            if n == a {
                s.push_str(&format!(">>>  ... | ({} more lines)\n", b + 1 - a));
            }
            if (a..=b).contains(&n) {
                continue;
            }
        }
        let mark = if (start..=end).contains(&n) {
            ">>>"
        } else {
            "   "
        };
        let line = lines.get(n - 1).unwrap_or(&"");
        let shown: String = line.chars().take(EXCERPT_MAX_WIDTH).collect();
        let more = if shown.len() < line.len() { " …" } else { "" };
        s.push_str(&format!("{mark} {n:>4} | {shown}{more}\n"));
    }
    s.push_str("--------------------");
    s
}

/// The build context directory (none for `-`) and its index: every file
/// hashed, with checksums remembered between builds under `root`.
pub fn scan_context(
    root: &Path,
    args: &BuildArgs,
) -> Result<(Option<PathBuf>, Option<ContextIndex>)> {
    if args.context == "-" {
        return Ok((None, None));
    }
    let dir = PathBuf::from(&args.context);
    let rel = dockerfile_rel(&dir, args);
    let mut cache = HashCache::for_context(root, &dir).ok();
    let idx = context::scan(
        &dir,
        rel.as_deref(),
        &ScanOptions::default(),
        cache.as_mut(),
    )
    .with_context(|| format!("reading the build context {}", dir.display()))?;
    if let Some(c) = cache.as_mut() {
        let _ = c.save();
    }
    Ok((Some(dir), Some(idx)))
}

/// `--build-arg SOURCE_DATE_EPOCH=N` (as BuildKit reads it), else the
/// `SOURCE_DATE_EPOCH` environment variable (as buildx passes it on).
fn source_date_epoch(build_arg: Option<&str>) -> Result<Option<i64>> {
    let value = match build_arg {
        Some(v) => Ok(v.to_string()),
        None => std::env::var("SOURCE_DATE_EPOCH"),
    };
    match value {
        Ok(v) if !v.trim().is_empty() => {
            Ok(Some(v.trim().parse().map_err(|_| {
                anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")
            })?))
        }
        _ => Ok(None),
    }
}

/// Build, export and push. Returns after printing the summary.
pub fn run(
    args: &BuildArgs,
    df: &LoadedDockerfile,
    opts: &PlanOptions,
    platforms: &[Platform],
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(build(args, df, opts, platforms))
}

async fn build(
    args: &BuildArgs,
    df: &LoadedDockerfile,
    opts: &PlanOptions,
    platforms: &[Platform],
) -> Result<()> {
    let started = Instant::now();
    let outputs = output::outputs_from_args(&args.outputs, args.push)?;
    let push = outputs
        .iter()
        .any(|o| matches!(o, OutputSpec::Image { push: true, .. }));
    if push
        && args.tags.is_empty()
        && !outputs
            .iter()
            .any(|o| matches!(o, OutputSpec::Image { names, .. } if !names.is_empty()))
    {
        anyhow::bail!("--push needs a name to push to: give -t REGISTRY/REPO:TAG");
    }
    // Validate every name before any work.
    for t in &args.tags {
        t.parse::<Reference>()
            .map_err(|e| anyhow!("invalid tag {t:?}: {e}"))?;
    }
    let secrets = Secrets::from(coordinator::parse_secrets(&args.secrets)?);
    let (cache_to, cache_from) = crate::cache_io::parse_args(&args.cache_to, &args.cache_from)?;
    let epoch = source_date_epoch(opts.build_args.get("SOURCE_DATE_EPOCH").map(String::as_str))?;
    let root = crate::paths::xbuild_root()?;
    let renderer = Renderer::stderr(style(if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    }));
    let registry = crate::config::registry(Some(&root))?;

    // The engine for planning-time lookups; one per worker kind for solving.
    let engine = coordinator::open_engine(root.clone(), "local")?;
    let graphs =
        coordinator::plan_resolved(df, opts, platforms, &registry, engine.store(), args.pull)
            .await?;
    for g in &graphs {
        for w in &g.warnings {
            renderer.emit(xbuild_engine::events::Event::Warning {
                message: match &w.location {
                    Some(l) => format!("{l}: {} ({})", w.message, w.rule),
                    None => format!("{} ({})", w.message, w.rule),
                },
            });
        }
    }

    // Where each platform builds: configured nodes are checked and the
    // plan printed before any work starts. Their connections stay open for
    // the agents of this build.
    let show_plan =
        !args.quiet && !matches!(args.progress, ProgressMode::Quiet | ProgressMode::Rawjson);
    let node_plan = crate::nodes::plan_build(platforms, &args.nodes, show_plan).await?;
    let on_node = |p: &Platform| node_plan.as_ref().and_then(|n| n.node_for(p)).is_some();

    // A platform whose RUN steps cannot execute here (and that no node
    // builds) fails the whole build before any work starts, naming the
    // platform and the fix.
    let unrunnable: Vec<String> = graphs
        .iter()
        .filter(|g| !on_node(&g.platform))
        .filter_map(|g| xbuild_engine::check_platforms(g).err())
        .map(|e| e.to_string())
        .collect();
    if !unrunnable.is_empty() {
        anyhow::bail!("{}", unrunnable.join("\n"));
    }

    // The context is scanned and hashed once and shared by every platform.
    let (context_dir, index) = scan_context(&root, args)?;

    let source = RegistrySource {
        registry: registry.clone(),
    };
    let key_inputs = crate::cache_io::KeyInputs {
        context_dir: context_dir.as_deref(),
        index: index.as_ref(),
        source: &source,
    };
    let (imported, fetched) = crate::cache_io::import(
        &engine,
        &registry,
        &cache_from,
        &graphs,
        &key_inputs,
        &renderer,
    )
    .await?;
    if !cache_from.is_empty() && !args.quiet && args.progress != ProgressMode::Quiet {
        eprintln!("cache import: {imported} record(s) imported, {fetched} layer(s) fetched");
    }
    let ids = VertexIds::new();
    let mut engines = Vec::new();
    for g in &graphs {
        engines.push(coordinator::open_engine(
            root.clone(),
            coordinator::local_worker(&g.platform),
        )?);
    }
    let solves = graphs.iter().zip(engines.iter()).map(|(g, eng)| {
        let req = SolveRequest {
            graph: g,
            context_dir: context_dir.as_deref(),
            context: index.as_ref(),
            source: &source,
            events: &renderer,
            ids: &ids,
            no_cache: args.no_cache,
            no_cache_filter: &args.no_cache_filter,
            secrets: &secrets,
            source_date_epoch: epoch,
        };
        crate::workers::solve(eng, req, node_plan.as_ref())
    });
    let results = futures_util::future::join_all(solves).await;
    if let Some(n) = &node_plan {
        n.pool.close_all().await;
    }

    let mut done = Vec::new();
    let mut failures = Vec::new();
    for (g, r) in graphs.iter().zip(results) {
        match r {
            Ok(solved) => done.push(PlatformResult {
                platform: solved.result.platform.clone(),
                worker: solved.worker,
                manifest: solved.result.manifest.clone(),
                steps: solved.result.steps,
                cached: solved.result.cached,
                duration: solved.result.duration,
                bytes_sent: solved.bytes_sent,
            }),
            Err(e) => failures.push((g.platform.clone(), e)),
        }
    }
    if !failures.is_empty() {
        renderer.finish();
        if !renderer.shows_logs() {
            for (name, lines) in renderer.failures() {
                eprintln!("{name}");
                for l in lines {
                    eprintln!("  {l}");
                }
            }
        }
        for (p, e) in &failures {
            eprintln!();
            if let EngineError::Step { location, .. } = e {
                eprintln!(
                    "{}",
                    excerpt(
                        &df.text,
                        &location.file,
                        location.start_line,
                        location.end_line
                    )
                );
            }
            let msg = match e {
                EngineError::Step {
                    location,
                    instruction,
                    source,
                    ..
                } => format!("{location}: {instruction}: {source}"),
                other => other.to_string(),
            };
            let worker = match e.root_cause() {
                EngineError::Remote { worker, .. } => worker.clone(),
                _ => coordinator::local_worker(p).to_string(),
            };
            eprintln!("error: [{p} @ {worker}] {msg}");
        }
        if !done.is_empty() {
            eprintln!(
                "note: nothing was pushed; the images of {} are in the local store",
                done.iter()
                    .map(|d| d.platform.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        return Err(Exit(1).into());
    }

    // One platform: its manifest. Several: an index over them.
    let store = engine.store();
    let final_desc: Descriptor = if done.len() == 1 && platforms.len() == 1 {
        done[0].manifest.clone()
    } else {
        let manifests: Vec<Descriptor> = done.iter().map(|d| d.manifest.clone()).collect();
        xbuild_engine::image::write_index(store, &manifests)?
    };

    // `oci-mediatypes=false`: the same images relabelled with Docker's
    // media types (a manifest list over schema 2 manifests).
    let docker_final: Option<(Descriptor, Vec<Descriptor>)> = if outputs.iter().any(|o| {
        matches!(
            o,
            OutputSpec::Image {
                oci_mediatypes: false,
                ..
            }
        )
    }) {
        let manifests: Vec<Descriptor> = done.iter().map(|d| d.manifest.clone()).collect();
        let docker = xbuild_engine::image::to_docker_manifests(store, &manifests)?;
        let top = if done.len() == 1 && platforms.len() == 1 {
            docker[0].clone()
        } else {
            xbuild_engine::image::write_docker_index(store, &docker)?
        };
        Some((top, docker))
    } else {
        None
    };
    let oci_manifests: Vec<Descriptor> = done.iter().map(|d| d.manifest.clone()).collect();

    let mut pushed = Vec::new();
    for spec in &outputs {
        let (top, manifests) = match (spec, &docker_final) {
            (
                OutputSpec::Image {
                    oci_mediatypes: false,
                    ..
                },
                Some((top, m)),
            ) => (top, m.as_slice()),
            _ => (&final_desc, oci_manifests.as_slice()),
        };
        output::export(store, top, spec, &args.tags)
            .with_context(|| format!("writing output {spec:?}"))?;
        if let OutputSpec::Image {
            push: true, names, ..
        } = spec
        {
            let mut all = args.tags.clone();
            all.extend(names.iter().cloned());
            for name in all {
                let r: Reference = name
                    .parse()
                    .map_err(|e| anyhow!("invalid name {name:?}: {e}"))?;
                push_result(&registry, &r, store, top, manifests, &renderer).await?;
                pushed.push(format!("{}@{}", r.familiar(), top.digest));
            }
        }
    }

    crate::cache_io::export(
        &engine,
        &registry,
        &cache_to,
        &graphs,
        &key_inputs,
        &renderer,
    )
    .await?;

    // The image the user asked for: the Docker-typed one when the image
    // output asked for Docker media types.
    let result = docker_final.as_ref().map_or(&final_desc, |(top, _)| top);
    let digest = result.digest.to_string();
    renderer.finish();
    if style(if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    }) == Style::Quiet
    {
        println!("{digest}");
    } else {
        eprint!("{}", coordinator::summary(&done, &digest, &pushed));
        eprintln!("total time: {:.1}s", started.elapsed().as_secs_f64());
    }
    if let Some(path) = &args.metadata_file {
        write_metadata(path, result, &args.tags, &done)?;
    }
    Ok(())
}

async fn push_result(
    registry: &Registry,
    r: &Reference,
    store: &xbuild_oci::BlobStore,
    final_desc: &Descriptor,
    manifests: &[Descriptor],
    events: &Renderer,
) -> Result<()> {
    let label = r.familiar();
    let progress = |p: Progress| {
        events.emit(xbuild_engine::events::Event::Bytes {
            id: None,
            kind: xbuild_engine::events::Transfer::Push,
            label: format!("{label} {}", p.digest.short()),
            current: p.current,
            total: Some(p.total),
        });
    };
    let is_index = manifests.len() > 1 || final_desc.digest != manifests[0].digest;
    if is_index {
        for d in manifests {
            let p = d
                .platform()
                .map_or_else(|| d.digest.to_string(), |p| p.to_string());
            registry
                .push_image_untagged(r, store, d, &progress)
                .await
                .with_context(|| format!("pushing the {p} image to {}", r.familiar()))?;
        }
        registry
            .push_index(r, store, final_desc, &progress)
            .await
            .with_context(|| format!("pushing the index to {}", r.familiar()))?;
    } else {
        registry
            .push_image(r, store, final_desc, &progress)
            .await
            .with_context(|| format!("pushing to {}", r.familiar()))?;
    }
    Ok(())
}

fn write_metadata(
    path: &Path,
    final_desc: &Descriptor,
    tags: &[String],
    done: &[PlatformResult],
) -> Result<()> {
    let platforms: serde_json::Map<String, serde_json::Value> = done
        .iter()
        .map(|d| {
            (
                d.platform.to_string(),
                serde_json::json!({
                    "digest": d.manifest.digest.to_string(),
                    "worker": d.worker,
                    "steps": d.steps,
                    "cached": d.cached,
                    "duration_seconds": d.duration.as_secs_f64(),
                    "bytes_sent_to_worker": d.bytes_sent,
                }),
            )
        })
        .collect();
    let names: Vec<String> = tags
        .iter()
        .filter_map(|t| t.parse::<Reference>().ok())
        .map(|r| r.to_string())
        .collect();
    let v = serde_json::json!({
        "containerimage.digest": final_desc.digest.to_string(),
        "containerimage.descriptor": final_desc,
        "image.name": names.join(","),
        "xbuild.platforms": platforms,
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&v)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn source_date_epoch_build_arg_wins() {
        // testWorkdirSourceDateEpochReproducible passes it as a build arg.
        assert_eq!(
            super::source_date_epoch(Some("1673364896")).unwrap(),
            Some(1673364896)
        );
        assert!(super::source_date_epoch(Some("soon")).is_err());
    }

    use super::*;

    #[test]
    fn excerpt_marks_the_failing_lines() {
        let text = "FROM a\nRUN b\nRUN c \\\n  d\nCMD e\n";
        let x = excerpt(text, "Dockerfile", 3, 4);
        assert!(x.starts_with("Dockerfile:3\n"));
        assert!(x.contains(">>>    3 | RUN c \\"));
        assert!(x.contains(">>>    4 |   d"));
        assert!(x.contains("       5 | CMD e"));
    }

    #[test]
    fn excerpt_is_bounded() {
        let text = format!("FROM a\nRUN b \\\n{}  c\n", "\\\n".repeat(100_000));
        let x = excerpt(&text, "Dockerfile", 2, 100_003);
        assert!(x.lines().count() < 20, "{x}");
        assert!(x.contains("(99993 more lines)"), "{x}");
        assert!(x.contains(">>> 100003 |   c"), "{x}");
        let long = format!("FROM a\nRUN {}\n", "y".repeat(1_000_000));
        assert!(excerpt(&long, "Dockerfile", 2, 2).len() < 1000);
    }
}
