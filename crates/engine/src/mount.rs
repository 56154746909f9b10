//! Mounts the engine makes on the host: overlayfs stacks of snapshots (a
//! writable one per filesystem-changing step, read-only views for
//! `COPY --from` and bind mounts) and small tmpfs mounts for secrets.
//! Every mount is a guard that unmounts when dropped, so error paths never
//! leave anything mounted.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Longest mount data string the kernel accepts (one page, NUL included).
pub const MAX_MOUNT_DATA: usize = 4095;

/// Errors of the mount helpers.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `mount(2)` failed.
    #[error("mount {fstype} on {target}: {source} (options: {options})")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: PathBuf,
        /// The data string (paths of snapshots only).
        options: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `umount2(2)` failed.
    #[error("unmount {target}: {source}")]
    Unmount {
        /// Mount point.
        target: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The overlay option string would exceed the kernel's page-size limit.
    #[error(
        "the layer chain is too long for one overlay mount: {layers} layers need {len} bytes of \
         mount options, more than the kernel's {MAX_MOUNT_DATA} (use fewer layers or a shorter \
         XBUILD_ROOT)"
    )]
    TooManyLayers {
        /// Number of lower directories.
        layers: usize,
        /// Length of the option string.
        len: usize,
    },
    /// A path cannot be used in overlay options.
    #[error("path {0} contains ',' or ':' and cannot be used as an overlay layer")]
    BadPath(PathBuf),
}

/// 0 = unknown, 1 = the kernel takes `index=off,redirect_dir=off,metacopy=off`, 2 = it does not.
static EXTENDED_OPTIONS: AtomicU8 = AtomicU8::new(0);
const EXTRA: &str = "index=off,redirect_dir=off,metacopy=off";

/// A mounted filesystem, unmounted on drop (lazily if busy).
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    mounted: bool,
}

impl MountGuard {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts now, reporting failure (a busy mount is detached instead).
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.mounted = false;
        unmount(&self.target)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            let _ = unmount(&self.target);
        }
    }
}

/// Unmounts `target`, detaching it when it is busy.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            umount2(target, MntFlags::MNT_DETACH).map_err(|e| MountError::Unmount {
                target: target.to_path_buf(),
                source: e.into(),
            })
        }
        Err(e) => Err(MountError::Unmount {
            target: target.to_path_buf(),
            source: e.into(),
        }),
    }
}

fn check_path(p: &Path) -> Result<&str, MountError> {
    match p.to_str() {
        Some(s) if !s.contains(',') && !s.contains(':') => Ok(s),
        _ => Err(MountError::BadPath(p.to_path_buf())),
    }
}

/// The overlay data string for `lowers` (top first) and an optional
/// `(upper, work)` pair, without the extended options.
pub fn overlay_options(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
) -> Result<String, MountError> {
    let mut s = String::from("lowerdir=");
    // Two steps with identical results share one snapshot, so a layer can
    // appear twice in a chain; overlayfs refuses a repeated lowerdir
    // (ELOOP). Only the topmost copy matters: everything the lower copy
    // holds or hides, the upper copy holds or hides the same way.
    let mut seen = std::collections::HashSet::new();
    for l in lowers.iter().filter(|l| seen.insert(l.as_path())) {
        if s.len() > "lowerdir=".len() {
            s.push(':');
        }
        s.push_str(check_path(l)?);
    }
    if let Some((u, w)) = upper {
        s.push_str(",upperdir=");
        s.push_str(check_path(u)?);
        s.push_str(",workdir=");
        s.push_str(check_path(w)?);
    }
    if s.len() + EXTRA.len() + 1 > MAX_MOUNT_DATA {
        return Err(MountError::TooManyLayers {
            layers: lowers.len(),
            len: s.len() + EXTRA.len() + 1,
        });
    }
    Ok(s)
}

/// Mounts an overlay of `lowers` (top first; at least one) on `target`,
/// writable into `upper` (with its `work` dir) when given, else read-only.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<MountGuard, MountError> {
    let base = overlay_options(lowers, upper)?;
    let flags = if upper.is_none() {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let attempt = |data: &str| {
        mount(Some("overlay"), target, Some("overlay"), flags, Some(data)).map_err(|e| {
            MountError::Mount {
                fstype: "overlay",
                target: target.to_path_buf(),
                options: data.to_string(),
                source: e.into(),
            }
        })
    };
    let with_extra = format!("{base},{EXTRA}");
    match EXTENDED_OPTIONS.load(Ordering::Relaxed) {
        1 => attempt(&with_extra)?,
        2 => attempt(&base)?,
        _ => match attempt(&with_extra) {
            Ok(()) => EXTENDED_OPTIONS.store(1, Ordering::Relaxed),
            Err(first) => {
                attempt(&base).map_err(|_| first)?;
                EXTENDED_OPTIONS.store(2, Ordering::Relaxed);
            }
        },
    }
    Ok(MountGuard {
        target: target.to_path_buf(),
        mounted: true,
    })
}

/// Mounts a small private tmpfs (mode 0700, 4 MiB) on `target`: secrets
/// written there never touch a disk.
pub fn mount_private_tmpfs(target: &Path) -> Result<MountGuard, MountError> {
    let data = "mode=0700,size=4m";
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data),
    )
    .map_err(|e| MountError::Mount {
        fstype: "tmpfs",
        target: target.to_path_buf(),
        options: data.to_string(),
        source: e.into(),
    })?;
    Ok(MountGuard {
        target: target.to_path_buf(),
        mounted: true,
    })
}

/// Mount points at or below `dir`, deepest first (from `/proc/self/mountinfo`).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_limits() {
        let l = vec![PathBuf::from("/r/s/1/fs"), PathBuf::from("/r/s/2/fs")];
        let s = overlay_options(&l, Some((Path::new("/t/fs"), Path::new("/t/work")))).unwrap();
        assert_eq!(
            s,
            "lowerdir=/r/s/1/fs:/r/s/2/fs,upperdir=/t/fs,workdir=/t/work"
        );
        let many: Vec<PathBuf> = (0..400)
            .map(|i| PathBuf::from(format!("/root/snapshots/{i:016}/fs")))
            .collect();
        assert!(matches!(
            overlay_options(&many, None),
            Err(MountError::TooManyLayers { .. })
        ));
        assert!(matches!(
            overlay_options(&[PathBuf::from("/a:b")], None),
            Err(MountError::BadPath(_))
        ));
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        // A snapshot listed twice (two empty layers) is kept once, topmost.
        let dup = vec![
            PathBuf::from("/s/e"),
            PathBuf::from("/s/e"),
            PathBuf::from("/s/x"),
            PathBuf::from("/s/e"),
        ];
        assert_eq!(overlay_options(&dup, None).unwrap(), "lowerdir=/s/e:/s/x");
    }

    #[test]
    fn repeated_layers_are_listed_once() {
        // COPY twice of the same files gives the same snapshot twice.
        let l = ["/s/a/fs", "/s/a/fs", "/s/b/fs", "/s/a/fs", "/s/empty"].map(PathBuf::from);
        assert_eq!(
            overlay_options(&l, None).unwrap(),
            "lowerdir=/s/a/fs:/s/b/fs:/s/empty"
        );
    }
}
