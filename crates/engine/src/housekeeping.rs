//! Build-cache housekeeping: the lock that keeps `xbuild cache prune` away
//! from running builds, disk usage by platform and kind (`xbuild cache du`)
//! and pruning (`xbuild cache prune`).
//!
//! Every [`crate::Engine`] holds a shared lock on `build.lock` in the state
//! directory for as long as it lives; pruning takes it exclusively, so it
//! waits for running builds and builds wait for it. Nothing a running build
//! holds is ever removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fs2::FileExt;
use xbuild_oci::manifest::Manifest;
use xbuild_oci::{BlobStore, Digest};

use crate::cache::CacheRecord;

/// Errors of housekeeping; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum HousekeepingError {
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
    /// The content store failed.
    #[error("content store: {0}")]
    Store(#[from] xbuild_oci::store::StoreError),
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> HousekeepingError + 'a {
    move |source| HousekeepingError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A held lock on `root/build.lock`, released on drop.
#[derive(Debug)]
pub struct BuildLock {
    _file: fs::File,
}

fn lock_file(root: &Path) -> Result<fs::File, HousekeepingError> {
    fs::create_dir_all(root).map_err(io_err("create directory", root))?;
    let path = root.join("build.lock");
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))
}

/// The shared lock a build holds while it runs.
pub fn lock_shared(root: &Path) -> Result<BuildLock, HousekeepingError> {
    let f = lock_file(root)?;
    f.lock_shared()
        .map_err(io_err("lock (shared)", &root.join("build.lock")))?;
    Ok(BuildLock { _file: f })
}

/// The exclusive lock pruning holds. When builds hold the lock, `waiting`
/// is called once before blocking until they finish.
pub fn lock_exclusive(root: &Path, waiting: impl FnOnce()) -> Result<BuildLock, HousekeepingError> {
    let f = lock_file(root)?;
    if f.try_lock_exclusive().is_err() {
        waiting();
        f.lock_exclusive()
            .map_err(io_err("lock (exclusive)", &root.join("build.lock")))?;
    }
    Ok(BuildLock { _file: f })
}

/// What a usage row counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Cache records and the layer blobs only they keep alive.
    Records,
    /// `RUN --mount=type=cache` directories.
    CacheMounts,
    /// Unpacked layers (shared by all platforms; rebuilt from blobs on demand).
    Snapshots,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Records => "records",
            Kind::CacheMounts => "cache mounts",
            Kind::Snapshots => "snapshots",
        })
    }
}

/// One line of `xbuild cache du`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// The platform (`linux/arm64`), or `-` for snapshots.
    pub platform: String,
    /// What is counted.
    pub kind: Kind,
    /// Number of records, cache mount directories or snapshots.
    pub entries: usize,
    /// Bytes on disk: for records, the layer blobs they reference (each
    /// counted once per platform); for directories, allocated blocks.
    pub bytes: u64,
}

struct RecordFile {
    path: PathBuf,
    rec: CacheRecord,
    /// When a build last used the record: its file's mtime, which a cache
    /// hit renews ([`CacheStore::touch`](crate::cache::CacheStore::touch)).
    last_used: SystemTime,
}

fn read_records(cache_dir: &Path) -> Result<Vec<RecordFile>, HousekeepingError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(cache_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("read directory", cache_dir)(e)),
    };
    for pd in rd.flatten() {
        let dir = pd.path();
        let Ok(files) = fs::read_dir(&dir) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(bytes) = fs::read(&path) else {
                continue;
            };
            let last_used = f
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            if let Some(rec) = crate::cache::decode_record(&bytes) {
                out.push(RecordFile {
                    path,
                    rec,
                    last_used,
                });
            }
        }
    }
    Ok(out)
}

/// Allocated size and number of top-level entries of a directory tree
/// (symlinks are not followed).
fn dir_usage(dir: &Path) -> (usize, u64) {
    let mut bytes = 0u64;
    let top = fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            bytes += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (top, bytes)
}

/// Disk usage of the build cache under `root`, by platform and kind.
pub fn usage(root: &Path, store: &BlobStore) -> Result<Vec<UsageRow>, HousekeepingError> {
    let mut per: BTreeMap<String, (usize, BTreeSet<Digest>)> = BTreeMap::new();
    for r in read_records(&root.join("cache"))? {
        let e = per.entry(r.rec.platform.clone()).or_default();
        e.0 += 1;
        if let Some(l) = r.rec.layer {
            e.1.insert(l.digest);
        }
    }
    let mut rows = Vec::new();
    for (platform, (n, blobs)) in per {
        let bytes = blobs.iter().filter_map(|d| store.size_of(d).ok()).sum();
        rows.push(UsageRow {
            platform,
            kind: Kind::Records,
            entries: n,
            bytes,
        });
    }
    if let Ok(rd) = fs::read_dir(root.join("cachemounts")) {
        for pd in rd.flatten() {
            if !pd.path().is_dir() {
                continue;
            }
            let (n, bytes) = dir_usage(&pd.path());
            rows.push(UsageRow {
                platform: pd.file_name().to_string_lossy().replacen('-', "/", 2),
                kind: Kind::CacheMounts,
                entries: n,
                bytes,
            });
        }
    }
    let snaps = root.join("snapshots");
    let (n, bytes) = dir_usage(&snaps);
    let n = n.saturating_sub(usize::from(snaps.join("empty").exists()));
    rows.push(UsageRow {
        platform: "-".into(),
        kind: Kind::Snapshots,
        entries: n,
        bytes,
    });
    rows.sort_by(|a, b| (&a.platform, a.kind).cmp(&(&b.platform, b.kind)));
    Ok(rows)
}

/// What `xbuild cache prune` removes.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Every record, cache mount and snapshot, not only the unused ones.
    pub all: bool,
    /// Only entries no build has used for this long (records: since the
    /// last cache hit or since they were written).
    pub until: Option<Duration>,
    /// Stop once the cache (records' blobs + cache mounts + snapshots) is at
    /// most this many bytes; least recently used records go first.
    pub keep_storage: Option<u64>,
}

/// What pruning removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Cache records removed.
    pub records: usize,
    /// Cache mount directories removed.
    pub cache_mounts: usize,
    /// Snapshots removed.
    pub snapshots: usize,
}

/// Layers and diffIDs of every tagged image in the store.
fn image_content(store: &BlobStore) -> (BTreeSet<Digest>, BTreeSet<String>) {
    let mut layers = BTreeSet::new();
    let mut diff_ids = BTreeSet::new();
    let mut stack: Vec<Digest> = store
        .list_refs()
        .unwrap_or_default()
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(d) = stack.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        let Ok(bytes) = store.read_to_vec(&d) else {
            continue;
        };
        match Manifest::parse(&bytes, None) {
            Ok(Manifest::Index(i)) => stack.extend(i.manifests.into_iter().map(|m| m.digest)),
            Ok(Manifest::Image(m)) => {
                layers.extend(m.layers.iter().map(|l| l.digest.clone()));
                if let Ok(c) = crate::image::read_config(store, &m.config.digest) {
                    diff_ids.extend(c.rootfs.diff_ids.iter().map(|d| d.to_string()));
                }
            }
            Err(_) => {}
        }
    }
    (layers, diff_ids)
}

/// What [`check`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Blobs verified.
    pub blobs: usize,
    /// Blobs that did not match their digest (now quarantined), with sizes.
    pub corrupt: Vec<(Digest, u64)>,
    /// Incomplete snapshots removed.
    pub snapshots_removed: usize,
    /// Damaged cache records removed.
    pub records_removed: usize,
}

/// Verifies the state under `root`: every blob of `store` against its
/// digest (a corrupt one is quarantined), every snapshot's completeness
/// marker (an incomplete snapshot is removed), every cache record's
/// checksum (a damaged one is removed). The caller holds [`lock_exclusive`].
pub fn check(
    root: &Path,
    store: &BlobStore,
    _lock: &BuildLock,
) -> Result<CheckReport, HousekeepingError> {
    let mut report = CheckReport::default();
    cleanup_leftovers(root);
    for (d, size) in store.list()? {
        report.blobs += 1;
        match store.check(&d) {
            Ok(()) => {}
            Err(xbuild_oci::store::StoreError::Corrupt { .. }) => report.corrupt.push((d, size)),
            Err(xbuild_oci::store::StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let snaps = root.join("snapshots");
    if let Ok(rd) = fs::read_dir(&snaps) {
        for e in rd.flatten() {
            if e.file_name() == "empty" || !e.path().is_dir() {
                continue;
            }
            if crate::snapshot::slot_diff_id(&e.path()).is_none() {
                crate::snapshot::remove_slot(&e.path(), &root.join("trash"))
                    .map_err(snap_err(&e.path()))?;
                report.snapshots_removed += 1;
            }
        }
    }
    if let Ok(rd) = fs::read_dir(root.join("cache")) {
        for pd in rd.flatten() {
            let Ok(files) = fs::read_dir(pd.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let damaged = fs::read(&path)
                    .map(|b| crate::cache::decode_record(&b).is_none())
                    .unwrap_or(false);
                if damaged {
                    match fs::remove_file(&path) {
                        Ok(()) => report.records_removed += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err("remove cache record", &path)(e)),
                    }
                }
            }
        }
    }
    Ok(report)
}

/// Not used for at least `until` (every record without a filter).
fn unused_for(r: &RecordFile, until: Option<Duration>) -> bool {
    let Some(age) = until else {
        return true;
    };
    SystemTime::now()
        .duration_since(r.last_used)
        .is_ok_and(|idle| idle >= age)
}

/// Removes a directory crash-atomically, through `root/trash`.
fn remove_tree(root: &Path, p: &Path) -> Result<(), HousekeepingError> {
    crate::snapshot::remove_atomically(p, &root.join("trash")).map_err(snap_err(p))
}

fn snap_err(p: &Path) -> impl FnOnce(crate::snapshot::SnapshotError) -> HousekeepingError + '_ {
    move |e| HousekeepingError::Io {
        op: "remove",
        path: p.to_path_buf(),
        source: io::Error::other(e.to_string()),
    }
}

/// Finishes what killed processes left behind under `root`: removals
/// interrupted in `trash/`, scratch directories and mounts under `tmp/` and
/// `mounts/` whose owner is dead (live ones are locked and kept). Returns
/// how many entries were removed.
pub fn cleanup_leftovers(root: &Path) -> usize {
    let mut n = crate::snapshot::empty_trash(&root.join("trash"));
    for d in ["mounts", "tmp"] {
        n += crate::snapshot::cleanup_scratch(&root.join(d)).unwrap_or(0);
    }
    n
}

/// Prune the build cache under `root`. The caller holds
/// [`lock_exclusive`], and collects the store's garbage afterwards (blobs
/// only the removed records referenced).
///
/// Without `all`: records whose layer no tagged image uses, or whose blob is
/// gone, and metadata-only records; cache mounts stay. With `all`: every
/// record and cache mount. `until` limits both to older entries;
/// `keep_storage` removes oldest first and stops at the size. Snapshots no
/// remaining record or tagged image needs are removed in every mode.
pub fn prune(
    root: &Path,
    store: &BlobStore,
    opts: &PruneOptions,
    _lock: &BuildLock,
) -> Result<PruneReport, HousekeepingError> {
    let mut report = PruneReport::default();
    cleanup_leftovers(root);
    let (image_layers, image_diff_ids) = image_content(store);
    let mut records = read_records(&root.join("cache"))?;
    // Least recently used first: what --keep-storage removes first.
    records.sort_by_key(|r| r.last_used);

    let blob_bytes = |records: &[&RecordFile]| -> u64 {
        let blobs: BTreeSet<&Digest> = records
            .iter()
            .filter_map(|r| r.rec.layer.as_ref().map(|l| &l.digest))
            .collect();
        blobs.iter().filter_map(|d| store.size_of(d).ok()).sum()
    };

    // A record is in use when a tagged image has its layer, when a record
    // after it is in use (its ancestors are needed to reach it), or when it
    // is a metadata step right after one in use (dropping it would change
    // the rebuilt image's digest).
    let by_key: BTreeMap<&Digest, &RecordFile> = records.iter().map(|r| (&r.rec.key, r)).collect();
    let mut used: BTreeSet<Digest> = BTreeSet::new();
    for r in &records {
        if let Some(l) = &r.rec.layer {
            if store.exists(&l.digest) && image_layers.contains(&l.digest) {
                let mut cur: Option<&RecordFile> = Some(r);
                while let Some(c) = cur {
                    if !used.insert(c.rec.key.clone()) {
                        break;
                    }
                    cur = c.rec.parent.as_ref().and_then(|p| by_key.get(p).copied());
                }
            }
        }
    }
    loop {
        let more: Vec<Digest> = records
            .iter()
            .filter(|r| {
                r.rec.layer.is_none()
                    && !used.contains(&r.rec.key)
                    && r.rec.parent.as_ref().is_some_and(|p| used.contains(p))
            })
            .map(|r| r.rec.key.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        used.extend(more);
    }
    drop(by_key);

    let mut keep = Vec::new();
    let mut candidates = Vec::new();
    for r in records {
        let unused = !used.contains(&r.rec.key);
        if (opts.all || unused) && unused_for(&r, opts.until) {
            candidates.push(r);
        } else {
            keep.push(r);
        }
    }
    if let Some(limit) = opts.keep_storage {
        // Remove the least recently used candidates until the cache fits.
        let dirs = dir_usage(&root.join("cachemounts")).1 + dir_usage(&root.join("snapshots")).1;
        let mut queue: std::collections::VecDeque<RecordFile> = candidates.into();
        let mut removing = Vec::new();
        loop {
            let all: Vec<&RecordFile> = keep.iter().chain(queue.iter()).collect();
            if blob_bytes(&all) + dirs <= limit {
                break;
            }
            match queue.pop_front() {
                Some(r) => removing.push(r),
                None => break,
            }
        }
        keep.extend(queue);
        candidates = removing;
    }
    for r in &candidates {
        match fs::remove_file(&r.path) {
            Ok(()) => report.records += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove cache record", &r.path)(e)),
        }
    }
    // What explained the removed records' misses goes with them.
    if let Ok(cache) = crate::cache::CacheStore::open(&root.join("cache")) {
        let _ = cache.gc_indexes();
    }
    if opts.all {
        if let Ok(rd) = fs::read_dir(root.join("cachemounts")) {
            for pd in rd.flatten() {
                let old = opts.until.is_none_or(|age| {
                    pd.metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| SystemTime::now().duration_since(m).ok())
                        .is_some_and(|a| a > age)
                });
                if pd.path().is_dir() && old {
                    report.cache_mounts += fs::read_dir(pd.path()).map(|r| r.count()).unwrap_or(0);
                    remove_tree(root, &pd.path())?;
                }
            }
        }
    }
    // Snapshots: keep those a remaining record or a tagged image needs.
    let mut needed: BTreeSet<String> = image_diff_ids;
    needed.extend(
        keep.iter()
            .filter_map(|r| r.rec.diff_id.as_ref().map(|d| d.to_string())),
    );
    let snaps = root.join("snapshots");
    if let Ok(rd) = fs::read_dir(&snaps) {
        for e in rd.flatten() {
            if e.file_name() == "empty" || !e.path().is_dir() {
                continue;
            }
            // Incomplete slots (a kill during a removal or a commit) are
            // debris: never used, removed here.
            let id = crate::snapshot::slot_diff_id(&e.path());
            if opts.all || id.as_ref().is_none_or(|id| !needed.contains(id)) {
                crate::snapshot::remove_slot(&e.path(), &root.join("trash"))
                    .map_err(snap_err(&e.path()))?;
                report.snapshots += 1;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_waits_for_shared() {
        let dir = tempfile::tempdir().unwrap();
        let shared = lock_shared(dir.path()).unwrap();
        let root = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let mut waited = false;
            let _l = lock_exclusive(&root, || waited = true).unwrap();
            tx.send(waited).unwrap();
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "prune must wait for the build");
        drop(shared);
        assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        t.join().unwrap();
    }

    #[test]
    fn usage_of_an_empty_root_has_only_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("content")).unwrap();
        let rows = usage(dir.path(), &store).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kind, Kind::Snapshots);
        assert_eq!(rows[0].entries, 0);
    }

    #[test]
    fn until_goes_by_last_use_and_a_hit_renews_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = BlobStore::open(root.join("content")).unwrap();
        let cache = crate::cache::CacheStore::open(&root.join("cache")).unwrap();
        let p = xbuild_oci::Platform::parse("linux/amd64").unwrap();
        let rec = |text: &str| CacheRecord {
            key: Digest::sha256_of(text.as_bytes()),
            parent: None,
            platform: p.to_string(),
            text: text.into(),
            layer: None,
            diff_id: None,
            // Both written long ago: creation time must not decide.
            created: "2020-01-01T00:00:00Z".into(),
            trace: None,
        };
        let (old, hit) = (rec("ENV A=1"), rec("ENV B=2"));
        for r in [&old, &hit] {
            cache.put(&p, r).unwrap();
            // The record's file, wherever the cache keeps the platform.
            let name = format!("{}.json", r.key.hex());
            let path = fs::read_dir(root.join("cache"))
                .unwrap()
                .flatten()
                .map(|e| e.path().join(&name))
                .find(|f| f.exists())
                .expect("the record's file");
            let f = fs::OpenOptions::new().write(true).open(path).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(3 * 86400))
                .unwrap();
        }
        // A build hits `hit` today.
        cache.touch(&p, &hit.key);
        let lock = lock_exclusive(root, || {}).unwrap();
        let report = prune(
            root,
            &store,
            &PruneOptions {
                all: true,
                until: Some(Duration::from_secs(86400)),
                keep_storage: None,
            },
            &lock,
        )
        .unwrap();
        assert_eq!(report.records, 1);
        assert!(cache.get_raw(&p, &old.key).is_none(), "unused for 3 days");
        assert!(cache.get_raw(&p, &hit.key).is_some(), "used today");
    }
}
