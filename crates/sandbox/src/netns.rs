//! The default network of a `RUN` step: its own network namespace, with
//! outbound access through `pasta` (the user-space network stack of the
//! `passt` project), as `docker build` gives a step its own network.
//!
//! pasta runs in the host's network namespace, creates a tap interface in
//! the step's namespace, copies the host's addresses and routes onto it and
//! turns the step's traffic into ordinary sockets of its own. It is started
//! with every port forwarding off (`-t none -u none -T none -U none`: the
//! step can neither expose a port on the host nor reach ports bound on the
//! host's loopback) and without the gateway-to-host mapping (`--no-map-gw`),
//! so the host's `127.0.0.1` services are out of reach.
//!
//! The sandbox init is single-threaded and must stay in the host's network
//! namespace until the step's namespace exists, so the work is split:
//!
//! 1. before the init unshares anything it forks a *launcher*, which waits;
//! 2. the init unshares the network namespace and forks a *holder*, a
//!    process in the new namespace without any capability (pasta, which
//!    keeps only a few capabilities, may open its namespace file only when
//!    its own capabilities cover the target's);
//! 3. the launcher executes pasta on `/proc/<holder>/ns/net`;
//! 4. the init waits until the namespace has the default routes the host
//!    has, then goes on to start the step. When the step ends, the init
//!    kills pasta and the holder (both also die with the init).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::InitError;

/// How long pasta may take to configure the namespace (a loaded machine
/// can be slow; an idle one needs a few milliseconds).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variable naming the pasta program (default: `pasta` in `PATH`).
pub const PASTA_ENV: &str = "XBUILD_PASTA";

/// Finds the pasta program: `$XBUILD_PASTA`, else `pasta` in `PATH`, else
/// the usual install locations.
pub fn find_pasta() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(PASTA_ENV) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join("pasta"))
        .find(|p| p.is_file())
}

/// The arguments pasta gets, before `--netns PATH`.
pub fn pasta_args() -> Vec<&'static str> {
    vec![
        "--config-net",
        "--foreground",
        "--quiet",
        // As root without a user namespace, pasta would otherwise switch to
        // `nobody` and lose the capabilities it needs to join the namespace.
        // It still drops everything else and isolates itself.
        "--runas",
        "0:0",
        "--tcp-ports",
        "none",
        "--udp-ports",
        "none",
        "--tcp-ns",
        "none",
        "--udp-ns",
        "none",
        "--no-map-gw",
    ]
}

/// Which address families have a default route in the current namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Families {
    v4: bool,
    v6: bool,
}

pub(crate) fn default_routes() -> Families {
    let v4 = std::fs::read_to_string("/proc/self/net/route")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 7 && f[1] == "00000000" && f[7] == "00000000"
            })
        })
        .unwrap_or(false);
    let v6 = std::fs::read_to_string("/proc/self/net/ipv6_route")
        .map(|t| {
            t.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 9 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo"
            })
        })
        .unwrap_or(false);
    Families { v4, v6 }
}

/// The launcher, forked before the namespace exists.
pub(crate) struct Launcher {
    pid: Pid,
    go: OwnedFd,
    errors: OwnedFd,
    want: Families,
}

/// pasta and the holder, running.
pub(crate) struct Running {
    pasta: Pid,
    holder: Pid,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), InitError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| InitError::syscall("pipe2", &e.into()))
}

fn fail(message: impl Into<String>) -> InitError {
    InitError::Network {
        message: message.into(),
    }
}

/// Closes every fd from `from` on.
fn close_from(from: RawFd) {
    // SAFETY: close_range on fds this (forked, single-threaded) process
    // owns; errors (old kernels) fall back to closing one by one.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, from as u32, u32::MAX, 0u32) };
    if rc < 0 {
        for fd in from..1024 {
            // SAFETY: closing possibly-unused fds; EBADF is harmless.
            unsafe { libc::close(fd) };
        }
    }
}

/// Forks the launcher. Call before unsharing the network namespace.
/// `None` when the host has no default route: there is nowhere to go, and
/// the step gets a namespace with only `lo` (what pasta would give it).
pub(crate) fn spawn_launcher(pasta: &Path) -> Result<Option<Launcher>, InitError> {
    let want = default_routes();
    if !want.v4 && !want.v6 {
        return Ok(None);
    }
    let program = std::ffi::CString::new(pasta.as_os_str().as_encoded_bytes())
        .map_err(|_| fail("the pasta path contains a NUL byte"))?;
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // SAFETY: the init is single-threaded; the child only reads a pipe,
    // rearranges fds and executes pasta.
    match unsafe { fork() }.map_err(|e| InitError::syscall("fork (pasta launcher)", &e.into()))? {
        ForkResult::Child => {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            drop(go_w);
            drop(err_r);
            let mut text = String::new();
            let mut go = std::fs::File::from(go_r);
            if go.read_to_string(&mut text).is_err() {
                // SAFETY: leave without running the parent's handlers.
                unsafe { libc::_exit(0) };
            }
            let Ok(holder) = text.trim().parse::<i32>() else {
                // SAFETY: as above.
                unsafe { libc::_exit(0) };
            };
            drop(go);
            let netns = format!("/proc/{holder}/ns/net");
            let mut argv: Vec<std::ffi::CString> = vec![program.clone()];
            for a in pasta_args().into_iter().chain(["--netns", netns.as_str()]) {
                argv.push(std::ffi::CString::new(a).expect("no NUL in pasta arguments"));
            }
            // SAFETY: plain fd juggling in a single-threaded child.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                libc::dup2(null, 0);
                libc::dup2(err_w.as_raw_fd(), 1);
                libc::dup2(err_w.as_raw_fd(), 2);
            }
            close_from(3);
            // The init (a Rust program) ignores SIGPIPE, and ignored signals
            // survive execve; pasta takes an inherited SIG_IGN for a failure.
            // SAFETY: resetting dispositions and the mask before execve.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            }
            let env: [&std::ffi::CStr; 1] = [c"PATH=/usr/sbin:/usr/bin:/sbin:/bin"];
            let _ = nix::unistd::execve(&program, &argv, &env);
            let msg = format!("exec {}: {}\n", pasta.display(), io::Error::last_os_error());
            // SAFETY: writing to our own stderr, then leaving.
            unsafe {
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(127)
            }
        }
        ForkResult::Parent { child } => Ok(Some(Launcher {
            pid: child,
            go: go_w,
            errors: err_r,
            want,
        })),
    }
}

/// Forks a holder of the current (new) network namespace: it drops every
/// capability, says so, and waits to be killed. Returns once the holder has
/// dropped them (pasta may open its namespace only then).
fn spawn_holder() -> Result<Pid, InitError> {
    let (ready_r, ready_w) = pipe()?;
    // SAFETY: the init is single-threaded; the child only makes syscalls.
    match unsafe { fork() }.map_err(|e| InitError::syscall("fork (netns holder)", &e.into()))? {
        ForkResult::Child => {
            let ready = ready_w.as_raw_fd();
            // SAFETY: prctl/dup2/close with plain arguments.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                libc::dup2(ready, 3);
                close_from(4);
                for fd in 0..3 {
                    libc::close(fd);
                }
            }
            if crate::caps::set(0, 0, 0).is_err() {
                // SAFETY: leave at once (the parent sees EOF, no byte).
                unsafe { libc::_exit(1) };
            }
            // SAFETY: as above; fd 3 is the ready pipe.
            unsafe {
                libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
                libc::write(3, b"1".as_ptr().cast(), 1);
                libc::close(3);
                loop {
                    libc::pause();
                }
            }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            let mut byte = [0u8; 1];
            let n = std::fs::File::from(ready_r).read(&mut byte).unwrap_or(0);
            if n != 1 {
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(fail(
                    "the network namespace holder could not drop its capabilities",
                ));
            }
            Ok(child)
        }
    }
}

impl Launcher {
    /// Starts pasta on the current network namespace (unshared after the
    /// launcher was forked) and waits until it is configured.
    pub(crate) fn start(self) -> Result<Running, InitError> {
        let holder = spawn_holder()?;
        let running = Running {
            pasta: self.pid,
            holder,
        };
        let mut go = std::fs::File::from(self.go);
        let sent = go.write_all(holder.as_raw().to_string().as_bytes());
        drop(go);
        if let Err(e) = sent {
            running.stop();
            return Err(fail(format!("start pasta: {e}")));
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let now = default_routes();
            if (!self.want.v4 || now.v4) && (!self.want.v6 || now.v6) {
                return Ok(running);
            }
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => {
                    let _ = kill(holder, Signal::SIGKILL);
                    let _ = waitpid(holder, None);
                    return Err(fail(format!(
                        "pasta ended before the network was ready ({status:?}): {}",
                        read_errors(self.errors)
                    )));
                }
                Err(e) => {
                    running.stop();
                    return Err(InitError::syscall("waitpid (pasta)", &e.into()));
                }
            }
            if Instant::now() > deadline {
                running.stop();
                return Err(fail(format!(
                    "pasta did not configure the network within {}s: {}",
                    READY_TIMEOUT.as_secs(),
                    read_errors(self.errors)
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// What pasta printed, without its complaints about a missing syslog.
fn read_errors(fd: OwnedFd) -> String {
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut text = String::new();
    let _ = std::fs::File::from(fd).read_to_string(&mut text);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("to syslog"))
        .collect();
    if lines.is_empty() {
        "no message".to_string()
    } else {
        lines.join("; ")
    }
}

impl Running {
    /// Kills pasta and the holder and reaps them.
    pub(crate) fn stop(self) {
        for pid in [self.pasta, self.holder] {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}
