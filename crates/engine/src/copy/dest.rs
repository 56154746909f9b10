//! Writing into a root filesystem without ever leaving it: every path is
//! resolved component by component, symlinks met on the way are read as if
//! the root were `/` (absolute targets restart at the root, `..` stops at
//! it), and the last component of a written file or link is never followed.

use super::CopyError;
use crate::context::names;
use std::collections::VecDeque;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const MAX_LINKS: usize = 255;

/// The result of resolving a path inside the root.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The existing part, relative to the root, symlinks resolved.
    pub real: PathBuf,
    /// Metadata of `real` when everything exists (`None` when some
    /// components are missing).
    pub meta: Option<fs::Metadata>,
    /// Components that do not exist yet, below `real` (escaped names, see
    /// [`crate::context::names`]).
    pub missing: Vec<String>,
}

pub(crate) fn io_at<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| CopyError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Resolves `comps` under `root` (following the last component too when
/// `follow_last`).
pub(crate) fn resolve(
    root: &Path,
    comps: &[String],
    follow_last: bool,
) -> Result<Resolved, CopyError> {
    let mut pending: VecDeque<String> = comps.iter().cloned().collect();
    let mut real = PathBuf::new();
    let mut links = 0usize;
    while let Some(c) = pending.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                real.pop();
                continue;
            }
            _ => {}
        }
        let host = root.join(&real).join(names::to_os(&c));
        let md = match fs::symlink_metadata(&host) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut missing = vec![c];
                missing.extend(pending.into_iter().filter(|p| !p.is_empty() && p != "."));
                // `..` in a missing remainder (from a dangling link) is
                // applied lexically and cannot climb above `real`.
                let mut clean: Vec<String> = Vec::new();
                for m in missing {
                    if m == ".." {
                        if clean.pop().is_none() {
                            real.pop();
                        }
                    } else {
                        clean.push(m);
                    }
                }
                return Ok(Resolved {
                    real,
                    meta: None,
                    missing: clean,
                });
            }
            Err(e) => return Err(io_at("stat", &host)(e)),
        };
        let ft = md.file_type();
        if ft.is_symlink() && (follow_last || !pending.is_empty()) {
            links += 1;
            if links > MAX_LINKS {
                return Err(CopyError::SymlinkLoop { path: host });
            }
            let target = fs::read_link(&host).map_err(io_at("readlink", &host))?;
            let target = target.as_os_str().as_bytes();
            if target.starts_with(b"/") {
                real = PathBuf::new();
            }
            for t in target.split(|&b| b == b'/').rev() {
                pending.push_front(names::encode(t));
            }
            continue;
        }
        if !ft.is_dir() && !pending.iter().all(|p| p.is_empty() || p == ".") {
            return Err(CopyError::NotADirectory {
                path: PathBuf::from("/").join(&real).join(names::to_os(&c)),
            });
        }
        real.push(names::to_os(&c));
        if pending.is_empty() {
            return Ok(Resolved {
                real,
                meta: Some(md),
                missing: Vec::new(),
            });
        }
    }
    let host = root.join(&real);
    let md = fs::symlink_metadata(&host).map_err(io_at("stat", &host))?;
    Ok(Resolved {
        real,
        meta: Some(md),
        missing: Vec::new(),
    })
}

/// Ensures the directory `comps` exists inside `root` (existing symlinks
/// followed inside the root) and returns its host path. Missing directories
/// are created with `mode` and owned by `owner`; each one created is pushed
/// to `created`.
pub(crate) fn ensure_dir(
    root: &Path,
    comps: &[String],
    owner: (u32, u32),
    mode: u32,
    created: &mut Vec<PathBuf>,
) -> Result<PathBuf, CopyError> {
    let r = resolve(root, comps, true)?;
    let mut host = root.join(&r.real);
    if let Some(md) = &r.meta {
        if !md.is_dir() {
            return Err(CopyError::NotADirectory {
                path: PathBuf::from("/").join(&r.real),
            });
        }
        return Ok(host);
    }
    for m in &r.missing {
        host.push(names::to_os(m));
        mkdir_owned(&host, owner, mode)?;
        created.push(host.clone());
    }
    Ok(host)
}

/// `mkdir` then `lchown` and `chmod` (umask-independent).
pub(crate) fn mkdir_owned(host: &Path, owner: (u32, u32), mode: u32) -> Result<(), CopyError> {
    match fs::DirBuilder::new().mode(0o700).create(host) {
        Ok(()) => {}
        Err(e) => return Err(io_at("mkdir", host)(e)),
    }
    lchown(host, owner)?;
    fs::set_permissions(host, fs::Permissions::from_mode(mode)).map_err(io_at("chmod", host))
}

/// One directory step below an already resolved directory: follows an
/// existing symlink inside the root, creates a missing directory. Returns
/// the host path and whether it was created.
pub(crate) fn step_dir(
    root: &Path,
    parent: &Path,
    name: &str,
    owner: (u32, u32),
    mode: u32,
) -> Result<(PathBuf, bool), CopyError> {
    let host = parent.join(names::to_os(name));
    match fs::symlink_metadata(&host) {
        Ok(md) if md.is_dir() => Ok((host, false)),
        Ok(md) if md.file_type().is_symlink() => {
            let rel = host.strip_prefix(root).unwrap_or(Path::new(""));
            let comps: Vec<String> = rel.iter().map(names::encode_os).collect();
            let mut created = Vec::new();
            let h = ensure_dir(root, &comps, owner, 0o755, &mut created)?;
            Ok((h, !created.is_empty()))
        }
        Ok(_) => Err(CopyError::NotADirectory {
            path: PathBuf::from("/").join(host.strip_prefix(root).unwrap_or(&host)),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            mkdir_owned(&host, owner, mode)?;
            Ok((host, true))
        }
        Err(e) => Err(io_at("stat", &host)(e)),
    }
}

/// Removes a non-directory at `host` (never following it) so that something
/// new can be created there. An existing directory is an error.
pub(crate) fn clear_for_write(root: &Path, host: &Path) -> Result<(), CopyError> {
    match fs::symlink_metadata(host) {
        Ok(md) if md.is_dir() => Err(CopyError::CannotOverwriteDir {
            path: PathBuf::from("/").join(host.strip_prefix(root).unwrap_or(host)),
        }),
        Ok(_) => fs::remove_file(host).map_err(io_at("remove", host)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at("stat", host)(e)),
    }
}

fn cpath(p: &Path) -> Result<CString, CopyError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| CopyError::Io {
        op: "use path",
        path: p.to_path_buf(),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// `lchown`.
pub(crate) fn lchown(host: &Path, (uid, gid): (u32, u32)) -> Result<(), CopyError> {
    std::os::unix::fs::lchown(host, Some(uid), Some(gid)).map_err(io_at("chown", host))
}

/// Sets atime and mtime of `host` without following a symlink.
pub(crate) fn set_times_nofollow(host: &Path, mtime: (i64, i64)) -> Result<(), CopyError> {
    let c = cpath(host)?;
    let ts = libc::timespec {
        tv_sec: mtime.0 as libc::time_t,
        tv_nsec: mtime.1 as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: `c` is a valid NUL-terminated path and `times` two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io_at("set times", host)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets atime and mtime through an open file.
pub(crate) fn set_times_fd(f: &fs::File, host: &Path, mtime: (i64, i64)) -> Result<(), CopyError> {
    use std::os::fd::AsRawFd;
    let ts = libc::timespec {
        tv_sec: mtime.0 as libc::time_t,
        tv_nsec: mtime.1 as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: the descriptor is open and `times` holds two timespecs.
    if unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(io_at("set times", host)(io::Error::last_os_error()));
    }
    Ok(())
}

/// `(seconds, nanoseconds)` mtime of metadata.
pub(crate) fn mtime_of(md: &fs::Metadata) -> (i64, i64) {
    (md.mtime(), md.mtime_nsec())
}
