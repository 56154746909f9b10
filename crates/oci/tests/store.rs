//! Blob store behaviour: atomic ingest, verification, concurrency, crash
//! leftovers, references.

use std::fs;
use std::io::{self, Read, Write};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};
use xbuild_oci::digest::Algorithm;
use xbuild_oci::store::{BlobStore, StoreError};
use xbuild_oci::Digest;

fn tmp_entries(s: &BlobStore) -> Vec<String> {
    fs::read_dir(s.root().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A reader that hands out data in small chunks, yielding between them so
/// that concurrent ingests interleave.
struct Slow<'a> {
    data: &'a [u8],
}

impl Read for Slow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.len().min(buf.len()).min(64 * 1024);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        std::thread::yield_now();
        Ok(n)
    }
}

#[test]
fn put_get_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    let s = BlobStore::open(dir.path()).unwrap();
    let d = s.put_bytes(b"hello").unwrap();
    assert_eq!(d, Digest::sha256_of(b"hello"));
    assert!(s.exists(&d));
    assert_eq!(s.size_of(&d).unwrap(), 5);
    assert_eq!(s.read_to_vec(&d).unwrap(), b"hello");
    assert_eq!(s.path_of(&d), dir.path().join("blobs/sha256").join(d.hex()));
    let mut buf = String::new();
    s.open_blob(&d).unwrap().read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "hello");
    // Idempotent.
    assert_eq!(s.put_bytes(b"hello").unwrap(), d);
    let d2 = s.put_bytes(b"world!").unwrap();
    assert_eq!(s.list().unwrap().len(), 2);
    assert_eq!(s.total_size().unwrap(), 11);
    assert!(s.verify(&d2).unwrap());
    assert!(s.delete(&d).unwrap());
    assert!(!s.delete(&d).unwrap());
    assert!(matches!(s.size_of(&d), Err(StoreError::NotFound(_))));
    assert!(matches!(s.read_to_vec(&d), Err(StoreError::NotFound(_))));
    assert!(tmp_entries(&s).is_empty());
}

#[test]
fn ingest_verifies_digest_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let s = BlobStore::open(dir.path()).unwrap();
    let wrong = Digest::sha256_of(b"something else");
    let e = s.ingest(&b"content"[..], Some(&wrong), None).unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    let e = s.ingest(&b"content"[..], None, Some(3)).unwrap_err();
    assert!(matches!(e, StoreError::SizeMismatch { .. }), "{e}");
    let e = s.ingest(&b"content"[..], None, Some(100)).unwrap_err();
    assert!(
        matches!(e, StoreError::SizeMismatch { actual: 7, .. }),
        "{e}"
    );
    assert!(s.list().unwrap().is_empty());
    assert!(tmp_entries(&s).is_empty(), "{:?}", tmp_entries(&s));
    let (d, n) = s.ingest(&b"content"[..], None, Some(7)).unwrap();
    assert_eq!((d, n), (Digest::sha256_of(b"content"), 7));
    // sha512 expected digests are honoured.
    let d512 = Digest::sha512_of(b"content");
    let (got, _) = s.ingest(&b"content"[..], Some(&d512), None).unwrap();
    assert_eq!(got, d512);
    assert!(s
        .path_of(&d512)
        .starts_with(dir.path().join("blobs/sha512")));
    assert!(s.verify(&d512).unwrap());
}

#[test]
fn writer_commit_and_abort() {
    let dir = tempfile::tempdir().unwrap();
    let s = BlobStore::open(dir.path()).unwrap();
    let mut w = s.writer(Algorithm::Sha256).unwrap();
    w.write_all(b"abc").unwrap();
    assert_eq!(tmp_entries(&s).len(), 1);
    drop(w);
    assert!(tmp_entries(&s).is_empty(), "aborted writer leaves nothing");
    let mut w = s.writer(Algorithm::Sha256).unwrap();
    w.write_all(b"abc").unwrap();
    let (d, n) = w.commit(None).unwrap();
    assert_eq!((d.clone(), n), (Digest::sha256_of(b"abc"), 3));
    assert!(s.exists(&d));
}

#[test]
fn two_ingests_of_the_same_blob_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let data: Arc<Vec<u8>> = Arc::new((0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect());
    let want = Digest::sha256_of(&data);
    for round in 0..3 {
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                // Separate store instances: separate lock file descriptions,
                // as two processes would have.
                let s = BlobStore::open(dir.path()).unwrap();
                let data = Arc::clone(&data);
                let barrier = Arc::clone(&barrier);
                let want = want.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let expected = if round == 0 { None } else { Some(&want) };
                    s.ingest(Slow { data: &data }, expected, Some(data.len() as u64))
                })
            })
            .collect();
        for h in handles {
            let (d, n) = h.join().unwrap().unwrap();
            assert_eq!(d, want);
            assert_eq!(n, data.len() as u64);
        }
        let s = BlobStore::open(dir.path()).unwrap();
        assert!(s.verify(&want).unwrap());
        assert!(tmp_entries(&s).is_empty());
        if round < 2 {
            s.delete(&want).unwrap();
        }
    }
}

#[test]
fn crash_leftovers_are_cleaned_but_live_writers_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = BlobStore::open(dir.path()).unwrap();
    // A process killed mid-ingest leaves a temp file (and never a blob).
    let stale = dir.path().join("tmp/ingest-99999-1-0");
    fs::write(&stale, b"partial blob conte").unwrap();
    let old = SystemTime::now() - Duration::from_secs(3 * 3600);
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    // A live writer in another "process".
    let mut live = s.writer(Algorithm::Sha256).unwrap();
    live.write_all(b"in progress").unwrap();
    live.flush().unwrap();
    assert_eq!(tmp_entries(&s).len(), 2);

    let reopened = BlobStore::open(dir.path()).unwrap();
    assert!(!stale.exists(), "stale temp file removed at open");
    assert!(
        reopened.list().unwrap().is_empty(),
        "no partial blob under a digest name"
    );
    // Even with age 0 a locked temp file survives.
    assert_eq!(reopened.cleanup_temp(Duration::ZERO).unwrap(), 0);
    assert_eq!(tmp_entries(&s).len(), 1);
    let (d, _) = live.commit(None).unwrap();
    assert_eq!(reopened.read_to_vec(&d).unwrap(), b"in progress");
    assert!(tmp_entries(&s).is_empty());
}

#[test]
fn exclusive_lock_holds_off_writers() {
    let dir = tempfile::tempdir().unwrap();
    let s = BlobStore::open(dir.path()).unwrap();
    let gc = s.exclusive_lock().unwrap();
    let s2 = BlobStore::open(dir.path()).unwrap();
    let t = std::thread::spawn(move || s2.put_bytes(b"late").unwrap());
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !s.exists(&Digest::sha256_of(b"late")),
        "ingest waited for GC"
    );
    drop(gc);
    let d = t.join().unwrap();
    assert!(s.exists(&d));
}

#[test]
fn refs() {
    let dir = tempfile::tempdir().unwrap();
    let s = BlobStore::open(dir.path()).unwrap();
    let a = Digest::sha256_of(b"a");
    let b = Digest::sha256_of(b"b");
    let names = [
        "docker.io/library/alpine:3.19",
        "localhost:5000/x/y@sha256:00",
        "..",
        "plain",
    ];
    for n in names {
        assert_eq!(s.get_ref(n).unwrap(), None);
        s.set_ref(n, &a).unwrap();
        assert_eq!(s.get_ref(n).unwrap(), Some(a.clone()));
    }
    s.set_ref("plain", &b).unwrap();
    assert_eq!(s.get_ref("plain").unwrap(), Some(b.clone()));
    let listed = s.list_refs().unwrap();
    assert_eq!(listed.len(), 4);
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort();
    assert_eq!(
        listed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        sorted
    );
    // Everything lives flat under refs/.
    for e in fs::read_dir(dir.path().join("refs")).unwrap() {
        assert!(e.unwrap().file_type().unwrap().is_file());
    }
    assert!(s.delete_ref("..").unwrap());
    assert!(!s.delete_ref("..").unwrap());
    assert_eq!(s.list_refs().unwrap().len(), 3);
    assert!(matches!(
        s.set_ref("", &a),
        Err(StoreError::InvalidRefName(_))
    ));
    fs::write(dir.path().join("refs/broken"), b"nope").unwrap();
    assert!(matches!(
        s.get_ref("broken"),
        Err(StoreError::CorruptRef { .. })
    ));
    assert!(tmp_entries(&s).is_empty());
}
