//! The guide's sample outputs are what xbuild really prints: the failed
//! step of docs/guide/troubleshooting.md, run for real.

use std::path::Path;
use xbuild_e2e::{context, require_multiplatform, s, testbed, Xbuild};

/// `#2 0.076 text` → `#2 <t> text`: a log line's elapsed time varies.
fn normalize(line: &str) -> String {
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(n), Some(t), Some(rest))
            if n.starts_with('#') && t.contains('.') && t.parse::<f64>().is_ok() =>
        {
            format!("{n} <t> {rest}")
        }
        _ => line.to_string(),
    }
}

/// The indented block after `marker` in a guide page.
fn sample(page: &str, marker: &str) -> Vec<String> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/guide")
            .join(page),
    )
    .unwrap();
    let start = text.find(marker).expect("the sample's introduction");
    text[start..]
        .lines()
        .skip_while(|l| !l.starts_with("    "))
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| l.strip_prefix("    ").unwrap_or(l).to_string())
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .lines()
        .map(normalize)
        .collect()
}

#[test]
fn the_troubleshooting_sample_of_a_failed_step_is_real() {
    if require_multiplatform().is_none() {
        return;
    }
    let xb = Xbuild::new();
    let base = tempfile::tempdir().unwrap();
    testbed::write_base_context(base.path(), &["amd64", "arm64"]).unwrap();
    xb.run(&[
        "build",
        "-q",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        "base",
        s(base.path()),
    ])
    .ok();
    let ctx = context(&[("Dockerfile", "FROM base\nRUN make\nCMD [\"app\"]\n")]);
    let out = xb
        .command()
        .current_dir(ctx.path())
        .args([
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/arm64",
            ".",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let got: Vec<String> = stderr.trim_end().lines().map(normalize).collect();
    let want = sample(
        "troubleshooting.md",
        "The failing step prints its full output",
    );
    assert_eq!(got, want, "\n--- real\n{stderr}");
}
