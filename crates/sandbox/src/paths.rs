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
        std::fs::remove_dir_all(&root).unwrap();
    }
}
