//! Dockerfile → [`BuildGraph`] for one target platform.
//!
//! Stages are converted on demand, starting from the target, so stages the
//! target does not need are never resolved or planned (BuildKit's
//! behaviour). A stage's dependencies are converted before it, which gives
//! the graph its dependency order for free.

use crate::arg_specs::{parse_port_spec, validate_chmod};
use crate::graph::*;
use crate::words::{Expander, Scope};
use crate::{
    platform_args, BaseConfig, ImageResolver, PlanError, PlanOptions, DEFAULT_PATH, PROXY_ARGS,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use xbuild_dockerfile::ast::Heredoc;
use xbuild_dockerfile::instructions::{
    self, Command, Dockerfile, Healthcheck, Instruction, Kind, MountType, Sharing,
};
use xbuild_oci::Platform;

/// A stage as `--call targets` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageInfo {
    /// `AS name`, if any.
    pub name: Option<String>,
    /// 0-based position.
    pub index: usize,
    /// The FROM image word as written.
    pub base: String,
    /// FROM line.
    pub line: usize,
    /// The platform flag as written, if any.
    pub platform: Option<String>,
    /// True for the last stage (the default target).
    pub default: bool,
    /// The stage's documentation: the text after `NAME ` of the first
    /// comment line above FROM that starts with the stage's name (as
    /// BuildKit's `getDocComment`).
    pub description: Option<String>,
}

/// List the stages of a Dockerfile (`--call targets`).
pub fn targets(df: &Dockerfile) -> Vec<StageInfo> {
    let mut out = Vec::new();
    for ins in &df.instructions {
        if let Kind::From(f) = &ins.kind {
            out.push(StageInfo {
                name: f.name.clone(),
                index: out.len(),
                base: f.image.clone(),
                line: ins.span.start_line,
                platform: f.platform.clone(),
                default: false,
                description: None,
            });
        }
    }
    if let Some(last) = out.last_mut() {
        last.default = true;
    }
    out
}

/// List the stages of a Dockerfile given as text, with the descriptions
/// its comments give them (`--call targets`).
pub fn targets_of_source(src: &str, file: &str) -> Result<Vec<StageInfo>, PlanError> {
    let doc = xbuild_dockerfile::parse(src, file)?;
    let df = instructions::from_document(&doc, file)?;
    let mut stages = targets(&df);
    let comments = crate::lint::node_comments(src, &doc);
    for st in &mut stages {
        let Some(name) = &st.name else { continue };
        let Some(i) = doc.nodes.iter().position(|n| n.span.start_line == st.line) else {
            continue;
        };
        let prefix = format!("{name} ");
        st.description = comments.get(i).and_then(|c| {
            c.iter()
                .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        });
    }
    Ok(stages)
}

/// Parse, type and plan a Dockerfile given as text.
pub fn plan_source(
    src: &str,
    platform: &Platform,
    opts: &PlanOptions,
    resolver: &mut dyn ImageResolver,
) -> Result<BuildGraph, PlanError> {
    let doc = xbuild_dockerfile::parse(src, &opts.file)?;
    let df = instructions::from_document(&doc, &opts.file)?;
    let mut g = plan(&df, platform, opts, resolver)?;
    for w in doc.warnings {
        g.warnings.push(PlanWarning {
            rule: w.rule,
            message: w.message,
            location: Some(Location {
                file: opts.file.clone(),
                start_line: w.line,
                end_line: w.line,
            }),
        });
    }
    Ok(g)
}

/// BuildKit's refusal of a variable in `COPY --from`.
const COPY_FROM_VARIABLE: &str = "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround";

/// The Dockerfile split into its global ARGs and stages.
struct RawStage<'a> {
    from: &'a Instruction,
    from_info: &'a instructions::From,
    body: &'a [Instruction],
}

#[derive(Clone)]
enum Conv {
    NotStarted,
    InProgress,
    Done(usize),
}

/// The state a finished stage hands to stages built on it.
#[derive(Clone, Default)]
struct StageState {
    /// ARGs declared in the stage with their values: a stage built `FROM`
    /// it sees them (BuildKit copies the base stage's build args).
    args: BTreeMap<String, String>,
    arg_order: Vec<String>,
    env: Vec<(String, String)>,
    workdir: String,
    user: String,
    shell: Vec<String>,
    onbuild: Vec<String>,
}

struct Planner<'a> {
    df: &'a Dockerfile,
    opts: &'a PlanOptions,
    platform: &'a Platform,
    resolver: &'a mut dyn ImageResolver,
    stages: Vec<RawStage<'a>>,
    /// Expanded FROM info per stage: (image, platform).
    froms: Vec<(String, Platform, Option<Base>)>,
    conv: Vec<Conv>,
    out: Vec<Stage>,
    finals: Vec<StageState>,
    global_args: BTreeMap<String, String>,
    auto_args: BTreeMap<String, String>,
    consumed: BTreeSet<String>,
    warnings: Vec<PlanWarning>,
}

/// Plan one target platform.
pub fn plan(
    df: &Dockerfile,
    platform: &Platform,
    opts: &PlanOptions,
    resolver: &mut dyn ImageResolver,
) -> Result<BuildGraph, PlanError> {
    let mut auto_args = platform_args(&opts.build_platform, platform);
    // The stage being built: --target, else the last stage's name, else
    // "default" (testTargetStageNameArg).
    let last_name = df.instructions.iter().rev().find_map(|i| match &i.kind {
        Kind::From(f) => Some(f.name.clone()),
        _ => None,
    });
    let target_stage = opts
        .target
        .clone()
        .or(last_name.flatten())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "default".into());
    auto_args.insert("TARGETSTAGE".into(), target_stage);
    let mut p = Planner {
        df,
        opts,
        platform,
        resolver,
        stages: Vec::new(),
        froms: Vec::new(),
        conv: Vec::new(),
        out: Vec::new(),
        finals: Vec::new(),
        global_args: BTreeMap::new(),
        auto_args,
        consumed: BTreeSet::new(),
        warnings: Vec::new(),
    };
    p.split()?;
    p.expand_froms()?;
    let target = p.target_index()?;
    let target_out = p.convert_stage(target, &mut Vec::new())?;
    debug_assert_eq!(target_out, p.out.len() - 1);
    let mut unused: Vec<String> = opts
        .build_args
        .keys()
        .filter(|k| !p.consumed.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
        .cloned()
        .collect();
    unused.sort();
    if !unused.is_empty() {
        p.warnings.push(PlanWarning {
            rule: "UnusedBuildArgs".into(),
            message: format!(
                "one or more build args were not consumed: {}",
                unused.join(", ")
            ),
            location: None,
        });
    }
    Ok(BuildGraph {
        labels: BTreeMap::new(),
        entitlements: opts.allow,
        platform: platform.clone(),
        build_platform: opts.build_platform.clone(),
        target: p.out.len() - 1,
        stages: p.out,
        unused_build_args: unused,
        warnings: p.warnings,
        project: String::new(),
    })
}

fn loc(file: &str, ins: &Instruction) -> Location {
    Location {
        file: file.to_string(),
        start_line: ins.span.start_line,
        end_line: ins.span.end_line,
    }
}

fn json_array(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// POSIX path join + clean for container paths (always absolute).
pub(crate) fn join_clean(base: &str, p: &str) -> String {
    let full = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{}/{}", if base.is_empty() { "/" } else { base }, p)
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in full.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn default_shell(p: &Platform) -> Vec<String> {
    if p.os() == "windows" {
        vec!["cmd".into(), "/S".into(), "/C".into()]
    } else {
        vec!["/bin/sh".into(), "-c".into()]
    }
}

fn chomp(h: &Heredoc) -> String {
    if h.chomp {
        xbuild_dockerfile::parser::chomp_heredoc_content(&h.content)
    } else {
        h.content.clone()
    }
}

impl<'a> Planner<'a> {
    fn file(&self) -> &str {
        &self.opts.file
    }

    fn at(&self, ins: &Instruction, message: impl Into<String>) -> PlanError {
        PlanError::At {
            location: loc(self.file(), ins),
            instruction: ins.keyword.clone(),
            message: message.into(),
        }
    }

    /// Split instructions into global ARGs and stages.
    fn split(&mut self) -> Result<(), PlanError> {
        let df = self.df;
        let ins = &df.instructions;
        let first_from = ins.iter().position(|i| matches!(i.kind, Kind::From(_)));
        let Some(first_from) = first_from else {
            if let Some(i) = ins.iter().find(|i| !matches!(i.kind, Kind::Arg(_))) {
                return Err(self.at(
                    i,
                    "only ARG may come before the first FROM (no build stage in current context)",
                ));
            }
            return Err(PlanError::NoStage {
                file: self.file().to_string(),
                line: ins.last().map_or(1, |i| i.span.end_line),
            });
        };
        // Only ARG may come before the first FROM.
        let mut global_vars = self.auto_args.clone();
        for i in &ins[..first_from] {
            match &i.kind {
                Kind::Arg(decls) => {
                    for d in decls {
                        let value = if let Some(v) = self.opts.build_args.get(&d.name) {
                            self.consumed.insert(d.name.clone());
                            Some(v.clone())
                        } else if let Some(def) = &d.default {
                            let mut ex = Expander::with_vars(df.escape, global_vars.clone());
                            Some(ex.word(def).map_err(|e| self.at(i, e.to_string()))?)
                        } else {
                            None
                        };
                        if let Some(v) = value {
                            self.global_args.insert(d.name.clone(), v.clone());
                            global_vars.insert(d.name.clone(), v);
                        } else {
                            self.global_args.remove(&d.name);
                            global_vars.remove(&d.name);
                        }
                    }
                }
                _ => return Err(self.at(
                    i,
                    "only ARG may come before the first FROM (no build stage in current context)",
                )),
            }
        }
        let mut starts: Vec<usize> = ins
            .iter()
            .enumerate()
            .filter(|(_, i)| matches!(i.kind, Kind::From(_)))
            .map(|(n, _)| n)
            .collect();
        starts.push(ins.len());
        for w in starts.windows(2) {
            let from = &ins[w[0]];
            let Kind::From(info) = &from.kind else {
                unreachable!("stage starts at FROM")
            };
            self.stages.push(RawStage {
                from,
                from_info: info,
                body: &ins[w[0] + 1..w[1]],
            });
        }
        // Duplicate and reserved stage names are only warned about (the
        // DuplicateStageName and ReservedStageName checks): as in
        // BuildKit, a name means the last stage given it so far.
        self.conv = vec![Conv::NotStarted; self.stages.len()];
        self.finals = vec![StageState::default(); self.stages.len()];
        Ok(())
    }

    /// Global variables as FROM lines see them.
    fn global_vars(&self) -> BTreeMap<String, String> {
        let mut v = self.auto_args.clone();
        v.extend(self.global_args.clone());
        v
    }

    fn expand_froms(&mut self) -> Result<(), PlanError> {
        let vars = self.global_vars();
        for n in 0..self.stages.len() {
            let s = &self.stages[n];
            let mut ex = Expander::with_vars(self.df.escape, vars.clone());
            let image = ex
                .word(&s.from_info.image)
                .map_err(|e| self.at(s.from, e.to_string()))?;
            if image.is_empty() {
                return Err(self.at(
                    s.from,
                    format!("base name ({}) should not be blank", s.from_info.image),
                ));
            }
            let platform = match &s.from_info.platform {
                Some(p) => {
                    let pv = ex.word(p).map_err(|e| self.at(s.from, e.to_string()))?;
                    crate::lint::from_platform(self.df.escape, p, &pv, &vars)
                        .map_err(|m| self.at(s.from, m))?
                }
                None => self.platform.clone(),
            };
            // FROM <earlier stage name> refers to that stage.
            let lower = image.to_ascii_lowercase();
            let base = self.stages[..n]
                .iter()
                .rposition(|o| o.from_info.name.as_deref() == Some(lower.as_str()))
                .map(Base::Stage)
                .or((lower == "scratch").then_some(Base::Scratch));
            self.froms.push((image, platform, base));
        }
        Ok(())
    }

    /// The stage name of stage `n` when a `--build-context` of that name
    /// replaces the whole stage (BuildKit: its FROM and body are not run).
    fn context_for_stage(&self, n: usize) -> Option<String> {
        let name = self.stages[n].from_info.name.as_deref()?;
        self.opts
            .image_aliases
            .contains_key(name)
            .then(|| name.to_string())
    }

    fn target_index(&self) -> Result<usize, PlanError> {
        match &self.opts.target {
            None => Ok(self.stages.len() - 1),
            Some(t) => {
                let tl = t.to_ascii_lowercase();
                self.stages
                    .iter()
                    .rposition(|s| s.from_info.name.as_deref() == Some(tl.as_str()))
                    .ok_or_else(|| PlanError::TargetNotFound {
                        target: t.clone(),
                        available: self
                            .stages
                            .iter()
                            .filter_map(|s| s.from_info.name.clone())
                            .collect(),
                    })
            }
        }
    }

    fn stage_label(&self, n: usize) -> String {
        self.stages[n]
            .from_info
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{n}"))
    }

    /// Find a stage referenced by `--from` (name or index). `None` means "an image".
    fn stage_ref(&self, word: &str, ins: &Instruction) -> Result<Option<usize>, PlanError> {
        let lower = word.to_ascii_lowercase();
        if let Some(n) = self
            .stages
            .iter()
            .rposition(|s| s.from_info.name.as_deref() == Some(lower.as_str()))
        {
            return Ok(Some(n));
        }
        if !word.is_empty() && word.chars().all(|c| c.is_ascii_digit()) {
            let n: usize = word
                .parse()
                .map_err(|_| self.at(ins, format!("invalid stage index {word}")))?;
            if n >= self.stages.len() {
                return Err(self.at(ins, format!("invalid stage index {n}")));
            }
            return Ok(Some(n));
        }
        Ok(None)
    }

    /// Convert stage `n` (and, first, what it depends on). Returns its index in the output.
    fn convert_stage(&mut self, n: usize, chain: &mut Vec<usize>) -> Result<usize, PlanError> {
        match self.conv[n] {
            Conv::Done(i) => return Ok(i),
            Conv::InProgress => {
                let start = chain.iter().position(|c| *c == n).unwrap_or(0);
                let mut names: Vec<String> = chain[start..]
                    .iter()
                    .map(|c| self.stage_label(*c))
                    .collect();
                names.push(self.stage_label(n));
                let last = *chain.last().unwrap_or(&n);
                return Err(PlanError::Cycle {
                    location: loc(self.file(), self.stages[last].from),
                    chain: names,
                });
            }
            Conv::NotStarted => {}
        }
        self.conv[n] = Conv::InProgress;
        chain.push(n);
        let result = self.convert_stage_inner(n, chain);
        chain.pop();
        let stage = result?;
        self.out.push(stage);
        let idx = self.out.len() - 1;
        self.conv[n] = Conv::Done(idx);
        Ok(idx)
    }

    /// What `--build-context NAME=…` makes `reference` stand for (also
    /// when written with the implied `:latest`).
    fn alias_target<'s>(&'s self, reference: &str) -> Option<&'s str> {
        let aliases = &self.opts.image_aliases;
        aliases
            .get(reference)
            .or_else(|| {
                reference
                    .strip_suffix(":latest")
                    .and_then(|r| aliases.get(r))
            })
            .map(String::as_str)
    }

    fn resolve_image(
        &mut self,
        ins: &Instruction,
        reference: &str,
        platform: &Platform,
    ) -> Result<(ImageRef, BaseConfig), PlanError> {
        // `--build-context NAME=docker-image://REF` replaces the image NAME
        // (also when written with the implied `:latest`).
        let reference = self
            .alias_target(reference)
            .unwrap_or(reference)
            .to_string();
        let reference = reference.as_str();
        let r = self
            .resolver
            .resolve(reference, platform)
            .map_err(|message| PlanError::Resolve {
                location: loc(&self.opts.file, ins),
                reference: reference.to_string(),
                platform: platform.to_string(),
                message,
            })?;
        Ok((
            ImageRef {
                reference: reference.to_string(),
                platform: platform.clone(),
                digest: r.digest,
            },
            r.config,
        ))
    }

    fn convert_stage_inner(
        &mut self,
        n: usize,
        chain: &mut Vec<usize>,
    ) -> Result<Stage, PlanError> {
        let from_ins = self.stages[n].from;
        let from_info = self.stages[n].from_info;
        let body = match self.context_for_stage(n) {
            Some(_) => &[],
            None => self.stages[n].body,
        };
        let (image, mut platform, base_kind) = self.froms[n].clone();
        // A stage whose own name is a named context is that context.
        let (image, base_kind) = match self.context_for_stage(n) {
            Some(name) => (name, None),
            None => (image, base_kind),
        };
        let base_kind = match base_kind {
            None if self.alias_target(&image) == Some("scratch") => Some(Base::Scratch),
            other => other,
        };
        let (base, mut state) = match base_kind {
            Some(Base::Scratch) => (
                Base::Scratch,
                StageState {
                    env: vec![("PATH".into(), DEFAULT_PATH.into())],
                    ..Default::default()
                },
            ),
            Some(Base::Stage(dep)) => {
                let out_idx = self.convert_stage(dep, chain)?;
                if from_info.platform.is_none() {
                    platform = self.out[out_idx].platform.clone();
                }
                (Base::Stage(out_idx), self.finals[dep].clone())
            }
            _ => {
                let (r, cfg) = self.resolve_image(from_ins, &image, &platform)?;
                let env = cfg
                    .env
                    .iter()
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (kv.clone(), String::new()),
                    })
                    .collect();
                (
                    Base::Image(r),
                    StageState {
                        env,
                        workdir: cfg.working_dir,
                        user: cfg.user,
                        shell: cfg.shell,
                        onbuild: cfg.onbuild,
                        args: BTreeMap::new(),
                        arg_order: Vec::new(),
                    },
                )
            }
        };
        if state.shell.is_empty() {
            state.shell = default_shell(&platform);
        }
        let from_text = match &from_info.name {
            Some(name) => format!("FROM {image} AS {name}"),
            None => format!("FROM {image}"),
        };
        let mut sc = StageConv {
            n,
            platform: platform.clone(),
            scope: Scope {
                args: state.args.clone(),
                env: state.env.clone(),
                arg_order: state.arg_order.clone(),
            },
            state,
            steps: Vec::new(),
        };
        // ONBUILD triggers of the base run first; they are not inherited
        // further. A stage replaced by a named context runs none: the
        // context's triggers stay for the stages built FROM it (BuildKit).
        let triggers = match self.context_for_stage(n) {
            Some(_) => Vec::new(),
            None => std::mem::take(&mut sc.state.onbuild),
        };
        for t in &triggers {
            let trig_file = match base {
                Base::Stage(_) => self.file().to_string(),
                _ => format!("{} (ONBUILD trigger of {image})", self.file()),
            };
            let doc = xbuild_dockerfile::parse(t, &trig_file)?;
            for node in &doc.nodes {
                let mut ins = instructions::from_node(node, &trig_file)?;
                ins.span = from_ins.span;
                if matches!(ins.kind, Kind::From(_) | Kind::Onbuild { .. }) {
                    return Err(self.at(
                        from_ins,
                        format!("invalid ONBUILD trigger in base image: {t}"),
                    ));
                }
                self.convert_instruction(&mut sc, &ins, chain, true)?;
            }
        }
        for ins in body {
            self.convert_instruction(&mut sc, ins, chain, false)?;
        }
        sc.state.env = sc.scope.env.clone();
        sc.state.args = sc.scope.args.clone();
        sc.state.arg_order = sc.scope.arg_order.clone();
        self.finals[n] = sc.state.clone();
        Ok(Stage {
            name: from_info.name.clone(),
            dockerfile_index: n,
            platform,
            base,
            location: loc(self.file(), from_ins),
            from_text,
            steps: sc.steps,
        })
    }

    fn arg_value(
        &mut self,
        name: &str,
        default: Option<&str>,
        ex_scope: &Scope,
        ins: &Instruction,
    ) -> Result<Option<String>, PlanError> {
        if let Some(v) = self.opts.build_args.get(name) {
            self.consumed.insert(name.to_string());
            return Ok(Some(v.clone()));
        }
        if let Some(d) = default {
            let mut ex = Expander::new(self.df.escape, ex_scope);
            return Ok(Some(ex.word(d).map_err(|e| self.at(ins, e.to_string()))?));
        }
        if let Some(v) = self.global_args.get(name) {
            return Ok(Some(v.clone()));
        }
        if let Some(v) = self.auto_args.get(name) {
            return Ok(Some(v.clone()));
        }
        Ok(None)
    }

    /// `--build-arg BUILDKIT_SANDBOX_HOSTNAME=NAME`: the hostname of RUN
    /// steps (a frontend option: no ARG needed).
    fn sandbox_hostname(&mut self) -> Option<String> {
        let v = self
            .opts
            .build_args
            .get("BUILDKIT_SANDBOX_HOSTNAME")
            .filter(|v| !v.is_empty())?
            .clone();
        self.consumed
            .insert("BUILDKIT_SANDBOX_HOSTNAME".to_string());
        Some(v)
    }

    fn file_source(
        &mut self,
        sc: &StageConv,
        from: Option<&str>,
        ins: &Instruction,
        chain: &mut Vec<usize>,
        mount_target: Option<&str>,
    ) -> Result<FileSource, PlanError> {
        let Some(word) = from else {
            return Ok(FileSource::Context);
        };
        match self.stage_ref(word, ins)? {
            Some(dep) => {
                if dep >= sc.n {
                    // BuildKit dispatches stages in order: a stage can only
                    // read one defined before it.
                    let current = self.stages[sc.n].from_info.name.clone().unwrap_or_default();
                    let msg = match mount_target {
                        Some(t) => format!(
                            "cannot mount from stage {word:?} to {t:?}, stage needs to be defined before current command"
                        ),
                        None => format!(
                            "cannot copy from stage {word:?}, it needs to be defined before current stage {current:?}"
                        ),
                    };
                    return Err(self.at(ins, msg));
                }
                // BuildKit lets RUN mount a later stage, but COPY only
                // from a stage defined before the current one.
                if dep > sc.n && matches!(ins.kind, Kind::Copy(_)) {
                    return Err(self.at(
                        ins,
                        format!(
                            "cannot copy from stage {:?}, it needs to be defined before current stage {:?}",
                            self.stage_label(dep),
                            self.stage_label(sc.n)
                        ),
                    ));
                }
                Ok(FileSource::Stage(self.convert_stage(dep, chain)?))
            }
            None => {
                if word.eq_ignore_ascii_case("scratch") {
                    return Err(self.at(ins, "cannot copy from scratch (it is empty)"));
                }
                let (r, _) = self.resolve_image(ins, word, &sc.platform)?;
                Ok(FileSource::Image(r))
            }
        }
    }

    fn convert_instruction(
        &mut self,
        sc: &mut StageConv,
        ins: &Instruction,
        chain: &mut Vec<usize>,
        from_onbuild: bool,
    ) -> Result<(), PlanError> {
        let esc = self.df.escape;
        let mut ex = Expander::new(esc, &sc.scope);
        let e = |ex_err: xbuild_dockerfile::shell::ExpandError| ex_err.to_string();
        let mut build_args: Option<BTreeMap<String, String>> = None;
        let (text, created_by, op) = match &ins.kind {
            Kind::From(_) => unreachable!("FROM starts a stage"),
            Kind::Arg(decls) => {
                let mut out = Vec::new();
                for d in decls {
                    let snapshot = sc.scope.clone();
                    let v = self.arg_value(&d.name, d.default.as_deref(), &snapshot, ins)?;
                    match &v {
                        Some(v) => {
                            sc.scope.set_arg(&d.name, v);
                        }
                        None => {
                            sc.scope.args.remove(&d.name);
                        }
                    }
                    out.push((d.name.clone(), v));
                }
                let shown: Vec<String> = out
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{k}={v}"),
                        None => k.clone(),
                    })
                    .collect();
                let t = format!("ARG {}", shown.join(" "));
                (t.clone(), t, Op::Config(ConfigOp::Arg(out)))
            }
            Kind::Env(kvs) | Kind::Label(kvs) => {
                let is_env = matches!(ins.kind, Kind::Env(_));
                let mut pairs = Vec::new();
                for kv in kvs {
                    let k = ex.word(&kv.key).map_err(|x| self.at(ins, e(x)))?;
                    let v = ex.word(&kv.value).map_err(|x| self.at(ins, e(x)))?;
                    if k.is_empty() {
                        return Err(self.at(ins, "names can not be blank"));
                    }
                    pairs.push((k, v));
                }
                // BuildKit's history text: `KEY=value`, unquoted, for ENV
                // and LABEL alike (testExportedHistory).
                let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let t = format!("{} {}", ins.keyword, shown.join(" "));
                if is_env {
                    for (k, v) in &pairs {
                        sc.scope.set_env(k, v);
                    }
                    (t.clone(), t, Op::Config(ConfigOp::Env(pairs)))
                } else {
                    (t.clone(), t, Op::Config(ConfigOp::Label(pairs)))
                }
            }
            Kind::Workdir(w) => {
                let v = ex.word(w).map_err(|x| self.at(ins, e(x)))?;
                if v.is_empty() {
                    return Err(self.at(ins, "WORKDIR cannot be empty"));
                }
                let abs = join_clean(&sc.state.workdir, &v);
                sc.state.workdir = abs.clone();
                let t = format!("WORKDIR {abs}");
                (t.clone(), t, Op::Config(ConfigOp::Workdir(abs)))
            }
            Kind::User(u) => {
                let v = ex.word(u).map_err(|x| self.at(ins, e(x)))?;
                sc.state.user = v.clone();
                let t = format!("USER {v}");
                (t.clone(), t, Op::Config(ConfigOp::User(v)))
            }
            Kind::StopSignal(s) => {
                let v = ex.word(s).map_err(|x| self.at(ins, e(x)))?;
                let t = format!("STOPSIGNAL {v}");
                (t.clone(), t, Op::Config(ConfigOp::StopSignal(v)))
            }
            Kind::Maintainer(m) => {
                let t = format!("MAINTAINER {m}");
                (t.clone(), t, Op::Config(ConfigOp::Maintainer(m.clone())))
            }
            Kind::Expose(ports) => {
                // As BuildKit: the words are sorted as written, expanded,
                // and each `[ip:][host:]port[-end][/proto]` gives its
                // container ports; an IP or host port is accepted with a
                // warning (ExposeInvalidFormat).
                let mut sorted = ports.clone();
                sorted.sort();
                let mut words = Vec::new();
                let mut each = Vec::new();
                for p in &sorted {
                    for w in ex.words(p).map_err(|x| self.at(ins, e(x)))? {
                        let spec = parse_port_spec(&w).map_err(|m| self.at(ins, m))?;
                        if spec.host_mapping {
                            self.warnings.push(PlanWarning {
                                rule: "ExposeInvalidFormat".into(),
                                message: format!(
                                    "EXPOSE instruction should not define an IP address or host-port mapping, found '{w}'"
                                ),
                                location: Some(loc(self.file(), ins)),
                            });
                        }
                        if spec.proto_casing {
                            self.warnings.push(PlanWarning {
                                rule: "ExposeProtoCasing".into(),
                                message: format!(
                                    "Defined protocol '{w}' in EXPOSE instruction should be lowercase"
                                ),
                                location: Some(loc(self.file(), ins)),
                            });
                        }
                        each.extend(spec.ports);
                        words.push(w);
                    }
                }
                let t = format!("EXPOSE {}", words.join(" "));
                let created_by = format!("EXPOSE [{}]", each.join(" "));
                (t, created_by, Op::Config(ConfigOp::Expose(each)))
            }
            Kind::Volume(vols) => {
                let mut out = Vec::new();
                for v in vols {
                    let x = ex.word(v).map_err(|x| self.at(ins, e(x)))?;
                    if x.trim().is_empty() {
                        return Err(self.at(ins, "VOLUME specified can not be an empty string"));
                    }
                    out.push(x);
                }
                let t = format!("VOLUME {}", json_array(&out));
                (t.clone(), t, Op::Config(ConfigOp::Volume(out)))
            }
            Kind::Cmd(c) | Kind::Entrypoint(c) => {
                let argv = match c {
                    Command::Exec(v) => v.clone(),
                    Command::Shell(s) => {
                        let mut v = sc.state.shell.clone();
                        v.push(s.clone());
                        v
                    }
                };
                let t = format!("{} {}", ins.keyword, json_array(&argv));
                let op = if matches!(ins.kind, Kind::Cmd(_)) {
                    ConfigOp::Cmd(argv)
                } else {
                    ConfigOp::Entrypoint(argv)
                };
                (t.clone(), t, Op::Config(op))
            }
            Kind::Shell(sh) => {
                sc.state.shell = sh.clone();
                let t = format!("SHELL {}", json_array(sh));
                (t.clone(), t, Op::Config(ConfigOp::Shell(sh.clone())))
            }
            Kind::Healthcheck(h) => {
                let spec = match h {
                    Healthcheck::None => HealthcheckSpec {
                        test: vec!["NONE".into()],
                        interval: None,
                        timeout: None,
                        start_period: None,
                        start_interval: None,
                        retries: None,
                    },
                    Healthcheck::Cmd {
                        command,
                        interval,
                        timeout,
                        start_period,
                        start_interval,
                        retries,
                    } => HealthcheckSpec {
                        test: match command {
                            Command::Exec(v) => {
                                let mut t = vec!["CMD".to_string()];
                                t.extend(v.iter().cloned());
                                t
                            }
                            Command::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
                        },
                        interval: *interval,
                        timeout: *timeout,
                        start_period: *start_period,
                        start_interval: *start_interval,
                        retries: *retries,
                    },
                };
                let t = format!("HEALTHCHECK {}", json_array(&spec.test));
                (t.clone(), t, Op::Config(ConfigOp::Healthcheck(spec)))
            }
            Kind::Onbuild { text, .. } => {
                // A stage built FROM this one runs it (testOnBuildInheritedStageRun).
                sc.state.onbuild.push(text.clone());
                let t = format!("ONBUILD {text}");
                (t.clone(), t, Op::Config(ConfigOp::Onbuild(text.clone())))
            }
            Kind::Run(run) => {
                let mut mounts = Vec::new();
                for m in &run.mounts {
                    mounts.push(self.exec_mount(sc, &mut ex, m, ins, chain)?);
                }
                // `default` is the build's `--network`; host networking and
                // the insecure mode need the build's `--allow`, as in buildx.
                let network = match run.network.as_deref() {
                    None | Some("default") => self.opts.network,
                    Some("none") => Network::None,
                    Some("host") => Network::Host,
                    Some(other) => {
                        return Err(self.at(
                            ins,
                            format!("unsupported network mode {other:?} (default, none or host)"),
                        ))
                    }
                };
                if network == Network::Host && !self.opts.allow.network_host {
                    return Err(self.at(
                        ins,
                        "entitlement network.host is not allowed: network mode \"host\" \
                         needs --allow network.host",
                    ));
                }
                let insecure = match run.security.as_deref() {
                    None | Some("sandbox") => false,
                    Some("insecure") => true,
                    Some(other) => {
                        return Err(self.at(
                            ins,
                            format!("unsupported security mode {other:?} (sandbox or insecure)"),
                        ))
                    }
                };
                if insecure && !self.opts.allow.security_insecure {
                    return Err(self.at(
                        ins,
                        "entitlement security.insecure is not allowed: security mode \
                         \"insecure\" needs --allow security.insecure",
                    ));
                }
                let mut inline_files = Vec::new();
                let args = match (&run.command, run.heredocs.as_slice()) {
                    (Command::Exec(v), _) => v.clone(),
                    (Command::Shell(cmd), []) => {
                        let mut v = sc.state.shell.clone();
                        v.push(cmd.clone());
                        v
                    }
                    (Command::Shell(cmd), [only]) if is_bare_heredoc(cmd, only) => {
                        let body = chomp(only);
                        if body.starts_with("#!") {
                            // A script with its own interpreter: write it and run it.
                            let path = format!("/dev/pipes/{}", only.name);
                            inline_files.push(InlineFile {
                                name: path.clone(),
                                content: body,
                                mode: 0o755,
                            });
                            vec![path]
                        } else {
                            let mut v = sc.state.shell.clone();
                            v.push(body);
                            v
                        }
                    }
                    (Command::Shell(cmd), docs) => {
                        // The shell sees the command line followed by the heredoc bodies.
                        let mut script = cmd.clone();
                        for h in docs {
                            script.push('\n');
                            script.push_str(&h.content);
                            script.push_str(&h.name);
                        }
                        let mut v = sc.state.shell.clone();
                        v.push(script);
                        v
                    }
                };
                let args_in_scope = sc.scope.effective_args();
                let mut env: Vec<String> = sc
                    .scope
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                for (k, v) in &args_in_scope {
                    env.push(format!("{k}={v}"));
                }
                // BuildKit's proxy env: a proxy build arg, in either case,
                // reaches RUN in both spellings without an ARG.
                for (upper, lower) in PROXY_ARGS.chunks(2).map(|c| (c[0], c[1])) {
                    let v = self
                        .opts
                        .build_args
                        .get(upper)
                        .or_else(|| self.opts.build_args.get(lower))
                        .or_else(|| {
                            self.opts
                                .build_args
                                .iter()
                                .find(|(k, _)| k.eq_ignore_ascii_case(upper))
                                .map(|(_, v)| v)
                        });
                    let Some(v) = v else { continue };
                    for name in [upper, lower] {
                        if !args_in_scope.contains_key(name) {
                            env.push(format!("{name}={v}"));
                        }
                    }
                }
                if !env.iter().any(|kv| kv.starts_with("PATH=")) {
                    env.push(format!("PATH={DEFAULT_PATH}"));
                }
                let prefix = if args_in_scope.is_empty() {
                    String::new()
                } else {
                    let kv: Vec<String> = sc
                        .scope
                        .ordered_args()
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    format!("|{} {} ", kv.len(), kv.join(" "))
                };
                let created_by = format!("RUN {prefix}{} # buildkit", args.join(" "));
                build_args = Some(args_in_scope);
                let text = format!("RUN {}", strip_keyword(&ins.original));
                (
                    text,
                    created_by,
                    Op::Exec(ExecOp {
                        args,
                        env,
                        cwd: if sc.state.workdir.is_empty() {
                            "/".into()
                        } else {
                            sc.state.workdir.clone()
                        },
                        user: sc.state.user.clone(),
                        network,
                        insecure,
                        mounts,
                        inline_files,
                        hostname: self.sandbox_hostname(),
                        extra_hosts: self.opts.extra_hosts.clone(),
                        shm_size: self.opts.shm_size,
                        ulimits: self.opts.ulimits.clone(),
                    }),
                )
            }
            Kind::Copy(c) => {
                let from_word = match &c.from {
                    Some(f) => {
                        // BuildKit refuses any expansion in COPY --from
                        // (the word must be the same with no variables).
                        let plain = Expander::new(esc, &Scope::default())
                            .word(f)
                            .map_err(|x| self.at(ins, e(x)))?;
                        if plain != *f {
                            return Err(self.at(ins, COPY_FROM_VARIABLE));
                        }
                        Some(f.clone())
                    }
                    None => None,
                };
                let from = self.file_source(sc, from_word.as_deref(), ins, chain, None)?;
                let mut sources = Vec::new();
                let mut inline = Vec::new();
                let mut docs = c.heredocs.iter();
                for s in &c.sources {
                    if s.starts_with("<<") && !c.heredocs.is_empty() {
                        if let Some(h) = docs.next() {
                            let mut body = chomp(h);
                            if h.expand {
                                body = ex.word_literal(&body).map_err(|x| self.at(ins, e(x)))?;
                            }
                            inline.push(InlineFile {
                                name: h.name.clone(),
                                content: body,
                                mode: 0o644,
                            });
                            continue;
                        }
                    }
                    let v = ex.word(s).map_err(|x| self.at(ins, e(x)))?;
                    // BuildKit: a source that expands to nothing is the root.
                    let v = if v.is_empty() { ".".into() } else { v };
                    if !c.is_add && (v.starts_with("http://") || v.starts_with("https://")) {
                        return Err(self.at(
                            ins,
                            format!("source can't be a URL for COPY: {v} (use ADD)"),
                        ));
                    }
                    sources.push(v);
                }
                let dest_word = ex.word(&c.dest).map_err(|x| self.at(ins, e(x)))?;
                let mut dest = join_clean(&sc.state.workdir, &dest_word);
                let dir_dest = dest_word.ends_with('/')
                    || dest_word == "."
                    || dest_word.is_empty()
                    || dest_word.ends_with("/.");
                if dir_dest && !dest.ends_with('/') {
                    dest.push('/');
                }
                if sources.len() + inline.len() > 1 && !dest.ends_with('/') {
                    return Err(self.at(
                        ins,
                        format!(
                            "when using {} with more than one source file, the destination must be a directory and end with a / (got {dest_word:?})",
                            ins.keyword
                        ),
                    ));
                }
                let chown = match &c.chown {
                    Some(v) => Some(ex.word(v).map_err(|x| self.at(ins, e(x)))?),
                    None => None,
                };
                let chmod = match &c.chmod {
                    Some(v) => {
                        let m = ex.word(v).map_err(|x| self.at(ins, e(x)))?;
                        validate_chmod(&m).map_err(|msg| self.at(ins, msg))?;
                        Some(m)
                    }
                    None => None,
                };
                let exclude = c
                    .exclude
                    .iter()
                    .map(|x| ex.word(x))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|x| self.at(ins, e(x)))?;
                let mut flags = Vec::new();
                if let Some(f) = &from_word {
                    flags.push(format!("--from={f}"));
                }
                if let Some(v) = &chown {
                    flags.push(format!("--chown={v}"));
                }
                if let Some(v) = &chmod {
                    flags.push(format!("--chmod={v}"));
                }
                if c.link {
                    flags.push("--link".into());
                }
                if c.parents {
                    flags.push("--parents".into());
                }
                for x in &exclude {
                    flags.push(format!("--exclude={x}"));
                }
                let checksum = match &c.checksum {
                    Some(v) => Some(ex.word(v).map_err(|x| self.at(ins, e(x)))?),
                    None => None,
                };
                if let Some(v) = &checksum {
                    flags.push(format!("--checksum={v}"));
                }
                let mut words = flags;
                words.extend(sources.iter().cloned());
                words.extend(inline.iter().map(|h| format!("<<{}", h.name)));
                words.push(dest_word.clone());
                let text = format!("{} {}", ins.keyword, words.join(" "));
                // BuildKit's history text names only --parents, --chown
                // and --chmod, then the sources and the destination.
                let mut hist = vec![ins.keyword.clone()];
                if c.parents {
                    hist.push("--parents".into());
                }
                if let Some(v) = chown.as_ref().filter(|v| !v.is_empty()) {
                    hist.push(format!("--chown={v}"));
                }
                if let Some(v) = chmod.as_ref().filter(|v| !v.is_empty()) {
                    hist.push(format!("--chmod={v}"));
                }
                hist.extend(sources.iter().cloned());
                hist.extend(inline.iter().map(|h| format!("<<{}", h.name)));
                hist.push(dest_word.clone());
                let created_by = format!("{} # buildkit", hist.join(" "));
                (
                    text,
                    created_by,
                    Op::Copy(CopyOp {
                        from,
                        sources,
                        inline,
                        dest,
                        chown,
                        chmod,
                        link: c.link,
                        exclude,
                        parents: c.parents,
                        add: c.is_add,
                        checksum,
                        unpack: c.unpack,
                        keep_git_dir: c.keep_git_dir,
                    }),
                )
            }
        };
        let build_args = build_args.unwrap_or_else(|| ex.used.clone());
        sc.steps.push(Step {
            location: loc(self.file(), ins),
            display: title_as_written(ins),
            text,
            created_by,
            op,
            build_args,
            from_onbuild,
        });
        Ok(())
    }

    fn exec_mount(
        &mut self,
        sc: &StageConv,
        ex: &mut Expander,
        m: &instructions::Mount,
        ins: &Instruction,
        chain: &mut Vec<usize>,
    ) -> Result<ExecMount, PlanError> {
        // Every value is expanded (BuildKit, testMountArg: `type=$T`); a
        // spec as written is parsed again with its values expanded.
        let reparsed;
        let (m, expanded) = if m.spec.is_empty() {
            (m, false)
        } else {
            let mut expand = |v: &str| ex.word(v).map_err(|x| x.to_string());
            reparsed = instructions::parse_mount_with(&m.spec, &mut expand)
                .map_err(|msg| self.at(ins, format!("--mount={}: {msg}", m.spec)))?;
            (&reparsed, true)
        };
        let exp = |ex: &mut Expander, v: &Option<String>| -> Result<Option<String>, String> {
            match v {
                Some(s) if expanded => Ok(Some(s.clone())),
                Some(s) => ex.word(s).map(Some).map_err(|x| x.to_string()),
                None => Ok(None),
            }
        };
        let target = exp(ex, &m.target).map_err(|x| self.at(ins, x))?;
        let source = exp(ex, &m.source).map_err(|x| self.at(ins, x))?;
        let from_w = exp(ex, &m.from).map_err(|x| self.at(ins, x))?;
        let mut id = exp(ex, &m.id).map_err(|x| self.at(ins, x))?;
        let target_word = target.clone().unwrap_or_default();
        let target = target.map(|t| join_clean(&sc.state.workdir, &t));
        let from = match m.kind {
            MountType::Bind | MountType::Cache => match &from_w {
                Some(_) => {
                    Some(self.file_source(sc, from_w.as_deref(), ins, chain, Some(&target_word))?)
                }
                None if m.kind == MountType::Bind => Some(FileSource::Context),
                None => None,
            },
            _ => None,
        };
        let target = match m.kind {
            MountType::Secret => {
                if id.is_none() {
                    id = target
                        .as_deref()
                        .and_then(|t| t.rsplit('/').next())
                        .map(str::to_string);
                }
                match (&target, &m.env) {
                    (Some(t), _) => Some(t.clone()),
                    (None, Some(_)) => None,
                    (None, None) => Some(format!(
                        "/run/secrets/{}",
                        id.as_deref().unwrap_or_default()
                    )),
                }
            }
            MountType::Ssh => Some(target.unwrap_or_else(|| "/run/buildkit/ssh_agent.0".into())),
            _ => target,
        };
        if m.kind == MountType::Secret && id.as_deref().unwrap_or("").is_empty() {
            return Err(self.at(ins, "secret mount needs id= or target="));
        }
        if m.kind == MountType::Cache && id.is_none() {
            id = target.clone();
        }
        let readonly = m
            .readonly
            .unwrap_or(matches!(m.kind, MountType::Bind | MountType::Secret));
        Ok(ExecMount {
            kind: m.kind,
            target,
            source,
            from,
            readonly,
            id,
            sharing: m.sharing.unwrap_or(Sharing::Shared),
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            required: m.required.unwrap_or(false),
            env: m.env.clone(),
            size: m.size,
        })
    }
}

/// Per-stage conversion state.
struct StageConv {
    n: usize,
    platform: Platform,
    scope: Scope,
    state: StageState,
    steps: Vec<Step>,
}

/// The instruction as the Dockerfile spells it, on one line: upper-case
/// keyword, the rest verbatim (continuations already joined by the parser).
fn title_as_written(ins: &Instruction) -> String {
    let rest = strip_keyword(&ins.original);
    if rest.is_empty() {
        ins.keyword.clone()
    } else {
        format!("{} {rest}", ins.keyword)
    }
}

fn strip_keyword(original: &str) -> &str {
    let t = original.trim_start();
    match t.find(char::is_whitespace) {
        Some(i) => t[i..].trim_start(),
        None => "",
    }
}

fn is_bare_heredoc(cmd: &str, h: &Heredoc) -> bool {
    let c = cmd.trim();
    let Some(rest) = c.strip_prefix("<<") else {
        return false;
    };
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let unquoted: String = rest.chars().filter(|c| *c != '"' && *c != '\'').collect();
    unquoted == h.name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_descriptions_come_from_the_comment_naming_the_stage() {
        let src = "# syntax=docker/dockerfile:1\n\
                   # base is where it starts\nFROM a AS base\n\
                   # not about it\nFROM b AS other\n\
                   # out is dropped\n#\nFROM c AS out\n\
                   # the last one\n# last is the default\nFROM d AS last\n";
        let t = targets_of_source(src, "Dockerfile").unwrap();
        let d: Vec<Option<&str>> = t.iter().map(|s| s.description.as_deref()).collect();
        assert_eq!(
            d,
            [
                Some("is where it starts"),
                None,
                None,
                Some("is the default")
            ]
        );
        assert!(t[3].default && !t[0].default);
        assert_eq!(t[1].line, 5);
    }

    #[test]
    fn paths() {
        assert_eq!(join_clean("", "app"), "/app");
        assert_eq!(join_clean("/a/b", "../c"), "/a/c");
        assert_eq!(join_clean("/a", "/x/./y/"), "/x/y");
        assert_eq!(join_clean("/", ".."), "/");
    }
}
