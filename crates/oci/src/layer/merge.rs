//! Merging an unpacked root filesystem into a directory that may already
//! hold files, the way BuildKit's local exporter does: entries of the
//! source are added, and replace what has the same path in the
//! destination; nothing else in the destination is ever removed.
//!
//! The source is consumed: entries are renamed into place (one atomic step
//! per file, which keeps hard links linked), falling back to a copy when the
//! two directories are on different filesystems.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An error of [`merge_tree`], naming the path.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct MergeError {
    /// What was being done.
    pub op: &'static str,
    /// The path.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MergeError + 'a {
    move |source| MergeError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What [`merge_tree`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Entries added where the destination had nothing.
    pub added: u64,
    /// Entries that replaced a destination entry of the same path.
    pub replaced: u64,
}

/// Moves every entry of `src` into `dest` (created when missing): a
/// directory present on both sides is merged recursively (taking the
/// source's mode and, when permitted, owner), anything else replaces the
/// destination's entry. Entries only in `dest` stay untouched.
pub fn merge_tree(src: &Path, dest: &Path) -> Result<MergeStats, MergeError> {
    let mut stats = MergeStats::default();
    fs::create_dir_all(dest).map_err(err("create directory", dest))?;
    merge_dir(src, dest, &mut stats)?;
    Ok(stats)
}

fn merge_dir(src: &Path, dest: &Path, stats: &mut MergeStats) -> Result<(), MergeError> {
    let rd = fs::read_dir(src).map_err(err("read directory", src))?;
    for ent in rd {
        let ent = ent.map_err(err("read directory", src))?;
        let s = ent.path();
        let d = dest.join(ent.file_name());
        let smd = fs::symlink_metadata(&s).map_err(err("stat", &s))?;
        let dmd = match fs::symlink_metadata(&d) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(err("stat", &d)(e)),
        };
        match dmd {
            Some(dm) if smd.is_dir() && dm.is_dir() => {
                merge_dir(&s, &d, stats)?;
                fs::set_permissions(&d, fs::Permissions::from_mode(smd.mode() & 0o7777))
                    .map_err(err("chmod", &d))?;
                let _ = std::os::unix::fs::lchown(&d, Some(smd.uid()), Some(smd.gid()));
                stats.replaced += 1;
            }
            Some(dm) => {
                // A different kind of entry (or a file): the image's wins.
                if dm.is_dir() {
                    fs::remove_dir_all(&d).map_err(err("replace", &d))?;
                }
                move_entry(&s, &d, &smd)?;
                stats.replaced += 1;
            }
            None => {
                move_entry(&s, &d, &smd)?;
                stats.added += 1;
            }
        }
    }
    Ok(())
}

/// Renames `s` to `d` (replacing a non-directory `d`), copying when they
/// are on different filesystems.
fn move_entry(s: &Path, d: &Path, smd: &fs::Metadata) -> Result<(), MergeError> {
    match fs::rename(s, d) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_entry(s, d, smd),
        Err(e) => Err(err("move into place", d)(e)),
    }
}

fn copy_entry(s: &Path, d: &Path, smd: &fs::Metadata) -> Result<(), MergeError> {
    let ft = smd.file_type();
    if ft.is_dir() {
        fs::create_dir_all(d).map_err(err("create directory", d))?;
        let mut stats = MergeStats::default();
        merge_dir(s, d, &mut stats)?;
        fs::set_permissions(d, fs::Permissions::from_mode(smd.mode() & 0o7777))
            .map_err(err("chmod", d))?;
    } else if ft.is_symlink() {
        let target = fs::read_link(s).map_err(err("read link", s))?;
        let _ = fs::remove_file(d);
        std::os::unix::fs::symlink(target, d).map_err(err("create symlink", d))?;
    } else if ft.is_file() {
        let _ = fs::remove_file(d);
        fs::copy(s, d).map_err(err("copy", d))?;
        fs::set_permissions(d, fs::Permissions::from_mode(smd.mode() & 0o7777))
            .map_err(err("chmod", d))?;
    } else {
        // FIFOs and sockets are not worth copying across filesystems.
        return Ok(());
    }
    let _ = std::os::unix::fs::lchown(d, Some(smd.uid()), Some(smd.gid()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_and_overwrites_and_never_deletes() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::write(src.join("etc/new"), "new").unwrap();
        fs::write(src.join("etc/same"), "image").unwrap();
        fs::write(src.join("file-over-dir"), "f").unwrap();
        std::os::unix::fs::symlink("etc/new", src.join("link")).unwrap();
        fs::create_dir_all(dest.join("etc")).unwrap();
        fs::write(dest.join("etc/same"), "user").unwrap();
        fs::write(dest.join("etc/mine"), "user").unwrap();
        fs::write(dest.join("keep"), "user").unwrap();
        fs::create_dir_all(dest.join("file-over-dir")).unwrap();
        let st = merge_tree(&src, &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("etc/new")).unwrap(), "new");
        assert_eq!(fs::read_to_string(dest.join("etc/same")).unwrap(), "image");
        assert_eq!(fs::read_to_string(dest.join("etc/mine")).unwrap(), "user");
        assert_eq!(fs::read_to_string(dest.join("keep")).unwrap(), "user");
        assert_eq!(fs::read_to_string(dest.join("file-over-dir")).unwrap(), "f");
        assert_eq!(
            fs::read_link(dest.join("link")).unwrap(),
            Path::new("etc/new")
        );
        assert!(st.added >= 2 && st.replaced >= 2, "{st:?}");
    }
}
