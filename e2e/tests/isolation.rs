//! RUN isolation (issue #15): hostile RUN steps, as an attacker would write
//! them, through the real binary — natively on amd64, on arm64 under QEMU
//! and on an SSH node. Each attack runs inside a step that records whether
//! it worked (`OPEN`) or failed (`blocked`) into `/out`, the image is
//! exported with `-o type=local`, and the test checks both the verdicts and,
//! from the host, that nothing changed: a canary directory, a sysctl, a
//! host process, a TCP server on 127.0.0.1, binfmt_misc.
//!
//! The same suite with `--allow security.insecure` and
//! `RUN --security=insecure` (plus `--allow network.host` and
//! `RUN --network=host` for the loopback server) shows that the permission
//! is what opens each door; without `--allow` such a Dockerfile is refused.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use xbuild_e2e::testbed::{self, Registry, Sshd};
use xbuild_e2e::{context, publish_base, require_multiplatform, s, xbuild_bin, Run, Xbuild};

const CANARY_TEXT: &str = "isolation canary: must stay as it is\n";
const SYSCTL: &str = "/proc/sys/kernel/printk_ratelimit_burst";

/// The things on the host the attacks aim at, and the checks that they
/// were left alone.
struct Host {
    canary: tempfile::TempDir,
    sleeper: Child,
    /// Connections the server on 127.0.0.1 accepted (and closed at once).
    accepted: Arc<AtomicUsize>,
    port: u16,
    sysctl: String,
    /// `major:minor` of the block device holding the canary, and the
    /// canary directory's path inside that filesystem.
    disk: Option<(u32, u32, String)>,
    /// Whether the host itself may open that block device (a VM's device
    /// policy can forbid it even to root; then no mode of a step can).
    disk_openable: bool,
    /// A masked /proc file that exists on this kernel.
    masked: &'static str,
    binfmt_name: String,
}

impl Host {
    fn new() -> Host {
        let canary = tempfile::Builder::new()
            .prefix("xb-iso-canary-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::write(canary.path().join("canary.txt"), CANARY_TEXT).unwrap();
        let sleeper = Command::new("sleep").arg("3600").spawn().unwrap();
        let listener = TcpListener::bind(("127.0.0.1", testbed::free_port())).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        // Accepts and closes every connection; the thread ends with the
        // test process (the listener lives only as long as the test).
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        let masked = [
            "/proc/kcore",
            "/proc/timer_list",
            "/proc/keys",
            "/proc/interrupts",
        ]
        .into_iter()
        .find(|p| std::fs::read(p).map(|b| !b.is_empty()).unwrap_or(false))
        .expect("a masked /proc file with content exists");
        let disk = block_device_of(canary.path());
        let disk_openable = disk.as_ref().is_some_and(|(maj, min, _)| {
            let node = canary.path().join("probe-node");
            let made = Command::new("mknod")
                .arg(&node)
                .args(["b", &maj.to_string(), &min.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            let open = made && std::fs::File::open(&node).is_ok();
            let _ = std::fs::remove_file(&node);
            open
        });
        if disk.is_some() && !disk_openable {
            testbed::skip("this host cannot open its own disk: insecure mknod/mount stay blocked");
        }
        Host {
            disk_openable,
            canary,
            sleeper,
            accepted,
            port,
            sysctl: std::fs::read_to_string(SYSCTL).unwrap().trim().to_string(),
            disk,
            masked,
            binfmt_name: format!("xbiso{}", std::process::id()),
        }
    }

    fn canary_dir(&self) -> &Path {
        self.canary.path()
    }

    /// Everything on the host is as it was.
    fn check(&mut self, what: &str) {
        let names: Vec<_> = std::fs::read_dir(self.canary_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["canary.txt"], "{what}: the canary dir changed");
        let p = self.canary_dir().join("canary.txt");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), CANARY_TEXT, "{what}");
        assert_eq!(std::fs::metadata(&p).unwrap().nlink(), 1, "{what}");
        assert!(
            self.sleeper.try_wait().unwrap().is_none(),
            "{what}: the host process was killed"
        );
        assert_eq!(
            std::fs::read_to_string(SYSCTL).unwrap().trim(),
            self.sysctl,
            "{what}: a host sysctl changed"
        );
        assert!(
            !Path::new("/proc/sys/fs/binfmt_misc")
                .join(&self.binfmt_name)
                .exists(),
            "{what}: a binfmt_misc entry was registered"
        );
        self.assert_no_connection(what);
    }

    fn assert_no_connection(&self, what: &str) {
        assert_eq!(
            self.accepted.load(Ordering::SeqCst),
            0,
            "{what}: a step reached the host's 127.0.0.1:{}",
            self.port
        );
    }

    /// Takes the connection a `--network=host` step made, if one came.
    fn take_connection(&self) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.accepted.load(Ordering::SeqCst) > 0 {
                self.accepted.store(0, Ordering::SeqCst);
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
        let entry = Path::new("/proc/sys/fs/binfmt_misc").join(&self.binfmt_name);
        if entry.exists() {
            let _ = std::fs::write(entry, "-1");
        }
    }
}

/// The block device (`major`, `minor`) of the filesystem holding `dir`, and
/// `dir`'s path inside that filesystem (from /proc/self/mountinfo).
fn block_device_of(dir: &Path) -> Option<(u32, u32, String)> {
    let dir = dir.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, u32, u32, String)> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (root, point) = (f.get(3)?, f.get(4)?);
        if !dir.starts_with(point) {
            continue;
        }
        let (maj, min) = f.get(2)?.split_once(':')?;
        let rel = dir.strip_prefix(point).ok()?;
        let inside = Path::new(root).join(rel).display().to_string();
        if best.as_ref().is_none_or(|b| point.len() >= b.0) {
            best = Some((point.len(), maj.parse().ok()?, min.parse().ok()?, inside));
        }
    }
    let (_, maj, min, inside) = best?;
    (maj != 0).then_some((maj, min, inside))
}

/// How the hostile suite runs.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// The default sandbox: every attack must fail.
    Default,
    /// `RUN --security=insecure` (and `--network=host` for the loopback
    /// attack), with the entitlements allowed.
    Insecure,
}

/// One attack: a shell command without single quotes that succeeds only if
/// the attack worked. Its verdict goes to `/out/NAME`.
fn attack(flags: &str, name: &str, cmd: &str) -> String {
    assert!(!cmd.contains('\''), "{name}");
    format!(
        "RUN {flags} sh -c '( {cmd} ) >/dev/null 2>&1 && echo OPEN > /out/{name} || echo blocked > /out/{name}'\n"
    )
}

fn hostile_dockerfile(base: &str, host: &Host, mode: Mode, helper: bool) -> String {
    let sec = match mode {
        Mode::Default => "",
        Mode::Insecure => "--security=insecure",
    };
    let mut df = format!("FROM {base}\nRUN mkdir -p /out\n");
    if helper {
        df.push_str("COPY chroot-escape /chroot-escape\n");
    }
    df.push_str(&format!(
        "RUN {sec} sh -c 'grep -E \"^(Cap|Seccomp:|NoNewPrivs)\" /proc/self/status > /out/status'\n"
    ));
    match &host.disk {
        Some((maj, min, inside)) => {
            df.push_str(&attack(
                sec,
                "mknod_open",
                &format!("mknod /hd b {maj} {min} && head -c 512 /hd"),
            ));
            df.push_str(&attack(
                sec,
                "mount_disk",
                &format!(
                    "mknod /hd2 b {maj} {min} && mkdir -p /mnt/hd && mount -o ro /hd2 /mnt/hd \
                     && cat /mnt/hd{inside}/canary.txt > /out/canary_seen; umount /mnt/hd; \
                     test -s /out/canary_seen"
                ),
            ));
        }
        None => testbed::skip("the canary is not on a block device: no mknod+mount attack"),
    }
    // Default: try to change the value; insecure: write the same value back
    // (success proves the door is open without touching the host).
    let value: u64 = host.sysctl.parse().unwrap();
    let value = if mode == Mode::Default {
        value + 1
    } else {
        value
    };
    df.push_str(&attack(
        sec,
        "proc_sys",
        &format!("echo {value} > {SYSCTL}"),
    ));
    df.push_str(&attack(
        sec,
        "remount_sys",
        "mount -o remount,rw /sys && touch /sys/kernel/xb 2>/dev/null; mount -o remount,rw /sys",
    ));
    df.push_str(&attack(
        sec,
        "mount_proc",
        "mkdir -p /mnt/p && mount -t proc proc /mnt/p && umount /mnt/p",
    ));
    df.push_str(&attack(
        sec,
        "masked",
        &format!("head -c 64 {} | grep -q .", host.masked),
    ));
    df.push_str(&attack(sec, "unshare", "unshare -m -u true"));
    df.push_str(&attack(sec, "setns", "nsenter -t 1 -m -u -n true"));
    df.push_str(&attack(
        sec,
        "kill",
        &format!("kill -9 {}", host.sleeper.id()),
    ));
    let register = match mode {
        // Registering would change the host's binfmt_misc in insecure mode:
        // mounting it is enough to show the door is open.
        Mode::Insecure => "true".to_string(),
        Mode::Default => format!(
            "echo :{}:M::XBISO::/bin/true: > /mnt/b/register",
            host.binfmt_name
        ),
    };
    df.push_str(&attack(
        sec,
        "binfmt",
        &format!(
            "mkdir -p /mnt/b && mount -t binfmt_misc binfmt_misc /mnt/b && {register}; \
             r=$?; umount /mnt/b; exit $r"
        ),
    ));
    let net = match mode {
        Mode::Default => "",
        Mode::Insecure => "--network=host",
    };
    df.push_str(&attack(
        net,
        "loopback",
        &format!("nc -w 5 127.0.0.1 {} </dev/null", host.port),
    ));
    if helper {
        let file = host.canary_dir().join("canary.txt");
        df.push_str(&attack(
            sec,
            "chroot_fd",
            &format!("/chroot-escape {}", file.display()),
        ));
    }
    df
}

/// A chroot escape through a directory fd kept open across `chroot`, the
/// classic way out of a chroot that is not a mount namespace.
const CHROOT_ESCAPE_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char buf[256];
    int fd = open("/", O_RDONLY | O_DIRECTORY);
    mkdir("/jail", 0755);
    if (fd < 0 || chroot("/jail") != 0) return 2;
    if (fchdir(fd) != 0) return 3;
    for (int i = 0; i < 64; i++) chdir("..");
    if (chroot(".") != 0) return 4;
    int f = open(argv[1], O_RDONLY);
    if (f < 0) return 1;
    ssize_t n = read(f, buf, sizeof buf);
    if (n > 0) fwrite(buf, 1, n, stdout);
    return 0;
}
"#;

/// Compiles the chroot escape helper statically for `arch`, or `None` (with
/// the reason printed) when no compiler for it is installed.
fn chroot_helper(dir: &Path, arch: &str) -> Option<PathBuf> {
    let cc = match arch {
        "amd64" => "gcc",
        "arm64" => "aarch64-linux-gnu-gcc",
        _ => return None,
    };
    if testbed::which(cc).is_none() {
        testbed::skip(&format!(
            "{cc} is missing: no chroot-escape helper for {arch}"
        ));
        return None;
    }
    let src = dir.join("chroot-escape.c");
    std::fs::write(&src, CHROOT_ESCAPE_C).unwrap();
    let out = dir.join("chroot-escape");
    let st = Command::new(cc)
        .args(["-static", "-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "{cc} failed");
    std::fs::remove_file(&src).unwrap();
    Some(out)
}

fn verdicts(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                text.trim().to_string(),
            )
        })
        .filter(|(n, _)| n != "status" && n != "canary_seen")
        .collect();
    v.sort();
    v
}

fn status_field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} missing in {text}"))
        .trim()
        .to_string()
}

/// Runs the suite for `platform` and checks the verdicts and the host.
fn run_suite(
    xb: &dyn Fn(&[&str]) -> Run,
    base: &str,
    host: &mut Host,
    platform: &str,
    mode: Mode,
) -> Run {
    let arch = platform.rsplit('/').next().unwrap();
    let ctx = context(&[]);
    let helper = chroot_helper(ctx.path(), arch).is_some();
    let df = hostile_dockerfile(base, host, mode, helper);
    std::fs::write(ctx.path().join("Dockerfile"), &df).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", s(out.path()));
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "--no-cache",
        "--platform",
        platform,
    ];
    if mode == Mode::Insecure {
        args.extend(["--allow", "security.insecure,network.host"]);
    }
    args.extend(["-o", &dest, s(ctx.path())]);
    let run = xb(&args).ok();
    let what = format!(
        "{platform} {}",
        if mode == Mode::Default {
            "default"
        } else {
            "insecure"
        }
    );
    let status = std::fs::read_to_string(out.path().join("out/status")).unwrap();
    let verdicts = verdicts(out.path());
    match mode {
        Mode::Default => {
            // Docker's default capability set, seccomp filter and no_new_privs.
            for key in ["CapBnd", "CapPrm", "CapEff"] {
                assert_eq!(
                    status_field(&status, key),
                    "00000000a80425fb",
                    "{what}: {key}"
                );
            }
            assert_eq!(
                status_field(&status, "CapAmb"),
                "0000000000000000",
                "{what}"
            );
            assert_eq!(status_field(&status, "Seccomp"), "2", "{what}");
            assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{what}");
            for (name, verdict) in &verdicts {
                assert_eq!(verdict, "blocked", "{what}: attack {name} worked\n{df}");
            }
            host.check(&what);
        }
        Mode::Insecure => {
            assert_ne!(
                status_field(&status, "CapEff"),
                "00000000a80425fb",
                "{what}"
            );
            assert_eq!(status_field(&status, "Seccomp"), "0", "{what}");
            // The pid namespace and pivot_root stay: the host process and the
            // host's root remain out of reach even then.
            let mut still_blocked = vec!["kill", "chroot_fd"];
            if !host.disk_openable {
                still_blocked.extend(["mknod_open", "mount_disk"]);
            }
            // QEMU user emulation (7.2) fails setns on a mount namespace
            // with EINVAL whatever the privileges: not the sandbox's doing.
            if arch != testbed::host_arch() {
                still_blocked.push("setns");
            }
            for (name, verdict) in &verdicts {
                let want = if still_blocked.contains(&name.as_str()) {
                    "blocked"
                } else {
                    "OPEN"
                };
                assert_eq!(verdict, want, "{what}: attack {name}\n{df}");
            }
            if host.disk_openable {
                let seen = std::fs::read_to_string(out.path().join("out/canary_seen")).unwrap();
                assert_eq!(seen, CANARY_TEXT, "{what}: the host disk was not readable");
            }
            assert!(
                host.take_connection(),
                "{what}: --network=host did not reach the host"
            );
        }
    }
    let expected = if helper { 12 } else { 11 } - usize::from(host.disk.is_none()) * 2;
    assert_eq!(verdicts.len(), expected, "{what}: {verdicts:?}");
    run
}

fn setup() -> Option<(Registry, Xbuild, String)> {
    require_multiplatform()?;
    testbed::require_cmd("pasta")?;
    let reg = Registry::start_or_skip()?;
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    Some((reg, xb, base))
}

#[test]
fn hostile_steps_fail_inside_the_step_on_amd64_and_arm64_and_insecure_opens_them() {
    let Some((_reg, xb, base)) = setup() else {
        return;
    };
    let mut host = Host::new();
    let build = |args: &[&str]| xb.run(args);
    for platform in ["linux/amd64", "linux/arm64"] {
        run_suite(&build, &base, &mut host, platform, Mode::Default);
    }

    // Without --allow the same Dockerfile is refused, naming the permission.
    let ctx = context(&[(
        "Dockerfile",
        &hostile_dockerfile(&base, &host, Mode::Insecure, false),
    )]);
    let refused = xb
        .run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            s(ctx.path()),
        ])
        .failed();
    assert!(
        refused.stderr.contains("--allow security.insecure"),
        "{}",
        refused.stderr
    );
    let only_insecure = xb
        .run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "--allow",
            "security.insecure",
            s(ctx.path()),
        ])
        .failed();
    assert!(
        only_insecure.stderr.contains("--allow network.host"),
        "{}",
        only_insecure.stderr
    );
    host.check("refused builds");

    for platform in ["linux/amd64", "linux/arm64"] {
        run_suite(&build, &base, &mut host, platform, Mode::Insecure);
    }
}

#[test]
fn the_same_rules_hold_on_an_ssh_node() {
    let Some((_reg, xb, base)) = setup() else {
        return;
    };
    let Some(sshd) = Sshd::start_or_skip("127.0.0.5") else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let known = home.path().join(".ssh/known_hosts");
    sshd.write_known_hosts(&known).unwrap();
    let agent = format!(
        "{} agent --stdio --root {}",
        xbuild_bin().display(),
        home.path().join("node").display()
    );
    let env = [("HOME", s(home.path())), ("SSH_AUTH_SOCK", "")];
    let key = sshd.client_key();
    xb.run_with(
        &[
            "node",
            "add",
            "iso1",
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
    let mut host = Host::new();
    let build = |args: &[&str]| xb.run_with(args, &env, None);
    for mode in [Mode::Default, Mode::Insecure] {
        let run = run_suite(&build, &base, &mut host, "linux/amd64", mode);
        assert!(
            run.stderr.contains("node iso1"),
            "not built on the node:\n{}",
            run.stderr
        );
    }
}

// BuildKit testCacheMountSourceEscape: an earlier build plants
// `ln -s /etc sel` in a cache mount; a later `source=sel` must not expose
// the host's /etc — the build fails, naming the mount.
#[test]
fn a_cache_mount_source_symlink_cannot_reach_the_host() {
    let Some((_reg, xb, base)) = setup() else {
        return;
    };
    let plant = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base}\n\
             RUN --mount=type=cache,id=sourceescape,target=/cache mkdir -p /cache/sel && echo benign > /cache/sel/benign.txt\n\
             RUN --mount=type=cache,id=sourceescape,target=/cache rm -rf /cache/sel && ln -s /etc /cache/sel\n"
        ),
    )]);
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        s(plant.path()),
    ])
    .ok();
    let victim = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base}\n\
             RUN --mount=type=cache,id=sourceescape,source=sel,target=/victim cat /victim/hostname > /stolen\n"
        ),
    )]);
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", s(out.path()));
    let r = xb
        .run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "-o",
            &dest,
            s(victim.path()),
        ])
        .failed();
    assert!(
        r.stderr.contains("/victim"),
        "the error names the mount:\n{}",
        r.stderr
    );
    assert!(r.stderr.contains("symlink"), "{}", r.stderr);
    assert!(!out.path().join("stolen").exists());
    // A relative source that stays inside the cache still works.
    let ok = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base}\n\
             RUN --mount=type=cache,id=inside,target=/cache mkdir -p /cache/d && echo in > /cache/d/f && ln -s d /cache/l\n\
             RUN --mount=type=cache,id=inside,source=l,target=/m cat /m/f > /got\n"
        ),
    )]);
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-o",
        &dest,
        s(ok.path()),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.path().join("got")).unwrap(),
        "in\n"
    );
}

/// Outbound access through pasta, proven inside a network namespace this
/// test makes (the rules of this machine allow traffic to non-loopback
/// addresses only there): a veth pair with 198.51.100.1 (default route)
/// and 198.51.100.2, where busybox httpd serves a file. A step on the
/// default network downloads it through pasta and sees a configured
/// interface with a default route; `--network=none` cannot.
#[test]
fn outbound_access_works_through_pasta_and_none_has_none() {
    if testbed::require_root().is_none() || testbed::require_cmd("pasta").is_none() {
        return;
    }
    if testbed::require_cmd("unshare").is_none() || testbed::require_cmd("ip").is_none() {
        return;
    }
    let xb = Xbuild::new();
    let www = tempfile::tempdir().unwrap();
    let payload = format!("fetched through pasta {}\n", std::process::id());
    std::fs::write(www.path().join("file"), &payload).unwrap();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM scratch\nCOPY busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox wget -q -O /got http://198.51.100.2:8099/file; \
             /bin/busybox ip route > /route; /bin/busybox ip -4 -o addr > /addr\"]\n\
             RUN --network=none [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox wget -q -T 5 -O /none http://198.51.100.2:8099/file || echo blocked > /none; /bin/busybox ip route > /none-route\"]\n",
        ),
        ("busybox", ""),
    ]);
    std::fs::copy("/bin/busybox", ctx.path().join("busybox")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let script = format!(
        "set -e; ip link add v0 type veth peer name v1; \
         ip addr add 198.51.100.1/24 dev v0; ip addr add 198.51.100.2/24 dev v1; \
         ip link set lo up; ip link set v0 up; ip link set v1 up; \
         ip route add default via 198.51.100.254 dev v0; \
         busybox httpd -f -p 198.51.100.2:8099 -h {www} & h=$!; \
         set +e; {xbuild} build --progress plain --platform linux/amd64 -o type=local,dest={out} {ctx}; \
         rc=$?; kill $h; exit $rc",
        www = s(www.path()),
        xbuild = xbuild_bin().display(),
        out = s(out.path()),
        ctx = s(ctx.path()),
    );
    // The xbuild environment (its own state directory), for the script.
    let cmd = xb.command();
    let envs: Vec<_> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    let result = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .envs(envs)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let read = |n: &str| std::fs::read_to_string(out.path().join(n)).unwrap();
    assert_eq!(read("got"), payload);
    assert!(
        read("route").starts_with("default via 198.51.100.254"),
        "{}",
        read("route")
    );
    assert!(read("addr").contains("198.51.100.1/24"), "{}", read("addr"));
    assert_eq!(read("none"), "blocked\n");
    assert_eq!(read("none-route"), "");
}
