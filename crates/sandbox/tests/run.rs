//! Runs real processes in a busybox root filesystem. Needs root and
//! busybox-static; skipped (with the reason printed) otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{run, run_with, sh, spec, RemoveOnDrop};
use xbuild_sandbox::{
    Executor, InitError, MountKind, MountSpec, NetworkMode, OutputStream, Rlimit, SandboxError,
    UserError,
};

/// The init's error of a run that must have failed in setup.
fn setup_error(out: common::Output) -> InitError {
    match out.result {
        Err(SandboxError::Setup(e)) => *e,
        other => panic!("expected a setup error, got {other:?}"),
    }
}

#[test]
fn echo_streams_stdout_and_stderr() {
    let root = rootfs_or_skip!("echo");
    let out = run(&root, &spec(&["echo", "hello"]));
    assert_eq!(out.ok().exit_code, 0);
    assert!(out.ok().success());
    assert_eq!(out.stdout, "hello\n");
    let out = run(&root, &sh("echo out; echo err >&2"));
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("out\n", "err\n")
    );
    root.assert_no_mounts();
}

#[test]
fn output_arrives_while_the_process_runs() {
    let root = rootfs_or_skip!("stream");
    let started = Instant::now();
    let mut first_chunk_at = None;
    let exec = common::executor();
    let result = exec
        .run(
            &root.dir,
            &sh("echo first; sleep 1; echo second"),
            &mut |stream, _| {
                if stream == OutputStream::Stdout && first_chunk_at.is_none() {
                    first_chunk_at = Some(started.elapsed());
                }
            },
        )
        .unwrap();
    assert_eq!(result.exit_code, 0);
    assert!(result.duration >= Duration::from_secs(1));
    assert!(first_chunk_at.unwrap() < result.duration - Duration::from_millis(500));
}

#[test]
fn exit_code_is_reported() {
    let root = rootfs_or_skip!("exit");
    let r = run(&root, &sh("exit 3")).ok().clone();
    assert_eq!((r.exit_code, r.signal), (3, None));
    assert!(!r.success());
}

#[test]
fn the_command_is_pid_1_of_a_new_pid_namespace() {
    let root = rootfs_or_skip!("pid");
    let out = run(&root, &sh("echo $$; ls /proc | grep -c '^[0-9]'"));
    // Only the shell and the `ls` it runs (maybe grep) exist in there.
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("1"));
    let procs: u32 = lines.next().unwrap().parse().unwrap();
    assert!(procs <= 3, "{}", out.stdout);
}

#[test]
fn hostname_is_set_and_mounted() {
    let root = rootfs_or_skip!("hostname");
    let mut s = sh("hostname; cat /etc/hostname");
    s.hostname = "xbuild-box".to_string();
    let out = run(&root, &s);
    assert_eq!(out.stdout, "xbuild-box\nxbuild-box\n");
    assert!(out
        .ok()
        .created_mountpoints
        .contains(&PathBuf::from("etc/hostname")));
    // The host's name did not change.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "xbuild-box"
    );
}

#[test]
fn user_app_gets_its_ids_groups_and_home() {
    let root = rootfs_or_skip!("user");
    let mut s = sh("id -u; id -g; id -G; echo $HOME");
    s.user = "app".to_string();
    let out = run(&root, &s);
    assert_eq!(
        out.stdout, "1000\n1000\n1000 50\n/home/app\n",
        "{}",
        out.stderr
    );

    s.user = "1000:staff".to_string();
    assert_eq!(run(&root, &s).stdout, "1000\n50\n50\n/home/app\n");
    s.user = "4242".to_string();
    assert_eq!(run(&root, &s).stdout, "4242\n0\n0\n/\n");
    s.user = String::new();
    assert_eq!(run(&root, &s).stdout, "0\n0\n0\n/root\n");
}

#[test]
fn rlimits_are_set_on_the_process_for_root_and_another_user() {
    let root = rootfs_or_skip!("rlimits");
    let mut s = sh("ulimit -n; ulimit -Hn; ulimit -u; ulimit -Hu; ulimit -c");
    s.rlimits = vec![
        Rlimit {
            name: "nofile".into(),
            soft: Some(1024),
            hard: Some(2048),
        },
        Rlimit {
            name: "nproc".into(),
            soft: Some(512),
            hard: Some(512),
        },
        Rlimit {
            name: "core".into(),
            soft: None,
            hard: None,
        },
    ];
    let out = run(&root, &s);
    assert_eq!(
        out.stdout, "1024\n2048\n512\n512\nunlimited\n",
        "{}",
        out.stderr
    );
    s.user = "app".to_string();
    let out = run(&root, &s);
    assert_eq!(
        out.stdout, "1024\n2048\n512\n512\nunlimited\n",
        "{}",
        out.stderr
    );
    root.assert_no_mounts();
}

#[test]
fn an_rlimit_the_kernel_refuses_is_a_setup_error_naming_it() {
    let root = rootfs_or_skip!("rlimit-refused");
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut s = spec(&["true"]);
    s.rlimits = vec![Rlimit {
        name: "nofile".into(),
        soft: Some(1024),
        hard: Some(nr_open + 1),
    }];
    let err = setup_error(run(&root, &s));
    let text = err.to_string();
    assert!(matches!(err, InitError::Rlimit { .. }), "{err:?}");
    assert!(
        text.starts_with(&format!("ulimit nofile=1024:{}: setrlimit: ", nr_open + 1)),
        "{text}"
    );
    assert!(text.contains(&format!("fs.nr_open, {nr_open}")), "{text}");
    root.assert_no_mounts();
}

#[test]
fn unknown_user_is_a_setup_error_naming_the_file() {
    let root = rootfs_or_skip!("nouser");
    let mut s = spec(&["true"]);
    s.user = "nobody".to_string();
    let out = run(&root, &s);
    match setup_error(out) {
        InitError::User(UserError::UserNotFound { user, path }) => {
            assert_eq!((user.as_str(), path.as_str()), ("nobody", "/etc/passwd"));
        }
        other => panic!("unexpected {other:?}"),
    }
    root.assert_no_mounts();
}

#[test]
fn proc_dev_and_sys_work() {
    let root = rootfs_or_skip!("procdev");
    let out = run(
        &root,
        &sh(
            "ls /proc/self >/dev/null && echo x > /dev/null && cat /dev/null \
             && head -c 4 /dev/urandom | wc -c && test -c /dev/zero && readlink /dev/ptmx \
             && test -d /dev/pts && test -d /dev/shm && readlink /dev/stdout \
             && ls /sys/kernel >/dev/null && echo ok",
        ),
    );
    assert_eq!(
        out.stdout, "4\npts/ptmx\n/proc/self/fd/1\nok\n",
        "{}",
        out.stderr
    );
    let created = &out.ok().created_mountpoints;
    for p in ["proc", "dev", "sys"] {
        assert!(created.contains(&PathBuf::from(p)), "{created:?}");
    }
    // /sys is read-only.
    assert_ne!(run(&root, &sh("touch /sys/x")).ok().exit_code, 0);
}

#[test]
fn etc_hosts_and_resolv_conf_come_from_the_caller() {
    let root = rootfs_or_skip!("hosts");
    let hosts = RemoveOnDrop(root.dir.with_extension("hosts"));
    std::fs::write(&hosts.0, "127.0.0.1 localhost buildhost\n").unwrap();
    let resolv = RemoveOnDrop(root.dir.with_extension("resolv"));
    std::fs::write(&resolv.0, "nameserver 127.0.0.53\n").unwrap();
    std::fs::write(root.dir.join("etc/resolv.conf"), "image's own\n").unwrap();

    let mut s = sh("cat /etc/hosts /etc/resolv.conf; echo x >> /etc/hosts || echo read-only");
    s.etc_hosts = Some(hosts.0.clone());
    s.resolv_conf = Some(resolv.0.clone());
    let out = run(&root, &s);
    assert_eq!(
        out.stdout,
        "127.0.0.1 localhost buildhost\nnameserver 127.0.0.53\nread-only\n"
    );
    let created = &out.ok().created_mountpoints;
    assert!(created.contains(&PathBuf::from("etc/hosts")), "{created:?}");
    assert!(
        !created.contains(&PathBuf::from("etc/resolv.conf")),
        "{created:?}"
    );
    // The created mount point is an empty file the engine will drop; the
    // image's own file is untouched.
    assert_eq!(std::fs::read(root.dir.join("etc/hosts")).unwrap(), b"");
    assert_eq!(
        std::fs::read_to_string(root.dir.join("etc/resolv.conf")).unwrap(),
        "image's own\n"
    );
    root.assert_no_mounts();
}

#[test]
fn network_none_has_only_loopback_up() {
    let root = rootfs_or_skip!("netnone");
    let mut s = sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; cat /sys/class/net/lo/operstate 2>/dev/null; ip link show lo | grep -c UP");
    s.network = NetworkMode::None;
    let out = run(&root, &s);
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("lo"), "{}", out.stdout);
    assert_eq!(
        out.stdout.lines().last(),
        Some("1"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );

    // The host network is shared by default.
    let host_ifaces = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .count();
    let out = run(&root, &sh("cat /proc/net/dev | wc -l"));
    assert_eq!(out.stdout.trim(), host_ifaces.to_string());
}

#[test]
fn missing_cwd_is_created_owned_by_the_user() {
    let root = rootfs_or_skip!("cwd");
    let mut s = sh("pwd; stat -c %u:%g . ; touch file");
    s.cwd = "/work/app".to_string();
    s.user = "app".to_string();
    let out = run(&root, &s);
    assert_eq!(out.stdout, "/work/app\n1000:1000\n", "{}", out.stderr);
    let meta = std::fs::metadata(root.dir.join("work/app/file")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1000);
    // The working directory is content, not a mount point.
    assert!(!out
        .ok()
        .created_mountpoints
        .contains(&PathBuf::from("work/app")));
}

#[test]
fn a_kill_from_outside_is_reported_as_a_signal() {
    let root = rootfs_or_skip!("signal");
    let marker = format!("{}", 3_000_000 + std::process::id());
    let mut killed = false;
    let exec = common::executor();
    let s = sh(&format!("echo ready; exec sleep {marker}"));
    let result = exec
        .run(&root.dir, &s, &mut |_, bytes| {
            if bytes.starts_with(b"ready") && !killed {
                killed = kill_host_process(&["sleep", &marker], libc::SIGKILL);
            }
        })
        .unwrap();
    assert!(killed, "did not find the sandboxed sleep");
    assert_eq!(
        (result.signal, result.exit_code),
        (Some(libc::SIGKILL), 137)
    );
    root.assert_no_mounts();
}

#[test]
fn pid_1_ignores_its_own_sigkill_as_in_docker() {
    // The kernel drops signals that a PID namespace's init sends itself when
    // it has no handler, SIGKILL included: `kill -9 $$` is a no-op for PID 1.
    // A process killed by a signal below PID 1 is reported by the shell.
    let root = rootfs_or_skip!("selfkill");
    let out = run(
        &root,
        &sh("kill -9 $$; echo alive; sh -c 'kill -9 $$'; echo $?"),
    );
    assert_eq!(out.stdout, "alive\n137\n");
    assert_eq!(out.ok().signal, None);
}

/// Finds the host process whose command line is `argv` and signals it.
fn kill_host_process(argv: &[&str], sig: i32) -> bool {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if std::fs::read(entry.path().join("cmdline")).ok().as_deref() == Some(&want[..]) {
                // SAFETY: kill has no memory preconditions.
                return unsafe { libc::kill(pid, sig) } == 0;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_missing_binary_is_named() {
    let root = rootfs_or_skip!("missing");
    let out = run(&root, &spec(&["no-such-tool", "--flag"]));
    let err = out.result.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("executable file not found"), "{text}");
    assert!(text.contains("no-such-tool"), "{text}");
    match err.setup_error() {
        Some(InitError::ExecutableNotFound { name, path }) => {
            assert_eq!(name, "no-such-tool");
            assert_eq!(path, "/usr/local/bin:/usr/bin:/bin");
        }
        other => panic!("unexpected {other:?}"),
    }
    let out = run(&root, &spec(&["/bin/absent"]));
    match setup_error(out) {
        InitError::Exec { path, errno, .. } => {
            assert_eq!((path.as_str(), errno), ("/bin/absent", libc::ENOENT));
        }
        other => panic!("unexpected {other:?}"),
    }
    root.assert_no_mounts();
}

#[test]
fn a_foreign_file_is_an_exec_format_error() {
    let root = rootfs_or_skip!("enoexec");
    let path = root.dir.join("bin/notelf");
    std::fs::write(&path, b"\x00\x01\x02garbage").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = run(&root, &spec(&["notelf"]));
    match setup_error(out) {
        e @ InitError::ExecFormat { .. } => {
            assert_eq!(e.to_string(), "exec /bin/notelf: exec format error");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn the_host_root_is_not_visible() {
    let root = rootfs_or_skip!("outside");
    let marker = RemoveOnDrop(PathBuf::from(format!(
        "/outside-marker-{}",
        std::process::id()
    )));
    std::fs::write(&marker.0, "host").unwrap();
    let script = format!(
        "test -e {} && echo visible || echo hidden",
        marker.0.display()
    );
    let out = run(&root, &sh(&script));
    assert_eq!(out.stdout, "hidden\n");
    // The old root is unmounted: no host mount is listed inside.
    let out = run(&root, &sh("cat /proc/self/mountinfo"));
    assert!(!out.stdout.contains(" /work"), "{}", out.stdout);
    assert!(!out.stdout.contains("/mnt/sandboxing"), "{}", out.stdout);
}

#[test]
fn chroot_mode_works_too() {
    let root = rootfs_or_skip!("chroot");
    let exec = common::executor().with_chroot(true);
    let marker = RemoveOnDrop(PathBuf::from(format!(
        "/outside-chroot-{}",
        std::process::id()
    )));
    std::fs::write(&marker.0, "host").unwrap();
    let s = sh(&format!(
        "echo $$; test -e {} && echo visible || echo hidden",
        marker.0.display()
    ));
    let out = run_with(&exec, &root, &s);
    assert_eq!(out.stdout, "1\nhidden\n", "{}", out.stderr);
    root.assert_no_mounts();
}

#[test]
fn extra_mounts_bind_and_tmpfs() {
    let root = rootfs_or_skip!("mounts");
    let ro = root.dir.with_extension("ro");
    let rw = root.dir.with_extension("rw");
    let _cleanup = DirsOnDrop(vec![ro.clone(), rw.clone()]);
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("input"), "in\n").unwrap();
    let secret = RemoveOnDrop(root.dir.with_extension("secret"));
    std::fs::write(&secret.0, "s3cr3t").unwrap();

    let mut s = sh(
        "cat /src/input; touch /src/x 2>/dev/null || echo ro; echo out > /cache/out; \
                    echo t > /scratch/t; cat /run/secrets/token; echo; stat -c %a /scratch",
    );
    s.mounts = vec![
        // Deliberately children first: the sandbox orders them.
        MountSpec {
            kind: MountKind::Bind {
                source: secret.0.clone(),
                readonly: true,
            },
            target: "/run/secrets/token".to_string(),
        },
        MountSpec {
            kind: MountKind::Bind {
                source: ro.clone(),
                readonly: true,
            },
            target: "/src".into(),
        },
        MountSpec {
            kind: MountKind::Bind {
                source: rw.clone(),
                readonly: false,
            },
            target: "/cache".into(),
        },
        MountSpec {
            kind: MountKind::Tmpfs {
                size: Some(1 << 20),
            },
            target: "/scratch".into(),
        },
    ];
    let out = run(&root, &s);
    assert_eq!(out.stdout, "in\nro\ns3cr3t\n1777\n", "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(rw.join("out")).unwrap(), "out\n");
    assert!(!root.dir.join("scratch/t").exists());
    let created = &out.ok().created_mountpoints;
    for p in [
        "src",
        "cache",
        "scratch",
        "run",
        "run/secrets",
        "run/secrets/token",
    ] {
        assert!(
            created.contains(&PathBuf::from(p)),
            "{p} not in {created:?}"
        );
    }
    let run_pos = created.iter().position(|p| p == Path::new("run")).unwrap();
    let token_pos = created
        .iter()
        .position(|p| p == Path::new("run/secrets/token"))
        .unwrap();
    assert!(run_pos < token_pos);
    root.assert_no_mounts();
}

struct DirsOnDrop(Vec<PathBuf>);

impl Drop for DirsOnDrop {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn mount_targets_cannot_escape_through_symlinks() {
    let root = rootfs_or_skip!("escape");
    // A hostile image: /etc/hosts points at a host path.
    let host_target = PathBuf::from(format!("/tmp/xbuild-escape-{}", std::process::id()));
    let _guard = RemoveOnDrop(host_target.clone());
    std::os::unix::fs::symlink(&host_target, root.dir.join("etc/hosts")).unwrap();
    let hosts = RemoveOnDrop(root.dir.with_extension("hosts"));
    std::fs::write(&hosts.0, "10.0.0.1 x\n").unwrap();
    let mut s = sh("cat /etc/hosts");
    s.etc_hosts = Some(hosts.0.clone());
    let out = run(&root, &s);
    assert_eq!(out.stdout, "10.0.0.1 x\n");
    assert!(!host_target.exists(), "mount point created on the host");
    let inside = root.dir.join(host_target.strip_prefix("/").unwrap());
    assert!(inside.exists());
    assert!(out
        .ok()
        .created_mountpoints
        .contains(&host_target.strip_prefix("/").unwrap().to_path_buf()));
    root.assert_no_mounts();
}

#[test]
fn environment_is_exactly_the_spec_plus_defaults() {
    let root = rootfs_or_skip!("env");
    let mut s = spec(&["env"]);
    s.env = vec!["FOO=bar baz".to_string()];
    let out = run(&root, &s);
    let mut vars: Vec<&str> = out.stdout.lines().collect();
    vars.sort();
    assert_eq!(
        vars,
        [
            "FOO=bar baz",
            "HOME=/root",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    );
}

#[test]
fn stdin_fds_signals_and_umask_are_clean() {
    let root = rootfs_or_skip!("clean");
    let out = run(
        &root,
        &sh("cat; ls /proc/self/fd | tr '\\n' ' '; echo; grep -E 'SigIgn|SigBlk' /proc/self/status; umask"),
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    // 0-2 and the directory `ls` is reading.
    assert_eq!(lines[0].split_whitespace().count(), 4, "{}", out.stdout);
    assert!(lines[1].ends_with("0000000000000000"), "{}", out.stdout);
    assert!(lines[2].ends_with("0000000000000000"), "{}", out.stdout);
    assert_eq!(lines[3], "0022");
}

#[test]
fn parallel_runs_do_not_interfere() {
    let root = rootfs_or_skip!("parallel");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let root = &root;
                scope.spawn(move || {
                    let mut s = sh("hostname; echo $$");
                    s.hostname = format!("box{i}");
                    let out = run(root, &s);
                    out.ok();
                    out.stdout
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), format!("box{i}\n1\n"));
        }
    });
    root.assert_no_mounts();
}

#[test]
fn invalid_specs_are_rejected_before_spawning() {
    let root = rootfs_or_skip!("invalid");
    let out = run(&root, &spec(&[]));
    assert!(matches!(out.result, Err(SandboxError::InvalidSpec(_))));
    let mut s = spec(&["true"]);
    s.mounts = vec![MountSpec {
        kind: MountKind::Tmpfs { size: None },
        target: "relative".into(),
    }];
    assert!(matches!(
        run(&root, &s).result,
        Err(SandboxError::InvalidSpec(_))
    ));
    let exec = xbuild_sandbox::LinuxExecutor::new("/nonexistent/init", Vec::new());
    let out = run_with(&exec, &root, &spec(&["true"]));
    assert!(
        matches!(out.result, Err(SandboxError::Spawn { .. })),
        "{:?}",
        out.result
    );
}

#[test]
fn an_overlayfs_merged_dir_works_as_root() {
    let lower = rootfs_or_skip!("lower");
    // upper, work and merged live under `lower`'s sibling so its Drop
    // unmounts and removes them.
    let base = common::TestRoot::new("overlay");
    std::fs::remove_dir_all(&base.dir).unwrap();
    let (upper, work, merged) = (
        base.dir.join("upper"),
        base.dir.join("work"),
        base.dir.join("merged"),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.dir.display(),
        upper.display(),
        work.display()
    );
    let status = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .status()
        .unwrap();
    if !status.success() {
        eprintln!("SKIPPED: cannot mount overlayfs here");
        return;
    }
    let mut s = sh("echo layer > /new-file; rm /bin/ls; cat /etc/hosts");
    let hosts = RemoveOnDrop(base.dir.with_extension("hosts"));
    std::fs::write(&hosts.0, "127.0.0.1 localhost\n").unwrap();
    s.etc_hosts = Some(hosts.0.clone());
    let out = run(&merged, &s);
    assert_eq!(out.stdout, "127.0.0.1 localhost\n", "{}", out.stderr);
    // The process's changes land in the upper dir, with the mount points
    // the engine has to drop.
    assert_eq!(
        std::fs::read_to_string(upper.join("new-file")).unwrap(),
        "layer\n"
    );
    assert!(lower.dir.join("bin/ls").exists());
    let created = &out.ok().created_mountpoints;
    for p in ["proc", "dev", "sys", "etc/hosts"] {
        assert!(upper.join(p).exists(), "{p}");
        assert!(
            created.contains(&PathBuf::from(p)),
            "{p} not in {created:?}"
        );
    }
    // Only the overlay itself is mounted under the test directories.
    assert_eq!(base.mounts_below(), vec![merged.display().to_string()]);
    let status = std::process::Command::new("umount")
        .arg(&merged)
        .status()
        .unwrap();
    assert!(status.success());
    base.assert_no_mounts();
}
