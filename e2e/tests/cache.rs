//! `xbuild cache du` and `xbuild cache prune` against real builds: what is
//! counted, what prune removes and keeps (checked by rebuilding and counting
//! cache hits), and prune waiting for a running build.

use std::process::Stdio;
use xbuild_e2e::testbed::Registry;
use xbuild_e2e::{context, publish_base, require_multiplatform, s, Xbuild};

fn build(xb: &Xbuild, dir: &std::path::Path, tag: Option<&str>) -> xbuild_e2e::Run {
    let mut args = vec!["build", "--progress", "plain", "--platform", "linux/amd64"];
    if let Some(t) = tag {
        args.extend(["-t", t]);
    }
    args.push(s(dir));
    xb.run(&args).ok()
}

fn records(du: &str, platform: &str) -> usize {
    du.lines()
        .find(|l| l.starts_with(platform) && l.contains("records"))
        .and_then(|l| l.split_whitespace().nth(2))
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn prune_keeps_what_images_use_and_all_removes_everything() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&Xbuild::new(), &reg);
    let kept = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN echo kept > /kept\nCMD [\"cat\", \"/kept\"]\n"),
    )]);
    let dropped = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN echo dropped > /dropped\n"),
    )]);
    build(&xb, kept.path(), Some("app:kept"));
    build(&xb, dropped.path(), None);

    let du = xb.run(&["cache", "du"]).ok().stdout;
    assert_eq!(records(&du, "linux/amd64"), 3, "{du}");
    assert!(du.contains("snapshots"), "{du}");

    // The untagged build's RUN is unused; the tagged image's chain stays.
    let pruned = xb.run(&["cache", "prune"]).ok();
    assert!(
        pruned.stdout.contains("Deleted 1 cache records"),
        "{}",
        pruned.stdout
    );
    let again = build(&xb, kept.path(), Some("app:kept"));
    assert_eq!(again.missed_steps(), 0, "{}", again.stderr);
    assert_eq!(again.cached_steps(), 2, "{}", again.stderr);
    let again = build(&xb, dropped.path(), None);
    assert_eq!(again.missed_steps(), 1, "{}", again.stderr);

    // A filter that matches nothing removes nothing.
    let none = xb
        .run(&["cache", "prune", "--all", "--filter", "until=24h"])
        .ok();
    assert!(
        none.stdout.contains("Deleted 0 cache records"),
        "{}",
        none.stdout
    );

    // --all: no records left; the next build misses every step.
    xb.run(&["cache", "prune", "--all"]).ok();
    let du = xb.run(&["cache", "du"]).ok().stdout;
    assert_eq!(records(&du, "linux/amd64"), 0, "{du}");
    let cold = build(&xb, kept.path(), Some("app:kept"));
    assert_eq!(cold.cached_steps(), 0, "{}", cold.stderr);

    // Bad options are clear errors.
    let bad = xb.run(&["cache", "prune", "--filter", "age=1h"]).failed();
    assert!(bad.stderr.contains("unknown key \"age\""), "{}", bad.stderr);
    let bad = xb
        .run(&["cache", "prune", "--keep-storage", "lots"])
        .failed();
    assert!(bad.stderr.contains("--keep-storage"), "{}", bad.stderr);
}

#[test]
fn prune_waits_for_a_running_build() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&Xbuild::new(), &reg);
    let slow = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN sleep 3 && echo slow > /slow\n"),
    )]);
    let child = xb
        .command()
        .args([
            "build",
            "--progress",
            "plain",
            "-t",
            "app:slow",
            s(slow.path()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the build start its RUN.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let prune = xb.run(&["cache", "prune", "--all"]).ok();
    assert!(
        prune.stderr.contains("waiting for running builds"),
        "{}",
        prune.stderr
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The build finished before prune ran, so its image is complete.
    let images = xb.run(&["images"]).ok();
    assert!(images.stdout.contains("app"), "{}", images.stdout);
    let hist = xb.run(&["history", "app:slow"]).ok();
    assert!(hist.stdout.contains("sleep 3"), "{}", hist.stdout);
}
