//! Snapshots: one directory per layer, in overlayfs format, keyed by the
//! layer's diffID, plus the locked scratch directories the engine works in.
//!
//! ```text
//! snapshots/<first 16 hex of diffID>/fs       the layer's files (whiteout = char 0/0)
//! snapshots/<first 16 hex of diffID>/diffid   the full diffID
//! snapshots/<first 16 hex of diffID>/complete the full diffID again, written last
//! snapshots/empty                            an empty lower layer
//! trash/<unique>                             removed snapshots and scratch, being deleted
//! tmp/<unique>/.lock                         held (flock) by the live owner
//! mounts/<unique>/m                          mount points, same locking
//! ```
//!
//! A snapshot is built in a scratch directory and renamed into place in one
//! step, so a half-made snapshot never carries its final name; when two
//! processes make the same one, the first rename wins and the other copy is
//! thrown away. A snapshot is used only when its `complete` marker (written
//! and fsynced after everything else, before the rename) names its diffID;
//! anything else in a slot is debris and is moved aside.
//!
//! Removing is crash-atomic too: the marker is deleted first, then the
//! directory is renamed into `trash/` and deleted there; [`empty_trash`] at
//! the start of every command finishes what a killed process left. So a
//! kill -9 at any point of a removal leaves either a complete snapshot or
//! no snapshot under the slot's name, never a partial one.
//!
//! Scratch directories whose lock nobody holds are leftovers
//! of killed processes and are removed (after unmounting what is below them)
//! by [`cleanup_scratch`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fs2::FileExt;
use xbuild_oci::layer::{apply_layer, ApplyError, ApplyFormat, ApplyOptions};
use xbuild_oci::store::StoreError;
use xbuild_oci::{BlobStore, Descriptor, Digest};

use crate::mount::{mounts_under, unmount};

/// Errors of the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
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
    /// Extracting a layer blob failed.
    #[error("extracting layer {digest} into {path}: {source}")]
    Extract {
        /// The layer blob.
        digest: Digest,
        /// The scratch directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: ApplyError,
    },
    /// A layer blob is not in the content store.
    #[error("layer {0} is missing from the content store")]
    MissingBlob(Digest),
    /// A layer blob does not match its digest (it was quarantined).
    #[error("{0}")]
    CorruptBlob(StoreError),
    /// A layer's content does not match the diffID it is known by.
    #[error("layer {digest} has diffID {actual}, expected {expected}")]
    DiffIdMismatch {
        /// The layer blob.
        digest: Digest,
        /// The diffID the image config names.
        expected: Digest,
        /// What the content hashes to.
        actual: Digest,
    },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The marker a complete snapshot holds (its diffID), written last.
pub const COMPLETE: &str = "complete";

/// The diffID a slot holds when it is a complete snapshot.
pub fn slot_diff_id(slot: &Path) -> Option<String> {
    let id = fs::read_to_string(slot.join(COMPLETE)).ok()?;
    let id = id.trim();
    (id.starts_with("sha256:") || id.starts_with("sha512:")).then(|| id.to_string())
}

/// Removes a snapshot slot: the marker first (so a kill after this point
/// leaves an incomplete slot that is never used), then the rest through the
/// trash.
pub fn remove_slot(slot: &Path, trash: &Path) -> Result<(), SnapshotError> {
    match fs::remove_file(slot.join(COMPLETE)) {
        Ok(()) => fsync_dir(slot),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &slot.join(COMPLETE))(e)),
    }
    remove_atomically(slot, trash)
}

static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn unique_name() -> String {
    let n = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        % 1_000_000_000_000;
    format!("{}-{t}-{n}", std::process::id())
}

/// A private working directory, locked while it lives, removed on drop.
/// Mounts below it must be dropped first (their guards unmount).
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    lock: Option<File>,
}

impl Scratch {
    /// Creates a fresh directory under `parent`.
    pub fn new(parent: &Path) -> Result<Scratch, SnapshotError> {
        let dir = parent.join(unique_name());
        fs::create_dir(&dir).map_err(io_err("create directory", &dir))?;
        // The lock file is locked before it appears as `.lock`: another
        // process's `cleanup_scratch` must never find it unlocked (it would
        // take the lock itself, or remove the directory).
        let new_path = dir.join(".lock.new");
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&new_path)
            .map_err(io_err("create lock file", &new_path))?;
        lock.try_lock_exclusive()
            .map_err(io_err("lock", &new_path))?;
        fs::rename(&new_path, &lock_path).map_err(io_err("rename lock file", &lock_path))?;
        Ok(Scratch {
            dir,
            lock: Some(lock),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `self.path().join(name)`, created as a directory.
    pub fn subdir(&self, name: &str) -> Result<PathBuf, SnapshotError> {
        let p = self.dir.join(name);
        fs::create_dir(&p).map_err(io_err("create directory", &p))?;
        Ok(p)
    }

    /// Renames the directory to `dest` (minus its lock file). Returns false,
    /// leaving the scratch to be removed, when `dest` already exists.
    fn rename_to(&mut self, dest: &Path) -> Result<bool, SnapshotError> {
        let lock_path = self.dir.join(".lock");
        let _ = fs::remove_file(&lock_path);
        match fs::rename(&self.dir, dest) {
            Ok(()) => {
                self.lock = None;
                self.dir = PathBuf::new();
                Ok(true)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                Ok(false)
            }
            Err(e) => Err(io_err("rename snapshot into place", dest)(e)),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        remove_tree(&self.dir);
        drop(self.lock.take());
    }
}

/// Unmounts whatever is below `dir`, then removes it (unless something stays mounted).
fn remove_tree(dir: &Path) {
    for m in mounts_under(dir) {
        let _ = unmount(&m);
    }
    if mounts_under(dir).is_empty() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// The trash directory beside a snapshots (or scratch) directory: `<root>/trash`.
fn trash_of(dir: &Path) -> PathBuf {
    dir.parent().unwrap_or(dir).join("trash")
}

/// Removes `dir` crash-atomically: renames it into `trash` (on the same
/// filesystem) and deletes it there. After a kill at any point, `dir` is
/// either untouched or gone; what is in the trash is removed by
/// [`empty_trash`]. Mounts below `dir` are unmounted first.
pub fn remove_atomically(dir: &Path, trash: &Path) -> Result<(), SnapshotError> {
    for m in mounts_under(dir) {
        let _ = unmount(&m);
    }
    fs::create_dir_all(trash).map_err(io_err("create directory", trash))?;
    let dest = trash.join(unique_name());
    match fs::rename(dir, &dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("move into the trash", dir)(e)),
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(parent);
    }
    match fs::remove_dir_all(&dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &dest)(e)),
    }
}

/// Deletes whatever a killed process left in `trash` (nothing there is in
/// use: entries are only ever renamed in to be deleted). Returns how many
/// entries were removed.
pub fn empty_trash(trash: &Path) -> usize {
    let Ok(rd) = fs::read_dir(trash) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let p = e.path();
        for m in mounts_under(&p) {
            let _ = unmount(&m);
        }
        let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        if r.is_ok() {
            n += 1;
        }
    }
    n
}

fn fsync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes `name` in `dir` holding `text`, fsynced.
fn write_synced(dir: &Path, name: &str, text: &str) -> Result<(), SnapshotError> {
    use std::io::Write as _;
    let p = dir.join(name);
    let mut f = File::create(&p).map_err(io_err("write", &p))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err("write", &p))
}

/// Removes scratch directories under `parent` left by dead processes: those
/// whose lock is free (or that have none and are older than a minute).
pub fn cleanup_scratch(parent: &Path) -> Result<usize, SnapshotError> {
    let rd = match fs::read_dir(parent) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("read directory", parent)(e)),
    };
    let mut removed = 0;
    for ent in rd.flatten() {
        let dir = ent.path();
        let Ok(md) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !md.is_dir() {
            let _ = fs::remove_file(&dir);
            continue;
        }
        let lock_path = dir.join(".lock");
        match File::open(&lock_path) {
            Ok(f) => {
                if f.try_lock_exclusive().is_err() {
                    continue; // alive
                }
                remove_tree(&dir);
                removed += 1;
            }
            Err(_) => {
                let old = md
                    .modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .is_some_and(|a| a > Duration::from_secs(60));
                if old {
                    remove_tree(&dir);
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// The snapshot directory tree.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Snapshots {
    /// Opens `dir` (creating it and its empty layer), using `tmp` for
    /// scratch, and finishes removals a killed process left in the trash
    /// (`trash/` beside `dir`).
    pub fn open(dir: &Path, tmp: &Path) -> Result<Snapshots, SnapshotError> {
        let empty = dir.join("empty");
        fs::create_dir_all(&empty).map_err(io_err("create directory", &empty))?;
        empty_trash(&trash_of(dir));
        Ok(Snapshots {
            dir: dir.to_path_buf(),
            tmp: tmp.to_path_buf(),
        })
    }

    /// Where removed snapshots go before they are deleted.
    pub fn trash(&self) -> PathBuf {
        trash_of(&self.dir)
    }

    /// Removes the snapshot of `diff_id` (or any debris in its slot)
    /// crash-atomically: the completeness marker goes first, then the
    /// directory moves to the trash and is deleted there.
    pub fn remove(&self, diff_id: &Digest) -> Result<(), SnapshotError> {
        remove_slot(&self.slot(diff_id), &self.trash())
    }

    /// An always-empty directory, the bottom of every overlay stack.
    pub fn empty(&self) -> PathBuf {
        self.dir.join("empty")
    }

    fn slot(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join(&diff_id.hex()[..16])
    }

    /// The `fs` directory of the snapshot of `diff_id`, when present and
    /// complete (its `complete` marker names `diff_id`).
    pub fn get(&self, diff_id: &Digest) -> Option<PathBuf> {
        let slot = self.slot(diff_id);
        (slot_diff_id(&slot)?.as_str() == diff_id.as_str()).then(|| slot.join("fs"))
    }

    /// A scratch directory with `fs` (upper) and `work` subdirectories.
    pub fn scratch(&self) -> Result<Scratch, SnapshotError> {
        let s = Scratch::new(&self.tmp)?;
        s.subdir("fs")?;
        s.subdir("work")?;
        Ok(s)
    }

    /// Makes `scratch/fs` the snapshot of `diff_id` and returns its final
    /// `fs` path (an existing identical snapshot wins).
    pub fn commit(&self, mut scratch: Scratch, diff_id: &Digest) -> Result<PathBuf, SnapshotError> {
        if let Some(p) = self.get(diff_id) {
            return Ok(p);
        }
        let work = scratch.path().join("work");
        if work.exists() {
            fs::remove_dir_all(&work).map_err(io_err("remove", &work))?;
        }
        write_synced(scratch.path(), "diffid", &format!("{diff_id}\n"))?;
        // Written last: a snapshot without it is never used.
        write_synced(scratch.path(), COMPLETE, &format!("{diff_id}\n"))?;
        fsync_dir(scratch.path());
        let slot = self.slot(diff_id);
        for _ in 0..3 {
            if scratch.rename_to(&slot)? {
                fsync_dir(&self.dir);
                return Ok(slot.join("fs"));
            }
            if let Some(p) = self.get(diff_id) {
                return Ok(p);
            }
            if slot_diff_id(&slot).is_some() {
                break; // a complete snapshot of another layer with the same prefix
            }
            // Debris of a killed process (no marker): move it aside, retry.
            remove_slot(&slot, &self.trash())?;
        }
        Err(SnapshotError::Io {
            op: "commit snapshot (slot taken by another layer)",
            path: slot,
            source: io::Error::from_raw_os_error(libc::EEXIST),
        })
    }

    /// The snapshot of a stored layer, extracting the blob when missing.
    pub fn ensure(
        &self,
        store: &BlobStore,
        layer: &Descriptor,
        diff_id: &Digest,
    ) -> Result<PathBuf, SnapshotError> {
        if let Some(p) = self.get(diff_id) {
            return Ok(p);
        }
        // The blob is checked against its digest as it is unpacked: a
        // corrupt one (flipped bytes, truncated) is quarantined and
        // reported as such, so the caller can fetch it again.
        let mut f = store
            .open_verified(&layer.digest, Some(layer.size))
            .map_err(|e| match e {
                StoreError::NotFound(_) => SnapshotError::MissingBlob(layer.digest.clone()),
                other => SnapshotError::CorruptBlob(other),
            })?;
        let scratch = Scratch::new(&self.tmp)?;
        let fs_dir = scratch.subdir("fs")?;
        let opts = ApplyOptions {
            format: ApplyFormat::Overlay,
            ..Default::default()
        };
        let applied = apply_layer(BufReader::with_capacity(256 * 1024, &mut f), &fs_dir, &opts);
        f.finish().map_err(SnapshotError::CorruptBlob)?;
        let stats = applied.map_err(|source| SnapshotError::Extract {
            digest: layer.digest.clone(),
            path: fs_dir.clone(),
            source,
        })?;
        if stats.diff_id != *diff_id {
            return Err(SnapshotError::DiffIdMismatch {
                digest: layer.digest.clone(),
                expected: diff_id.clone(),
                actual: stats.diff_id,
            });
        }
        self.commit(scratch, diff_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot left half-deleted or half-made by a killed process (files,
    /// the `diffid` file, no `complete` marker) is never used, and a commit
    /// of the same layer replaces it instead of failing with "slot taken".
    #[test]
    fn an_incomplete_slot_is_never_used_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let snaps =
            Snapshots::open(&dir.path().join("snapshots"), &dir.path().join("tmp")).unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let id = Digest::sha256_of(b"layer");
        // What an in-place removal killed halfway leaves.
        let slot = snaps.slot(&id);
        fs::create_dir_all(slot.join("fs/many")).unwrap();
        fs::write(slot.join("fs/many/1"), b"x").unwrap();
        fs::write(slot.join("diffid"), format!("{id}\n")).unwrap();
        assert_eq!(snaps.get(&id), None, "a slot without its marker was used");
        let s = snaps.scratch().unwrap();
        fs::create_dir_all(s.path().join("fs/many")).unwrap();
        for i in 0..5 {
            fs::write(s.path().join(format!("fs/many/{i}")), b"x").unwrap();
        }
        let fs_dir = snaps.commit(s, &id).unwrap();
        assert_eq!(fs::read_dir(fs_dir.join("many")).unwrap().count(), 5);
        assert_eq!(snaps.get(&id), Some(fs_dir));
        // Removal goes through the trash and leaves nothing behind.
        snaps.remove(&id).unwrap();
        assert!(!slot.exists());
        assert_eq!(fs::read_dir(snaps.trash()).unwrap().count(), 0);
    }

    /// Whatever a killed removal left in the trash is deleted when the
    /// snapshots are next opened.
    #[test]
    fn the_trash_is_emptied_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let trash = dir.path().join("trash");
        fs::create_dir_all(trash.join("x/fs/a")).unwrap();
        fs::write(trash.join("x/fs/a/f"), b"1").unwrap();
        Snapshots::open(&dir.path().join("snapshots"), &dir.path().join("tmp")).unwrap();
        assert_eq!(fs::read_dir(&trash).unwrap().count(), 0);
    }

    /// Another process cleaning up while this one creates scratch
    /// directories never takes a live scratch's lock or removes it.
    #[test]
    fn cleanup_never_races_a_scratch_being_created() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().to_path_buf();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cleaner = {
            let (parent, stop) = (parent.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    cleanup_scratch(&parent).unwrap();
                }
            })
        };
        for _ in 0..600 {
            // Before the fix: "lock: Resource temporarily unavailable", or
            // the directory gone under its owner.
            let s = Scratch::new(&parent).unwrap();
            let x = s.subdir("x").unwrap();
            std::fs::write(x.join("f"), b"data").unwrap();
            assert!(x.join("f").is_file(), "a live scratch was removed");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        cleaner.join().unwrap();
    }
}
