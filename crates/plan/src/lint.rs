//! BuildKit's build checks (`frontend/dockerfile/linter`), re-expressed over
//! xbuild's syntax tree: the same rule names, messages and lines, the same
//! `# check=` configuration (file directive, the `BUILDKIT_DOCKERFILE_CHECK`
//! build arg that replaces it, and `# check=` comments right above one
//! instruction that apply to it alone), and the same split between rules
//! BuildKit runs on every stage and rules it runs while building a stage
//! (in a build, only the stages the target needs).

use crate::graph::Location;
use std::collections::{BTreeMap, BTreeSet};
use xbuild_dockerfile::ast::{Document, Node};
use xbuild_dockerfile::ignore::PatternMatcher;
use xbuild_dockerfile::shell::Lexer;
use xbuild_dockerfile::suggest::suggest;
use xbuild_oci::Platform;

/// Rules that run only when named in `experimental=`.
const EXPERIMENTAL: &[&str] = &["InvalidDefinitionDescription"];

/// Stage names BuildKit reserves.
const RESERVED: &[&str] = &["context", "scratch"];

/// The build arg that replaces the file's `# check=` directive.
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// A `check=` configuration (`skip=A,B;error=true;experimental=C`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LintConfig {
    /// `skip=all`.
    pub skip_all: bool,
    /// Rules named in `skip=`.
    pub skip: BTreeSet<String>,
    /// `experimental=all`.
    pub experimental_all: bool,
    /// Rules named in `experimental=`.
    pub experimental: BTreeSet<String>,
    /// `error=true`: any warning fails the build.
    pub error: bool,
}

impl LintConfig {
    /// Parse a `check=` value; `Err` names the bad option.
    pub fn parse(s: &str) -> Result<LintConfig, String> {
        let mut c = LintConfig::default();
        let s = s.trim();
        if s.is_empty() {
            return Ok(c);
        }
        for part in s.splitn(3, ';') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("invalid check option {part:?}"))?;
            let v = v.trim();
            let list = || v.split(',').map(|r| r.trim().to_string());
            match k.trim() {
                "skip" if v == "all" => c.skip_all = true,
                "skip" => c.skip.extend(list()),
                "experimental" if v == "all" => c.experimental_all = true,
                "experimental" => c.experimental.extend(list()),
                "error" => {
                    c.error = match v.to_ascii_lowercase().as_str() {
                        "1" | "t" | "true" => true,
                        "0" | "f" | "false" => false,
                        _ => return Err(format!("failed to parse check option {part:?}")),
                    }
                }
                other => return Err(format!("invalid check option {other:?}")),
            }
        }
        Ok(c)
    }

    /// The configuration of a build: the build arg when given, else the
    /// file's directive.
    pub fn for_build(doc: &Document, build_args: &BTreeMap<String, String>) -> LintConfig {
        let raw = build_args
            .get(CHECK_BUILD_ARG)
            .cloned()
            .or_else(|| doc.directives.check.clone());
        raw.and_then(|r| LintConfig::parse(&r).ok())
            .unwrap_or_default()
    }

    fn merged(&self, o: &LintConfig) -> LintConfig {
        let mut c = self.clone();
        c.skip_all |= o.skip_all;
        c.skip.extend(o.skip.iter().cloned());
        c.experimental_all |= o.experimental_all;
        c.experimental.extend(o.experimental.iter().cloned());
        c
    }

    /// Whether `rule` runs under this configuration.
    pub fn runs(&self, rule: &str) -> bool {
        if EXPERIMENTAL.contains(&rule) {
            return self.experimental_all || self.experimental.contains(rule);
        }
        !(self.skip_all || self.skip.contains(rule))
    }
}

/// One warning of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintWarning {
    /// Rule name.
    pub rule: &'static str,
    /// BuildKit's detail text.
    pub message: String,
    /// The instruction's lines.
    pub location: Location,
}

/// What the rules look at besides the Dockerfile.
#[derive(Debug, Default)]
pub struct LintInput<'a> {
    /// Lint only the stages the target needs (a build), not all (`--call check`).
    pub reachable_only: bool,
    /// The `--target` stage.
    pub target: Option<&'a str>,
    /// The context's `.dockerignore` patterns, when it has one.
    pub ignore: Option<&'a [String]>,
    /// The environment variable names of the base images, by stage index
    /// (stages built on an image whose config is known, e.g. after a build).
    pub base_env: Option<&'a BTreeMap<usize, Vec<String>>>,
}

/// The comments above each node as BuildKit's parser collects them (every
/// comment line since the previous instruction, text after `#` trimmed; an
/// empty `#` starts over; the file's leading directives are not comments).
pub(crate) fn node_comments(src: &str, doc: &Document) -> Vec<Vec<String>> {
    let lines: Vec<&str> = src.lines().collect();
    let mut first_free = 0;
    for (i, l) in lines.iter().enumerate() {
        match directive(l) {
            Some((name, _)) if ["syntax", "escape", "check"].contains(&name.as_str()) => {
                first_free = i + 1
            }
            _ => break,
        }
    }
    let mut prev_end = 0;
    let mut out = Vec::new();
    for n in &doc.nodes {
        let mut comments: Vec<String> = Vec::new();
        let upto = n.span.start_line.saturating_sub(1);
        for l in lines.iter().take(upto).skip(prev_end.max(first_free)) {
            if let Some(c) = l.trim_start().strip_prefix('#') {
                if c.trim().is_empty() {
                    comments.clear();
                } else {
                    comments.push(c.trim().to_string());
                }
            }
        }
        prev_end = n.span.end_line;
        out.push(comments);
    }
    out
}

/// The `# check=` configuration among a node's comments (the first one;
/// its value ends at the first space, so a note may follow).
fn comment_config(comments: &[String]) -> Option<LintConfig> {
    comments
        .iter()
        .find_map(|c| match directive(&format!("#{c}")) {
            Some((name, value)) if name == "check" => {
                LintConfig::parse(value.split(' ').next().unwrap_or("")).ok()
            }
            _ => None,
        })
}

/// `# name=value` → (lower-cased name, value).
fn directive(line: &str) -> Option<(String, String)> {
    let t = line.trim_start().strip_prefix('#')?.trim_start();
    let (name, value) = t.split_once('=')?;
    let name = name.trim_end();
    if name.is_empty()
        || !name.starts_with(|c: char| c.is_ascii_alphabetic())
        || !name.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.trim().to_string()))
}

fn first_word(original: &str) -> &str {
    original.split_whitespace().next().unwrap_or("")
}

/// A stage as the rules see it.
struct Stage<'a> {
    from: &'a Node,
    from_index: usize,
    /// Lower-cased name.
    name: Option<String>,
    /// Index of the stage it is built on, when its base is an earlier stage.
    parent: Option<usize>,
    /// Node indexes of its instructions (after FROM).
    body: Vec<usize>,
}

fn stages(doc: &Document) -> (Vec<usize>, Vec<Stage<'_>>) {
    let mut globals = Vec::new();
    let mut out: Vec<Stage> = Vec::new();
    for (i, n) in doc.nodes.iter().enumerate() {
        if n.keyword == "from" {
            let name = (n.args.len() == 3).then(|| n.args[2].to_ascii_lowercase());
            let base = n.args.first().map(|b| b.to_ascii_lowercase());
            let parent = base.and_then(|b| {
                out.iter()
                    .position(|s| s.name.as_deref() == Some(b.as_str()))
                    .or_else(|| b.parse::<usize>().ok().filter(|k| *k < out.len()))
            });
            out.push(Stage {
                from: n,
                from_index: i,
                name,
                parent,
                body: Vec::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.body.push(i);
        } else {
            globals.push(i);
        }
    }
    (globals, out)
}

/// Stages the target needs: its own, its bases and every stage a
/// `COPY --from` or `RUN --mount=from=` names, transitively.
fn reachable(doc: &Document, st: &[Stage], target: Option<&str>) -> BTreeSet<usize> {
    let find = |name: &str| {
        let l = name.to_ascii_lowercase();
        st.iter()
            .position(|s| s.name.as_deref() == Some(l.as_str()))
            .or_else(|| l.parse::<usize>().ok().filter(|k| *k < st.len()))
    };
    let start = match target {
        Some(t) => find(t),
        None => st.len().checked_sub(1),
    };
    let mut seen = BTreeSet::new();
    let mut todo: Vec<usize> = start.into_iter().collect();
    while let Some(i) = todo.pop() {
        if !seen.insert(i) {
            continue;
        }
        if let Some(p) = st[i].parent {
            todo.push(p);
        }
        for &k in &st[i].body {
            let n = &doc.nodes[k];
            for f in &n.flags {
                let from = f.strip_prefix("--from=").map(str::to_string).or_else(|| {
                    f.strip_prefix("--mount=").and_then(|m| {
                        m.split(',')
                            .find_map(|kv| kv.strip_prefix("from="))
                            .map(str::to_string)
                    })
                });
                if let Some(j) = from.as_deref().and_then(find) {
                    todo.push(j);
                }
            }
        }
    }
    seen
}

/// Run every rule; `dir_cfg` is the file-wide configuration.
pub fn lint(
    src: &str,
    doc: &Document,
    file: &str,
    dir_cfg: &LintConfig,
    input: &LintInput,
) -> Vec<LintWarning> {
    let comments = node_comments(src, doc);
    let mut l = Linter {
        doc,
        file,
        cfg: dir_cfg,
        node_cfgs: comments.iter().map(|c| comment_config(c)).collect(),
        comments,
        out: Vec::new(),
    };
    let (globals, st) = stages(doc);
    let live = if input.reachable_only {
        reachable(doc, &st, input.target)
    } else {
        (0..st.len()).collect()
    };
    l.empty_continuations();
    l.casing(&st);
    l.stage_names(&st);
    l.definitions(&globals, &st);
    let global_args = global_args(doc, &globals);
    for s in &st {
        l.base_rules(s, &global_args);
    }
    for i in 0..st.len() {
        if live.contains(&i) {
            l.stage_rules(i, &st, input);
        }
    }
    l.out.sort_by(|a, b| {
        (a.location.start_line, &a.message).cmp(&(b.location.start_line, &b.message))
    });
    l.out
}

/// Global ARGs in order: name and default (when given).
fn global_args(doc: &Document, globals: &[usize]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for &i in globals {
        let n = &doc.nodes[i];
        if n.keyword != "arg" {
            continue;
        }
        for a in &n.args {
            match a.split_once('=') {
                Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
                None => out.push((a.clone(), None)),
            }
        }
    }
    out
}

struct Linter<'a> {
    doc: &'a Document,
    file: &'a str,
    cfg: &'a LintConfig,
    node_cfgs: Vec<Option<LintConfig>>,
    comments: Vec<Vec<String>>,
    out: Vec<LintWarning>,
}

impl Linter<'_> {
    fn lexer(&self) -> Lexer {
        Lexer::new(self.doc.directives.escape)
    }

    fn warn(&mut self, rule: &'static str, node: usize, message: String) {
        let n = &self.doc.nodes[node];
        self.warn_at(rule, node, message, n.span.start_line, n.span.end_line);
    }

    fn warn_at(
        &mut self,
        rule: &'static str,
        node: usize,
        message: String,
        start: usize,
        end: usize,
    ) {
        let runs = match self.node_cfgs.get(node).and_then(Option::as_ref) {
            Some(c) => self.cfg.merged(c).runs(rule),
            None => self.cfg.runs(rule),
        };
        if runs {
            self.out.push(LintWarning {
                rule,
                message,
                location: Location {
                    file: self.file.to_string(),
                    start_line: start,
                    end_line: end,
                },
            });
        }
    }

    fn empty_continuations(&mut self) {
        for w in &self.doc.warnings {
            if w.rule != "NoEmptyContinuation" {
                continue;
            }
            // BuildKit reports the instruction's last line.
            let hit = self
                .doc
                .nodes
                .iter()
                .position(|n| n.span.start_line <= w.line && w.line <= n.span.end_line);
            if let Some(i) = hit {
                let end = self.doc.nodes[i].span.end_line;
                self.warn_at(
                    "NoEmptyContinuation",
                    i,
                    "Empty continuation line".into(),
                    end,
                    end,
                );
            }
        }
    }

    fn casing(&mut self, st: &[Stage]) {
        let idx: Vec<usize> = st
            .iter()
            .flat_map(|s| std::iter::once(s.from_index).chain(s.body.iter().copied()))
            .collect();
        let (mut lower, mut upper) = (0, 0);
        for &i in &idx {
            let w = first_word(&self.doc.nodes[i].original);
            if w == w.to_lowercase() {
                lower += 1;
            } else if w == w.to_uppercase() {
                upper += 1;
            }
        }
        let majority_lower = lower > upper;
        for &i in &idx {
            let w = first_word(&self.doc.nodes[i].original).to_string();
            let want = if majority_lower && w.to_lowercase() != w {
                "lowercase"
            } else if !majority_lower && w.to_uppercase() != w {
                "uppercase"
            } else {
                continue;
            };
            self.warn(
                "ConsistentInstructionCasing",
                i,
                format!("Command '{w}' should match the case of the command majority ({want})"),
            );
        }
        for (i, n) in self.doc.nodes.iter().enumerate() {
            if n.keyword == "maintainer" {
                self.warn(
                    "MaintainerDeprecated",
                    i,
                    "Maintainer instruction is deprecated in favor of using label".into(),
                );
            }
        }
    }

    fn stage_names(&mut self, st: &[Stage]) {
        let mut seen = BTreeSet::new();
        for s in st {
            let n = s.from;
            let w = first_word(&n.original).to_string();
            if n.args.len() == 3 {
                let (as_kw, raw) = (n.args[1].clone(), n.args[2].clone());
                if raw.to_lowercase() != raw {
                    self.warn(
                        "StageNameCasing",
                        s.from_index,
                        format!("Stage name '{raw}' should be lowercase"),
                    );
                }
                let from_lower = w == w.to_lowercase();
                let from_upper = w == w.to_uppercase();
                let mismatch = (from_lower && as_kw != as_kw.to_lowercase())
                    || (!from_lower && from_upper && as_kw != as_kw.to_uppercase());
                if mismatch {
                    self.warn(
                        "FromAsCasing",
                        s.from_index,
                        format!("'{as_kw}' and '{w}' keywords' casing do not match"),
                    );
                }
            }
            if let Some(name) = &s.name {
                if RESERVED.contains(&name.as_str()) {
                    self.warn(
                        "ReservedStageName",
                        s.from_index,
                        format!(
                            "Stage name should not use the same name as reserved stage {name:?}"
                        ),
                    );
                }
                if !seen.insert(name.clone()) {
                    self.warn(
                        "DuplicateStageName",
                        s.from_index,
                        format!("Duplicate stage name {name:?}, stage names should be unique"),
                    );
                }
            }
        }
    }

    /// InvalidDefinitionDescription: the comment right above an ARG or a
    /// named FROM should start with the defined name.
    fn definitions(&mut self, globals: &[usize], st: &[Stage]) {
        let mut todo: Vec<(usize, &'static str, Vec<String>)> = Vec::new();
        for s in st {
            if let Some(n) = &s.name {
                todo.push((s.from_index, "FROM", vec![n.clone()]));
            }
        }
        let body = st.iter().flat_map(|s| s.body.iter().copied());
        for i in globals.iter().copied().chain(body) {
            let n = &self.doc.nodes[i];
            if n.keyword == "arg" {
                let keys = n
                    .args
                    .iter()
                    .map(|a| a.split('=').next().unwrap_or("").to_string())
                    .collect();
                todo.push((i, "ARG", keys));
            }
        }
        for (i, ins, keys) in todo {
            let Some(last) = self.comments.get(i).and_then(|c| c.last()).cloned() else {
                continue;
            };
            if keys.is_empty()
                || keys
                    .iter()
                    .any(|k| last.split(' ').next() == Some(k.as_str()))
            {
                continue;
            }
            let example = if keys.len() > 1 {
                "<arg_key>".to_string()
            } else {
                keys[0].clone()
            };
            self.warn(
                "InvalidDefinitionDescription",
                i,
                format!("Comment for {ins} should follow the format: `# {example} <description>`"),
            );
        }
    }

    fn base_rules(&mut self, s: &Stage, globals: &[(String, Option<String>)]) {
        let n = s.from;
        let i = s.from_index;
        let lex = self.lexer();
        let mut keys: Vec<String> =
            crate::platform_args(&Platform::host_linux(), &Platform::host_linux())
                .into_keys()
                .collect();
        keys.extend(globals.iter().map(|(k, _)| k.clone()));
        let keys: Vec<String> = keys
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let empty: Vec<(String, String)> = Vec::new();
        let mut words: Vec<String> = n.args.first().cloned().into_iter().collect();
        let platform = n
            .flags
            .iter()
            .find_map(|f| f.strip_prefix("--platform="))
            .map(str::to_string);
        words.extend(platform.clone());
        for w in &words {
            let Ok(e) = lex.process_word_with_matches(w, &empty) else {
                continue;
            };
            for name in e.unmatched.iter().chain(e.matched.iter()) {
                if keys.contains(name) {
                    continue;
                }
                let hint = suggest(name, &keys, true)
                    .map(|m| format!(" (did you mean {m}?)"))
                    .unwrap_or_default();
                self.warn(
                    "UndefinedArgInFrom",
                    i,
                    format!("FROM argument '{name}' is not declared{hint}"),
                );
            }
        }
        // Defaults only, as if no --build-arg was given.
        let mut env: Vec<(String, String)> =
            crate::platform_args(&Platform::host_linux(), &Platform::host_linux())
                .into_iter()
                .collect();
        for (k, v) in globals {
            if let Some(v) = v {
                let v = lex.process_word(v, &env).unwrap_or_default();
                env.push((k.clone(), v));
            }
        }
        if let Some(p) = &platform {
            if let Ok(e) = lex.process_word_with_matches(p, &env) {
                let tp = env
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "TARGETPLATFORM")
                    .map(|(_, v)| v.clone());
                if e.matched.len() == 1
                    && e.unmatched.is_empty()
                    && e.matched.contains("TARGETPLATFORM")
                    && Some(&e.value) == tp.as_ref()
                {
                    self.warn(
                        "RedundantTargetPlatform",
                        i,
                        format!("Setting platform to predefined {p} in FROM is redundant as this is the default behavior"),
                    );
                }
                if e.matched.is_empty() && e.unmatched.is_empty() {
                    if let Ok(parsed) = Platform::parse(&e.value) {
                        let name = s.name.clone().unwrap_or_default();
                        if !name.contains(parsed.os()) && !name.contains(parsed.architecture()) {
                            self.warn(
                                "FromPlatformFlagConstDisallowed",
                                i,
                                format!(
                                    "FROM --platform flag should not use constant value {:?}",
                                    e.value
                                ),
                            );
                        }
                    }
                }
            }
        }
        if let Some(base) = n.args.first() {
            if let Ok(e) = lex.process_word_with_matches(base, &env) {
                if xbuild_oci::reference::Reference::parse(&e.value).is_err()
                    && e.value != "scratch"
                {
                    self.warn(
                        "InvalidDefaultArgInFrom",
                        i,
                        format!("Default value for ARG {base} results in empty or invalid base image name"),
                    );
                }
            }
        }
    }

    /// The rules BuildKit runs while building a stage.
    fn stage_rules(&mut self, idx: usize, st: &[Stage], input: &LintInput) {
        let ignore = input.ignore;
        let lex = self.lexer();
        // What the stage inherits from earlier stages of this Dockerfile.
        let mut chain = Vec::new();
        let mut p = Some(idx);
        while let Some(k) = p {
            if chain.contains(&k) {
                break;
            }
            chain.push(k);
            p = st[k].parent;
        }
        chain.reverse();
        let mut env: Vec<(String, String)> = vec![("PATH".into(), crate::DEFAULT_PATH.into())];
        let mut args: BTreeSet<String> = BTreeSet::new();
        let mut shell = false;
        let mut workdir_set = false;
        let matcher = ignore.and_then(|p| PatternMatcher::new(p).ok());
        // The environment of a base image is not known without pulling it:
        // below an image (not scratch), a variable counts as undefined only
        // when the stage defines it later, or a defined name is close to it.
        let root = chain.first().copied().unwrap_or(idx);
        let image_env = input.base_env.and_then(|m| m.get(&root));
        let base_known = image_env.is_some()
            || st[root]
                .from
                .args
                .first()
                .is_some_and(|b| b.eq_ignore_ascii_case("scratch"));
        env.extend(
            image_env
                .into_iter()
                .flatten()
                .map(|k| (k.clone(), String::new())),
        );
        let defined_later: BTreeSet<String> = chain
            .iter()
            .flat_map(|&k| st[k].body.iter())
            .map(|&i| &self.doc.nodes[i])
            .flat_map(|n| match n.keyword.as_str() {
                "arg" => n
                    .args
                    .iter()
                    .map(|a| a.split('=').next().unwrap_or("").to_string())
                    .collect(),
                "env" => n.args.chunks(3).map(|t| t[0].clone()).collect(),
                _ => Vec::new(),
            })
            .collect();
        for (pos, &k) in chain.iter().enumerate() {
            let own = pos + 1 == chain.len();
            let mut once: BTreeMap<&'static str, usize> = BTreeMap::new();
            for &i in &st[k].body {
                let n = &self.doc.nodes[i];
                let name = first_word(&n.original).to_string();
                // Words BuildKit expands, checked for undefined variables.
                let mut words: Vec<String> = Vec::new();
                match n.keyword.as_str() {
                    "copy" | "add" => {
                        for f in &n.flags {
                            for flag in ["--chown=", "--chmod="] {
                                if let Some(v) = f.strip_prefix(flag) {
                                    words.push(v.to_string());
                                }
                            }
                        }
                        words.extend(n.args.iter().filter(|a| !a.starts_with("<<")).cloned());
                    }
                    "env" | "label" => {
                        for t in n.args.chunks(3) {
                            words.extend(t.iter().take(2).cloned());
                        }
                    }
                    "workdir" | "user" | "expose" | "volume" | "stopsignal" => {
                        words.extend(n.args.iter().cloned())
                    }
                    "arg" => words.extend(
                        n.args
                            .iter()
                            .filter_map(|a| a.split_once('=').map(|(_, v)| v.to_string())),
                    ),
                    _ => {}
                }
                if own {
                    let known: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
                    let mut reported = BTreeSet::new();
                    for w in &words {
                        let Ok(e) = lex.process_word_with_matches(w, &env) else {
                            continue;
                        };
                        for v in &e.unmatched {
                            if args.contains(v) || !reported.insert(v.clone()) {
                                continue;
                            }
                            let close = suggest(v, &known, true);
                            if !base_known && close.is_none() && !defined_later.contains(v) {
                                continue;
                            }
                            let hint = close
                                .map(|m| format!(" (did you mean ${m}?)"))
                                .unwrap_or_default();
                            self.warn(
                                "UndefinedVar",
                                i,
                                format!("Usage of undefined variable '${v}'{hint}"),
                            );
                        }
                    }
                }
                match n.keyword.as_str() {
                    "env" | "label" => {
                        if own && n.args.chunks(3).any(|t| t.len() == 3 && t[2].is_empty()) {
                            self.warn(
                                "LegacyKeyValueFormat",
                                i,
                                format!("\"{name} key=value\" should be used instead of legacy \"{name} key value\" format"),
                            );
                        }
                        if n.keyword == "env" {
                            for t in n.args.chunks(3) {
                                if own && looks_secret(&t[0]) {
                                    self.warn(
                                        "SecretsUsedInArgOrEnv",
                                        i,
                                        format!("Do not use ARG or ENV instructions for sensitive data (ENV {:?})", t[0]),
                                    );
                                }
                                let v = t
                                    .get(1)
                                    .and_then(|v| lex.process_word(v, &env).ok())
                                    .unwrap_or_default();
                                env.push((t[0].clone(), v));
                            }
                        }
                    }
                    "arg" => {
                        for a in &n.args {
                            let (k, v) = match a.split_once('=') {
                                Some((k, v)) => (k, Some(v)),
                                None => (a.as_str(), None),
                            };
                            if own && looks_secret(k) {
                                self.warn(
                                    "SecretsUsedInArgOrEnv",
                                    i,
                                    format!("Do not use ARG or ENV instructions for sensitive data (ARG {k:?})"),
                                );
                            }
                            args.insert(k.to_string());
                            if let Some(v) = v {
                                let v = lex.process_word(v, &env).unwrap_or_default();
                                env.push((k.to_string(), v));
                            }
                        }
                    }
                    "shell" => shell = true,
                    "workdir" => {
                        let w = n.args.first().cloned().unwrap_or_default();
                        let w = lex.process_word(&w, &env).unwrap_or(w);
                        if own && !workdir_set && !w.starts_with('/') {
                            self.warn(
                                "WorkdirRelativePath",
                                i,
                                format!("Relative workdir {w:?} can have unexpected results if the base image changes"),
                            );
                        }
                        workdir_set = true;
                    }
                    kw @ ("cmd" | "entrypoint" | "healthcheck") => {
                        let key: &'static str = match kw {
                            "cmd" => "cmd",
                            "entrypoint" => "entrypoint",
                            _ => "healthcheck",
                        };
                        if own {
                            if let Some(prev) = once.insert(key, i) {
                                let pn = &self.doc.nodes[prev];
                                let (s, e) = (pn.span.start_line, pn.span.end_line);
                                self.warn_at(
                                    "MultipleInstructionsDisallowed",
                                    i,
                                    format!("Multiple {name} instructions should not be used in the same stage because only the last one will be used"),
                                    s,
                                    e,
                                );
                            }
                            if key != "healthcheck" && !n.json && !shell {
                                self.warn(
                                    "JSONArgsRecommended",
                                    i,
                                    format!("JSON arguments recommended for {name} to prevent unintended behavior related to OS signals"),
                                );
                            }
                        }
                    }
                    "copy" | "add" if own => {
                        let from = n.flags.iter().any(|f| f.starts_with("--from="));
                        if let (Some(m), false) = (&matcher, from) {
                            let srcs = &n.args[..n.args.len().saturating_sub(1)];
                            let cmd = if n.keyword == "add" { "Add" } else { "Copy" };
                            for s in srcs {
                                if s.starts_with("<<") || s.contains("://") {
                                    continue;
                                }
                                let s = lex.process_word(s, &env).unwrap_or(s.clone());
                                if copy_source_ignored(m, &s) {
                                    let c = clean(&s);
                                    self.warn(
                                        "CopyIgnoredFile",
                                        i,
                                        format!("Attempting to {cmd} file {c:?} that is excluded by .dockerignore"),
                                    );
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The platform of `FROM --platform=word` (`value` is its expansion),
/// refused with BuildKit's words and a hint for a misspelt variable.
pub(crate) fn from_platform(
    escape: char,
    word: &str,
    value: &str,
    vars: &BTreeMap<String, String>,
) -> Result<Platform, String> {
    let hint = || {
        let keys: Vec<&String> = vars.keys().collect();
        Lexer::new(escape)
            .process_word_with_matches(word, vars)
            .ok()
            .and_then(|e| e.unmatched.iter().find_map(|u| suggest(u, &keys, true)))
            .map(|m| format!(" (did you mean {m}?)"))
            .unwrap_or_default()
    };
    if value.is_empty() {
        return Err(format!(
            "empty platform value from expression {word}{}",
            hint()
        ));
    }
    Platform::parse(value).map_err(|e| {
        let why = match value.split('/').find(|c| {
            !c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
                || c.is_empty()
        }) {
            Some(c) => format!(
                "{c:?} is an invalid component of {value:?}: platform specifier component must match \"^[A-Za-z0-9_.-]+$\": invalid argument"
            ),
            None => e.to_string(),
        };
        format!("failed to parse platform {word}: {why}{}", hint())
    })
}

/// A path cleaned as Go's `filepath.Clean`, without a leading `./`.
fn clean(p: &str) -> String {
    let abs = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !abs {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let j = parts.join("/");
    match (abs, j.is_empty()) {
        (true, _) => format!("/{j}"),
        (false, true) => ".".into(),
        (false, false) => j,
    }
}

/// Whether a COPY source is excluded by `.dockerignore` (BuildKit does not
/// judge when the file has exclusions `!...`; the context root counts only
/// for patterns that exclude everything).
fn copy_source_ignored(m: &PatternMatcher, src: &str) -> bool {
    if m.exclusions() {
        return false;
    }
    let c = clean(src);
    if c == "." || c == "/" {
        return m
            .patterns()
            .iter()
            .any(|p| !p.exclusion() && matches!(p.as_str(), "*" | "**" | "**/*"));
    }
    let rel = c.trim_start_matches('/');
    m.matches_or_parent_matches(rel).unwrap_or(false)
}

/// BuildKit's secret-name test: a `_`-separated word of the name is a
/// secret word, and none is an allowed one (`public`, `file`, `version`).
pub fn looks_secret(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('_').collect();
    let first_or_last = |set: &[&str]| {
        // BuildKit's expressions match a word bounded by `_` or the ends.
        parts.iter().any(|p| set.contains(p))
    };
    first_or_last(&[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ]) && !first_or_last(&["public", "file", "version"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parsing() {
        let c = LintConfig::parse("skip=A, B;error=true").unwrap();
        assert!(c.skip.contains("A") && c.skip.contains("B") && c.error);
        assert!(LintConfig::parse("bogus=1").is_err());
        assert!(!LintConfig::parse("skip=all")
            .unwrap()
            .runs("StageNameCasing"));
        assert!(!LintConfig::default().runs("InvalidDefinitionDescription"));
    }

    #[test]
    fn secrets() {
        assert!(looks_secret("SUPER_Secret"));
        assert!(looks_secret("git_key"));
        assert!(!looks_secret("PUBLIC_KEY"));
        assert!(!looks_secret("secret_File"));
        assert!(!looks_secret("AUTH_MODULE_VERSION"));
        assert!(!looks_secret("sunflower"));
    }

    fn undefined_with(src: &str, base_env: Option<&BTreeMap<usize, Vec<String>>>) -> Vec<String> {
        let doc = xbuild_dockerfile::parse(src, "Dockerfile").unwrap();
        let input = LintInput {
            base_env,
            ..LintInput::default()
        };
        lint(src, &doc, "Dockerfile", &LintConfig::default(), &input)
            .into_iter()
            .filter(|w| w.rule == "UndefinedVar")
            .map(|w| w.message)
            .collect()
    }

    fn undefined(src: &str) -> Vec<String> {
        undefined_with(src, None)
    }

    #[test]
    fn undefined_vars_below_an_image_need_evidence() {
        // Below scratch the environment is known: any unset name warns.
        assert_eq!(
            undefined("FROM scratch\nENV A=$GOROOT\n"),
            ["Usage of undefined variable '$GOROOT'"]
        );
        // Below an image it may come from the image's own environment.
        assert!(undefined("FROM golang\nENV A=$GOROOT\n").is_empty());
        // ... unless the stage defines it later, or it is a near miss.
        assert_eq!(
            undefined("FROM golang\nENV A=$X\nARG X=1\n"),
            ["Usage of undefined variable '$X'"]
        );
        assert_eq!(
            undefined("FROM golang\nENV PATH=$PAHT:/x\n"),
            ["Usage of undefined variable '$PAHT' (did you mean $PATH?)"]
        );
        // With the image's environment known (after a build), it decides.
        let env = BTreeMap::from([(0, vec!["PATH".to_string(), "GOPATH".to_string()])]);
        let src = "FROM golang\nENV A=$GOPATH B=$GOROOT\n";
        assert_eq!(
            undefined_with(src, Some(&env)),
            ["Usage of undefined variable '$GOROOT'"]
        );
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean("./Dockerfile"), "Dockerfile");
        assert_eq!(clean("."), ".");
        assert_eq!(clean("a/../b/"), "b");
    }
}
