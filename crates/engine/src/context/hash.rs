//! Parallel, streaming sha256 of files.

use super::{
    host_path, io_err, ContextError, EntryKind, HashCache, HostStamp, IndexEntry, ScanStats,
};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use xbuild_oci::digest::{Algorithm, Hasher};
use xbuild_oci::Digest;

/// Read buffer of each hashing thread.
pub(crate) const BUF_SIZE: usize = 256 * 1024;

/// A file modified this close to the start of a scan (or later) is hashed
/// but not remembered: a change within the same timestamp tick would go
/// unnoticed otherwise.
const RACY_WINDOW_NS: i64 = 50_000_000;

/// The result of hashing one file.
pub(crate) struct Hashed {
    pub digest: Digest,
    pub bytes: u64,
    /// The file's stamp taken from the open descriptor after reading.
    pub stamp: HostStamp,
}

/// Hashes one file, streaming, refusing to follow a symlink at the end.
pub(crate) fn hash_file(path: &Path, buf: &mut [u8]) -> Result<Hashed, ContextError> {
    // Sockets are copied as empty files: hash them as such (they cannot be
    // opened for reading).
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if std::os::unix::fs::FileTypeExt::is_socket(&md.file_type()) {
            return Ok(Hashed {
                digest: Hasher::new(Algorithm::Sha256).finish(),
                bytes: 0,
                stamp: HostStamp::of(&md),
            });
        }
    }
    let mut f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err("open", path))?;
    let mut h = Hasher::new(Algorithm::Sha256);
    let mut bytes = 0u64;
    loop {
        let n = match f.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", path)(e)),
        };
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    let md = f.metadata().map_err(io_err("stat", path))?;
    Ok(Hashed {
        digest: h.finish(),
        bytes,
        stamp: HostStamp::of(&md),
    })
}

/// Hashes `paths` on `threads` threads (0 = every core). Stops at the first
/// error.
pub(crate) fn hash_many(paths: &[PathBuf], threads: usize) -> Result<Vec<Hashed>, ContextError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    }
    .min(paths.len())
    .max(1);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_err: Mutex<Option<ContextError>> = Mutex::new(None);
    let results: Vec<Mutex<Option<Hashed>>> = paths.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = vec![0u8; BUF_SIZE];
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = paths.get(i) else { break };
                    match hash_file(p, &mut buf) {
                        Ok(h) => *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(h),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_err
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every path hashed")
        })
        .collect())
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Whether `p` is a Unix socket (not followed).
pub(crate) fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// Fills the digests of the file entries of a scan, using and updating `cache`.
pub(crate) fn fill_digests(
    root: &Path,
    entries: &mut [IndexEntry],
    stamps: &[HostStamp],
    threads: usize,
    mut cache: Option<&mut HashCache>,
) -> Result<ScanStats, ContextError> {
    let started = now_ns();
    let mut stats = ScanStats::default();
    let mut todo = Vec::new();
    for (i, e) in entries.iter_mut().enumerate() {
        if e.kind != EntryKind::File {
            continue;
        }
        if e.size == 0 && is_socket(&host_path(root, &e.path)) {
            // Indexed as an empty file, never opened.
            e.digest = Some(Digest::sha256_of(b""));
            continue;
        }
        if let Some(d) = cache.as_deref().and_then(|c| c.lookup(&e.path, &stamps[i])) {
            e.digest = Some(d.clone());
            stats.cache_hits += 1;
        } else {
            todo.push(i);
        }
    }
    let paths: Vec<PathBuf> = todo
        .iter()
        .map(|&i| host_path(root, &entries[i].path))
        .collect();
    let hashed = hash_many(&paths, threads)?;
    for (&i, h) in todo.iter().zip(hashed) {
        stats.files_hashed += 1;
        stats.bytes_hashed += h.bytes;
        let e = &mut entries[i];
        e.size = h.bytes;
        let before = stamps[i];
        let stable = h.stamp == before
            && before.mtime_ns < started - RACY_WINDOW_NS
            && before.ctime_ns < started - RACY_WINDOW_NS;
        if let Some(c) = cache.as_deref_mut() {
            if stable {
                c.insert(e.path.clone(), before, h.digest.clone());
            } else {
                c.forget(&e.path);
            }
        }
        e.digest = Some(h.digest);
    }
    if let Some(c) = cache {
        c.retain_paths(
            entries
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .map(|e| e.path.as_str()),
        );
        c.record_scan(stats.files_hashed, stats.bytes_hashed);
    }
    Ok(stats)
}

/// Fills the digests of the files of selected roots read from a directory tree.
pub(crate) fn fill_selected(
    root: &Path,
    roots: &mut [super::SelectedRoot],
    threads: usize,
) -> Result<(), ContextError> {
    let mut paths = Vec::new();
    let mut slots = Vec::new();
    for (ri, r) in roots.iter().enumerate() {
        for (ei, e) in r.entries.iter().enumerate() {
            if e.entry.kind == EntryKind::File && e.entry.digest.is_none() {
                let p = host_path(root, &e.entry.path);
                if e.entry.size == 0 && is_socket(&p) {
                    continue;
                }
                paths.push(p);
                slots.push((ri, ei));
            }
        }
    }
    for r in roots.iter_mut() {
        for e in r.entries.iter_mut() {
            if e.entry.kind == EntryKind::File && e.entry.digest.is_none() && e.entry.size == 0 {
                let p = host_path(root, &e.entry.path);
                if is_socket(&p) {
                    e.entry.digest = Some(Digest::sha256_of(b""));
                }
            }
        }
    }
    let hashed = hash_many(&paths, threads)?;
    for ((ri, ei), h) in slots.into_iter().zip(hashed) {
        let e = &mut roots[ri].entries[ei].entry;
        e.size = h.bytes;
        e.digest = Some(h.digest);
    }
    Ok(())
}
