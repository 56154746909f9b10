//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// One path's observable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub content: Vec<u8>,
    pub link: Option<String>,
    pub rdev: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub ino: u64,
}

pub fn user_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return out;
    }
    buf.truncate(n as usize);
    for name in buf.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        if !name.starts_with(b"user.") {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 4096];
        let r = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if r >= 0 {
            v.truncate(r as usize);
            out.insert(String::from_utf8_lossy(name).into_owned(), v);
        }
    }
    out
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether the filesystem of `dir` accepts user xattrs.
pub fn user_xattrs_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    fs::write(&probe, b"").unwrap();
    let ok = set_xattr(&probe, "user.probe", b"1").is_ok();
    fs::remove_file(&probe).unwrap();
    ok
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Everything observable under `root` (not following links), keyed by relative path.
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        out.insert(
            rel,
            Node {
                kind: kind.into(),
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: m.mtime(),
                content: if ft.is_file() {
                    fs::read(&p).unwrap()
                } else {
                    Vec::new()
                },
                link: ft
                    .is_symlink()
                    .then(|| fs::read_link(&p).unwrap().to_string_lossy().into_owned()),
                rdev: m.rdev(),
                xattrs: user_xattrs(&p),
                ino: m.ino(),
            },
        );
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// Compare two snapshots ignoring inode numbers; for hardlinks, compare the
/// grouping of paths by inode instead.
pub fn assert_same_tree(
    a: &BTreeMap<String, Node>,
    b: &BTreeMap<String, Node>,
    check_dir_mtime: bool,
) {
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "different paths");
    for (k, na) in a {
        let nb = &b[k];
        let mut x = na.clone();
        let mut y = nb.clone();
        x.ino = 0;
        y.ino = 0;
        if !check_dir_mtime && x.kind == "dir" {
            x.mtime = 0;
            y.mtime = 0;
        }
        assert_eq!(x, y, "difference at {k}");
    }
    let groups = |s: &BTreeMap<String, Node>| {
        let mut g: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (k, n) in s {
            if n.kind != "dir" {
                g.entry(n.ino).or_default().push(k.clone());
            }
        }
        let mut v: Vec<Vec<String>> = g.into_values().filter(|v| v.len() > 1).collect();
        v.sort();
        v
    };
    assert_eq!(groups(a), groups(b), "hardlink groups differ");
}

pub fn set_mtime(p: &Path, secs: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let ts = [t, t];
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

pub fn mknod(
    p: &Path,
    kind: libc::mode_t,
    mode: u32,
    major: u32,
    minor: u32,
) -> std::io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let r = unsafe { libc::mknod(c.as_ptr(), kind | mode, libc::makedev(major, minor)) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
