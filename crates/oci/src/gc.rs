//! Garbage collection of the blob store: delete every blob that no root
//! reaches.
//!
//! Roots are the targets of all of the store's references plus the digests
//! the caller names (the build cache's records, say). From a root that is a
//! manifest the config and the layers are reached; from an index, its
//! manifests (and their blobs); a root that is neither (a layer, a config) is
//! kept by itself. The walk is lenient: a missing child or an unparsable
//! document just ends that branch, so a broken image never makes GC delete
//! what a healthy one needs, nor fail.

use crate::digest::Digest;
use crate::manifest::Manifest;
use crate::store::{BlobStore, StoreError, StoreLock, DEFAULT_STALE_AGE};
use std::collections::BTreeSet;
use std::io::Read;

/// JSON documents larger than this are never parsed as manifests by GC.
const MAX_DOC: u64 = 8 * 1024 * 1024;

/// Errors from garbage collection.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Blobs deleted.
    pub blobs_removed: u64,
    /// Bytes deleted.
    pub bytes_removed: u64,
    /// Blobs kept (reachable).
    pub blobs_kept: u64,
    /// Bytes kept.
    pub bytes_kept: u64,
    /// Stale temp files removed.
    pub temp_removed: u64,
    /// Digests of the deleted blobs, sorted.
    pub removed: Vec<Digest>,
}

/// Take the store's exclusive lock and collect; see [`gc_locked`].
pub fn gc(store: &BlobStore, roots: &[Digest]) -> Result<GcStats, GcError> {
    let lock = store.exclusive_lock()?;
    gc_locked(store, &lock, roots)
}

/// Collect while the caller holds `lock`, the store's exclusive lock (so it
/// can compute extra roots under the same lock). Deletes every blob not
/// reachable from the store's references and `roots`, and stale temp files.
pub fn gc_locked(
    store: &BlobStore,
    _lock: &StoreLock,
    roots: &[Digest],
) -> Result<GcStats, GcError> {
    let mut all_roots: Vec<Digest> = roots.to_vec();
    all_roots.extend(store.list_refs()?.into_iter().map(|(_, d)| d));
    let live = reachable(store, &all_roots)?;
    let mut stats = GcStats::default();
    for (d, size) in store.list()? {
        if live.contains(&d) {
            stats.blobs_kept += 1;
            stats.bytes_kept += size;
        } else if store.delete(&d)? {
            stats.blobs_removed += 1;
            stats.bytes_removed += size;
            stats.removed.push(d);
        }
    }
    stats.temp_removed = store.cleanup_temp(DEFAULT_STALE_AGE)? as u64;
    Ok(stats)
}

/// Every digest reachable from `roots` (present or not).
pub fn reachable(store: &BlobStore, roots: &[Digest]) -> Result<BTreeSet<Digest>, GcError> {
    let mut live = BTreeSet::new();
    let mut stack: Vec<Digest> = roots.to_vec();
    while let Some(d) = stack.pop() {
        if !live.insert(d.clone()) {
            continue;
        }
        let Some(doc) = read_doc(store, &d)? else {
            continue;
        };
        match Manifest::parse(&doc, None) {
            Ok(Manifest::Image(m)) => {
                // Config and layers are leaves: never parsed.
                live.insert(m.config.digest);
                live.extend(m.layers.into_iter().map(|l| l.digest));
            }
            Ok(Manifest::Index(i)) => {
                stack.extend(i.manifests.into_iter().map(|c| c.digest));
            }
            Err(_) => {}
        }
    }
    Ok(live)
}

/// The bytes of a blob that may be a JSON document: present, small, and
/// starting with `{`.
fn read_doc(store: &BlobStore, d: &Digest) -> Result<Option<Vec<u8>>, GcError> {
    let size = match store.size_of(d) {
        Ok(s) => s,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if size > MAX_DOC || size == 0 {
        return Ok(None);
    }
    let mut f = match store.open_blob(d) {
        Ok(f) => f,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut first = [0u8; 1];
    loop {
        match f.read(&mut first) {
            Ok(0) => return Ok(None),
            Ok(_) if first[0].is_ascii_whitespace() => continue,
            Ok(_) => break,
            Err(e) => {
                return Err(StoreError::Io {
                    op: "read",
                    path: store.path_of(d),
                    source: e,
                }
                .into())
            }
        }
    }
    if first[0] != b'{' {
        return Ok(None);
    }
    let mut v = vec![b'{'];
    f.read_to_end(&mut v).map_err(|e| StoreError::Io {
        op: "read",
        path: store.path_of(d),
        source: e,
    })?;
    Ok(Some(v))
}
