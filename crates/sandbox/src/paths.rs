//! Path resolution confined to a root directory.
//!
//! Before the sandbox pivots into the root filesystem it has to look at files
//! inside it (`/etc/passwd`, mount targets) through host paths. Image content
//! is untrusted: a symlink `/etc/passwd -> /etc/shadow` or `/proc -> /` must
//! be resolved as it would be *inside* the root, never on the host. The
//! functions here resolve every component by hand, like `chroot` would.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Component, Path, PathBuf};

/// The most symlinks followed while resolving one path (Linux uses 40 per
/// lookup; runc's securejoin uses 255).
const MAX_SYMLINKS: usize = 255;

/// Resolves `unsafe_path` (absolute or relative, both meaning "from the
/// root") inside `root` and returns the path *relative to `root`*, with every
/// existing symlink followed as if `root` were `/`: absolute link targets
/// restart at `root`, and `..` never climbs above it. Components that do not
/// exist are kept as they are (so the result may name a missing file).
pub(crate) fn resolve_relative(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_components(&mut pending, unsafe_path, false);
    let mut resolved = PathBuf::new();
    let mut links = 0usize;
    while let Some(part) = pending.pop_front() {
        if part == OsStr::new("..") {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match std::fs::symlink_metadata(root.join(&candidate)) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc_eloop()));
                }
                let target = std::fs::read_link(root.join(&candidate))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                push_components(&mut pending, &target, true);
            }
            Ok(_) => resolved = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotFound => resolved = candidate,
            Err(e) => return Err(e),
        }
    }
    Ok(resolved)
}

/// [`resolve_relative`], joined back onto `root`.
pub(crate) fn resolve_in_root(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    Ok(root.join(resolve_relative(root, unsafe_path)?))
}

/// Adds the components of `path` to `pending`, at the front when
/// `front` (a symlink target replaces the link in the walk).
fn push_components(pending: &mut VecDeque<OsString>, path: &Path, front: bool) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    if front {
        for p in parts.into_iter().rev() {
            pending.push_front(p);
        }
    } else {
        pending.extend(parts);
    }
}

/// Resolves `unsafe_path` inside `root` like [`resolve_relative`], but fails
/// with `EXDEV` when an absolute symlink or a `..` would leave `root`.
pub(crate) fn resolve_beneath(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_components(&mut pending, unsafe_path, false);
    let mut resolved = PathBuf::new();
    let mut links = 0usize;
    let exdev = || io::Error::from_raw_os_error(libc_exdev());
    while let Some(part) = pending.pop_front() {
        if part == OsStr::new("..") {
            if !resolved.pop() {
                return Err(exdev());
            }
            continue;
        }
        let candidate = resolved.join(&part);
        match std::fs::symlink_metadata(root.join(&candidate)) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc_eloop()));
                }
                let target = std::fs::read_link(root.join(&candidate))?;
                if target.is_absolute() {
                    return Err(exdev());
                }
                push_components(&mut pending, &target, true);
            }
            Ok(_) => resolved = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotFound => resolved = candidate,
            Err(e) => return Err(e),
        }
    }
    Ok(resolved)
}

/// Opens `path` (relative to `root`) as an `O_PATH` file descriptor,
/// resolving it inside `root` in one `openat2` call: with
/// [`Confine::InRoot`](crate::Confine) symlinks and `..` are clamped to
/// `root`, with [`Confine::Beneath`](crate::Confine) any escape fails with
/// `EXDEV`. Magic links (`/proc/*/fd`) are refused either way. Kernels
/// without `openat2` (before 5.6) get the same semantics from a component
/// walk and a final `O_NOFOLLOW` open.
#[cfg(target_os = "linux")]
pub(crate) fn open_in_root(
    root: &Path,
    path: &str,
    confine: crate::Confine,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::ffi::CString;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_BENEATH: u64 = 0x08;
    const RESOLVE_IN_ROOT: u64 = 0x10;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }

    let dir = std::fs::File::open(root)?;
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let c_rel = CString::new(rel).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_NO_MAGICLINKS
            | match confine {
                crate::Confine::InRoot => RESOLVE_IN_ROOT,
                crate::Confine::Beneath => RESOLVE_BENEATH,
            },
    };
    use std::os::fd::AsRawFd;
    // SAFETY: valid dirfd, NUL-terminated path and an open_how of the
    // size passed, all alive across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c_rel.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel returned a new fd we own.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    let resolved = match confine {
        crate::Confine::InRoot => resolve_relative(root, Path::new(rel))?,
        crate::Confine::Beneath => resolve_beneath(root, Path::new(rel))?,
    };
    let full = CString::new(root.join(resolved).as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: NUL-terminated path; the fd is owned right away.
    let fd = unsafe {
        libc::open(
            full.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(target_os = "linux")]
fn libc_exdev() -> i32 {
    libc::EXDEV
}

#[cfg(not(target_os = "linux"))]
fn libc_exdev() -> i32 {
    18 // EXDEV on the BSDs and macOS
}

#[cfg(target_os = "linux")]
fn libc_eloop() -> i32 {
    libc::ELOOP
}

#[cfg(not(target_os = "linux"))]
fn libc_eloop() -> i32 {
    62 // ELOOP on the BSDs and macOS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "xbuild-sandbox-paths-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn symlinks_stay_inside_the_root() {
        let root = tempdir();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        symlink("/etc/shadow", root.join("etc/passwd")).unwrap();
        symlink("../../../../..", root.join("up")).unwrap();
        symlink("real", root.join("rel")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();

        let p = |s: &str| resolve_relative(&root, Path::new(s)).unwrap();
        assert_eq!(p("/etc/passwd"), PathBuf::from("etc/shadow"));
        assert_eq!(p("/up/etc/hosts"), PathBuf::from("etc/hosts"));
        assert_eq!(p("../../x"), PathBuf::from("x"));
        assert_eq!(p("/rel/a/b"), PathBuf::from("real/a/b"));
        assert_eq!(p("/"), PathBuf::new());
        let err = resolve_relative(&root, Path::new("/loop1/x")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc_eloop()));

        let b = |s: &str| resolve_beneath(&root, Path::new(s));
        assert_eq!(b("rel/a").unwrap(), PathBuf::from("real/a"));
        for escape in ["etc/passwd", "up", "../x", "real/../../x"] {
            let err = b(escape).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc_exdev()), "{escape}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    // BuildKit testCacheMountSourceEscape: a cache mount's `source=` that
    // an earlier build replaced with `ln -s /etc sel` must not reach /etc.
    #[cfg(target_os = "linux")]
    #[test]
    fn open_in_root_refuses_or_clamps_escapes() {
        use crate::Confine;
        use std::os::fd::AsRawFd;
        let root = tempdir().join("oir");
        std::fs::create_dir_all(root.join("real/d")).unwrap();
        symlink("/etc", root.join("sel")).unwrap();
        symlink("real", root.join("rel")).unwrap();
        symlink("../..", root.join("up")).unwrap();
        let err = open_in_root(&root, "sel", Confine::Beneath).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EXDEV));
        let err = open_in_root(&root, "up/etc", Confine::Beneath).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EXDEV));
        assert!(open_in_root(&root, "rel/d", Confine::Beneath).is_ok());
        // In-root: /etc is the root's own etc, which does not exist here.
        let err = open_in_root(&root, "sel", Confine::InRoot).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        let fd = open_in_root(&root, "up/real/d", Confine::InRoot).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(link, root.join("real/d").canonicalize().unwrap());
        std::fs::remove_dir_all(root.parent().unwrap()).unwrap();
    }
}
