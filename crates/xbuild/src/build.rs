//! `xbuild build`: load the Dockerfile, plan every platform, and either
//! answer a `--call` query or build.

use crate::cli::BuildArgs;
use crate::exit::Exit;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use xbuild_coordinator::merge::Merged;
use xbuild_dockerfile::instructions;
use xbuild_oci::Platform;
use xbuild_plan::{check, BuildGraph, OfflineResolver, Op, PlanOptions};

/// The Dockerfile to build, as read from disk or standard input.
pub use xbuild_coordinator::DockerfileSource as LoadedDockerfile;

/// Read the Dockerfile named by `-f` / `PATH`.
pub fn load_dockerfile(args: &BuildArgs) -> Result<LoadedDockerfile> {
    if args.context == "-" {
        if args.file.is_some() {
            bail!("cannot use -f with a Dockerfile read from standard input (PATH is -)");
        }
        let text = match crate::remote_ctx::stdin_dockerfile() {
            Some(b) => String::from_utf8(b)
                .context("the Dockerfile on standard input is not UTF-8 text")?,
            None => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the Dockerfile from standard input")?;
                text
            }
        };
        return Ok(LoadedDockerfile {
            display: "Dockerfile".into(),
            text,
        });
    }
    let context = PathBuf::from(&args.context);
    if !context.is_dir() {
        bail!(
            "build context {:?} is not a directory (give a directory, or - to read a Dockerfile from standard input)",
            args.context
        );
    }
    let path = match &args.file {
        Some(f) if f.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the Dockerfile from standard input")?;
            return Ok(LoadedDockerfile {
                display: "Dockerfile".into(),
                text,
            });
        }
        Some(f) => xbuild_engine::context::dockerfile_fallback(f),
        None => xbuild_engine::context::dockerfile_fallback(&context.join("Dockerfile")),
    };
    let display = display_path(&path);
    let bytes =
        std::fs::read(&path).with_context(|| format!("failed to read Dockerfile {display}"))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        anyhow::anyhow!("{display}:{line}: not valid UTF-8 text (byte offset {at})")
    })?;
    Ok(LoadedDockerfile { display, text })
}

fn display_path(p: &Path) -> String {
    let s = p.to_string_lossy().to_string();
    s.strip_prefix("./").map(str::to_string).unwrap_or(s)
}

/// `SOURCE_DATE_EPOCH=context` (BuildKit): the epoch of a fetched context
/// replaces the value; a local directory gives none, so the arg goes.
fn context_epoch_arg(
    mut build_args: BTreeMap<String, String>,
    fetched: Option<&crate::remote_ctx::Fetched>,
) -> Result<BTreeMap<String, String>> {
    if build_args.get("SOURCE_DATE_EPOCH").map(|v| v.trim()) != Some("context") {
        return Ok(build_args);
    }
    match fetched.map(|f| f.epoch()) {
        None => {
            build_args.remove("SOURCE_DATE_EPOCH");
        }
        Some(Some(e)) => {
            build_args.insert("SOURCE_DATE_EPOCH".into(), e.to_string());
        }
        Some(None) => bail!(
            "SOURCE_DATE_EPOCH=context: this context gives no time (a git context's commit time is not supported yet)"
        ),
    }
    Ok(build_args)
}

/// Parse `--build-arg` values; a bare `KEY` takes the value from the environment.
pub fn parse_build_args(raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in raw {
        match a.split_once('=') {
            Some((k, v)) => {
                if k.is_empty() {
                    bail!("invalid --build-arg {a:?}: the name is empty");
                }
                out.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// Parse `--platform` (default: this machine's Linux platform).
pub fn parse_platforms(raw: &[String]) -> Result<Vec<Platform>> {
    if raw.is_empty() {
        return Ok(vec![Platform::host_linux()]);
    }
    // `local` is this machine's platform; impossible variants
    // (`linux/amd64/v9`) are refused before any work.
    let mut out: Vec<Platform> = Vec::new();
    for item in raw.iter().flat_map(|r| r.split(',')).map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let p = if item.eq_ignore_ascii_case("local") {
            Platform::host_linux()
        } else {
            Platform::parse_target(item).with_context(|| format!("invalid --platform {item:?}"))?
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        bail!("invalid --platform: empty list");
    }
    Ok(out)
}

/// A size as Docker writes it (`--shm-size`): a number of bytes with an
/// optional unit `b`, `k`, `m`, `g` (powers of 1024, any case, `kb`/`mib`
/// spellings accepted).
pub fn parse_size(raw: &str) -> Result<u64> {
    let t = raw.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid size {raw:?}: expected e.g. 64m"))?;
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => bail!("invalid size {raw:?}: unknown unit {unit:?} (b, k, m, g)"),
    };
    let bytes = (n * mult as f64) as u64;
    if bytes == 0 {
        bail!("invalid size {raw:?}: must be more than 0");
    }
    Ok(bytes)
}

/// `--add-host HOST:IP` (or `HOST=IP`, the form IPv6 addresses need).
pub fn parse_add_hosts(raw: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for h in raw {
        let (host, ip) = h
            .split_once('=')
            .or_else(|| h.split_once(':'))
            .ok_or_else(|| anyhow::anyhow!("invalid --add-host {h:?}: expected HOST:IP"))?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            bail!("invalid --add-host {h:?}: bad host name");
        }
        if ip == "host-gateway" {
            bail!("--add-host {h}: host-gateway needs a daemon's gateway address; give an IP");
        }
        let ip: std::net::IpAddr = ip
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| {
                anyhow::anyhow!("invalid --add-host {h:?}: {ip:?} is not an IP address")
            })?;
        out.push((host.to_string(), ip.to_string()));
    }
    Ok(out)
}

struct Call {
    method: String,
    json: bool,
}

fn parse_call(s: &str) -> Result<Call> {
    let mut parts = s.split(',');
    let method = parts.next().unwrap_or("build").trim().to_ascii_lowercase();
    let mut json = false;
    for p in parts {
        match p.trim().split_once('=') {
            Some(("format", "json")) => json = true,
            Some(("format", "text")) => json = false,
            _ => bail!("invalid --call option {p:?} (expected format=json or format=text)"),
        }
    }
    if !matches!(
        method.as_str(),
        "build" | "outline" | "targets" | "check" | "explain"
    ) {
        bail!("unknown --call method {method:?} (build, outline, targets, check or explain)");
    }
    Ok(Call { method, json })
}

/// Run `xbuild build`.
pub fn run(mut args: BuildArgs) -> Result<()> {
    let call = if args.check {
        parse_call("check")?
    } else {
        parse_call(&args.call)?
    };
    if let Some(b) = &args.builder {
        eprintln!("note: --builder {b} ignored: xbuild has no builder instances (nodes are chosen per platform; see xbuild node ls)");
    }
    // Everything that can be refused is refused before a context is fetched.
    let ulimits = xbuild_plan::Ulimit::parse_all(&args.ulimits).map_err(anyhow::Error::msg)?;
    let shm_size = args.shm_size.as_deref().map(parse_size).transpose()?;
    let platforms = parse_platforms(&args.platform)?;
    let quiet = args.quiet || args.progress == crate::cli::ProgressMode::Quiet;
    let named = crate::named_ctx::materialize(&args.build_contexts, &platforms, quiet)?;
    let image_aliases = named.aliases.clone();
    let _remote = crate::remote_ctx::materialize(&mut args, quiet)?;
    let df = load_dockerfile(&args)?;
    let opts = PlanOptions {
        file: df.display.clone(),
        target: args.target.clone(),
        build_args: context_epoch_arg(parse_build_args(&args.build_args)?, _remote.as_ref())?,
        build_platform: Platform::host_linux(),
        network: xbuild_plan::Network::parse(&args.network).map_err(anyhow::Error::msg)?,
        allow: xbuild_plan::Entitlements::parse(&args.allow).map_err(anyhow::Error::msg)?,
        image_aliases,
        extra_hosts: parse_add_hosts(&args.add_hosts)?,
        shm_size,
        ulimits,
    };
    let ssh_ids: Vec<String> = ssh_ids(&args.ssh);
    match call.method.as_str() {
        "check" => run_check(
            &df,
            &opts,
            &platforms,
            &ssh_ids,
            ignore_patterns(&args).as_deref(),
            call.json,
        ),
        "targets" => run_targets(&df, call.json),
        "explain" => crate::explain_cmd::run(&args, &df, &opts, &platforms, call.json),
        "outline" => {
            let graphs = plan_all(&df, &opts, &platforms)?;
            crate::nodes::plan_build_blocking(&platforms, &args.nodes, true)?;
            if call.json {
                println!("{}", serde_json::to_string_pretty(&outline_json(&graphs)?)?);
            } else {
                print!("{}", outline_text(&graphs));
            }
            Ok(())
        }
        // The build decides where each platform goes itself, on the
        // runtime that then keeps the node connections open.
        _ => crate::run_build::run(&args, &df, &opts, &platforms),
    }
}

fn plan_all(
    df: &LoadedDockerfile,
    opts: &PlanOptions,
    platforms: &[Platform],
) -> Result<Vec<BuildGraph>> {
    let mut out = Vec::new();
    for p in platforms {
        let g = xbuild_plan::plan_source(&df.text, p, opts, &mut OfflineResolver)?;
        for w in &g.warnings {
            match &w.location {
                Some(l) => eprintln!("warning: {l}: {} ({})", w.message, w.rule),
                None => eprintln!("warning: {} ({})", w.message, w.rule),
            }
        }
        out.push(g);
    }
    Ok(out)
}

/// The ids `--ssh` names (`default` for a bare `default`), without opening
/// anything.
pub fn ssh_ids(raw: &[String]) -> Vec<String> {
    raw.iter()
        .flat_map(|s| s.split_whitespace())
        .map(|p| p.split('=').next().unwrap_or("").to_string())
        .filter(|i| !i.is_empty())
        .collect()
}

/// The `--call check` rules plus xbuild's own: an ssh mount whose id no
/// `--ssh` provides (the step would run without an agent, or fail with
/// `required=true`).
pub fn findings(
    df: &LoadedDockerfile,
    opts: &PlanOptions,
    platforms: &[Platform],
    ssh: &[String],
    input: &check::CheckInput,
) -> check::CheckReport {
    let mut report = check::check_report(&df.text, opts, platforms, input);
    extra_findings(df, opts, platforms, ssh, &mut report.findings);
    report
}

/// The `.dockerignore` patterns of a local context (the Dockerfile's own
/// `<name>.dockerignore` first), for the CopyIgnoredFile check.
pub fn ignore_patterns(args: &BuildArgs) -> Option<Vec<String>> {
    if args.context == "-" || args.context.contains("://") {
        return None;
    }
    let ctx = PathBuf::from(&args.context);
    let rel = match &args.file {
        Some(f) => f
            .strip_prefix(&ctx)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "Dockerfile".into()),
        None => "Dockerfile".into(),
    };
    xbuild_dockerfile::ignore::ignore_file_candidates(&rel)
        .into_iter()
        .find_map(|c| std::fs::read_to_string(ctx.join(c)).ok())
        .map(|t| xbuild_dockerfile::ignore::read_ignore_file(&t))
}

fn extra_findings(
    df: &LoadedDockerfile,
    opts: &PlanOptions,
    platforms: &[Platform],
    ssh: &[String],
    out: &mut Vec<check::Finding>,
) {
    let Some(p) = platforms.first() else {
        return;
    };
    let Ok(g) = xbuild_plan::plan_source(&df.text, p, opts, &mut OfflineResolver) else {
        return;
    };
    let mut seen = std::collections::BTreeSet::new();
    for st in &g.stages {
        for step in &st.steps {
            let Op::Exec(e) = &step.op else { continue };
            for m in &e.mounts {
                if m.kind != instructions::MountType::Ssh {
                    continue;
                }
                let id = m.id.clone().unwrap_or_else(|| "default".into());
                if ssh.contains(&id) || !seen.insert((id.clone(), step.location.to_string())) {
                    continue;
                }
                out.push(check::Finding {
                    rule: "SSHMountWithoutSSHFlag".into(),
                    severity: check::Severity::Warning,
                    message: format!(
                        "RUN --mount=type=ssh uses ssh id {id:?}, but no --ssh {id} is given; \
                         the step runs without an agent{}",
                        if m.required {
                            " and fails (required=true)"
                        } else {
                            ""
                        }
                    ),
                    location: Some(step.location.clone()),
                });
            }
        }
    }
}

fn run_check(
    df: &LoadedDockerfile,
    opts: &PlanOptions,
    platforms: &[Platform],
    ssh: &[String],
    ignore: Option<&[String]>,
    json: bool,
) -> Result<()> {
    let input = check::CheckInput {
        reachable_only: false,
        ignore,
        base_env: None,
    };
    let report = findings(df, opts, platforms, ssh, &input);
    let mut findings = report.findings;
    if let Some(e) = report.error {
        // `check=error=true`: the warnings make the check fail as the
        // build would.
        findings.push(check::Finding {
            rule: "LintViolation".into(),
            severity: check::Severity::Error,
            message: e,
            location: None,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        for f in &findings {
            println!("{f}");
        }
        if findings.is_empty() {
            println!("Check complete, no problems found.");
        } else {
            println!("Check complete, {} problem(s) found.", findings.len());
        }
    }
    if findings.is_empty() {
        Ok(())
    } else {
        Err(Exit(1).into())
    }
}

/// `--call targets`: BuildKit's `frontend.targets` subrequest. The JSON is
/// its `targets.List` (`targets` with name, default, description, base,
/// platform and location; `sources`, the Dockerfile base64-encoded); the
/// text is its `TARGET`/`DESCRIPTION` table.
fn run_targets(df: &LoadedDockerfile, json: bool) -> Result<()> {
    let stages = xbuild_plan::targets_of_source(&df.text, &df.display)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&targets_json(&df.text, &stages))?
        );
        return Ok(());
    }
    print!("{}", targets_text(&stages));
    Ok(())
}

/// BuildKit's `targets.List` for the stages of `src`.
fn targets_json(src: &str, stages: &[xbuild_plan::StageInfo]) -> serde_json::Value {
    use base64::Engine as _;
    let targets: Vec<serde_json::Value> = stages
        .iter()
        .map(|s| {
            let mut t = serde_json::Map::new();
            if let Some(n) = &s.name {
                t.insert("name".into(), n.clone().into());
            }
            if s.default {
                t.insert("default".into(), true.into());
            }
            if let Some(d) = &s.description {
                t.insert("description".into(), d.clone().into());
            }
            t.insert("base".into(), s.base.clone().into());
            if let Some(p) = &s.platform {
                t.insert("platform".into(), p.clone().into());
            }
            t.insert(
                "location".into(),
                serde_json::json!({
                    "ranges": [{"start": {"line": s.line}, "end": {"line": s.line}}]
                }),
            );
            serde_json::Value::Object(t)
        })
        .collect();
    serde_json::json!({
        "targets": targets,
        "sources": [base64::engine::general_purpose::STANDARD.encode(src)],
    })
}

/// BuildKit's text form of the targets: a `TARGET DESCRIPTION` table, the
/// default target marked `(default)`.
fn targets_text(stages: &[xbuild_plan::StageInfo]) -> String {
    let rows: Vec<(String, String)> = stages
        .iter()
        .map(|s| {
            let name = match (&s.name, s.default) {
                (None, true) => "(default)".to_string(),
                (Some(n), true) => format!("{n} (default)"),
                (Some(n), false) => n.clone(),
                (None, false) => String::new(),
            };
            (name, s.description.clone().unwrap_or_default())
        })
        .collect();
    let width = rows
        .iter()
        .map(|r| r.0.chars().count())
        .chain(std::iter::once("TARGET".len()))
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = format!("{:<width$}DESCRIPTION\n", "TARGET");
    for (n, d) in rows {
        out.push_str(&format!("{n:<width$}{d}\n"));
    }
    out
}

/// The plans as JSON: one graph per platform, each with `shared_steps`
/// when several targets share the start of some stages (the merged graph:
/// those vertices are one, solved once).
fn outline_json(graphs: &[BuildGraph]) -> Result<serde_json::Value> {
    let merged = Merged::new(graphs);
    let shared = merged.shared_graph(graphs);
    let mut out = Vec::new();
    for (i, g) in graphs.iter().enumerate() {
        let mut v = serde_json::to_value(g)?;
        let presolved = merged.presolved(i);
        if let (Some(sg), false) = (&shared, presolved.is_empty()) {
            v["shared_steps"] = presolved
                .iter()
                .map(|(stage, steps)| {
                    let name = g.stages[*stage].display_name();
                    let by = sg
                        .stages
                        .iter()
                        .find(|s| s.name == name)
                        .map(|s| s.served.iter().map(|p| p.to_string()).collect::<Vec<_>>())
                        .unwrap_or_default();
                    serde_json::json!({
                        "stage": stage,
                        "steps": steps,
                        "executes_on": g.stages[*stage].platform.to_string(),
                        "shared_by": by,
                    })
                })
                .collect();
        }
        out.push(v);
    }
    Ok(serde_json::Value::Array(out))
}

/// Human-readable outline of the plans: the steps several targets share
/// (the merged graph's common vertices, run once) first, then one block
/// per platform with its own steps.
pub fn outline_text(graphs: &[BuildGraph]) -> String {
    let mut s = String::new();
    let merged = Merged::new(graphs);
    if let Some(sg) = merged.shared_graph(graphs) {
        let g = &sg.graph;
        s.push_str(&format!(
            "shared by {} (runs once on {}; {} stage(s), {} step(s))\n",
            sg.targets()
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            g.platform,
            g.stages.len(),
            g.step_count()
        ));
        for (st, info) in g.stages.iter().zip(&sg.stages) {
            let by: Vec<String> = info.served.iter().map(|p| p.to_string()).collect();
            let label = |i: usize| format!("[{} {} {i}/{}]", by.join(","), info.name, info.total);
            s.push_str(&format!(
                "  {} {}   # for {}, {}\n",
                label(1),
                st.from_text,
                st.platform,
                st.location
            ));
            for (i, step) in st.steps.iter().enumerate() {
                s.push_str(&format!(
                    "  {} {}   # {}\n",
                    label(i + 2),
                    step.text,
                    step.location
                ));
            }
        }
    }
    for (gi, g) in graphs.iter().enumerate() {
        let presolved = merged.presolved(gi);
        let target = &g.stages[g.target];
        s.push_str(&format!(
            "{} (target {}; {} stage(s), {} step(s); build platform {})\n",
            g.platform,
            target.display_name(),
            g.stages.len(),
            g.step_count(),
            g.build_platform
        ));
        for (si, st) in g.stages.iter().enumerate() {
            let total = st.steps.len() + 1;
            let name = st.display_name();
            let shared = presolved.iter().find(|(i, _)| *i == si).map(|p| p.1);
            if let Some(k) = shared {
                s.push_str(&format!(
                    "  [{} {name} 1-{}/{total}] shared (above)\n",
                    g.platform,
                    k + 1
                ));
            }
            let base = match &st.base {
                xbuild_plan::Base::Scratch => "scratch".to_string(),
                xbuild_plan::Base::Image(r) => r.reference.clone(),
                xbuild_plan::Base::Stage(i) => format!("stage {}", g.stages[*i].display_name()),
            };
            if shared.is_none() {
                s.push_str(&format!(
                    "  [{} {name} 1/{total}] {}   # {base} for {}, {}\n",
                    g.platform, st.from_text, st.platform, st.location
                ));
            }
            for (i, step) in st.steps.iter().enumerate().skip(shared.unwrap_or(0)) {
                let mut line = format!("  [{} {name} {}/{total}] {}", g.platform, i + 2, step.text);
                let mut notes = vec![step.location.to_string()];
                if !step.build_args.is_empty() {
                    let kv: Vec<String> = step
                        .build_args
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    notes.push(format!("args {}", kv.join(" ")));
                }
                if step.from_onbuild {
                    notes.push("ONBUILD trigger".into());
                }
                if let Op::Exec(e) = &step.op {
                    notes.push(format!("cwd {}", e.cwd));
                    if !e.user.is_empty() {
                        notes.push(format!("user {}", e.user));
                    }
                }
                line.push_str(&format!("   # {}", notes.join(", ")));
                s.push_str(&line);
                s.push('\n');
            }
        }
        if !g.unused_build_args.is_empty() {
            s.push_str(&format!(
                "  unused build args: {}\n",
                g.unused_build_args.join(", ")
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_hosts_and_platforms() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512kb").unwrap(), 512 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("5t").is_err());
        let h = parse_add_hosts(&["a.internal:10.0.0.1".into(), "v6=fd00::1".into()]).unwrap();
        assert_eq!(h[0], ("a.internal".into(), "10.0.0.1".into()));
        assert_eq!(h[1], ("v6".into(), "fd00::1".into()));
        assert!(parse_add_hosts(&["nohost".into()]).is_err());
        assert!(parse_add_hosts(&["x:host-gateway".into()]).is_err());
        assert!(parse_add_hosts(&["x:999.1.1.1".into()]).is_err());
        let p = parse_platforms(&["local,linux/arm64".into(), "linux/arm64".into()]).unwrap();
        assert_eq!(
            p,
            [
                Platform::host_linux(),
                Platform::parse("linux/arm64").unwrap()
            ]
        );
        assert!(parse_platforms(&["linux/amd64/v9".into()]).is_err());
        assert_eq!(
            ssh_ids(&["default".into(), "deploy=/k1,/k2 other".into()]),
            ["default", "deploy", "other"]
        );
    }
}
