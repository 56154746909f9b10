//! Errors of the executor ([`SandboxError`]) and of the sandbox init
//! ([`InitError`], which travels from the init back to the executor as JSON).

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::user::UserError;

/// Why the sandbox init could not start the process. Every variant names the
/// syscall and the path (inside or outside the root filesystem) that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum InitError {
    /// The request sent to the init could not be read or decoded.
    #[error("sandbox init: invalid request: {message}")]
    Request {
        /// What was wrong.
        message: String,
    },
    /// A syscall that works on no particular path failed.
    #[error("{syscall}: {message}")]
    Syscall {
        /// The syscall, with its notable arguments (`unshare(CLONE_NEWNS|...)`).
        syscall: String,
        /// `errno`.
        errno: i32,
        /// The text of `errno`.
        message: String,
    },
    /// A syscall on a path failed.
    #[error("{syscall} {path}: {message}")]
    Path {
        /// The syscall (`mkdir`, `mknod`, `chdir`, `pivot_root`, ...).
        syscall: String,
        /// The path it was given.
        path: PathBuf,
        /// `errno`.
        errno: i32,
        /// The text of `errno`.
        message: String,
    },
    /// A `mount(2)` failed.
    #[error("mount {fstype} {from} on {target} ({flags}): {message}")]
    Mount {
        /// The filesystem type, `bind` or `remount`.
        fstype: String,
        /// The mount source.
        from: String,
        /// The mount target (a host path under the root filesystem).
        target: PathBuf,
        /// Flags and data, for the record.
        flags: String,
        /// `errno`.
        errno: i32,
        /// The text of `errno`.
        message: String,
    },
    /// The `USER` could not be resolved.
    #[error(transparent)]
    User(#[from] UserError),
    /// `args[0]` has no `/` and no executable of that name is in `$PATH`.
    #[error("exec: {name:?}: executable file not found in $PATH ({path})")]
    ExecutableNotFound {
        /// `args[0]`.
        name: String,
        /// The `PATH` searched, inside the root filesystem.
        path: String,
    },
    /// `execve` returned `ENOEXEC`: a binary for another architecture with no
    /// emulator registered in binfmt_misc, or a script without `#!`.
    #[error("exec {path}: exec format error")]
    ExecFormat {
        /// The program, inside the root filesystem.
        path: String,
    },
    /// The seccomp filter could not be built or installed.
    #[error("seccomp: {message}")]
    Seccomp {
        /// What failed.
        message: String,
    },
    /// The step's network namespace could not be set up (pasta).
    #[error("RUN network: {message}")]
    Network {
        /// What failed, with pasta's own message when there is one.
        message: String,
    },
    /// A mount source resolves outside the directory it must stay in (a
    /// symlink pointing out), or does not exist there.
    #[error("mount {target}: source {source_path:?} in {root}: {message}")]
    MountSource {
        /// The mount target inside the step.
        target: String,
        /// The `source=` path, relative to `root`.
        source_path: String,
        /// The directory the source must stay in.
        root: PathBuf,
        /// Why it was refused.
        message: String,
    },
    /// A resource limit (`--ulimit`) could not be set.
    #[error("ulimit {name}={soft}:{hard}: setrlimit: {message}{hint}")]
    Rlimit {
        /// The resource (`nofile`, ...).
        name: String,
        /// The soft limit asked for (`-1`: unlimited).
        soft: i64,
        /// The hard limit asked for (`-1`: unlimited).
        hard: i64,
        /// `errno`.
        errno: i32,
        /// The text of `errno`.
        message: String,
        /// Why, when it can be told (the worker's own hard limit, ...).
        hint: String,
    },
    /// `execve` failed for another reason (`ENOENT` for a file that exists
    /// usually means its ELF interpreter, e.g. the dynamic loader, is missing).
    #[error("exec {path}: {message}")]
    Exec {
        /// The program, inside the root filesystem.
        path: String,
        /// `errno`.
        errno: i32,
        /// The text of `errno`.
        message: String,
    },
}

impl InitError {
    /// A failed syscall without a path.
    pub(crate) fn syscall(syscall: impl Into<String>, err: &io::Error) -> Self {
        InitError::Syscall {
            syscall: syscall.into(),
            errno: err.raw_os_error().unwrap_or(0),
            message: err.to_string(),
        }
    }

    /// A failed syscall on `path`.
    pub(crate) fn path(
        syscall: impl Into<String>,
        path: impl Into<PathBuf>,
        err: &io::Error,
    ) -> Self {
        InitError::Path {
            syscall: syscall.into(),
            path: path.into(),
            errno: err.raw_os_error().unwrap_or(0),
            message: err.to_string(),
        }
    }

    /// The `errno` behind this error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            InitError::Syscall { errno, .. }
            | InitError::Path { errno, .. }
            | InitError::Mount { errno, .. }
            | InitError::Exec { errno, .. }
            | InitError::Rlimit { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Errors of [`Executor::run`](crate::Executor::run).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The process spec cannot be run as given.
    #[error("invalid process spec: {0}")]
    InvalidSpec(String),
    /// The root filesystem directory is unusable.
    #[error("root filesystem {path}: {source}")]
    Rootfs {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The sandbox init program could not be started.
    #[error("spawn sandbox init {program}: {source}")]
    Spawn {
        /// The init program.
        program: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// Talking to the init failed (pipes, poll, temporary files).
    #[error("{op}: {source}")]
    Io {
        /// What was being done, with its path when there is one.
        op: String,
        /// What went wrong.
        source: io::Error,
    },
    /// The sandbox could not be set up, or the program could not be executed.
    #[error(transparent)]
    Setup(Box<InitError>),
    /// The init ended without saying how the process ended.
    #[error("sandbox init {program} ended without a report ({status})")]
    InitDied {
        /// The init program.
        program: PathBuf,
        /// Its wait status.
        status: String,
    },
    /// The default network needs pasta, which is not installed.
    #[error(
        "RUN steps get their own network namespace through `pasta`, which is not installed \
         (Debian/Ubuntu package `passt`; or set XBUILD_PASTA to its path); without it, use \
         `RUN --network=none`, or `--network=host` with `--allow network.host`"
    )]
    PastaMissing,
    /// The init sent something that is not a report.
    #[error("malformed report from the sandbox init: {detail}")]
    Protocol {
        /// What could not be decoded.
        detail: String,
    },
    /// The build was interrupted: the process was killed, or not started.
    #[error("cancelled")]
    Cancelled,
}

impl From<InitError> for SandboxError {
    fn from(e: InitError) -> Self {
        SandboxError::Setup(Box::new(e))
    }
}

impl SandboxError {
    /// The init's error, when the sandbox could not be set up or the program
    /// could not be executed.
    pub fn setup_error(&self) -> Option<&InitError> {
        match self {
            SandboxError::Setup(e) => Some(e),
            _ => None,
        }
    }
}
