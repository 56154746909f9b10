//! Build script: records the git commit and the compiler version for
//! `xbuild version`. Both are optional (a source tarball has no `.git`).

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=XBUILD_GIT_COMMIT");
    let commit = std::env::var("XBUILD_GIT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| output("git", &["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Rebuild when HEAD moves (a commit, a checkout).
    for p in ["HEAD", "index"] {
        if let Some(path) = output("git", &["rev-parse", "--git-path", p]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=XBUILD_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=XBUILD_RUSTC_VERSION={rustc_version}");
}
