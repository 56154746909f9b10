//! The sandbox init: a single-threaded helper process started by
//! [`LinuxExecutor`](crate::LinuxExecutor).
//!
//! It reads its [`InitRequest`], unshares the namespaces and forks. The child
//! is PID 1 of the new PID namespace: it builds the mounts, enters the root
//! filesystem, switches user and executes the command. The parent stays
//! outside the PID namespace, forwards termination signals, waits and exits
//! with the command's status. Both report to the executor over the report
//! pipe ([`crate::protocol`]).

use std::convert::Infallible;
use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{
    sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};

use crate::protocol::{send, InitRequest, Report, FDS_ENV};
use crate::user::{self, ResolvedUser};
use crate::{caps, mounts, netns, seccomp, InitError, NetworkMode};

/// Docker's default `PATH` for Linux containers.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit status of the init when it could not start the command (the real
/// reason travels over the report pipe).
const SETUP_FAILED: i32 = 125;

/// The command's pid, for the signal forwarder.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Entry point of the sandbox init program. The `xbuild` binary calls it from
/// a hidden subcommand, and this crate's `xbuild-sandbox-init` binary from its
/// `main`. It expects the pipes set up by
/// [`LinuxExecutor`](crate::LinuxExecutor) and exits with the command's
/// status (`128 + n` when killed by signal `n`), or 125 when the sandbox
/// could not be set up. It never prints.
pub fn init_main() -> ! {
    std::process::exit(run())
}

fn run() -> i32 {
    let Some((spec_fd, report_fd)) = std::env::var(FDS_ENV).ok().and_then(|v| parse_fds(&v)) else {
        return SETUP_FAILED;
    };
    // SAFETY: the executor opened these two fds for us and named them in the
    // environment; nothing else in this process owns them.
    let (spec, report) = unsafe {
        (
            OwnedFd::from_raw_fd(spec_fd),
            OwnedFd::from_raw_fd(report_fd),
        )
    };
    // The executor cleared close-on-exec to pass them; the command must not
    // inherit the report pipe, nor anything else the caller leaked.
    set_cloexec(report.as_raw_fd());
    close_other_fds(&[spec_fd, report_fd]);
    // Die with the executor (the child does the same with us, so the whole
    // PID namespace goes away).
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };

    let req = match read_request(spec) {
        Ok(req) => req,
        Err(error) => {
            let _ = send(report.as_fd(), &Report::Error { error });
            return SETUP_FAILED;
        }
    };
    match start(&req, report.as_fd()) {
        Ok(code) => code,
        Err(error) => {
            let _ = send(report.as_fd(), &Report::Error { error });
            SETUP_FAILED
        }
    }
}

fn parse_fds(value: &str) -> Option<(RawFd, RawFd)> {
    let (a, b) = value.split_once(',')?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a > 2 && b > 2 && a != b).then_some((a, b))
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// Closes every fd above 2 except `keep`.
fn close_other_fds(keep: &[RawFd]) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing fds this process does not otherwise use (the
            // directory handle above is already gone; EBADF is harmless).
            unsafe { libc::close(fd) };
        }
    }
}

fn read_request(spec: OwnedFd) -> Result<InitRequest, InitError> {
    let mut bytes = Vec::new();
    std::fs::File::from(spec)
        .read_to_end(&mut bytes)
        .map_err(|e| InitError::Request {
            message: format!("read request pipe: {e}"),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| InitError::Request {
        message: e.to_string(),
    })
}

/// Unshares, forks and waits; returns the exit status to exit with.
fn start(req: &InitRequest, report: BorrowedFd<'_>) -> Result<i32, InitError> {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    let mut network = None;
    match req.spec.network {
        NetworkMode::Host => {}
        NetworkMode::None => flags |= CloneFlags::CLONE_NEWNET,
        NetworkMode::Isolated => {
            let pasta = req.pasta.as_deref().ok_or_else(|| InitError::Network {
                message: "no pasta program was given".to_string(),
            })?;
            // The launcher must be forked while this process is still in the
            // host's network namespace; pasta joins the new one from there.
            let launcher = netns::spawn_launcher(pasta)?;
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| InitError::syscall("unshare(CLONE_NEWNET)", &e.into()))?;
            if let Some(launcher) = launcher {
                network = Some(launcher.start()?);
            }
        }
    }
    let result = unshare_and_fork(req, flags, report);
    if let Some(running) = network {
        running.stop();
    }
    result
}

fn unshare_and_fork(
    req: &InitRequest,
    flags: CloneFlags,
    report: BorrowedFd<'_>,
) -> Result<i32, InitError> {
    unshare(flags).map_err(|e| InitError::syscall(format!("unshare({flags:?})"), &e.into()))?;

    // SAFETY: this process is single-threaded (nothing above spawns threads),
    // so the child may allocate and do anything before it executes.
    match unsafe { fork() }.map_err(|e| InitError::syscall("fork", &e.into()))? {
        ForkResult::Child => {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            let Err(error) = child(req, report);
            let _ = send(report, &Report::Error { error });
            // SAFETY: leave without running atexit handlers of the parent.
            unsafe { libc::_exit(SETUP_FAILED) }
        }
        ForkResult::Parent { child } => wait_for(child, report),
    }
}

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Forwards termination signals to `child`, waits for it and reports.
fn wait_for(child: Pid, report: BorrowedFd<'_>) -> Result<i32, InitError> {
    CHILD.store(child.as_raw(), Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(forward_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: the handler only loads an atomic and calls kill.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| InitError::syscall(format!("sigaction({sig})"), &e.into()))?;
    }
    loop {
        let (code, signal) = match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => (code, None),
            Ok(WaitStatus::Signaled(_, sig, _)) => (128 + sig as i32, Some(sig as i32)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(InitError::syscall("waitpid", &e.into())),
        };
        let _ = send(report, &Report::Exited { code, signal });
        return Ok(code);
    }
}

/// Everything the child does; returns only on failure.
fn child(req: &InitRequest, report: BorrowedFd<'_>) -> Result<Infallible, InitError> {
    umask(Mode::empty());
    let last_cap = caps::last_cap();
    // Built before anything else so that a bad profile fails early; loaded
    // last, right before execve.
    let filter = match req.spec.insecure {
        true => None,
        false => Some(seccomp::compile(
            &seccomp::Profile::docker_default(),
            &seccomp::Target {
                arch: seccomp::native_arch(),
                caps: caps::DOCKER_DEFAULT_NAMES,
                kernel: seccomp::running_kernel(),
            },
        )?),
    };
    let user = user::resolve(&req.rootfs, &req.spec.user)?;
    mounts::prepare(req, &mut |path| {
        let _ = send(
            report,
            &Report::Created {
                path: path.to_path_buf(),
            },
        );
    })?;
    if !req.spec.hostname.is_empty() {
        nix::unistd::sethostname(&req.spec.hostname)
            .map_err(|e| InitError::syscall("sethostname", &e.into()))?;
    }
    if req.spec.network != NetworkMode::Host {
        loopback_up()?;
    }
    mounts::enter_root(&req.rootfs, req.no_pivot)?;

    let env = build_env(&req.spec.env, &user);
    let cwd = Path::new("/").join(&req.spec.cwd);
    enter_cwd(&cwd, &user)?;
    // While still root with every capability: raising a hard limit needs
    // CAP_SYS_RESOURCE (runc, too, sets them before the user switch).
    set_rlimits(&req.spec.rlimits)?;
    let all = caps::all_mask(last_cap);
    if req.spec.insecure {
        // Every capability, for root and (through the ambient set) for any
        // other user too, as BuildKit's insecure mode.
        caps::keep_caps(true)?;
        switch_user(&user)?;
        caps::keep_caps(false)?;
        caps::set(all, all, all)?;
        caps::raise_ambient(all, last_cap)?;
    } else {
        caps::limit_bounding(caps::docker_default_mask(), last_cap)?;
        switch_user(&user)?;
        // Root keeps Docker's set; another user has none (the kernel
        // cleared them at setuid, and execve would anyway).
        let set = if user.uid == 0 {
            caps::docker_default_mask()
        } else {
            0
        };
        caps::set(set, set, set)?;
        caps::clear_ambient()?;
        caps::no_new_privs()?;
    }
    umask(Mode::from_bits_truncate(0o022));
    reset_signals();

    let name = req.spec.args.first().ok_or_else(|| InitError::Request {
        message: "empty command".to_string(),
    })?;
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let program = look_path(name, path_var)?;
    if let Some(filter) = &filter {
        filter.load()?;
    }
    exec(&program, &req.spec.args, &env)
}

/// The type `setrlimit` takes its resource as (glibc has its own).
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// The `RLIMIT_*` resource of a Docker `--ulimit` name.
fn rlimit_resource(name: &str) -> Option<Resource> {
    Some(match name {
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

/// Sets each limit with `setrlimit`; a failure names the limit and, when it
/// can, why (the worker's own hard limit, `fs.nr_open`).
fn set_rlimits(limits: &[crate::Rlimit]) -> Result<(), InitError> {
    let raw = |v: Option<u64>| v.unwrap_or(libc::RLIM_INFINITY);
    let shown = |v: Option<u64>| v.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    for l in limits {
        let resource = rlimit_resource(&l.name).ok_or_else(|| InitError::Request {
            message: format!("unknown resource limit {:?}", l.name),
        })?;
        let want = libc::rlimit {
            rlim_cur: raw(l.soft),
            rlim_max: raw(l.hard),
        };
        // SAFETY: `want` is a valid rlimit that outlives the call.
        if unsafe { libc::setrlimit(resource, &want) } == 0 {
            continue;
        }
        let err = io::Error::last_os_error();
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `now` is a valid out-parameter.
        let have = (unsafe { libc::getrlimit(resource, &mut now) } == 0).then_some(now.rlim_max);
        let mut hint = String::new();
        if let Some(have) = have.filter(|h| want.rlim_max > *h) {
            let have = if have == libc::RLIM_INFINITY {
                "unlimited".to_string()
            } else {
                have.to_string()
            };
            hint = format!(
                " (the worker's hard limit is {have}; raising it needs CAP_SYS_RESOURCE, \
                 i.e. xbuild running as root)"
            );
        }
        if l.name == "nofile" && err.raw_os_error() == Some(libc::EPERM) {
            if let Ok(max) = std::fs::read_to_string("/proc/sys/fs/nr_open") {
                if want.rlim_max > max.trim().parse::<u64>().unwrap_or(u64::MAX) {
                    hint = format!(
                        " (nofile cannot exceed the kernel's fs.nr_open, {}, on this worker)",
                        max.trim()
                    );
                }
            }
        }
        return Err(InitError::Rlimit {
            name: l.name.clone(),
            soft: shown(l.soft),
            hard: shown(l.hard),
            errno: err.raw_os_error().unwrap_or(0),
            message: err.to_string(),
            hint,
        });
    }
    Ok(())
}

/// The spec's environment, plus Docker's default `PATH` and the user's `HOME`
/// when they are not set.
fn build_env(env: &[String], user: &ResolvedUser) -> Vec<String> {
    let mut out = env.to_vec();
    let has = |key: &str| {
        env.iter()
            .any(|e| e.split_once('=').map(|(k, _)| k) == Some(key))
    };
    if !has("PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOME") {
        out.push(format!("HOME={}", user.home));
    }
    out
}

/// `chdir` to the working directory, creating missing directories owned by
/// the user first, as Docker does for `WORKDIR`.
fn enter_cwd(cwd: &Path, user: &ResolvedUser) -> Result<(), InitError> {
    let mut cur = PathBuf::from("/");
    for part in cwd.components().skip(1) {
        cur.push(part);
        match std::fs::create_dir(&cur) {
            Ok(()) => {
                std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| InitError::path("chmod", &cur, &e))?;
                std::os::unix::fs::chown(&cur, Some(user.uid), Some(user.gid))
                    .map_err(|e| InitError::path("chown", &cur, &e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(InitError::path("mkdir", &cur, &e)),
        }
    }
    nix::unistd::chdir(cwd).map_err(|e| InitError::path("chdir", cwd, &e.into()))
}

fn switch_user(user: &ResolvedUser) -> Result<(), InitError> {
    let groups: Vec<Gid> = user
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| InitError::syscall("setgroups", &e.into()))?;
    nix::unistd::setgid(Gid::from_raw(user.gid))
        .map_err(|e| InitError::syscall(format!("setgid({})", user.gid), &e.into()))?;
    nix::unistd::setuid(Uid::from_raw(user.uid))
        .map_err(|e| InitError::syscall(format!("setuid({})", user.uid), &e.into()))
}

/// Default dispositions for every signal and an empty mask. Ignored signals
/// survive `execve`: the init (a Rust program) ignores `SIGPIPE`, and callers
/// may ignore real-time signals that libc's `sigaction` refuses to touch
/// (32 and 33), so this uses the raw syscall.
fn reset_signals() {
    // An all-zero kernel `struct sigaction` is SIG_DFL with no flags and an
    // empty mask, whatever the architecture's field order.
    let dfl = [0u64; 8];
    // The kernel's sigset size: 64 signals.
    const SIGSET_SIZE: usize = 8;
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `dfl` is larger than any kernel sigaction and outlives the
        // call; no old action is requested.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                dfl.as_ptr(),
                std::ptr::null_mut::<u64>(),
                SIGSET_SIZE,
            )
        };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Finds `name` like `exec.LookPath` (which Docker uses): a name with a `/`
/// is used as is, otherwise the first regular file with an execute bit in
/// `PATH` (an empty entry meaning the working directory).
fn look_path(name: &str, path_var: &str) -> Result<String, InitError> {
    if name.contains('/') {
        return Ok(name.to_string());
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate.to_string_lossy().into_owned());
            }
        }
    }
    Err(InitError::ExecutableNotFound {
        name: name.to_string(),
        path: path_var.to_string(),
    })
}

fn cstring(s: &[u8], what: &str) -> Result<CString, InitError> {
    CString::new(s).map_err(|_| InitError::Request {
        message: format!("{what} contains a NUL byte"),
    })
}

fn exec(program: &str, args: &[String], env: &[String]) -> Result<Infallible, InitError> {
    let path = cstring(Path::new(program).as_os_str().as_bytes(), "the program")?;
    let argv = args
        .iter()
        .map(|a| cstring(a.as_bytes(), "an argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|e| cstring(e.as_bytes(), "an environment variable"))
        .collect::<Result<Vec<_>, _>>()?;
    let errno = match nix::unistd::execve(&path, &argv, &envp) {
        Err(errno) => errno,
        Ok(never) => match never {},
    };
    if errno == nix::errno::Errno::ENOEXEC {
        return Err(InitError::ExecFormat {
            path: program.to_string(),
        });
    }
    let err: io::Error = errno.into();
    Err(InitError::Exec {
        path: program.to_string(),
        errno: errno as i32,
        message: err.to_string(),
    })
}

/// Brings up `lo` in a new network namespace, as Docker's `none` network has.
fn loopback_up() -> Result<(), InitError> {
    let fail = |call: &str| InitError::syscall(format!("{call} lo"), &io::Error::last_os_error());
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(fail("socket for"));
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which lives
    // across the calls; the union member used is the flags one.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(fail("ioctl(SIOCGIFFLAGS)"));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(fail("ioctl(SIOCSIFFLAGS)"));
        }
    }
    Ok(())
}
