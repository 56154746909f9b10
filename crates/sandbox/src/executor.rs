//! [`LinuxExecutor`]: spawns the sandbox init, feeds it the request, streams
//! the process's output and collects the init's reports.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use nix::fcntl::OFlag;

use crate::protocol::{decode, InitRequest, FDS_ENV};
use crate::{Executor, MountKind, NetworkMode, OutputStream, ProcessSpec, RunResult, SandboxError};

/// Runs processes in Linux namespaces through a re-executed init helper (see
/// the [crate documentation](crate)). Needs root (`CAP_SYS_ADMIN`), no
/// cgroups and no daemon.
#[derive(Debug, Clone)]
pub struct LinuxExecutor {
    init_program: PathBuf,
    init_args: Vec<String>,
    no_pivot: bool,
}

impl LinuxExecutor {
    /// An executor that starts `init_program init_args...` for each process;
    /// that program must call [`init_main`](crate::init_main) (the `xbuild`
    /// binary does in a hidden subcommand, `xbuild-sandbox-init` does in its
    /// `main`).
    pub fn new(init_program: impl Into<PathBuf>, init_args: Vec<String>) -> Self {
        LinuxExecutor {
            init_program: init_program.into(),
            init_args,
            no_pivot: false,
        }
    }

    /// Uses `chroot` instead of `pivot_root` (which is also the automatic
    /// fallback when `pivot_root` fails, e.g. when the host root is the
    /// initramfs). `chroot` leaves the host's mounts reachable to a process
    /// that can escape a chroot; prefer the default.
    pub fn with_chroot(mut self, chroot: bool) -> Self {
        self.no_pivot = chroot;
        self
    }

    /// The init program.
    pub fn init_program(&self) -> &Path {
        &self.init_program
    }
}

impl Executor for LinuxExecutor {
    fn run(
        &self,
        rootfs: &Path,
        spec: &ProcessSpec,
        output: &mut dyn FnMut(OutputStream, &[u8]),
    ) -> Result<RunResult, SandboxError> {
        validate(spec)?;
        if crate::cancel::is_cancelled() {
            return Err(SandboxError::Cancelled);
        }
        let rootfs = std::fs::canonicalize(rootfs).map_err(|source| SandboxError::Rootfs {
            path: rootfs.to_path_buf(),
            source,
        })?;
        if !rootfs.is_dir() {
            return Err(SandboxError::Rootfs {
                path: rootfs,
                source: io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        let hostname_file = match spec.hostname.is_empty() {
            true => None,
            false => Some(TempFile::create(format!("{}\n", spec.hostname).as_bytes())?),
        };
        let pasta = match spec.network {
            NetworkMode::Isolated => {
                Some(crate::netns::find_pasta().ok_or(SandboxError::PastaMissing)?)
            }
            _ => None,
        };
        let request = InitRequest {
            rootfs,
            spec: spec.clone(),
            hostname_file: hostname_file.as_ref().map(|f| f.0.clone()),
            no_pivot: self.no_pivot,
            pasta,
        };
        let request = serde_json::to_vec(&request).map_err(|e| SandboxError::Io {
            op: "encode sandbox request".to_string(),
            source: io::Error::other(e),
        })?;

        let (spec_r, spec_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        let passed = [spec_r.as_raw_fd(), report_w.as_raw_fd()];
        let mut cmd = Command::new(&self.init_program);
        cmd.args(&self.init_args)
            .env(FDS_ENV, format!("{},{}", passed[0], passed[1]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C on the caller's terminal goes
            // to the caller, which stops its sandboxes itself (cancel_all),
            // as a container's processes are not the client's to interrupt.
            .process_group(0);
        // SAFETY: the closure only calls fcntl, which is async-signal-safe.
        // Clearing close-on-exec happens in the forked child only, so other
        // threads of the caller never inherit the pipes.
        unsafe {
            cmd.pre_exec(move || {
                for fd in passed {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            program: self.init_program.clone(),
            source,
        })?;
        let pid = child.id();
        let mut child = ChildGuard(Some(child));
        // Declared after the guard: dropped (forgotten) before the guard
        // reaps the pid on an error path.
        let registration = crate::cancel::Registration::new(pid);
        drop(spec_r);
        drop(report_w);

        // The init reads the whole request before doing anything else. If it
        // died first, the write fails and its exit explains why.
        let mut spec_w = File::from(spec_w);
        match spec_w.write_all(&request) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(source) => return Err(io_err("write sandbox request", source)),
        }
        drop(spec_w);

        let inner = child.0.as_mut().expect("child present until waited");
        let stdout = inner.stdout.take().expect("stdout is piped");
        let stderr = inner.stderr.take().expect("stderr is piped");
        let reports = pump(stdout.into(), stderr.into(), report_r, output);
        // Forgotten before the wait reaps the pid, so it cannot be reused
        // under a kill.
        drop(registration);
        let reports = reports?;
        let status = child.wait()?;
        if crate::cancel::is_cancelled() {
            return Err(SandboxError::Cancelled);
        }
        let duration = started.elapsed();

        let decoded = decode(&reports).map_err(|detail| SandboxError::Protocol { detail })?;
        if let Some(error) = decoded.error {
            return Err(error.into());
        }
        match decoded.exited {
            Some((exit_code, signal)) => Ok(RunResult {
                exit_code,
                signal,
                created_mountpoints: decoded.created,
                duration,
            }),
            None => Err(SandboxError::InitDied {
                program: self.init_program.clone(),
                status: status.to_string(),
            }),
        }
    }
}

fn io_err(op: &str, source: io::Error) -> SandboxError {
    SandboxError::Io {
        op: op.to_string(),
        source,
    }
}

/// Checks what the init would otherwise fail on later, less clearly.
fn validate(spec: &ProcessSpec) -> Result<(), SandboxError> {
    let bad = |m: String| Err(SandboxError::InvalidSpec(m));
    if spec.args.is_empty() || spec.args[0].is_empty() {
        return bad("empty command".to_string());
    }
    let strings = spec
        .args
        .iter()
        .chain(&spec.env)
        .chain([&spec.cwd, &spec.user]);
    if strings.into_iter().any(|s| s.contains('\0')) {
        return bad("a NUL byte in the command, environment, working directory or user".into());
    }
    for m in &spec.mounts {
        let target = Path::new(&m.target);
        if !target.is_absolute() || target.components().count() < 2 {
            return bad(format!(
                "mount target {:?} is not an absolute path below /",
                m.target
            ));
        }
        let source = match &m.kind {
            MountKind::Bind { source, .. } => Some(source),
            MountKind::BindIn { root, path, .. } => {
                if path.contains('\0') {
                    return bad(format!("bind mount source {path:?} contains a NUL byte"));
                }
                Some(root)
            }
            MountKind::Tmpfs { .. } => None,
        };
        if let Some(source) = source {
            if !source.is_absolute() {
                return bad(format!(
                    "bind mount source {} is not absolute",
                    source.display()
                ));
            }
        }
    }
    for file in [&spec.etc_hosts, &spec.resolv_conf].into_iter().flatten() {
        if !file.is_absolute() {
            return bad(format!("{} is not an absolute path", file.display()));
        }
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| io_err("pipe2", e.into()))
}

/// Streams stdout and stderr to `output` and collects the report pipe, until
/// all three are closed (the PID namespace dies with the process, so nothing
/// can keep them open after it ends).
fn pump(
    stdout: OwnedFd,
    stderr: OwnedFd,
    report: OwnedFd,
    output: &mut dyn FnMut(OutputStream, &[u8]),
) -> Result<Vec<u8>, SandboxError> {
    let mut files = [
        Some(File::from(stdout)),
        Some(File::from(stderr)),
        Some(File::from(report)),
    ];
    let mut reports = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while files.iter().any(Option::is_some) {
        let mut pollfds: Vec<libc::pollfd> = files
            .iter()
            .map(|f| libc::pollfd {
                fd: f.as_ref().map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `pollfds` is a valid array of its length; negative fds are
        // ignored by poll.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io_err("poll sandbox pipes", e));
        }
        for (i, pfd) in pollfds.iter().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            let Some(file) = files[i].as_mut() else {
                continue;
            };
            let read = match file.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read sandbox pipe", e)),
            };
            if read == 0 {
                files[i] = None;
                continue;
            }
            match i {
                0 => output(OutputStream::Stdout, &buf[..read]),
                1 => output(OutputStream::Stderr, &buf[..read]),
                _ => reports.extend_from_slice(&buf[..read]),
            }
        }
    }
    Ok(reports)
}

/// Kills (and reaps) the init unless it was waited for: if the caller's
/// output callback panics, or reading fails, nothing is left running (the
/// init's death kills the sandboxed process through its parent-death signal).
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn wait(&mut self) -> Result<ExitStatus, SandboxError> {
        let mut child = self.0.take().expect("waited once");
        child.wait().map_err(|e| io_err("wait for sandbox init", e))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A host file holding the sandbox's `/etc/hostname`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn create(contents: &[u8]) -> Result<TempFile, SandboxError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            ".xbuild-sandbox-hostname-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        let create = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
        };
        // Names are unique within this process; a file that exists already
        // was left by a killed process that had our pid before us.
        let mut file = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&path);
                create()
            }
            other => other,
        }
        .map_err(|e| io_err(&format!("create {}", path.display()), e))?;
        let guard = TempFile(path);
        file.write_all(contents)
            .map_err(|e| io_err(&format!("write {}", guard.0.display()), e))?;
        Ok(guard)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_files_left_by_a_killed_process_with_our_pid_are_replaced() {
        // Under nextest every test is its own process, so the counter starts
        // at 0: the stale files sit exactly where the next names go.
        let stale: Vec<PathBuf> = (0..4)
            .map(|n| {
                std::env::temp_dir().join(format!(
                    ".xbuild-sandbox-hostname-{}-{n}",
                    std::process::id()
                ))
            })
            .collect();
        for p in &stale {
            std::fs::write(p, b"stale").unwrap();
        }
        let files: Vec<TempFile> = (0..4)
            .map(|_| TempFile::create(b"sandbox\n").unwrap())
            .collect();
        for f in &files {
            assert_eq!(std::fs::read(&f.0).unwrap(), b"sandbox\n");
        }
        drop(files);
        for p in &stale {
            let _ = std::fs::remove_file(p);
        }
    }
}
