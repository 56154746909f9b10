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

/// A bare git repository on the test's "server" holding `hello.txt`, and a
/// deploy key for it that exists only in a private ssh-agent: generated,
/// authorized on `sshd`, added to the agent, then deleted from disk.
struct PrivateRepo {
    _srv: tempfile::TempDir,
    /// The bare repository.
    repo: PathBuf,
    /// The agent holding the key.
    agent: Agent,
    /// A distinctive line of the private key's body, to look for later.
    secret_line: String,
}

impl PrivateRepo {
    fn new(sshd: &testbed::Sshd, hello: &str) -> PrivateRepo {
        let srv = tempfile::tempdir().unwrap();
        let work = srv.path().join("private");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join("hello.txt"), hello).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "one"]);
        git(
            srv.path(),
            &["clone", "-q", "--bare", "private", "private.git"],
        );
        let repo = srv.path().join("private.git");
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
        PrivateRepo {
            _srv: srv,
            repo,
            agent,
            secret_line,
        }
    }
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
    let PrivateRepo {
        _srv,
        repo,
        agent,
        secret_line,
    } = PrivateRepo::new(&sshd, "private dependency\n");

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
    // The clone reaches the test's sshd on the host's loopback.
    let allow: Vec<String> = vec!["--allow".into(), "network.host".into()];
    // `--call check` flags the ssh mount without --ssh; with it, not.
    let check = xb.run(&[
        "build",
        "--call",
        "check",
        "--allow",
        "network.host",
        s(ctx.path()),
    ]);
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
            "--allow",
            "network.host",
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

/// `--ssh` through an SSH build node, as buildx forwards the client's agent
/// to a remote BuildKit: the platform is built by `xbuild agent` on a node
/// reached over OpenSSH, the RUN step there clones over SSH with a deploy
/// key that exists only in the coordinator's ssh-agent, and the key is in
/// nothing either side wrote. Without `--ssh`, a `required` ssh mount on
/// the node fails with the same error, naming the id and the line, as a
/// local build.
#[test]
fn ssh_mount_on_an_ssh_build_node_uses_the_coordinators_agent() {
    if testbed::require_root().is_none()
        || testbed::require_cmd("ssh-agent").is_none()
        || testbed::require_cmd("ssh-add").is_none()
        || testbed::require_cmd("ldd").is_none()
        || testbed::require_cmd("git").is_none()
    {
        return;
    }
    // One OpenSSH server is both the build node (it runs `xbuild agent`)
    // and the git server.
    let Some(sshd) = testbed::Sshd::start_or_skip("127.0.0.9") else {
        return;
    };
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let PrivateRepo {
        _srv,
        repo,
        agent,
        secret_line,
    } = PrivateRepo::new(&sshd, "private dependency via node\n");

    // The node: its own state directory; the coordinator logs in with the
    // server's client key (not through the agent: SSH_AUTH_SOCK is empty).
    let xb = Xbuild::new();
    let home = tempfile::tempdir().unwrap();
    let node_root = home.path().join("node1");
    let env = [("HOME", s(home.path())), ("SSH_AUTH_SOCK", "")];
    sshd.write_known_hosts(&home.path().join(".ssh/known_hosts"))
        .unwrap();
    let platform = format!("linux/{}", testbed::host_arch());
    // The node's temporary directory is private to the test, to check
    // that the forwarded agent sockets go with the build.
    let node_tmp = home.path().join("node-tmp");
    std::fs::create_dir_all(&node_tmp).unwrap();
    // (git on the node, for ADD, checks no host keys of the test server.)
    let agent_cmd = format!(
        "env TMPDIR={} 'GIT_SSH_COMMAND=ssh -F /dev/null -o BatchMode=yes \
         -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null' {} agent --stdio --root {}",
        node_tmp.display(),
        xbuild_e2e::xbuild_bin().display(),
        node_root.display()
    );
    xb.run_with(
        &[
            "node",
            "add",
            "node1",
            &sshd.url(),
            "--platform",
            &platform,
            "--identity",
            s(&sshd.client_key()),
            "--agent-command",
            &agent_cmd,
        ],
        &env,
        None,
    )
    .ok();

    let base = publish_host_base(&xb, &reg);
    let ctx = tempfile::tempdir().unwrap();
    copy_with_libs(
        &ctx.path().join("tools"),
        &["/usr/bin/git", "/usr/bin/ssh", "/usr/bin/ssh-add"],
    );
    let url = format!("ssh://root@{}:{}{}", sshd.ip(), sshd.port(), repo.display());
    let dockerfile = |mount: &str| {
        format!(
            "FROM {base}\nCOPY tools/ /\nENV GIT_EXEC_PATH=/usr/bin HOME=/root\n\
             RUN --network=host --mount={mount} \
             ssh-add -D 2>/dev/null; ssh-add -x </dev/null 2>/dev/null; \
             GIT_SSH_COMMAND='ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null' \
             git clone -q {url} /src && cat /src/hello.txt > /cloned && ssh-add -l > /listed\n"
        )
    };
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile("type=ssh")).unwrap();
    let build = |extra: &[&str], out: &Path| {
        let out_spec = format!("type=local,dest={}", out.display());
        let node_pin = format!("{platform}=node1");
        let mut args = vec![
            "build",
            "--progress=plain",
            "--allow",
            "network.host",
            "--platform",
            &platform,
            "--node",
            &node_pin,
            "-o",
            &out_spec,
        ];
        args.extend_from_slice(extra);
        args.push(s(ctx.path()));
        xb.run_with(&args, &env, None)
    };

    // With --ssh, the step on the node clones through the coordinator's agent.
    let out = tempfile::tempdir().unwrap();
    let ssh_spec = format!("default={}", agent.sock.display());
    // Meanwhile, watch the node's temporary directory for the private
    // directory of the forwarded agent sockets (it lives as long as the
    // solve: the base pull, the COPY and the clone).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, dir) = (stop.clone(), node_tmp.clone());
        std::thread::spawn(move || {
            use std::os::unix::fs::PermissionsExt;
            let mut modes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for e in std::fs::read_dir(&dir).unwrap().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with("xbuild-ssh-") && e.path().join("0.sock").exists() {
                        if let Ok(m) = e.metadata() {
                            modes.push(m.permissions().mode() & 0o777);
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            modes
        })
    };
    let run = build(&["--ssh", &ssh_spec], out.path()).ok();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let modes = watcher.join().unwrap();
    assert!(
        !modes.is_empty(),
        "the node served no forwarded agent socket under its TMPDIR"
    );
    assert!(modes.iter().all(|m| *m == 0o700), "modes seen: {modes:?}");
    assert!(
        run.stderr.contains("node node1"),
        "not built on the node:\n{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("cloned")).unwrap(),
        "private dependency via node\n"
    );
    assert!(
        out.path().join("src/.git").is_dir(),
        "the clone is in the image"
    );
    // The step's agent is read-only, as BuildKit's: its `ssh-add -D` and
    // `ssh-add -x` (lock) were refused, so the clone still had the key,
    // the step listed it, and the coordinator's agent still holds it.
    let listed = std::fs::read_to_string(out.path().join("listed")).unwrap();
    assert!(listed.contains("deploy"), "{listed}");
    let still = Command::new("ssh-add")
        .arg("-l")
        .env("SSH_AUTH_SOCK", &agent.sock)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&still.stdout).contains("deploy"),
        "the agent lost its key: {}",
        String::from_utf8_lossy(&still.stderr)
    );
    assert!(
        node_root.join("content").is_dir(),
        "the node kept no state: not built there"
    );
    // The key is nowhere: not in the node's state (layers, cache), the
    // coordinator's, or the image; nor is the agent's socket path.
    for dir in [&node_root, xb.root(), out.path()] {
        let leaked = files_containing(dir, secret_line.as_bytes());
        assert!(leaked.is_empty(), "private key material in {leaked:?}");
        let leaked = files_containing(dir, s(&agent.sock).as_bytes());
        assert!(leaked.is_empty(), "agent socket path in {leaked:?}");
    }
    // The forwarded agent sockets went with the build: the node's
    // temporary directory holds none.
    let left: Vec<_> = std::fs::read_dir(&node_tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("xbuild-ssh-"))
        .collect();
    assert!(left.is_empty(), "forwarded agent sockets left: {left:?}");

    // ADD <ssh git URL> on the node goes through the same forwarded agent
    // (its commit is resolved for the cache key, then it is fetched).
    let add_ctx = context(&[(
        "Dockerfile",
        &format!("FROM scratch\nADD {url}#main /dep/\n"),
    )]);
    let add_out = tempfile::tempdir().unwrap();
    let out_spec = format!("type=local,dest={}", add_out.path().display());
    let node_pin = format!("{platform}=node1");
    let run = xb
        .run_with(
            &[
                "build",
                "--progress=plain",
                "--platform",
                &platform,
                "--node",
                &node_pin,
                "--ssh",
                &ssh_spec,
                "-o",
                &out_spec,
                s(add_ctx.path()),
            ],
            &env,
            None,
        )
        .ok();
    assert!(run.stderr.contains("node node1"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(add_out.path().join("dep/hello.txt")).unwrap(),
        "private dependency via node\n"
    );

    // Without --ssh: an optional mount is skipped and the clone fails; a
    // required one fails the step with the clear error, as locally.
    let out2 = tempfile::tempdir().unwrap();
    let r = build(&["--no-cache"], out2.path()).failed();
    assert!(
        r.stderr.contains("node node1") && !out2.path().join("cloned").exists(),
        "{}",
        r.stderr
    );
    std::fs::write(
        ctx.path().join("Dockerfile"),
        dockerfile("type=ssh,required=true"),
    )
    .unwrap();
    let r = build(&[], out2.path()).failed();
    assert!(
        r.stderr
            .contains("ssh agent \"default\" not found (pass it with --ssh default"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("Dockerfile:4"), "{}", r.stderr);
    assert!(r.stderr.contains("node node1"), "{}", r.stderr);
    // An id the user did not pass is not served on the node either.
    let r = build(
        &["--ssh", &format!("other={}", agent.sock.display())],
        out2.path(),
    )
    .failed();
    assert!(
        r.stderr.contains("ssh agent \"default\" not found"),
        "{}",
        r.stderr
    );
}
