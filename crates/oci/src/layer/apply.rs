//! Applying a layer (gzip, zstd or plain tar) onto a root directory, with OCI
//! whiteout semantics and strict path safety.
//!
//! Path safety, the rules every entry goes through:
//! - entry names are cleaned lexically: a leading `/` is stripped and `..`
//!   cannot climb above the root (a warning is recorded);
//! - parent directories are resolved component by component inside the root;
//!   a symlink met on the way is interpreted as if the root were `/`
//!   (absolute targets restart at the root, `..` stops at it), so the
//!   directory finally used is a real directory inside the root, reached
//!   without following any link (like Go's `securejoin`);
//! - layers are stacked the way overlayfs stacks them: only symlinks this
//!   layer made are followed in a parent path. A symlink (or any other
//!   non-directory) left by an earlier layer where this layer needs a
//!   directory — an explicit directory entry or the parent of an entry — is
//!   replaced by a directory, as the layer's own directory hides it in an
//!   overlay mount (containerd applies each layer into its own directory,
//!   resolving links within that layer only). Applying layers one by one
//!   onto one root therefore gives the filesystem a RUN step sees;
//! - the last component is never followed: an existing symlink (or file) in
//!   the way is removed and replaced, files are created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW`, times and owners are set with no-follow
//!   calls;
//! - hardlink targets are resolved the same way and must be an existing
//!   non-directory inside the root;
//! - directory modes and times, set at the end, are applied only if the
//!   directory is still reachable through real directories.

use super::{xattr, PAX_XATTR_PREFIX, WHITEOUT_OPAQUE, WHITEOUT_PREFIX};
use crate::digest::{Digest, DigestWriter};
use flate2::read::MultiGzDecoder;
use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tar::EntryType;

/// Copies `r` into the file `w` (at `path`), telling read errors (the
/// layer) from write errors (the destination).
fn copy_split(r: &mut impl Read, w: &mut fs::File, path: &Path) -> Result<u64, ApplyError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ApplyError::Read(e)),
        };
        io::Write::write_all(w, &buf[..k]).map_err(io_err("write", path))?;
        n += k as u64;
    }
}

/// Errors from applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A filesystem operation under the root failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The layer stream is not a readable (gzip-compressed) tar.
    #[error("reading layer stream: {0}")]
    Read(#[source] io::Error),
    /// The layer uses a compression this applier does not read.
    #[error("unsupported layer compression: {0}")]
    UnsupportedCompression(&'static str),
    /// An entry cannot be applied safely or makes no sense.
    #[error("layer entry {name:?}: {reason}")]
    InvalidEntry {
        /// The entry name as found in the tar.
        name: String,
        /// Why.
        reason: String,
    },
}

type Result<T, E = ApplyError> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ApplyError + 'a {
    move |source| ApplyError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How whiteouts are represented in the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApplyFormat {
    /// Apply onto a full root filesystem: whiteouts delete what they name
    /// and opaque markers empty their directory.
    #[default]
    Merged,
    /// Extract into an empty directory that becomes an overlayfs layer:
    /// `.wh.<name>` becomes a character device 0/0 named `<name>` and
    /// `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.
    /// `trusted.overlay.*` attributes carried by the tar itself are dropped,
    /// so a layer cannot smuggle overlayfs redirects or metacopy markers.
    Overlay,
}

/// The xattr that marks an overlayfs directory opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Prefix of the xattrs overlayfs interprets.
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";

/// Options of [`apply_layer`].
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Set owners from the tar (default: when running as root).
    pub chown: bool,
    /// Set extended attributes from the tar (best effort; default true).
    pub xattrs: bool,
    /// How whiteouts are written (default [`ApplyFormat::Merged`]).
    pub format: ApplyFormat,
    /// Create character and block device nodes (default true). When false
    /// they are skipped with a warning (a local export into a user's
    /// directory never creates devices, as BuildKit's does not).
    pub devices: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            // SAFETY: geteuid has no preconditions.
            chown: unsafe { libc::geteuid() } == 0,
            xattrs: true,
            format: ApplyFormat::Merged,
            devices: true,
        }
    }
}

/// What [`apply_layer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyStats {
    /// Tar entries read (not counting PAX / long-name headers).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hardlinks created.
    pub hardlinks: u64,
    /// Devices and fifos created.
    pub devices: u64,
    /// Whiteouts and opaque markers processed.
    pub whiteouts: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// sha256 of the uncompressed tar stream (to check against the diffID).
    pub diff_id: Digest,
    /// Size of the uncompressed tar stream.
    pub uncompressed_size: u64,
    /// Things skipped or neutralized (devices without privilege, xattrs the
    /// filesystem refused, names with `..`).
    pub warnings: Vec<String>,
}

/// A reader that hashes what is read through it.
struct HashingReader<R> {
    inner: R,
    hash: DigestWriter<io::Sink>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        io::Write::write_all(&mut self.hash, &buf[..n])?;
        Ok(n)
    }
}

const MAX_SYMLINKS: usize = 255;
const MAX_WARNINGS: usize = 1000;

/// Metadata of an entry, merged from the header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// How [`Applier::resolve_dir`] treats the path it walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolve {
    /// Find an existing directory (a hardlink's target): follow every
    /// symlink, create nothing.
    Lookup,
    /// The directory this layer puts an entry in: create what is missing,
    /// and replace what an earlier layer left there that is not a
    /// directory.
    Create,
}

struct Applier<'o> {
    root: PathBuf,
    opts: &'o ApplyOptions,
    written: HashSet<PathBuf>,
    dirs: Vec<(PathBuf, u32, (i64, i64))>,
    stats: ApplyStats,
    warned_xattrs: HashSet<(Vec<u8>, i32)>,
}

/// Apply the layer read from `reader` (gzip, zstd or plain tar, detected by magic)
/// onto `root`, which must exist.
pub fn apply_layer<R: Read>(reader: R, root: &Path, opts: &ApplyOptions) -> Result<ApplyStats> {
    let meta = fs::metadata(root).map_err(io_err("stat", root))?;
    if !meta.is_dir() {
        return Err(ApplyError::Io {
            op: "use as root",
            path: root.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    let mut br = BufReader::with_capacity(256 * 1024, reader);
    let head = br.fill_buf().map_err(ApplyError::Read)?;
    let decoded: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(br).map_err(ApplyError::Read)?)
    } else if head.starts_with(b"BZh") {
        return Err(ApplyError::UnsupportedCompression("bzip2"));
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
        return Err(ApplyError::UnsupportedCompression("xz"));
    } else {
        Box::new(br)
    };
    let hashing = HashingReader {
        inner: decoded,
        hash: DigestWriter::new(io::sink()),
    };
    let mut archive = tar::Archive::new(hashing);
    let mut ap = Applier {
        root: root.to_path_buf(),
        opts,
        written: HashSet::new(),
        dirs: Vec::new(),
        stats: ApplyStats {
            entries: 0,
            files: 0,
            dirs: 0,
            symlinks: 0,
            hardlinks: 0,
            devices: 0,
            whiteouts: 0,
            bytes: 0,
            diff_id: Digest::sha256_of(b""),
            uncompressed_size: 0,
            warnings: Vec::new(),
        },
        warned_xattrs: HashSet::new(),
    };
    for entry in archive.entries().map_err(ApplyError::Read)? {
        let mut entry = entry.map_err(ApplyError::Read)?;
        ap.entry(&mut entry)?;
    }
    ap.finish_dirs();
    // Drain trailing padding so the diffID covers the whole stream.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(ApplyError::Read)?;
    let (diff_id, n, _) = rest.hash.finish();
    ap.stats.diff_id = diff_id;
    ap.stats.uncompressed_size = n;
    Ok(ap.stats)
}

/// Clean an entry name lexically: components, no `.`, `..` clamped at the
/// root. Returns the components and whether anything was neutralized.
fn clean_name(raw: &[u8]) -> (Vec<OsString>, bool) {
    let mut out: Vec<OsString> = Vec::new();
    let mut neutralized = raw.starts_with(b"/");
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                neutralized = true;
                out.pop();
            }
            n => out.push(OsString::from_vec(n.to_vec())),
        }
    }
    (out, neutralized)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn lchown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(p)?;
    // SAFETY: c is NUL-terminated.
    if unsafe { libc::lchown(c.as_ptr(), uid, gid) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_times_nofollow(p: &Path, (sec, nsec): (i64, i64)) -> io::Result<()> {
    let c = cstr(p)?;
    let t = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    };
    let times = [t, t];
    // SAFETY: c is NUL-terminated, times points at two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mknod(p: &Path, kind: libc::mode_t, perm: u32, major: u32, minor: u32) -> io::Result<()> {
    let c = cstr(p)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: c is NUL-terminated.
    if unsafe { libc::mknod(c.as_ptr(), kind | (perm & 0o7777) as libc::mode_t, dev) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn parse_pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut ns = 0i64;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let scale = 10i64.pow(9 - digits.len() as u32);
        ns = digits.parse::<i64>().ok()? * scale;
        if sec < 0 && ns > 0 {
            return Some((sec - 1, 1_000_000_000 - ns));
        }
    }
    Some((sec, ns))
}

impl Applier<'_> {
    fn warn(&mut self, msg: String) {
        if self.stats.warnings.len() < MAX_WARNINGS {
            self.stats.warnings.push(msg);
        }
    }

    /// Resolve the directory named by `comps` inside the root, following
    /// symlinks as if the root were `/`.
    ///
    /// With [`Resolve::Create`], missing directories are made (0755) and a
    /// non-directory that this layer did not write (an earlier layer's
    /// symlink or file) is replaced by a directory instead of being
    /// followed; with [`Resolve::Lookup`] every symlink is followed and
    /// `Ok(None)` is returned when the directory does not exist.
    fn resolve_dir(
        &mut self,
        comps: &[OsString],
        how: Resolve,
        name: &str,
    ) -> Result<Option<PathBuf>> {
        let create = how == Resolve::Create;
        let mut stack: Vec<OsString> = Vec::new();
        let mut queue: std::collections::VecDeque<OsString> = comps.iter().cloned().collect();
        let mut links = 0usize;
        while let Some(c) = queue.pop_front() {
            let cb = c.as_bytes();
            if cb.is_empty() || cb == b"." {
                continue;
            }
            if cb == b".." {
                stack.pop();
                continue;
            }
            let mut p = self.root.clone();
            p.extend(&stack);
            p.push(&c);
            let meta = match fs::symlink_metadata(&p) {
                // An earlier layer's non-directory where this layer has a
                // directory: the directory hides it, as in an overlay mount.
                Ok(m) if create && !m.is_dir() && !self.written.contains(&p) => {
                    fs::remove_file(&p).map_err(io_err("replace", &p))?;
                    Err(io::Error::from(io::ErrorKind::NotFound))
                }
                other => other,
            };
            match meta {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(ApplyError::InvalidEntry {
                            name: name.to_string(),
                            reason: "too many levels of symbolic links in its parent path".into(),
                        });
                    }
                    let target = fs::read_link(&p).map_err(io_err("read link", &p))?;
                    let tb = target.as_os_str().as_bytes();
                    if tb.starts_with(b"/") {
                        stack.clear();
                    }
                    let mut front: Vec<OsString> = tb
                        .split(|b| *b == b'/')
                        .filter(|s| !s.is_empty())
                        .map(|s| OsString::from_vec(s.to_vec()))
                        .collect();
                    front.reverse();
                    for f in front {
                        queue.push_front(f);
                    }
                }
                Ok(m) if m.is_dir() => stack.push(c),
                Ok(_) => {
                    return Err(ApplyError::InvalidEntry {
                        name: name.to_string(),
                        reason: format!("parent {} is not a directory", p.display()),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&p)
                        .map_err(io_err("create directory", &p))?;
                    self.mark_written(&p);
                    stack.push(c);
                }
                Err(e) => return Err(io_err("stat", &p)(e)),
            }
        }
        let mut p = self.root.clone();
        p.extend(&stack);
        Ok(Some(p))
    }

    fn mark_written(&mut self, p: &Path) {
        let mut cur = p;
        while cur != self.root && self.written.insert(cur.to_path_buf()) {
            match cur.parent() {
                Some(par) => cur = par,
                None => break,
            }
        }
    }

    /// Make room at `p` for a new entry: keep an existing directory when the
    /// new entry is one, remove anything else (never following links).
    fn clear_target(&self, p: &Path, new_is_dir: bool) -> Result<bool> {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {
                if new_is_dir {
                    return Ok(true);
                }
                fs::remove_dir_all(p).map_err(io_err("remove directory", p))?;
            }
            Ok(_) => fs::remove_file(p).map_err(io_err("remove", p))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat", p)(e)),
        }
        Ok(false)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let ty = entry.header().entry_type();
        if matches!(
            ty,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        self.stats.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let (mut comps, neutralized) = clean_name(&raw);
        if neutralized {
            self.warn(format!(
                "entry {name:?} reaches outside the layer root; applied as {:?}",
                comps
                    .iter()
                    .map(|c| c.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/")
            ));
        }
        let Some(base) = comps.pop() else {
            // The root itself ("./"): nothing to create.
            return Ok(());
        };
        let meta = self.read_meta(entry)?;

        // Whiteouts.
        let bb = base.as_bytes();
        if bb == WHITEOUT_OPAQUE.as_bytes() {
            self.stats.whiteouts += 1;
            return self.opaque(&comps, &name);
        }
        if let Some(target) = bb.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            self.stats.whiteouts += 1;
            if target.starts_with(WHITEOUT_PREFIX.as_bytes())
                || target.is_empty()
                || target == b"."
                || target == b".."
            {
                // aufs metadata (.wh..wh.plnk etc.) or nonsense: ignore.
                return Ok(());
            }
            return self.whiteout(&comps, OsStr::from_bytes(target), &name);
        }

        let is_dir = ty == EntryType::Directory;
        let parent = self
            .resolve_dir(&comps, Resolve::Create, &name)?
            .expect("created parents exist");
        let p = parent.join(&base);
        if ty == EntryType::Link {
            return self.hardlink(entry, &p, &name);
        }
        let existed_dir = self.clear_target(&p, is_dir)?;
        match ty {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&p)
                    .map_err(io_err("create", &p))?;
                // Reading the layer and writing the file fail differently: a
                // full disk is a write error naming the file, not a bad layer.
                let n = copy_split(entry, &mut f, &p)?;
                self.stats.bytes += n;
                self.stats.files += 1;
                if self.opts.chown {
                    // SAFETY: valid fd.
                    if unsafe { libc::fchown(f.as_raw_fd(), meta.uid, meta.gid) } != 0 {
                        return Err(io_err("chown", &p)(io::Error::last_os_error()));
                    }
                }
                self.set_xattrs(&p, &meta);
                f.set_permissions(Permissions::from_mode(meta.mode & 0o7777))
                    .map_err(io_err("chmod", &p))?;
                drop(f);
                set_times_nofollow(&p, meta.mtime).map_err(io_err("set times of", &p))?;
            }
            EntryType::Directory => {
                if !existed_dir {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&p)
                        .map_err(io_err("create directory", &p))?;
                }
                self.stats.dirs += 1;
                if self.opts.chown {
                    lchown(&p, meta.uid, meta.gid).map_err(io_err("chown", &p))?;
                }
                self.set_xattrs(&p, &meta);
                self.dirs.push((p.clone(), meta.mode & 0o7777, meta.mtime));
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ApplyError::InvalidEntry {
                        name: name.clone(),
                        reason: "symlink without a target".into(),
                    })?
                    .into_owned();
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &p)
                    .map_err(io_err("create symlink", &p))?;
                self.stats.symlinks += 1;
                if self.opts.chown {
                    lchown(&p, meta.uid, meta.gid).map_err(io_err("chown", &p))?;
                }
                self.set_xattrs(&p, &meta);
                set_times_nofollow(&p, meta.mtime).map_err(io_err("set times of", &p))?;
            }
            EntryType::Char | EntryType::Block if !self.opts.devices => {
                self.warn(format!("skipped device node {name:?}"));
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let kind = match ty {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                if let Err(e) = mknod(&p, kind, meta.mode, major, minor) {
                    if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                        self.warn(format!("skipped device {name:?}: {e}"));
                        return Ok(());
                    }
                    return Err(io_err("mknod", &p)(e));
                }
                self.stats.devices += 1;
                if self.opts.chown {
                    lchown(&p, meta.uid, meta.gid).map_err(io_err("chown", &p))?;
                }
                self.set_xattrs(&p, &meta);
                fs::set_permissions(&p, Permissions::from_mode(meta.mode & 0o7777))
                    .map_err(io_err("chmod", &p))?;
                set_times_nofollow(&p, meta.mtime).map_err(io_err("set times of", &p))?;
            }
            other => {
                self.warn(format!(
                    "skipped entry {name:?} of unsupported type {other:?}"
                ));
                return Ok(());
            }
        }
        self.mark_written(&p);
        Ok(())
    }

    fn read_meta<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<Meta> {
        let h = entry.header();
        let mut meta = Meta {
            mode: h.mode().unwrap_or(0o644),
            uid: h.uid().unwrap_or(0) as u32,
            gid: h.gid().unwrap_or(0) as u32,
            mtime: (h.mtime().unwrap_or(0) as i64, 0),
            xattrs: Vec::new(),
        };
        if let Some(exts) = entry.pax_extensions().map_err(ApplyError::Read)? {
            for ext in exts {
                let ext = ext.map_err(ApplyError::Read)?;
                let k = ext.key_bytes();
                let v = ext.value_bytes();
                if let Some(x) = k.strip_prefix(PAX_XATTR_PREFIX.as_bytes()) {
                    meta.xattrs.push((x.to_vec(), v.to_vec()));
                } else if k == b"uid" {
                    if let Some(n) = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()) {
                        meta.uid = n;
                    }
                } else if k == b"gid" {
                    if let Some(n) = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()) {
                        meta.gid = n;
                    }
                } else if k == b"mtime" {
                    if let Some(t) = parse_pax_time(v) {
                        meta.mtime = t;
                    }
                }
            }
        }
        Ok(meta)
    }

    fn set_xattrs(&mut self, p: &Path, meta: &Meta) {
        if !self.opts.xattrs {
            return;
        }
        for (k, v) in &meta.xattrs {
            if k.as_slice() == b"security.selinux" {
                continue;
            }
            if self.opts.format == ApplyFormat::Overlay && k.starts_with(OVERLAY_XATTR_PREFIX) {
                continue;
            }
            if let Err(e) = xattr::set(p, k, v) {
                let code = e.raw_os_error().unwrap_or(0);
                if self.warned_xattrs.insert((k.clone(), code)) {
                    self.warn(format!(
                        "could not set xattr {} on {}: {e}",
                        String::from_utf8_lossy(k),
                        p.display()
                    ));
                }
            }
        }
    }

    fn hardlink<R: Read>(&mut self, entry: &tar::Entry<'_, R>, p: &Path, name: &str) -> Result<()> {
        let raw = entry
            .link_name_bytes()
            .ok_or_else(|| ApplyError::InvalidEntry {
                name: name.to_string(),
                reason: "hardlink without a target".into(),
            })?
            .into_owned();
        let (mut tcomps, neutralized) = clean_name(&raw);
        if neutralized {
            self.warn(format!(
                "hardlink {name:?} targets {:?} outside the layer root; resolved inside it",
                String::from_utf8_lossy(&raw)
            ));
        }
        let Some(tbase) = tcomps.pop() else {
            return Err(ApplyError::InvalidEntry {
                name: name.to_string(),
                reason: "hardlink to the root directory".into(),
            });
        };
        let missing = || ApplyError::InvalidEntry {
            name: name.to_string(),
            reason: format!(
                "hardlink target {:?} does not exist in the layer root",
                String::from_utf8_lossy(&raw)
            ),
        };
        let tdir = self
            .resolve_dir(&tcomps, Resolve::Lookup, name)?
            .ok_or_else(missing)?;
        let target = tdir.join(&tbase);
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => {
                return Err(ApplyError::InvalidEntry {
                    name: name.to_string(),
                    reason: "hardlink to a directory".into(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(io_err("stat", &target)(e)),
        }
        if target == p {
            return Ok(());
        }
        self.clear_target(p, false)?;
        // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked itself.
        fs::hard_link(&target, p).map_err(io_err("hardlink", p))?;
        self.stats.hardlinks += 1;
        self.mark_written(p);
        Ok(())
    }

    fn whiteout(&mut self, dir: &[OsString], target: &OsStr, name: &str) -> Result<()> {
        if self.opts.format == ApplyFormat::Overlay {
            let d = self
                .resolve_dir(dir, Resolve::Create, name)?
                .expect("created parents exist");
            let p = d.join(target);
            if self.written.contains(&p) {
                return Ok(());
            }
            self.clear_target(&p, false)?;
            mknod(&p, libc::S_IFCHR, 0, 0, 0).map_err(io_err("mknod whiteout", &p))?;
            return Ok(());
        }
        let Some(d) = self.resolve_dir(dir, Resolve::Create, name)? else {
            return Ok(());
        };
        let p = d.join(target);
        if self.written.contains(&p) {
            // Whiteouts only hide lower layers' content.
            return Ok(());
        }
        self.clear_target(&p, false)?;
        Ok(())
    }

    fn opaque(&mut self, dir: &[OsString], name: &str) -> Result<()> {
        let Some(d) = self.resolve_dir(dir, Resolve::Create, name)? else {
            return Ok(());
        };
        if self.opts.format == ApplyFormat::Overlay {
            return xattr::set(&d, OVERLAY_OPAQUE_XATTR.as_bytes(), b"y")
                .map_err(io_err("set opaque xattr on", &d));
        }
        let rd = fs::read_dir(&d).map_err(io_err("read directory", &d))?;
        let mut doomed = Vec::new();
        for ent in rd {
            let ent = ent.map_err(io_err("read directory", &d))?;
            let p = ent.path();
            if !self.written.contains(&p) {
                doomed.push(p);
            }
        }
        for p in doomed {
            self.clear_target(&p, false)?;
        }
        Ok(())
    }

    /// True when `p` is reached from the root through real directories only.
    fn still_real_dir(&self, p: &Path) -> bool {
        let Ok(rel) = p.strip_prefix(&self.root) else {
            return false;
        };
        let mut cur = self.root.clone();
        for c in rel.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                _ => return false,
            }
        }
        true
    }

    fn finish_dirs(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        // Deepest last-written first, so parents' times are set after children.
        for (p, mode, mtime) in dirs.iter().rev() {
            if !self.still_real_dir(p) {
                continue;
            }
            if let Err(e) = fs::set_permissions(p, Permissions::from_mode(*mode)) {
                self.warn(format!("could not chmod {}: {e}", p.display()));
            }
            if let Err(e) = set_times_nofollow(p, *mtime) {
                self.warn(format!("could not set times of {}: {e}", p.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_names() {
        let s = |v: (Vec<OsString>, bool)| {
            (
                v.0.iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/"),
                v.1,
            )
        };
        assert_eq!(s(clean_name(b"a/b/")), ("a/b".into(), false));
        assert_eq!(s(clean_name(b"./a//./b")), ("a/b".into(), false));
        assert_eq!(s(clean_name(b"../../etc/x")), ("etc/x".into(), true));
        assert_eq!(s(clean_name(b"/abs")), ("abs".into(), true));
        assert_eq!(s(clean_name(b"a/../../b")), ("b".into(), true));
        assert_eq!(s(clean_name(b"./")), ("".into(), false));
    }

    /// A full disk while a file is written is reported as a write error
    /// naming the file, not as an unreadable layer ("reading layer stream").
    #[test]
    fn a_full_disk_is_a_write_error_naming_the_file() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to mount a small tmpfs");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let c = |s: &str| CString::new(s).unwrap();
        let target = c(root.to_str().unwrap());
        // SAFETY: valid NUL-terminated strings.
        let r = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                c("size=64k").as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount tmpfs: {}", io::Error::last_os_error());
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(1 << 20);
        b.append_data(&mut h, "big.bin", &vec![7u8; 1 << 20][..])
            .unwrap();
        let layer = b.into_inner().unwrap();
        let e = apply_layer(&layer[..], &root, &ApplyOptions::default()).unwrap_err();
        // SAFETY: valid NUL-terminated string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let text = e.to_string();
        assert!(
            text.starts_with("write ")
                && text.contains("big.bin")
                && !text.contains("reading layer"),
            "{text}"
        );
    }

    fn overlay_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let dir = |b: &mut tar::Builder<Vec<u8>>, name: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, name, io::empty()).unwrap();
        };
        let file = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, data).unwrap();
        };
        dir(&mut b, "a/");
        file(&mut b, "a/.wh.gone", b"");
        dir(&mut b, "c/");
        file(&mut b, "c/.wh..wh..opq", b"");
        file(&mut b, "c/d", b"new");
        {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            let name = b"../../.wh.escape";
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        }
        // An attempt to smuggle an overlayfs redirect.
        b.append_pax_extensions([("SCHILY.xattr.trusted.overlay.redirect", b"/etc".as_slice())])
            .unwrap();
        dir(&mut b, "r/");
        b.into_inner().unwrap()
    }

    #[test]
    fn overlay_format_whiteouts() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root for mknod and trusted xattrs");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let opts = ApplyOptions {
            format: ApplyFormat::Overlay,
            ..Default::default()
        };
        let stats = apply_layer(overlay_tar().as_slice(), &root, &opts).unwrap();
        assert_eq!(stats.whiteouts, 3);
        let gone = fs::symlink_metadata(root.join("a/gone")).unwrap();
        assert!(gone.file_type().is_char_device());
        assert_eq!(gone.rdev(), 0);
        let opq = xattr::get(&root.join("c"), OsStr::new(OVERLAY_OPAQUE_XATTR)).unwrap();
        assert_eq!(opq.as_deref(), Some(b"y".as_slice()));
        assert_eq!(fs::read(root.join("c/d")).unwrap(), b"new");
        // The escaping whiteout stays inside the root.
        assert!(fs::symlink_metadata(root.join("escape"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert!(!tmp.path().join("escape").exists());
        let redirect = xattr::get(&root.join("r"), OsStr::new("trusted.overlay.redirect")).unwrap();
        assert_eq!(redirect, None);

        // The same layer in merged format deletes instead.
        let merged = tmp.path().join("merged");
        fs::create_dir_all(merged.join("a")).unwrap();
        fs::write(merged.join("a/gone"), b"x").unwrap();
        fs::create_dir_all(merged.join("c")).unwrap();
        fs::write(merged.join("c/old"), b"x").unwrap();
        apply_layer(overlay_tar().as_slice(), &merged, &ApplyOptions::default()).unwrap();
        assert!(!merged.join("a/gone").exists());
        assert!(!merged.join("c/old").exists());
        assert!(merged.join("c/d").exists());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1700000000, 0)));
        assert_eq!(parse_pax_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
