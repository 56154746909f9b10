//! Remote workers over the agent protocol, with agents started as local
//! child processes (`XBUILD_LOCAL_AGENT=linux/amd64=NAME:ROOT`, each with
//! its own state directory): amd64 builds on the agent, arm64 here through
//! QEMU; the cache of a platform follows it to a fresh agent; a second
//! build sends only the changed context file; an agent killed mid-build
//! has its platform rebuilt here and the push still succeeds.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{buildah_run, publish_base, require_multiplatform, s, Xbuild};

fn metadata(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("metadata file")).expect("metadata JSON")
}

fn platform_meta<'a>(m: &'a Value, p: &str) -> &'a Value {
    &m["xbuild.platforms"][p]
}

/// Deterministic bytes that do not compress (a simple LCG).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn index_platforms(tag: &str) -> Vec<String> {
    let raw = testbed::skopeo_inspect_raw(tag).expect("skopeo inspect --raw");
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    xbuild_e2e::index_platforms(&raw)
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else if !p.to_string_lossy().contains("/tmp") && !p.ends_with("lock") {
            out.push(p);
        }
    }
    out
}

const BIG: usize = 4 << 20;
const SMALL: usize = 256 << 10;

#[test]
fn amd64_on_an_agent_arm64_under_qemu_cache_follows_the_platform_and_only_changes_travel() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "ARG BASE\nFROM $BASE\nCOPY big.bin /big.bin\nCOPY small.bin /small.bin\n\
         RUN uname -m > /arch && wc -c < /small.bin > /small.size\n",
    )
    .unwrap();
    std::fs::write(ctx.path().join("big.bin"), noise(BIG, 1)).unwrap();
    std::fs::write(ctx.path().join("small.bin"), noise(SMALL, 2)).unwrap();
    let agents = tempfile::tempdir().unwrap();
    let tag = reg.reference("remote/app:1");
    let build = |agent_root: &str, meta: &Path| {
        let spec = format!("linux/amd64=amd1:{}", s(&agents.path().join(agent_root)));
        xb.run_with(
            &[
                "build",
                "--progress",
                "plain",
                "--platform",
                "linux/amd64,linux/arm64",
                "--build-arg",
                &format!("BASE={base}"),
                "-t",
                &tag,
                "--push",
                "--metadata-file",
                s(meta),
                s(ctx.path()),
            ],
            &[("XBUILD_LOCAL_AGENT", spec.as_str())],
            None,
        )
        .ok()
    };

    // 1. amd64 on the agent, arm64 here through QEMU.
    let m1p = xb.root().join("m1.json");
    let first = build("a1", &m1p);
    let m1 = metadata(&m1p);
    assert_eq!(
        platform_meta(&m1, "linux/amd64")["worker"],
        "node amd1",
        "{}",
        first.stderr
    );
    assert_eq!(platform_meta(&m1, "linux/arm64")["worker"], "qemu");
    assert!(
        first
            .stderr
            .lines()
            .any(|l| l.starts_with("linux/amd64") && l.contains("node amd1")),
        "the summary names the node:\n{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("context files to node amd1"),
        "{}",
        first.stderr
    );
    assert_eq!(first.cached_steps(), 0, "{}", first.stderr);
    let sent1 = platform_meta(&m1, "linux/amd64")["bytes_sent_to_worker"]
        .as_u64()
        .unwrap();
    assert!(
        sent1 >= (BIG + SMALL) as u64,
        "the first build sends the whole context: {sent1}"
    );
    assert!(platform_meta(&m1, "linux/arm64")["bytes_sent_to_worker"].is_null());
    assert_eq!(index_platforms(&tag), ["linux/amd64", "linux/arm64"]);
    let pushed = testbed::skopeo_inspect_raw_bytes(&tag, None).unwrap();
    assert_eq!(
        m1["containerimage.digest"],
        testbed::sha256_digest(&pushed).unwrap().as_str()
    );
    // The agent ran the amd64 RUN natively; the image runs.
    assert_eq!(buildah_run(&tag, "amd64", "cat /arch").trim(), "x86_64");
    assert_eq!(
        buildah_run(&tag, "amd64", "cat /small.size").trim(),
        SMALL.to_string()
    );
    assert_eq!(buildah_run(&tag, "arm64", "cat /arch").trim(), "aarch64");
    // The records the agent wrote are in the coordinator's cache.
    let records = |root: &Path| {
        std::fs::read_dir(root.join("cache/linux-amd64"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(records(xb.root()) >= 3, "coordinator has the amd64 records");
    assert_eq!(records(xb.root()), records(&agents.path().join("a1")));

    // The agent exited once the coordinator closed its input.
    let pid1: i32 = std::fs::read_to_string(agents.path().join("a1/agent.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(pid1), "agent {pid1} outlived the build");

    // 2. A fresh agent: every step is a cache hit, nothing runs there.
    let m2p = xb.root().join("m2.json");
    let second = build("a2", &m2p);
    let m2 = metadata(&m2p);
    assert_eq!(
        platform_meta(&m2, "linux/amd64")["worker"],
        "node amd1",
        "{}",
        second.stderr
    );
    assert_eq!(second.missed_steps(), 0, "{}", second.stderr);
    assert_eq!(
        second.cached_steps(),
        6,
        "3 steps x 2 platforms cached:\n{}",
        second.stderr
    );
    assert_eq!(platform_meta(&m2, "linux/amd64")["cached"], 3);
    assert_eq!(
        platform_meta(&m2, "linux/amd64")["digest"],
        platform_meta(&m1, "linux/amd64")["digest"],
        "a cached build on another node gives the same image"
    );
    assert_eq!(m2["containerimage.digest"], m1["containerimage.digest"]);
    // No RUN ran on the fresh agent: its cache holds only the synced records.
    assert_eq!(records(&agents.path().join("a2")), records(xb.root()));
    // And nothing it did not need travelled: no layer, no context file.
    let sent2 = platform_meta(&m2, "linux/amd64")["bytes_sent_to_worker"]
        .as_u64()
        .unwrap();
    eprintln!("bytes sent to a fresh agent for a fully cached build: {sent2}");
    assert!(sent2 < 64 << 10, "fully cached build sent {sent2} bytes");
    let ctx_cache = agents.path().join("a2/remote/context/blobs");
    let cached_files = walk_files(&ctx_cache);
    assert!(
        cached_files.is_empty(),
        "context files sent: {cached_files:?}"
    );

    // 3. One changed context file: about that file's size goes to the agent.
    std::fs::write(ctx.path().join("small.bin"), noise(SMALL, 3)).unwrap();
    let m3p = xb.root().join("m3.json");
    let third = build("a1", &m3p);
    let m3 = metadata(&m3p);
    let sent3 = platform_meta(&m3, "linux/amd64")["bytes_sent_to_worker"]
        .as_u64()
        .unwrap();
    eprintln!("bytes sent to the agent: first build {sent1}, after changing one {SMALL}-byte file {sent3}");
    assert!(
        sent3 >= SMALL as u64 && sent3 < (SMALL + (64 << 10)) as u64,
        "one changed {SMALL}-byte file, {sent3} bytes sent (context is {} bytes)",
        BIG + SMALL
    );
    // COPY big.bin still cached; COPY small.bin and RUN rebuilt, per platform.
    assert_eq!(third.cached_steps(), 2, "{}", third.stderr);
    assert_eq!(third.missed_steps(), 4, "{}", third.stderr);
    assert_eq!(
        buildah_run(&tag, "amd64", "cat /small.size").trim(),
        SMALL.to_string()
    );

    // 4. A fresh agent where a step misses after a hit: the hit's layer and
    //    the base layers come from the coordinator when the miss needs them.
    std::fs::write(ctx.path().join("small.bin"), noise(SMALL / 2, 4)).unwrap();
    let m4p = xb.root().join("m4.json");
    let fourth = build("a3", &m4p);
    let m4 = metadata(&m4p);
    assert_eq!(
        platform_meta(&m4, "linux/amd64")["worker"],
        "node amd1",
        "{}",
        fourth.stderr
    );
    assert_eq!(platform_meta(&m4, "linux/amd64")["cached"], 1);
    assert_eq!(
        buildah_run(
            &tag,
            "amd64",
            "wc -c < /big.bin; cat /small.size; cat /arch"
        )
        .split_whitespace()
        .collect::<Vec<_>>(),
        [
            BIG.to_string(),
            (SMALL / 2).to_string(),
            "x86_64".to_string()
        ]
    );
}

/// Pids whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(marker) {
                out.push(pid);
            }
        }
    }
    out
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn descends_from(mut pid: i32, ancestor: i32) -> bool {
    for _ in 0..64 {
        match parent_of(pid) {
            Some(p) if p == ancestor => return true,
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && parent_of(pid).is_some()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn an_agent_killed_mid_build_has_its_platform_rebuilt_here_and_the_push_succeeds() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let marker = format!("xbuild-kill-{}", std::process::id());
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("ARG BASE\nFROM $BASE\nRUN echo {marker} >/dev/null; sleep 4; uname -m > /arch\n"),
    )
    .unwrap();
    let agent_root = tempfile::tempdir().unwrap();
    let tag = reg.reference("remote/killed:1");
    let meta = xb.root().join("meta.json");
    let spec = format!("linux/amd64=amd1:{}", s(agent_root.path()));
    let mut child = xb
        .command()
        .args([
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            &tag,
            "--push",
            "--metadata-file",
            s(&meta),
            s(ctx.path()),
        ])
        .env("XBUILD_LOCAL_AGENT", &spec)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    let mut killed = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if killed.is_none() && line.contains("[linux/amd64 ") && line.contains("RUN echo") {
            // The RUN started on the agent: give it a moment, then kill it.
            std::thread::sleep(std::time::Duration::from_millis(700));
            let pid: i32 = std::fs::read_to_string(agent_root.path().join("agent.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let on_agent: Vec<i32> = processes_with(&marker)
                .into_iter()
                .filter(|p| descends_from(*p, pid))
                .collect();
            assert!(!on_agent.is_empty(), "the RUN runs under the agent");
            // SAFETY: kill(2) on the agent's pid.
            assert_eq!(unsafe { libc_kill(pid, 9) }, 0, "kill agent {pid}");
            std::thread::sleep(std::time::Duration::from_millis(500));
            let left: Vec<i32> = on_agent.into_iter().filter(|p| alive(*p)).collect();
            assert!(
                left.is_empty(),
                "the agent's build processes outlived it: {left:?}"
            );
            killed = Some(pid);
        }
        lines.push(line);
    }
    let status = child.wait().unwrap();
    let text = lines.join("\n");
    assert!(status.success(), "{text}");
    assert!(killed.is_some(), "the amd64 RUN never started:\n{text}");
    assert!(
        text.contains("connection lost")
            && text.contains("building linux/amd64 on this machine (local) instead"),
        "{text}"
    );
    let m = metadata(&meta);
    assert_eq!(platform_meta(&m, "linux/amd64")["worker"], "local");
    assert_eq!(platform_meta(&m, "linux/arm64")["worker"], "qemu");
    assert_eq!(index_platforms(&tag), ["linux/amd64", "linux/arm64"]);
    assert_eq!(buildah_run(&tag, "amd64", "cat /arch").trim(), "x86_64");
    assert!(!alive(killed.unwrap()));
}

#[test]
fn a_step_failing_on_the_agent_fails_the_build_with_the_dockerfile_line_and_is_not_rebuilt_here() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = xbuild_e2e::context(&[(
        "Dockerfile",
        "ARG BASE\nFROM $BASE\n\
         RUN --mount=type=secret,id=tok test \"$(tr 3 e < /run/secrets/tok)\" = secret && echo secret-ok\n\
         RUN echo oops >&2 && exit 3\n",
    )]);
    let agent_root = tempfile::tempdir().unwrap();
    let spec = format!("linux/amd64=amd1:{}", s(agent_root.path()));
    let tag = reg.reference("remote/failing:1");
    let run = xb
        .run_with(
            &[
                "build",
                "--progress",
                "plain",
                "--platform",
                "linux/amd64",
                "--build-arg",
                &format!("BASE={base}"),
                "--secret",
                "id=tok,env=TOK",
                "-t",
                &tag,
                "--push",
                s(ctx.path()),
            ],
            &[("XBUILD_LOCAL_AGENT", spec.as_str()), ("TOK", "s3cret")],
            None,
        )
        .failed();
    let err = &run.stderr;
    assert!(err.contains("Dockerfile:4\n"), "{err}");
    assert!(
        err.contains(">>>    4 | RUN echo oops >&2 && exit 3"),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: [linux/amd64 @ node amd1] ")
                && l.contains("Dockerfile:4: RUN echo oops >&2 && exit 3: process")
                && l.ends_with("exit code: 3 (on node amd1)")),
        "{err}"
    );
    // The secret reached the RUN on the agent, and never the output.
    assert!(err.lines().any(|l| l.ends_with(" secret-ok")), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    // The step's output streamed back from the agent.
    assert!(
        err.lines()
            .any(|l| l.starts_with('#') && l.ends_with(" oops")),
        "{err}"
    );
    assert!(
        !err.contains("instead"),
        "a build error is not rescheduled: {err}"
    );
    assert!(
        testbed::skopeo_inspect_raw(&tag).is_err(),
        "nothing is pushed for a failed build"
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
