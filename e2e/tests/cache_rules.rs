//! Docker's cache rules, counted from `--progress plain` (`#N CACHED` and
//! `#N cache miss: REASON` lines): what hits, what misses, and the reason
//! each miss gives; `--call explain` answering the same without running.

use serde_json::Value;
use std::path::Path;
use xbuild_e2e::testbed::Registry;
use xbuild_e2e::{context, publish_base, require_multiplatform, s, Run, Xbuild};

/// The `cache miss` reasons of a plain-progress run, in order.
fn reasons(r: &Run) -> Vec<String> {
    r.stderr
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| l.split_once(" cache miss: ").map(|(_, r)| r.to_string()))
        .collect()
}

fn build(xb: &Xbuild, dir: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["build", "--progress", "plain", "--platform", "linux/amd64"];
    args.extend(extra);
    args.push(s(dir));
    xb.run(&args).ok()
}

fn rules_dockerfile(base: &str) -> String {
    format!(
        "FROM {base}\n\
         RUN echo one > /one\n\
         COPY a.txt /a.txt\n\
         RUN cat /a.txt > /a-copy\n\
         ARG V=1\n\
         RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /secret-len\n\
         RUN echo \"v=$V\" > /v\n\
         ARG CACHEBUST\n\
         RUN echo \"bust $CACHEBUST\" > /bust\n"
    )
}

/// Steps after FROM in [`rules_dockerfile`].
const STEPS: usize = 8;

#[test]
fn cache_rules_and_miss_reasons() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[("Dockerfile", &rules_dockerfile(&base)), ("a.txt", "a\n")]);
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "s3cret-one").unwrap();
    let sec = format!("id=tok,src={}", s(secret.path()));
    let b = |extra: &[&str]| {
        let mut a = vec!["--secret", sec.as_str()];
        a.extend(extra);
        build(&xb, ctx.path(), &a)
    };

    let first = b(&[]);
    assert_eq!(first.cached_steps(), 0, "{}", first.stderr);
    assert_eq!(first.missed_steps(), STEPS, "{}", first.stderr);
    assert!(
        reasons(&first)
            .iter()
            .skip(1)
            .all(|r| r.starts_with("parent missed: [stage-0 2/9] RUN echo one")),
        "{:?}",
        reasons(&first)
    );

    // Twice: the second build runs nothing.
    let second = b(&[]);
    assert_eq!(second.cached_steps(), STEPS, "{}", second.stderr);
    assert_eq!(second.missed_steps(), 0, "{}", second.stderr);

    // Only the mtime changes: everything stays cached.
    let a = ctx.path().join("a.txt");
    let f = std::fs::File::options().write(true).open(&a).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let touched = b(&[]);
    assert_eq!(touched.cached_steps(), STEPS, "{}", touched.stderr);

    // A secret's value is never part of a key.
    std::fs::write(secret.path(), "another-secret-value").unwrap();
    let resecret = b(&[]);
    assert_eq!(resecret.cached_steps(), STEPS, "{}", resecret.stderr);
    assert!(!resecret.stderr.contains("another-secret-value"));

    // New content: that COPY and what follows rebuild; the RUN before stays.
    std::fs::write(&a, "b\n").unwrap();
    let changed = b(&[]);
    assert_eq!(changed.cached_steps(), 1, "{}", changed.stderr);
    assert_eq!(changed.missed_steps(), STEPS - 1, "{}", changed.stderr);
    let r = reasons(&changed);
    assert_eq!(r[0], "context files changed: a.txt", "{r:?}");
    assert_eq!(
        r[1], "parent missed: [stage-0 3/9] COPY a.txt /a.txt",
        "{r:?}"
    );

    // A build arg change misses from the first step that uses it.
    let arg = b(&["--build-arg", "V=2"]);
    assert_eq!(arg.cached_steps(), 4, "{}", arg.stderr);
    assert_eq!(arg.missed_steps(), STEPS - 4, "{}", arg.stderr);
    assert_eq!(reasons(&arg)[0], "build arg V changed", "{}", arg.stderr);
    assert!(!arg.stderr.contains("V=2 changed"));

    // CACHEBUST: a new value misses where it is used.
    let bust1 = b(&["--build-arg", "V=2", "--build-arg", "CACHEBUST=1"]);
    assert_eq!(bust1.cached_steps(), STEPS - 1, "{}", bust1.stderr);
    assert_eq!(reasons(&bust1), vec!["build arg CACHEBUST changed"]);
    let bust2 = b(&["--build-arg", "V=2", "--build-arg", "CACHEBUST=2"]);
    assert_eq!(bust2.cached_steps(), STEPS - 1, "{}", bust2.stderr);
    assert_eq!(reasons(&bust2), vec!["build arg CACHEBUST changed"]);

    // A RUN's text: it and the rest rebuild, with old and new text.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        rules_dockerfile(&base).replace("echo one", "echo uno"),
    )
    .unwrap();
    // Explain first: nothing runs, the same verdicts and reasons.
    let explain = xb
        .run(&[
            "build",
            "--call",
            "explain",
            "--platform",
            "linux/amd64",
            s(ctx.path()),
        ])
        .ok();
    assert!(
        explain.stdout.contains(
            "MISS   instruction changed: \"RUN echo one > /one\" -> \"RUN echo uno > /one\""
        ),
        "{}",
        explain.stdout
    );
    assert!(
        explain
            .stdout
            .contains("0 of 8 step(s) would be cached, 8 would run"),
        "{}",
        explain.stdout
    );
    let json = xb
        .run(&[
            "build",
            "--call",
            "explain,format=json",
            "--platform",
            "linux/amd64",
            s(ctx.path()),
        ])
        .ok();
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    let steps = v.as_array().unwrap();
    assert_eq!(steps.len(), STEPS + 1);
    assert_eq!(steps[1]["cached"], false);
    assert_eq!(steps[1]["causes"][0]["kind"], "instruction_changed");
    assert_eq!(steps[1]["causes"][0]["old"], "RUN echo one > /one");
    assert_eq!(steps[2]["causes"][0]["kind"], "parent_missed");
    let text = b(&[]);
    assert_eq!(text.cached_steps(), 0, "{}", text.stderr);
    assert_eq!(
        reasons(&text)[0],
        "instruction changed: \"RUN echo one > /one\" -> \"RUN echo uno > /one\""
    );
    // Its keys are the ones explain computed: the next explain hits all.
    let explain = xb
        .run(&[
            "build",
            "--call",
            "explain,format=json",
            "--platform",
            "linux/amd64",
            s(ctx.path()),
        ])
        .ok();
    let v: Value = serde_json::from_str(&explain.stdout).unwrap();
    assert!(
        v.as_array().unwrap().iter().all(|s| s["cached"] == true),
        "{v}"
    );

    // --no-cache: nothing cached.
    let nocache = b(&["--no-cache"]);
    assert_eq!(nocache.cached_steps(), 0, "{}", nocache.stderr);
    assert!(reasons(&nocache).iter().all(|r| r == "--no-cache"));
}

#[test]
fn no_cache_filter_rebuilds_only_that_stage() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base} AS deps\nRUN echo deps > /deps\nRUN echo more > /more\n\
             FROM {base} AS final\nRUN echo final > /final\nCOPY --from=deps /deps /deps\n"
        ),
    )]);
    let first = build(&xb, ctx.path(), &[]);
    assert_eq!(first.missed_steps(), 4, "{}", first.stderr);
    let filtered = build(&xb, ctx.path(), &["--no-cache-filter", "deps"]);
    assert_eq!(filtered.missed_steps(), 2, "{}", filtered.stderr);
    assert_eq!(filtered.cached_steps(), 2, "{}", filtered.stderr);
    assert!(
        reasons(&filtered)
            .iter()
            .all(|r| r == "--no-cache-filter deps"),
        "{:?}",
        reasons(&filtered)
    );
}
