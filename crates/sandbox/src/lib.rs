//! Run one process — a Dockerfile `RUN` step — inside a root filesystem that
//! the caller has prepared (typically an overlayfs merged directory).
//!
//! The caller is a multi-threaded program, so this crate never forks from it.
//! [`LinuxExecutor`] spawns a small single-threaded helper (the *init*, whose
//! entry point is [`init_main`]) and hands it the [`ProcessSpec`] as JSON over
//! a pipe. The init unshares the mount, PID, IPC and UTS namespaces (and the
//! network namespace unless [`NetworkMode::Host`]; [`NetworkMode::Isolated`]
//! connects it to the outside through `pasta`, see [`netns`]), forks so that
//! the command becomes PID 1 of the new PID namespace, builds the mounts
//! (`/proc` with Docker's masked and read-only paths, a read-only `/sys`, a
//! minimal `nodev` `/dev`, `/etc/hosts`, extra mounts), pivots into the root
//! filesystem, switches user, and — unless [`ProcessSpec::insecure`] — limits
//! the capabilities to Docker's default set ([`caps`]), sets `no_new_privs`
//! and installs Docker's default seccomp profile ([`seccomp`]) right before
//! executing the command. No cgroups are used: the only resource limits are
//! the `setrlimit` ones of [`ProcessSpec::rlimits`].
//!
//! Setup failures come back as structured [`InitError`]s (wrapped in
//! [`SandboxError::Setup`]) so that the caller can tell a missing executable
//! or a failed mount apart from the command's own non-zero exit status.
//!
//! This crate never prints anything and never logs any part of a spec.
#![warn(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod binfmt;
#[cfg(target_os = "linux")]
mod cancel;
pub mod caps;
mod error;
#[cfg(target_os = "linux")]
mod executor;
#[cfg(target_os = "linux")]
mod init;
#[cfg(target_os = "linux")]
mod mounts;
#[cfg(target_os = "linux")]
pub mod netns;
mod paths;
#[cfg(target_os = "linux")]
mod protocol;
#[cfg(target_os = "linux")]
pub mod seccomp;
pub mod user;

#[cfg(target_os = "linux")]
pub use cancel::{cancel_all, is_cancelled};
pub use error::{InitError, SandboxError};
#[cfg(target_os = "linux")]
pub use executor::LinuxExecutor;
#[cfg(target_os = "linux")]
pub use init::init_main;
pub use user::{ResolvedUser, UserError};

/// Network isolation of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Share the network namespace of the caller (Docker's `--network=host`).
    /// The engine uses it only when the build allows `network.host`.
    #[default]
    Host,
    /// A new network namespace with only the loopback interface (brought up).
    None,
    /// A new network namespace with outbound access through `pasta` (the
    /// default of a `RUN` step, like `docker build`'s): the host's loopback
    /// services and ports stay out of reach. Needs `pasta` ([`netns`]).
    Isolated,
}

/// How a [`MountKind::BindIn`] source may use symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confine {
    /// Resolve as if the root were `/`: absolute symlinks and `..` stay
    /// inside it (a stage's or the context's files).
    InRoot,
    /// Refuse any path that leaves the root through a symlink or `..`
    /// (cache mounts, whose content earlier builds wrote).
    Beneath,
}

/// What to mount at a [`MountSpec::target`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// Bind-mount a host file or directory.
    Bind {
        /// Host path of the file or directory.
        source: PathBuf,
        /// Mount it read-only.
        readonly: bool,
    },
    /// Bind-mount `path`, resolved inside the host directory `root` (with
    /// `openat2`, so nothing can swap a symlink in between): a source that
    /// would leave `root` is refused with [`InitError::MountSource`].
    BindIn {
        /// The directory the source must stay in.
        root: PathBuf,
        /// The source, relative to `root`.
        path: String,
        /// How symlinks are treated.
        confine: Confine,
        /// Mount it read-only.
        readonly: bool,
    },
    /// A fresh tmpfs (mode 1777).
    Tmpfs {
        /// Size limit in bytes; `None` uses the kernel default (half of RAM).
        size: Option<u64>,
    },
}

/// An extra mount for one process (`RUN --mount=...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// What to mount.
    pub kind: MountKind,
    /// Absolute path inside the root filesystem.
    pub target: String,
}

/// The process to run: the expanded `RUN` command and its context.
///
/// The process gets no standard input (`/dev/null`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// The command and its arguments; `args[0]` is looked up in the `PATH`
    /// of [`ProcessSpec::env`] inside the root filesystem unless it has a `/`.
    pub args: Vec<String>,
    /// `KEY=value` pairs; the process sees exactly these (plus a default
    /// `PATH` and `HOME` when they are missing, as Docker does).
    pub env: Vec<String>,
    /// Working directory inside the root filesystem; created (owned by the
    /// user) when missing. Empty means `/`.
    pub cwd: String,
    /// Docker `USER` syntax: `name`, `uid`, `name:group`, `uid:gid`; empty
    /// means root.
    pub user: String,
    /// Host name inside the UTS namespace; empty keeps the caller's.
    pub hostname: String,
    /// Network isolation.
    pub network: NetworkMode,
    /// `RUN --security=insecure`: every capability the host has (ambient
    /// too), no seccomp filter, no `no_new_privs`, no masked or read-only
    /// `/proc` paths, device access on the root, `/dev` and bind mounts
    /// (plus BuildKit's extra devices). Off: Docker's default confinement.
    #[serde(default)]
    pub insecure: bool,
    /// Extra mounts, mounted parents first.
    pub mounts: Vec<MountSpec>,
    /// Host file bind-mounted read-only at `/etc/hosts`.
    pub etc_hosts: Option<PathBuf>,
    /// Host file bind-mounted read-only at `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// Resource limits (`setrlimit`) set on the process right before it
    /// switches user and executes (`--ulimit`); the others are inherited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
}

/// One resource limit of a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// The resource as Docker's `--ulimit` names it: Linux's `RLIMIT_*`,
    /// lower case and without the prefix (`nofile`, `nproc`, ...); another
    /// name fails the step.
    pub name: String,
    /// The soft limit; `None` is unlimited.
    pub soft: Option<u64>,
    /// The hard limit; `None` is unlimited.
    pub hard: Option<u64>,
}

/// Which output stream a chunk of bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// Exit status; `128 + n` when killed by signal `n`.
    pub exit_code: i32,
    /// The signal that killed the process, if any.
    pub signal: Option<i32>,
    /// Mount points the sandbox had to create in the root filesystem (files
    /// or directories that did not exist), relative to the root filesystem,
    /// parents before children. The caller removes them from the layer diff.
    pub created_mountpoints: Vec<PathBuf>,
    /// Wall-clock time from spawning the init to the process's end.
    pub duration: Duration,
}

impl RunResult {
    /// Whether the process exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0 && self.signal.is_none()
    }
}

/// Runs processes inside a root filesystem.
pub trait Executor: Send + Sync {
    /// Runs `spec` inside `rootfs`, streaming its output to `output` while it
    /// runs, and returns how it ended. A non-zero exit is `Ok`; an `Err` means
    /// the process could not be started (or the sandbox failed).
    fn run(
        &self,
        rootfs: &std::path::Path,
        spec: &ProcessSpec,
        output: &mut dyn FnMut(OutputStream, &[u8]),
    ) -> Result<RunResult, SandboxError>;
}
