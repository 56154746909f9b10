//! `xbuild build --call check`: problems in a Dockerfile, found without
//! building. Rule names follow BuildKit's build checks where one exists, and
//! the `# check=skip=Rule1,Rule2` directive silences rules as it does there.

use crate::convert::plan;
use crate::graph::Location;
use crate::{OfflineResolver, PlanError, PlanOptions};
use serde::Serialize;
use std::collections::BTreeSet;
use xbuild_dockerfile::ast::{Document, Node};
use xbuild_dockerfile::instructions;
use xbuild_dockerfile::shell::Lexer;
use xbuild_oci::Platform;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The build would fail.
    Error,
    /// The build would run, probably not as meant.
    Warning,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Rule name (`JSONArgsRecommended`, `UndefinedArgInFrom`, ...).
    pub rule: String,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// Where.
    pub location: Option<Location>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.location {
            Some(l) => write!(f, "{l}: {sev}: {} ({})", self.message, self.rule),
            None => write!(f, "{sev}: {} ({})", self.message, self.rule),
        }
    }
}

/// Rules a `# check=skip=...` directive turns off; `all` skips every warning.
fn skipped_rules(doc: &Document) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(c) = &doc.directives.check {
        for part in c.split(';') {
            if let Some(list) = part.trim().strip_prefix("skip=") {
                out.extend(list.split(',').map(|s| s.trim().to_string()));
            }
        }
    }
    out
}

fn at(file: &str, n: &Node) -> Option<Location> {
    Some(Location {
        file: file.to_string(),
        start_line: n.span.start_line,
        end_line: n.span.end_line,
    })
}

fn warn(rule: &str, message: String, location: Option<Location>) -> Finding {
    Finding {
        rule: rule.into(),
        severity: Severity::Warning,
        message,
        location,
    }
}

fn looks_secret(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let tokens: Vec<&str> = lower.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    let denied = [
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
    ];
    let allowed = ["public"];
    tokens.iter().any(|t| denied.contains(t)) && !tokens.iter().any(|t| allowed.contains(t))
}

/// Check a Dockerfile for every given platform. An empty result means clean.
pub fn check_source(src: &str, opts: &PlanOptions, platforms: &[Platform]) -> Vec<Finding> {
    let file = opts.file.as_str();
    let doc = match xbuild_dockerfile::parse(src, file) {
        Ok(d) => d,
        Err(e) => {
            return vec![Finding {
                rule: "SyntaxError".into(),
                severity: Severity::Error,
                message: e.message.clone(),
                location: Some(Location {
                    file: e.file.clone(),
                    start_line: e.line,
                    end_line: e.line,
                }),
            }]
        }
    };
    let skip = skipped_rules(&doc);
    let mut out = Vec::new();
    for w in &doc.warnings {
        out.push(warn(
            &w.rule,
            w.message.clone(),
            Some(Location {
                file: file.into(),
                start_line: w.line,
                end_line: w.line,
            }),
        ));
    }
    let (typed, errors) = instructions::check_document(&doc, file);
    for e in &errors {
        let rule = if e.message.starts_with("unknown instruction") {
            "UnknownInstruction"
        } else {
            "InvalidInstruction"
        };
        out.push(Finding {
            rule: rule.into(),
            severity: Severity::Error,
            message: format!("{}: {}", e.instruction, e.message),
            location: Some(Location {
                file: file.into(),
                start_line: e.line,
                end_line: e.line,
            }),
        });
    }
    lint_nodes(&doc, file, &mut out);
    lint_from_args(&doc, &typed, file, &mut out);
    lint_copy_from(&typed, file, &mut out);
    if errors.is_empty() {
        let df = instructions::Dockerfile {
            file: file.into(),
            escape: doc.directives.escape,
            instructions: typed,
        };
        let mut seen = BTreeSet::new();
        for p in platforms {
            match plan(&df, p, opts, &mut OfflineResolver) {
                Ok(g) => {
                    for w in g.warnings {
                        if w.rule == "UnusedBuildArgs" {
                            // Reported once, not per platform.
                            if !seen.insert(w.message.clone()) {
                                continue;
                            }
                        }
                        out.push(warn(&w.rule, w.message, w.location));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    if seen.insert(msg.clone()) {
                        let location = match &e {
                            PlanError::At { location, .. }
                            | PlanError::Cycle { location, .. }
                            | PlanError::Resolve { location, .. } => Some(location.clone()),
                            _ => None,
                        };
                        out.push(Finding {
                            rule: "PlanError".into(),
                            severity: Severity::Error,
                            message: format!("{msg} (platform {p})"),
                            location,
                        });
                    }
                }
            }
        }
    }
    let skip_all = skip.contains("all");
    out.retain(|f| f.severity == Severity::Error || !(skip_all || skip.contains(&f.rule)));
    out.sort_by_key(|f| f.location.as_ref().map(|l| l.start_line).unwrap_or(0));
    out
}

fn first_word(original: &str) -> &str {
    original.split_whitespace().next().unwrap_or("")
}

fn lint_nodes(doc: &Document, file: &str, out: &mut Vec<Finding>) {
    // Instruction casing: the majority wins.
    let (mut upper, mut lower) = (0, 0);
    for n in &doc.nodes {
        let w = first_word(&n.original);
        if w.chars().all(|c| !c.is_ascii_lowercase()) {
            upper += 1;
        } else if w.chars().all(|c| !c.is_ascii_uppercase()) {
            lower += 1;
        }
    }
    let want_upper = upper >= lower;
    let mut stage_cmds: Vec<(&str, &Node)> = Vec::new();
    let mut had_abs_workdir = false;
    for n in &doc.nodes {
        let w = first_word(&n.original);
        let is_upper = w.chars().all(|c| !c.is_ascii_lowercase());
        let is_lower = w.chars().all(|c| !c.is_ascii_uppercase());
        if (want_upper && !is_upper) || (!want_upper && !is_lower) {
            out.push(warn(
                "ConsistentInstructionCasing",
                format!(
                    "instruction {w:?} should match the case of the other instructions ({})",
                    if want_upper {
                        w.to_ascii_uppercase()
                    } else {
                        w.to_ascii_lowercase()
                    }
                ),
                at(file, n),
            ));
        }
        match n.keyword.as_str() {
            "from" => {
                stage_cmds.clear();
                had_abs_workdir = false;
                if n.args.len() == 3 {
                    let as_kw = &n.args[1];
                    if (is_upper && as_kw != "AS") || (is_lower && as_kw != "as") {
                        out.push(warn(
                            "FromAsCasing",
                            format!("'{as_kw}' and '{w}' keywords' casing do not match"),
                            at(file, n),
                        ));
                    }
                    if n.args[2].chars().any(|c| c.is_ascii_uppercase()) {
                        out.push(warn(
                            "StageNameCasing",
                            format!("stage name {:?} should be lowercase", n.args[2]),
                            at(file, n),
                        ));
                    }
                }
                if let Some(p) = n.flags.iter().find_map(|f| f.strip_prefix("--platform=")) {
                    if !p.contains('$') {
                        out.push(warn(
                            "FromPlatformFlagConstDisallowed",
                            format!("FROM --platform flag should not use a constant value ({p})"),
                            at(file, n),
                        ));
                    }
                }
            }
            "cmd" | "entrypoint" | "healthcheck" => {
                let is_none = n.keyword == "healthcheck"
                    && n.args
                        .first()
                        .is_some_and(|a| a.eq_ignore_ascii_case("none"));
                let shell_form = !n.json && !is_none;
                let text = if n.keyword == "healthcheck" {
                    n.args.get(1).cloned().unwrap_or_default()
                } else {
                    n.args.first().cloned().unwrap_or_default()
                };
                let t = text.trim();
                if shell_form && t.starts_with('[') && t.ends_with(']') {
                    out.push(Finding {
                        rule: "JSONArgsTypo".into(),
                        severity: Severity::Error,
                        message: format!(
                            "{} {t} looks like exec form but is not valid JSON (strings need double quotes); it would run as a shell command",
                            n.keyword.to_uppercase()
                        ),
                        location: at(file, n),
                    });
                } else if shell_form && n.keyword != "healthcheck" && !t.is_empty() {
                    out.push(warn(
                        "JSONArgsRecommended",
                        format!(
                            "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                            n.keyword.to_uppercase()
                        ),
                        at(file, n),
                    ));
                }
                if let Some((_, prev)) = stage_cmds.iter().find(|(k, _)| *k == n.keyword) {
                    out.push(warn(
                        "MultipleInstructionsDisallowed",
                        format!(
                            "multiple {} instructions in one stage; only the last one (line {}) takes effect, the one on line {} is ignored",
                            n.keyword.to_uppercase(),
                            n.span.start_line,
                            prev.span.start_line
                        ),
                        at(file, prev),
                    ));
                }
                stage_cmds.retain(|(k, _)| *k != n.keyword);
                stage_cmds.push((n.keyword.as_str(), n));
            }
            "run" | "shell" => {
                let t = n.args.first().map(|s| s.trim()).unwrap_or("");
                if !n.json && t.starts_with('[') && t.ends_with(']') {
                    out.push(Finding {
                        rule: "JSONArgsTypo".into(),
                        severity: Severity::Error,
                        message: format!(
                            "{} {t} looks like exec form but is not valid JSON (strings need double quotes)",
                            n.keyword.to_uppercase()
                        ),
                        location: at(file, n),
                    });
                }
            }
            "maintainer" => out.push(warn(
                "MaintainerDeprecated",
                "MAINTAINER instruction is deprecated in favor of using label".into(),
                at(file, n),
            )),
            "env" | "label" => {
                if n.args.chunks(3).any(|t| t.len() == 3 && t[2].is_empty()) {
                    out.push(warn(
                        "LegacyKeyValueFormat",
                        format!(
                            "\"{} key=value\" should be used instead of legacy \"{} key value\" format",
                            n.keyword.to_uppercase(),
                            n.keyword.to_uppercase()
                        ),
                        at(file, n),
                    ));
                }
                if n.keyword == "env" {
                    for t in n.args.chunks(3) {
                        if looks_secret(&t[0]) {
                            out.push(warn(
                                "SecretsUsedInArgOrEnv",
                                format!("do not use ARG or ENV instructions for sensitive data (ENV {:?})", t[0]),
                                at(file, n),
                            ));
                        }
                    }
                }
            }
            "arg" => {
                for a in &n.args {
                    let name = a.split('=').next().unwrap_or("");
                    if looks_secret(name) {
                        out.push(warn(
                            "SecretsUsedInArgOrEnv",
                            format!("do not use ARG or ENV instructions for sensitive data (ARG {name:?})"),
                            at(file, n),
                        ));
                    }
                }
            }
            "workdir" => {
                let w = n.args.first().map(String::as_str).unwrap_or("");
                if w.starts_with('/') || w.starts_with('$') {
                    had_abs_workdir = true;
                } else if !had_abs_workdir {
                    out.push(warn(
                        "WorkdirRelativePath",
                        format!("relative workdir {w:?} can have unexpected results if the base image changes"),
                        at(file, n),
                    ));
                }
            }
            _ => {}
        }
    }
}

/// FROM lines may only use global ARGs and the automatic platform args.
fn lint_from_args(
    doc: &Document,
    typed: &[instructions::Instruction],
    file: &str,
    out: &mut Vec<Finding>,
) {
    let mut declared: BTreeSet<String> =
        crate::platform_args(&Platform::host_linux(), &Platform::host_linux())
            .into_keys()
            .collect();
    let mut in_stage = false;
    let lexer = Lexer::new(doc.directives.escape);
    for ins in typed {
        match &ins.kind {
            instructions::Kind::Arg(decls) if !in_stage => {
                declared.extend(decls.iter().map(|d| d.name.clone()));
            }
            instructions::Kind::From(f) => {
                in_stage = true;
                let empty: Vec<(String, String)> = Vec::new();
                let mut words = vec![f.image.clone()];
                words.extend(f.platform.clone());
                for w in words {
                    if let Ok(e) = lexer.process_word_with_matches(&w, &empty) {
                        for name in e.unmatched.iter().chain(e.matched.iter()) {
                            if !declared.contains(name) {
                                out.push(warn(
                                    "UndefinedArgInFrom",
                                    format!("FROM argument {name:?} is not declared (declare it with ARG before the first FROM)"),
                                    Some(Location {
                                        file: file.into(),
                                        start_line: ins.span.start_line,
                                        end_line: ins.span.end_line,
                                    }),
                                ));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// `COPY --from=name` where `name` is no stage and does not look like an image reference.
fn lint_copy_from(typed: &[instructions::Instruction], file: &str, out: &mut Vec<Finding>) {
    let names: BTreeSet<String> = typed
        .iter()
        .filter_map(|i| match &i.kind {
            instructions::Kind::From(f) => f.name.clone(),
            _ => None,
        })
        .collect();
    let mut check = |word: &str, ins: &instructions::Instruction| {
        let lower = word.to_ascii_lowercase();
        let image_like = word.contains(['/', ':', '@', '.', '$']);
        let numeric = !word.is_empty() && word.chars().all(|c| c.is_ascii_digit());
        if !names.contains(&lower) && !image_like && !numeric {
            let known: Vec<&str> = names.iter().map(String::as_str).collect();
            out.push(warn(
                "CopyFromUnknownStage",
                format!(
                    "--from={word} names no build stage (stages: {}); it would be pulled as the image docker.io/library/{word}",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
                Some(Location {
                    file: file.into(),
                    start_line: ins.span.start_line,
                    end_line: ins.span.end_line,
                }),
            ));
        }
    };
    for ins in typed {
        match &ins.kind {
            instructions::Kind::Copy(c) => {
                if let Some(f) = &c.from {
                    check(f, ins);
                }
            }
            instructions::Kind::Run(r) => {
                for m in &r.mounts {
                    if let Some(f) = &m.from {
                        check(f, ins);
                    }
                }
            }
            _ => {}
        }
    }
}
