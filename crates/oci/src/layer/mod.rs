//! Layer tarballs: [`write`] turns a directory tree (a full tree or an
//! overlayfs upper directory) into a gzip-compressed tar while computing its
//! digest and diffID in one pass; [`apply`] unpacks a layer onto a root
//! directory with OCI whiteout semantics, never touching anything outside it.

pub mod apply;
pub mod merge;
pub mod write;

pub use apply::{
    apply_layer, ApplyError, ApplyFormat, ApplyOptions, ApplyStats, OVERLAY_OPAQUE_XATTR,
};
pub use merge::{merge_tree, MergeError, MergeStats};
pub use write::{write_layer, LayerOutput, SourceMode, WriteError, WriteOptions};

/// Prefix of a whiteout entry's base name (`.wh.<name>` deletes `<name>`).
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Base name of the opaque-directory marker.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// Prefix of PAX records carrying extended attributes.
pub const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Thin wrappers over the `l*xattr` system calls (never following symlinks),
/// shared by layer writing and applying and by the engine's copy snapshotter.
pub mod xattr {
    use std::ffi::{CString, OsStr, OsString};
    use std::io;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::Path;

    fn cpath(p: &Path) -> io::Result<CString> {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
    }

    /// Names of the extended attributes of `path`, sorted.
    pub fn list(path: &Path) -> io::Result<Vec<OsString>> {
        let c = cpath(path)?;
        let mut buf = vec![0u8; 1024];
        loop {
            // SAFETY: buf is valid for buf.len() bytes; c is NUL-terminated.
            let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                buf.truncate(n as usize);
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => {
                    // SAFETY: a NULL buffer of size 0 asks for the needed size.
                    let need = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
                    if need < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    buf.resize(need as usize + 64, 0);
                }
                Some(libc::ENOTSUP) => return Ok(Vec::new()),
                _ => return Err(e),
            }
        }
        let mut names: Vec<OsString> = buf
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| OsString::from_vec(s.to_vec()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The value of attribute `name` of `path`, or `None` when absent.
    pub fn get(path: &Path, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
        let c = cpath(path)?;
        let n = CString::new(name.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: buffers valid, strings NUL-terminated.
            let r = unsafe {
                libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if r >= 0 {
                buf.truncate(r as usize);
                return Ok(Some(buf));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
                Some(libc::ERANGE) => {
                    // SAFETY: size query.
                    let need =
                        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
                    if need < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    buf.resize(need as usize + 64, 0);
                }
                _ => return Err(e),
            }
        }
    }

    /// Set attribute `name` of `path` to `value`.
    pub fn set(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
        let c = cpath(path)?;
        let n = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
        // SAFETY: buffers valid, strings NUL-terminated.
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
            Err(io::Error::last_os_error())
        }
    }
}
