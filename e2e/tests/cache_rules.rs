//! Docker's cache rules, counted from `--progress plain` (`#N CACHED` and
//! `#N cache miss: REASON` lines): what hits, what misses, and the reason
//! each miss gives; `--call explain` answering the same without running.

use serde_json::Value;
use std::path::Path;
use xbuild_e2e::testbed::Registry;
use xbuild_e2e::{context, index_platforms, publish_base, require_multiplatform, s, Run, Xbuild};

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

/// Steps after FROM in [`rules_dockerfile`] (the two ARGs included: they
/// are vertices too, though they take no step number).
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
    // The base image was built in this state directory too: its steps in
    // the same slots ("stage-0 2") are another project's, never compared.
    assert_eq!(reasons(&first)[0], "no cache record", "{}", first.stderr);
    // Each later step names its direct parent; BuildKit's numbering: FROM
    // and the filesystem steps are numbered, ARG is not.
    assert_eq!(
        reasons(&first)[1..],
        [
            "parent missed: [stage-0 2/7] RUN echo one > /one",
            "parent missed: [stage-0 3/7] COPY a.txt /a.txt",
            "parent missed: [stage-0 4/7] RUN cat /a.txt > /a-copy",
            "parent missed: [stage-0] ARG V=1",
            "parent missed: [stage-0 5/7] RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /secret-len",
            "parent missed: [stage-0 6/7] RUN echo \"v=$V\" > /v",
            "parent missed: [stage-0] ARG CACHEBUST",
        ],
        "{}",
        first.stderr
    );
    assert!(first.stderr.contains("] ARG V=1"), "{}", first.stderr);
    assert!(!first.stderr.contains("/7] ARG"), "{}", first.stderr);

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
        r[1], "parent missed: [stage-0 3/7] COPY a.txt /a.txt",
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
    let exported = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={},mode=max", s(exported.path()));
    let nocache = b(&[
        "--no-cache",
        "--build-arg",
        "V=an-arg-value",
        "--cache-to",
        &dest,
    ]);
    assert_eq!(nocache.cached_steps(), 0, "{}", nocache.stderr);
    assert!(reasons(&nocache).iter().all(|r| r == "--no-cache"));
    // The exported records hold neither the secret nor build-arg values.
    let mut files = 0;
    for e in std::fs::read_dir(exported.path().join("blobs/sha256")).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("another-secret-value") && !text.contains("s3cret-one"));
        assert!(!text.contains("an-arg-value"), "{text}");
        files += 1;
    }
    assert!(files > 2);
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

fn files_named(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let p = e.path();
            e.file_name() == name || (p.is_dir() && files_named(&p, name))
        })
}

fn two_platform_build(xb: &Xbuild, dir: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
    ];
    args.extend(extra);
    args.push(s(dir));
    xb.run(&args).ok()
}

fn skopeo_raw(reference: &str) -> Value {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The line `cache import: N record(s) imported, M layer(s) fetched`.
fn import_counts(r: &Run) -> (usize, usize) {
    let l = r
        .stderr
        .lines()
        .find(|l| l.starts_with("cache import: "))
        .unwrap_or_else(|| panic!("no import line:\n{}", r.stderr));
    let n: Vec<usize> = l
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

#[test]
fn cache_export_and_import_keep_every_platform() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let df = |last: &str| {
        format!(
            "FROM {base} AS build\nRUN echo built > /built\n\
             FROM {base}\nCOPY a.txt /a.txt\nRUN uname -m > /arch\n\
             COPY --from=build /built /built\nRUN echo {last} > /last\n"
        )
    };
    let ctx = context(&[("Dockerfile", &df("one")), ("a.txt", "a\n")]);
    let cache_ref = reg.reference("cache/app:buildcache");
    let local = tempfile::tempdir().unwrap();
    let local_dir = local.path().join("cache");
    let first = two_platform_build(
        &xb,
        ctx.path(),
        &[
            "--cache-to",
            &format!("type=registry,ref={cache_ref},mode=max"),
            "--cache-to",
            &format!("type=local,dest={}", s(&local_dir)),
        ],
    );
    // 5 steps per platform.
    assert_eq!(first.missed_steps(), 10, "{}", first.stderr);

    // The registry holds one index over both platforms; so does the dir.
    let idx = skopeo_raw(&cache_ref);
    assert_eq!(idx["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(index_platforms(&idx), vec!["linux/amd64", "linux/arm64"]);
    let local_idx: Value =
        serde_json::from_slice(&std::fs::read(local_dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index_platforms(&local_idx),
        vec!["linux/amd64", "linux/arm64"]
    );
    assert!(local_dir.join("oci-layout").is_file());
    // mode=min (local): only the target stage's 4 steps per platform;
    // mode=max (registry): the build stage's step too.
    let records_of = |manifest: &Value, blob: &dyn Fn(&str) -> Vec<u8>| -> usize {
        let cfg = manifest["config"]["digest"].as_str().unwrap();
        let v: Value = serde_json::from_slice(&blob(cfg)).unwrap();
        v["records"].as_array().unwrap().len()
    };
    let local_blob = |d: &str| {
        std::fs::read(
            local_dir
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    for m in local_idx["manifests"].as_array().unwrap() {
        let man: Value =
            serde_json::from_slice(&local_blob(m["digest"].as_str().unwrap())).unwrap();
        assert_eq!(
            man["config"]["mediaType"],
            "application/vnd.xbuild.cache.records.v1+json"
        );
        assert_eq!(records_of(&man, &local_blob), 4, "{man}");
        // Every layer the manifest names is in the layout.
        for l in man["layers"].as_array().unwrap() {
            local_blob(l["digest"].as_str().unwrap());
        }
    }
    let repo = reg.reference("cache/app");
    let mut all_layers = std::collections::BTreeSet::new();
    for m in idx["manifests"].as_array().unwrap() {
        let man = skopeo_raw(&format!("{repo}@{}", m["digest"].as_str().unwrap()));
        let out = std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--config", "--tls-verify=false"])
            .arg(format!("docker://{repo}@{}", m["digest"].as_str().unwrap()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(cfg["records"].as_array().unwrap().len(), 5, "{man}");
        for l in man["layers"].as_array().unwrap() {
            all_layers.insert(l["digest"].as_str().unwrap().to_string());
        }
    }
    let secret_free = std::fs::read_dir(local_dir.join("blobs/sha256"))
        .unwrap()
        .count();
    assert!(secret_free > 0);

    // A later one-platform export to the same ref keeps the other
    // platform's cache (the flaw of buildx issue 1044).
    let amd = xb
        .run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "--cache-to",
            &format!("type=registry,ref={cache_ref},mode=max"),
            s(ctx.path()),
        ])
        .ok();
    assert_eq!(amd.missed_steps(), 0, "{}", amd.stderr);
    let again = skopeo_raw(&cache_ref);
    assert_eq!(index_platforms(&again), vec!["linux/amd64", "linux/arm64"]);
    assert_eq!(
        again["manifests"], idx["manifests"],
        "same records, same manifests"
    );

    // An empty state directory importing from the registry: fully cached
    // on every platform.
    let fresh = Xbuild::new();
    let imported = two_platform_build(
        &fresh,
        ctx.path(),
        &["--cache-from", &format!("type=registry,ref={cache_ref}")],
    );
    assert_eq!(imported.missed_steps(), 0, "{}", imported.stderr);
    assert_eq!(imported.cached_steps(), 10, "{}", imported.stderr);
    // Every record; each distinct layer blob once.
    assert_eq!(
        import_counts(&imported),
        (10, all_layers.len()),
        "{}",
        imported.stderr
    );

    // From the local directory (mode=min: the build stage reruns; COPY
    // --from it still hits, its key being the stage's), with the last step
    // changed: the hits' layers are fetched, the rest never.
    std::fs::write(ctx.path().join("Dockerfile"), df("two")).unwrap();
    let fresh = Xbuild::new();
    let partial = two_platform_build(
        &fresh,
        ctx.path(),
        &["--cache-from", &format!("type=local,src={}", s(&local_dir))],
    );
    assert_eq!(partial.cached_steps(), 6, "{}", partial.stderr);
    assert_eq!(partial.missed_steps(), 4, "{}", partial.stderr);
    // Records of 4 steps per platform; only the hits' layers are fetched:
    // never the changed last step's.
    let (records, fetched) = import_counts(&partial);
    assert_eq!(records, 8, "{}", partial.stderr);
    assert!((1..=6).contains(&fetched), "{}", partial.stderr);
    assert_eq!(
        reasons(&partial)
            .iter()
            .filter(|r| *r == "no cache record")
            .count(),
        2,
        "the build stage was not exported with mode=min: {:?}",
        reasons(&partial)
    );
    let mut last_layers = Vec::new();
    for m in local_idx["manifests"].as_array().unwrap() {
        let man: Value =
            serde_json::from_slice(&local_blob(m["digest"].as_str().unwrap())).unwrap();
        let cfg: Value =
            serde_json::from_slice(&local_blob(man["config"]["digest"].as_str().unwrap())).unwrap();
        for r in cfg["records"].as_array().unwrap() {
            if r["text"] == "RUN echo one > /last" {
                last_layers.push(r["layer"]["digest"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(last_layers.len(), 2);
    let blobs = fresh.root().join("content");
    for d in &last_layers {
        let hex = d.trim_start_matches("sha256:");
        assert!(
            !files_named(&blobs, hex),
            "the layer of the step that missed was fetched: {d}"
        );
    }
    assert!(
        reasons(&partial)
            .iter()
            .any(|r| r
                == "instruction changed: \"RUN echo one > /last\" -> \"RUN echo two > /last\""),
        "{:?}",
        reasons(&partial)
    );

    // A missing cache is a warning, not a failure.
    let none = two_platform_build(
        &Xbuild::new(),
        ctx.path(),
        &[
            "--cache-from",
            &format!("type=registry,ref={}", reg.reference("cache/none:x")),
        ],
    );
    assert!(
        none.stderr.contains("cache import from registry"),
        "{}",
        none.stderr
    );
}

#[test]
fn pull_hits_an_unchanged_base_and_misses_a_repushed_one() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let publisher = Xbuild::new();
    let busybox = publish_base(&publisher, &reg);
    let base = reg.reference("xbuild/base2:latest");
    let push_base = |version: &str| {
        let c = context(&[(
            "Dockerfile",
            &format!("FROM {busybox}\nRUN echo {version} > /version\n"),
        )]);
        build(&publisher, c.path(), &["-t", &base, "--push"]);
    };
    push_base("v1");
    let xb = Xbuild::new();
    let app = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN cat /version > /seen\n"),
    )]);
    let first = build(&xb, app.path(), &["--pull"]);
    assert_eq!(first.missed_steps(), 1, "{}", first.stderr);
    let same = build(&xb, app.path(), &["--pull"]);
    assert_eq!(same.cached_steps(), 1, "{}", same.stderr);
    assert_eq!(same.missed_steps(), 0, "{}", same.stderr);

    push_base("v2");
    let explain = xb
        .run(&[
            "build",
            "--call",
            "explain",
            "--pull",
            "--platform",
            "linux/amd64",
            s(app.path()),
        ])
        .ok();
    assert!(
        explain
            .stdout
            .contains(&format!("MISS   base image {base} changed: sha256:")),
        "{}",
        explain.stdout
    );
    let changed = build(&xb, app.path(), &["--pull"]);
    assert_eq!(changed.missed_steps(), 1, "{}", changed.stderr);
    let r = reasons(&changed);
    assert!(
        r[0].starts_with(&format!("base image {base} changed: sha256:"))
            && r[0].contains(" -> sha256:"),
        "{r:?}"
    );
}

/// The lines of the `log` file in cache mount `id` of linux/amd64.
fn cache_mount_log(xb: &Xbuild, id: &str) -> Vec<String> {
    let p = xb
        .root()
        .join("cachemounts/linux-amd64")
        .join(id)
        .join("log");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(String::from)
        .collect()
}

/// Two builds at once use the cache mount `sharing`; returns its log.
fn two_concurrent_users(xb: &Xbuild, base: &str, sharing: &str) -> Vec<String> {
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base}\nARG N\n\
             RUN --mount=type=cache,id={sharing},target=/c,sharing={sharing} \
             echo \"start $N\" >> /c/log && sleep 3 && echo \"end $N\" >> /c/log\n"
        ),
    )]);
    let spawn = |n: &str| {
        xb.command()
            .args(["build", "--progress", "plain", "--platform", "linux/amd64"])
            .args(["--build-arg", &format!("N={n}")])
            .arg(ctx.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn("a");
    let b = spawn("b");
    for c in [a, b] {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cache_mount_log(xb, sharing)
}

#[test]
fn cache_mount_sharing_modes_with_two_concurrent_builds() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    // Warm the base image once, so both builds reach their RUN together.
    let warm = context(&[("Dockerfile", &format!("FROM {base}\nRUN true\n"))]);
    build(&xb, warm.path(), &[]);

    // shared: both write into the one directory at the same time.
    let log = two_concurrent_users(&xb, &base, "shared");
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(
        log[0].starts_with("start") && log[1].starts_with("start"),
        "{log:?}"
    );

    // locked: the second waits for the first: no interleaving.
    let log = two_concurrent_users(&xb, &base, "locked");
    assert_eq!(log.len(), 4, "{log:?}");
    let who = |l: &str| l.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        log[0].starts_with("start") && log[1].starts_with("end"),
        "{log:?}"
    );
    assert_eq!(who(&log[0]), who(&log[1]), "{log:?}");
    assert!(
        log[2].starts_with("start") && log[3].starts_with("end"),
        "{log:?}"
    );

    // private: the concurrent user gets its own copy; the shared
    // directory sees one build only.
    let log = two_concurrent_users(&xb, &base, "private");
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(who(&log[0]), who(&log[1]), "{log:?}");
}
