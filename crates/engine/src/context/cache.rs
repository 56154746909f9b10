//! [`HashCache`]: content digests remembered across scans.

use super::{ContextError, HostStamp};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use xbuild_oci::Digest;

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    stamp: HostStamp,
    digest: Digest,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    entries: HashMap<String, Cached>,
}

/// Remembers file checksums by relative path and (size, mtime ns, ctime ns,
/// inode, mode), so that rescanning an unchanged context reads no file
/// contents. Host-local state: it is never sent anywhere.
#[derive(Debug, Default)]
pub struct HashCache {
    file: Option<PathBuf>,
    entries: HashMap<String, Cached>,
    files_hashed: u64,
    bytes_hashed: u64,
    dirty: bool,
}

impl HashCache {
    /// An empty cache that lives in memory only.
    pub fn in_memory() -> Self {
        HashCache::default()
    }

    /// Loads the cache stored in `file` (empty when missing or unreadable as
    /// a cache; a damaged cache only costs rehashing).
    pub fn load(file: &Path) -> Result<Self, ContextError> {
        let mut c = HashCache {
            file: Some(file.to_path_buf()),
            ..HashCache::default()
        };
        match fs::read(file) {
            Ok(bytes) => {
                if let Ok(d) = serde_json::from_slice::<OnDisk>(&bytes) {
                    if d.version == FORMAT_VERSION {
                        c.entries = d.entries;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ContextError::Cache {
                    path: file.to_path_buf(),
                    message: e.to_string(),
                })
            }
        }
        Ok(c)
    }

    /// The cache of context directory `context_root`, kept under
    /// `state_dir/context-hashes/` (one file per context directory).
    pub fn for_context(state_dir: &Path, context_root: &Path) -> Result<Self, ContextError> {
        let canon = fs::canonicalize(context_root).unwrap_or_else(|_| context_root.to_path_buf());
        let key = Digest::sha256_of(canon.as_os_str().as_encoded_bytes());
        HashCache::load(
            &state_dir
                .join("context-hashes")
                .join(format!("{}.json", &key.hex()[..32])),
        )
    }

    /// The file this cache is loaded from and saved to, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Saves the cache to its file (atomically: temporary file, fsync,
    /// rename). Does nothing for an in-memory cache or when nothing changed.
    pub fn save(&mut self) -> Result<(), ContextError> {
        let Some(file) = self.file.clone() else {
            return Ok(());
        };
        if !self.dirty && file.exists() {
            return Ok(());
        }
        self.save_to(&file)?;
        self.dirty = false;
        Ok(())
    }

    /// Saves the cache to `file` atomically.
    pub fn save_to(&self, file: &Path) -> Result<(), ContextError> {
        let err = |e: &dyn std::fmt::Display| ContextError::Cache {
            path: file.to_path_buf(),
            message: e.to_string(),
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let data = serde_json::to_vec(&OnDisk {
            version: FORMAT_VERSION,
            entries: self.entries.clone(),
        })
        .map_err(|e| err(&e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| err(&e))?;
        tmp.write_all(&data).map_err(|e| err(&e))?;
        tmp.as_file().sync_all().map_err(|e| err(&e))?;
        tmp.persist(file).map_err(|e| err(&e.error))?;
        Ok(())
    }

    /// Number of remembered files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Files whose contents the last scan using this cache read.
    pub fn files_hashed(&self) -> u64 {
        self.files_hashed
    }

    /// Bytes the last scan using this cache read.
    pub fn bytes_hashed(&self) -> u64 {
        self.bytes_hashed
    }

    pub(crate) fn lookup(&self, path: &str, stamp: &HostStamp) -> Option<&Digest> {
        self.entries
            .get(path)
            .filter(|c| c.stamp == *stamp)
            .map(|c| &c.digest)
    }

    pub(crate) fn insert(&mut self, path: String, stamp: HostStamp, digest: Digest) {
        self.entries.insert(path, Cached { stamp, digest });
        self.dirty = true;
    }

    pub(crate) fn forget(&mut self, path: &str) {
        if self.entries.remove(path).is_some() {
            self.dirty = true;
        }
    }

    pub(crate) fn retain_paths<'a>(&mut self, paths: impl Iterator<Item = &'a str>) {
        let keep: HashSet<&str> = paths.collect();
        let before = self.entries.len();
        self.entries.retain(|k, _| keep.contains(k.as_str()));
        if self.entries.len() != before {
            self.dirty = true;
        }
    }

    pub(crate) fn record_scan(&mut self, files: u64, bytes: u64) {
        self.files_hashed = files;
        self.bytes_hashed = bytes;
    }
}
