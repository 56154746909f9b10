//! Build flags pipelines use besides the argument vectors of
//! `pipelines.rs`: `RUN --mount=type=ssh` with `--ssh` (a clone over SSH
//! from the test sshd, the key only in the test's agent), zstd layers,
//! `--add-host` and the small flags, and `--build-context` of every kind.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{context, git, publish_host_base, s, GitDaemon, Xbuild};

const REPO: &str = "acme/widget";

fn knows_flag(xb: &Xbuild, flag: &str) -> bool {
    let help = xb.run(&["build", "--help"]);
    help.stdout.contains(&format!("{flag} "))
}

/// Host binaries and the libraries `ldd` names, copied under `root` at the
/// same paths (for a RUN step that needs git and ssh on a busybox base).
fn copy_with_libs(root: &Path, bins: &[&str]) {
    let mut files: Vec<PathBuf> = bins.iter().map(PathBuf::from).collect();
    for b in bins {
        let out = Command::new("ldd").arg(b).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = line
                .split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from);
            if let Some(p) = path {
                files.push(p);
            }
        }
    }
    for f in files {
        let dest = root.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
}

/// A private ssh-agent for the test, stopped on drop.
struct Agent {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !sock.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "ssh-agent did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Agent {
            child,
            sock,
            _dir: dir,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                if let Ok(b) = std::fs::read(&p) {
                    // Layers are compressed: look inside gzip blobs too.
                    let plain = if b.starts_with(&[0x1f, 0x8b]) {
                        let mut v = Vec::new();
                        let _ = flate2::read::MultiGzDecoder::new(&b[..]).read_to_end(&mut v);
                        v
                    } else {
                        Vec::new()
                    };
                    let hit = |h: &[u8]| h.windows(needle.len()).any(|w| w == needle);
                    if hit(&b) || hit(&plain) {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn ssh_mount_clones_over_ssh_with_a_key_only_in_the_agent() {
    if testbed::require_root().is_none()
        || testbed::require_cmd("ssh-agent").is_none()
        || testbed::require_cmd("ssh-add").is_none()
        || testbed::require_cmd("ldd").is_none()
        || testbed::require_cmd("git").is_none()
    {
        return;
    }
    let Some(sshd) = testbed::Sshd::start_or_skip("127.0.0.9") else {
        return;
    };
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    // A repository on the "server".
    let srv = tempfile::tempdir().unwrap();
    let work = srv.path().join("private");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("hello.txt"), "private dependency\n").unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    git(
        srv.path(),
        &["clone", "-q", "--bare", "private", "private.git"],
    );
    let repo = srv.path().join("private.git");

    // A deploy key that exists only in the agent: generated, authorized on
    // the server, added to the agent, then deleted from disk.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("deploy");
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "deploy", "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success());
    sshd.authorize(&keys.path().join("deploy.pub")).unwrap();
    let private = std::fs::read_to_string(&key).unwrap();
    // A distinctive piece of the private key's body, to look for later.
    let secret_line = private
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .nth(2)
        .unwrap()
        .to_string();
    let agent = Agent::start();
    assert!(Command::new("ssh-add")
        .arg("-q")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &agent.sock)
        .status()
        .unwrap()
        .success());
    std::fs::remove_file(&key).unwrap();

    // The image: busybox plus the host's git and ssh.
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    let ctx = tempfile::tempdir().unwrap();
    copy_with_libs(&ctx.path().join("tools"), &["/usr/bin/git", "/usr/bin/ssh"]);
    let url = format!("ssh://root@{}:{}{}", sshd.ip(), sshd.port(), repo.display());
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {base}\nCOPY tools/ /\nENV GIT_EXEC_PATH=/usr/bin HOME=/root\n\
             RUN --network=host --mount=type=ssh \
             GIT_SSH_COMMAND='ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null' \
             git clone -q {url} /src && cat /src/hello.txt > /cloned\n"
        ),
    )
    .unwrap();
    let mut allow: Vec<String> = Vec::new();
    if knows_flag(&xb, "--allow") {
        allow = vec!["--allow".into(), "network.host".into()];
    }
    // `--call check` flags the ssh mount without --ssh; with it, not.
    let check = xb.run(&["build", "--call", "check", s(ctx.path())]);
    assert!(
        check.stdout.contains("SSHMountWithoutSSHFlag"),
        "{}{}",
        check.stdout,
        check.stderr
    );
    let check = xb.run_with(
        &[
            "build",
            "--call",
            "check",
            "--ssh",
            "default",
            s(ctx.path()),
        ],
        &[("SSH_AUTH_SOCK", s(&agent.sock))],
        None,
    );
    assert!(
        !check.stdout.contains("SSHMountWithoutSSHFlag"),
        "{}",
        check.stdout
    );

    // Without --ssh the step has no agent and the clone fails.
    let mut args: Vec<String> = vec!["build".into(), "--progress=plain".into()];
    args.extend(allow.iter().cloned());
    let mut no_agent = args.clone();
    no_agent.push(s(ctx.path()).into());
    xb.run_with(&no_agent, &[("SSH_AUTH_SOCK", "")], None)
        .failed();

    // With --ssh default the clone works.
    let out = tempfile::tempdir().unwrap();
    args.extend([
        "--ssh".into(),
        "default".into(),
        "-o".into(),
        format!("type=local,dest={}", out.path().display()),
        s(ctx.path()).into(),
    ]);
    xb.run_with(&args, &[("SSH_AUTH_SOCK", s(&agent.sock))], None)
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.path().join("cloned")).unwrap(),
        "private dependency\n"
    );
    // ADD <ssh git URL> goes through the same --ssh agent (and the user's
    // own GIT_SSH_COMMAND for host keys).
    let add_ctx = context(&[(
        "Dockerfile",
        &format!("FROM scratch\nADD {url}#main /dep/\n"),
    )]);
    let add_out = tempfile::tempdir().unwrap();
    xb.run_with(
        &[
            "build",
            "--ssh",
            "default",
            "-o",
            &format!("type=local,dest={}", add_out.path().display()),
            s(add_ctx.path()),
        ],
        &[
            ("SSH_AUTH_SOCK", s(&agent.sock)),
            (
                "GIT_SSH_COMMAND",
                "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            ),
        ],
        None,
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(add_out.path().join("dep/hello.txt")).unwrap(),
        "private dependency\n"
    );
    // The key is nowhere in what xbuild wrote: not in a layer, the cache,
    // the image config or history, nor in the exported filesystem.
    let leaked = files_containing(xb.root(), secret_line.as_bytes());
    assert!(leaked.is_empty(), "private key material in {leaked:?}");
    let leaked = files_containing(out.path(), secret_line.as_bytes());
    assert!(leaked.is_empty(), "private key material in {leaked:?}");
    // Nor is the agent socket path baked into the image config.
    let leaked = files_containing(xb.root(), s(&agent.sock).as_bytes());
    assert!(leaked.is_empty(), "agent socket path in {leaked:?}");
}

#[test]
fn zstd_layers_are_pushed_and_read_back_as_a_base() {
    if testbed::require_root().is_none() || testbed::require_cmd("skopeo").is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    let ctx = context(&[("Dockerfile", &format!("FROM {base}\nRUN echo zstd > /z\n"))]);
    let tag = reg.reference(&format!("{REPO}:zstd"));
    xb.run(&[
        "build",
        "-q",
        "-o",
        &format!(
            "type=image,name={tag},push=true,compression=zstd,compression-level=19,force-compression=true"
        ),
        s(ctx.path()),
    ])
    .ok();
    let raw = testbed::skopeo_inspect_raw(&tag).unwrap();
    let layers = raw["layers"].as_array().unwrap();
    assert!(layers.len() >= 2, "{raw}");
    for l in layers {
        // force-compression: the base's gzip layer is recompressed too.
        assert_eq!(
            l["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
            "{raw}"
        );
    }
    // A third party reads it (skopeo decompresses to check diffIDs).
    let d = tempfile::tempdir().unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{tag}"))
        .arg(format!("oci:{}:x", d.path().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And xbuild builds on it from a fresh state: zstd layers are applied.
    let fresh = Xbuild::new();
    let ctx2 = context(&[("Dockerfile", &format!("FROM {tag}\nRUN cat /z > /copy\n"))]);
    let out = tempfile::tempdir().unwrap();
    fresh
        .run(&[
            "build",
            "-q",
            "-o",
            &format!("type=local,dest={}", out.path().display()),
            s(ctx2.path()),
        ])
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.path().join("copy")).unwrap(),
        "zstd\n"
    );
    // Without force-compression a gzip base layer stays gzip.
    let mixed = reg.reference(&format!("{REPO}:mixed"));
    xb.run(&[
        "build",
        "-q",
        "--no-cache",
        "-o",
        &format!("type=image,name={mixed},push=true,compression=zstd"),
        s(ctx.path()),
    ])
    .ok();
    let raw = testbed::skopeo_inspect_raw(&mixed).unwrap();
    let types: Vec<&str> = raw["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types[0], "application/vnd.oci.image.layer.v1.tar+gzip",
        "{types:?}"
    );
    assert_eq!(
        types.last().copied(),
        Some("application/vnd.oci.image.layer.v1.tar+zstd"),
        "{types:?}"
    );
}

#[test]
fn add_host_platform_local_and_the_small_flags() {
    if testbed::require_root().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base}\nRUN grep internal /etc/hosts > /hosts && df -k /dev/shm > /shm\nCMD [\"sh\"]\n"
        ),
    )]);
    let out = tempfile::tempdir().unwrap();
    let run = xb
        .run_with(
            &[
                "build",
                "--add-host",
                "registry.internal:10.1.2.3",
                "--add-host",
                "v6.internal=fd00::1",
                "--shm-size",
                "32m",
                "--platform",
                "local",
                "--builder",
                "ci-builder",
                "-o",
                &format!("type=local,dest={}", out.path().display()),
                s(ctx.path()),
            ],
            &[("BUILDKIT_PROGRESS", "plain")],
            None,
        )
        .ok();
    assert!(
        run.stderr.contains("--builder ci-builder ignored"),
        "{}",
        run.stderr
    );
    // BUILDKIT_PROGRESS=plain gives BuildKit's numbered lines.
    assert!(run.stderr.contains("#1 "), "{}", run.stderr);
    let hosts = std::fs::read_to_string(out.path().join("hosts")).unwrap();
    assert!(hosts.contains("10.1.2.3\tregistry.internal"), "{hosts}");
    assert!(hosts.contains("fd00::1\tv6.internal"), "{hosts}");
    let shm = std::fs::read_to_string(out.path().join("shm")).unwrap();
    assert!(shm.contains("32768"), "{shm}");
    // An impossible platform variant is refused before any work.
    let bad = xb
        .run(&["build", "--platform", "linux/amd64/v9", s(ctx.path())])
        .failed();
    assert!(bad.stderr.contains("v9"), "{}", bad.stderr);
    assert!(!bad.stderr.contains("#1 "), "{}", bad.stderr);
    xb.run(&["build", "--add-host", "nohost", s(ctx.path())])
        .failed();
    // `--progress none` is quiet: only the digest on stdout.
    let plain = context(&[("Dockerfile", &format!("FROM {base}\nRUN true\n"))]);
    let q = xb
        .run(&["build", "--progress", "none", s(plain.path())])
        .ok();
    assert!(q.stdout.trim().starts_with("sha256:"), "{}", q.stdout);
    // --check is --call check.
    let c = xb.run(&["build", "--check", s(plain.path())]).ok();
    assert!(c.stdout.contains("Check complete"), "{}", c.stdout);
    // version and shell completion.
    let v = xb.run(&["version"]).ok();
    assert!(v.stdout.starts_with("xbuild "), "{}", v.stdout);
    for shell in ["bash", "zsh", "fish"] {
        let c = xb.run(&["completion", shell]).ok();
        assert!(c.stdout.contains("imagetools"), "{shell}");
    }
}

#[test]
fn build_contexts_dir_image_layout_and_git() {
    if testbed::require_root().is_none()
        || testbed::require_cmd("skopeo").is_none()
        || testbed::require_cmd("git").is_none()
    {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    // A directory, an OCI layout (written by xbuild itself), a git repository.
    let shared = context(&[("lib/version.txt", "lib 2\n")]);
    let layout_tar = tempfile::tempdir().unwrap();
    let ltar = layout_tar.path().join("img.tar");
    let img_ctx = context(&[
        ("Dockerfile", "FROM scratch\nCOPY . /from-layout/\n"),
        ("l.txt", "layout\n"),
    ]);
    xb.run(&[
        "build",
        "-q",
        "-o",
        &format!("type=oci,dest={}", s(&ltar)),
        s(img_ctx.path()),
    ])
    .ok();
    let layout = tempfile::tempdir().unwrap();
    tar::Archive::new(std::fs::File::open(&ltar).unwrap())
        .unpack(layout.path())
        .unwrap();
    let served = tempfile::tempdir().unwrap();
    let work = served.path().join("docs");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("README"), "docs from git\n").unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    git(
        served.path(),
        &["clone", "-q", "--bare", "docs", "docs.git"],
    );
    let daemon = GitDaemon::start(served.path());

    let ctx = context(&[(
        "Dockerfile",
        "FROM alpine AS runtime\n\
         COPY --from=shared /lib/version.txt /version.txt\n\
         COPY --from=layout /from-layout/l.txt /l.txt\n\
         COPY --from=docs /README /docs.txt\n\
         RUN --mount=from=shared,target=/mnt cat /mnt/lib/version.txt > /mounted.txt\n",
    )]);
    let out = tempfile::tempdir().unwrap();
    xb.run(&[
        "build",
        "--build-context",
        &format!("alpine=docker-image://{base}"),
        "--build-context",
        &format!("shared={}", s(shared.path())),
        "--build-context",
        &format!("layout=oci-layout://{}", s(layout.path())),
        "--build-context",
        &format!("docs=git://127.0.0.1:{}/docs.git#main", daemon.port),
        "-o",
        &format!("type=local,dest={}", out.path().display()),
        s(ctx.path()),
    ])
    .ok();
    let read = |p: &str| std::fs::read_to_string(out.path().join(p)).unwrap();
    assert_eq!(read("version.txt"), "lib 2\n");
    assert_eq!(read("mounted.txt"), "lib 2\n");
    assert_eq!(read("l.txt"), "layout\n");
    assert_eq!(read("docs.txt"), "docs from git\n");
    // FROM alpine was the busybox base: its shell ran the RUN step.
    assert!(out.path().join("bin/busybox").exists());
    // FROM a directory context: its files are the stage's root.
    let ctx2 = context(&[("Dockerfile", "FROM shared\n")]);
    let out2 = tempfile::tempdir().unwrap();
    xb.run(&[
        "build",
        "--build-context",
        &format!("shared={}", s(shared.path())),
        "-o",
        &format!("type=local,dest={}", out2.path().display()),
        s(ctx2.path()),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(out2.path().join("lib/version.txt")).unwrap(),
        "lib 2\n"
    );
    let bad = xb
        .run(&[
            "build",
            "--build-context",
            "x=/nonexistent/dir",
            s(ctx2.path()),
        ])
        .failed();
    assert!(bad.stderr.contains("not a directory"), "{}", bad.stderr);
}
