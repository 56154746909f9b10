//! Work that does not depend on the target runs once (issue #20): the steps
//! of a `FROM --platform=$BUILDPLATFORM` stage before `ARG TARGETARCH` are
//! one vertex for every target, keyed and cached by the platform that
//! executes them; what follows stays per target.

use serde_json::Value;
use std::path::Path;
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{context, publish_base, require_multiplatform, s, Run, Xbuild};

/// The Dockerfile, on the testbed's busybox base.
const CROSS: &str = "ARG BASE\n\
FROM --platform=$BUILDPLATFORM ${BASE} AS build\n\
RUN echo \"toolchain-install on $(uname -m)\" && sleep 1\n\
ARG TARGETARCH\n\
RUN echo $TARGETARCH > /out\n\
FROM ${BASE}\n\
COPY --from=build /out /out\n";

/// The plain-progress vertex lines (`#N [...] TEXT`) whose text contains `what`.
fn vertices<'a>(run: &'a Run, what: &str) -> Vec<&'a str> {
    run.stderr
        .lines()
        .filter(|l| l.starts_with('#') && l.contains(" [") && l.contains(what))
        .collect()
}

/// Whether vertex line `line` (`#N [...] ...`) is followed by `#N CACHED`.
fn is_cached(run: &Run, line: &str) -> bool {
    let n = line.split_whitespace().next().unwrap_or("#?");
    run.stderr.lines().any(|l| l == format!("{n} CACHED"))
}

/// How many times the toolchain step really ran: its log line, printed by
/// the step itself (the vertex line holds the unexpanded `$(uname -m)`).
fn toolchain_runs(run: &Run) -> usize {
    run.stderr
        .lines()
        .filter(|l| l.starts_with('#') && l.ends_with("toolchain-install on x86_64"))
        .count()
}

fn build(xb: &Xbuild, ctx: &Path, base: &str, platforms: &str, out: &Path, meta: &Path) -> Run {
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        platforms,
        "--build-arg",
        &format!("BASE={base}"),
        "-o",
        &format!("type=local,dest={}", out.display()),
        "--metadata-file",
        s(meta),
        s(ctx),
    ])
    .ok()
}

#[test]
fn toolchain_step_runs_once_for_two_targets_and_once_again_cached() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[("Dockerfile", CROSS)]);
    let out = xb.root().join("out");
    let meta = xb.root().join("meta.json");

    let first = build(
        &xb,
        ctx.path(),
        &base,
        "linux/amd64,linux/arm64",
        &out,
        &meta,
    );
    // Once, natively, shown once and marked as serving both targets.
    assert_eq!(toolchain_runs(&first), 1, "{}", first.stderr);
    let shown = vertices(&first, "RUN echo \"toolchain-install");
    assert_eq!(shown.len(), 1, "{}", first.stderr);
    assert!(
        shown[0].contains("[linux/amd64,linux/arm64 build 2/4]"),
        "{}",
        shown[0]
    );
    // Nothing hits in a cold build (the per-target `ARG TARGETARCH` steps
    // are keyed by their value), and the step after it stays per target.
    assert_eq!(first.cached_steps(), 0, "{}", first.stderr);
    assert_eq!(vertices(&first, "RUN echo $TARGETARCH").len(), 2);
    for (dir, arch) in [("linux_amd64", "amd64"), ("linux_arm64", "arm64")] {
        let got = std::fs::read_to_string(out.join(dir).join("out")).unwrap();
        assert_eq!(got, format!("{arch}\n"), "{dir}/out");
    }
    // The metadata file shows the shared work once, marked shared.
    let m: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let shared = &m["xbuild.shared"];
    assert_eq!(shared["platform"], "linux/amd64", "{m}");
    assert_eq!(shared["shared_by"][0], "linux/amd64", "{m}");
    assert_eq!(shared["shared_by"][1], "linux/arm64", "{m}");
    assert_eq!(shared["steps"], 1, "{m}");
    assert_eq!(shared["worker"], "local", "{m}");
    // Per target: ARG TARGETARCH, RUN, and the final stage's COPY; the
    // shared step is not counted again.
    assert_eq!(m["xbuild.platforms"]["linux/arm64"]["steps"], 3, "{m}");
    assert!(first.stderr.contains("shared by linux/amd64, linux/arm64"));

    // The same build again: the shared step is one CACHED vertex.
    let second = build(
        &xb,
        ctx.path(),
        &base,
        "linux/amd64,linux/arm64",
        &out,
        &meta,
    );
    assert_eq!(toolchain_runs(&second), 0, "{}", second.stderr);
    let shown = vertices(&second, "RUN echo \"toolchain-install");
    assert_eq!(shown.len(), 1, "{}", second.stderr);
    assert!(is_cached(&second, shown[0]), "{}", second.stderr);
    assert_eq!(second.missed_steps(), 0, "{}", second.stderr);
}

#[test]
fn arm64_after_amd64_hits_the_cache_of_the_build_platform_stage() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[("Dockerfile", CROSS)]);
    let meta = xb.root().join("meta.json");

    let amd = build(
        &xb,
        ctx.path(),
        &base,
        "linux/amd64",
        &xb.root().join("a"),
        &meta,
    );
    assert_eq!(toolchain_runs(&amd), 1, "{}", amd.stderr);
    let arm = build(
        &xb,
        ctx.path(),
        &base,
        "linux/arm64",
        &xb.root().join("b"),
        &meta,
    );
    // Same command, same machine, same inputs: a hit, although the target
    // differs. The step after ARG TARGETARCH misses (its arg differs).
    assert_eq!(toolchain_runs(&arm), 0, "{}", arm.stderr);
    let shown = vertices(&arm, "RUN echo \"toolchain-install");
    assert_eq!(shown.len(), 1, "{}", arm.stderr);
    assert!(is_cached(&arm, shown[0]), "{}", arm.stderr);
    let per_target = vertices(&arm, "RUN echo $TARGETARCH");
    assert!(!is_cached(&arm, per_target[0]), "{}", arm.stderr);
    assert_eq!(
        std::fs::read_to_string(xb.root().join("b/out")).unwrap(),
        "arm64\n"
    );
}

/// Images are the same as before: the per-platform manifest digests of a
/// Dockerfile without a shared step (its build-platform stage uses
/// TARGETARCH from its first step) match the ones xbuild's `main` built
/// before steps were keyed by their execution platform. No base image, so
/// the digests depend on nothing but xbuild.
#[test]
fn manifests_without_shared_steps_keep_their_digests() {
    if testbed::require_root().is_none() {
        return;
    }
    const DF: &str = "FROM --platform=$BUILDPLATFORM scratch AS build\n\
        ARG TARGETARCH\n\
        COPY --chmod=644 greeting.txt /out/greeting-${TARGETARCH}.txt\n\
        FROM scratch\n\
        COPY --from=build /out/ /app/\n\
        COPY greeting.txt /app/\n\
        ENV GREETING=hello\n\
        CMD [\"/app/greeting.txt\"]\n";
    // Computed with `main` at 3553b91 (SOURCE_DATE_EPOCH=1700000000), then
    // again after the BuildKit fidelity work changed history texts and the
    // FROM scratch WorkingDir (issue 17); shared steps change neither.
    const PINNED: [(&str, &str); 2] = [
        (
            "linux/amd64",
            "sha256:67db8a886125e7b81a46f64e562651a7b13059864fda809ed77df93882bfc84b",
        ),
        (
            "linux/arm64",
            "sha256:0e0d3dd5adc707002c17982bd8967aedf63ba2d05075e22bacafa2a97d5980a4",
        ),
    ];
    let xb = Xbuild::new();
    let ctx = context(&[("Dockerfile", DF), ("greeting.txt", "Greetings\n")]);
    let tar = xb.root().join("img.tar");
    let oci = xb.root().join("oci");
    let mut cmd = xb.command();
    cmd.env("SOURCE_DATE_EPOCH", "1700000000").args([
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
        "-o",
        &format!("type=oci,dest={}", tar.display()),
        s(ctx.path()),
    ]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(&oci).unwrap();
    let st = std::process::Command::new("tar")
        .args(["-xf", s(&tar), "-C", s(&oci)])
        .status()
        .unwrap();
    assert!(st.success());
    let index: Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    // The index names the image index; its manifests are the platforms'.
    let top = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| -> Value {
        let hex = d.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(oci.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let image_index = blob(top);
    let got: Vec<(String, String)> = image_index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap(),
                    m["platform"]["architecture"].as_str().unwrap()
                ),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = PINNED
        .iter()
        .map(|(p, d)| (p.to_string(), d.to_string()))
        .collect();
    assert_eq!(got, want);
}

/// The arm64 target on an agent (an `XBUILD_LOCAL_AGENT` child speaking the
/// node protocol, arm64 under QEMU there) and the shared step run here once,
/// natively: its record reaches the agent by key and its layer by digest,
/// so the agent's `COPY --from=build` reads it without running it again.
#[test]
fn the_shared_result_reaches_a_target_built_on_an_agent() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[("Dockerfile", CROSS)]);
    let agents = tempfile::tempdir().unwrap();
    let spec = format!("linux/arm64=arm1:{}", s(&agents.path().join("a1")));
    let out = xb.root().join("out");
    let meta = xb.root().join("meta.json");
    let run = xb
        .run_with(
            &[
                "build",
                "--progress",
                "plain",
                "--platform",
                "linux/amd64,linux/arm64",
                "--build-arg",
                &format!("BASE={base}"),
                "-o",
                &format!("type=local,dest={}", out.display()),
                "--metadata-file",
                s(&meta),
                s(ctx.path()),
            ],
            &[("XBUILD_LOCAL_AGENT", spec.as_str())],
            None,
        )
        .ok();
    assert_eq!(toolchain_runs(&run), 1, "{}", run.stderr);
    assert_eq!(
        vertices(&run, "RUN echo \"toolchain-install").len(),
        1,
        "{}",
        run.stderr
    );
    let m: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["xbuild.shared"]["worker"], "local", "{m}");
    assert_eq!(m["xbuild.platforms"]["linux/arm64"]["worker"], "node arm1");
    for (dir, arch) in [("linux_amd64", "amd64"), ("linux_arm64", "arm64")] {
        let got = std::fs::read_to_string(out.join(dir).join("out")).unwrap();
        assert_eq!(got, format!("{arch}\n"), "{dir}/out");
    }
}

/// With a node for linux/amd64 (OpenSSH on 127.0.0.2 running `xbuild
/// agent`) and arm64 under QEMU here, the shared build-platform step runs
/// once, on the node (the native amd64 worker); the arm64 target, built
/// here, takes its result by key and the layer by digest.
#[test]
fn with_an_amd64_node_the_shared_step_runs_once_on_the_node() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(sshd) = testbed::Sshd::start_or_skip("127.0.0.2") else {
        return;
    };
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let home = tempfile::tempdir().unwrap();
    let env = [("HOME", s(home.path())), ("SSH_AUTH_SOCK", "")];
    let base = publish_base(&xb, &reg);
    sshd.write_known_hosts(&home.path().join(".ssh/known_hosts"))
        .unwrap();
    let agent = format!(
        "{} agent --stdio --root {}",
        xbuild_e2e::xbuild_bin().display(),
        home.path().join("amd1").display()
    );
    let key = sshd.client_key();
    xb.run_with(
        &[
            "node",
            "add",
            "amd1",
            &sshd.url(),
            "--platform",
            "linux/amd64",
            "--identity",
            s(&key),
            "--agent-command",
            &agent,
        ],
        &env,
        None,
    )
    .ok();
    let ctx = context(&[("Dockerfile", CROSS)]);
    let out = xb.root().join("out");
    let meta = xb.root().join("meta.json");
    let run = xb
        .run_with(
            &[
                "build",
                "--progress",
                "plain",
                "--platform",
                "linux/amd64,linux/arm64",
                "--build-arg",
                &format!("BASE={base}"),
                "-o",
                &format!("type=local,dest={}", out.display()),
                "--metadata-file",
                s(&meta),
                s(ctx.path()),
            ],
            &env,
            None,
        )
        .ok();
    assert!(
        run.stderr.contains("linux/amd64 → node amd1"),
        "{}",
        run.stderr
    );
    assert_eq!(toolchain_runs(&run), 1, "{}", run.stderr);
    let shown = vertices(&run, "RUN echo \"toolchain-install");
    assert_eq!(shown.len(), 1, "{}", run.stderr);
    let m: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["xbuild.shared"]["worker"], "node amd1", "{m}");
    assert_eq!(m["xbuild.shared"]["platform"], "linux/amd64", "{m}");
    assert_eq!(m["xbuild.platforms"]["linux/amd64"]["worker"], "node amd1");
    assert_eq!(m["xbuild.platforms"]["linux/arm64"]["worker"], "qemu");
    for (dir, arch) in [("linux_amd64", "amd64"), ("linux_arm64", "arm64")] {
        let got = std::fs::read_to_string(out.join(dir).join("out")).unwrap();
        assert_eq!(got, format!("{arch}\n"), "{dir}/out");
    }
}

/// `--call outline` shows the merged graph: the shared steps once, marked
/// with the targets they serve, then each target's own steps.
#[test]
fn outline_shows_the_shared_steps_once() {
    let xb = Xbuild::new();
    let ctx = context(&[("Dockerfile", CROSS)]);
    let run = xb
        .run(&[
            "build",
            "--call",
            "outline",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            "BASE=busybox",
            s(ctx.path()),
        ])
        .ok();
    let toolchain: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains("toolchain-install"))
        .collect();
    assert_eq!(toolchain.len(), 1, "{}", run.stdout);
    assert!(
        toolchain[0].contains("[linux/amd64,linux/arm64 build 2/4]"),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("[linux/arm64 build 1-2/4] shared (above)"));
    assert_eq!(
        run.stdout.matches("RUN echo $TARGETARCH > /out").count(),
        2,
        "{}",
        run.stdout
    );
    let json = xb
        .run(&[
            "build",
            "--call",
            "outline,format=json",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            "BASE=busybox",
            s(ctx.path()),
        ])
        .ok();
    let graphs: Value = serde_json::from_str(&json.stdout).unwrap();
    for g in graphs.as_array().unwrap() {
        assert_eq!(g["shared_steps"][0]["stage"], 0, "{g}");
        assert_eq!(g["shared_steps"][0]["steps"], 1, "{g}");
        // The build platform: this machine's.
        let here = format!("linux/{}", testbed::host_arch());
        assert_eq!(g["shared_steps"][0]["executes_on"], here.as_str(), "{g}");
    }
}
