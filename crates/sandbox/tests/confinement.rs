//! Docker's default confinement of a sandboxed process: capabilities,
//! no_new_privs, seccomp, nodev, masked and read-only /proc, the pasta
//! network, and bind sources resolved inside their roots. Needs root and
//! busybox-static; the network case needs pasta (skipped, with the reason
//! printed, where a facility is missing).

mod common;

use std::io::Read;
use std::net::TcpListener;

use common::{run, sh};
use xbuild_sandbox::{Confine, InitError, MountKind, MountSpec, NetworkMode, SandboxError};

fn status_field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} missing in {text}"))
        .trim()
        .to_string()
}

#[test]
fn root_gets_docker_default_capabilities_seccomp_and_no_new_privs() {
    let root = rootfs_or_skip!("caps");
    let out = run(&root, &sh("cat /proc/self/status"));
    let st = &out.stdout;
    assert_eq!(out.ok().exit_code, 0, "{}", out.stderr);
    for key in ["CapBnd", "CapPrm", "CapEff", "CapInh"] {
        assert_eq!(status_field(st, key), "00000000a80425fb", "{key}");
    }
    assert_eq!(status_field(st, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(st, "NoNewPrivs"), "1");
    assert_eq!(status_field(st, "Seccomp"), "2");

    // Another user keeps the bounding set only, as in Docker.
    let mut s = sh("cat /proc/self/status; id -u");
    s.user = "app".to_string();
    let out = run(&root, &s);
    assert_eq!(status_field(&out.stdout, "CapBnd"), "00000000a80425fb");
    for key in ["CapPrm", "CapEff", "CapInh", "CapAmb"] {
        assert_eq!(status_field(&out.stdout, key), "0000000000000000", "{key}");
    }
    assert!(out.stdout.ends_with("1000\n"), "{}", out.stdout);
}

#[test]
fn insecure_gets_every_capability_and_no_filter() {
    let root = rootfs_or_skip!("insecure");
    let mut s = sh("cat /proc/self/status");
    s.insecure = true;
    let out = run(&root, &s);
    out.ok();
    let host = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(
        status_field(&out.stdout, "CapEff"),
        status_field(&host, "CapBnd")
    );
    assert_eq!(status_field(&out.stdout, "Seccomp"), "0");
    assert_eq!(status_field(&out.stdout, "NoNewPrivs"), "0");
}

#[test]
fn the_kernel_and_namespace_syscalls_are_refused() {
    let root = rootfs_or_skip!("syscalls");
    // Each line must fail inside the step; `|| echo` records it.
    let script = "\
        mount -t proc proc /mnt 2>/dev/null || echo mount-proc-refused; \
        mount -o remount,rw /sys 2>/dev/null || echo remount-sys-refused; \
        unshare -n true 2>/dev/null || echo unshare-refused; \
        echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null || echo proc-sys-readonly; \
        echo b > /proc/sysrq-trigger 2>/dev/null || echo sysrq-readonly; \
        test -s /proc/kcore && echo kcore-visible || echo kcore-masked; \
        head -c 1 /proc/kcore | wc -c; \
        ls /proc/scsi 2>/dev/null | wc -l; \
        touch /sys/x 2>/dev/null || echo sys-readonly; \
        mknod /root/blk b 7 0 && echo mknod-ok; \
        head -c 1 /root/blk 2>/dev/null || echo open-node-refused; \
        mknod /dev/x c 1 3 && (echo hi > /dev/x) 2>/dev/null || echo dev-nodev; \
        echo data > /dev/null && echo dev-null-works";
    let mut s = sh(script);
    s.mounts.push(MountSpec {
        kind: MountKind::Tmpfs { size: None },
        target: "/mnt".to_string(),
    });
    let out = run(&root, &s);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "mount-proc-refused",
            "remount-sys-refused",
            "unshare-refused",
            "proc-sys-readonly",
            "sysrq-readonly",
            "kcore-masked",
            "0",
            "0",
            "sys-readonly",
            "mknod-ok",
            "open-node-refused",
            "dev-nodev",
            "dev-null-works",
        ],
        "{}",
        out.stderr
    );
}

#[test]
fn isolated_network_has_a_route_out_but_not_the_hosts_loopback() {
    let root = rootfs_or_skip!("pasta");
    if xbuild_sandbox::netns::find_pasta().is_none() {
        eprintln!("SKIPPED: pasta is not installed (apt-get install passt)");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut s = sh(&format!(
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | grep -vc '^lo$'; \
         ip route | grep -c '^default'; \
         nc -w 3 127.0.0.1 {port} </dev/null && echo reached || echo refused"
    ));
    s.network = NetworkMode::Isolated;
    let out = run(&root, &s);
    out.ok();
    assert_eq!(out.stdout, "1\n1\nrefused\n", "{}", out.stderr);
    let mut buf = [0u8; 1];
    match listener.accept() {
        Ok((mut c, _)) => panic!("the step reached the host: {:?}", c.read(&mut buf)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
}

// BuildKit testCacheMountSourceEscape, at the sandbox level: a source that
// is a symlink out of its root is refused, naming the mount.
#[test]
fn bind_sources_cannot_leave_their_root() {
    let root = rootfs_or_skip!("bindin");
    let cache = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc", cache.path().join("sel")).unwrap();
    std::fs::create_dir(cache.path().join("ok")).unwrap();
    std::fs::write(cache.path().join("ok/f"), "inside\n").unwrap();
    let mount = |path: &str, confine| MountSpec {
        kind: MountKind::BindIn {
            root: cache.path().to_path_buf(),
            path: path.to_string(),
            confine,
            readonly: true,
        },
        target: "/victim".to_string(),
    };
    let mut s = sh("cat /victim/hostname /victim/f");
    s.mounts.push(mount("sel", Confine::Beneath));
    let out = run(&root, &s);
    match out.result {
        Err(SandboxError::Setup(e)) => match *e {
            InitError::MountSource { ref target, .. } => {
                assert_eq!(target, "/victim");
                assert!(e.to_string().contains("symlink"), "{e}");
            }
            other => panic!("unexpected error {other:?}"),
        },
        other => panic!("the escape was not refused: {other:?} {}", out.stdout),
    }
    // In-root resolution clamps the link to the root: no /etc there.
    s.mounts = vec![mount("sel", Confine::InRoot)];
    assert!(run(&root, &s).result.is_err());
    s.mounts = vec![mount("ok", Confine::Beneath)];
    let out = run(&root, &s);
    assert_eq!(out.stdout, "inside\n", "{}", out.stderr);
}

/// Per-step cost of the network modes, for docs/benchmarks.md: runs
/// `true` 30 times in each mode, interleaved (so load changes hit every
/// mode alike), and prints the median and mean wall time of a run.
/// `cargo nextest run -p xbuild-sandbox --run-ignored only network_mode_cost --no-capture`
#[test]
#[ignore = "a measurement, not a check"]
fn network_mode_cost() {
    let root = rootfs_or_skip!("cost");
    if xbuild_sandbox::netns::find_pasta().is_none() {
        eprintln!("SKIPPED: pasta is not installed");
        return;
    }
    let modes = [NetworkMode::Host, NetworkMode::None, NetworkMode::Isolated];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..30 {
        for (i, mode) in modes.iter().enumerate() {
            let mut s = common::spec(&["true"]);
            s.network = *mode;
            let t = std::time::Instant::now();
            run(&root, &s).ok();
            times[i].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    for (mode, t) in modes.iter().zip(&mut times) {
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mean = t.iter().sum::<f64>() / t.len() as f64;
        println!(
            "{mode:?}: median {:.1} ms, mean {mean:.1} ms, min {:.1} ms",
            t[t.len() / 2],
            t[0]
        );
    }
}

/// On a host without a default route there is nowhere to go: the default
/// network gives the step a namespace with only `lo` instead of failing.
/// (nextest runs each test in its own process, so this test may move its
/// process to a fresh network namespace first.)
#[test]
fn isolated_network_without_a_default_route_keeps_only_loopback() {
    let root = rootfs_or_skip!("noroute");
    let Some(_) = xbuild_sandbox::netns::find_pasta() else {
        eprintln!("SKIPPED: pasta is not installed");
        return;
    };
    // SAFETY: unshare with a constant flag; this test process is ours.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("SKIPPED: cannot make a network namespace");
        return;
    }
    let mut s = sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ip route | wc -l");
    s.network = NetworkMode::Isolated;
    let out = run(&root, &s);
    out.ok();
    assert_eq!(out.stdout, "lo\n0\n", "{}", out.stderr);
}
