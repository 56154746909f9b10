//! `xbuild build` when it really builds: the coordinator's phases in
//! order (plan, schedule, solve, assemble, export, report), rendered on
//! the terminal. Nothing is pushed unless every platform built.

use crate::cli::{BuildArgs, ProgressMode};
use crate::exit::Exit;
use crate::progress::{Renderer, Style};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use xbuild_coordinator::DockerfileSource as LoadedDockerfile;
use xbuild_coordinator::{
    cache_io, AssembleOptions, Assembled, Attach, BuildRequest, Exported, OutputSpec,
    PlatformResult, PlatformState, RegistrySource, Report, Session, SolveInputs, Solved,
};
use xbuild_engine::events::{Event, EventSink};
use xbuild_engine::{Engine, EngineError, VertexIds};
use xbuild_oci::{Descriptor, Platform};
use xbuild_plan::PlanOptions;

fn style(mode: ProgressMode) -> Style {
    match mode {
        ProgressMode::Quiet => Style::Quiet,
        ProgressMode::Rawjson => Style::RawJson,
        ProgressMode::Json => Style::Json,
        ProgressMode::Plain => Style::Plain,
        ProgressMode::Tty => Style::Tty,
        ProgressMode::Auto if std::io::IsTerminal::is_terminal(&std::io::stderr()) => Style::Tty,
        ProgressMode::Auto => Style::Plain,
    }
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
    let renderer = Renderer::stderr(style(mode(args)));
    // The build checks, as BuildKit runs them for a build: only the stages
    // the target needs; printed after the build, failed or not, and with
    // `check=error=true` they stop it before it starts.
    let ssh: Vec<String> = crate::build::ssh_ids(&args.ssh);
    let ignore = crate::build::ignore_patterns(args);
    let mut input = xbuild_plan::check::CheckInput {
        reachable_only: true,
        ignore: ignore.as_deref(),
        base_env: None,
    };
    let warnings_only = |r: xbuild_plan::check::CheckReport| -> Vec<_> {
        r.findings
            .into_iter()
            .filter(|f| f.severity == xbuild_plan::check::Severity::Warning)
            .collect()
    };
    let lint = crate::build::findings(df, opts, platforms, &ssh, &input);
    let show = mode(args) != ProgressMode::Quiet;
    if let Some(e) = lint.error.clone() {
        if show {
            print_warnings(&warnings_only(lint), args.debug, warning_width(args));
        }
        bail!("{e}");
    }
    let bases = std::sync::Mutex::new(Vec::new());
    let r = rt.block_on(async {
        let build = build(args, df, opts, platforms, &renderer, &bases);
        tokio::pin!(build);
        tokio::select! {
            r = &mut build => r,
            _ = tokio::signal::ctrl_c() => {
                interrupt(&renderer, build).await;
                Err(Exit(INTERRUPTED).into())
            }
        }
    });
    if renderer.is_cancelled() {
        // Killed steps unmount their filesystems on blocking threads as
        // they unwind: wait for them (bounded), so nothing stays mounted.
        rt.shutdown_timeout(UNWIND_TIMEOUT);
        return Err(Exit(INTERRUPTED).into());
    }
    // Steps of cancelled platforms may still be finishing on blocking
    // threads: do not wait for them.
    rt.shutdown_background();
    if show {
        // With the base images now in the store, their environments are
        // known to the UndefinedVar check.
        let bases = bases.into_inner().unwrap_or_default();
        let (env, mismatched) = base_info(&bases);
        input.base_env = Some(&env);
        let lint = crate::build::findings(df, opts, platforms, &ssh, &input);
        let mut warnings = warnings_only(lint);
        let runs = xbuild_dockerfile::parse(&df.text, &df.display)
            .map(|d| xbuild_plan::lint::LintConfig::for_build(&d, &opts.build_args))
            .unwrap_or_default()
            .runs("InvalidBaseImagePlatform");
        if runs {
            warnings.extend(mismatched);
            warnings.sort_by_key(|f| f.location.as_ref().map_or(0, |l| l.start_line));
        }
        print_warnings(&warnings, args.debug, warning_width(args));
    }
    r
}

/// A stage built on an image: its Dockerfile stage index, the image (with
/// the platform the stage wanted) and the FROM line.
type BaseUse = (
    usize,
    xbuild_plan::graph::ImageRef,
    xbuild_plan::graph::Location,
);

/// From the base images now in the local store: the environment variable
/// names of each stage's base (by Dockerfile stage index), and a warning for
/// each base whose config names another platform than the stage's
/// (BuildKit's InvalidBaseImagePlatform).
fn base_info(
    bases: &[BaseUse],
) -> (
    std::collections::BTreeMap<usize, Vec<String>>,
    Vec<xbuild_plan::check::Finding>,
) {
    let mut env = std::collections::BTreeMap::new();
    let mut warnings = Vec::new();
    let Ok(store) = crate::paths::open_store() else {
        return (env, warnings);
    };
    for (stage, img, location) in bases {
        let Some(digest) = img
            .digest
            .as_deref()
            .and_then(|d| d.parse::<xbuild_oci::Digest>().ok())
        else {
            continue;
        };
        let Some(config) = xbuild_engine::image::read_manifest(&store, &digest)
            .ok()
            .and_then(|m| xbuild_engine::image::read_config(&store, &m.config.digest).ok())
        else {
            continue;
        };
        let names = config
            .config
            .env
            .iter()
            .map(|e| e.split('=').next().unwrap_or("").to_string())
            .collect();
        env.insert(*stage, names);
        let actual = config.platform();
        if actual.os() != img.platform.os() || !actual.same_arch(&img.platform) {
            warnings.push(xbuild_plan::check::Finding {
                rule: "InvalidBaseImagePlatform".into(),
                severity: xbuild_plan::check::Severity::Warning,
                message: format!(
                    "Base image {} was pulled with platform {:?}, expected {:?} for current build",
                    img.reference,
                    actual.to_string(),
                    img.platform.to_string()
                ),
                location: Some(location.clone()),
            });
        }
    }
    (env, warnings)
}

/// Exit code of an interrupted build (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;
/// How long an interrupted build may take to stop its steps and unmount.
const UNWIND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Ctrl-C: every running step is marked cancelled and its sandbox killed,
/// then the build unwinds (its guards unmount what it mounted) for at
/// most [`UNWIND_TIMEOUT`]; a second Ctrl-C exits at once.
async fn interrupt(renderer: &Renderer, build: std::pin::Pin<&mut impl std::future::Future>) {
    renderer.cancel();
    xbuild_sandbox::cancel_all();
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(i32::from(INTERRUPTED));
        }
    });
    let _ = tokio::time::timeout(UNWIND_TIMEOUT, build).await;
    renderer.finish();
}

fn mode(args: &BuildArgs) -> ProgressMode {
    if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    }
}

async fn build(
    args: &BuildArgs,
    df: &LoadedDockerfile,
    opts: &PlanOptions,
    platforms: &[Platform],
    renderer: &Renderer,
    bases: &std::sync::Mutex<Vec<BaseUse>>,
) -> Result<()> {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    let mut req = crate::request::from_args(args, df, opts, platforms)?;
    let rewrite = crate::request::rewrite(args, &req)?;
    let load_want = if req
        .outputs
        .iter()
        .any(|o| matches!(o, OutputSpec::Load { .. }))
    {
        Some(crate::load::want_from_env()?)
    } else {
        None
    };
    // `--ssh`: agent sockets for RUN --mount=type=ssh (private agents for
    // key files live as long as this value).
    let agents = crate::sshagent::parse(&args.ssh)?;
    for (id, sock) in &agents.sockets {
        req.secrets.insert_ssh(id.clone(), sock.clone());
    }
    let root = crate::paths::xbuild_root()?;
    let session = Session {
        registry: crate::config::registry(Some(&root))?,
        root,
    };

    let planned = xbuild_coordinator::plan(&req, &session).await?;
    if let (Some(g), Ok(mut b)) = (planned.graphs.first(), bases.lock()) {
        for st in &g.stages {
            if let xbuild_plan::Base::Image(img) = &st.base {
                b.push((st.dockerfile_index, img.clone(), st.location.clone()));
            }
        }
    }
    for message in &planned.warnings {
        renderer.emit(Event::Warning {
            message: message.clone(),
        });
    }

    // Where each platform builds: configured nodes are checked and the
    // plan printed before any work starts. Their connections stay open for
    // the agents of this build.
    let show_plan = !args.quiet
        && !matches!(
            args.progress,
            ProgressMode::Quiet | ProgressMode::Rawjson | ProgressMode::Json
        );
    // Printed above the live view; in the JSON modes its warnings become
    // warning events and the plan is left out.
    // (quiet mode prints the warnings alone, as before).
    let shown = style(mode(args));
    let say = |l: &str| match (shown, l.strip_prefix("warning: ")) {
        (Style::Plain | Style::Tty, _) => renderer.note(l),
        (Style::Quiet, Some(_)) => eprintln!("{l}"),
        (_, Some(message)) => renderer.emit(Event::Warning {
            message: message.to_string(),
        }),
        (_, None) => {}
    };
    let node_plan = crate::nodes::plan_build(platforms, &req.node_pins, show_plan, &say)
        .await?
        .map(Arc::new);
    let schedule = xbuild_coordinator::schedule(&planned, node_plan.as_ref(), &session, renderer)?;

    let index = xbuild_coordinator::scan_context(&req, &session)?;
    let engine = session.open_engine("local")?;
    let source = RegistrySource {
        registry: session.registry.clone(),
    };
    let key_inputs = cache_io::KeyInputs {
        context_dir: req.context_dir.as_deref(),
        index: index.as_ref(),
        source: &source,
    };
    let (imported, fetched) = xbuild_coordinator::import_cache(
        &engine,
        &session.registry,
        &req.cache_from,
        &planned.graphs,
        &key_inputs,
        renderer,
    )
    .await?;
    if !req.cache_from.is_empty() && human(style(mode(args))) {
        renderer.note(&format!(
            "cache import: {imported} record(s) imported, {fetched} layer(s) fetched"
        ));
    }

    let ids = VertexIds::new();
    let inputs = SolveInputs {
        graphs: &planned.graphs,
        context_dir: req.context_dir.as_deref(),
        context: index.as_ref(),
        source: &source,
        events: renderer,
        ids: &ids,
        no_cache: req.no_cache,
        no_cache_filter: &req.no_cache_filter,
        secrets: &req.secrets,
        source_date_epoch: req.source_date_epoch,
    };
    let solved = xbuild_coordinator::solve(&schedule, &inputs).await;
    if let Some(n) = &node_plan {
        n.close().await;
    }
    if renderer.is_cancelled() {
        // Ctrl-C: the steps were stopped, not failed; nothing to report.
        return Err(Exit(INTERRUPTED).into());
    }
    if !solved.ok() {
        renderer.finish();
        print_failures(renderer, df, &solved);
        return Err(Exit(1).into());
    }

    let done: Vec<PlatformResult> = solved.done().into_iter().cloned().collect();
    let mut rewrite = rewrite;
    if rewrite.layers.is_some() {
        rewrite.base_layers =
            xbuild_coordinator::Rewrite::base_layers_of(engine.store(), &planned.graphs);
    }
    let timing = xbuild_coordinator::attest::Timing {
        started: started_at,
        finished: std::time::SystemTime::now(),
    };
    let (assembled, exported) = assemble_and_export(
        &req,
        &session,
        &engine,
        &done,
        Finish {
            graphs: &planned.graphs,
            timing: &timing,
            rewrite,
        },
        renderer,
    )
    .await?;
    drop(agents);
    xbuild_coordinator::export_cache(
        &engine,
        &session.registry,
        &req.cache_to,
        &planned.graphs,
        &key_inputs,
        renderer,
    )
    .await?;

    let mut report = xbuild_coordinator::report(&assembled, done, &req.tags, exported.pushed)
        .with_shared(solved.shared.clone());
    if !exported.names.is_empty() {
        report.names = exported.names.clone();
    }
    renderer.finish();
    let loaded = match (&exported.load, load_want) {
        (Some((image, names)), Some(want)) => {
            Some(crate::load::load(want, engine.store(), image, names)?)
        }
        _ => None,
    };
    let s = style(mode(args));
    let quiet = s == Style::Quiet;
    if quiet {
        println!("{}", report.result.digest);
    } else if human(s) {
        let width = crate::progress::stderr_width();
        eprint!("{}", summary(&report, width));
        eprintln!("total time: {:.1}s", started.elapsed().as_secs_f64());
    }
    if let Some(l) = &loaded {
        eprintln!("{l}");
    }
    if let Some(path) = &args.iidfile {
        let id = image_id(engine.store(), &report, &req.outputs)?;
        write_file(path, id.as_bytes())?;
    }
    if let Some(path) = &args.metadata_file {
        let mut meta = report.metadata();
        if let (true, Some(m)) = (report.platforms.len() == 1, meta.as_object_mut()) {
            // BuildKit's key for the image's config digest (what `images`
            // shows as IMAGE ID).
            if let Ok(im) =
                xbuild_engine::image::read_manifest(engine.store(), &report.result.digest)
            {
                m.insert(
                    "containerimage.config.digest".into(),
                    im.config.digest.to_string().into(),
                );
            }
        }
        write_file(path, &serde_json::to_vec_pretty(&meta)?)?;
    }
    Ok(())
}

/// The image ID buildx writes to `--iidfile`: the config digest when the
/// image only went to a local store (`--load`, as `docker images` shows
/// it), else the digest of the result (the manifest, or the index).
fn image_id(
    store: &xbuild_oci::BlobStore,
    report: &Report,
    outputs: &[OutputSpec],
) -> Result<String> {
    let only_load = outputs.iter().all(|o| matches!(o, OutputSpec::Load { .. }));
    if only_load {
        if let Ok(xbuild_oci::manifest::Manifest::Image(m)) =
            xbuild_oci::archive::read_manifest(store, &report.result)
        {
            return Ok(m.config.digest.to_string());
        }
    }
    Ok(report.result.digest.to_string())
}

/// The columns to fold the closing warnings to: the terminal's width in the
/// tty view (whose lines never wrap), none otherwise (plain output keeps
/// each warning on one line, as buildx prints it, for readers of the log).
fn warning_width(args: &BuildArgs) -> Option<usize> {
    (style(mode(args)) == Style::Tty && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then(crate::progress::terminal_columns)
        .flatten()
}

/// The `--call check` findings after a normal build, as buildx prints them;
/// with `width`, each finding is folded at spaces into lines of at most
/// that many columns (continuations indented), never cut.
fn print_warnings(findings: &[xbuild_plan::check::Finding], debug: bool, width: Option<usize>) {
    if findings.is_empty() {
        return;
    }
    let n = findings.len();
    eprintln!();
    let header = format!(
        " {n} warning{} found{}:",
        if n == 1 { "" } else { "s" },
        if debug {
            ""
        } else {
            " (use --debug to expand)"
        }
    );
    let say = |first: &str, text: &str| {
        for l in crate::progress::fold(text, first, &" ".repeat(first.len()), width) {
            eprintln!("{l}");
        }
    };
    say(" ", header.trim_start());
    for f in findings {
        let line = f
            .location
            .as_ref()
            .map(|l| format!(" (line {})", l.start_line))
            .unwrap_or_default();
        say(" - ", &format!("{}: {}{line}", f.rule, f.message));
        if debug {
            if let Some(l) = &f.location {
                say("   ", &format!("at {l}"));
            }
        }
    }
}

/// Whether the progress style is for people (the summary goes to stderr);
/// the JSON styles keep stderr machine-readable.
fn human(s: Style) -> bool {
    matches!(s, Style::Plain | Style::Tty)
}

/// Assemble the built platforms into one image, with the attestations
/// asked for, and write every output.
/// What assembling needs besides the built platforms.
struct Finish<'a> {
    graphs: &'a [xbuild_plan::graph::BuildGraph],
    timing: &'a xbuild_coordinator::attest::Timing,
    rewrite: xbuild_coordinator::Rewrite,
}

async fn assemble_and_export(
    req: &BuildRequest,
    session: &Session,
    engine: &Engine,
    done: &[PlatformResult],
    finish: Finish<'_>,
    renderer: &Renderer,
) -> Result<(Assembled, Exported)> {
    let Finish {
        graphs,
        timing,
        rewrite,
    } = finish;
    let store = engine.store();
    if req.attest.sbom.is_some() && req.plan.build_args.contains_key("BUILDKIT_SBOM_SCAN_STAGE") {
        renderer.emit(Event::Warning {
            message: "BUILDKIT_SBOM_SCAN_STAGE is not supported yet: the SBOM lists the final \
                      image (and the context with BUILDKIT_SBOM_SCAN_CONTEXT) only"
                .to_string(),
        });
    }
    let work = session.root.join("tmp");
    let prepared =
        xbuild_coordinator::attest::Prepared::prepare(req, graphs, done, store, &work, timing)?;
    let statements = |m: &Descriptor| match &prepared {
        Some(p) => p.statements(m),
        None => Ok(Vec::new()),
    };
    let referrers = req
        .outputs
        .iter()
        .any(|o| matches!(o, OutputSpec::Image { opts, .. } if opts.attest_referrers));
    let assembled = xbuild_coordinator::assemble(
        store,
        done,
        &AssembleOptions {
            single_platform: req.platforms.len() == 1,
            docker_media_types: req.outputs.iter().any(|o| {
                matches!(
                    o,
                    OutputSpec::Image {
                        oci_mediatypes: false,
                        ..
                    }
                )
            }),
            hooks: Vec::new(),
            rewrite,
            attestations: prepared.as_ref().map(|_| Attach {
                referrers,
                statements: &statements,
            }),
        },
    )?;
    let exported = xbuild_coordinator::export(
        store,
        &session.registry,
        &assembled,
        &req.outputs,
        &req.tags,
        renderer,
    )
    .await?;
    Ok((assembled, exported))
}

/// The failed steps' logs (when progress did not show them), each failed
/// platform's Dockerfile excerpt and error, and what happened to the others.
fn print_failures(renderer: &Renderer, df: &LoadedDockerfile, solved: &Solved) {
    if !renderer.shows_logs() {
        // The output of each failed step (its name alone says nothing new).
        for (name, lines) in renderer.failures() {
            if lines.is_empty() {
                continue;
            }
            eprintln!("{name}");
            for l in lines {
                eprintln!("  {l}");
            }
        }
    }
    for p in &solved.platforms {
        let PlatformState::Failed { worker, error: e } = &p.state else {
            continue;
        };
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
            _ => worker.clone(),
        };
        eprintln!("error: [{} @ {worker}] {msg}", p.platform);
    }
    let names = |want: fn(&PlatformState) -> bool| {
        solved
            .platforms
            .iter()
            .filter(|p| want(&p.state))
            .map(|p| p.platform.to_string())
            .collect::<Vec<_>>()
    };
    let cancelled = names(|s| matches!(s, PlatformState::Cancelled));
    if !cancelled.is_empty() {
        eprintln!("cancelled: {}", cancelled.join(", "));
    }
    let done = names(|s| matches!(s, PlatformState::Done(_)));
    if done.is_empty() {
        eprintln!("note: nothing was pushed");
    } else {
        eprintln!(
            "note: nothing was pushed; the images of {} are in the local store",
            done.join(", ")
        );
    }
}

/// The end-of-build table, fitted to `width` columns when given (the
/// terminal's): the digests are cut with `…` first (the full digests are in
/// `-q`, `--iidfile` and `--metadata-file`), then whole lines.
pub fn summary(report: &Report, width: Option<usize>) -> String {
    // One column stays free so that no terminal wraps a full line.
    let room = width.map(|w| w.saturating_sub(1).max(20));
    let head = |p: &str, w: &str, st: &str, c: &str, t: &str| {
        format!("{p:<16} {w:<10} {st:>5} {c:>6} {t:>8}  ")
    };
    let cut = |text: String| match room {
        Some(r) => crate::progress::fit_width(&text, r),
        None => text,
    };
    // `left` and a digest: the digest shortened to what fits.
    let with_digest = |left: String, digest: &str| match room {
        Some(r) => {
            let used = left.chars().count();
            let keep = r.saturating_sub(used).max("sha256:".len() + 13);
            cut(format!(
                "{left}{}",
                crate::progress::fit_width(digest, keep)
            ))
        }
        None => format!("{left}{digest}"),
    };
    let mut s = String::new();
    s.push_str(&cut(format!(
        "{}DIGEST",
        head("PLATFORM", "WORKER", "STEPS", "CACHED", "TIME")
    )));
    s.push('\n');
    for r in &report.platforms {
        let left = head(
            &r.platform.to_string(),
            &r.worker,
            &r.steps.to_string(),
            &r.cached.to_string(),
            &format!("{:.1}s", r.duration.as_secs_f64()),
        );
        s.push_str(&with_digest(left, r.manifest.digest.as_ref()));
        s.push('\n');
    }
    if let Some(r) = &report.shared {
        // Work shared by several targets, built once: one row, marked.
        let served: Vec<String> = r.served.iter().map(|p| p.to_string()).collect();
        let left = head(
            &r.platform.to_string(),
            &r.worker,
            &r.steps.to_string(),
            &r.cached.to_string(),
            &format!("{:.1}s", r.duration.as_secs_f64()),
        );
        s.push_str(&cut(format!(
            "{left}shared by {} ({})",
            served.join(", "),
            r.stages.join(", ")
        )));
        s.push('\n');
    }
    let digest = report.result.digest.to_string();
    s.push_str(&with_digest("image digest: ".into(), &digest));
    s.push('\n');
    for p in &report.pushed {
        // `name@digest`: the name kept whole where it fits, the digest cut.
        let (name, d) = p.rsplit_once('@').unwrap_or((p.as_str(), ""));
        if d.is_empty() {
            s.push_str(&cut(format!("pushed: {name}")));
        } else {
            s.push_str(&with_digest(format!("pushed: {name}@"), d));
        }
        s.push('\n');
    }
    s
}

/// Writes `bytes` to `path` through a temporary file next to it.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
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
