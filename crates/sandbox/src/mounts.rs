//! The mounts of a sandbox: the root filesystem bound onto itself, `/proc`,
//! `/sys`, a minimal `/dev`, the `/etc` files the caller provides and the
//! extra mounts of the spec, then `pivot_root` (or `chroot`) into it.
//!
//! Runs in the init's child, in its own mount namespace, before the process
//! is executed. Every mount target is resolved inside the root filesystem
//! ([`crate::paths`]) so that image symlinks cannot redirect a mount onto
//! the host; missing mount points are created and reported.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::statvfs::{statvfs, FsFlags};

use std::os::fd::AsRawFd;

use crate::paths::{open_in_root, resolve_relative};
use crate::protocol::InitRequest;
use crate::{InitError, MountKind};

/// The character devices of `/dev`: name, major, minor.
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Devices `--security=insecure` adds, as BuildKit does: name, block?,
/// major, minor (plus `loop0`..`loop7`).
const INSECURE_DEVICES: &[(&str, bool, u64, u64)] = &[
    ("kmsg", false, 1, 11),
    ("cuse", false, 10, 203),
    ("fuse", false, 10, 229),
    ("kvm", false, 10, 232),
    ("net/tun", false, 10, 200),
    ("loop-control", false, 10, 237),
];

/// Docker's masked paths: a file gets `/dev/null` bound over it, a
/// directory an empty read-only tmpfs.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths (bound onto themselves, read-only).
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Symlinks of `/dev`: name, target.
const DEV_LINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Whether a mount point is a directory or a file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// Builds every mount of the sandbox under `req.rootfs`, calling `created`
/// with each mount point it had to create (relative to the root).
pub(crate) fn prepare(req: &InitRequest, created: &mut dyn FnMut(&Path)) -> Result<(), InitError> {
    let root = req.rootfs.as_path();
    // Nothing below may propagate back to the host.
    do_mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    // pivot_root needs the new root to be a mount point; `nodev`: a device
    // node the step makes (it has CAP_MKNOD, as in Docker) cannot be opened.
    let nodev = !req.spec.insecure;
    bind(root, root, false, nodev)?;

    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = mountpoint(root, "/proc", Kind::Dir, created)?;
    do_mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    )?;
    let sys_dir = mountpoint(root, "/sys", Kind::Dir, created)?;
    do_mount(
        Some(Path::new("sysfs")),
        &sys_dir,
        Some("sysfs"),
        nosuid_nodev_noexec | MsFlags::MS_RDONLY,
        None,
    )?;
    if !req.spec.insecure {
        mask_paths(root)?;
    }
    let dev_dir = mountpoint(root, "/dev", Kind::Dir, created)?;
    prepare_dev(&dev_dir, req.spec.insecure)?;

    let etc_files = [
        ("/etc/hosts", req.spec.etc_hosts.as_deref()),
        ("/etc/resolv.conf", req.spec.resolv_conf.as_deref()),
        ("/etc/hostname", req.hostname_file.as_deref()),
    ];
    for (target, source) in etc_files {
        if let Some(source) = source {
            let target = mountpoint(root, target, Kind::File, created)?;
            bind(source, &target, true, nodev)?;
        }
    }

    let mut extra: Vec<_> = req.spec.mounts.iter().collect();
    extra.sort_by_key(|m| Path::new(&m.target).components().count());
    for m in extra {
        match &m.kind {
            MountKind::Bind { source, readonly } => {
                let meta = fs::metadata(source).map_err(|e| InitError::path("stat", source, &e))?;
                let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
                let target = mountpoint(root, &m.target, kind, created)?;
                bind(source, &target, *readonly, nodev)?;
            }
            MountKind::BindIn {
                root: source_root,
                path,
                confine,
                readonly,
            } => {
                let refused = |e: io::Error| {
                    let message = match e.raw_os_error() {
                        Some(libc::EXDEV) => "refused: it leaves the directory through a symlink \
                                              or `..` (a symlink pointing out?)"
                            .to_string(),
                        Some(libc::ELOOP) => {
                            "refused: too many symlinks, or a /proc magic link".to_string()
                        }
                        _ => e.to_string(),
                    };
                    InitError::MountSource {
                        target: m.target.clone(),
                        source_path: path.clone(),
                        root: source_root.clone(),
                        message,
                    }
                };
                let fd = open_in_root(source_root, path, *confine).map_err(refused)?;
                let meta = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| refused(e.into()))?;
                let is_dir =
                    SFlag::from_bits_truncate(meta.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
                let kind = if is_dir { Kind::Dir } else { Kind::File };
                let target = mountpoint(root, &m.target, kind, created)?;
                let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                bind(&via, &target, *readonly, nodev)?;
            }
            MountKind::Tmpfs { size } => {
                let target = mountpoint(root, &m.target, Kind::Dir, created)?;
                let data = match size {
                    Some(size) => format!("mode=1777,size={size}"),
                    None => "mode=1777".to_string(),
                };
                do_mount(
                    Some(Path::new("tmpfs")),
                    &target,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(&data),
                )?;
            }
        }
    }
    Ok(())
}

/// Masks Docker's masked paths and makes its read-only paths read-only,
/// under the freshly mounted `/proc` and `/sys` of `root` (kernel
/// filesystems: no symlink of the image is involved).
fn mask_paths(root: &Path) -> Result<(), InitError> {
    for path in MASKED_PATHS {
        let host = root.join(path.trim_start_matches('/'));
        let Ok(meta) = fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.is_dir() {
            do_mount(
                Some(Path::new("tmpfs")),
                &host,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0,mode=555"),
            )?;
        } else {
            do_mount(
                Some(Path::new("/dev/null")),
                &host,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        }
    }
    for path in READONLY_PATHS {
        let host = root.join(path.trim_start_matches('/'));
        if fs::symlink_metadata(&host).is_err() {
            continue;
        }
        bind(&host, &host, true, true)?;
    }
    Ok(())
}

/// A tmpfs on `dev` with the usual devices, `pts`, `shm`, `mqueue` and
/// links; `nodev` unless `insecure` (which adds BuildKit's extra devices).
fn prepare_dev(dev: &Path, insecure: bool) -> Result<(), InitError> {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME;
    if !insecure {
        flags |= MsFlags::MS_NODEV;
    }
    do_mount(
        Some(Path::new("tmpfs")),
        dev,
        Some("tmpfs"),
        flags,
        Some("mode=755,size=65536k"),
    )?;
    let mut nodes: Vec<(String, SFlag, u64, u64)> = DEVICES
        .iter()
        .map(|(n, ma, mi)| (n.to_string(), SFlag::S_IFCHR, *ma, *mi))
        .collect();
    if insecure {
        mkdir(&dev.join("net"), 0o755)?;
        for (n, block, ma, mi) in INSECURE_DEVICES {
            let kind = if *block {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFCHR
            };
            nodes.push((n.to_string(), kind, *ma, *mi));
        }
        for i in 0..8 {
            nodes.push((format!("loop{i}"), SFlag::S_IFBLK, 7, i));
        }
    }
    for (name, kind, major, minor) in &nodes {
        let path = dev.join(name);
        // On the `nodev` tmpfs a node would not open: bind the host's node
        // instead (a bind mount keeps the host /dev's flags).
        let made = match insecure {
            true => mknod(
                &path,
                *kind,
                Mode::from_bits_truncate(0o666),
                makedev(*major, *minor),
            ),
            false => Err(nix::errno::Errno::EPERM),
        };
        match made {
            Ok(()) => fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
                .map_err(|e| InitError::path("chmod", &path, &e))?,
            // No CAP_MKNOD (e.g. in a user namespace) or `nodev`.
            Err(nix::errno::Errno::EPERM) => {
                create_file(&path)?;
                let host = Path::new("/dev").join(name);
                do_mount(Some(&host), &path, None, MsFlags::MS_BIND, None)?;
            }
            Err(e) => return Err(InitError::path("mknod", &path, &e.into())),
        }
    }
    let pts = dev.join("pts");
    mkdir(&pts, 0o755)?;
    do_mount(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let shm = dev.join("shm");
    mkdir(&shm, 0o1777)?;
    do_mount(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    let mqueue = dev.join("mqueue");
    mkdir(&mqueue, 0o755)?;
    do_mount(
        Some(Path::new("mqueue")),
        &mqueue,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    for (name, target) in DEV_LINKS {
        let path = dev.join(name);
        symlink(target, &path).map_err(|e| InitError::path("symlink", &path, &e))?;
    }
    Ok(())
}

/// Resolves `target` inside `root` and makes sure it exists as a directory
/// or file, creating it (and missing parents, as directories) when needed.
/// Returns the host path to mount on.
fn mountpoint(
    root: &Path,
    target: &str,
    kind: Kind,
    created: &mut dyn FnMut(&Path),
) -> Result<PathBuf, InitError> {
    let rel = resolve_relative(root, Path::new(target))
        .map_err(|e| InitError::path("resolve", Path::new(target), &e))?;
    let parts: Vec<_> = rel.components().collect();
    if parts.is_empty() {
        let e = io::Error::from_raw_os_error(libc::EBUSY);
        return Err(InitError::path("mount on the root itself", target, &e));
    }
    let mut cur = PathBuf::new();
    for (i, part) in parts.iter().enumerate() {
        cur.push(part);
        let host = root.join(&cur);
        let last = i + 1 == parts.len();
        match fs::symlink_metadata(&host) {
            Ok(meta) => {
                if !last && !meta.is_dir() {
                    let e = io::Error::from_raw_os_error(libc::ENOTDIR);
                    return Err(InitError::path("mkdir", &host, &e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let made = if last && kind == Kind::File {
                    create_file(&host)
                } else {
                    mkdir(&host, 0o755)
                };
                match made {
                    Ok(()) => created(&cur),
                    // Another sandbox on the same root made it meanwhile.
                    Err(e) if e.errno() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(InitError::path("lstat", &host, &e)),
        }
    }
    Ok(root.join(rel))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), InitError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| InitError::path("mkdir", path, &e))?;
    // Not subject to the umask.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| InitError::path("chmod", path, &e))
}

fn create_file(path: &Path) -> Result<(), InitError> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map(drop)
        .map_err(|e| InitError::path("create", path, &e))
}

use std::os::unix::fs::DirBuilderExt;

/// Recursive bind mount, then a remount `nodev` (unless `--security=insecure`
/// asked for device access) and read-only when asked: no device node reaches
/// a confined step through a mount. The remount keeps the flags the source
/// mount already has (nosuid, noexec, ...), which the kernel otherwise
/// refuses to drop.
fn bind(source: &Path, target: &Path, readonly: bool, nodev: bool) -> Result<(), InitError> {
    do_mount(
        Some(source),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let st = statvfs(target).map_err(|e| InitError::path("statvfs", target, &e.into()))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    if nodev {
        flags |= MsFlags::MS_NODEV;
    }
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    let keep = [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    for (st_flag, ms_flag) in keep {
        if st.flags().contains(st_flag) {
            flags |= ms_flag;
        }
    }
    do_mount(None, target, None, flags, None)
}

/// `mount(2)` with an error that names everything.
fn do_mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    mount(source, target, fstype, flags, data).map_err(|errno| {
        let err: io::Error = errno.into();
        let fstype = match fstype {
            Some(t) => t.to_string(),
            None if flags.contains(MsFlags::MS_REMOUNT) => "remount".to_string(),
            None if flags.contains(MsFlags::MS_BIND) => "bind".to_string(),
            None => "propagation".to_string(),
        };
        let mut flag_text = format!("{flags:?}");
        if let Some(data) = data {
            flag_text.push_str(", ");
            flag_text.push_str(data);
        }
        InitError::Mount {
            fstype,
            from: source.map(|s| s.display().to_string()).unwrap_or_default(),
            target: target.to_path_buf(),
            flags: flag_text,
            errno: err.raw_os_error().unwrap_or(0),
            message: err.to_string(),
        }
    })
}

/// Makes `root` the root directory of this process: `pivot_root` and a lazy
/// unmount of the old root, or, when pivoting is impossible (the current
/// root is the initramfs `rootfs`) or disabled, `chroot`.
pub(crate) fn enter_root(root: &Path, no_pivot: bool) -> Result<(), InitError> {
    nix::unistd::chdir(root).map_err(|e| InitError::path("chdir", root, &e.into()))?;
    if !no_pivot {
        // pivot_root(".", ".") stacks the old root on top of the new one;
        // unmounting "." then removes the old root without needing a
        // directory for it inside the image.
        match nix::unistd::pivot_root(".", ".") {
            Ok(()) => {
                umount2(".", MntFlags::MNT_DETACH)
                    .map_err(|e| InitError::path("umount2 (old root)", root, &e.into()))?;
                return nix::unistd::chdir("/")
                    .map_err(|e| InitError::path("chdir", "/", &e.into()));
            }
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::EPERM) => {}
            Err(e) => return Err(InitError::path("pivot_root", root, &e.into())),
        }
    }
    nix::unistd::chroot(".").map_err(|e| InitError::path("chroot", root, &e.into()))?;
    nix::unistd::chdir("/").map_err(|e| InitError::path("chdir", "/", &e.into()))
}
