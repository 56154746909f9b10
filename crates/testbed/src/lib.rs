//! Helpers for xbuild's integration and end-to-end tests, all backed by
//! real components installed from Debian packages:
//!
//! - [`Registry`]: the CNCF distribution registry (`docker-registry`) on a
//!   free loopback port, optionally with htpasswd auth, stopped on drop;
//! - [`require_root`], [`require_cmd`]: skip a test (printing
//!   `SKIPPED: <reason>`) only when a facility is truly absent;
//! - [`skopeo_inspect_raw`], [`skopeo_inspect_config`]: a third-party
//!   client's view of what we pushed;
//! - [`Sshd`]: OpenSSH's sshd on 127.0.0.2, 127.0.0.3, … with its own host
//!   key and an authorized client key, for remote-node tests;
//! - [`BusyboxRootfs`]: a root filesystem from Debian's `busybox-static`
//!   for amd64 or arm64;
//! - [`TokenRegistry`]: a fake bearer-token registry whose token service
//!   can answer normally, endlessly or with a huge announced length.
#![warn(missing_docs)]

mod busybox;
mod faultproxy;
mod rawtar;
mod sshd;
mod tokenreg;

pub use faultproxy::{Action, FaultProxy, Rule, Seen};

pub use rawtar::{hostile_hardlinks, hostile_layer, RawEntry, RawKind, RawTar};

pub use busybox::{
    busybox_binary, cache_dir, ensure_foreign_arch, host_arch, write_base_context, BusyboxRootfs,
    BASE_DOCKERFILE,
};
pub use sshd::{fingerprint, keygen, Sshd, SSHD_BIN};
pub use tokenreg::{Content, TokenMode, TokenRegistry};

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors from the test bed.
#[derive(Debug)]
pub enum TestbedError {
    /// A command is not installed.
    Missing(String),
    /// A command failed.
    Command {
        /// What was run.
        cmd: String,
        /// Its status and output.
        detail: String,
    },
    /// An I/O error.
    Io(String, std::io::Error),
    /// A server did not come up.
    Startup(String),
}

impl fmt::Display for TestbedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestbedError::Missing(c) => write!(f, "{c} is not installed"),
            TestbedError::Command { cmd, detail } => write!(f, "`{cmd}` failed: {detail}"),
            TestbedError::Io(what, e) => write!(f, "{what}: {e}"),
            TestbedError::Startup(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for TestbedError {}

/// Result with [`TestbedError`].
pub type Result<T, E = TestbedError> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestbedError {
    let what = what.into();
    move |e| TestbedError::Io(what, e)
}

/// Print why a test is skipped, in the one format CI greps for.
pub fn skip(reason: &str) {
    println!("SKIPPED: {reason}");
    eprintln!("SKIPPED: {reason}");
}

/// `Some(())` when running as root; otherwise prints `SKIPPED` and `None`.
pub fn require_root() -> Option<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Some(())
    } else {
        skip("needs root");
        None
    }
}

/// The path of `name` on `PATH`, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The path of `name` when installed; otherwise prints `SKIPPED` and `None`.
pub fn require_cmd(name: &str) -> Option<PathBuf> {
    let found = which(name);
    if found.is_none() {
        skip(&format!("{name} is not installed"));
    }
    found
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A port on 127.0.0.1 that nothing listens on (for "unreachable" tests).
pub fn closed_port() -> u16 {
    free_port()
}

/// Run a command, returning stdout; a non-zero exit is an error with stderr.
pub fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TestbedError::Missing(format!("{:?}", cmd.get_program()))
        } else {
            TestbedError::Io(shown.clone(), e)
        }
    })?;
    if !out.status.success() {
        return Err(TestbedError::Command {
            cmd: shown,
            detail: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// The registry binary Debian installs.
pub const REGISTRY_BIN: &str = "docker-registry";

/// A CNCF distribution registry on `127.0.0.1:<free port>` with filesystem
/// storage in a temp dir and deletes enabled. Stopped and reaped on drop.
///
/// The server is also killed if the thread that started it dies
/// (`PR_SET_PDEATHSIG`), so keep a `Registry` in the test that made it.
pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    creds: Option<(String, String)>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host())
            .field("auth", &self.creds.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl Registry {
    /// Start an anonymous registry.
    pub fn start() -> Result<Registry> {
        Registry::launch(None)
    }

    /// Start a registry that requires `user`/`pass` (bcrypt htpasswd).
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Result<Registry> {
        Registry::launch(Some((user.to_string(), pass.to_string())))
    }

    /// [`Registry::start`], or `None` with `SKIPPED` when `docker-registry`
    /// is not installed. Panics when it is installed but does not start.
    pub fn start_or_skip() -> Option<Registry> {
        require_cmd(REGISTRY_BIN)?;
        Some(Registry::start().unwrap_or_else(|e| panic!("registry did not start: {e}")))
    }

    /// [`Registry::start_with_htpasswd`], or `None` with `SKIPPED` when
    /// `docker-registry` or `htpasswd` is not installed.
    pub fn start_with_htpasswd_or_skip(user: &str, pass: &str) -> Option<Registry> {
        require_cmd(REGISTRY_BIN)?;
        require_cmd("htpasswd")?;
        Some(
            Registry::start_with_htpasswd(user, pass)
                .unwrap_or_else(|e| panic!("registry did not start: {e}")),
        )
    }

    fn launch(creds: Option<(String, String)>) -> Result<Registry> {
        let bin = which(REGISTRY_BIN).ok_or_else(|| TestbedError::Missing(REGISTRY_BIN.into()))?;
        let mut dir = tempfile::Builder::new()
            .prefix("xbuild-registry-")
            .tempdir()
            .map_err(io_err("create temp dir"))?;
        let auth = match &creds {
            Some((u, p)) => {
                let line = run(Command::new("htpasswd").args(["-Bbn", u, p]))?;
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, line).map_err(io_err("write htpasswd"))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: xbuild-test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        // Another process may grab the port between probe and bind: retry.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n{auth}",
                root = dir.path().join("data").display(),
            );
            let cfg_path = dir.path().join("config.yml");
            std::fs::write(&cfg_path, config).map_err(io_err("write registry config"))?;
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path).map_err(io_err("create registry log"))?;
            let log2 = log.try_clone().map_err(io_err("dup registry log"))?;
            let mut cmd = Command::new(&bin);
            cmd.arg("serve")
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2);
            // SAFETY: prctl is async-signal-safe; nothing else runs here.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .map_err(io_err(format!("spawn {}", bin.display())))?;
            let mut reg = Registry {
                child: Some(child),
                dir,
                port,
                creds: creds.clone(),
            };
            match reg.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return Ok(reg),
                Err(e) => {
                    reg.stop();
                    last = format!(
                        "{e}; log: {}",
                        std::fs::read_to_string(&log_path)
                            .unwrap_or_default()
                            .trim()
                    );
                    dir = std::mem::replace(
                        &mut reg.dir,
                        tempfile::tempdir().map_err(io_err("create temp dir"))?,
                    );
                }
            }
        }
        Err(TestbedError::Startup(format!(
            "docker-registry did not start: {last}"
        )))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(TestbedError::Startup(format!("registry exited: {status}")));
                }
            }
            if let Some(code) = http_status(self.port, "/v2/") {
                if code == 200 || code == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(TestbedError::Startup(format!(
                    "registry on port {} did not answer /v2/ within {timeout:?}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`, the registry part of references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host()/repo_and_tag`, e.g. `registry.reference("app:1")`.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.host())
    }

    /// The user and password of an htpasswd registry.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's storage and config directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Stop the server (SIGTERM, then SIGKILL after 5 s) and reap it.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child);
        }
    }
}

/// Stops a server we started: SIGTERM, then SIGKILL after 5 s; reaps it.
pub(crate) fn stop_child(mut child: Child) {
    // SAFETY: the pid is our own live (or zombie) child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The HTTP status of `GET path` on `127.0.0.1:port`, or `None` when
/// nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = format!("127.0.0.1:{port}");
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let line = std::str::from_utf8(&buf[..got]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn skopeo(args: &[&str]) -> Result<Vec<u8>> {
    let bin = which("skopeo").ok_or_else(|| TestbedError::Missing("skopeo".into()))?;
    run(Command::new(bin).args(args))
}

fn docker_ref(reference: &str) -> String {
    if reference.contains("://") || reference.starts_with("docker:") {
        reference.to_string()
    } else {
        format!("docker://{reference}")
    }
}

/// The exact manifest bytes skopeo fetches for `reference`
/// (`skopeo inspect --raw --tls-verify=false`); `creds` is `user:pass`.
pub fn skopeo_inspect_raw_bytes(reference: &str, creds: Option<&str>) -> Result<Vec<u8>> {
    let r = docker_ref(reference);
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    if let Some(c) = creds {
        args.extend(["--creds", c]);
    }
    args.push(&r);
    skopeo(&args)
}

/// `skopeo inspect --raw --tls-verify=false docker://REF` as JSON.
pub fn skopeo_inspect_raw(reference: &str) -> Result<serde_json::Value> {
    let b = skopeo_inspect_raw_bytes(reference, None)?;
    parse_json(&b, reference)
}

/// `skopeo inspect --config --tls-verify=false docker://REF` as JSON (for an
/// index, skopeo picks its own platform; pass a digest reference to choose).
pub fn skopeo_inspect_config(reference: &str) -> Result<serde_json::Value> {
    let r = docker_ref(reference);
    let b = skopeo(&["inspect", "--config", "--tls-verify=false", &r])?;
    parse_json(&b, reference)
}

/// The tags of repository `image` (`skopeo list-tags`); empty when the
/// repository has none or is unknown to the registry.
pub fn skopeo_list_tags_or_empty(image: &str) -> Vec<String> {
    let r = docker_ref(image);
    match skopeo(&["list-tags", "--tls-verify=false", &r]) {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
            .ok()
            .and_then(|v| {
                v["Tags"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// `skopeo inspect --tls-verify=false docker://REF` as JSON (has `Digest`).
pub fn skopeo_inspect(reference: &str) -> Result<serde_json::Value> {
    let r = docker_ref(reference);
    let b = skopeo(&["inspect", "--tls-verify=false", &r])?;
    parse_json(&b, reference)
}

fn parse_json(b: &[u8], reference: &str) -> Result<serde_json::Value> {
    serde_json::from_slice(b).map_err(|e| TestbedError::Command {
        cmd: format!("skopeo inspect {reference}"),
        detail: format!("invalid JSON: {e}"),
    })
}

/// `sha256:<hex>` of `bytes`, computed with `sha256sum` (no hashing crate
/// needed here, and an independent check of ours).
pub fn sha256_digest(bytes: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(io_err("run sha256sum"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(bytes)
        .map_err(io_err("write to sha256sum"))?;
    let out = child.wait_with_output().map_err(io_err("sha256sum"))?;
    let s = String::from_utf8_lossy(&out.stdout);
    Ok(format!(
        "sha256:{}",
        s.split_whitespace().next().unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_starts_and_stops() {
        let Some(reg) = Registry::start_or_skip() else {
            return;
        };
        let port = reg.port();
        assert_eq!(http_status(port, "/v2/"), Some(200));
        assert!(reg.host().starts_with("127.0.0.1:"));
        drop(reg);
        assert_eq!(http_status(port, "/v2/"), None);
    }

    #[test]
    fn htpasswd_registry_wants_auth() {
        let Some(reg) = Registry::start_with_htpasswd_or_skip("u", "p") else {
            return;
        };
        assert_eq!(http_status(reg.port(), "/v2/"), Some(401));
        assert_eq!(reg.credentials(), Some(("u", "p")));
    }

    #[test]
    fn which_finds_sh() {
        assert!(which("sh").is_some());
        assert!(which("definitely-not-a-command-xyz").is_none());
        assert_eq!(http_status(closed_port(), "/"), None);
    }

    #[test]
    fn sha256_matches_known_vector() {
        if require_cmd("sha256sum").is_none() {
            return;
        }
        assert_eq!(
            sha256_digest(b"abc").unwrap(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
