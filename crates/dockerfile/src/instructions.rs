//! Typed instructions built from [`crate::ast::Node`]s.
//!
//! This layer checks what the raw parser leaves open: the keyword is known,
//! the flags are ones the instruction accepts (with well-formed values), the
//! argument count is right, `RUN --mount` specs parse, HEALTHCHECK durations
//! parse. Words are **not** expanded here; the plan expands them with the
//! right environment. Every error names the file, the line and the
//! instruction.

use crate::ast::{Document, Heredoc, Node, Span};
use serde::{Deserialize, Serialize};
use std::fmt;

/// An instruction-level error: `FILE:LINE: INSTRUCTION: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {instruction}: {message}")]
pub struct InstructionError {
    /// File name as given to [`from_document`].
    pub file: String,
    /// 1-based line of the instruction's keyword.
    pub line: usize,
    /// The instruction keyword, upper case (`COPY`).
    pub instruction: String,
    /// What is wrong.
    pub message: String,
}

/// A command in shell form (one string, run through `SHELL`) or exec form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `RUN make all`: run with the stage's shell.
    Shell(String),
    /// `RUN ["make", "all"]`: run directly.
    Exec(Vec<String>),
}

impl Command {
    fn from_node(node: &Node) -> Command {
        if node.json {
            Command::Exec(node.args.clone())
        } else {
            Command::Shell(node.args.first().cloned().unwrap_or_default())
        }
    }

    /// True for an empty command (`CMD []` or `CMD` with nothing after it).
    pub fn is_empty(&self) -> bool {
        match self {
            Command::Shell(s) => s.trim().is_empty(),
            Command::Exec(v) => v.is_empty(),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Shell(s) => f.write_str(s),
            Command::Exec(v) => {
                let quoted: Vec<String> = v
                    .iter()
                    .map(|s| serde_json::to_string(s).unwrap_or_default())
                    .collect();
                write!(f, "[{}]", quoted.join(" "))
            }
        }
    }
}

/// A `key=value` pair of ENV or LABEL, both still unexpanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key as written.
    pub key: String,
    /// The value as written (quotes and escapes still in place).
    pub value: String,
}

/// One `ARG name[=default]` declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgDecl {
    /// Variable name.
    pub name: String,
    /// Default value as written, unexpanded; `None` when no `=` was given.
    pub default: Option<String>,
}

/// `FROM [--platform=P] image [AS name]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct From {
    /// The image word, unexpanded (`golang:${GO_VERSION}`, `scratch`, `build`).
    pub image: String,
    /// The stage name after `AS`, lower-cased as BuildKit does.
    pub name: Option<String>,
    /// `--platform` value, unexpanded.
    pub platform: Option<String>,
}

/// The kind of a `RUN --mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// Read-only (by default) view of the context, a stage or an image.
    Bind,
    /// A persistent cache directory keyed by `id`.
    Cache,
    /// An empty tmpfs.
    Tmpfs,
    /// A secret file (or env var) from `--secret`.
    Secret,
    /// An SSH agent socket.
    Ssh,
}

/// Sharing mode of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Concurrent writers share the directory.
    Shared,
    /// A concurrent writer gets its own copy.
    Private,
    /// Concurrent writers wait for each other.
    Locked,
}

/// One `RUN --mount=...` spec, values unexpanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Mount type (default `bind`).
    pub kind: MountType,
    /// `target=` / `dst=` / `destination=`.
    pub target: Option<String>,
    /// `source=` / `src=`.
    pub source: Option<String>,
    /// `from=`: a stage name or index, or an image.
    pub from: Option<String>,
    /// `ro`/`readonly` (true) or `rw`/`readwrite` (false); `None` = type default.
    pub readonly: Option<bool>,
    /// `id=` for cache and secret mounts.
    pub id: Option<String>,
    /// `sharing=` for cache mounts.
    pub sharing: Option<Sharing>,
    /// `mode=` (octal) for cache/secret/ssh mounts.
    pub mode: Option<u32>,
    /// `uid=`.
    pub uid: Option<u32>,
    /// `gid=`.
    pub gid: Option<u32>,
    /// `required=` for secret/ssh mounts.
    pub required: Option<bool>,
    /// `env=` for secret mounts: expose the secret as this variable.
    pub env: Option<String>,
    /// `size=` for tmpfs mounts, in bytes.
    pub size: Option<u64>,
    /// The spec as written. Values that hold a variable (`type=$T`,
    /// `mode=$M`) are only interpreted once expanded: planning parses the
    /// spec again with [`parse_mount_with`].
    #[serde(default)]
    pub spec: String,
}

/// `RUN` with its flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The command.
    pub command: Command,
    /// `--mount` specs in order.
    pub mounts: Vec<Mount>,
    /// `--network=default|none|host`.
    pub network: Option<String>,
    /// `--security=sandbox|insecure`.
    pub security: Option<String>,
    /// Heredocs attached to the command.
    pub heredocs: Vec<Heredoc>,
}

/// `COPY` or `ADD` with their flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// Source words (unexpanded); for heredoc sources the `<<EOF` word.
    pub sources: Vec<String>,
    /// Destination word (unexpanded).
    pub dest: String,
    /// `--from=` (COPY only).
    pub from: Option<String>,
    /// `--chown=`.
    pub chown: Option<String>,
    /// `--chmod=`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--exclude=` patterns (repeatable).
    pub exclude: Vec<String>,
    /// `--parents`.
    pub parents: bool,
    /// `--checksum=` (ADD only).
    pub checksum: Option<String>,
    /// `--keep-git-dir` (ADD only).
    pub keep_git_dir: bool,
    /// `--unpack=` (ADD only; `None` = default behaviour).
    pub unpack: Option<bool>,
    /// Heredoc sources (`COPY <<EOF /dst`).
    pub heredocs: Vec<Heredoc>,
    /// True for ADD.
    pub is_add: bool,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    /// `HEALTHCHECK [options] CMD ...`.
    Cmd {
        /// The test command.
        command: Command,
        /// `--interval` in nanoseconds.
        interval: Option<i64>,
        /// `--timeout` in nanoseconds.
        timeout: Option<i64>,
        /// `--start-period` in nanoseconds.
        start_period: Option<i64>,
        /// `--start-interval` in nanoseconds.
        start_interval: Option<i64>,
        /// `--retries`.
        retries: Option<i64>,
    },
}

/// The typed payload of an instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// `FROM`.
    From(From),
    /// `RUN`.
    Run(Run),
    /// `CMD`.
    Cmd(Command),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
    /// `SHELL ["exe", "flag"]`.
    Shell(Vec<String>),
    /// `ENV k=v ...`.
    Env(Vec<KeyValue>),
    /// `LABEL k=v ...`.
    Label(Vec<KeyValue>),
    /// `ARG name[=default] ...`.
    Arg(Vec<ArgDecl>),
    /// `WORKDIR path`.
    Workdir(String),
    /// `USER user[:group]`.
    User(String),
    /// `EXPOSE port[/proto] ...`.
    Expose(Vec<String>),
    /// `VOLUME path ...`.
    Volume(Vec<String>),
    /// `STOPSIGNAL sig`.
    StopSignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `COPY` and `ADD`.
    Copy(Copy),
    /// `ONBUILD <instruction>`: the nested instruction and its source text.
    Onbuild {
        /// The trigger, typed (validated now, run when the image is a base).
        trigger: Box<Instruction>,
        /// The trigger's text as stored in the image config.
        text: String,
    },
    /// `MAINTAINER name` (deprecated; sets the author).
    Maintainer(String),
}

/// One typed instruction with its location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    /// The typed payload.
    pub kind: Kind,
    /// Lines in the Dockerfile.
    pub span: Span,
    /// The instruction text with continuations joined.
    pub original: String,
    /// Upper-case keyword (`COPY`).
    pub keyword: String,
}

/// The ordered instructions of one Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dockerfile {
    /// File name used in messages.
    pub file: String,
    /// Escape character from the directives.
    pub escape: char,
    /// Instructions in file order.
    pub instructions: Vec<Instruction>,
}

/// Parse flags of one instruction: `--name=value` or bare `--name`.
struct Flags<'a> {
    node: &'a Node,
    file: &'a str,
    parsed: Vec<(String, Option<String>)>,
}

impl<'a> Flags<'a> {
    fn new(node: &'a Node, file: &'a str, allowed: &[&str]) -> Result<Self, InstructionError> {
        let mut parsed = Vec::new();
        for raw in &node.flags {
            let body = raw.strip_prefix("--").unwrap_or(raw);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            if !allowed.contains(&name.as_str()) {
                if let Some(m) = crate::suggest::suggest(&name, allowed, true) {
                    return Err(err(
                        node,
                        file,
                        format!("unknown flag: --{name} (did you mean {m}?)"),
                    ));
                }
                let hint = if allowed.is_empty() {
                    format!("{} takes no flags", node.keyword.to_uppercase())
                } else {
                    format!(
                        "allowed: {}",
                        allowed
                            .iter()
                            .map(|a| format!("--{a}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                return Err(err(node, file, format!("unknown flag: --{name} ({hint})")));
            }
            parsed.push((name, value));
        }
        Ok(Flags { node, file, parsed })
    }

    fn err(&self, msg: String) -> InstructionError {
        err(self.node, self.file, msg)
    }

    /// A string flag that may appear once.
    fn string(&self, name: &str) -> Result<Option<String>, InstructionError> {
        let mut found = None;
        for (n, v) in &self.parsed {
            if n == name {
                if found.is_some() {
                    return Err(self.err(format!("duplicate flag specified: --{name}")));
                }
                match v {
                    Some(v) => found = Some(v.clone()),
                    None => return Err(self.err(format!("missing a value on flag: --{name}"))),
                }
            }
        }
        Ok(found)
    }

    /// A repeatable string flag.
    fn strings(&self, name: &str) -> Result<Vec<String>, InstructionError> {
        let mut out = Vec::new();
        for (n, v) in &self.parsed {
            if n == name {
                match v {
                    Some(v) => out.push(v.clone()),
                    None => return Err(self.err(format!("missing a value on flag: --{name}"))),
                }
            }
        }
        Ok(out)
    }

    /// A boolean flag: bare means true, `=true|false` explicit.
    fn boolean(&self, name: &str) -> Result<Option<bool>, InstructionError> {
        let mut found = None;
        for (n, v) in &self.parsed {
            if n == name {
                if found.is_some() {
                    return Err(self.err(format!("duplicate flag specified: --{name}")));
                }
                found = Some(match v.as_deref() {
                    None => true,
                    Some(s) => parse_bool(s).ok_or_else(|| {
                        self.err(format!(
                            "expecting boolean value for flag --{name}, not: {s}"
                        ))
                    })?,
                });
            }
        }
        Ok(found)
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn err(node: &Node, file: &str, message: String) -> InstructionError {
    InstructionError {
        file: file.to_string(),
        line: node.span.start_line,
        instruction: node.keyword.to_uppercase(),
        message,
    }
}

/// Parse a Go duration (`1h2m3.5s`, `300ms`, `0s`) into nanoseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let mut total: f64 = 0.0;
    let mut any = false;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let mult = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += num * mult;
        any = true;
    }
    if !any || total > i64::MAX as f64 {
        return None;
    }
    let v = total.round() as i64;
    Some(if neg { -v } else { v })
}

/// Split a `--mount` value on commas, honouring double quotes (CSV style).
fn split_csv(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated quote".into());
    }
    out.push(cur);
    Ok(out)
}

/// Parse one `RUN --mount=` value as written. A value holding a variable
/// is left for [`parse_mount_with`] at planning time, except `from=`, which
/// BuildKit refuses to expand (testMountFromError).
pub fn parse_mount(spec: &str) -> Result<Mount, String> {
    for f in split_csv(spec)? {
        if let Some((k, v)) = f.trim().split_once('=') {
            if k.trim().eq_ignore_ascii_case("from") {
                if let Some(i) = v.find('$') {
                    if i + 1 != v.len() {
                        return Err(
                            "'from' doesn't support variable expansion, define alias stage instead"
                                .into(),
                        );
                    }
                }
            }
        }
    }
    parse_mount_inner(spec, &mut |v: &str| Ok(v.to_string()), true)
}

/// Parse one `RUN --mount=` value, each value passed through `expand`
/// first (BuildKit expands every mount option: `type=$MNT_TYPE`,
/// testMountArg).
pub fn parse_mount_with(
    spec: &str,
    expand: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Mount, String> {
    parse_mount_inner(spec, expand, false)
}

fn parse_mount_inner(
    spec: &str,
    expand: &mut dyn FnMut(&str) -> Result<String, String>,
    defer_vars: bool,
) -> Result<Mount, String> {
    let mut deferred = false;
    let mut fields = Vec::new();
    for f in split_csv(spec)? {
        let f = f.trim().to_string();
        match f.split_once('=') {
            Some((_, v)) if defer_vars && v.contains('$') => {
                // Interpreted once expanded; `type` keeps its default.
                deferred = true;
            }
            Some((k, v)) => fields.push(format!("{k}={}", expand(v)?)),
            None => fields.push(f),
        }
    }
    let mut m = parse_mount_fields(&fields, deferred)?;
    m.spec = spec.to_string();
    Ok(m)
}

/// Interprets already expanded `key=value` fields; `partial`: some fields
/// are still to come (skip the checks of the whole spec).
fn parse_mount_fields(fields: &[String], partial: bool) -> Result<Mount, String> {
    let mut m = Mount {
        kind: MountType::Bind,
        target: None,
        source: None,
        from: None,
        readonly: None,
        id: None,
        sharing: None,
        mode: None,
        uid: None,
        gid: None,
        required: None,
        env: None,
        size: None,
        spec: String::new(),
    };
    // `type` may appear anywhere; find it first so later keys can be checked against it.
    for f in fields {
        if let Some(v) = f.trim().strip_prefix("type=") {
            m.kind = match v.to_ascii_lowercase().as_str() {
                "bind" => MountType::Bind,
                "cache" => MountType::Cache,
                "tmpfs" => MountType::Tmpfs,
                "secret" => MountType::Secret,
                "ssh" => MountType::Ssh,
                other => {
                    return Err(format!(
                        "unsupported mount type {other:?}{}",
                        crate::suggest::hint(other, MOUNT_TYPES, true)
                    ))
                }
            };
        }
    }
    for f in fields {
        let f = f.trim();
        if f.is_empty() {
            continue;
        }
        let (key, value) = match f.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (f.to_ascii_lowercase(), None),
        };
        let need =
            |v: Option<String>| v.ok_or_else(|| format!("mount option {key:?} needs a value"));
        match key.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => m.target = Some(need(value)?),
            "source" | "src" => m.source = Some(need(value)?),
            "from" => m.from = Some(need(value)?),
            "id" => m.id = Some(need(value)?),
            "env" => m.env = Some(need(value)?),
            "ro" | "readonly" => {
                m.readonly = Some(match value {
                    None => true,
                    Some(v) => {
                        parse_bool(&v).ok_or_else(|| format!("invalid value for {key}: {v}"))?
                    }
                })
            }
            "rw" | "readwrite" => {
                m.readonly = Some(match value {
                    None => false,
                    Some(v) => {
                        !parse_bool(&v).ok_or_else(|| format!("invalid value for {key}: {v}"))?
                    }
                })
            }
            "required" => {
                m.required = Some(match value {
                    None => true,
                    Some(v) => {
                        parse_bool(&v).ok_or_else(|| format!("invalid value for {key}: {v}"))?
                    }
                })
            }
            "sharing" => {
                let v = need(value)?;
                m.sharing = Some(match v.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => {
                        return Err(format!(
                            "unsupported sharing value {v:?} (shared, private or locked)"
                        ))
                    }
                });
            }
            "mode" => {
                let v = need(value)?;
                m.mode = Some(
                    u32::from_str_radix(&v, 8)
                        .map_err(|_| format!("invalid mode {v:?}: expected octal, e.g. 0755"))?,
                );
            }
            "uid" | "gid" => {
                let v = need(value)?;
                let n: u32 = v
                    .parse()
                    .map_err(|_| format!("invalid {key} {v:?}: expected a number"))?;
                if key == "uid" {
                    m.uid = Some(n);
                } else {
                    m.gid = Some(n);
                }
            }
            "size" => {
                let v = need(value)?;
                m.size = Some(parse_size(&v).ok_or_else(|| format!("invalid size {v:?}"))?);
            }
            other => {
                return Err(format!(
                    "unexpected key '{other}' in '{f}'{}",
                    crate::suggest::hint(other, MOUNT_KEYS, true)
                ))
            }
        }
    }
    if partial {
        return Ok(m);
    }
    if m.kind != MountType::Secret && m.kind != MountType::Ssh && m.target.is_none() {
        return Err("mount target is required (target=PATH)".into());
    }
    if m.sharing.is_some() && m.kind != MountType::Cache {
        return Err("sharing= is only valid for type=cache".into());
    }
    if m.env.is_some() && m.kind != MountType::Secret {
        return Err("env= is only valid for type=secret".into());
    }
    Ok(m)
}

/// Parse a size like `64m`, `1g`, `512k`, `1024`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

fn key_values(node: &Node, file: &str) -> Result<Vec<KeyValue>, InstructionError> {
    if node.args.is_empty() {
        return Err(err(node, file, "requires at least one argument".into()));
    }
    if !node.args.len().is_multiple_of(3) {
        return Err(err(node, file, "malformed key=value arguments".into()));
    }
    let mut out = Vec::new();
    for t in node.args.chunks(3) {
        if t[0].is_empty() {
            return Err(err(node, file, "names can not be blank".into()));
        }
        out.push(KeyValue {
            key: t[0].clone(),
            value: t[1].clone(),
        });
    }
    Ok(out)
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// Every Dockerfile instruction (for "did you mean" hints).
const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// `RUN --mount` types.
const MOUNT_TYPES: &[&str] = &["bind", "cache", "tmpfs", "secret", "ssh"];

/// `RUN --mount` keys.
const MOUNT_KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "src",
    "target",
    "dst",
    "destination",
    "readonly",
    "ro",
    "readwrite",
    "rw",
    "id",
    "sharing",
    "mode",
    "uid",
    "gid",
    "required",
    "env",
    "size",
];

/// Convert one raw node into a typed instruction.
pub fn from_node(node: &Node, file: &str) -> Result<Instruction, InstructionError> {
    let kw = node.keyword.as_str();
    let e = |m: &str| err(node, file, m.to_string());
    let kind = match kw {
        "from" => {
            let f = Flags::new(node, file, &["platform"])?;
            let platform = f.string("platform")?;
            let image = match node.args.len() {
                1 => (node.args[0].clone(), None),
                3 if node.args[1].eq_ignore_ascii_case("as") => {
                    let name = node.args[2].to_ascii_lowercase();
                    if !valid_stage_name(&name) {
                        return Err(e(&format!(
                            "invalid name for build stage: {:?}, name can't start with a number or contain symbols",
                            node.args[2]
                        )));
                    }
                    (node.args[0].clone(), Some(name))
                }
                0 => return Err(e("requires an image: FROM <image> [AS <name>]")),
                _ => return Err(e("expected FROM <image> [AS <name>]")),
            };
            Kind::From(From {
                image: image.0,
                name: image.1,
                platform,
            })
        }
        "run" => {
            let f = Flags::new(node, file, &["mount", "network", "security"])?;
            let mut mounts = Vec::new();
            for spec in f.strings("mount")? {
                mounts.push(parse_mount(&spec).map_err(|m| e(&format!("--mount={spec}: {m}")))?);
            }
            let network = f.string("network")?;
            if let Some(n) = &network {
                if !matches!(n.as_str(), "default" | "none" | "host") {
                    return Err(e(&format!(
                        "unsupported network mode {n:?} (default, none or host)"
                    )));
                }
            }
            let security = f.string("security")?;
            if let Some(s) = &security {
                if !matches!(s.as_str(), "sandbox" | "insecure") {
                    return Err(e(&format!(
                        "unsupported security mode {s:?} (sandbox or insecure)"
                    )));
                }
            }
            let command = Command::from_node(node);
            if command.is_empty() && node.heredocs.is_empty() {
                return Err(e("requires at least one argument"));
            }
            Kind::Run(Run {
                command,
                mounts,
                network,
                security,
                heredocs: node.heredocs.clone(),
            })
        }
        "cmd" | "entrypoint" => {
            Flags::new(node, file, &[])?;
            let c = Command::from_node(node);
            if kw == "cmd" {
                Kind::Cmd(c)
            } else {
                Kind::Entrypoint(c)
            }
        }
        "shell" => {
            Flags::new(node, file, &[])?;
            if !node.json {
                return Err(e("requires the arguments to be in JSON form: SHELL [\"executable\", \"parameters\"]"));
            }
            if node.args.is_empty() {
                return Err(e("requires at least one argument"));
            }
            Kind::Shell(node.args.clone())
        }
        "env" => {
            Flags::new(node, file, &[])?;
            Kind::Env(key_values(node, file)?)
        }
        "label" => {
            Flags::new(node, file, &[])?;
            Kind::Label(key_values(node, file)?)
        }
        "arg" => {
            Flags::new(node, file, &[])?;
            if node.args.is_empty() {
                return Err(e("requires at least one argument: ARG <name>[=<default>]"));
            }
            let mut decls = Vec::new();
            for w in &node.args {
                let (name, default) = match w.split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(d.to_string())),
                    None => (w.clone(), None),
                };
                if name.is_empty() {
                    return Err(e("ARG names can not be blank"));
                }
                decls.push(ArgDecl { name, default });
            }
            Kind::Arg(decls)
        }
        "workdir" | "user" | "stopsignal" | "maintainer" => {
            Flags::new(node, file, &[])?;
            let v = node.args.first().cloned().unwrap_or_default();
            if v.trim().is_empty() {
                return Err(e("requires exactly one argument"));
            }
            match kw {
                "workdir" => Kind::Workdir(v),
                "user" => Kind::User(v),
                "stopsignal" => Kind::StopSignal(v),
                _ => Kind::Maintainer(v),
            }
        }
        "expose" => {
            Flags::new(node, file, &[])?;
            if node.args.is_empty() {
                return Err(e("requires at least one argument"));
            }
            Kind::Expose(node.args.clone())
        }
        "volume" => {
            Flags::new(node, file, &[])?;
            if node.args.is_empty() || node.args.iter().all(|a| a.trim().is_empty()) {
                return Err(e("requires at least one argument"));
            }
            Kind::Volume(node.args.clone())
        }
        "copy" | "add" => {
            let is_add = kw == "add";
            let allowed: &[&str] = if is_add {
                &[
                    "chown",
                    "chmod",
                    "link",
                    "exclude",
                    "parents",
                    "checksum",
                    "keep-git-dir",
                    "unpack",
                ]
            } else {
                &["from", "chown", "chmod", "link", "exclude", "parents"]
            };
            let f = Flags::new(node, file, allowed)?;
            if node.args.len() < 2 {
                return Err(e(&format!(
                    "requires at least two arguments, but only {} provided: {} <src>... <dest>",
                    node.args.len(),
                    kw.to_uppercase()
                )));
            }
            let (dest, sources) = node.args.split_last().expect("len >= 2");
            let checksum = if is_add { f.string("checksum")? } else { None };
            let unpack = if is_add { f.boolean("unpack")? } else { None };
            Kind::Copy(Copy {
                sources: sources.to_vec(),
                dest: dest.clone(),
                from: if is_add { None } else { f.string("from")? },
                chown: f.string("chown")?,
                chmod: f.string("chmod")?,
                link: f.boolean("link")?.unwrap_or(false),
                exclude: f.strings("exclude")?,
                parents: f.boolean("parents")?.unwrap_or(false),
                checksum,
                keep_git_dir: if is_add {
                    f.boolean("keep-git-dir")?.unwrap_or(false)
                } else {
                    false
                },
                unpack,
                heredocs: node.heredocs.clone(),
                is_add,
            })
        }
        "healthcheck" => {
            let f = Flags::new(
                node,
                file,
                &[
                    "interval",
                    "timeout",
                    "start-period",
                    "start-interval",
                    "retries",
                ],
            )?;
            let typ = node.args.first().map(|s| s.to_ascii_uppercase());
            match typ.as_deref() {
                Some("NONE") => {
                    if node.args.len() > 1 {
                        return Err(e("HEALTHCHECK NONE takes no arguments"));
                    }
                    if !node.flags.is_empty() {
                        return Err(e("HEALTHCHECK NONE takes no options"));
                    }
                    Kind::Healthcheck(Healthcheck::None)
                }
                Some("CMD") => {
                    let dur = |name: &str| -> Result<Option<i64>, InstructionError> {
                        match f.string(name)? {
                            None => Ok(None),
                            Some(v) => {
                                let d = parse_duration(&v).ok_or_else(|| {
                                    e(&format!(
                                        "--{name}: invalid duration {v:?} (e.g. 30s, 1m30s)"
                                    ))
                                })?;
                                if d != 0 && d < 1_000_000 {
                                    return Err(e(&format!(
                                        "--{name} cannot be less than 1ms (got {v})"
                                    )));
                                }
                                if d < 0 {
                                    return Err(e(&format!("--{name} cannot be negative")));
                                }
                                Ok(Some(d))
                            }
                        }
                    };
                    let retries = match f.string("retries")? {
                        None => None,
                        Some(v) => {
                            let n: i64 = v
                                .parse()
                                .map_err(|_| e(&format!("--retries: invalid number {v:?}")))?;
                            if n < 0 {
                                return Err(e("--retries cannot be negative"));
                            }
                            Some(n)
                        }
                    };
                    let rest = &node.args[1..];
                    let command = if node.json {
                        Command::Exec(rest.to_vec())
                    } else {
                        Command::Shell(rest.first().cloned().unwrap_or_default())
                    };
                    if command.is_empty() {
                        return Err(e("HEALTHCHECK CMD requires a command"));
                    }
                    Kind::Healthcheck(Healthcheck::Cmd {
                        command,
                        interval: dur("interval")?,
                        timeout: dur("timeout")?,
                        start_period: dur("start-period")?,
                        start_interval: dur("start-interval")?,
                        retries,
                    })
                }
                None => return Err(e(
                    "requires an argument: HEALTHCHECK [OPTIONS] CMD command | HEALTHCHECK NONE",
                )),
                Some(other) => {
                    return Err(e(&format!("unknown type {other:?}: expected CMD or NONE")))
                }
            }
        }
        "onbuild" => {
            Flags::new(node, file, &[])?;
            let inner = node
                .onbuild
                .as_deref()
                .ok_or_else(|| e("requires an instruction: ONBUILD <INSTRUCTION>"))?;
            match inner.keyword.as_str() {
                "onbuild" => return Err(e("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")),
                "from" | "maintainer" => {
                    return Err(e(&format!(
                        "{} isn't allowed as an ONBUILD trigger",
                        inner.keyword.to_uppercase()
                    )))
                }
                _ => {}
            }
            let trigger = from_node(inner, file)?;
            let mut text = node
                .original
                .trim_start()
                .get("onbuild".len()..)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| inner.original.clone());
            // Heredoc bodies belong to the trigger: stored after its line,
            // each followed by its delimiter (BuildKit, testOnBuildHeredoc).
            let docs = if inner.heredocs.is_empty() {
                &node.heredocs
            } else {
                &inner.heredocs
            };
            for h in docs {
                text.push('\n');
                text.push_str(&h.content);
                text.push_str(&h.name);
            }
            Kind::Onbuild {
                trigger: Box::new(trigger),
                text,
            }
        }
        other => {
            return Err(InstructionError {
                file: file.to_string(),
                line: node.span.start_line,
                instruction: other.to_uppercase(),
                message: format!(
                    "unknown instruction: {}{}",
                    other.to_uppercase(),
                    crate::suggest::hint(&other.to_uppercase(), INSTRUCTIONS, false)
                ),
            })
        }
    };
    Ok(Instruction {
        kind,
        span: node.span,
        original: node.original.clone(),
        keyword: kw.to_uppercase(),
    })
}

/// Convert a whole document, stopping at the first error.
pub fn from_document(doc: &Document, file: &str) -> Result<Dockerfile, InstructionError> {
    let instructions = doc
        .nodes
        .iter()
        .map(|n| from_node(n, file))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Dockerfile {
        file: file.to_string(),
        escape: doc.directives.escape,
        instructions,
    })
}

/// Convert a whole document, collecting every error (for `--call check`).
pub fn check_document(doc: &Document, file: &str) -> (Vec<Instruction>, Vec<InstructionError>) {
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for n in &doc.nodes {
        match from_node(n, file) {
            Ok(i) => ok.push(i),
            Err(e) => errs.push(e),
        }
    }
    (ok, errs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Some(5_000_000_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("300ms"), Some(300_000_000));
        assert_eq!(parse_duration("0s"), Some(0));
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5x"), None);
    }

    #[test]
    fn onbuild_heredoc_keeps_its_body() {
        // dockerfile_heredoc_test.go testOnBuildHeredoc
        let src = "FROM busybox\nONBUILD RUN <<EOF\necho \"hello world\" >> /dest\nEOF\n";
        let doc = crate::parse(src, "Dockerfile").unwrap();
        let df = from_document(&doc, "Dockerfile").unwrap();
        let Kind::Onbuild { text, .. } = &df.instructions[1].kind else {
            panic!("not ONBUILD: {:?}", df.instructions[1].kind);
        };
        assert_eq!(text, "RUN <<EOF\necho \"hello world\" >> /dest\nEOF");
    }

    #[test]
    fn misspellings_get_buildkit_hints() {
        // testMountInvalid, testDockerfileInvalidInstruction.
        assert_eq!(
            parse_mount("typ=tmpfs").unwrap_err(),
            "unexpected key 'typ' in 'typ=tmpfs' (did you mean type?)"
        );
        assert_eq!(
            parse_mount("type=tmp,target=/t").unwrap_err(),
            "unsupported mount type \"tmp\" (did you mean tmpfs?)"
        );
        let doc = crate::parse(
            "FROM scratch\nRUN --mont=target=/x true\nFNTRYPOINT x\n",
            "Dockerfile",
        )
        .unwrap();
        let e = from_node(&doc.nodes[1], "Dockerfile").unwrap_err();
        assert!(
            e.message
                .contains("unknown flag: --mont (did you mean mount?)"),
            "{}",
            e.message
        );
        let e = from_node(&doc.nodes[2], "Dockerfile").unwrap_err();
        assert_eq!(
            e.message,
            "unknown instruction: FNTRYPOINT (did you mean ENTRYPOINT?)"
        );
    }

    #[test]
    fn mounts() {
        let m = parse_mount("type=cache,target=/root/.cache,sharing=locked,id=go").unwrap();
        assert_eq!(m.kind, MountType::Cache);
        assert_eq!(m.target.as_deref(), Some("/root/.cache"));
        assert_eq!(m.sharing, Some(Sharing::Locked));
        assert_eq!(m.id.as_deref(), Some("go"));
        let m = parse_mount("target=/src,from=build,source=/out,rw").unwrap();
        assert_eq!(m.kind, MountType::Bind);
        assert_eq!(m.readonly, Some(false));
        assert_eq!(m.from.as_deref(), Some("build"));
        let m = parse_mount("type=secret,id=TOKEN,env=TOKEN").unwrap();
        assert_eq!(m.kind, MountType::Secret);
        assert_eq!(m.env.as_deref(), Some("TOKEN"));
        let m = parse_mount("type=tmpfs,target=/t,size=64m").unwrap();
        assert_eq!(m.size, Some(64 << 20));
        let m = parse_mount("type=cache,target=/c,mode=0700,uid=1000,gid=1000").unwrap();
        assert_eq!(
            (m.mode, m.uid, m.gid),
            (Some(0o700), Some(1000), Some(1000))
        );
        assert!(parse_mount("type=bind").is_err());
        // dockerfile_mount_test.go testMountFromError
        let e = parse_mount("from=$ttt,type=cache,target=/tmp").unwrap_err();
        assert!(
            e.contains("'from' doesn't support variable expansion"),
            "{e}"
        );
        // testMountArg: a variable is interpreted once expanded.
        let m = parse_mount("type=$MNT_TYPE,target=/mycache2").unwrap();
        assert_eq!(m.spec, "type=$MNT_TYPE,target=/mycache2");
        let mut vars = |v: &str| Ok(v.replace("$MNT_TYPE", "cache").replace("$M", "0700"));
        let m = parse_mount_with(&m.spec, &mut vars).unwrap();
        assert_eq!(
            (m.kind, m.target.as_deref()),
            (MountType::Cache, Some("/mycache2"))
        );
        let m = parse_mount_with("type=cache,target=/c,mode=$M", &mut vars).unwrap();
        assert_eq!(m.mode, Some(0o700));
        let mut bad = |v: &str| Ok(v.replace("$T", "tmp"));
        assert!(parse_mount_with("type=$T,target=/x", &mut bad)
            .unwrap_err()
            .contains("unsupported mount type"));
        assert!(parse_mount("type=nfs,target=/x").is_err());
        assert!(parse_mount("target=/x,bogus=1").is_err());
        assert!(parse_mount("type=bind,target=/x,sharing=locked").is_err());
        assert!(parse_mount("type=cache,target=/x,mode=999").is_err());
        assert!(parse_mount("target=\"/a,b\"").unwrap().target.as_deref() == Some("/a,b"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("10mb"), Some(10 << 20));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn stage_names() {
        assert!(valid_stage_name("build"));
        assert!(valid_stage_name("build-2.x_y"));
        assert!(!valid_stage_name("2build"));
        assert!(!valid_stage_name("Build"));
        assert!(!valid_stage_name(""));
    }
}
