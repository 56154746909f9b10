//! Helpers for the end-to-end tests in `e2e/tests/`: run the real `xbuild`
//! binary with its own state directory, register QEMU through
//! `xbuild binfmt install`, publish the busybox base image to a test
//! registry, and check results with skopeo and buildah.
//!
//! The binary is the one cargo built next to the test executable
//! (`target/<profile>/xbuild`), or `$XBUILD_BIN`.
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use xbuild_testbed::Registry;

pub use xbuild_testbed as testbed;

/// The `xbuild` binary under test.
pub fn xbuild_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XBUILD_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/xbuild
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("xbuild");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build -p xbuild`) or set XBUILD_BIN",
        bin.display()
    );
    bin
}

/// One xbuild installation: the binary and a private `$XBUILD_ROOT`.
#[derive(Debug)]
pub struct Xbuild {
    root: tempfile::TempDir,
}

/// What a finished `xbuild` run printed.
#[derive(Debug)]
pub struct Run {
    /// Exit status code (`-1` when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error (progress and errors).
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with the output unless the run succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "xbuild failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics with the output unless the run failed.
    pub fn failed(self) -> Run {
        assert_ne!(
            self.code, 0,
            "xbuild succeeded but should not have\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Number of `#N CACHED` lines in plain progress.
    pub fn cached_steps(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.starts_with('#') && l.ends_with(" CACHED"))
            .count()
    }

    /// Number of `#N cache miss: ...` lines in plain progress.
    pub fn missed_steps(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.starts_with('#') && l.contains(" cache miss: "))
            .count()
    }
}

impl Xbuild {
    /// A fresh installation with an empty state directory.
    pub fn new() -> Xbuild {
        Xbuild {
            root: tempfile::Builder::new()
                .prefix("xbuild-e2e-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    /// The state directory (`$XBUILD_ROOT`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A command for the binary with this state directory.
    ///
    /// Pushes get no default provenance here (`BUILDX_NO_DEFAULT_ATTESTATIONS`
    /// is set), so that tests of other features see only their platforms in
    /// the index; the attestation tests pass `BUILDX_NO_DEFAULT_ATTESTATIONS=`
    /// (empty) to get buildx's default back.
    pub fn command(&self) -> Command {
        let mut c = Command::new(xbuild_bin());
        c.env("XBUILD_ROOT", self.root.path())
            .env("XBUILD_CONFIG", self.root.path().join("config.yaml"))
            .env("DOCKER_CONFIG", self.root.path().join("docker"))
            .env("BUILDX_NO_DEFAULT_ATTESTATIONS", "1")
            .env_remove("SOURCE_DATE_EPOCH");
        c
    }

    /// Run `xbuild ARGS...`.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Run {
        let out = self.command().args(args).output().expect("spawn xbuild");
        Run::from(out)
    }

    /// Run `xbuild ARGS...` with extra environment variables and, when
    /// given, `stdin` as standard input (else standard input is empty).
    pub fn run_with<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: &[S],
        env: &[(&str, &str)],
        stdin: Option<&[u8]>,
    ) -> Run {
        use std::io::Write;
        use std::process::Stdio;
        let mut cmd = self.command();
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn xbuild");
        let mut input = child.stdin.take().expect("piped stdin");
        let data = stdin.unwrap_or_default().to_vec();
        // Write from a thread so a child that does not read cannot block us.
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().expect("wait for xbuild");
        let _ = writer.join();
        Run::from(out)
    }
}

impl Default for Xbuild {
    fn default() -> Self {
        Xbuild::new()
    }
}

/// Root, a registry binary, skopeo and QEMU for arm64 (registered through
/// `xbuild binfmt install linux/arm64`, which needs root): `None` (after
/// printing why) when the machine truly lacks one of them.
pub fn require_multiplatform() -> Option<()> {
    xbuild_testbed::require_root()?;
    xbuild_testbed::require_cmd("docker-registry")?;
    xbuild_testbed::require_cmd("skopeo")?;
    if xbuild_testbed::host_arch() != "amd64" {
        xbuild_testbed::skip("the e2e tests assume an amd64 host emulating arm64");
        return None;
    }
    if !Path::new("/usr/libexec/qemu-binfmt/aarch64-binfmt-P").exists()
        && xbuild_testbed::which("qemu-aarch64-static").is_none()
    {
        xbuild_testbed::skip("qemu-user-static is not installed");
        return None;
    }
    Xbuild::new()
        .run(&["binfmt", "install", "linux/arm64"])
        .ok();
    Some(())
}

/// Build and push the busybox base image for linux/amd64 and linux/arm64
/// to `registry` as `xbuild/busybox:latest`, returning its reference.
pub fn publish_base(xb: &Xbuild, registry: &Registry) -> String {
    let ctx = tempfile::tempdir().expect("temp dir");
    xbuild_testbed::write_base_context(ctx.path(), &["amd64", "arm64"])
        .expect("busybox base context");
    let reference = registry.reference("xbuild/busybox:latest");
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &reference,
        "--push",
        ctx.path().to_str().expect("utf-8 path"),
    ])
    .ok();
    reference
}

/// Write `files` (relative path, contents) into a new temp directory.
pub fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write context file");
    }
    dir
}

/// Run `COMMAND` in a container of `reference` for `arch` with buildah
/// (`--isolation chroot`, vfs storage in a temp dir) and return its stdout.
///
/// The command's stdout goes to a file in a host directory bind-mounted
/// into the container, not through buildah's own stdout: buildah's chroot
/// isolation sometimes drops a short-lived command's output under load
/// (about 1 run in 100 printed nothing and exited 0 for `cat` of a file
/// holding a line), which read as an empty file in the image.
pub fn buildah_run(reference: &str, arch: &str, command: &str) -> String {
    const OUT_DIR: &str = "/.xbuild-e2e-out";
    let store = tempfile::tempdir().expect("temp dir");
    let out_dir = tempfile::tempdir().expect("temp dir");
    // Writable by whatever USER the image runs as.
    std::fs::set_permissions(
        out_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod the output directory");
    let base = |cmd: &mut Command| {
        cmd.arg("--root")
            .arg(store.path().join("root"))
            .arg("--runroot")
            .arg(store.path().join("run"))
            .args(["--storage-driver", "vfs"]);
    };
    let mut from = Command::new("buildah");
    base(&mut from);
    from.args(["from", "-q", "--tls-verify=false", "--arch", arch])
        .arg(format!("docker://{reference}"));
    let out = xbuild_testbed::run(&mut from).expect("buildah from");
    let ctr = String::from_utf8_lossy(&out).trim().to_string();
    let mut run = Command::new("buildah");
    base(&mut run);
    // `exec >FILE` redirects the shell's stdout for the whole command line
    // (several statements, the working directory and the exit status as
    // without it).
    let script = format!("exec >{OUT_DIR}/stdout\n{command}");
    run.args(["run", "--isolation", "chroot", "--volume"])
        .arg(format!("{}:{OUT_DIR}:rw", s(out_dir.path())))
        .args([&ctr, "--", "sh", "-c", &script]);
    let result = xbuild_testbed::run(&mut run);
    let mut rm = Command::new("buildah");
    base(&mut rm);
    rm.args(["rm", "-a"]);
    let _ = rm.output();
    let stray = result.expect("buildah run");
    assert!(
        stray.is_empty(),
        "buildah run printed on its own stdout: {}",
        String::from_utf8_lossy(&stray)
    );
    let out = std::fs::read(out_dir.path().join("stdout")).expect("the command's stdout file");
    String::from_utf8_lossy(&out).into_owned()
}

/// The path as UTF-8 (test paths always are).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The `os/architecture` of each entry of an image index (as skopeo or the
/// registry returns it), sorted.
pub fn index_platforms(index: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = index["manifests"]
        .as_array()
        .expect("an index with manifests")
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    v.sort();
    v
}

/// Build and push a busybox base for the host platform only.
pub fn publish_host_base(xb: &Xbuild, reg: &Registry) -> String {
    let ctx = tempfile::tempdir().unwrap();
    xbuild_testbed::write_base_context(ctx.path(), &[xbuild_testbed::host_arch()]).unwrap();
    let r = reg.reference("xbuild/busybox:host");
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "-t",
        &r,
        "--push",
        s(ctx.path()),
    ])
    .ok();
    r
}

/// The digest of what `reference` names in the registry (sha256 of the
/// exact manifest bytes skopeo fetches).
pub fn pushed_digest(reference: &str) -> String {
    let raw = xbuild_testbed::skopeo_inspect_raw_bytes(reference, None).unwrap();
    xbuild_testbed::sha256_digest(&raw).unwrap()
}

/// Files of every layer of a single-platform image, later layers winning.
pub fn image_files(reference: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    image_files_for(reference, None)
}

/// [`image_files`] of the `arch` (linux) image of an index, or of the one
/// skopeo picks for this host with `None`.
pub fn image_files_for(
    reference: &str,
    arch: Option<&str>,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let d = tempfile::tempdir().unwrap();
    let mut skopeo = std::process::Command::new("skopeo");
    if let Some(arch) = arch {
        skopeo.args(["--override-os", "linux", "--override-arch", arch]);
    }
    let out = skopeo
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", d.path().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("manifest.json")).unwrap()).unwrap();
    let mut files = std::collections::BTreeMap::new();
    for l in m["layers"].as_array().unwrap() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let blob = std::fs::read(d.path().join(hex)).unwrap();
        let raw: Box<dyn std::io::Read> = if blob.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::GzDecoder::new(&blob[..]))
        } else {
            Box::new(&blob[..])
        };
        let mut ar = tar::Archive::new(raw);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            files.insert(path, data);
        }
    }
    files
}

/// A `git daemon` serving `base` on 127.0.0.1, stopped on drop.
pub struct GitDaemon {
    child: Option<std::process::Child>,
    /// The port it listens on.
    pub port: u16,
}

impl GitDaemon {
    /// Start serving every repository under `base` (`--export-all`).
    pub fn start(base: &Path) -> GitDaemon {
        let port = xbuild_testbed::free_port();
        let child = std::process::Command::new("git")
            .args([
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("git daemon");
        // Wait (generously) until it accepts connections.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "git daemon did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        GitDaemon {
            child: Some(child),
            port,
        }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `git -C dir ARGS` (with a committer identity) and return its stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=ci", "-c", "user.email=ci@example.invalid"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
