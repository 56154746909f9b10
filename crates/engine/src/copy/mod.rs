//! COPY and ADD with Docker's rules.
//!
//! - A directory source copies its *contents*; a file to `dest/` (or to an
//!   existing directory, or when several sources are copied) goes inside,
//!   otherwise it becomes `dest`. Several source arguments need a `dest`
//!   ending in `/`. Wildcards use Go's `filepath.Match`.
//! - Missing parent directories are created `0755`, owned by root or by the
//!   `--chown` owner. Copied entries are owned by `0:0` when they come from
//!   the context, keep their owner when they come from a stage or an image,
//!   and take the `--chown` owner when one is given (`user` alone means
//!   `user:user`'s numeric id as the group, as in Docker).
//! - Modes are kept (or set by `--chmod`, octal or symbolic), symlinks are
//!   copied as links, hardlinks within one copy stay hardlinks, mtimes are kept.
//! - Nothing is ever written outside `dest_root`: see [`dest`](self) helpers.
//! - ADD unpacks local tar archives (plain or gzip, detected by content) and
//!   downloads `http(s)://` URLs (never unpacked), verifying `--checksum`.

pub(crate) mod add;
pub(crate) mod decompress;
mod dest;
mod mode;

pub use mode::Chmod;

use crate::context::{
    names, select, ContextError, ContextIndex, EntryKind, FsTree, IndexTree, SelectedRoot,
};
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use xbuild_plan::InlineFile;
use xbuild_sandbox::UserError;

/// Errors from COPY and ADD.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Selecting the sources failed (names the pattern).
    #[error(transparent)]
    Source(#[from] ContextError),
    /// A literal source is missing from a stage or image (BuildKit's words).
    #[error("failed to calculate checksum of {from}: {path:?}: not found")]
    NotFoundIn {
        /// The source as given.
        path: String,
        /// `stage NAME` or `image REF`.
        from: String,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The host path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Several sources need a directory destination.
    #[error("When using COPY with more than one source file, the destination must be a directory and end with a / (got {dest:?})")]
    DestNotDir {
        /// The destination as given.
        dest: String,
    },
    /// Something that must be a directory is not.
    #[error("cannot copy to non-directory: {path}")]
    NotADirectory {
        /// The path inside the image.
        path: PathBuf,
    },
    /// A file or link would replace a directory.
    #[error("cannot replace directory {path} with a non-directory")]
    CannotOverwriteDir {
        /// The path inside the image.
        path: PathBuf,
    },
    /// Too many symlinks while resolving a destination.
    #[error("too many levels of symbolic links at {path}")]
    SymlinkLoop {
        /// The host path where it stopped.
        path: PathBuf,
    },
    /// `--chown` names a user or group the image does not have.
    #[error("unable to convert uid/gid chown string {spec:?} to host mapping: {source}")]
    Chown {
        /// The `--chown` value.
        spec: String,
        /// The lookup error.
        #[source]
        source: UserError,
    },
    /// `--chmod` is not an octal or symbolic mode.
    #[error("invalid chmod parameter {spec:?}")]
    Chmod {
        /// The `--chmod` value.
        spec: String,
    },
    /// COPY was given a URL.
    #[error("source can't be a URL for COPY: {url}")]
    UrlInCopy {
        /// The URL.
        url: String,
    },
    /// Something ADD does not support.
    #[error("unsupported ADD source {source_ref:?}: {reason}")]
    Unsupported {
        /// The source.
        source_ref: String,
        /// Why.
        reason: &'static str,
    },
    /// A download failed.
    #[error("failed to fetch {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// `--checksum` is malformed or used with a non-HTTP source.
    #[error("invalid checksum {value:?}: {reason}")]
    BadChecksum {
        /// The value given.
        value: String,
        /// Why.
        reason: String,
    },
    /// Downloaded content does not have the expected digest.
    #[error("digest mismatch for {url}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// The URL.
        url: String,
        /// `--checksum`.
        expected: String,
        /// What was downloaded.
        actual: String,
    },
    /// A git source could not be parsed or fetched.
    #[error("ADD {url}: {message}")]
    Git {
        /// The source (credentials removed).
        url: String,
        /// What happened.
        message: String,
    },
    /// A local archive could not be extracted.
    #[error("extracting archive {source_path:?}: {source}")]
    Archive {
        /// The source as selected.
        source_path: String,
        /// The extraction error.
        #[source]
        source: xbuild_oci::layer::apply::ApplyError,
    },
}

/// ADD-only options.
#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    /// `--unpack`: `Some(false)` copies archives as files.
    pub unpack: Option<bool>,
    /// `--checksum=sha256:...` for URL sources.
    pub checksum: Option<String>,
    /// `--keep-git-dir`: keep the `.git` directory of a git source.
    pub keep_git_dir: bool,
    /// Download timeout (default 10 minutes overall, 30 s to connect).
    pub timeout: Option<Duration>,
    /// The ssh-agent for `git@…` / `ssh://` git sources (`--ssh default`).
    pub ssh_auth_sock: Option<PathBuf>,
}

/// One COPY or ADD.
#[derive(Debug, Clone)]
pub struct CopyRequest<'a> {
    /// The context directory, or a stage's or image's root filesystem.
    pub src_root: &'a Path,
    /// When copying from the context: only indexed (non-ignored) paths exist,
    /// and copied files are owned by root. `None` for stages and images
    /// (owners preserved).
    pub src_filter: Option<&'a ContextIndex>,
    /// Source patterns relative to `src_root` (`/x` is `src_root/x`), or
    /// URLs for ADD.
    pub sources: &'a [String],
    /// Heredoc files.
    pub inline: &'a [InlineFile],
    /// The root filesystem being built.
    pub dest_root: &'a Path,
    /// Absolute destination in the image; a trailing `/` means a directory.
    pub dest: &'a str,
    /// `--chown` (`user[:group]`, names or ids, looked up in `dest_root`).
    pub chown: Option<&'a str>,
    /// `--chmod` (octal or symbolic).
    pub chmod: Option<&'a str>,
    /// `--exclude` patterns.
    pub exclude: &'a [String],
    /// `--parents`.
    pub parents: bool,
    /// ADD semantics when set.
    pub add: Option<AddOptions>,
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files written.
    pub files: u64,
    /// Directories created (parents included).
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hardlinks created.
    pub hardlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Archives unpacked (ADD).
    pub archives: u64,
    /// URLs downloaded (ADD).
    pub downloads: u64,
}

/// Resolves a `--chown` value against the image's passwd and group files.
/// A user without a group uses the user's numeric id as the group id.
pub fn resolve_chown(dest_root: &Path, spec: &str) -> Result<(u32, u32), CopyError> {
    let spec_t = spec.trim();
    let r =
        xbuild_sandbox::user::resolve(dest_root, spec_t).map_err(|source| CopyError::Chown {
            spec: spec.to_string(),
            source,
        })?;
    if spec_t.contains(':') {
        Ok((r.uid, r.gid))
    } else {
        Ok((r.uid, r.uid))
    }
}

/// `WORKDIR`: creates `abs_path` inside `root` (missing directories `0755`,
/// owned by `uid:gid`; existing ones, and symlinks on the way, are kept and
/// followed inside the root). Returns the host path of the directory.
pub fn mkdir_p(root: &Path, abs_path: &str, uid: u32, gid: u32) -> Result<PathBuf, CopyError> {
    let comps = crate::context::clean_components(&names::escape_str(abs_path));
    dest::ensure_dir(root, &comps, (uid, gid), 0o755, &mut Vec::new())
}

fn is_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// True when ADD treats `s` as a git repository (BuildKit's URL rules).
pub(crate) fn is_git(s: &str) -> bool {
    matches!(crate::remote::GitRef::parse(s), Ok(Some(_)) | Err(_))
}

/// Where one source lands.
pub(crate) enum Target {
    /// Merge a directory's contents into this directory.
    Dir(Vec<String>),
    /// Write a file (or link) at `parent/name`.
    File(Vec<String>, String),
}

/// A directory whose mode and mtime are set after its contents.
type DirMeta = (PathBuf, u32, Option<(i64, i64)>);

/// Per-copy state.
pub(crate) struct Copier<'a> {
    dest_root: &'a Path,
    chown: Option<(u32, u32)>,
    chmod: Option<Chmod>,
    /// Keep source owners (stage and image sources).
    preserve_owner: bool,
    /// `--parents`: directories are copied with their own metadata.
    parents: bool,
    stats: CopyStats,
    /// (dev, ino) of copied sources with several links -> where they went.
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories whose mode and mtime are set at the end.
    dir_meta: Vec<DirMeta>,
}

/// Copies (COPY) or adds (ADD) `req.sources` and `req.inline` into
/// `req.dest_root` at `req.dest`.
pub fn copy_into(req: &CopyRequest) -> Result<CopyStats, CopyError> {
    let chown = req
        .chown
        .filter(|c| !c.trim().is_empty())
        .map(|c| resolve_chown(req.dest_root, c))
        .transpose()?;
    let chmod = req
        .chmod
        .filter(|c| !c.trim().is_empty())
        .map(Chmod::parse)
        .transpose()?;
    let (urls, paths): (Vec<&String>, Vec<&String>) =
        req.sources.iter().partition(|s| is_url(s) || is_git(s));
    if let Some(u) = urls.first() {
        if req.add.is_none() {
            return Err(CopyError::UrlInCopy { url: u.to_string() });
        }
    }
    let add = req.add.clone();
    if let Some(a) = &add {
        if a.checksum.is_some() && !paths.is_empty() {
            return Err(CopyError::BadChecksum {
                value: a.checksum.clone().unwrap_or_default(),
                reason: "checksum can't be specified for non-HTTP(S) sources".into(),
            });
        }
    }
    let nargs = req.sources.len() + req.inline.len();
    let dest_slash = req.dest.ends_with('/');
    if nargs > 1 && !dest_slash {
        return Err(CopyError::DestNotDir {
            dest: req.dest.to_string(),
        });
    }
    let paths: Vec<String> = paths.into_iter().cloned().collect();
    let roots: Vec<SelectedRoot> = if paths.is_empty() {
        Vec::new()
    } else if let Some(index) = req.src_filter {
        select(&IndexTree(index), &paths, req.exclude, req.parents)?
    } else {
        select(&FsTree::new(req.src_root), &paths, req.exclude, req.parents)?
    };
    // Destination components live in the escaped domain of names, like
    // the sources' (`select` escapes the patterns itself).
    let dest_comps = crate::context::clean_components(&names::escape_str(req.dest));
    let exists_dir = matches!(
        dest::resolve(req.dest_root, &dest_comps, true)?.meta,
        Some(md) if md.is_dir()
    );
    let into_dir = dest_slash || exists_dir || roots.len() + urls.len() + req.inline.len() > 1;
    let file_target = |name: &str| -> Target {
        if into_dir {
            Target::File(dest_comps.clone(), name.to_string())
        } else {
            let mut parent = dest_comps.clone();
            let last = parent.pop().unwrap_or_default();
            Target::File(parent, last)
        }
    };

    let mut c = Copier {
        dest_root: req.dest_root,
        chown,
        chmod,
        preserve_owner: req.src_filter.is_none(),
        parents: req.parents,
        stats: CopyStats::default(),
        links: HashMap::new(),
        dir_meta: Vec::new(),
    };
    let unpack = add.as_ref().is_some_and(|a| a.unpack != Some(false));
    if req.parents && !paths.is_empty() && roots.is_empty() {
        // `--parents` copies a directory's matching contents: the
        // destination exists even when a wildcard matched nothing
        // (testCopyParentsMissingDirectory wildcard cases).
        c.ensure(&dest_comps)?;
    }
    for root in &roots {
        if unpack && root.kind() == EntryKind::File {
            let host = crate::context::host_path(req.src_root, &root.entries[0].entry.path);
            if add::is_tar_archive(&host)? {
                c.extract_archive(&host, &names::lossy(&root.logical), &dest_comps)?;
                continue;
            }
        }
        let target = if req.parents {
            let mut t = dest_comps.clone();
            t.extend(
                root.logical
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
            if root.kind() == EntryKind::Dir {
                Target::Dir(t)
            } else {
                let name = t.pop().unwrap_or_default();
                Target::File(t, name)
            }
        } else if root.kind() == EntryKind::Dir {
            Target::Dir(dest_comps.clone())
        } else {
            file_target(root.base_name())
        };
        c.place(req.src_root, root, target)?;
    }
    for u in &urls {
        let opts = add.clone().unwrap_or_default();
        if is_git(u) {
            c.fetch_git(u, &opts, &dest_comps)?;
            continue;
        }
        let name_hint = add::url_file_name(u);
        let target = if into_dir {
            // BuildKit names a download by its URL path's last element,
            // `__unnamed__` when there is none (testDockerfileADDFromURL).
            let name = name_hint.unwrap_or_else(|| "__unnamed__".to_string());
            file_target(&name)
        } else {
            file_target("")
        };
        c.fetch_url(u, &opts, target, &dest_comps)?;
    }
    for f in req.inline {
        let target = file_target(&names::escape_str(&f.name));
        c.write_inline(f, target)?;
    }
    c.finish()
}

impl Copier<'_> {
    fn owner_for(&self, uid: u32, gid: u32) -> (u32, u32) {
        match self.chown {
            Some(o) => o,
            None if self.preserve_owner => (uid, gid),
            None => (0, 0),
        }
    }

    fn parent_owner(&self) -> (u32, u32) {
        self.chown.unwrap_or((0, 0))
    }

    fn mode_for(&self, mode: u32, is_dir: bool) -> u32 {
        match &self.chmod {
            Some(c) => c.apply(mode, is_dir),
            None => mode & 0o7777,
        }
    }

    /// The mode of a directory the copy creates on the way to its
    /// destination (and of the destination of a directory's contents):
    /// an octal `--chmod`'s permission bits, else 0755, as BuildKit's
    /// `MkdirAll` (testCopyChmod: `COPY --chmod=777 foo /parent/foo`
    /// makes `/parent` 0777; a symbolic mode leaves 0755).
    fn created_dir_mode(&self) -> u32 {
        match &self.chmod {
            Some(Chmod::Octal(m)) => m & 0o777,
            _ => 0o755,
        }
    }

    fn ensure(&mut self, comps: &[String]) -> Result<PathBuf, CopyError> {
        let mut created = Vec::new();
        let h = dest::ensure_dir(
            self.dest_root,
            comps,
            self.parent_owner(),
            self.created_dir_mode(),
            &mut created,
        )?;
        self.stats.dirs += created.len() as u64;
        Ok(h)
    }

    fn place(
        &mut self,
        src_root: &Path,
        root: &SelectedRoot,
        target: Target,
    ) -> Result<(), CopyError> {
        let src_host = |p: &str| crate::context::host_path(src_root, p);
        match target {
            Target::Dir(comps) => {
                let top = &root.entries[0].entry;
                let existed = matches!(
                    dest::resolve(self.dest_root, &comps, true)?.meta,
                    Some(md) if md.is_dir()
                );
                let dir = self.ensure(&comps)?;
                if !existed && !comps.is_empty() && self.parents {
                    // `--parents` copies a source tree: its directories
                    // keep their own owner and mode.
                    let owner = self.owner_for(top.uid, top.gid);
                    dest::lchown(&dir, owner)?;
                    let mt = fs::symlink_metadata(src_host(&top.path))
                        .ok()
                        .map(|m| dest::mtime_of(&m));
                    self.dir_meta
                        .push((dir.clone(), self.mode_for(top.mode, true), mt));
                } else if !existed && !comps.is_empty() {
                    // The destination of a directory's contents is made
                    // like a parent: owned by root or --chown, never by
                    // the source directory's owner (testCopyChownExistingDir).
                    let mt = fs::symlink_metadata(src_host(&top.path))
                        .ok()
                        .map(|m| dest::mtime_of(&m));
                    self.dir_meta
                        .push((dir.clone(), self.created_dir_mode(), mt));
                }
                let mut dirs: HashMap<String, PathBuf> = HashMap::new();
                dirs.insert(String::new(), dir);
                for se in &root.entries[1..] {
                    let (parent_rel, name) = match se.rel.rsplit_once('/') {
                        Some((p, n)) => (p, n),
                        None => ("", se.rel.as_str()),
                    };
                    let parent = self.dir_for(&mut dirs, parent_rel)?;
                    let e = &se.entry;
                    let owner = self.owner_for(e.uid, e.gid);
                    let host_src = src_host(&e.path);
                    match e.kind {
                        EntryKind::Dir => {
                            let mode = self.mode_for(e.mode, true);
                            let (h, created) =
                                dest::step_dir(self.dest_root, &parent, name, owner, 0o700)?;
                            if created {
                                self.stats.dirs += 1;
                                let mt = fs::symlink_metadata(&host_src)
                                    .ok()
                                    .map(|m| dest::mtime_of(&m));
                                self.dir_meta.push((h.clone(), mode, mt));
                            }
                            dirs.insert(se.rel.clone(), h);
                        }
                        EntryKind::File => {
                            let mode = self.mode_for(e.mode, false);
                            let dst = parent.join(names::to_os(name));
                            self.copy_file(&host_src, &dst, owner, mode)?;
                        }
                        EntryKind::Symlink => {
                            let t = e.link_target.clone().unwrap_or_default();
                            let dst = parent.join(names::to_os(name));
                            self.make_symlink(&host_src, &t, &dst, owner)?;
                        }
                    }
                }
            }
            Target::File(parent, name) => {
                let e = &root.entries[0].entry;
                let dir = self.ensure(&parent)?;
                let owner = self.owner_for(e.uid, e.gid);
                let host_src = src_host(&e.path);
                match e.kind {
                    EntryKind::File => {
                        let mode = self.mode_for(e.mode, false);
                        let dst = dir.join(names::to_os(&name));
                        self.copy_file(&host_src, &dst, owner, mode)?;
                    }
                    EntryKind::Symlink => {
                        let t = e.link_target.clone().unwrap_or_default();
                        let dst = dir.join(names::to_os(&name));
                        self.make_symlink(&host_src, &t, &dst, owner)?;
                    }
                    EntryKind::Dir => unreachable!("directories are merged"),
                }
            }
        }
        Ok(())
    }

    /// The host directory for `rel` below a merged directory, creating
    /// missing ones (parents of entries whose directory was excluded).
    fn dir_for(
        &mut self,
        dirs: &mut HashMap<String, PathBuf>,
        rel: &str,
    ) -> Result<PathBuf, CopyError> {
        if let Some(h) = dirs.get(rel) {
            return Ok(h.clone());
        }
        let (p, n) = rel.rsplit_once('/').unwrap_or(("", rel));
        let parent = self.dir_for(dirs, p)?;
        let (h, created) = dest::step_dir(self.dest_root, &parent, n, self.parent_owner(), 0o755)?;
        if created {
            self.stats.dirs += 1;
        }
        dirs.insert(rel.to_string(), h.clone());
        Ok(h)
    }

    fn copy_file(
        &mut self,
        src: &Path,
        dst: &Path,
        owner: (u32, u32),
        mode: u32,
    ) -> Result<(), CopyError> {
        if crate::context::hash_is_socket(src) {
            // A socket of the context is copied as an empty file (BuildKit).
            dest::clear_for_write(self.dest_root, dst)?;
            let df = fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(dst)
                .map_err(dest::io_at("create", dst))?;
            let smd = fs::symlink_metadata(src).map_err(dest::io_at("stat", src))?;
            self.finish_file(&df, dst, owner, mode, Some(dest::mtime_of(&smd)))?;
            self.stats.files += 1;
            return Ok(());
        }
        let mut sf = fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(src)
            .map_err(dest::io_at("open", src))?;
        let smd = sf.metadata().map_err(dest::io_at("stat", src))?;
        dest::clear_for_write(self.dest_root, dst)?;
        if smd.nlink() > 1 {
            if let Some(first) = self.links.get(&(smd.dev(), smd.ino())) {
                fs::hard_link(first, dst).map_err(dest::io_at("link", dst))?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
        }
        let mut df = fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dst)
            .map_err(dest::io_at("create", dst))?;
        let n = io::copy(&mut sf, &mut df).map_err(dest::io_at("write", dst))?;
        self.finish_file(&df, dst, owner, mode, Some(dest::mtime_of(&smd)))?;
        self.stats.files += 1;
        self.stats.bytes += n;
        if smd.nlink() > 1 {
            self.links.insert((smd.dev(), smd.ino()), dst.to_path_buf());
        }
        Ok(())
    }

    fn finish_file(
        &self,
        f: &fs::File,
        dst: &Path,
        (uid, gid): (u32, u32),
        mode: u32,
        mtime: Option<(i64, i64)>,
    ) -> Result<(), CopyError> {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::fchown(f, Some(uid), Some(gid)).map_err(dest::io_at("chown", dst))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(dest::io_at("chmod", dst))?;
        if let Some(mt) = mtime {
            dest::set_times_fd(f, dst, mt)?;
        }
        Ok(())
    }

    fn make_symlink(
        &mut self,
        src: &Path,
        target: &str,
        dst: &Path,
        owner: (u32, u32),
    ) -> Result<(), CopyError> {
        dest::clear_for_write(self.dest_root, dst)?;
        std::os::unix::fs::symlink(names::to_os(target), dst)
            .map_err(dest::io_at("symlink", dst))?;
        dest::lchown(dst, owner)?;
        if let Ok(md) = fs::symlink_metadata(src) {
            dest::set_times_nofollow(dst, dest::mtime_of(&md))?;
        }
        self.stats.symlinks += 1;
        Ok(())
    }

    fn write_inline(&mut self, f: &InlineFile, target: Target) -> Result<(), CopyError> {
        let Target::File(parent, name) = target else {
            unreachable!("inline files are files")
        };
        let dir = self.ensure(&parent)?;
        let dst = dir.join(names::to_os(&name));
        dest::clear_for_write(self.dest_root, &dst)?;
        let mut df = fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&dst)
            .map_err(dest::io_at("create", &dst))?;
        io::Write::write_all(&mut df, f.content.as_bytes()).map_err(dest::io_at("write", &dst))?;
        let owner = self.chown.unwrap_or((0, 0));
        let mode = self.mode_for(f.mode, false);
        self.finish_file(&df, &dst, owner, mode, None)?;
        self.stats.files += 1;
        self.stats.bytes += f.content.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> Result<CopyStats, CopyError> {
        use std::os::unix::fs::PermissionsExt;
        for (dir, mode, mtime) in self.dir_meta.drain(..).rev() {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .map_err(dest::io_at("chmod", &dir))?;
            if let Some(mt) = mtime {
                dest::set_times_nofollow(&dir, mt)?;
            }
        }
        Ok(self.stats)
    }
}
