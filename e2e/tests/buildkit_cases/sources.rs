//! Sources outside the main context that some cases need: git repositories
//! served over (dumb) HTTP by the runner's server, extra directories for
//! `--build-context NAME=DIR`, and a private ssh-agent for `--ssh`.
//! Described in `e2e/buildkit/README.md` ("Other sources").

use crate::http::{HttpServer, Served};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One git repository a case builds with shell commands.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct GitRepo {
    /// Directory name: served as `{{http}}/NAME/.git`.
    pub name: String,
    /// Shell commands run in order in the (initially empty) work tree,
    /// after placeholder expansion (`{{http}}` names earlier repositories).
    pub commands: Vec<String>,
}

/// Creates each repository under `root` (in order), runs its commands with
/// a fixed identity, runs `git update-server-info` and serves every file of
/// its `.git` under `url_prefix/NAME/.git/` (`url_prefix` is the case's
/// path on the server, e.g. `/group/name`).
pub fn make_git_repos(
    root: &Path,
    repos: &[GitRepo],
    server: &HttpServer,
    url_prefix: &str,
    subst: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    for repo in repos {
        let dir = root.join(&repo.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let mut script = String::from("set -e\n");
        for c in &repo.commands {
            script.push_str(&subst(c));
            script.push('\n');
        }
        script.push_str("git update-server-info\n");
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(&dir)
            .env("GIT_AUTHOR_NAME", "test")
            .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
            .env("GIT_COMMITTER_NAME", "test")
            .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_ALLOW_PROTOCOL", "http:file")
            .output()
            .map_err(|e| format!("run git commands for {}: {e}", repo.name))?;
        if !out.status.success() {
            return Err(format!(
                "git repository {}: {}",
                repo.name,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serve_tree(
            &dir.join(".git"),
            &format!("{url_prefix}/{}/.git", repo.name),
            server,
        )?;
    }
    Ok(())
}

/// Registers every regular file under `dir` with the server at `prefix/REL`.
fn serve_tree(dir: &Path, prefix: &str, server: &HttpServer) -> Result<(), String> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| format!("read {}: {e}", d.display()))?;
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().map_err(|e| e.to_string())?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p.strip_prefix(dir).map_err(|e| e.to_string())?;
                let body = std::fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
                server.add(
                    &format!("{prefix}/{}", rel.to_string_lossy()),
                    Served {
                        status: 200,
                        body,
                        headers: Vec::new(),
                    },
                );
            }
        }
    }
    Ok(())
}

/// Replaces `{{rev:REPO:REF}}` (the full commit id `REF` names in the case's
/// repository `REPO`) and `{{short:REPO:REF}}` (its first 8 hex digits).
pub fn expand_revs(text: &str, root: &Path) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    loop {
        let next = ["{{rev:", "{{short:"]
            .iter()
            .filter_map(|m| rest.find(m).map(|i| (i, *m)))
            .min();
        let Some((i, marker)) = next else {
            out.push_str(rest);
            return Ok(out);
        };
        out.push_str(&rest[..i]);
        let after = &rest[i + marker.len()..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unterminated {marker} in {text:?}"))?;
        let (repo, reference) = after[..end]
            .split_once(':')
            .ok_or_else(|| format!("{marker}REPO:REF}} expected in {text:?}"))?;
        let got = Command::new("git")
            .arg("-C")
            .arg(root.join(repo))
            .args(["rev-parse", &format!("{reference}^{{commit}}")])
            .output()
            .map_err(|e| format!("git rev-parse: {e}"))?;
        if !got.status.success() {
            return Err(format!("no {reference} in repository {repo}"));
        }
        let id = String::from_utf8_lossy(&got.stdout).trim().to_string();
        out.push_str(if marker == "{{short:" { &id[..8] } else { &id });
        rest = &after[end + 2..];
    }
}

/// A private ssh-agent holding one freshly generated key, stopped on drop.
pub struct Agent {
    child: Child,
    /// The agent's socket (`SSH_AUTH_SOCK`).
    pub sock: PathBuf,
}

impl Agent {
    /// Starts `ssh-agent -D -a DIR/agent.sock` (`-d`, logging to
    /// `DIR/agent.log`, with `debug_log`) and adds a new ed25519 key
    /// (written to `DIR/id_ed25519`, kept for `--ssh ID=KEYFILE` cases);
    /// also writes a PEM RSA key `DIR/id_rsa` (not in the agent).
    pub fn start(dir: &Path, debug_log: bool) -> Result<Agent, String> {
        let sock = dir.join("agent.sock");
        let key = dir.join("id_ed25519");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "bkcase", "-f"])
            .arg(&key)
            .status()
            .map_err(|e| format!("ssh-keygen: {e}"))?;
        if !st.success() {
            return Err("ssh-keygen failed".into());
        }
        // And a PEM RSA key, the kind BuildKit's tests hand to `--ssh`.
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f"])
            .arg(dir.join("id_rsa"))
            .status()
            .map_err(|e| format!("ssh-keygen: {e}"))?;
        if !st.success() {
            return Err("ssh-keygen -t rsa failed".into());
        }
        // `-d`: debug mode, every request logged to DIR/agent.log.
        let log = if debug_log {
            Stdio::from(
                std::fs::File::create(dir.join("agent.log"))
                    .map_err(|e| format!("create agent.log: {e}"))?,
            )
        } else {
            Stdio::null()
        };
        let child = Command::new("ssh-agent")
            .arg(if debug_log { "-d" } else { "-D" })
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("ssh-agent: {e}"))?;
        let agent = Agent { child, sock };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent.sock.exists() {
            if Instant::now() > deadline {
                return Err("ssh-agent did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let st = Command::new("ssh-add")
            .arg("-q")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &agent.sock)
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("ssh-add: {e}"))?;
        if !st.success() {
            return Err("ssh-add failed".into());
        }
        Ok(agent)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--build-context NAME=VALUE` arguments, values expanded.
pub fn build_context_args(
    contexts: &BTreeMap<String, String>,
    subst: &dyn Fn(&str) -> String,
) -> Vec<String> {
    contexts
        .iter()
        .flat_map(|(k, v)| ["--build-context".to_string(), format!("{k}={}", subst(v))])
        .collect()
}

/// Why a case cannot run here: a host tool its sources need is missing.
pub fn missing_tool(case: &crate::case::Case) -> Option<String> {
    let mut tools = Vec::new();
    if !case.git_repos.is_empty() {
        tools.push("git");
    }
    if case.ssh_agent || case.ssh_agent_log {
        tools.extend(["ssh-agent", "ssh-add", "ssh-keygen"]);
    }
    if !case.host_binaries.is_empty() {
        tools.push("ldd");
    }
    tools
        .into_iter()
        .find(|t| xbuild_e2e::testbed::which(t).is_none())
        .map(|t| format!("`{t}` is not installed"))
}

/// An archive to unpack before a step's build.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Untar {
    /// The tar file.
    pub from: String,
    /// The directory it is unpacked into (created).
    pub to: String,
}

/// Unpacks `u` (paths expanded with `subst`).
pub fn untar(u: &Untar, subst: &dyn Fn(&str) -> String) -> Result<(), String> {
    let (from, to) = (subst(&u.from), subst(&u.to));
    std::fs::create_dir_all(&to).map_err(|e| format!("mkdir {to}: {e}"))?;
    let f = std::fs::File::open(&from).map_err(|e| format!("open {from}: {e}"))?;
    tar::Archive::new(f)
        .unpack(&to)
        .map_err(|e| format!("unpack {from}: {e}"))
}

/// Replaces `{{layout_digest:DIR}}` by the digest of the first manifest
/// of the OCI layout `DIR/index.json` (read when the text is expanded, so
/// a layout an earlier step wrote can be named).
pub fn expand_layout_digests(text: &str) -> Result<String, String> {
    const MARK: &str = "{{layout_digest:";
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i]);
        let after = &rest[i + MARK.len()..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unterminated {MARK} in {text:?}"))?;
        let index = Path::new(&after[..end]).join("index.json");
        let raw = std::fs::read(&index).map_err(|e| format!("read {}: {e}", index.display()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|e| format!("{}: {e}", index.display()))?;
        let d = v["manifests"][0]["digest"]
            .as_str()
            .ok_or_else(|| format!("{}: no manifest", index.display()))?;
        out.push_str(d);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `want` with placeholders expanded in its texts (a commit id
/// `{{rev:REPO:REF}}` as expected content).
pub fn subst_file_expect(
    want: &crate::case::FileExpect,
    subst: &dyn Fn(&str) -> String,
) -> crate::case::FileExpect {
    use crate::case::{FileExpect, OneOrMany};
    let many = |m: &OneOrMany| OneOrMany::Many(m.all().iter().map(|t| subst(t)).collect());
    match want {
        FileExpect::Text(t) => FileExpect::Text(subst(t)),
        FileExpect::Spec(spec) => {
            let mut spec = spec.clone();
            spec.content = spec.content.as_deref().map(subst);
            spec.contains = spec.contains.as_ref().map(many);
            spec.not_contains = spec.not_contains.as_ref().map(many);
            spec.json = spec
                .json
                .iter()
                .map(|(k, v)| (k.clone(), crate::call::subst_value(v, subst)))
                .collect();
            FileExpect::Spec(spec)
        }
    }
}

/// Copies each host binary of `bins` and the shared libraries `ldd` names
/// for it under `dir` at the same absolute paths (`COPY host/ /` then runs
/// them on a busybox base).
pub fn copy_host_binaries(dir: &Path, bins: &[String]) -> Result<(), String> {
    let mut files: Vec<PathBuf> = Vec::new();
    for b in bins {
        let path = xbuild_e2e::testbed::which(b)
            .or_else(|| Some(PathBuf::from(b)).filter(|p| p.is_file()))
            .ok_or_else(|| format!("host binary {b} not found"))?;
        let out = Command::new("ldd")
            .arg(&path)
            .output()
            .map_err(|e| format!("ldd: {e}"))?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(lib) = line.split_whitespace().find(|w| w.starts_with('/')) {
                files.push(PathBuf::from(lib));
            }
        }
        files.push(path);
    }
    for f in files {
        let rel = f.strip_prefix("/").map_err(|e| e.to_string())?;
        let dest = dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("mkdir: {e}"))?;
        }
        std::fs::copy(&f, &dest).map_err(|e| format!("copy {}: {e}", f.display()))?;
    }
    Ok(())
}

/// Seconds since the epoch (with the fraction) of an RFC 3339 time such as
/// an image config's `created` (`2024-05-01T10:00:00.123456789Z`, or with
/// an offset).
pub fn rfc3339_secs(t: &str) -> Option<f64> {
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = t.get(19..)?;
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (format!("0.{}", &r[..end]).parse::<f64>().ok()?, &r[end..])
        }
        None => (0.0, rest),
    };
    let offset = match zone {
        "Z" | "z" => 0,
        z if z.len() == 6 => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (z.get(1..3)?.parse::<i64>().ok()? * 3600
                + z.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset) as f64 + frac)
}

/// `now`'s `created` is later than `before`'s (step `n`'s), by less than
/// ten minutes.
pub fn check_created_after(
    before: &serde_json::Value,
    now: &serde_json::Value,
    n: usize,
) -> Result<(), String> {
    let t = |v: &serde_json::Value| {
        let c = v["created"].as_str().unwrap_or("");
        rfc3339_secs(c).ok_or_else(|| format!("image created {c:?} is not an RFC 3339 time"))
    };
    let (a, b) = (t(before)?, t(now)?);
    if b <= a || b - a >= 600.0 {
        return Err(format!(
            "image created {} vs step {n}'s {}: BuildKit has a later time, less than 10 minutes later",
            now["created"], before["created"]
        ));
    }
    Ok(())
}

/// `case` with `key=value` added to its environment and to that of each
/// step giving its own.
pub fn with_env(case: &crate::case::Case, key: &str, value: &str) -> crate::case::Case {
    let mut c = case.clone();
    c.env.insert(key.into(), value.into());
    for step in &mut c.steps {
        if let Some(env) = &mut step.env {
            env.insert(key.into(), value.into());
        }
    }
    c
}
