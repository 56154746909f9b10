//! Node faults (issue #9 item 6, issue #6 item 6), with agents started as
//! local child processes (`XBUILD_LOCAL_AGENT`): an agent that hangs
//! (SIGSTOP, its pipe stays open) is given up on after the node timeout,
//! an agent whose disk is full (its state directory on a tiny tmpfs) and
//! an agent of an older protocol are each reported by name, the platform
//! is built on this machine instead, the push succeeds, and no process of
//! the node's agent is left behind.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{buildah_run, publish_base, s, Xbuild};

fn host_platform() -> String {
    format!("linux/{}", testbed::host_arch())
}

fn worker_of(meta: &Path, platform: &str) -> String {
    let m: Value = serde_json::from_slice(&std::fs::read(meta).expect("metadata file")).unwrap();
    m["xbuild.platforms"][platform]["worker"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Processes whose command line mentions `root` (the agent, and the
/// sandboxed build processes started from its state directory), waited
/// for up to `limit` to go away. Returns what is left.
fn leftovers(root: &Path, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let out = Command::new("pgrep")
            .args(["-a", "-f", s(root)])
            .output()
            .expect("pgrep");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.trim().is_empty() || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent_pid(root: &Path) -> i32 {
    std::fs::read_to_string(root.join("agent.pid"))
        .expect("agent.pid")
        .trim()
        .parse()
        .expect("a pid")
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|st| !st.contains(") Z "))
        .unwrap_or(false)
}

/// What [`stop_agent_mid_build`] saw.
struct Stopped {
    status: std::process::ExitStatus,
    text: String,
    pid: i32,
    gave_up: Option<Duration>,
    survived: bool,
}

/// Follows the build's progress; when the line with `marker` (the RUN on
/// the agent) shows, SIGSTOPs the agent whose pid is in `agent_root`.
fn stop_agent_mid_build(
    mut child: std::process::Child,
    agent_root: &Path,
    marker: &str,
) -> Stopped {
    let stderr = child.stderr.take().unwrap();
    let watchdog = watchdog(child.id() as i32, Duration::from_secs(120));
    let mut lines = Vec::new();
    let mut stopped: Option<(i32, Instant)> = None;
    let mut gave_up = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if stopped.is_none() && line.contains(marker) {
            // The RUN is on the agent: freeze the agent (its pipes stay open).
            let pid = agent_pid(agent_root);
            // SAFETY: kill(2) on the agent's pid.
            assert_eq!(unsafe { kill(pid, SIGSTOP) }, 0, "SIGSTOP agent {pid}");
            stopped = Some((pid, Instant::now()));
        }
        if gave_up.is_none() && line.contains("no sign of life") {
            gave_up = stopped.map(|(_, t)| t.elapsed());
        }
        lines.push(line);
    }
    let status = child.wait().unwrap();
    drop(watchdog);
    let text = lines.join("\n");
    let (pid, _) = stopped.unwrap_or_else(|| panic!("the RUN never started on the agent:\n{text}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let survived = alive(pid);
    if survived {
        // SAFETY: a leftover stopped agent must not outlive the test.
        unsafe { kill(pid, SIGKILL) };
    }
    Stopped {
        status,
        text,
        pid,
        gave_up,
        survived,
    }
}

/// Kills the build `pid` if it is still running after `limit`, so that a
/// coordinator that waits forever fails the test instead of hanging it.
/// Dropping the guard disarms it.
fn watchdog(pid: i32, limit: Duration) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("the build is still running after {limit:?}: killing it");
            // SAFETY: kill(2) on our own child, which has not been reaped.
            unsafe { kill(pid, SIGKILL) };
        }
    });
    tx
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
const SIGKILL: i32 = 9;
const SIGSTOP: i32 = 19;

/// The line of `output` that contains `needle` (printed, for the test log);
/// fails the test with the whole output when there is none.
fn warning_line<'a>(output: &'a str, needle: &str) -> &'a str {
    let line = output
        .lines()
        // The coordinator's warning, not the agent's own stderr line with
        // the same words (the two can arrive in either order).
        .find(|l| l.contains(needle) && !l.trim_start().starts_with("xbuild agent:"))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{output}"));
    eprintln!("{line}");
    line
}

#[test]
fn a_hung_agent_is_given_up_after_the_node_timeout_and_its_platform_built_here() {
    if testbed::require_root().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let platform = host_platform();
    let marker = format!("xbuild-hang-{}", std::process::id());
    let ctx = xbuild_e2e::context(&[(
        "Dockerfile",
        &format!("ARG BASE\nFROM $BASE\nRUN echo {marker}; sleep 3; uname -m > /arch\n"),
    )]);
    let agent_root = tempfile::tempdir().unwrap();
    let tag = reg.reference("faults/hung:1");
    let meta = xb.root().join("meta.json");
    let spec = format!("{platform}=amd1:{}", s(agent_root.path()));
    let started = Instant::now();
    let child = xb
        .command()
        .args([
            "build",
            "--progress",
            "plain",
            "--platform",
            &platform,
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
        .env("XBUILD_NODE_TIMEOUT", "5s")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Stopped {
        status,
        text,
        pid,
        gave_up,
        survived,
    } = stop_agent_mid_build(child, agent_root.path(), &marker);
    assert!(status.success(), "{text}");
    let warning = warning_line(&text, "no sign of life");
    assert!(
        warning.contains("node amd1 (")
            && warning.contains("no sign of life for 5s")
            && warning.contains(&format!(
                "building {platform} on this machine (local) instead"
            )),
        "{warning}"
    );
    let waited = gave_up.unwrap_or_else(|| panic!("the warning came after the stop:\n{text}"));
    eprintln!(
        "gave up on the stopped agent after {waited:?}; build took {:?}",
        started.elapsed()
    );
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(20),
        "the coordinator waited {waited:?} for a 5s node timeout"
    );
    assert_eq!(worker_of(&meta, &platform), "local");
    if testbed::require_cmd("buildah").is_some() {
        let arch = buildah_run(&tag, testbed::host_arch(), "cat /arch");
        assert!(!arch.trim().is_empty(), "the pushed image runs");
    }
    assert!(!survived, "the stopped agent {pid} was left behind");
    let left = leftovers(agent_root.path(), Duration::from_secs(10));
    assert!(left.trim().is_empty(), "left on the node: {left}");
}

/// Builds `ctx` for the host platform with an agent at `agent_root` and
/// extra environment, pushing to `tag`; returns the run and the worker the
/// metadata file names.
fn build_on_agent(
    xb: &Xbuild,
    base: &str,
    ctx: &Path,
    agent_root: &Path,
    tag: &str,
    env: &[(&str, &str)],
) -> (xbuild_e2e::Run, String) {
    let platform = host_platform();
    let meta = xb.root().join("meta.json");
    let _ = std::fs::remove_file(&meta);
    let spec = format!("{platform}=amd1:{}", s(agent_root));
    let mut all = vec![("XBUILD_LOCAL_AGENT", spec.as_str())];
    all.extend_from_slice(env);
    let run = xb.run_with(
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            &platform,
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            tag,
            "--push",
            "--metadata-file",
            s(&meta),
            s(ctx),
        ],
        &all,
        None,
    );
    let worker = if run.code == 0 {
        worker_of(&meta, &platform)
    } else {
        String::new()
    };
    (run, worker)
}

#[test]
fn an_agent_of_an_older_protocol_is_named_and_its_platform_built_here() {
    if testbed::require_root().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx =
        xbuild_e2e::context(&[("Dockerfile", "ARG BASE\nFROM $BASE\nRUN uname -m > /arch\n")]);
    let agent_root = tempfile::tempdir().unwrap();
    let tag = reg.reference("faults/old:1");
    let (run, worker) = build_on_agent(
        &xb,
        &base,
        ctx.path(),
        agent_root.path(),
        &tag,
        &[("XBUILD_TEST_AGENT_PROTOCOL", "1")],
    );
    let run = run.ok();
    let platform = host_platform();
    let version = env!("CARGO_PKG_VERSION");
    let warning = warning_line(&run.stderr, "protocol version mismatch");
    assert!(
        warning.contains("node amd1 (")
            && warning.contains(&format!(
                "this xbuild {version} speaks protocol {}",
                xbuild_remote::protocol::PROTOCOL_VERSION
            ))
            && warning.contains(&format!("(xbuild {version}) speaks protocol 1"))
            && warning.contains(&format!(
                "building {platform} on this machine (local) instead"
            )),
        "{warning}"
    );
    assert_eq!(worker, "local", "{}", run.stderr);
    assert!(testbed::skopeo_inspect_raw(&tag).is_ok(), "pushed");
    let left = leftovers(agent_root.path(), Duration::from_secs(10));
    assert!(left.trim().is_empty(), "left on the node: {left}");
}

/// A tmpfs of `size` mounted on a new directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                s(dir.path()),
            ])
            .status()
            .is_ok_and(|st| st.success());
        if !ok {
            testbed::skip("cannot mount a tmpfs (mount -t tmpfs failed)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily, so a process still holding it cannot keep it mounted.
        let _ = Command::new("umount")
            .args(["-l", s(self.dir.path())])
            .status();
    }
}

/// Deterministic bytes that do not compress.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

#[test]
fn a_node_with_a_full_disk_is_named_and_its_platform_built_here() {
    if testbed::require_root().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let Some(disk) = Tmpfs::mount("12m") else {
        return;
    };
    let agent_root = disk.path().join("agent");
    let platform = host_platform();

    // 1. A context file larger than the node's disk (COPY).
    const BIG: usize = 20 << 20;
    let ctx = xbuild_e2e::context(&[(
        "Dockerfile",
        "ARG BASE\nFROM $BASE\nCOPY big.bin /big.bin\nRUN wc -c < /big.bin > /big.size\n",
    )]);
    std::fs::write(ctx.path().join("big.bin"), noise(BIG)).unwrap();
    let tag = reg.reference("faults/full:1");
    let (run, worker) = build_on_agent(&xb, &base, ctx.path(), &agent_root, &tag, &[]);
    let run = run.ok();
    let warning = warning_line(&run.stderr, "no space left on device");
    assert!(
        warning.contains("node amd1 (")
            && warning.contains(s(&agent_root))
            && warning.contains(&format!(
                "building {platform} on this machine (local) instead"
            )),
        "{warning}"
    );
    assert_eq!(worker, "local", "{}", run.stderr);
    if testbed::require_cmd("buildah").is_some() {
        let size = buildah_run(&tag, testbed::host_arch(), "cat /big.size");
        assert_eq!(size.trim(), BIG.to_string());
    }
    let left = leftovers(&agent_root, Duration::from_secs(10));
    assert!(left.trim().is_empty(), "left on the node: {left}");

    // 2. A RUN that fills the node's disk.
    let ctx = xbuild_e2e::context(&[(
        "Dockerfile",
        "ARG BASE\nFROM $BASE\nRUN dd if=/dev/zero of=/fill bs=1048576 count=24 && wc -c < /fill > /fill.size\n",
    )]);
    let tag = reg.reference("faults/full:2");
    let (run, worker) = build_on_agent(&xb, &base, ctx.path(), &agent_root, &tag, &[]);
    let run = run.ok();
    let warning = warning_line(&run.stderr, "no space left on device");
    assert!(
        warning.contains("node amd1 (")
            && warning.contains(&format!(
                "building {platform} on this machine (local) instead"
            )),
        "{warning}"
    );
    assert_eq!(worker, "local", "{}", run.stderr);
    if testbed::require_cmd("buildah").is_some() {
        let size = buildah_run(&tag, testbed::host_arch(), "cat /fill.size");
        assert_eq!(size.trim(), (24 << 20).to_string());
    }
    let left = leftovers(&agent_root, Duration::from_secs(10));
    assert!(left.trim().is_empty(), "left on the node: {left}");
    drop(disk);
}

#[test]
fn a_hung_agent_behind_a_live_sshd_is_given_up_and_killed_through_the_connection() {
    if testbed::require_root().is_none() {
        return;
    }
    let Some(sshd) = testbed::Sshd::start_or_skip("127.0.0.2") else {
        return;
    };
    if testbed::host_arch() != "amd64" {
        testbed::skip("the node is an amd64 node: the host must be amd64");
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("HOME", s(home.path())),
        ("SSH_AUTH_SOCK", ""),
        ("XBUILD_NODE_TIMEOUT", "5s"),
    ];
    let base = publish_base(&xb, &reg);
    sshd.write_known_hosts(&home.path().join(".ssh/known_hosts"))
        .unwrap();
    let agent_root = home.path().join("amd1");
    let agent = format!(
        "{} agent --stdio --root {}",
        xbuild_e2e::xbuild_bin().display(),
        agent_root.display()
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
    let marker = format!("xbuild-ssh-hang-{}", std::process::id());
    let ctx = xbuild_e2e::context(&[(
        "Dockerfile",
        &format!("ARG BASE\nFROM $BASE\nRUN echo {marker}; sleep 3; uname -m > /arch\n"),
    )]);
    let tag = reg.reference("faults/ssh-hung:1");
    let meta = xb.root().join("meta.json");
    let child = xb
        .command()
        .args([
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            &tag,
            "--push",
            "--metadata-file",
            s(&meta),
            s(ctx.path()),
        ])
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Stopped {
        status,
        text,
        pid,
        gave_up,
        survived,
    } = stop_agent_mid_build(child, &agent_root, &marker);
    assert!(status.success(), "{text}");
    assert!(text.contains("linux/amd64 → node amd1"), "{text}");
    let warning = warning_line(&text, "no sign of life");
    assert!(
        warning.contains("node amd1 (ssh://")
            && warning.contains("no sign of life for 5s")
            && warning.contains("building linux/amd64 on this machine (local) instead"),
        "{warning}"
    );
    let waited = gave_up.unwrap_or_else(|| panic!("the warning came after the stop:\n{text}"));
    eprintln!("gave up on the stopped agent behind sshd after {waited:?}");
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(20),
        "the coordinator waited {waited:?} for a 5s node timeout"
    );
    assert_eq!(worker_of(&meta, "linux/amd64"), "local");
    assert!(
        !survived,
        "the stopped agent {pid} was left behind on the node"
    );
    let left = leftovers(&agent_root, Duration::from_secs(10));
    assert!(left.trim().is_empty(), "left on the node: {left}");
}
