//! Turning `xbuild build` arguments into a [`BuildRequest`].

use crate::cli::BuildArgs;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xbuild_coordinator::DockerfileSource as LoadedDockerfile;
use xbuild_coordinator::{cache_io, export, BuildRequest, OutputSpec};
use xbuild_engine::Secrets;
use xbuild_oci::reference::Reference;
use xbuild_oci::Platform;
use xbuild_plan::PlanOptions;

/// The Dockerfile's path relative to the context, when it lies inside it
/// (so `<Dockerfile>.dockerignore` is found; a missing `Dockerfile` falls
/// back to a lowercase `dockerfile`, as BuildKit).
pub fn dockerfile_rel(context_dir: &Path, args: &BuildArgs) -> Option<String> {
    let file = match &args.file {
        Some(f) => xbuild_engine::context::dockerfile_fallback(f),
        None => xbuild_engine::context::dockerfile_fallback(&context_dir.join("Dockerfile")),
    };
    let ctx = std::fs::canonicalize(context_dir).ok()?;
    let f = std::fs::canonicalize(&file).ok()?;
    f.strip_prefix(&ctx)
        .ok()
        .map(|p| p.to_string_lossy().replace('\\', "/"))
}

/// `--build-arg SOURCE_DATE_EPOCH=N` (as BuildKit reads it), else the
/// `SOURCE_DATE_EPOCH` environment variable (as buildx passes it on), else
/// the default of a global `ARG SOURCE_DATE_EPOCH=N` in the Dockerfile.
fn source_date_epoch(
    build_arg: Option<&str>,
    dockerfile: &str,
    remote_context: bool,
) -> Result<Option<i64>> {
    let value = match build_arg {
        Some(v) => Ok(v.to_string()),
        None => std::env::var("SOURCE_DATE_EPOCH")
            .or_else(|_| dockerfile_epoch(dockerfile).ok_or(std::env::VarError::NotPresent)),
    };
    match value {
        // BuildKit's `context` (build.rs puts a fetched context's time in
        // its place): a local directory has none, so the build has no epoch.
        Ok(v) if v.trim() == "context" => match remote_context {
            false => Ok(None),
            true => bail!("SOURCE_DATE_EPOCH=context: the fetched context gives no time"),
        },
        Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().parse().map_err(|_| {
            anyhow!(
                "invalid SOURCE_DATE_EPOCH: {} (not a number of seconds)",
                v.trim()
            )
        })?)),
        _ => Ok(None),
    }
}

/// Whether the context is one `remote_ctx` fetched (a git or HTTP URL, or
/// an archive on standard input): those are unpacked under
/// `$XBUILD_ROOT/tmp`.
fn fetched_context(args: &BuildArgs) -> bool {
    let Ok(root) = crate::paths::xbuild_root() else {
        return false;
    };
    let tmp = std::fs::canonicalize(root.join("tmp")).unwrap_or(root.join("tmp"));
    std::fs::canonicalize(&args.context).is_ok_and(|c| c.starts_with(tmp))
}

/// The default a global `ARG SOURCE_DATE_EPOCH=...` gives (BuildKit takes
/// the build's epoch from it when no build arg sets one).
fn dockerfile_epoch(text: &str) -> Option<String> {
    let doc = xbuild_dockerfile::parse(text, "Dockerfile").ok()?;
    let lex = xbuild_dockerfile::shell::Lexer::new(doc.directives.escape);
    let mut found = None;
    for n in doc.nodes.iter().take_while(|n| n.keyword != "from") {
        if n.keyword != "arg" {
            continue;
        }
        for a in &n.args {
            match a.split_once('=') {
                Some(("SOURCE_DATE_EPOCH", v)) => {
                    let empty: Vec<(String, String)> = Vec::new();
                    found = lex.process_word(v, &empty).ok();
                }
                None if a == "SOURCE_DATE_EPOCH" => found = None,
                _ => {}
            }
        }
    }
    found
}

/// The request for what `--call explain` needs: Dockerfile, context,
/// platforms and cache options; no outputs, no secrets.
pub fn base(
    args: &BuildArgs,
    df: &LoadedDockerfile,
    opts: &PlanOptions,
    platforms: &[Platform],
) -> BuildRequest {
    let context_dir = (args.context != "-").then(|| PathBuf::from(&args.context));
    BuildRequest {
        dockerfile: df.clone(),
        dockerfile_in_context: context_dir.as_deref().and_then(|d| dockerfile_rel(d, args)),
        plan: opts.clone(),
        context_dir,
        platforms: platforms.to_vec(),
        tags: args.tags.clone(),
        secrets: Secrets::default(),
        outputs: Vec::new(),
        cache_from: Vec::new(),
        cache_to: Vec::new(),
        node_pins: args.nodes.clone(),
        no_cache: args.no_cache,
        no_cache_filter: args.no_cache_filter.clone(),
        pull: args.pull,
        source_date_epoch: None,
        labels: parse_labels(&args.labels).unwrap_or_default(),
        attest: Default::default(),
    }
}

/// The attestations asked for by `--attest`, `--provenance` and `--sbom`,
/// with buildx's default (a min provenance when pushing, unless
/// `BUILDX_NO_DEFAULT_ATTESTATIONS` is set).
pub fn attestations(args: &BuildArgs, push: bool) -> Result<xbuild_attest::options::Resolved> {
    let mut a = xbuild_attest::AttestOptions::default();
    for v in &args.attest {
        a.add_attest(v)?;
    }
    if let Some(v) = &args.provenance {
        a.set_provenance_flag(v)?;
    }
    if let Some(v) = &args.sbom {
        a.set_sbom_flag(v)?;
    }
    let no_default = xbuild_attest::options::no_default_attestations(
        std::env::var("BUILDX_NO_DEFAULT_ATTESTATIONS")
            .ok()
            .as_deref(),
    );
    Ok(a.resolve(push, no_default))
}

/// The full request of a build, every flag checked before any work.
pub fn from_args(
    args: &BuildArgs,
    df: &LoadedDockerfile,
    opts: &PlanOptions,
    platforms: &[Platform],
) -> Result<BuildRequest> {
    let outputs = export::outputs_from_args(&args.outputs, args.push, args.load)?;
    let push = outputs
        .iter()
        .any(|o| matches!(o, OutputSpec::Image { push: true, .. }));
    parse_labels(&args.labels)?;
    annotations(args, &outputs)?;
    if push
        && args.tags.is_empty()
        && !outputs
            .iter()
            .any(|o| matches!(o, OutputSpec::Image { names, .. } if !names.is_empty()))
    {
        bail!("--push needs a name to push to: give -t REGISTRY/REPO:TAG");
    }
    // Validate every name before any work.
    for t in &args.tags {
        t.parse::<Reference>()
            .map_err(|e| anyhow!("invalid tag {t:?}: {e}"))?;
    }
    let secrets = Secrets::from(parse_secrets(&args.secrets)?);
    let (cache_to, cache_from) = cache_io::parse_args(&args.cache_to, &args.cache_from)?;
    let source_date_epoch = source_date_epoch(
        opts.build_args.get("SOURCE_DATE_EPOCH").map(String::as_str),
        &df.text,
        fetched_context(args),
    )?;
    let attest = attestations(args, push)?;
    Ok(BuildRequest {
        secrets,
        outputs,
        cache_from,
        cache_to,
        source_date_epoch,
        attest,
        ..base(args, df, opts, platforms)
    })
}

/// Parse `--label K=V` (an empty value is allowed, as metadata-action
/// writes for a repository without a description).
pub fn parse_labels(raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in raw {
        // A bare `KEY` is an empty label, as in buildx.
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.trim().is_empty() {
            bail!("invalid --label {l:?}: the key is empty");
        }
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

/// `--annotation` values, then the image output's `annotation.*` ones.
pub fn annotations(
    args: &BuildArgs,
    outputs: &[OutputSpec],
) -> Result<xbuild_oci::annotation::Annotations> {
    let mut a = xbuild_oci::annotation::Annotations::new();
    for v in &args.annotations {
        a.add_flag(v)
            .map_err(|e| anyhow!("invalid --annotation {v:?}: {e}"))?;
    }
    a.extend(&export::image_opts(outputs).annotations);
    Ok(a)
}

/// What the assemble phase changes in each platform manifest.
pub fn rewrite(args: &BuildArgs, req: &BuildRequest) -> Result<xbuild_coordinator::Rewrite> {
    Ok(xbuild_coordinator::Rewrite {
        layers: export::image_opts(&req.outputs).layers,
        annotations: annotations(args, &req.outputs)?,
        base_layers: Default::default(),
    })
}

/// Parse `--secret` specs: `id=ID[,src=FILE|,source=FILE|,env=VAR][,type=file|env]`.
pub fn parse_secrets(specs: &[String]) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let mut id = None;
        let mut src = None;
        let mut env = None;
        let mut typ = None;
        for field in spec.split(',') {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| anyhow!("invalid --secret {spec:?}: expected key=value fields"))?;
            match k.trim() {
                "id" => id = Some(v.to_string()),
                "src" | "source" => src = Some(v.to_string()),
                "env" => env = Some(v.to_string()),
                "type" => typ = Some(v.to_string()),
                other => bail!("invalid --secret field {other:?} (id, src, env, type)"),
            }
        }
        let id = id.ok_or_else(|| anyhow!("--secret needs id=ID"))?;
        let value = match (typ.as_deref(), src, env) {
            (Some("env"), Some(v), None) | (_, None, Some(v)) => std::env::var(&v)
                .map(|s| s.into_bytes())
                .map_err(|_| anyhow!("--secret id={id}: environment variable {v} is not set"))?,
            (_, Some(f), None) => {
                std::fs::read(&f).with_context(|| format!("--secret id={id}: reading {f}"))?
            }
            (_, None, None) => match std::env::var(&id) {
                Ok(v) => v.into_bytes(),
                Err(_) => {
                    bail!("--secret id={id}: give src=FILE or env=VAR (no variable {id} is set)")
                }
            },
            (_, Some(_), Some(_)) => bail!("--secret id={id}: give src= or env=, not both"),
        };
        out.insert(id, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn source_date_epoch_build_arg_wins() {
        // testWorkdirSourceDateEpochReproducible passes it as a build arg.
        assert_eq!(
            super::source_date_epoch(Some("1673364896"), "", false).unwrap(),
            Some(1673364896)
        );
        assert!(super::source_date_epoch(Some("soon"), "", false).is_err());
    }

    #[test]
    fn source_date_epoch_dockerfile_default() {
        // testSourceDateEpochDockerfileDefault / ...Override / ...Invalid.
        let df = "ARG SOURCE_DATE_EPOCH=1445412480\nFROM scratch\n";
        assert_eq!(super::dockerfile_epoch(df).as_deref(), Some("1445412480"));
        assert_eq!(
            super::source_date_epoch(Some("1700000002"), df, false).unwrap(),
            Some(1700000002)
        );
        let bad = "ARG SOURCE_DATE_EPOCH=not-a-timestamp\nFROM scratch\n";
        assert_eq!(
            super::dockerfile_epoch(bad).as_deref(),
            Some("not-a-timestamp")
        );
        // Only a global ARG counts.
        assert_eq!(
            super::dockerfile_epoch("FROM scratch\nARG SOURCE_DATE_EPOCH=5\n"),
            None
        );
    }

    #[test]
    fn labels_parse_like_buildx() {
        // testLabels: --label bar=baz next to the Dockerfile's LABEL.
        let l = super::parse_labels(&["bar=baz".into(), "a=b=c".into(), "empty".into()]).unwrap();
        assert_eq!(l["bar"], "baz");
        assert_eq!(l["a"], "b=c");
        assert_eq!(l["empty"], "");
    }
}
