//! RUN: turns an [`ExecOp`] into a sandbox [`ProcessSpec`] with its mounts
//! (bind, cache, tmpfs, secret), runs it in a prepared root filesystem and
//! tears every mount down afterwards.
//!
//! Runs on a blocking thread; everything it needs is owned ([`ExecEnv`],
//! [`ExecPlan`]). Secret values go only into a private tmpfs or the
//! process environment; they never appear in errors.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use fs2::FileExt;
use xbuild_dockerfile::instructions::{MountType, Sharing};
use xbuild_plan::{Entitlements, ExecMount, ExecOp, Network};
use xbuild_sandbox::{
    Confine, Executor, LinuxExecutor, MountKind, MountSpec, NetworkMode, OutputStream, ProcessSpec,
    RunResult, SandboxError,
};

use crate::copyfs::{self, CopyFsError, Snapshotter};
use crate::mount::{mount_overlay, mount_private_tmpfs, MountError, MountGuard};
use crate::snapshot::{Scratch, SnapshotError};

/// Host name of every RUN, as BuildKit uses.
pub const HOSTNAME: &str = "buildkitsandbox";

/// Errors of a RUN step's setup (the process's own exit status is not one).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The sandbox could not run the process.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A mount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A scratch directory failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A copied view of snapshots failed.
    #[error(transparent)]
    CopyFs(#[from] CopyFsError),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A required secret was not given.
    #[error("secret {id}: not found (pass it with --secret id={id},src=FILE)")]
    SecretMissing {
        /// The secret id.
        id: String,
    },
    /// A required ssh agent was not given.
    #[error("ssh agent {id:?} not found (pass it with --ssh {id}[=SOCKET]; `--ssh default` uses $SSH_AUTH_SOCK)")]
    SshMissing {
        /// The ssh id.
        id: String,
    },
    /// A mount kind this engine does not provide.
    #[error("{0} is not supported")]
    Unsupported(String),
    /// A bind mount from the context was asked for, with no local context.
    #[error("RUN --mount=type=bind from the build context needs a local context directory")]
    NoContext,
    /// The step asks for more than the build allows.
    #[error("entitlement {entitlement} is not allowed: {what} needs --allow {entitlement}")]
    NotAllowed {
        /// `RUN --network=host`, ...
        what: &'static str,
        /// buildx's name of the entitlement.
        entitlement: &'static str,
    },
    /// A mount source does not exist.
    #[error("mount source {source_path:?} does not exist in {from}")]
    SourceMissing {
        /// The `source=` value.
        source_path: String,
        /// Where it was looked up (`context`, `stage`).
        from: &'static str,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExecError + 'a {
    move |source| ExecError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where a bind (or cache) mount's files come from, resolved by the solver.
#[derive(Debug, Clone)]
pub enum MountSource {
    /// Nothing to resolve (cache without `from`, tmpfs, secret).
    None,
    /// The build context directory (everything in it).
    Context(PathBuf),
    /// The build context directory, limited to what its index holds
    /// (`.dockerignore` applied).
    FilteredContext(PathBuf, std::sync::Arc<crate::context::ContextIndex>),
    /// A stage's or image's snapshots, bottom first.
    Layers(Vec<PathBuf>),
}

/// Engine paths and settings a RUN needs.
#[derive(Debug, Clone)]
pub struct ExecEnv {
    /// The sandbox init program and its arguments.
    pub init_program: PathBuf,
    /// Arguments of the init program.
    pub init_args: Vec<String>,
    /// `root/cachemounts/<platform>`.
    pub cache_mounts: PathBuf,
    /// Where mount points go (`root/mounts`).
    pub mounts_dir: PathBuf,
    /// Where scratch directories go (`root/tmp`).
    pub tmp_dir: PathBuf,
    /// The always-empty bottom layer.
    pub empty: PathBuf,
    /// Overlay mounts, or copies where overlayfs is unavailable.
    pub snapshotter: Snapshotter,
}

/// One RUN, fully resolved.
#[derive(Debug, Clone)]
pub struct ExecPlan {
    /// The op.
    pub op: ExecOp,
    /// Per mount of `op.mounts`: where its files come from.
    pub sources: Vec<MountSource>,
    /// Per mount of `op.mounts`: the secret value, for secret mounts.
    pub secrets: Vec<Option<Vec<u8>>>,
    /// What the build allows (`--allow`), checked before the step runs.
    pub allow: Entitlements,
    /// Per mount of `op.mounts`: the ssh-agent socket, for ssh mounts.
    pub ssh: Vec<Option<PathBuf>>,
    /// Per mount of `op.mounts`: a cache mount that starts empty (its first
    /// use under `--no-cache`/`--no-cache-filter`; what it holds afterwards
    /// replaces the old contents, as in BuildKit).
    pub fresh_caches: Vec<bool>,
}

impl Drop for ExecPlan {
    fn drop(&mut self) {
        for v in self.secrets.iter_mut().flatten() {
            v.iter_mut().for_each(|b| *b = 0);
        }
    }
}

/// Mounts, locks and scratch directories set up for one step; torn down on
/// drop, mounts first (newest first), then locks, then the directories.
#[derive(Debug, Default)]
pub(crate) struct Setup {
    pub(crate) mounts: Vec<MountGuard>,
    pub(crate) locks: Vec<File>,
    pub(crate) scratches: Vec<Scratch>,
    pub(crate) views: Vec<copyfs::Materialized>,
    pub(crate) ssh: Vec<crate::sshproxy::SshProxy>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        while let Some(m) = self.mounts.pop() {
            drop(m);
        }
        self.locks.clear();
        self.ssh.clear();
        self.scratches.clear();
        self.views.clear();
    }
}

/// Cleans `rel` lexically into components below a root (`..` stops at it).
pub fn clean_rel(rel: &str) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Resolves `rel` inside `root`, following symlinks as if `root` were `/`.
/// The result is a host path below `root` (it may not exist).
pub fn resolve_in_root(root: &Path, rel: &str) -> PathBuf {
    let mut stack: Vec<OsString> = Vec::new();
    let mut queue: std::collections::VecDeque<OsString> = clean_rel(rel).into();
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            stack.pop();
            continue;
        }
        let mut p = root.to_path_buf();
        p.extend(&stack);
        p.push(&c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() && links < 40 => {
                links += 1;
                let Ok(t) = fs::read_link(&p) else {
                    stack.push(c);
                    continue;
                };
                if t.is_absolute() {
                    stack.clear();
                }
                let mut front: Vec<OsString> = t
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .collect();
                front.reverse();
                for f in front {
                    queue.push_front(f);
                }
            }
            _ => stack.push(c),
        }
    }
    let mut p = root.to_path_buf();
    p.extend(&stack);
    p
}

fn escape_id(id: &str) -> String {
    let s: String = id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if s.len() > 120 || s.starts_with('.') {
        xbuild_oci::Digest::sha256_of(id.as_bytes()).hex()[..32].to_string()
    } else {
        s
    }
}

fn host_resolv_conf() -> String {
    let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let usable = host.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("nameserver")
            && w.next()
                .is_some_and(|a| !a.starts_with("127.") && a != "::1")
    });
    if usable {
        host
    } else {
        "nameserver 8.8.8.8\nnameserver 8.8.4.4\n".to_string()
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ExecError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

/// Runs `plan` with `rootfs` (a mounted overlay) as the root filesystem,
/// streaming output to `log`. A non-zero exit is `Ok`.
pub fn run(
    env: &ExecEnv,
    plan: &ExecPlan,
    rootfs: &Path,
    log: &mut dyn FnMut(OutputStream, &[u8]),
) -> Result<RunResult, ExecError> {
    let op = &plan.op;
    if op.network == Network::Host && !plan.allow.network_host {
        return Err(ExecError::NotAllowed {
            what: "RUN --network=host",
            entitlement: "network.host",
        });
    }
    if op.insecure && !plan.allow.security_insecure {
        return Err(ExecError::NotAllowed {
            what: "RUN --security=insecure",
            entitlement: "security.insecure",
        });
    }
    let mut setup = Setup::default();
    let files = Scratch::new(&env.tmp_dir)?;
    let hostname = op.hostname.as_deref().unwrap_or(HOSTNAME);
    let hosts = files.path().join("hosts");
    let mut hosts_text =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (host, ip) in &op.extra_hosts {
        hosts_text.push_str(&format!("{ip}\t{host}\n"));
    }
    write_file(&hosts, hosts_text.as_bytes(), 0o644)?;
    let resolv = files.path().join("resolv.conf");
    write_file(&resolv, host_resolv_conf().as_bytes(), 0o644)?;
    let files_dir = files.path().to_path_buf();
    setup.scratches.push(files);

    let mut spec = ProcessSpec {
        args: op.args.clone(),
        env: op.env.clone(),
        cwd: op.cwd.clone(),
        user: op.user.clone(),
        hostname: hostname.to_string(),
        network: match op.network {
            Network::Default => NetworkMode::Isolated,
            Network::None => NetworkMode::None,
            Network::Host => NetworkMode::Host,
        },
        insecure: op.insecure,
        mounts: Vec::new(),
        etc_hosts: Some(hosts),
        resolv_conf: Some(resolv),
        rlimits: op
            .ulimits
            .iter()
            .map(|u| xbuild_sandbox::Rlimit {
                name: u.name.clone(),
                // -1 (unlimited) and only it is negative (checked at parse).
                soft: u64::try_from(u.soft).ok(),
                hard: u64::try_from(u.hard).ok(),
            })
            .collect(),
    };

    for (i, f) in op.inline_files.iter().enumerate() {
        let p = files_dir.join(format!("inline-{i}"));
        write_file(&p, f.content.as_bytes(), f.mode & 0o7777)?;
        spec.mounts.push(MountSpec {
            kind: MountKind::Bind {
                source: p,
                readonly: true,
            },
            target: f.name.clone(),
        });
    }

    if let Some(size) = op.shm_size {
        // Over the sandbox's own /dev/shm.
        spec.mounts.push(MountSpec {
            kind: MountKind::Tmpfs { size: Some(size) },
            target: "/dev/shm".into(),
        });
    }
    let mut secret_dir: Option<PathBuf> = None;
    let mut ssh_n = 0;
    for (i, m) in op.mounts.iter().enumerate() {
        if m.kind == MountType::Ssh {
            let agent = plan.ssh.get(i).and_then(|a| a.as_deref());
            if let Some(ms) = ssh_mount(m, agent, &mut setup, &mut spec, &files_dir, ssh_n)? {
                spec.mounts.push(ms);
                ssh_n += 1;
            }
            continue;
        }
        let source = plan.sources.get(i).cloned().unwrap_or(MountSource::None);
        let secret = plan.secrets.get(i).and_then(|s| s.as_deref());
        let fresh = plan.fresh_caches.get(i).copied().unwrap_or(false);
        if let Some(ms) = mount_one(
            env,
            m,
            (source, fresh),
            secret,
            &mut setup,
            &mut spec,
            &files_dir,
            &mut secret_dir,
        )? {
            spec.mounts.push(ms);
        }
    }
    spec.mounts
        .sort_by_key(|m| Path::new(&m.target).components().count());

    let exec = LinuxExecutor::new(&env.init_program, env.init_args.clone());
    let result = exec.run(rootfs, &spec, log);
    // Scrub secret env values from memory before anything else.
    for e in spec.env.iter_mut() {
        e.clear();
    }
    drop(setup);
    Ok(result?)
}

/// `RUN --mount=type=ssh`: a proxy socket to the agent of the mount's id
/// (`default` when unset), bound at the target; `SSH_AUTH_SOCK` points at the
/// first one unless the step sets it. A missing agent skips the mount, or
/// fails the step with `required=true`.
fn ssh_mount(
    m: &ExecMount,
    agent: Option<&Path>,
    setup: &mut Setup,
    spec: &mut ProcessSpec,
    files_dir: &Path,
    n: usize,
) -> Result<Option<MountSpec>, ExecError> {
    let id = m.id.clone().unwrap_or_else(|| "default".into());
    let Some(agent) = agent else {
        if m.required {
            return Err(ExecError::SshMissing { id });
        }
        return Ok(None);
    };
    let target = m
        .target
        .clone()
        .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{n}"));
    let at = files_dir.join(format!("ssh-{n}.sock"));
    let proxy = crate::sshproxy::SshProxy::start(
        agent,
        &at,
        m.uid.unwrap_or(0),
        m.gid.unwrap_or(0),
        m.mode.unwrap_or(0o600),
    )
    .map_err(|source| ExecError::Io {
        op: "forward the ssh agent for",
        path: PathBuf::from(format!("--mount=type=ssh,id={id}")),
        source,
    })?;
    setup.ssh.push(proxy);
    if n == 0 && !spec.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
        spec.env.push(format!("SSH_AUTH_SOCK={target}"));
    }
    Ok(Some(MountSpec {
        kind: MountKind::Bind {
            source: at,
            readonly: true,
        },
        target,
    }))
}

#[allow(clippy::too_many_arguments)]
fn mount_one(
    env: &ExecEnv,
    m: &ExecMount,
    (source, fresh): (MountSource, bool),
    secret: Option<&[u8]>,
    setup: &mut Setup,
    spec: &mut ProcessSpec,
    files_dir: &Path,
    secret_dir: &mut Option<PathBuf>,
) -> Result<Option<MountSpec>, ExecError> {
    let target = m.target.clone().unwrap_or_default();
    let src_rel = m.source.clone().unwrap_or_default();
    match m.kind {
        MountType::Bind => {
            let host = match source {
                MountSource::Context(dir) => {
                    let p = resolve_in_root(&dir, &src_rel);
                    if !p.exists() {
                        return Err(ExecError::SourceMissing {
                            source_path: src_rel,
                            from: "the build context",
                        });
                    }
                    // Writes to a rw bind are thrown away, never reach the context.
                    if m.readonly {
                        return Ok(Some(MountSpec {
                            kind: MountKind::BindIn {
                                root: dir,
                                path: src_rel,
                                confine: Confine::InRoot,
                                readonly: true,
                            },
                            target,
                        }));
                    } else if p.is_dir() {
                        overlay_view(env, &[p], true, setup)?
                    } else {
                        let n = fs::read_dir(files_dir).map(|r| r.count()).unwrap_or(0);
                        let copy = files_dir.join(format!("bind-{n}"));
                        copyfs::copy_one(&p, &copy)?;
                        copy
                    }
                }
                MountSource::FilteredContext(dir, index) => {
                    let n = fs::read_dir(files_dir).map(|r| r.count()).unwrap_or(0);
                    let into = files_dir.join(format!("bind-{n}"));
                    // A directory view shares inodes with the context; a
                    // writable one gets a throw-away overlay on top (copy-up
                    // never writes to the lower file). A single file is
                    // copied when writable.
                    let shared = m.readonly || resolve_in_root(&dir, &src_rel).is_dir();
                    let view =
                        crate::bindctx::filtered_view(&dir, &index, &src_rel, &into, shared)?;
                    if m.readonly || !view.is_dir() {
                        view
                    } else {
                        overlay_view(env, &[view], true, setup)?
                    }
                }
                MountSource::Layers(layers) => {
                    let view = overlay_view(env, &layers, !m.readonly, setup)?;
                    let p = resolve_in_root(&view, &src_rel);
                    if !p.exists() {
                        return Err(ExecError::SourceMissing {
                            source_path: src_rel,
                            from: "the stage",
                        });
                    }
                    // The sandbox resolves it again, atomically, inside the view.
                    return Ok(Some(MountSpec {
                        kind: MountKind::BindIn {
                            root: view,
                            path: src_rel,
                            confine: Confine::InRoot,
                            readonly: m.readonly,
                        },
                        target,
                    }));
                }
                MountSource::None => return Err(ExecError::NoContext),
            };
            Ok(Some(MountSpec {
                kind: MountKind::Bind {
                    source: host,
                    readonly: m.readonly,
                },
                target,
            }))
        }
        MountType::Cache => {
            let id = m.id.clone().unwrap_or_else(|| target.clone());
            fs::create_dir_all(&env.cache_mounts)
                .map_err(io_err("create directory", &env.cache_mounts))?;
            let dir = env.cache_mounts.join(escape_id(&id));
            let lock_path = env.cache_mounts.join(format!("{}.lock", escape_id(&id)));
            let lock = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&lock_path)
                .map_err(io_err("open lock", &lock_path))?;
            let mut use_dir = dir.clone();
            match m.sharing {
                Sharing::Shared => {
                    lock.lock_shared().map_err(io_err("lock", &lock_path))?;
                    setup.locks.push(lock);
                }
                Sharing::Locked => {
                    lock.lock_exclusive().map_err(io_err("lock", &lock_path))?;
                    setup.locks.push(lock);
                }
                Sharing::Private => {
                    if lock.try_lock_exclusive().is_ok() {
                        setup.locks.push(lock);
                    } else {
                        let s = Scratch::new(&env.tmp_dir)?;
                        use_dir = s.subdir("cache")?;
                        setup.scratches.push(s);
                    }
                }
            }
            if fresh && use_dir == dir && dir.exists() {
                fs::remove_dir_all(&dir).map_err(io_err("remove directory", &dir))?;
            }
            match fs::create_dir(&use_dir) {
                Ok(()) => {
                    let mode = m.mode.unwrap_or(0o755) & 0o7777;
                    fs::set_permissions(&use_dir, fs::Permissions::from_mode(mode))
                        .map_err(io_err("chmod", &use_dir))?;
                    std::os::unix::fs::chown(
                        &use_dir,
                        Some(m.uid.unwrap_or(0)),
                        Some(m.gid.unwrap_or(0)),
                    )
                    .map_err(io_err("chown", &use_dir))?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create directory", &use_dir)(e)),
            }
            // Earlier builds wrote this directory: `source=` must stay in it
            // (BuildKit testCacheMountSourceEscape). Missing directories are
            // made without following any symlink; the sandbox then opens
            // the source beneath the cache root and refuses an escape.
            let rel: PathBuf = clean_rel(&src_rel).into_iter().collect();
            create_beneath(&use_dir, &rel)?;
            Ok(Some(MountSpec {
                kind: MountKind::BindIn {
                    root: use_dir,
                    path: rel.to_string_lossy().into_owned(),
                    confine: Confine::Beneath,
                    readonly: m.readonly,
                },
                target,
            }))
        }
        MountType::Tmpfs => Ok(Some(MountSpec {
            kind: MountKind::Tmpfs { size: m.size },
            target,
        })),
        MountType::Secret => {
            let id = m.id.clone().unwrap_or_default();
            let Some(value) = secret else {
                if m.required {
                    return Err(ExecError::SecretMissing { id });
                }
                return Ok(None);
            };
            if let Some(var) = &m.env {
                let mut kv = Vec::with_capacity(var.len() + 1 + value.len());
                kv.extend_from_slice(var.as_bytes());
                kv.push(b'=');
                kv.extend_from_slice(value);
                spec.env.retain(|e| !e.starts_with(&format!("{var}=")));
                spec.env.push(String::from_utf8_lossy(&kv).into_owned());
                kv.iter_mut().for_each(|b| *b = 0);
            }
            if m.target.is_none() {
                return Ok(None);
            }
            let dir = match secret_dir {
                Some(d) => d.clone(),
                None => {
                    let d = files_dir.join("secrets");
                    fs::create_dir(&d).map_err(io_err("create directory", &d))?;
                    setup.mounts.push(mount_private_tmpfs(&d)?);
                    *secret_dir = Some(d.clone());
                    d
                }
            };
            let n = fs::read_dir(&dir).map(|r| r.count()).unwrap_or(0);
            let p = dir.join(format!("s{n}"));
            write_file(&p, value, m.mode.unwrap_or(0o400) & 0o7777)?;
            std::os::unix::fs::chown(&p, Some(m.uid.unwrap_or(0)), Some(m.gid.unwrap_or(0)))
                .map_err(io_err("chown", &p))?;
            Ok(Some(MountSpec {
                kind: MountKind::Bind {
                    source: p,
                    readonly: true,
                },
                target,
            }))
        }
        // Set up by `ssh_mount` before `mount_one` is asked.
        MountType::Ssh => Ok(None),
    }
}

/// Creates the missing directories of `rel` below `root` (mode 0755),
/// never following a symlink: the walk stops at the first component that is
/// not a plain directory (the sandbox resolves, or refuses, the rest).
fn create_beneath(root: &Path, rel: &Path) -> Result<(), ExecError> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    let open = |dir: i32, name: &CString| {
        // SAFETY: a valid dirfd and NUL-terminated name; the fd is owned.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        match fd {
            // SAFETY: a new fd we own.
            fd if fd >= 0 => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            _ => Err(io::Error::last_os_error()),
        }
    };
    let mut dir: OwnedFd = File::open(root).map_err(io_err("open", root))?.into();
    for part in rel.components() {
        let Component::Normal(name) = part else {
            continue;
        };
        let Ok(name) = CString::new(name.as_bytes()) else {
            return Ok(());
        };
        dir = match open(dir.as_raw_fd(), &name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: valid dirfd and NUL-terminated name.
                let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) };
                let made = io::Error::last_os_error();
                if rc < 0 && made.raw_os_error() != Some(libc::EEXIST) {
                    return Err(io_err("create directory", &root.join(rel))(made));
                }
                match open(dir.as_raw_fd(), &name) {
                    Ok(fd) => fd,
                    Err(_) => return Ok(()),
                }
            }
            // A symlink (ELOOP) or a file (ENOTDIR): left to the sandbox.
            Err(_) => return Ok(()),
        };
    }
    Ok(())
}

/// Mounts a view of `layers` (bottom first): read-only, or writable into a
/// throw-away upper directory. Returns the mount point. With the copy
/// snapshotter the view is a throw-away merged copy (writable either way).
pub(crate) fn overlay_view(
    env: &ExecEnv,
    layers: &[PathBuf],
    writable: bool,
    setup: &mut Setup,
) -> Result<PathBuf, ExecError> {
    if env.snapshotter == Snapshotter::Copy {
        let m = copyfs::materialize(&env.tmp_dir, layers)?;
        let root = m.root().to_path_buf();
        setup.views.push(m);
        return Ok(root);
    }
    if layers.is_empty() && !writable {
        // A stage with no layers (FROM scratch and metadata only): its
        // files are the empty directory. overlayfs refuses a read-only
        // mount of a single lower directory.
        return Ok(env.empty.clone());
    }
    let mp = Scratch::new(&env.mounts_dir)?;
    let target = mp.subdir("m")?;
    let mut lowers: Vec<PathBuf> = layers.iter().rev().cloned().collect();
    lowers.push(env.empty.clone());
    let guard = if writable {
        let s = Scratch::new(&env.tmp_dir)?;
        let upper = s.subdir("fs")?;
        let work = s.subdir("work")?;
        let g = mount_overlay(&lowers, Some((&upper, &work)), &target)?;
        setup.scratches.push(s);
        g
    } else {
        mount_overlay(&lowers, None, &target)?
    };
    setup.scratches.push(mp);
    setup.mounts.push(guard);
    Ok(target)
}
