//! The build context: the files under the context directory that survive
//! `.dockerignore`, indexed with their metadata and sha256 content digests.
//!
//! - [`scan`] walks a context directory and produces a [`ContextIndex`],
//!   hashing file contents in parallel (streaming, one reader per core),
//!   reusing digests remembered by a [`HashCache`].
//! - [`checksum`] and [`checksum_dir`] compute the cache-key checksum of what
//!   a `COPY <sources>` reads: names, kinds, modes, owners, link targets and
//!   content digests, never mtimes or host paths.
//!
//! A [`ContextIndex`] is plain data (no host paths, no times) so it can be
//! sent to a remote build node as it is. Its paths and link targets are
//! file-name bytes escaped into `String`s by [`names`] (any name works,
//! UTF-8 or not); [`host_path`] decodes them where the filesystem is used.

mod cache;
mod hash;
pub mod names;
mod select;

pub use cache::HashCache;
pub(crate) use hash::is_socket as hash_is_socket;
pub(crate) use select::{clean_components, select, FsTree, IndexTree, SelectedRoot};

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use xbuild_dockerfile::ignore::{
    ignore_file_candidates, read_ignore_file, MatchInfo, PatternError, PatternMatcher,
};
use xbuild_oci::Digest;

/// Errors from scanning a context or computing a checksum.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
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
    /// The ignore file has an invalid pattern.
    #[error("{file}: {source}")]
    Ignore {
        /// The ignore file, relative to the context.
        file: String,
        /// The pattern error.
        #[source]
        source: PatternError,
    },
    /// An `--exclude` pattern is invalid.
    #[error("invalid exclude pattern: {0}")]
    Exclude(#[source] PatternError),
    /// A source glob has invalid syntax.
    #[error("syntax error in source pattern {pattern:?}")]
    BadPattern {
        /// The pattern as given.
        pattern: String,
    },
    /// A literal source does not exist (or is ignored).
    #[error("COPY failed: {path:?}: not found (not in the source, or excluded by .dockerignore)")]
    NotFound {
        /// The source as given.
        path: String,
    },
    /// A wildcard source matched nothing, or no sources were given.
    #[error("COPY failed: no source files were specified (pattern {pattern:?} matched nothing)")]
    NoSourceFiles {
        /// The pattern as given.
        pattern: String,
    },
    /// Too many symlinks while resolving a source.
    #[error("too many levels of symbolic links resolving {path:?}")]
    SymlinkLoop {
        /// The source as given.
        path: String,
    },
    /// The hash cache file could not be read or written.
    #[error("hash cache {path}: {message}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ContextError + 'a {
    move |source| ContextError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a context entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (recorded, never followed).
    Symlink,
}

impl EntryKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
        }
    }
}

/// One file, directory or symlink of the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Relative, `/`-separated path (no `./`, no leading or trailing `/`),
    /// its bytes escaped by [`names::encode`].
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits plus setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes (files; 0 otherwise).
    pub size: u64,
    /// Target of a symlink, as stored in the link (escaped by
    /// [`names::encode`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// sha256 of a file's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

/// Counters of one [`scan`] (not serialized).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Files whose contents were read and hashed.
    pub files_hashed: u64,
    /// Bytes read while hashing.
    pub bytes_hashed: u64,
    /// Files whose digest came from the [`HashCache`].
    pub cache_hits: u64,
    /// Fifos and devices left out of the index.
    pub skipped_special: u64,
}

/// The build context after `.dockerignore`, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextIndex {
    /// Entries, sorted by path (byte order).
    pub entries: Vec<IndexEntry>,
    /// Counters of the scan that produced this index.
    #[serde(skip)]
    pub stats: ScanStats,
}

impl ContextIndex {
    /// The entry at `path` (relative, cleaned), if indexed.
    pub fn get(&self, path: &str) -> Option<&IndexEntry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The entries strictly below directory `dir` (`""` for everything), in order.
    pub fn subtree(&self, dir: &str) -> &[IndexEntry] {
        if dir.is_empty() {
            return &self.entries;
        }
        let prefix = format!("{dir}/");
        let start = self
            .entries
            .partition_point(|e| e.path.as_str() < prefix.as_str());
        let len = self.entries[start..]
            .iter()
            .take_while(|e| e.path.starts_with(&prefix))
            .count();
        &self.entries[start..start + len]
    }

    /// Sum of file sizes.
    pub fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
}

/// Options of [`scan`].
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Hashing threads; 0 means one per available core.
    pub threads: usize,
    /// Read `<Dockerfile>.dockerignore` / `.dockerignore` (default true).
    pub use_ignore_file: bool,
    /// Extra exclude patterns, applied after the ignore file's.
    pub extra_excludes: Vec<String>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            threads: 0,
            use_ignore_file: true,
            extra_excludes: Vec::new(),
        }
    }
}

/// Host-only facts of a file, used by the [`HashCache`] and never serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HostStamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub mode: u32,
}

impl HostStamp {
    pub(crate) fn of(md: &fs::Metadata) -> Self {
        HostStamp {
            size: md.size(),
            mtime_ns: md.mtime().saturating_mul(1_000_000_000) + md.mtime_nsec(),
            ctime_ns: md.ctime().saturating_mul(1_000_000_000) + md.ctime_nsec(),
            ino: md.ino(),
            mode: md.mode(),
        }
    }
}

/// Builds an index entry (without digest) from `lstat` metadata: a socket
/// is an empty file; `None` for fifos and devices.
pub(crate) fn entry_from_meta(
    path: String,
    md: &fs::Metadata,
    host: &Path,
) -> Result<Option<IndexEntry>, ContextError> {
    let ft = md.file_type();
    use std::os::unix::fs::FileTypeExt;
    let (kind, size, link_target) = if ft.is_file() {
        (EntryKind::File, md.size(), None)
    } else if ft.is_socket() {
        // BuildKit sends a socket as an empty regular file (testCopySocket).
        (EntryKind::File, 0, None)
    } else if ft.is_dir() {
        (EntryKind::Dir, 0, None)
    } else if ft.is_symlink() {
        let t = fs::read_link(host).map_err(io_err("readlink", host))?;
        (EntryKind::Symlink, 0, Some(names::encode_os(t.as_os_str())))
    } else {
        return Ok(None);
    };
    Ok(Some(IndexEntry {
        path,
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size,
        link_target,
        digest: None,
    }))
}

/// Joins a relative index path (escaped, see [`names`]) to a host root:
/// the host path with the name's real bytes.
pub fn host_path(root: &Path, rel: &str) -> PathBuf {
    names::join(root, rel)
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The Dockerfile to read: `path`, or, when `path` is named `Dockerfile`
/// and does not exist, a lowercase `dockerfile` beside it (BuildKit's
/// fallback, moby/moby#10858).
pub fn dockerfile_fallback(path: &Path) -> PathBuf {
    if path.file_name().is_some_and(|n| n == "Dockerfile") && fs::symlink_metadata(path).is_err() {
        let lower = path.with_file_name("dockerfile");
        if lower.is_file() {
            return lower;
        }
    }
    path.to_path_buf()
}

/// Walks `root` and indexes what `.dockerignore` lets through.
///
/// `dockerfile_rel` is the Dockerfile's path relative to `root` (default
/// `Dockerfile`); `<dockerfile_rel>.dockerignore` is preferred over
/// `.dockerignore`. As in BuildKit, the ignore file applies to the
/// Dockerfile and to itself too: a context that excludes them has no such
/// files (the Dockerfile is read on its own, never from the index). Symlinks are recorded, never followed. File contents are hashed
/// in parallel; with a `cache`, unchanged files (same size, mtime, ctime,
/// inode and mode) are not read again.
pub fn scan(
    root: &Path,
    dockerfile_rel: Option<&str>,
    opts: &ScanOptions,
    cache: Option<&mut HashCache>,
) -> Result<ContextIndex, ContextError> {
    let md = fs::metadata(root).map_err(io_err("stat", root))?;
    if !md.is_dir() {
        return Err(ContextError::Io {
            op: "use as build context",
            path: root.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    let dockerfile = dockerfile_rel
        .map(|d| d.trim_start_matches("./").trim_start_matches('/'))
        .filter(|d| !d.is_empty())
        .unwrap_or("Dockerfile");

    let mut patterns = Vec::new();
    let mut ignore_file = None;
    if opts.use_ignore_file {
        for cand in ignore_file_candidates(dockerfile) {
            let p = root.join(&cand);
            match fs::read(&p) {
                Ok(bytes) => {
                    // Escaped like names, so that a pattern holding a
                    // name's raw (non-UTF-8) bytes matches that name.
                    patterns = read_ignore_file(&names::encode(&bytes));
                    ignore_file = Some(cand);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {}
                Err(e) => return Err(io_err("read", &p)(e)),
            }
        }
    }
    patterns.extend(opts.extra_excludes.iter().cloned());
    let pm = PatternMatcher::new(&patterns).map_err(|source| ContextError::Ignore {
        file: ignore_file
            .clone()
            .unwrap_or_else(|| ".dockerignore".into()),
        source,
    })?;

    let mut w = Walker {
        root,
        pm: &pm,
        entries: Vec::new(),
        stamps: Vec::new(),
        skipped: 0,
    };
    w.walk_dir("", &MatchInfo::default())?;

    let Walker {
        mut entries,
        stamps,
        skipped,
        ..
    } = w;
    let mut stats = hash::fill_digests(root, &mut entries, &stamps, opts.threads, cache)?;
    stats.skipped_special = skipped;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
    Ok(ContextIndex { entries, stats })
}

struct Walker<'a> {
    root: &'a Path,
    pm: &'a PatternMatcher,
    entries: Vec<IndexEntry>,
    stamps: Vec<HostStamp>,
    skipped: u64,
}

impl Walker<'_> {
    /// Walks directory `dir` (relative); returns whether anything below it
    /// was indexed.
    fn walk_dir(&mut self, dir: &str, info: &MatchInfo) -> Result<bool, ContextError> {
        let hdir = host_path(self.root, dir);
        let mut children = Vec::new();
        for ent in fs::read_dir(&hdir).map_err(io_err("read directory", &hdir))? {
            let ent = ent.map_err(io_err("read directory", &hdir))?;
            // Any name, UTF-8 or not (BuildKit copies names as bytes).
            children.push(names::encode_os(&ent.file_name()));
        }
        children.sort();
        let mut any = false;
        for name in children {
            let rel = join_rel(dir, &name);
            let hp = host_path(self.root, &rel);
            let md = match fs::symlink_metadata(&hp) {
                Ok(md) => md,
                // Vanished while walking.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", &hp)(e)),
            };
            let (excluded, child_info) =
                self.pm
                    .matches_using_parent_results(&rel, info)
                    .map_err(|source| ContextError::Ignore {
                        file: ".dockerignore".into(),
                        source,
                    })?;
            let Some(entry) = entry_from_meta(rel.clone(), &md, &hp)? else {
                self.skipped += 1;
                continue;
            };
            if entry.kind == EntryKind::Dir {
                if excluded && !self.could_reinclude_below(&rel) {
                    continue;
                }
                let pos = self.entries.len();
                self.entries.push(entry);
                self.stamps.push(HostStamp::of(&md));
                let below = self.walk_dir(&rel, &child_info)?;
                if excluded && !below {
                    // Nothing re-included below: drop the directory again.
                    self.entries.truncate(pos);
                    self.stamps.truncate(pos);
                } else {
                    any = true;
                }
            } else if !excluded {
                self.entries.push(entry);
                self.stamps.push(HostStamp::of(&md));
                any = true;
            }
        }
        Ok(any)
    }

    /// Whether some `!exception` pattern could match a path below `dir`, in
    /// which case an excluded directory must still be walked.
    fn could_reinclude_below(&self, dir: &str) -> bool {
        if !self.pm.exclusions() {
            return false;
        }
        let dir_slash = format!("{dir}/");
        self.pm
            .patterns()
            .iter()
            .filter(|p| p.exclusion())
            .any(|p| {
                let s = p.as_str();
                match s.find(['*', '?', '[', '\\']) {
                    None => s.starts_with(&dir_slash) || s == dir,
                    Some(i) => {
                        let lit = &s[..i];
                        lit.starts_with(&dir_slash) || dir_slash.starts_with(lit)
                    }
                }
            })
    }
}

/// The cache-key checksum of what `COPY <sources>` reads from the context
/// `index`: for every selected file, directory and symlink its name (relative
/// to the selected source, or its whole path with `parents`), kind, mode,
/// owner, link target and content digest. Never mtimes or host paths, so the
/// same sources give the same checksum wherever the context lives.
///
/// A literal source that does not exist is [`ContextError::NotFound`]; a
/// wildcard that matches nothing selects nothing (BuildKit's
/// `AllowEmptyWildcard`).
pub fn checksum(
    index: &ContextIndex,
    sources: &[String],
    exclude: &[String],
    parents: bool,
) -> Result<Digest, ContextError> {
    let roots = select(&IndexTree(index), sources, exclude, parents)?;
    Ok(select::digest_roots(&roots, parents))
}

/// What [`checksum`] covers, one line per selected entry: its real path in
/// the context and a short hash of what the checksum takes from it (kind,
/// mode, owner, size, link target, content digest). Kept with cache records
/// so a later miss can name the paths that changed; never mtimes.
pub fn listing(
    index: &ContextIndex,
    sources: &[String],
    exclude: &[String],
    parents: bool,
) -> Result<Vec<(String, String)>, ContextError> {
    let roots = select(&IndexTree(index), sources, exclude, parents)?;
    let mut out: Vec<(String, String)> = Vec::new();
    for r in &roots {
        for se in &r.entries {
            let e = &se.entry;
            let line = format!(
                "{}\0{:o}\0{}\0{}\0{}\0{}\0{}",
                e.kind.as_str(),
                e.mode,
                e.uid,
                e.gid,
                e.size,
                e.link_target.as_deref().unwrap_or(""),
                e.digest.as_ref().map_or("", |d| d.as_str()),
            );
            let d = Digest::sha256_of(line.as_bytes());
            out.push((e.path.clone(), d.hex()[..16].to_string()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Like [`checksum`], for a directory tree that is not a scanned context
/// (a stage's or an image's root filesystem, for `COPY --from`). Symlinks in
/// source paths are resolved inside `root`. Only the selected subtrees are
/// read; their files are hashed in parallel.
pub fn checksum_dir(
    root: &Path,
    sources: &[String],
    exclude: &[String],
    parents: bool,
) -> Result<Digest, ContextError> {
    let mut roots = select(&FsTree::new(root), sources, exclude, parents)?;
    hash::fill_selected(root, &mut roots, 0)?;
    Ok(select::digest_roots(&roots, parents))
}
