//! The build graph: plain, serializable data describing what to build for
//! one target platform. The same value is solved locally or sent to an
//! agent; nothing in it depends on where it will run.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use xbuild_dockerfile::instructions::{MountType, Sharing};
use xbuild_oci::Platform;

/// Where a step or stage came from in the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Dockerfile name as given by the user.
    pub file: String,
    /// First line (1-based).
    pub start_line: usize,
    /// Last line (1-based, inclusive).
    pub end_line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start_line == self.end_line {
            write!(f, "{}:{}", self.file, self.start_line)
        } else {
            write!(f, "{}:{}-{}", self.file, self.start_line, self.end_line)
        }
    }
}

/// An image to pull, for a platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// The reference as written after expansion (`golang:1.22`, `docker.io/library/alpine@sha256:...`).
    pub reference: String,
    /// The platform to pick from a multi-platform image.
    pub platform: Platform,
    /// The manifest digest, when the coordinator resolved it before planning.
    pub digest: Option<String>,
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Base {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// A registry (or local store) image.
    Image(ImageRef),
    /// Another stage of this graph, by index into [`BuildGraph::stages`].
    Stage(usize),
}

/// Where a COPY or a bind mount takes its files from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileSource {
    /// The build context (after `.dockerignore`).
    Context,
    /// The final filesystem of another stage (index into [`BuildGraph::stages`]).
    Stage(usize),
    /// The filesystem of an image.
    Image(ImageRef),
}

/// A file whose content is known at plan time (heredocs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineFile {
    /// File name (the heredoc delimiter for COPY sources; a path for RUN scripts).
    pub name: String,
    /// Content, already chomped and expanded where Docker expands it.
    pub content: String,
    /// File mode.
    pub mode: u32,
}

/// `RUN --network` (and the build's `--network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The sandbox's default: the step's own network namespace with
    /// outbound access (through `pasta`), without the host's loopback.
    #[default]
    Default,
    /// Only a loopback interface.
    None,
    /// The host's network namespace.
    Host,
}

/// What a build allows beyond the default sandbox: buildx's `--allow`
/// entitlements. Carried in the graph so that the worker (local or a node)
/// checks every step against what the user granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Entitlements {
    /// `network.host`: `RUN --network=host` and `--network host`.
    #[serde(default)]
    pub network_host: bool,
    /// `security.insecure`: `RUN --security=insecure`.
    #[serde(default)]
    pub security_insecure: bool,
}

impl Entitlements {
    /// Parses `--allow` values (repeatable, comma-separated), as buildx
    /// names them: `network.host`, `security.insecure`.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Entitlements, String> {
        let mut out = Entitlements::default();
        for item in values.iter().flat_map(|v| v.as_ref().split(',')) {
            match item.trim() {
                "" => {}
                "network.host" => out.network_host = true,
                "security.insecure" => out.security_insecure = true,
                other => {
                    return Err(format!(
                        "invalid entitlement {other:?} (network.host or security.insecure)"
                    ))
                }
            }
        }
        Ok(out)
    }

    /// The granted entitlements, in buildx's names.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.network_host {
            v.push("network.host");
        }
        if self.security_insecure {
            v.push("security.insecure");
        }
        v
    }
}

impl Network {
    /// Parses a build's `--network` value (`default`, `none`, `host`).
    pub fn parse(value: &str) -> Result<Network, String> {
        match value {
            "" | "default" => Ok(Network::Default),
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            other => Err(format!(
                "invalid network mode {other:?} (default, none or host)"
            )),
        }
    }
}

/// One mount of a RUN step, values expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecMount {
    /// Mount type.
    pub kind: MountType,
    /// Absolute target inside the container (secret default: `/run/secrets/<id>`).
    pub target: Option<String>,
    /// Source path within `from` (bind) or the cache (cache).
    pub source: Option<String>,
    /// Where bind and cache mounts take their contents from.
    pub from: Option<FileSource>,
    /// Read-only.
    pub readonly: bool,
    /// Cache or secret id.
    pub id: Option<String>,
    /// Cache sharing mode.
    pub sharing: Sharing,
    /// Mode for cache/secret.
    pub mode: Option<u32>,
    /// Owner uid.
    pub uid: Option<u32>,
    /// Owner gid.
    pub gid: Option<u32>,
    /// Whether a secret must exist.
    pub required: bool,
    /// Secret exposed as this env var.
    pub env: Option<String>,
    /// tmpfs size in bytes.
    pub size: Option<u64>,
}

/// Run a process in the stage's filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOp {
    /// argv, shell already applied for shell form.
    pub args: Vec<String>,
    /// Full environment (`KEY=value`): image ENV plus in-scope ARGs, PATH defaulted.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// User spec (`name`, `uid:gid`, ...), empty for root.
    pub user: String,
    /// Network mode.
    pub network: Network,
    /// `--security=insecure`.
    pub insecure: bool,
    /// Mounts.
    pub mounts: Vec<ExecMount>,
    /// Heredoc scripts written into the container before the run.
    pub inline_files: Vec<InlineFile>,
    /// The hostname RUN sees, from the `BUILDKIT_SANDBOX_HOSTNAME` build
    /// arg; `None` for the default. Left out of the serialized form (and so
    /// of cache keys) when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `--add-host`: `(host, ip)` lines added to the step's `/etc/hosts`
    /// (part of the cache key, as in BuildKit; absent when empty, so the
    /// keys of builds without it do not change).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<(String, String)>,
    /// `--shm-size`: the size of the step's `/dev/shm`, in bytes (absent:
    /// the sandbox's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// `--ulimit`: resource limits set on the step's process, sorted by
    /// name, one per type. Part of the cache key, as in BuildKit (where they
    /// are in the exec op's meta); absent when empty, so the keys of builds
    /// without it do not change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
}

/// One `--ulimit TYPE=SOFT[:HARD]` value. `-1` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// The limit's name as Docker spells it (`nofile`, `nproc`, ...).
    pub name: String,
    /// The soft limit; `-1` is unlimited.
    pub soft: i64,
    /// The hard limit; `-1` is unlimited.
    pub hard: i64,
}

/// The limit types `--ulimit` accepts: Docker's list (the `RLIMIT_*`
/// resources of Linux, lower case, without the prefix).
pub const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

impl Ulimit {
    /// Parses one `TYPE=SOFT[:HARD]` value as `docker buildx build --ulimit`
    /// does: a missing hard limit equals the soft one, `-1` is unlimited, and
    /// the soft limit may not exceed the hard one. The error quotes the value.
    pub fn parse(value: &str) -> Result<Ulimit, String> {
        let bad = |why: String| format!("invalid --ulimit {value:?}: {why}");
        let (name, limits) = value
            .split_once('=')
            .ok_or_else(|| bad("expected TYPE=SOFT[:HARD]".into()))?;
        if !ULIMIT_NAMES.contains(&name) {
            return Err(bad(format!(
                "unknown limit type {name:?} (one of {})",
                ULIMIT_NAMES.join(", ")
            )));
        }
        let number = |s: &str, which: &str| -> Result<i64, String> {
            match s.trim().parse::<i64>() {
                Ok(n) if n >= -1 => Ok(n),
                Ok(_) => Err(bad(format!(
                    "the {which} limit must be -1 (unlimited) or a number >= 0"
                ))),
                Err(_) => Err(bad(format!("the {which} limit {s:?} is not a number"))),
            }
        };
        let (soft, hard) = match limits.split(':').collect::<Vec<_>>()[..] {
            [soft] => {
                let soft = number(soft, "soft")?;
                (soft, soft)
            }
            [soft, hard] => (number(soft, "soft")?, number(hard, "hard")?),
            _ => return Err(bad("at most two limits, SOFT[:HARD]".into())),
        };
        // -1 is the largest value of all.
        let as_u = |n: i64| if n == -1 { u64::MAX } else { n as u64 };
        if as_u(soft) > as_u(hard) {
            return Err(bad(format!(
                "the soft limit ({soft}) is greater than the hard limit ({hard})"
            )));
        }
        Ok(Ulimit {
            name: name.to_string(),
            soft,
            hard,
        })
    }

    /// Parses repeated `--ulimit` values: a type given twice keeps the last
    /// value (as buildx, which keeps them in a map); sorted by name.
    pub fn parse_all<S: AsRef<str>>(values: &[S]) -> Result<Vec<Ulimit>, String> {
        let mut by_name = BTreeMap::new();
        for v in values {
            let u = Ulimit::parse(v.as_ref())?;
            by_name.insert(u.name.clone(), u);
        }
        Ok(by_name.into_values().collect())
    }
}

impl std::fmt::Display for Ulimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}:{}", self.name, self.soft, self.hard)
    }
}

/// Copy files into the stage's filesystem (COPY and ADD).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOp {
    /// Where the sources are read from.
    pub from: FileSource,
    /// Source paths or patterns (relative to the source root), or URLs for ADD.
    pub sources: Vec<String>,
    /// Heredoc sources, copied as files named after the delimiter.
    pub inline: Vec<InlineFile>,
    /// Destination, absolute; a trailing `/` means "into this directory".
    pub dest: String,
    /// `--chown`, expanded.
    pub chown: Option<String>,
    /// `--chmod`, expanded (octal or symbolic).
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
    /// `--parents`.
    pub parents: bool,
    /// True for ADD (archives unpacked, URLs fetched).
    pub add: bool,
    /// ADD `--checksum`.
    pub checksum: Option<String>,
    /// ADD `--unpack`.
    pub unpack: Option<bool>,
    /// ADD `--keep-git-dir`.
    pub keep_git_dir: bool,
}

/// A healthcheck, as stored in the image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthcheckSpec {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", cmd]`.
    pub test: Vec<String>,
    /// Nanoseconds.
    pub interval: Option<i64>,
    /// Nanoseconds.
    pub timeout: Option<i64>,
    /// Nanoseconds.
    pub start_period: Option<i64>,
    /// Nanoseconds.
    pub start_interval: Option<i64>,
    /// Retries.
    pub retries: Option<i64>,
}

/// A change to the image configuration only (no filesystem change, except
/// WORKDIR, which also creates the directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigOp {
    /// `ENV`: pairs in order.
    Env(Vec<(String, String)>),
    /// `LABEL`: pairs in order.
    Label(Vec<(String, String)>),
    /// `WORKDIR`: the new absolute working directory (created if missing).
    Workdir(String),
    /// `USER`.
    User(String),
    /// `EXPOSE`: `port/proto` entries.
    Expose(Vec<String>),
    /// `VOLUME`.
    Volume(Vec<String>),
    /// `ENTRYPOINT`: argv as stored in the config.
    Entrypoint(Vec<String>),
    /// `CMD`: argv as stored in the config.
    Cmd(Vec<String>),
    /// `SHELL`.
    Shell(Vec<String>),
    /// `STOPSIGNAL`.
    StopSignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(HealthcheckSpec),
    /// `ONBUILD`: the trigger text.
    Onbuild(String),
    /// `MAINTAINER`: the author.
    Maintainer(String),
    /// `ARG`: declarations only (history entry, no config change).
    Arg(Vec<(String, Option<String>)>),
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// RUN.
    Exec(ExecOp),
    /// COPY / ADD.
    Copy(CopyOp),
    /// Metadata-only instructions.
    Config(ConfigOp),
}

/// One step of a stage: one Dockerfile instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Where the instruction is.
    pub location: Location,
    /// The instruction as keyed: keyword plus expanded words (RUN keeps
    /// its command text as written; the shell expands it).
    pub text: String,
    /// The instruction as written in the Dockerfile (keyword upper-cased,
    /// continuations joined, nothing expanded): the progress title. Empty
    /// in graphs from older coordinators; [`Step::title`] then falls back
    /// to `text`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display: String,
    /// The history `created_by` Docker writes for this step.
    pub created_by: String,
    /// What to do.
    pub op: Op,
    /// Build args this step sees and uses (for RUN: every ARG in scope),
    /// with their values: part of the cache key.
    pub build_args: BTreeMap<String, String>,
    /// True when this step came from a base image's ONBUILD trigger.
    pub from_onbuild: bool,
}

impl Step {
    /// The progress title: the instruction as written.
    pub fn title(&self) -> &str {
        if self.display.is_empty() {
            &self.text
        } else {
            &self.display
        }
    }

    /// Whether the step changes the filesystem and so takes a step number
    /// in progress output (`[build 2/5]`). BuildKit numbers RUN, COPY, ADD
    /// and WORKDIR; metadata-only instructions (ENV, ARG, USER, CMD,
    /// EXPOSE, LABEL, ...) only change the image config and take none.
    pub fn is_numbered(&self) -> bool {
        matches!(
            self.op,
            Op::Exec(_) | Op::Copy(_) | Op::Config(ConfigOp::Workdir(_))
        )
    }
}

/// How progress output numbers a stage's vertices, the way BuildKit's
/// Dockerfile frontend does: FROM takes number 1 when it pulls an image
/// (not for `scratch` or another stage), then each filesystem step takes
/// the next number; `total` counts them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepNumbers {
    /// The FROM's number, if it has one.
    pub from: Option<usize>,
    /// Each step's number, in order (`None` for metadata-only steps).
    pub steps: Vec<Option<usize>>,
    /// How many numbers the stage hands out.
    pub total: usize,
}

impl StepNumbers {
    /// The bracketed prefix of a numbered vertex (`[build 2/5]`), or of an
    /// unnumbered one (`[build]`).
    pub fn prefix(stage: &str, number: Option<usize>, total: usize) -> String {
        match number {
            Some(n) if total > 0 => format!("[{stage} {n}/{total}]"),
            _ => format!("[{stage}]"),
        }
    }
}

/// One stage of the build, for one platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// `AS name`, lower case.
    pub name: Option<String>,
    /// Position of the stage's FROM among the Dockerfile's stages (0-based).
    pub dockerfile_index: usize,
    /// The platform this stage's filesystem is for.
    pub platform: Platform,
    /// What it starts from.
    pub base: Base,
    /// The FROM line.
    pub location: Location,
    /// The FROM line's expanded text (`FROM golang:1.22 AS build`).
    pub from_text: String,
    /// Steps after FROM.
    pub steps: Vec<Step>,
}

impl Stage {
    /// Display name used in progress lines: the stage name, or `stage-N`.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", self.dockerfile_index))
    }

    /// Step numbers for progress output (see [`StepNumbers`]).
    pub fn numbers(&self) -> StepNumbers {
        let mut total = 0;
        let from = matches!(self.base, Base::Image(_)).then(|| {
            total += 1;
            total
        });
        let steps = self
            .steps
            .iter()
            .map(|s| {
                s.is_numbered().then(|| {
                    total += 1;
                    total
                })
            })
            .collect();
        StepNumbers { from, steps, total }
    }

    /// `[build 2/5] RUN make`: how progress output and miss reasons name
    /// the step at `position` (0 is FROM, 1 the first step after it).
    pub fn step_label(&self, position: usize) -> String {
        let n = self.numbers();
        let (number, title) = match position.checked_sub(1) {
            None => (n.from, self.from_text.as_str()),
            Some(i) => (
                n.steps.get(i).copied().flatten(),
                self.steps.get(i).map(Step::title).unwrap_or_default(),
            ),
        };
        format!(
            "{} {title}",
            StepNumbers::prefix(&self.display_name(), number, n.total)
        )
    }

    /// Indices of the stages this one depends on (base, COPY --from, mounts).
    pub fn dependencies(&self) -> Vec<usize> {
        let mut deps = Vec::new();
        if let Base::Stage(i) = self.base {
            deps.push(i);
        }
        for s in &self.steps {
            match &s.op {
                Op::Copy(c) => {
                    if let FileSource::Stage(i) = c.from {
                        deps.push(i);
                    }
                }
                Op::Exec(e) => {
                    for m in &e.mounts {
                        if let Some(FileSource::Stage(i)) = m.from {
                            deps.push(i);
                        }
                    }
                }
                Op::Config(_) => {}
            }
        }
        deps.sort_unstable();
        deps.dedup();
        deps
    }
}

/// A non-fatal finding made while planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanWarning {
    /// Rule name (BuildKit check names where one exists).
    pub rule: String,
    /// Message.
    pub message: String,
    /// Where, when it concerns a line.
    pub location: Option<Location>,
}

/// Everything needed to build one platform's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildGraph {
    /// What the build allows beyond the default sandbox (`--allow`).
    #[serde(default)]
    pub entitlements: Entitlements,
    /// The platform of the result (`TARGETPLATFORM`).
    pub platform: Platform,
    /// The platform of the machine that plans (`BUILDPLATFORM`).
    pub build_platform: Platform,
    /// Stages needed for the target, dependencies before dependents.
    pub stages: Vec<Stage>,
    /// Index of the target stage in `stages` (always the last).
    pub target: usize,
    /// Build args given with `--build-arg` that no ARG consumed.
    pub unused_build_args: Vec<String>,
    /// Non-fatal findings.
    pub warnings: Vec<PlanWarning>,
    /// `--label KEY=VALUE` of the command line: set on the final image's
    /// config (after the Dockerfile's LABELs, no history entry), as
    /// BuildKit's frontend does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Which project this is (a hash of the context and Dockerfile
    /// identity, set by the coordinator): cache explanations compare a step
    /// only with records of the same project. Not part of any cache key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
}

impl BuildGraph {
    /// Total number of steps over all stages.
    pub fn step_count(&self) -> usize {
        self.stages.iter().map(|s| s.steps.len()).sum()
    }

    /// The platforms that execute this graph's steps: the target platform
    /// first, then those of stages on another platform (`FROM
    /// --platform=$BUILDPLATFORM`). Cache records are filed by these.
    pub fn execution_platforms(&self) -> Vec<Platform> {
        let mut out = vec![self.platform.clone()];
        for st in &self.stages {
            if !out.contains(&st.platform) {
                out.push(st.platform.clone());
            }
        }
        out
    }

    /// Images this graph pulls (bases and `--from` images), deduplicated.
    pub fn images(&self) -> Vec<&ImageRef> {
        fn push<'g>(out: &mut Vec<&'g ImageRef>, r: &'g ImageRef) {
            if !out
                .iter()
                .any(|o| o.reference == r.reference && o.platform == r.platform)
            {
                out.push(r);
            }
        }
        let mut out: Vec<&ImageRef> = Vec::new();
        for st in &self.stages {
            if let Base::Image(r) = &st.base {
                push(&mut out, r);
            }
            for s in &st.steps {
                match &s.op {
                    Op::Copy(CopyOp {
                        from: FileSource::Image(r),
                        ..
                    }) => push(&mut out, r),
                    Op::Exec(e) => {
                        for m in &e.mounts {
                            if let Some(FileSource::Image(r)) = &m.from {
                                push(&mut out, r);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod ulimit_tests {
    use super::*;

    fn u(name: &str, soft: i64, hard: i64) -> Ulimit {
        Ulimit {
            name: name.into(),
            soft,
            hard,
        }
    }

    #[test]
    fn soft_and_hard_are_read_and_a_lone_soft_is_both() {
        // docker/go-units TestParseUlimitValid: "nofile=512:1024".
        assert_eq!(
            Ulimit::parse("nofile=512:1024").unwrap(),
            u("nofile", 512, 1024)
        );
        assert_eq!(Ulimit::parse("nproc=512").unwrap(), u("nproc", 512, 512));
        assert_eq!(Ulimit::parse("core=0:0").unwrap(), u("core", 0, 0));
    }

    #[test]
    fn minus_one_is_unlimited_and_larger_than_any_number() {
        assert_eq!(Ulimit::parse("core=-1").unwrap(), u("core", -1, -1));
        assert_eq!(
            Ulimit::parse("stack=8388608:-1").unwrap(),
            u("stack", 8388608, -1)
        );
        let e = Ulimit::parse("memlock=-1:1024").unwrap_err();
        assert!(e.contains("greater than the hard limit"), "{e}");
        assert!(e.contains("\"memlock=-1:1024\""), "{e}");
    }

    #[test]
    fn every_docker_type_is_accepted() {
        for name in ULIMIT_NAMES {
            let v = format!("{name}=1:2");
            assert_eq!(Ulimit::parse(&v).unwrap(), u(name, 1, 2), "{v}");
        }
    }

    #[test]
    fn bad_values_are_refused_naming_the_value() {
        // docker/go-units TestParseUlimitInvalidLimitType, ...BadFormat,
        // ...HardLessThanSoft, ...InvalidValueType, ...TooManyValueArgs.
        for (value, why) in [
            ("nofile", "TYPE=SOFT[:HARD]"),
            ("notreal=1024:1024", "unknown limit type \"notreal\""),
            ("NOFILE=1", "unknown limit type"),
            (
                "nofile=1024:1",
                "soft limit (1024) is greater than the hard limit (1)",
            ),
            ("nofile=asd", "is not a number"),
            ("nofile=1024:asd", "hard limit \"asd\" is not a number"),
            ("nofile=1:2:3", "at most two limits"),
            ("nofile=-2", "-1 (unlimited) or a number"),
            ("nofile=", "is not a number"),
        ] {
            let e = Ulimit::parse(value).unwrap_err();
            assert!(e.contains(why), "{value}: {e}");
            assert!(e.contains(&format!("{value:?}")), "{value}: {e}");
        }
    }

    #[test]
    fn a_repeated_type_keeps_the_last_value_and_the_list_is_sorted() {
        let all = Ulimit::parse_all(&["nproc=512", "nofile=1:2", "nofile=1024:2048"]).unwrap();
        assert_eq!(all, vec![u("nofile", 1024, 2048), u("nproc", 512, 512)]);
        assert!(Ulimit::parse_all(&["nofile=1:2", "bogus=1"]).is_err());
    }

    #[test]
    fn an_exec_op_without_ulimits_serializes_as_before() {
        let op = ExecOp {
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: Network::Default,
            insecure: false,
            mounts: vec![],
            inline_files: vec![],
            hostname: None,
            extra_hosts: vec![],
            shm_size: None,
            ulimits: vec![],
        };
        let j = serde_json::to_value(&op).unwrap();
        assert!(j.get("ulimits").is_none(), "{j}");
        let with = ExecOp {
            ulimits: vec![u("nofile", 1024, 2048)],
            ..op
        };
        let j = serde_json::to_value(&with).unwrap();
        assert_eq!(j["ulimits"][0]["soft"], 1024);
    }
}
