//! The copy snapshotter: what the engine does where overlayfs cannot be
//! mounted (no `overlay` module, no privilege, an upper directory on a
//! filesystem overlayfs refuses), or when `XBUILD_SNAPSHOTTER=copy` asks.
//!
//! A step's root filesystem is *materialised*: the chain of snapshots
//! (overlayfs-format directories, bottom first) is merged into a scratch
//! directory the way overlayfs would show it — character device 0/0 (or an
//! empty file with an `overlay.whiteout` xattr) hides a name, a directory
//! with `overlay.opaque=y` hides what lower layers have below it — copying
//! modes, owners, symlinks, hardlinks within a layer, xattrs, device nodes
//! and times. The step runs there. Afterwards the tree is compared with the
//! lower view and the differences are written, in overlayfs upper-directory
//! format, into the step's `fs` directory: exactly what overlayfs would
//! have left in its upper directory, so the layer writer and
//! [`crate::snapshot::Snapshots::commit`] work unchanged.
//!
//! The comparison, per path:
//! - absent below: new, copied (a whole directory tree when it is one);
//! - both directories, and the merged one is still the directory that was
//!   materialised there (same device, inode and birth time): kept when its
//!   metadata is unchanged and nothing below changed, else copied with
//!   its metadata, recursing;
//! - a directory that replaced something (another directory, recreated, or
//!   a file): copied whole and marked opaque, as overlayfs marks a
//!   directory created over a whiteout;
//! - anything else: changed when type, permission bits, owner, mtime (to
//!   the nanosecond), size, link target, device number or xattrs differ,
//!   or, for regular files with all of those equal, when the bytes differ;
//! - present below, gone now: a whiteout.
//!
//! Hardlinks made by the step are kept: every other name of an inode that
//! is copied is linked to the copy, as overlayfs copies a file up before
//! linking it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use crate::mount::mount_overlay;
use crate::snapshot::{Scratch, SnapshotError};
use xbuild_oci::layer::xattr;

/// The environment variable that picks the snapshotter when
/// [`crate::EngineConfig::snapshotter`] is `None`: `overlay`, `copy`, or
/// `auto` (the default: overlayfs when a probe mount works).
pub const SNAPSHOTTER_ENV: &str = "XBUILD_SNAPSHOTTER";

/// Errors of the copy snapshotter.
#[derive(Debug, thiserror::Error)]
pub enum CopyFsError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `XBUILD_SNAPSHOTTER` holds something else than `overlay`, `copy` or `auto`.
    #[error("{SNAPSHOTTER_ENV}={0:?}: expected overlay, copy or auto")]
    BadSnapshotter(String),
    /// A scratch directory could not be made.
    #[error(transparent)]
    Scratch(#[from] SnapshotError),
}

type Result<T, E = CopyFsError> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CopyFsError + 'a {
    move |source| CopyFsError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How an engine stacks snapshots for the steps that change files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshotter {
    /// A writable overlayfs mount over the chain; the upper directory is the diff.
    Overlay,
    /// A merged copy of the chain, diffed against it afterwards (this module).
    Copy,
}

impl fmt::Display for Snapshotter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Snapshotter::Overlay => "overlay",
            Snapshotter::Copy => "copy",
        })
    }
}

impl FromStr for Snapshotter {
    type Err = CopyFsError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "overlay" | "overlayfs" => Ok(Snapshotter::Overlay),
            "copy" | "native" => Ok(Snapshotter::Copy),
            _ => Err(CopyFsError::BadSnapshotter(s.to_string())),
        }
    }
}

impl Snapshotter {
    /// The choice `XBUILD_SNAPSHOTTER` forces, if any (`auto` and empty force nothing).
    pub fn from_env() -> Result<Option<Snapshotter>> {
        match std::env::var(SNAPSHOTTER_ENV) {
            Ok(v) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("auto") => Ok(None),
            Ok(v) => v.parse().map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(CopyFsError::BadSnapshotter(
                v.to_string_lossy().into_owned(),
            )),
        }
    }

    /// Overlay when a writable overlayfs can be mounted with its directories
    /// under `dir` (the engine's mount directory), else copy.
    pub fn probe(dir: &Path) -> Result<Snapshotter> {
        let s = Scratch::new(dir)?;
        let lower = s.subdir("l")?;
        let upper = s.subdir("u")?;
        let work = s.subdir("w")?;
        let target = s.subdir("m")?;
        Ok(
            match mount_overlay(&[lower], Some((&upper, &work)), &target) {
                Ok(guard) => {
                    drop(guard);
                    Snapshotter::Overlay
                }
                Err(_) => Snapshotter::Copy,
            },
        )
    }

    /// `configured`, else `XBUILD_SNAPSHOTTER`, else what [`Snapshotter::probe`] finds.
    pub fn choose(configured: Option<Snapshotter>, dir: &Path) -> Result<Snapshotter> {
        match configured {
            Some(s) => Ok(s),
            None => match Snapshotter::from_env()? {
                Some(s) => Ok(s),
                None => Snapshotter::probe(dir),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Extended attributes (never following symlinks).

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| CopyFsError::Io {
        op: "use path",
        path: p.to_path_buf(),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// Whether reading a file's xattrs failed only because the file system (or
/// the caller's privileges) does not allow it: then it has none we can copy.
fn xattrs_unavailable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM))
}

fn xattr_names(p: &Path) -> Result<Vec<OsString>> {
    match xattr::list(p) {
        Err(e) if xattrs_unavailable(&e) => Ok(Vec::new()),
        r => r.map_err(io_err("list xattrs of", p)),
    }
}

fn xattr_get(p: &Path, name: &OsStr) -> Result<Option<Vec<u8>>> {
    match xattr::get(p, name) {
        Err(e) if xattrs_unavailable(&e) => Ok(None),
        r => r.map_err(io_err("read xattr of", p)),
    }
}

/// Whether an xattr is overlayfs bookkeeping (or a label the layer writer
/// drops) rather than part of the file.
fn internal_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name == b"security.selinux"
}

/// The xattrs of `p` that belong to the file, sorted.
fn file_xattrs(p: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for n in xattr_names(p)? {
        if internal_xattr(n.as_bytes()) {
            continue;
        }
        if let Some(v) = xattr_get(p, &n)? {
            out.insert(n.into_vec(), v);
        }
    }
    Ok(out)
}

fn overlay_flag(p: &Path, what: &str) -> Result<bool> {
    for prefix in ["trusted.overlay.", "user.overlay."] {
        let name = format!("{prefix}{what}");
        if let Some(v) = xattr_get(p, OsStr::new(&name))? {
            if what != "opaque" || v == b"y" {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn is_whiteout(p: &Path, m: &Metadata) -> Result<bool> {
    let ft = m.file_type();
    if ft.is_char_device() && m.rdev() == 0 {
        return Ok(true);
    }
    if ft.is_file() && m.len() == 0 {
        return overlay_flag(p, "whiteout");
    }
    Ok(false)
}

// ---------------------------------------------------------------------------
// Copying one entry with its metadata.

fn stat(p: &Path) -> Result<Metadata> {
    fs::symlink_metadata(p).map_err(io_err("stat", p))
}

fn set_times(p: &Path, m: &Metadata) -> Result<()> {
    let c = cpath(p)?;
    let times = [
        libc::timespec {
            tv_sec: m.atime() as libc::time_t,
            tv_nsec: m.atime_nsec() as libc::c_long,
        },
        libc::timespec {
            tv_sec: m.mtime() as libc::time_t,
            tv_nsec: m.mtime_nsec() as libc::c_long,
        },
    ];
    // SAFETY: `c` is NUL-terminated and `times` holds two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io_err("set times of", p)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Gives `dst` the owner, permission bits, xattrs and times `src` has
/// (`m` is `src`'s metadata). Order matters: chown clears set-id bits and
/// file capabilities, so those come after it; times come last.
fn copy_meta(src: &Path, m: &Metadata, dst: &Path) -> Result<()> {
    std::os::unix::fs::lchown(dst, Some(m.uid()), Some(m.gid())).map_err(io_err("chown", dst))?;
    if !m.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(io_err("chmod", dst))?;
    }
    for (k, v) in file_xattrs(src)? {
        match xattr::set(dst, &k, &v) {
            Ok(()) => {}
            // Best effort, as extraction does: a filesystem or a missing
            // privilege that refuses an attribute does not fail the step.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOTSUP) | Some(libc::EPERM) | Some(libc::EACCES)
                ) => {}
            Err(e) => return Err(io_err("set xattr of", dst)(e)),
        }
    }
    set_times(dst, m)
}

fn mknod(p: &Path, mode: u32, rdev: u64) -> Result<()> {
    let c = cpath(p)?;
    // SAFETY: `c` is NUL-terminated.
    if unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) } != 0 {
        return Err(io_err("mknod", p)(io::Error::last_os_error()));
    }
    Ok(())
}

fn mkdir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(p)
        .map_err(io_err("create directory", p))
}

/// Copies the non-directory `src` (metadata `m`) to the new name `dst`.
/// A further name of an inode already copied (`links`, keyed by the
/// source's device and inode) becomes a hardlink to that copy.
fn copy_leaf(
    src: &Path,
    m: &Metadata,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let key = (m.dev(), m.ino());
    if m.nlink() > 1 {
        if let Some(first) = links.get(&key) {
            return fs::hard_link(first, dst).map_err(io_err("link", dst));
        }
    }
    let ft = m.file_type();
    if ft.is_file() {
        let mut from = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(src)
            .map_err(io_err("open", src))?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dst)
            .map_err(io_err("create", dst))?;
        io::copy(&mut from, &mut to).map_err(io_err("copy into", dst))?;
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io_err("read link", src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(io_err("symlink", dst))?;
    } else {
        let kind = m.mode() & libc::S_IFMT;
        mknod(dst, kind | 0o600, m.rdev())?;
    }
    copy_meta(src, m, dst)?;
    if m.nlink() > 1 {
        links.insert(key, dst.to_path_buf());
    }
    Ok(())
}

/// Copies the non-directory `src` to the new name `dst` with its metadata.
pub(crate) fn copy_one(src: &Path, dst: &Path) -> Result<()> {
    copy_leaf(src, &stat(src)?, dst, &mut HashMap::new())
}

// ---------------------------------------------------------------------------
// The merged view of a chain of overlayfs-format directories.

/// One name of a merged directory.
#[derive(Debug)]
struct Entry {
    /// The topmost layer's copy (what overlayfs shows).
    path: PathBuf,
    meta: Metadata,
    /// For a directory: the layers' directories that merge into it, top first.
    dirs: Vec<PathBuf>,
}

/// The merged children of the directory made of `dirs` (top first).
fn view_children(dirs: &[PathBuf]) -> Result<BTreeMap<OsString, Entry>> {
    let mut out: BTreeMap<OsString, Entry> = BTreeMap::new();
    // Names whose lower layers no longer count: whited out, shadowed by a
    // non-directory, or below an opaque directory.
    let mut sealed: HashSet<OsString> = HashSet::new();
    for dir in dirs {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("read directory", dir)(e)),
        };
        for ent in rd {
            let ent = ent.map_err(io_err("read directory", dir))?;
            let name = ent.file_name();
            if sealed.contains(&name) {
                continue;
            }
            let path = dir.join(&name);
            let meta = stat(&path)?;
            if is_whiteout(&path, &meta)? {
                sealed.insert(name);
                continue;
            }
            let is_dir = meta.is_dir();
            match out.get_mut(&name) {
                Some(e) => {
                    // Only a directory still open to lower layers gets here.
                    if is_dir {
                        e.dirs.push(path.clone());
                        if overlay_flag(&path, "opaque")? {
                            sealed.insert(name);
                        }
                    } else {
                        sealed.insert(name);
                    }
                }
                None => {
                    if !is_dir || overlay_flag(&path, "opaque")? {
                        sealed.insert(name.clone());
                    }
                    let dirs = if is_dir {
                        vec![path.clone()]
                    } else {
                        Vec::new()
                    };
                    out.insert(name, Entry { path, meta, dirs });
                }
            }
        }
    }
    Ok(out)
}

/// What identifies a directory made by materialisation: a directory
/// deleted and made again differs in inode or, when the inode number is
/// reused, in birth time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DirId {
    dev: u64,
    ino: u64,
    born: Option<SystemTime>,
}

impl DirId {
    fn of(m: &Metadata) -> DirId {
        DirId {
            dev: m.dev(),
            ino: m.ino(),
            born: m.created().ok(),
        }
    }
}

/// A chain of snapshots copied into one directory, removed on drop.
#[derive(Debug)]
pub struct Materialized {
    root: PathBuf,
    dirs: HashMap<PathBuf, DirId>,
    _scratch: Scratch,
}

impl Materialized {
    /// The merged root filesystem.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Copies the merged view of `chain` (snapshot `fs` directories, bottom
/// first) into a new scratch directory under `tmp`.
pub fn materialize(tmp: &Path, chain: &[PathBuf]) -> Result<Materialized> {
    let scratch = Scratch::new(tmp)?;
    let root = scratch.subdir("root")?;
    let top_first: Vec<PathBuf> = chain.iter().rev().cloned().collect();
    let mut dirs = HashMap::new();
    let mut links = HashMap::new();
    fill(&root, Path::new(""), &top_first, &mut dirs, &mut links)?;
    Ok(Materialized {
        root,
        dirs,
        _scratch: scratch,
    })
}

fn fill(
    dst: &Path,
    rel: &Path,
    layers: &[PathBuf],
    ids: &mut HashMap<PathBuf, DirId>,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    for (name, e) in view_children(layers)? {
        let to = dst.join(&name);
        if e.meta.is_dir() {
            mkdir(&to)?;
            let r = rel.join(&name);
            ids.insert(r.clone(), DirId::of(&stat(&to)?));
            fill(&to, &r, &e.dirs, ids, links)?;
            copy_meta(&e.path, &e.meta, &to)?;
        } else {
            copy_leaf(&e.path, &e.meta, &to, links)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The diff.

/// What [`diff`] wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DiffStats {
    /// Files, links, devices and directories copied (new or changed).
    pub copied: u64,
    /// Whiteouts written.
    pub whiteouts: u64,
    /// Directories marked opaque.
    pub opaque: u64,
}

struct Differ<'a> {
    merged: &'a Path,
    upper: &'a Path,
    ids: &'a HashMap<PathBuf, DirId>,
    /// Copies made, by the merged inode: further names link to them.
    links: HashMap<(u64, u64), PathBuf>,
    /// Every name of every multiply-linked merged inode.
    names: HashMap<(u64, u64), Vec<PathBuf>>,
    /// Directories made in the upper directory, parents first, and whether opaque.
    made: Vec<(PathBuf, bool)>,
    made_set: HashSet<PathBuf>,
    stats: DiffStats,
}

/// Writes into the empty directory `upper`, in overlayfs upper format,
/// how `m` differs from the merged view of `chain` it was made from.
pub fn diff(m: &Materialized, chain: &[PathBuf], upper: &Path) -> Result<DiffStats> {
    let top_first: Vec<PathBuf> = chain.iter().rev().cloned().collect();
    let mut d = Differ {
        merged: &m.root,
        upper,
        ids: &m.dirs,
        links: HashMap::new(),
        names: HashMap::new(),
        made: Vec::new(),
        made_set: HashSet::new(),
        stats: DiffStats::default(),
    };
    d.walk(Path::new(""), &top_first)?;
    d.link_other_names()?;
    d.finish_dirs()?;
    Ok(d.stats)
}

impl Differ<'_> {
    fn note_names(&mut self, rel: &Path, m: &Metadata) {
        if !m.is_dir() && m.nlink() > 1 {
            self.names
                .entry((m.dev(), m.ino()))
                .or_default()
                .push(rel.to_path_buf());
        }
    }

    fn walk(&mut self, rel: &Path, lower_dirs: &[PathBuf]) -> Result<()> {
        let mut lower = view_children(lower_dirs)?;
        let dir = self.merged.join(rel);
        let rd = fs::read_dir(&dir).map_err(io_err("read directory", &dir))?;
        let mut names: Vec<OsString> = Vec::new();
        for ent in rd {
            names.push(ent.map_err(io_err("read directory", &dir))?.file_name());
        }
        names.sort();
        for name in names {
            let r = rel.join(&name);
            let mp = self.merged.join(&r);
            let mm = stat(&mp)?;
            self.note_names(&r, &mm);
            let Some(le) = lower.remove(&name) else {
                self.ensure_dir(rel)?;
                self.copy_new(&r, &mm, false)?;
                continue;
            };
            if mm.is_dir() {
                let same_dir =
                    le.meta.is_dir() && self.ids.get(&r).is_some_and(|id| *id == DirId::of(&mm));
                if same_dir {
                    if !same_entry(&le, &mp, &mm)? {
                        self.ensure_dir(&r)?;
                    }
                    self.walk(&r, &le.dirs)?;
                } else {
                    self.ensure_dir(rel)?;
                    self.copy_new(&r, &mm, true)?;
                }
            } else if !same_entry(&le, &mp, &mm)? {
                self.ensure_dir(rel)?;
                self.copy_new(&r, &mm, false)?;
            }
        }
        for name in lower.into_keys() {
            self.ensure_dir(rel)?;
            self.whiteout(&rel.join(name))?;
        }
        Ok(())
    }

    /// Makes `rel` and its missing parents in the upper directory (their
    /// metadata is set by [`Differ::finish_dirs`]).
    fn ensure_dir(&mut self, rel: &Path) -> Result<()> {
        if rel.as_os_str().is_empty() || self.made_set.contains(rel) {
            return Ok(());
        }
        if let Some(parent) = rel.parent() {
            self.ensure_dir(parent)?;
        }
        mkdir(&self.upper.join(rel))?;
        self.made_set.insert(rel.to_path_buf());
        self.made.push((rel.to_path_buf(), false));
        self.stats.copied += 1;
        Ok(())
    }

    /// Copies `rel` (metadata `m`) from the merged tree, whole.
    fn copy_new(&mut self, rel: &Path, m: &Metadata, opaque: bool) -> Result<()> {
        let src = self.merged.join(rel);
        let dst = self.upper.join(rel);
        if !m.is_dir() {
            self.stats.copied += 1;
            return copy_leaf(&src, m, &dst, &mut self.links);
        }
        mkdir(&dst)?;
        self.made_set.insert(rel.to_path_buf());
        self.made.push((rel.to_path_buf(), opaque));
        self.stats.copied += 1;
        if opaque {
            self.stats.opaque += 1;
        }
        let rd = fs::read_dir(&src).map_err(io_err("read directory", &src))?;
        let mut names: Vec<OsString> = Vec::new();
        for ent in rd {
            names.push(ent.map_err(io_err("read directory", &src))?.file_name());
        }
        names.sort();
        for name in names {
            let r = rel.join(name);
            let cm = stat(&self.merged.join(&r))?;
            self.note_names(&r, &cm);
            self.copy_new(&r, &cm, false)?;
        }
        Ok(())
    }

    fn whiteout(&mut self, rel: &Path) -> Result<()> {
        let p = self.upper.join(rel);
        self.stats.whiteouts += 1;
        match mknod(&p, libc::S_IFCHR, 0) {
            Ok(()) => Ok(()),
            Err(CopyFsError::Io { source, .. }) if source.raw_os_error() == Some(libc::EPERM) => {
                // Without CAP_MKNOD: overlayfs's xattr form of a whiteout.
                File::create(&p).map_err(io_err("create", &p))?;
                xattr::set(&p, b"user.overlay.whiteout", b"y")
                    .map_err(io_err("set whiteout xattr of", &p))
            }
            Err(e) => Err(e),
        }
    }

    /// Links, next to each copied inode, its other names in the merged tree
    /// that the walk did not copy (a hardlink the step made to a lower file).
    fn link_other_names(&mut self) -> Result<()> {
        let names = std::mem::take(&mut self.names);
        let mut keys: Vec<&(u64, u64)> = names.keys().collect();
        keys.sort();
        for key in keys {
            let Some(first) = self.links.get(key).cloned() else {
                continue;
            };
            for rel in &names[key] {
                let dst = self.upper.join(rel);
                if fs::symlink_metadata(&dst).is_ok() {
                    continue;
                }
                if let Some(parent) = rel.parent() {
                    self.ensure_dir(parent)?;
                }
                fs::hard_link(&first, &dst).map_err(io_err("link", &dst))?;
                self.stats.copied += 1;
            }
        }
        Ok(())
    }

    /// Gives every directory made in the upper directory the metadata of its
    /// merged counterpart, children before parents, and marks opaque ones.
    fn finish_dirs(&mut self) -> Result<()> {
        for (rel, opaque) in self.made.iter().rev() {
            let src = self.merged.join(rel);
            let dst = self.upper.join(rel);
            let m = stat(&src)?;
            if *opaque {
                if let Err(e) = xattr::set(&dst, b"trusted.overlay.opaque", b"y") {
                    if e.raw_os_error() != Some(libc::EPERM) {
                        return Err(io_err("mark opaque", &dst)(e));
                    }
                    xattr::set(&dst, b"user.overlay.opaque", b"y")
                        .map_err(io_err("mark opaque", &dst))?;
                }
            }
            copy_meta(&src, &m, &dst)?;
        }
        Ok(())
    }
}

/// Whether the merged `mp` (metadata `mm`) is what the lower view has.
fn same_entry(le: &Entry, mp: &Path, mm: &Metadata) -> Result<bool> {
    let lm = &le.meta;
    if lm.file_type() != mm.file_type()
        || lm.mode() & 0o7777 != mm.mode() & 0o7777
        || lm.uid() != mm.uid()
        || lm.gid() != mm.gid()
        || lm.mtime() != mm.mtime()
        || lm.mtime_nsec() != mm.mtime_nsec()
    {
        return Ok(false);
    }
    let ft = mm.file_type();
    if ft.is_file() && lm.len() != mm.len() {
        return Ok(false);
    }
    if (ft.is_char_device() || ft.is_block_device()) && lm.rdev() != mm.rdev() {
        return Ok(false);
    }
    if ft.is_symlink()
        && fs::read_link(&le.path).map_err(io_err("read link", &le.path))?
            != fs::read_link(mp).map_err(io_err("read link", mp))?
    {
        return Ok(false);
    }
    if file_xattrs(&le.path)? != file_xattrs(mp)? {
        return Ok(false);
    }
    if ft.is_file() {
        return same_bytes(&le.path, mp);
    }
    Ok(true)
}

fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
            .map_err(io_err("open", p))
    };
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(io_err("read", a))?;
        let nb = read_full(&mut fb, &mut bb).map_err(io_err("read", b))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Runs `work` on a merged copy of `chain` (bottom first) made under `tmp`
/// and writes what it changed into `upper`, in overlayfs format. Returns
/// what `work` returns.
pub(crate) fn run_step<T, E: From<CopyFsError>>(
    tmp: &Path,
    chain: &[PathBuf],
    upper: &Path,
    work: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let m = materialize(tmp, chain)?;
    let out = work(m.root())?;
    diff(&m, chain, upper)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use xbuild_oci::layer::{write_layer, SourceMode, WriteOptions};
    use xbuild_oci::media_types::Compression;

    const OLD: i64 = 1_000_000_000;
    const SDE: u64 = 1_100_000_000;

    fn is_root() -> bool {
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn touch(p: &Path, secs: i64) {
        let c = cpath(p).unwrap();
        let ts = libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: valid path and two timespecs.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                [ts, ts].as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(rc, 0, "{}", p.display());
    }

    /// Sets every mtime under `dir` (children first) to `secs`.
    fn age(dir: &Path, secs: i64) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                age(&p, secs);
            } else {
                touch(&p, secs);
            }
        }
        touch(dir, secs);
    }

    fn write(p: &Path, s: &str) {
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(p, s).unwrap();
    }

    fn whiteout_at(p: &Path) {
        mknod(p, libc::S_IFCHR, 0).unwrap();
    }

    fn is_char00(p: &Path) -> bool {
        fs::symlink_metadata(p)
            .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
            .unwrap_or(false)
    }

    fn opaque(p: &Path) -> bool {
        xattr_get(p, OsStr::new("trusted.overlay.opaque"))
            .unwrap()
            .as_deref()
            == Some(b"y")
    }

    /// Two overlay-format layers, bottom first.
    fn chain(base: &Path) -> Vec<PathBuf> {
        let l1 = base.join("l1");
        let l2 = base.join("l2");
        write(&l1.join("etc/passwd"), "root\n");
        write(&l1.join("etc/group"), "root\n");
        write(&l1.join("etc/hosts"), "hosts\n");
        write(&l1.join("etc/shadow"), "secret\n");
        write(&l1.join("etc/owned"), "o\n");
        write(&l1.join("etc/samesize"), "AAAA");
        write(&l1.join("etc/xattr_file"), "x\n");
        write(&l1.join("etc/fileToDir"), "f\n");
        write(&l1.join("dirToFile/x"), "x\n");
        write(&l1.join("d/old"), "old\n");
        write(&l1.join("d2/sub/f"), "f\n");
        write(&l1.join("d3/old"), "old\n");
        write(&l1.join("tmpd/keep"), "k\n");
        write(&l1.join("untouched/a/b"), "b\n");
        write(&l1.join("bin/a"), "#!a\n");
        write(&l1.join("bin/a2"), "#!a2\n");
        fs::hard_link(l1.join("bin/a"), l1.join("bin/b")).unwrap();
        std::os::unix::fs::symlink("etc/passwd", l1.join("link")).unwrap();
        fs::create_dir_all(l1.join("dev")).unwrap();
        mknod(
            &l1.join("dev/null"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        )
        .unwrap();
        fs::set_permissions(l1.join("dev/null"), fs::Permissions::from_mode(0o666)).unwrap();
        mknod(&l1.join("dev/fifo"), libc::S_IFIFO | 0o644, 0).unwrap();
        std::os::unix::fs::chown(l1.join("etc/owned"), Some(0), Some(0)).unwrap();
        std::os::unix::fs::chown(l1.join("untouched/a/b"), Some(1000), Some(1000)).unwrap();
        fs::set_permissions(l1.join("etc/shadow"), fs::Permissions::from_mode(0o640)).unwrap();
        xattr::set(&l1.join("etc/hosts"), b"user.kept", b"1").unwrap();
        age(&l1, OLD);

        fs::create_dir_all(l2.join("etc")).unwrap();
        whiteout_at(&l2.join("etc/group"));
        write(&l2.join("d/new"), "new\n");
        xattr::set(&l2.join("d"), b"trusted.overlay.opaque", b"y").unwrap();
        write(&l2.join("top.txt"), "top\n");
        age(&l2, OLD + 100);
        vec![l1, l2]
    }

    #[test]
    fn materialize_merges_layers() {
        if !is_root() {
            eprintln!("SKIPPED: needs root (mknod, chown, trusted xattrs)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let mut layers = chain(t.path());
        // A third layer with the xattr form of a whiteout.
        let l3 = t.path().join("l3");
        write(&l3.join("etc/hosts"), "");
        xattr::set(&l3.join("etc/hosts"), b"user.overlay.whiteout", b"y").unwrap();
        layers.push(l3);
        let m = materialize(t.path(), &layers).unwrap();
        let r = m.root();
        assert_eq!(fs::read_to_string(r.join("etc/passwd")).unwrap(), "root\n");
        assert!(!r.join("etc/group").exists(), "whited out");
        assert!(
            fs::symlink_metadata(r.join("etc/hosts")).is_err(),
            "xattr whiteout"
        );
        assert!(
            r.join("d/new").exists() && !r.join("d/old").exists(),
            "opaque"
        );
        assert!(!opaque(&r.join("d")), "overlay xattrs are not copied");
        assert_eq!(fs::read_to_string(r.join("top.txt")).unwrap(), "top\n");
        let (a, b) = (
            stat(&r.join("bin/a")).unwrap(),
            stat(&r.join("bin/b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "hardlinks within a layer are kept");
        assert_eq!(
            fs::read_link(r.join("link")).unwrap(),
            Path::new("etc/passwd")
        );
        let null = stat(&r.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(
            (null.rdev(), null.mode() & 0o7777),
            (libc::makedev(1, 3), 0o666)
        );
        assert!(stat(&r.join("dev/fifo")).unwrap().file_type().is_fifo());
        let sh = stat(&r.join("etc/shadow")).unwrap();
        assert_eq!((sh.mode() & 0o7777, sh.mtime()), (0o640, OLD));
        let owned = stat(&r.join("untouched/a/b")).unwrap();
        assert_eq!((owned.uid(), owned.gid()), (1000, 1000));
        assert_eq!(stat(&r.join("d")).unwrap().mtime(), OLD + 100);
        assert_eq!(stat(&r.join("untouched")).unwrap().mtime(), OLD);
        // An unchanged copy has an empty diff.
        let up = t.path().join("upper");
        fs::create_dir(&up).unwrap();
        let st = diff(&m, &layers, &up).unwrap();
        assert_eq!(st, DiffStats::default());
        assert!(fs::read_dir(&up).unwrap().next().is_none());
        // The scratch goes with the value.
        let root = r.to_path_buf();
        drop(m);
        assert!(!root.exists());
    }

    /// The changes every diff test makes to a root filesystem.
    fn mutate(r: &Path) {
        write(&r.join("new.txt"), "new\n");
        write(&r.join("newdir/sub/f"), "f\n");
        fs::OpenOptions::new()
            .append(true)
            .open(r.join("etc/passwd"))
            .unwrap()
            .write_all(b"app\n")
            .unwrap();
        fs::remove_file(r.join("etc/hosts")).unwrap();
        fs::remove_dir_all(r.join("d2")).unwrap();
        fs::remove_dir_all(r.join("d3")).unwrap();
        write(&r.join("d3/x"), "x\n");
        fs::remove_file(r.join("link")).unwrap();
        std::os::unix::fs::symlink("etc/shadow", r.join("link")).unwrap();
        fs::set_permissions(r.join("etc/shadow"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::hard_link(r.join("bin/a2"), r.join("hl")).unwrap();
        xattr::set(&r.join("etc/xattr_file"), b"user.k", b"v").unwrap();
        std::os::unix::fs::chown(r.join("etc/owned"), Some(1000), Some(1000)).unwrap();
        // Same size, same mtime, other bytes.
        let mt = stat(&r.join("etc/samesize")).unwrap().mtime();
        fs::write(r.join("etc/samesize"), "BBBB").unwrap();
        touch(&r.join("etc/samesize"), mt);
        fs::remove_file(r.join("etc/fileToDir")).unwrap();
        write(&r.join("etc/fileToDir/in"), "in\n");
        fs::remove_dir_all(r.join("dirToFile")).unwrap();
        write(&r.join("dirToFile"), "file now\n");
        fs::remove_file(r.join("d/new")).unwrap();
        write(&r.join("tmpd/t"), "t");
        fs::remove_file(r.join("tmpd/t")).unwrap();
        mknod(&r.join("fifo2"), libc::S_IFIFO | 0o600, 0).unwrap();
    }

    #[test]
    fn diff_writes_overlay_format() {
        if !is_root() {
            eprintln!("SKIPPED: needs root (mknod, chown, trusted xattrs)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let layers = chain(t.path());
        let m = materialize(t.path(), &layers).unwrap();
        mutate(m.root());
        let u = t.path().join("upper");
        fs::create_dir(&u).unwrap();
        let st = diff(&m, &layers, &u).unwrap();
        // Added, modified, mode-only, owner-only, xattr-only, same-size-same-mtime.
        assert_eq!(fs::read_to_string(u.join("new.txt")).unwrap(), "new\n");
        assert_eq!(fs::read_to_string(u.join("newdir/sub/f")).unwrap(), "f\n");
        assert_eq!(
            fs::read_to_string(u.join("etc/passwd")).unwrap(),
            "root\napp\n"
        );
        let sh = stat(&u.join("etc/shadow")).unwrap();
        assert_eq!((sh.mode() & 0o7777, sh.mtime()), (0o600, OLD));
        assert_eq!(
            fs::read_to_string(u.join("etc/shadow")).unwrap(),
            "secret\n"
        );
        assert_eq!(stat(&u.join("etc/owned")).unwrap().uid(), 1000);
        assert_eq!(
            xattr_get(&u.join("etc/xattr_file"), OsStr::new("user.k")).unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(fs::read_to_string(u.join("etc/samesize")).unwrap(), "BBBB");
        // Deleted file and directory: whiteouts.
        assert!(is_char00(&u.join("etc/hosts")));
        assert!(is_char00(&u.join("d2")));
        assert!(
            is_char00(&u.join("d/new")),
            "deleted in an opaque lower dir"
        );
        // Replaced directory and file -> directory: opaque.
        assert!(opaque(&u.join("d3")));
        assert_eq!(fs::read_to_string(u.join("d3/x")).unwrap(), "x\n");
        assert!(!u.join("d3/old").exists());
        assert!(opaque(&u.join("etc/fileToDir")));
        assert!(!opaque(&u.join("newdir")), "a new directory is not opaque");
        assert!(!opaque(&u.join("etc")));
        // Directory -> file.
        assert_eq!(
            fs::read_to_string(u.join("dirToFile")).unwrap(),
            "file now\n"
        );
        // Symlink retargeted.
        assert_eq!(
            fs::read_link(u.join("link")).unwrap(),
            Path::new("etc/shadow")
        );
        // Hardlink to a lower file: both names, one inode.
        let (h, a2) = (
            stat(&u.join("hl")).unwrap(),
            stat(&u.join("bin/a2")).unwrap(),
        );
        assert_eq!(h.ino(), a2.ino());
        assert_eq!(fs::read_to_string(u.join("hl")).unwrap(), "#!a2\n");
        // Untouched things are absent; parents of changes keep their metadata.
        for p in ["untouched", "bin/a", "bin/b", "dev", "top.txt", "etc/group"] {
            assert!(fs::symlink_metadata(u.join(p)).is_err(), "{p} in the diff");
        }
        assert_eq!(stat(&u.join("bin")).unwrap().mtime(), OLD);
        assert!(stat(&u.join("tmpd")).unwrap().is_dir(), "mtime changed");
        assert!(!u.join("tmpd/keep").exists());
        assert!(stat(&u.join("fifo2")).unwrap().file_type().is_fifo());
        assert_eq!((st.whiteouts, st.opaque), (3, 2));
    }

    /// Documents the one known difference from overlayfs (index=off):
    /// names hardlinked in a lower layer stay linked in the copy, so a
    /// change through one name is a change of all of them, and the diff
    /// carries every name (overlayfs copies up only the name written
    /// through and so breaks the link).
    #[test]
    fn lower_hardlinks_change_together() {
        if !is_root() {
            eprintln!("SKIPPED: needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let layers = chain(t.path());
        let m = materialize(t.path(), &layers).unwrap();
        fs::set_permissions(m.root().join("bin/a"), fs::Permissions::from_mode(0o700)).unwrap();
        let u = t.path().join("upper");
        fs::create_dir(&u).unwrap();
        diff(&m, &layers, &u).unwrap();
        let (a, b) = (
            stat(&u.join("bin/a")).unwrap(),
            stat(&u.join("bin/b")).unwrap(),
        );
        assert_eq!((a.ino(), a.mode() & 0o7777), (b.ino(), 0o700));
    }

    fn layer_entries(dir: &Path) -> (Digest, Vec<String>) {
        let opts = WriteOptions {
            mode: SourceMode::OverlayUpper,
            source_date_epoch: Some(SDE),
            compression: Compression::None,
            ..Default::default()
        };
        let (out, bytes) = write_layer(dir, Vec::new(), &opts).unwrap();
        let mut ar = tar::Archive::new(bytes.as_slice());
        let list = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                format!(
                    "{} {:?} {:o} {}:{} {} {} {:?}",
                    String::from_utf8_lossy(&e.path_bytes()),
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mtime().unwrap(),
                    h.size().unwrap(),
                    e.link_name_bytes().map(|l| l.into_owned()),
                )
            })
            .collect();
        (out.diff_id, list)
    }

    use xbuild_oci::Digest;

    #[test]
    fn diff_matches_overlayfs_upper() {
        if !is_root() {
            eprintln!("SKIPPED: needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let layers = chain(t.path());
        // overlayfs.
        let (ou, ow, mp) = (
            t.path().join("ou"),
            t.path().join("ow"),
            t.path().join("mp"),
        );
        for d in [&ou, &ow, &mp] {
            fs::create_dir(d).unwrap();
        }
        let lowers: Vec<PathBuf> = layers.iter().rev().cloned().collect();
        let guard = match mount_overlay(&lowers, Some((&ou, &ow)), &mp) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("SKIPPED: overlayfs unavailable: {e}");
                return;
            }
        };
        mutate(&mp);
        guard.unmount().unwrap();
        // Copies.
        let m = materialize(t.path(), &layers).unwrap();
        mutate(m.root());
        let cu = t.path().join("cu");
        fs::create_dir(&cu).unwrap();
        diff(&m, &layers, &cu).unwrap();
        let (od, ol) = layer_entries(&ou);
        let (cd, cl) = layer_entries(&cu);
        assert_eq!(cl, ol, "copy diff vs overlay upper");
        assert_eq!(cd, od);
    }

    #[test]
    fn snapshotter_choice() {
        assert_eq!("copy".parse::<Snapshotter>().unwrap(), Snapshotter::Copy);
        assert_eq!(
            " Overlay ".parse::<Snapshotter>().unwrap(),
            Snapshotter::Overlay
        );
        assert!(matches!(
            "zfs".parse::<Snapshotter>(),
            Err(CopyFsError::BadSnapshotter(_))
        ));
        assert_eq!(Snapshotter::Copy.to_string(), "copy");
        let t = tempfile::tempdir().unwrap();
        assert_eq!(
            Snapshotter::choose(Some(Snapshotter::Copy), t.path()).unwrap(),
            Snapshotter::Copy
        );
        let probed = Snapshotter::probe(t.path()).unwrap();
        if !is_root() {
            assert_eq!(probed, Snapshotter::Copy);
        }
        assert!(
            fs::read_dir(t.path()).unwrap().next().is_none(),
            "the probe cleans up"
        );
    }

    #[test]
    fn errors_name_the_path() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope");
        let e = materialize(&missing, &[]).unwrap_err().to_string();
        assert!(e.contains(missing.to_str().unwrap()), "{e}");
        let e = same_bytes(&missing, t.path()).unwrap_err().to_string();
        assert!(e.starts_with("open ") && e.contains("nope"), "{e}");
        let e = view_children(std::slice::from_ref(&t.path().join("file")));
        assert!(e.unwrap().is_empty(), "a missing layer directory is empty");
        fs::write(t.path().join("file"), "").unwrap();
        let e = view_children(&[t.path().join("file")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("read directory") && e.contains("file"), "{e}");
    }
}
