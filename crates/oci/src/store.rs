//! A content-addressed blob store rooted at a directory, and a tiny named
//! reference facility on top of it.
//!
//! Layout under the root:
//!
//! ```text
//! blobs/sha256/<hex>     one file per blob, named by its digest
//! tmp/ingest-*           blobs being written (same filesystem, renamed into place)
//! refs/<escaped name>    one file per reference, holding a digest
//! quarantine/<hex>-*     blobs found corrupt (kept for inspection, never used)
//! lock                   store-wide advisory lock (shared: writers, exclusive: GC)
//! ```
//!
//! Guarantees:
//! - a blob appears under its digest name only after its content was fully
//!   written, verified and fsynced (temp file + atomic rename + directory
//!   fsync), so a killed process never leaves a partial blob under a digest
//!   name;
//! - any number of processes may ingest at once, including the same blob:
//!   each writes its own temp file and the last rename wins with identical
//!   content;
//! - temp files left by crashed processes are removed by
//!   [`BlobStore::cleanup_temp`] (called from [`BlobStore::open`]); a temp
//!   file still being written is locked by its writer and never removed;
//! - garbage collection should hold [`BlobStore::exclusive_lock`] while it
//!   decides what to delete and deletes it; every [`BlobWriter`] holds the
//!   shared lock while it exists, and callers that must ingest a blob and
//!   then reference it without a GC in between hold
//!   [`BlobStore::shared_lock`] around both.

use crate::digest::{Algorithm, Digest, DigestWriter};
use fs2::FileExt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Blobs larger than this are refused by [`BlobStore::read_to_vec`].
pub const READ_TO_VEC_LIMIT: u64 = 64 * 1024 * 1024;

/// Temp files older than this are removed when a store is opened.
pub const DEFAULT_STALE_AGE: Duration = Duration::from_secs(60 * 60);

/// Errors from the blob store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
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
    /// Reading the source stream failed.
    #[error("reading blob content: {0}")]
    Read(#[source] io::Error),
    /// The blob is not in the store.
    #[error("blob {0} not found in the store")]
    NotFound(Digest),
    /// Content did not hash to the expected digest.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the caller expected.
        expected: Digest,
        /// The digest of what was read.
        actual: Digest,
    },
    /// Content did not have the expected size.
    #[error("size mismatch for blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Digest of the blob (expected, else computed).
        digest: Digest,
        /// Expected size.
        expected: u64,
        /// Actual size (or more than expected when reading stopped early).
        actual: u64,
    },
    /// The blob is too large to read into memory.
    #[error("blob {digest} is {size} bytes, more than the {limit} bytes allowed in memory")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A stored blob does not match its name (flipped bytes, truncated).
    /// It was moved to the store's `quarantine/` directory, so it is
    /// fetched again (or rebuilt) rather than used.
    #[error("blob {digest} in the content store is corrupt ({detail}); moved it to {quarantined}")]
    Corrupt {
        /// The blob.
        digest: Digest,
        /// What is wrong.
        detail: String,
        /// Where it went.
        quarantined: PathBuf,
    },
    /// A reference name is empty or too long.
    #[error("invalid reference name {0:?}")]
    InvalidRefName(String),
    /// A reference file does not hold a digest.
    #[error("reference {name:?} is corrupt: {reason}")]
    CorruptRef {
        /// The reference name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A content-addressed blob store. Cheap to clone; many instances (in one or
/// several processes) may use the same root at once.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// A held store-wide advisory lock; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    file: File,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{}-{}", std::process::id(), t, n)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(io_err("open directory", dir))?;
    f.sync_all().map_err(io_err("fsync directory", dir))
}

impl BlobStore {
    /// Open (creating if needed) a store at `root` and remove temp files older
    /// than [`DEFAULT_STALE_AGE`].
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let store = BlobStore { root: root.into() };
        for dir in [
            store.root.join("blobs").join("sha256"),
            store.root.join("blobs").join("sha512"),
            store.root.join("tmp"),
            store.root.join("refs"),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        }
        store.cleanup_temp(DEFAULT_STALE_AGE)?;
        Ok(store)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn lock_file(&self) -> Result<File> {
        let p = self.root.join("lock");
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(io_err("open lock file", &p))
    }

    /// Take the store-wide lock shared (blocks while a GC holds it exclusive).
    pub fn shared_lock(&self) -> Result<StoreLock> {
        let file = self.lock_file()?;
        file.lock_shared()
            .map_err(io_err("lock", &self.root.join("lock")))?;
        Ok(StoreLock { file })
    }

    /// Take the store-wide lock exclusive (blocks while any writer exists).
    /// Do not call while this process holds a shared lock or a live
    /// [`BlobWriter`]: that would deadlock.
    pub fn exclusive_lock(&self) -> Result<StoreLock> {
        let file = self.lock_file()?;
        file.lock_exclusive()
            .map_err(io_err("lock", &self.root.join("lock")))?;
        Ok(StoreLock { file })
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// True when the blob is present.
    pub fn exists(&self, digest: &Digest) -> bool {
        self.path_of(digest).is_file()
    }

    /// Size of a present blob.
    pub fn size_of(&self, digest: &Digest) -> Result<u64> {
        let p = self.path_of(digest);
        match fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(digest.clone()))
            }
            Err(e) => Err(io_err("stat", &p)(e)),
        }
    }

    /// Open a present blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let p = self.path_of(digest);
        match File::open(&p) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(digest.clone()))
            }
            Err(e) => Err(io_err("open", &p)(e)),
        }
    }

    /// Read a small blob (manifest, config) into memory; refuses blobs over
    /// [`READ_TO_VEC_LIMIT`].
    pub fn read_to_vec(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut f = self.open_blob(digest)?;
        let p = self.path_of(digest);
        let size = f.metadata().map_err(io_err("stat", &p))?.len();
        if size > READ_TO_VEC_LIMIT {
            return Err(StoreError::TooLarge {
                digest: digest.clone(),
                size,
                limit: READ_TO_VEC_LIMIT,
            });
        }
        let mut v = Vec::with_capacity(size as usize);
        f.read_to_end(&mut v).map_err(io_err("read", &p))?;
        Ok(v)
    }

    /// Start writing a blob whose digest is computed with `algorithm`.
    pub fn writer(&self, algorithm: Algorithm) -> Result<BlobWriter> {
        let lock = self.shared_lock()?;
        let path = self.tmp_dir().join(format!("ingest-{}", unique_suffix()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create temp file", &path))?;
        // Held until commit or drop, so cleanup never removes a live temp file.
        file.lock_exclusive()
            .map_err(io_err("lock temp file", &path))?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp_path: path,
            inner: Some(DigestWriter::with_algorithm(
                BufWriter::with_capacity(256 * 1024, file),
                algorithm,
            )),
            _lock: lock,
        })
    }

    /// Copy `reader` into the store. When `expected` is given the content
    /// must hash to it (and the blob is not read at all when already present
    /// with the right size); when `expected_size` is given the content must
    /// have that size, and reading stops right after it is exceeded.
    pub fn ingest<R: Read>(
        &self,
        mut reader: R,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        if let Some(d) = expected {
            if let Ok(size) = self.size_of(d) {
                match expected_size {
                    Some(es) if es != size => {}
                    _ => return Ok((d.clone(), size)),
                }
            }
        }
        let alg = expected.map(Digest::algorithm).unwrap_or(Algorithm::Sha256);
        let mut w = self.writer(alg)?;
        match expected_size {
            Some(limit) => {
                let mut limited = (&mut reader).take(limit + 1);
                io::copy(&mut limited, &mut w).map_err(StoreError::Read)?;
            }
            None => {
                io::copy(&mut reader, &mut w).map_err(StoreError::Read)?;
            }
        }
        w.commit_checked(expected, expected_size)
    }

    /// Store `bytes` and return their sha256 digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::sha256_of(bytes);
        self.ingest(bytes, Some(&d), Some(bytes.len() as u64))?;
        Ok(d)
    }

    /// Opens a present blob for a reader that hashes what it reads and,
    /// when the last byte has been read, checks the digest and the size
    /// (`expected_size`, else the file's): a corrupt blob fails the read
    /// with [`StoreError::Corrupt`] (inside an `io::Error` of kind
    /// `InvalidData`, naming the blob) after being quarantined.
    pub fn open_verified(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
    ) -> Result<VerifiedBlob> {
        let file = self.open_blob(digest)?;
        let p = self.path_of(digest);
        let len = file.metadata().map_err(io_err("stat", &p))?.len();
        let size = expected_size.unwrap_or(len);
        let mut v = VerifiedBlob {
            store: self.clone(),
            digest: digest.clone(),
            file,
            size,
            read: 0,
            hash: Some(DigestWriter::with_algorithm(io::sink(), digest.algorithm())),
            failed: None,
        };
        if len != size {
            let e = self.quarantine_with(digest, format!("{len} bytes, expected {size}"));
            v.failed = Some(e.to_string());
            return Err(e);
        }
        Ok(v)
    }

    /// Moves a corrupt blob out of the way (into `quarantine/`), so that it
    /// is no longer found and gets fetched or rebuilt. Returns where it went.
    pub fn quarantine(&self, digest: &Digest) -> Result<PathBuf> {
        let src = self.path_of(digest);
        let dir = self.root.join("quarantine");
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let dest = dir.join(format!("{}-{}", digest.hex(), unique_suffix()));
        match fs::rename(&src, &dest) {
            Ok(()) => Ok(dest),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(dest),
            Err(e) => Err(io_err("quarantine", &src)(e)),
        }
    }

    /// Digests of quarantined blobs that the store still lacks.
    pub fn quarantined(&self) -> Vec<Digest> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.root.join("quarantine")) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let hex = name.split('-').next().unwrap_or_default();
            let alg = if hex.len() == 128 { "sha512" } else { "sha256" };
            if let Ok(d) = Digest::parse(&format!("{alg}:{hex}")) {
                if !self.exists(&d) && !out.contains(&d) {
                    out.push(d);
                }
            }
        }
        out.sort();
        out
    }

    fn quarantine_with(&self, digest: &Digest, detail: String) -> StoreError {
        match self.quarantine(digest) {
            Ok(quarantined) => StoreError::Corrupt {
                digest: digest.clone(),
                detail,
                quarantined,
            },
            Err(e) => e,
        }
    }

    /// Re-hashes a present blob; when it does not match its name it is
    /// quarantined and [`StoreError::Corrupt`] returned.
    pub fn check(&self, digest: &Digest) -> Result<()> {
        let mut r = self.open_verified(digest, None)?;
        r.finish()
    }

    /// Re-hash a present blob and report whether it matches its name.
    pub fn verify(&self, digest: &Digest) -> Result<bool> {
        let mut f = self.open_blob(digest)?;
        let mut w = DigestWriter::with_algorithm(io::sink(), digest.algorithm());
        io::copy(&mut f, &mut w).map_err(io_err("read", &self.path_of(digest)))?;
        Ok(w.finish().0 == *digest)
    }

    /// Remove a blob. Returns false when it was not present. Garbage
    /// collectors should hold [`BlobStore::exclusive_lock`].
    pub fn delete(&self, digest: &Digest) -> Result<bool> {
        let p = self.path_of(digest);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &p)(e)),
        }
    }

    /// All blobs with their sizes, sorted by digest. Files whose names are
    /// not valid digests are ignored.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.root.join("blobs").join(alg.as_str());
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read directory", &dir)(e)),
            };
            for ent in rd {
                let ent = ent.map_err(io_err("read directory", &dir))?;
                let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let Ok(d) = Digest::parse(&format!("{}:{}", alg.as_str(), name)) else {
                    continue;
                };
                match ent.metadata() {
                    Ok(m) if m.is_file() => out.push((d, m.len())),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("stat", &ent.path())(e)),
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Sum of the sizes of all blobs.
    pub fn total_size(&self) -> Result<u64> {
        Ok(self.list()?.iter().map(|(_, s)| s).sum())
    }

    /// Remove temp files older than `max_age` that no live writer holds.
    /// Returns how many were removed.
    pub fn cleanup_temp(&self, max_age: Duration) -> Result<usize> {
        let dir = self.tmp_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("read directory", &dir)(e)),
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for ent in rd {
            let ent = ent.map_err(io_err("read directory", &dir))?;
            let path = ent.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let old = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= max_age);
            if !old || !meta.is_file() {
                continue;
            }
            let Ok(f) = OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            if f.try_lock_exclusive().is_ok() {
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove stale temp file", &path)(e)),
                }
            }
        }
        Ok(removed)
    }

    // ---- references ----

    fn ref_path(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty() || name.len() > 1024 {
            return Err(StoreError::InvalidRefName(name.to_string()));
        }
        let esc = escape_ref(name);
        if esc.len() > 255 {
            return Err(StoreError::InvalidRefName(name.to_string()));
        }
        Ok(self.root.join("refs").join(esc))
    }

    /// Point `name` at `digest`, atomically replacing any previous value.
    pub fn set_ref(&self, name: &str, digest: &Digest) -> Result<()> {
        let dest = self.ref_path(name)?;
        let tmp = self.tmp_dir().join(format!("ref-{}", unique_suffix()));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(format!("{digest}\n").as_bytes())?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("write reference", &tmp)(e));
        }
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("rename reference into place", &dest)(e));
        }
        fsync_dir(&self.root.join("refs"))
    }

    /// The digest `name` points at, if set.
    pub fn get_ref(&self, name: &str) -> Result<Option<Digest>> {
        let p = self.ref_path(name)?;
        let s = match fs::read_to_string(&p) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read reference", &p)(e)),
        };
        Digest::parse(s.trim())
            .map(Some)
            .map_err(|e| StoreError::CorruptRef {
                name: name.to_string(),
                reason: e.to_string(),
            })
    }

    /// Remove `name`. Returns false when it was not set.
    pub fn delete_ref(&self, name: &str) -> Result<bool> {
        let p = self.ref_path(name)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove reference", &p)(e)),
        }
    }

    /// All references, sorted by name. Corrupt ones are skipped.
    pub fn list_refs(&self) -> Result<Vec<(String, Digest)>> {
        let dir = self.root.join("refs");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read directory", &dir)(e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(io_err("read directory", &dir))?;
            let Some(name) = ent.file_name().to_str().and_then(unescape_ref) else {
                continue;
            };
            if let Ok(Some(d)) = self.get_ref(&name) {
                out.push((name, d));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Escape a reference name into one safe file name: bytes outside
/// `[A-Za-z0-9_.-]` (and a leading `.`) become `%XX`.
fn escape_ref(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn unescape_ref(file: &str) -> Option<String> {
    let b = file.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = file.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (escape_ref(&s) == file).then_some(s)
}

/// A stored blob being read and checked against its digest and size; see
/// [`BlobStore::open_verified`].
pub struct VerifiedBlob {
    store: BlobStore,
    digest: Digest,
    file: File,
    size: u64,
    read: u64,
    hash: Option<DigestWriter<io::Sink>>,
    failed: Option<String>,
}

impl std::fmt::Debug for VerifiedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedBlob")
            .field("digest", &self.digest)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl VerifiedBlob {
    /// The blob.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Reads what the consumer left unread and checks the whole blob
    /// (a no-op when the check already ran).
    pub fn finish(&mut self) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(self.to_store_error(e)),
            }
        }
        match &self.failed {
            Some(m) => Err(StoreError::Read(io::Error::new(
                io::ErrorKind::InvalidData,
                m.clone(),
            ))),
            None => Ok(()),
        }
    }

    /// The [`StoreError`] inside an error this reader returned.
    fn to_store_error(&self, e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::InvalidData && self.failed.is_some() {
            if let Some(inner) = e.into_inner() {
                if let Ok(se) = inner.downcast::<StoreError>() {
                    return *se;
                }
                return StoreError::Read(io::Error::other(self.failed.clone().unwrap_or_default()));
            }
            return StoreError::Read(io::Error::other(self.failed.clone().unwrap_or_default()));
        }
        io_err("read", &self.store.path_of(&self.digest))(e)
    }

    fn check_end(&mut self) -> io::Result<()> {
        let Some(h) = self.hash.take() else {
            return Ok(());
        };
        let (actual, n, _) = h.finish();
        let detail = if n != self.size {
            Some(format!("{n} bytes, expected {}", self.size))
        } else if actual != self.digest {
            Some(format!("its content hashes to {actual}"))
        } else {
            None
        };
        match detail {
            None => Ok(()),
            Some(d) => {
                let e = self.store.quarantine_with(&self.digest, d);
                self.failed = Some(e.to_string());
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }
}

impl Read for VerifiedBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(m) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, m.clone()));
        }
        if self.hash.is_none() || buf.is_empty() {
            return Ok(0);
        }
        let left = self.size - self.read.min(self.size);
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        let n = if want == 0 {
            0
        } else {
            self.file.read(&mut buf[..want])?
        };
        if let Some(h) = self.hash.as_mut() {
            h.write_all(&buf[..n])?;
        }
        self.read += n as u64;
        if n == 0 || self.read == self.size {
            // The end of the blob (or of the file, when it is short).
            self.check_end()?;
        }
        Ok(n)
    }
}

/// A blob being written into the store: write to it, then
/// [`commit`](BlobWriter::commit). Dropped without commit, it removes its
/// temp file. Holds the store's shared lock while alive.
#[derive(Debug)]
pub struct BlobWriter {
    store: BlobStore,
    tmp_path: PathBuf,
    inner: Option<DigestWriter<BufWriter<File>>>,
    _lock: StoreLock,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.inner.as_ref().map_or(0, |w| w.bytes_written())
    }

    /// Verify (when `expected` is given), fsync and move the blob into place.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        self.commit_checked(expected, None)
    }

    /// Like [`commit`](BlobWriter::commit), also checking the size.
    pub fn commit_checked(
        mut self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        let w = self.inner.take().expect("writer used after commit");
        let r = self.finish_inner(w, expected, expected_size);
        // On success the temp file was renamed away; otherwise it is garbage.
        if r.is_err() || self.tmp_path.exists() {
            let _ = fs::remove_file(&self.tmp_path);
        }
        r
    }

    fn finish_inner(
        &self,
        w: DigestWriter<BufWriter<File>>,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        let (digest, size, buf) = w.finish();
        let tmp = &self.tmp_path;
        let file = buf
            .into_inner()
            .map_err(|e| io_err("write temp file", tmp)(e.into_error()))?;
        if let Some(es) = expected_size {
            if es != size {
                return Err(StoreError::SizeMismatch {
                    digest: expected.cloned().unwrap_or(digest),
                    expected: es,
                    actual: size,
                });
            }
        }
        if let Some(exp) = expected {
            if *exp != digest {
                return Err(StoreError::DigestMismatch {
                    expected: exp.clone(),
                    actual: digest,
                });
            }
        }
        if self.store.size_of(&digest).ok() == Some(size) {
            // Someone else stored the same content; ours is redundant.
            // (A present file of another size is a damaged copy: ours,
            // verified, replaces it.)
            return Ok((digest, size));
        }
        let dest = self.store.path_of(&digest);
        file.sync_all().map_err(io_err("fsync", tmp))?;
        fs::rename(tmp, &dest).map_err(io_err("rename blob into place", &dest))?;
        drop(file);
        fsync_dir(dest.parent().expect("blob path has a parent"))?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already committed"))?
            .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.inner.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.inner.take().is_some() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flipped byte or a truncation is found while the blob is read, the
    /// error names the blob, the blob is quarantined, and a fresh ingest
    /// of the right content repairs the store.
    #[test]
    fn corrupt_blobs_are_found_while_read_and_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let d = store.put_bytes(&data).unwrap();
        let mut all = Vec::new();
        store
            .open_verified(&d, Some(data.len() as u64))
            .unwrap()
            .read_to_end(&mut all)
            .unwrap();
        assert_eq!(all, data);
        for damage in ["flip", "truncate"] {
            let p = store.path_of(&d);
            let mut bytes = fs::read(&p).unwrap();
            match damage {
                "flip" => bytes[1234] ^= 0x40,
                _ => bytes.truncate(1000),
            }
            let mut perm = fs::metadata(&p).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
            fs::set_permissions(&p, perm).unwrap();
            fs::write(&p, &bytes).unwrap();
            let e = match store.open_verified(&d, None) {
                Ok(mut r) => {
                    let mut sink = Vec::new();
                    r.read_to_end(&mut sink).unwrap_err().to_string()
                }
                Err(e) => e.to_string(),
            };
            assert!(
                e.contains(d.as_str()) && e.contains("corrupt"),
                "{damage}: {e}"
            );
            assert!(!store.exists(&d), "{damage}: not quarantined");
            assert!(fs::read_dir(dir.path().join("quarantine")).unwrap().count() > 0);
            // Writing it again (a re-fetch) repairs it, even over a damaged
            // copy of another size (a truncated download put back).
            if damage == "truncate" {
                fs::write(&p, &bytes).unwrap();
            }
            store
                .ingest(&data[..], Some(&d), Some(data.len() as u64))
                .unwrap();
            store.check(&d).unwrap();
        }
    }

    #[test]
    fn ref_escaping_round_trips() {
        for n in [
            "docker.io/library/alpine:3.19",
            ".hidden",
            "..",
            "a%b",
            "ünï",
            "x@sha256:abc",
        ] {
            let e = escape_ref(n);
            assert!(!e.contains('/') && e != "." && e != ".." && !e.starts_with('.'));
            assert_eq!(unescape_ref(&e).as_deref(), Some(n), "{n} -> {e}");
        }
        assert_eq!(unescape_ref("%2"), None);
        assert_eq!(unescape_ref("a%2fb"), None); // not canonical
    }
}
