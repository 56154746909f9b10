//! `RUN --mount=type=bind` of the build context: a view that holds only
//! what `.dockerignore` lets through (Docker sends only those files, so a
//! bind mount cannot show the others).
//!
//! The view is built in a scratch directory from the [`ContextIndex`]:
//! directories are created with the context's mode and owner, files are
//! hard-linked when the mount is read-only (same inode, nothing to copy) and
//! copied otherwise, symlinks are recreated as links (never followed).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::context::{host_path, names, ContextIndex, EntryKind, IndexEntry};
use crate::copyfs;
use crate::exec::{resolve_in_root, ExecError};

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExecError + 'a {
    move |source| ExecError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The context-relative path `src_rel` resolves to (symlinks inside the
/// context followed, `..` stopping at its root), `/`-separated.
fn relative_source(dir: &Path, src_rel: &str) -> String {
    let p = resolve_in_root(dir, src_rel);
    let rel = p.strip_prefix(dir).unwrap_or(Path::new(""));
    rel.components()
        .map(|c| names::encode_os(c.as_os_str()))
        .collect::<Vec<_>>()
        .join("/")
}

fn place(entry: &IndexEntry, src: &Path, dst: &Path, link: bool) -> Result<(), ExecError> {
    match entry.kind {
        EntryKind::Dir => {
            match fs::create_dir(dst) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create directory", dst)(e)),
            }
            fs::set_permissions(dst, fs::Permissions::from_mode(entry.mode))
                .map_err(io_err("chmod", dst))?;
            std::os::unix::fs::chown(dst, Some(entry.uid), Some(entry.gid))
                .map_err(io_err("chown", dst))?;
            Ok(())
        }
        EntryKind::File if link => match fs::hard_link(src, dst) {
            Ok(()) => Ok(()),
            // Another filesystem, or links refused: copy instead.
            Err(_) => Ok(copyfs::copy_one(src, dst)?),
        },
        EntryKind::File | EntryKind::Symlink => Ok(copyfs::copy_one(src, dst)?),
    }
}

/// Builds the filtered view of `src_rel` of the context `dir` under `into`
/// (which must not exist) and returns the path to mount: `into` itself, or
/// the single file when the source is a file. `readonly` views may share
/// inodes with the context; writable ones are private copies.
pub(crate) fn filtered_view(
    dir: &Path,
    index: &ContextIndex,
    src_rel: &str,
    into: &Path,
    readonly: bool,
) -> Result<PathBuf, ExecError> {
    let rel = relative_source(dir, src_rel);
    let missing = || ExecError::SourceMissing {
        source_path: src_rel.to_string(),
        from: "the build context",
    };
    if !rel.is_empty() {
        let entry = index.get(&rel).ok_or_else(missing)?;
        if entry.kind != EntryKind::Dir {
            let src = host_path(dir, &rel);
            if !src.exists() {
                return Err(missing());
            }
            place(entry, &src, into, readonly)?;
            return Ok(into.to_path_buf());
        }
    }
    fs::create_dir(into).map_err(io_err("create directory", into))?;
    if let Some(root) = index.get(&rel).filter(|_| !rel.is_empty()) {
        place(root, &host_path(dir, &rel), into, readonly)?;
    } else if let Ok(md) = fs::metadata(dir) {
        fs::set_permissions(
            into,
            fs::Permissions::from_mode(md.permissions().mode() & 0o7777),
        )
        .map_err(io_err("chmod", into))?;
    }
    let prefix_len = if rel.is_empty() { 0 } else { rel.len() + 1 };
    for entry in index.subtree(&rel) {
        let below = &entry.path[prefix_len..];
        let src = host_path(dir, &entry.path);
        let dst = names::join(into, below);
        match place(entry, &src, &dst, readonly) {
            Ok(()) => {}
            // Removed from the context since the scan: leave it out.
            Err(ExecError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(ExecError::CopyFs(copyfs::CopyFsError::Io { source, .. }))
                if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(into.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{scan, ScanOptions};
    use std::os::unix::fs::MetadataExt;

    fn ctx() -> (tempfile::TempDir, ContextIndex) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::write(p.join(".dockerignore"), "secret.txt\n**/*.log\n").unwrap();
        fs::write(p.join("a.txt"), "a\n").unwrap();
        fs::write(p.join("secret.txt"), "no\n").unwrap();
        fs::create_dir(p.join("sub")).unwrap();
        fs::write(p.join("sub/b.txt"), "b\n").unwrap();
        fs::write(p.join("sub/x.log"), "no\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("link")).unwrap();
        let index = scan(p, None, &ScanOptions::default(), None).unwrap();
        (d, index)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn views_hold_only_indexed_entries() {
        let (c, index) = ctx();
        let out = tempfile::tempdir().unwrap();
        for readonly in [true, false] {
            let into = out.path().join(format!("ro-{readonly}"));
            let v = filtered_view(c.path(), &index, ".", &into, readonly).unwrap();
            assert_eq!(names(&v), [".dockerignore", "a.txt", "link", "sub"]);
            assert_eq!(names(&v.join("sub")), ["b.txt"]);
            assert_eq!(
                fs::read_link(v.join("link")).unwrap(),
                Path::new("/etc/passwd")
            );
            let same_inode = fs::metadata(v.join("a.txt")).unwrap().ino()
                == fs::metadata(c.path().join("a.txt")).unwrap().ino();
            // Writable views never share a file with the context.
            assert!(readonly || !same_inode);
            let sub = filtered_view(
                c.path(),
                &index,
                "sub",
                &into.with_extension("sub"),
                readonly,
            )
            .unwrap();
            assert_eq!(names(&sub), ["b.txt"]);
        }
    }

    /// `RUN --mount=type=bind` of the context: names that are not UTF-8
    /// are in the view with their bytes (the whole context and a
    /// directory of it), what `.dockerignore` excludes is not.
    #[test]
    fn views_keep_non_utf8_names() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let os = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::write(p.join(".dockerignore"), b"*.bin\n").unwrap();
        fs::write(p.join(os(b"caf\xe9.txt")), "c").unwrap();
        fs::write(p.join(os(b"no\xff.bin")), "no").unwrap();
        fs::create_dir(p.join(os(b"d\xfe"))).unwrap();
        fs::write(p.join(os(b"d\xfe")).join(os(b"in\xe9")), "in").unwrap();
        let index = scan(p, None, &ScanOptions::default(), None).unwrap();
        let out = tempfile::tempdir().unwrap();
        let bytes = |dir: &Path| {
            let mut v: Vec<Vec<u8>> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().as_bytes().to_vec())
                .collect();
            v.sort();
            v
        };
        for readonly in [true, false] {
            let v = filtered_view(
                p,
                &index,
                ".",
                &out.path().join(format!("{readonly}")),
                readonly,
            )
            .unwrap();
            assert_eq!(
                bytes(&v),
                [
                    b".dockerignore".to_vec(),
                    b"caf\xe9.txt".to_vec(),
                    b"d\xfe".to_vec()
                ]
            );
            assert_eq!(
                fs::read(v.join(os(b"d\xfe")).join(os(b"in\xe9"))).unwrap(),
                b"in"
            );
        }
        // A directory named in the Dockerfile (text) holding such names.
        fs::create_dir(p.join("sub")).unwrap();
        fs::write(p.join("sub").join(os(b"x\xe9")), "x").unwrap();
        let index = scan(p, None, &ScanOptions::default(), None).unwrap();
        let v = filtered_view(p, &index, "sub", &out.path().join("sub"), true).unwrap();
        assert_eq!(bytes(&v), [b"x\xe9".to_vec()]);
    }

    #[test]
    fn ignored_or_missing_sources_are_missing() {
        let (c, index) = ctx();
        let out = tempfile::tempdir().unwrap();
        // `../../etc` is `etc` of the context (`..` stops at its root).
        for src in ["secret.txt", "sub/x.log", "nope", "../../etc"] {
            let r = filtered_view(c.path(), &index, src, &out.path().join("v"), true);
            assert!(
                matches!(r, Err(ExecError::SourceMissing { .. })),
                "{src}: {r:?}"
            );
        }
    }
}
