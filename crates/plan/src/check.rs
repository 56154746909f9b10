//! `xbuild build --call check`: problems in a Dockerfile, found without
//! building. Rule names follow BuildKit's build checks where one exists, and
//! the `# check=skip=Rule1,Rule2` directive silences rules as it does there.

use crate::convert::plan;
use crate::graph::Location;
use crate::lint::{LintConfig, LintInput};
use crate::{OfflineResolver, PlanError, PlanOptions};
use serde::Serialize;
use std::collections::BTreeSet;
use xbuild_dockerfile::ast::{Document, Node};
use xbuild_dockerfile::instructions;
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

/// Check a Dockerfile for every given platform. An empty result means clean.
pub fn check_source(src: &str, opts: &PlanOptions, platforms: &[Platform]) -> Vec<Finding> {
    check_report(src, opts, platforms, &CheckInput::default()).findings
}

/// What a check looks at besides the Dockerfile.
#[derive(Debug, Default)]
pub struct CheckInput<'a> {
    /// Only the stages the target needs (the warnings of a build), not
    /// every stage (`--call check`).
    pub reachable_only: bool,
    /// The context's `.dockerignore` patterns, when it has one.
    pub ignore: Option<&'a [String]>,
    /// Environment variable names of base images by stage index, when known.
    pub base_env: Option<&'a std::collections::BTreeMap<usize, Vec<String>>>,
}

/// The findings, and the error `check=error=true` makes of them.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Every finding, by line.
    pub findings: Vec<Finding>,
    /// `lint violation found for rules: ...` when the configuration says
    /// `error=true` and there are warnings.
    pub error: Option<String>,
}

/// Check a Dockerfile: BuildKit's rules (see [`crate::lint`]) and xbuild's.
pub fn check_report(
    src: &str,
    opts: &PlanOptions,
    platforms: &[Platform],
    input: &CheckInput,
) -> CheckReport {
    let file = opts.file.as_str();
    let doc = match xbuild_dockerfile::parse(src, file) {
        Ok(d) => d,
        Err(e) => {
            return CheckReport {
                findings: vec![Finding {
                    rule: "SyntaxError".into(),
                    severity: Severity::Error,
                    message: e.message.clone(),
                    location: Some(Location {
                        file: e.file.clone(),
                        start_line: e.line,
                        end_line: e.line,
                    }),
                }],
                error: None,
            };
        }
    };
    let cfg = LintConfig::for_build(&doc, &opts.build_args);
    let mut out = Vec::new();
    let lint_input = LintInput {
        reachable_only: input.reachable_only,
        target: opts.target.as_deref(),
        ignore: input.ignore,
        base_env: input.base_env,
    };
    for w in crate::lint::lint(src, &doc, file, &cfg, &lint_input) {
        out.push(warn(w.rule, w.message, Some(w.location)));
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
    lint_copy_from(&typed, file, &mut out);
    if errors.is_empty() {
        let df = instructions::Dockerfile {
            file: file.into(),
            escape: doc.directives.escape,
            instructions: typed,
        };
        let mut seen = BTreeSet::new();
        // The check configuration is the frontend's, not the Dockerfile's.
        let mut opts = opts.clone();
        opts.build_args.remove(crate::lint::CHECK_BUILD_ARG);
        for p in platforms {
            match plan(&df, p, &opts, &mut OfflineResolver) {
                Ok(g) => {
                    for w in g.warnings {
                        // Reported once, not per platform.
                        let line = w.location.as_ref().map(|l| l.start_line);
                        if !seen.insert(format!("{}:{line:?}:{}", w.rule, w.message)) {
                            continue;
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
    out.retain(|f| f.severity == Severity::Error || cfg.runs(&f.rule));
    out.sort_by_key(|f| f.location.as_ref().map(|l| l.start_line).unwrap_or(0));
    let warned: BTreeSet<&str> = out
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .map(|f| f.rule.as_str())
        .collect();
    let error = (cfg.error && !warned.is_empty()).then(|| {
        format!(
            "lint violation found for rules: {}",
            warned.into_iter().collect::<Vec<_>>().join(", ")
        )
    });
    CheckReport {
        findings: out,
        error,
    }
}

/// xbuild's own rule: an exec form that is not valid JSON (BuildKit runs
/// it as a shell command, which is almost never what was meant).
fn lint_nodes(doc: &Document, file: &str, out: &mut Vec<Finding>) {
    for n in &doc.nodes {
        let t = match n.keyword.as_str() {
            "healthcheck" => n.args.get(1),
            "cmd" | "entrypoint" | "run" | "shell" => n.args.first(),
            _ => None,
        };
        let is_none = n.keyword == "healthcheck"
            && n.args
                .first()
                .is_some_and(|a| a.eq_ignore_ascii_case("none"));
        let t = t.map(|s| s.trim()).unwrap_or("");
        if !n.json && !is_none && t.starts_with('[') && t.ends_with(']') {
            let tail = if matches!(n.keyword.as_str(), "run" | "shell") {
                ""
            } else {
                "; it would run as a shell command"
            };
            out.push(Finding {
                rule: "JSONArgsTypo".into(),
                severity: Severity::Error,
                message: format!(
                    "{} {t} looks like exec form but is not valid JSON (strings need double quotes){tail}",
                    n.keyword.to_uppercase()
                ),
                location: at(file, n),
            });
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
