//! Build-check expectations (`expect.lint`, `lint_check`, `lint_error`):
//! BuildKit's `checkLinterWarnings` looks at the warnings of a normal build
//! and at the result of the lint subrequest (`--call check`); both are
//! compared here as exact lists of `Rule: detail (line N)`.

use crate::case::Expect;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use xbuild_e2e::Xbuild;

/// The warnings of a build's closing summary (` N warnings found ...:`
/// followed by ` - Rule: detail (line N)` lines), in BuildKit's short form.
pub fn summary_warnings(stderr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in stderr.lines() {
        let t = l.trim_start();
        if t.contains(" found") && (t.contains("warning found") || t.contains("warnings found")) {
            inside = true;
            continue;
        }
        if inside {
            match l.strip_prefix(" - ") {
                Some(w) => out.push(w.to_string()),
                None if l.starts_with("   ") => {}
                None => inside = false,
            }
        }
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Compare the summary of a build with `expect.lint`.
pub fn check_summary(
    stderr: &str,
    expect: &Expect,
    subst: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    let Some(want) = &expect.lint else {
        return Ok(());
    };
    let got = sorted(summary_warnings(stderr));
    let want = sorted(want.iter().map(|w| subst(w)).collect());
    if got != want {
        return Err(format!(
            "build warnings differ from BuildKit's:\n    got:  {got:?}\n    want: {want:?}"
        ));
    }
    Ok(())
}

/// Run `--call check,format=json` with the build's own flags (`args`
/// without outputs and context) and compare its findings.
pub fn check_call(
    xb: &Xbuild,
    ctx: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    expect: &Expect,
    subst: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    let Some(lint) = &expect.lint else {
        return Ok(());
    };
    let want = expect.lint_check.as_ref().unwrap_or(lint);
    let want = sorted(want.iter().map(|w| subst(w)).collect());
    let out = xb
        .command()
        .current_dir(ctx)
        .args(args)
        .args(["--call", "check,format=json", "."])
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawn xbuild --call check: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let findings: Vec<Value> = serde_json::from_str(&stdout).map_err(|e| {
        format!(
            "--call check printed no JSON ({e}): {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let mut got = Vec::new();
    let mut errors = Vec::new();
    for f in &findings {
        let rule = f["rule"].as_str().unwrap_or_default();
        let msg = f["message"].as_str().unwrap_or_default();
        if f["severity"] == "error" {
            errors.push(format!("{rule}: {msg}"));
            continue;
        }
        got.push(match f["location"]["start_line"].as_u64() {
            Some(n) => format!("{rule}: {msg} (line {n})"),
            None => format!("{rule}: {msg}"),
        });
    }
    let got = sorted(got);
    if got != want {
        return Err(format!(
            "--call check warnings differ from BuildKit's:\n    got:  {got:?}\n    want: {want:?}"
        ));
    }
    match expect.lint_error.as_deref().map(subst) {
        Some(e) if !errors.iter().any(|g| g.contains(e.as_str())) => {
            Err(format!("--call check error lacks {e:?}: {errors:?}"))
        }
        None if !errors.is_empty() => Err(format!("--call check reports errors: {errors:?}")),
        _ => Ok(()),
    }
}

/// Whether this process's capability bounding set holds capabilities 0-37
/// (BuildKit's `testRunSecurityInsecure` expects all of them in an insecure
/// step, which can only have what the host has): `needs: [all_caps]`.
pub fn all_caps() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|b| b & 0x3f_ffff_ffff == 0x3f_ffff_ffff)
}

/// Compare the members of the tar files a build wrote (`expect.tar`).
pub fn check_tars(expect: &Expect, subst: &dyn Fn(&str) -> String) -> Result<(), String> {
    use std::io::Read;
    for (path, members) in &expect.tar {
        let path = subst(path);
        let f = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        let mut got: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut ar = tar::Archive::new(f);
        for e in ar.entries().map_err(|e| format!("{path}: {e}"))? {
            let mut e = e.map_err(|e| format!("{path}: {e}"))?;
            let name = e
                .path()
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .into_owned();
            let mut v = Vec::new();
            e.read_to_end(&mut v).map_err(|e| e.to_string())?;
            got.insert(name.trim_start_matches("./").to_string(), v);
        }
        for (name, want) in members {
            match got.get(name) {
                Some(v) if v == want.as_bytes() => {}
                Some(v) => {
                    return Err(format!(
                        "{name} in {path} is {:?}, BuildKit {want:?}",
                        String::from_utf8_lossy(v)
                    ))
                }
                None => {
                    return Err(format!(
                        "{name} missing in {path} (has {:?})",
                        got.keys().collect::<Vec<_>>()
                    ))
                }
            }
        }
    }
    Ok(())
}
