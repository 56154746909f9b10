//! Build-context scanning, the hash cache and COPY checksums.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};
use xbuild_engine::context::{
    checksum, checksum_dir, scan, ContextError, EntryKind, HashCache, ScanOptions,
};

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn paths(idx: &xbuild_engine::context::ContextIndex) -> Vec<&str> {
    idx.entries.iter().map(|e| e.path.as_str()).collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn dockerignore_exceptions_doublestar_and_symlinks() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(r, "Dockerfile", "FROM scratch\n");
    write(
        r,
        ".dockerignore",
        "*.log\n**/*.tmp\nbuild\n!build/keep.txt\nsecret\nDockerfile\n.dockerignore\n",
    );
    write(r, "a.log", "x");
    write(r, "src/main.rs", "fn main() {}");
    write(r, "src/deep/x.tmp", "t");
    write(r, "src/deep/y.rs", "y");
    write(r, "build/out.o", "o");
    write(r, "build/keep.txt", "k");
    write(r, "secret/key", "k");
    symlink("/etc/passwd", r.join("outside")).unwrap();
    symlink("../../..", r.join("src/up")).unwrap();
    let idx = scan(r, None, &ScanOptions::default(), None).unwrap();
    // The ignore file excludes the Dockerfile and itself, as in BuildKit
    // (dockerfile_dockerignore_test.go testDockerignore).
    assert_eq!(
        paths(&idx),
        vec![
            "build",
            "build/keep.txt",
            "outside",
            "src",
            "src/deep",
            "src/deep/y.rs",
            "src/main.rs",
            "src/up"
        ]
    );
    let out = idx.entries.iter().find(|e| e.path == "outside").unwrap();
    assert_eq!(out.kind, EntryKind::Symlink);
    assert_eq!(out.link_target.as_deref(), Some("/etc/passwd"));
    assert!(out.digest.is_none());
    let f = idx
        .entries
        .iter()
        .find(|e| e.path == "src/main.rs")
        .unwrap();
    assert_eq!(
        f.digest.as_ref().unwrap(),
        &xbuild_oci::Digest::sha256_of(b"fn main() {}")
    );
    // Serialized form has no host paths or times.
    let json = serde_json::to_string(&idx).unwrap();
    assert!(!json.contains(r.to_str().unwrap()));
    assert!(!json.contains("mtime"));
    let back: xbuild_engine::context::ContextIndex = serde_json::from_str(&json).unwrap();
    assert_eq!(back.entries, idx.entries);
}

#[test]
fn lowercase_dockerfile_is_the_fallback_of_a_missing_dockerfile() {
    use xbuild_engine::context::dockerfile_fallback;
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(r, "dockerfile", "FROM scratch\n");
    // dockerfile_core_test.go testDockerfileLowercase
    assert_eq!(
        dockerfile_fallback(&r.join("Dockerfile")),
        r.join("dockerfile")
    );
    // Only the default name falls back; an existing Dockerfile wins.
    assert_eq!(
        dockerfile_fallback(&r.join("app.Dockerfile")),
        r.join("app.Dockerfile")
    );
    write(r, "Dockerfile", "FROM scratch\n");
    assert_eq!(
        dockerfile_fallback(&r.join("Dockerfile")),
        r.join("Dockerfile")
    );
    let none = tempfile::tempdir().unwrap();
    let p = none.path().join("Dockerfile");
    assert_eq!(dockerfile_fallback(&p), p);
}

#[test]
fn dockerfile_specific_ignore_file_wins() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(r, "docker/app.Dockerfile", "FROM scratch\n");
    write(r, "docker/app.Dockerfile.dockerignore", "a.txt\n");
    write(r, ".dockerignore", "b.txt\n");
    write(r, "a.txt", "a");
    write(r, "b.txt", "b");
    let idx = scan(
        r,
        Some("docker/app.Dockerfile"),
        &ScanOptions::default(),
        None,
    )
    .unwrap();
    let p = paths(&idx);
    assert!(!p.contains(&"a.txt"), "{p:?}");
    assert!(p.contains(&"b.txt"));
    let idx = scan(r, Some("Dockerfile"), &ScanOptions::default(), None).unwrap();
    let p = paths(&idx);
    assert!(p.contains(&"a.txt"));
    assert!(!p.contains(&"b.txt"));
}

#[test]
fn hash_cache_touch_content_chmod() {
    let t = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let r = t.path();
    for i in 0..20 {
        write(r, &format!("d{}/f{i}", i % 3), &format!("content {i}"));
    }
    std::thread::sleep(Duration::from_millis(120));
    let opts = ScanOptions::default();
    let mut cache = HashCache::for_context(state.path(), r).unwrap();
    let a = scan(r, None, &opts, Some(&mut cache)).unwrap();
    assert_eq!(cache.files_hashed(), 20);
    cache.save().unwrap();

    let mut cache = HashCache::for_context(state.path(), r).unwrap();
    assert_eq!(cache.len(), 20);
    let b = scan(r, None, &opts, Some(&mut cache)).unwrap();
    assert_eq!(cache.files_hashed(), 0);
    assert_eq!(cache.bytes_hashed(), 0);
    assert_eq!(b.stats.cache_hits, 20);
    assert_eq!(a.entries, b.entries);
    let all = s(&["."]);
    let sum0 = checksum(&a, &all, &[], false).unwrap();

    // touch: mtime only.
    let f = fs::File::options()
        .write(true)
        .open(r.join("d0/f0"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let c = scan(r, None, &opts, Some(&mut cache)).unwrap();
    assert_eq!(cache.files_hashed(), 1);
    assert_eq!(checksum(&c, &all, &[], false).unwrap(), sum0);

    // content change.
    write(r, "d0/f0", "changed");
    let d = scan(r, None, &opts, Some(&mut cache)).unwrap();
    assert_eq!(cache.files_hashed(), 1);
    let sum1 = checksum(&d, &all, &[], false).unwrap();
    assert_ne!(sum1, sum0);

    // chmod.
    fs::set_permissions(r.join("d1/f1"), fs::Permissions::from_mode(0o755)).unwrap();
    let e = scan(r, None, &opts, Some(&mut cache)).unwrap();
    assert_ne!(checksum(&e, &all, &[], false).unwrap(), sum1);
}

#[test]
fn checksum_is_location_independent_and_name_sensitive() {
    let t1 = tempfile::tempdir().unwrap();
    let t2 = tempfile::tempdir().unwrap();
    for r in [t1.path(), t2.path()] {
        write(r, "app/a.txt", "hello");
        write(r, "app/sub/b.txt", "world");
        symlink("a.txt", r.join("app/link")).unwrap();
    }
    let i1 = scan(t1.path(), None, &ScanOptions::default(), None).unwrap();
    let i2 = scan(t2.path(), None, &ScanOptions::default(), None).unwrap();
    let src = s(&["app"]);
    let c1 = checksum(&i1, &src, &[], false).unwrap();
    assert_eq!(c1, checksum(&i2, &src, &[], false).unwrap());
    // checksum_dir on a directory gives the same value as the context index.
    assert_eq!(c1, checksum_dir(t1.path(), &src, &[], false).unwrap());
    // A different link target changes it.
    fs::remove_file(t2.path().join("app/link")).unwrap();
    symlink("sub/b.txt", t2.path().join("app/link")).unwrap();
    let i2b = scan(t2.path(), None, &ScanOptions::default(), None).unwrap();
    assert_ne!(c1, checksum(&i2b, &src, &[], false).unwrap());
    // Renamed file.
    fs::rename(t1.path().join("app/a.txt"), t1.path().join("app/c.txt")).unwrap();
    let i1b = scan(t1.path(), None, &ScanOptions::default(), None).unwrap();
    assert_ne!(c1, checksum(&i1b, &src, &[], false).unwrap());
    // Excludes and globs.
    let g = checksum(&i1, &s(&["app/*.txt"]), &[], false).unwrap();
    let g2 = checksum(&i1, &s(&["app/a.txt"]), &[], false).unwrap();
    assert_eq!(g, g2);
    let ex = checksum(&i1, &src, &s(&["sub"]), false).unwrap();
    assert_ne!(ex, c1);
    // --parents keeps the path, so it changes the checksum.
    assert_ne!(checksum(&i1, &s(&["app/a.txt"]), &[], true).unwrap(), g2);
}

#[test]
fn missing_sources_are_errors_naming_the_pattern() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "a.txt", "a");
    write(t.path(), "ignored.txt", "i");
    write(t.path(), ".dockerignore", "ignored.txt\n");
    let idx = scan(t.path(), None, &ScanOptions::default(), None).unwrap();
    let e = checksum(&idx, &s(&["nope.txt"]), &[], false).unwrap_err();
    assert!(matches!(e, ContextError::NotFound { .. }));
    assert!(e.to_string().contains("\"nope.txt\""), "{e}");
    let e = checksum(&idx, &s(&["ignored.txt"]), &[], false).unwrap_err();
    assert!(matches!(e, ContextError::NotFound { .. }));
    // A wildcard matching nothing selects nothing (BuildKit's
    // AllowEmptyWildcard, testEmptyWildcard): not an error.
    let none = checksum(&idx, &s(&["*.md"]), &[], false).unwrap();
    assert_eq!(none, checksum(&idx, &s(&["*.rst"]), &[], false).unwrap());
    let e = checksum_dir(t.path(), &s(&["/x/y"]), &[], false).unwrap_err();
    assert!(e.to_string().contains("/x/y"));
}

#[test]
fn throughput_vs_sha256sum() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let total: usize = std::env::var("XBUILD_HASH_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        // Unoptimized sha2 is slow: keep debug runs short.
        .unwrap_or(if cfg!(debug_assertions) { 30 } else { 300 });
    // Mixed sizes: a few big files, many small ones.
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut written = 0usize;
    let mut i = 0;
    while written < total << 20 {
        let size = match i % 10 {
            0 => 16 << 20,
            1..=4 => 1 << 20,
            _ => 64 << 10,
        };
        fs::create_dir_all(r.join(format!("d{}", i % 16))).unwrap();
        let mut f = fs::File::create(r.join(format!("d{}/f{i}", i % 16))).unwrap();
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len());
            std::io::Write::write_all(&mut f, &block[..n]).unwrap();
            block[0] = block[0].wrapping_add(1);
            left -= n;
        }
        written += size;
        i += 1;
    }
    let t0 = Instant::now();
    let idx = scan(r, None, &ScanOptions::default(), None).unwrap();
    let ours = t0.elapsed();
    let mb = idx.stats.bytes_hashed as f64 / (1 << 20) as f64;
    let t1 = Instant::now();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("find . -type f -print0 | xargs -0 sha256sum > /dev/null")
        .current_dir(r)
        .status();
    let theirs = t1.elapsed();
    eprintln!(
        "hashing {mb:.0} MB in {} files: xbuild {:.0} MB/s ({:.2}s, {} threads); sha256sum {} ({:.2}s)",
        idx.stats.files_hashed,
        mb / ours.as_secs_f64(),
        ours.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        match status {
            Ok(s) if s.success() => format!("{:.0} MB/s", mb / theirs.as_secs_f64()),
            _ => "unavailable".to_string(),
        },
        theirs.as_secs_f64(),
    );
    assert_eq!(idx.stats.bytes_hashed as usize, written);
}

/// File names that are not UTF-8 are indexed byte for byte (BuildKit
/// copies them as they are): escaped in the index, decoded for the
/// filesystem, part of the checksum; `.dockerignore` still excludes them,
/// by a pattern written with their raw bytes or by wildcards (an invalid
/// byte is one character for `?`, as in Go).
#[test]
fn non_utf8_names_are_indexed_and_matched_byte_for_byte() {
    use std::os::unix::ffi::OsStrExt;
    use xbuild_engine::context::{host_path, names};
    let os = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("ok.txt"), "ok").unwrap();
    fs::write(root.join(os(b"caf\xe9.txt")), "latin-1").unwrap();
    fs::create_dir(root.join(os(b"d\xff\xfe"))).unwrap();
    fs::write(root.join(os(b"d\xff\xfe")).join("in.txt"), "in").unwrap();
    symlink(os(b"caf\xe9.txt"), root.join("link")).unwrap();
    let opts = ScanOptions::default();
    let ix = scan(root, None, &opts, None).unwrap();
    let cafe = names::encode(b"caf\xe9.txt");
    let d = names::encode(b"d\xff\xfe");
    let mut want = [
        cafe.clone(),
        d.clone(),
        format!("{d}/in.txt"),
        "link".to_string(),
        "ok.txt".to_string(),
    ];
    want.sort();
    assert_eq!(
        paths(&ix),
        want.iter().map(String::as_str).collect::<Vec<_>>()
    );
    // Host paths decode to the real bytes.
    assert_eq!(
        host_path(root, &format!("{d}/in.txt"))
            .as_os_str()
            .as_bytes(),
        [root.as_os_str().as_bytes(), b"/d\xff\xfe/in.txt"].concat()
    );
    let link = ix.get("link").unwrap();
    assert_eq!(link.link_target.as_deref(), Some(cafe.as_str()));
    // The index travels in JSON and comes back the same.
    let json = serde_json::to_string(&ix).unwrap();
    let back: xbuild_engine::context::ContextIndex = serde_json::from_str(&json).unwrap();
    assert_eq!(back.entries, ix.entries);

    // The checksum covers the name and the content.
    let all = checksum(&ix, &s(&["."]), &[], false).unwrap();
    assert_eq!(
        all,
        checksum(
            &scan(root, None, &opts, None).unwrap(),
            &s(&["."]),
            &[],
            false
        )
        .unwrap()
    );
    let one = checksum(&ix, &s(&["caf?.txt"]), &[], false).unwrap();
    fs::write(root.join(os(b"caf\xe9.txt")), "changed").unwrap();
    let ix2 = scan(root, None, &opts, None).unwrap();
    assert_ne!(one, checksum(&ix2, &s(&["caf?.txt"]), &[], false).unwrap());
    assert_ne!(all, checksum(&ix2, &s(&["."]), &[], false).unwrap());
    // Another byte is another name: another checksum.
    fs::rename(root.join(os(b"caf\xe9.txt")), root.join(os(b"caf\xe8.txt"))).unwrap();
    let ix3 = scan(root, None, &opts, None).unwrap();
    assert_ne!(
        checksum(&ix2, &s(&["caf?.txt"]), &[], false).unwrap(),
        checksum(&ix3, &s(&["caf?.txt"]), &[], false).unwrap()
    );
    fs::rename(root.join(os(b"caf\xe8.txt")), root.join(os(b"caf\xe9.txt"))).unwrap();

    // Excluded: by the raw bytes in .dockerignore, and by wildcards.
    let mut ignore = b"caf\xe9.txt\n".to_vec();
    ignore.extend_from_slice(b"d?\xfe\n");
    fs::write(root.join(".dockerignore"), &ignore).unwrap();
    let ix = scan(root, None, &opts, None).unwrap();
    assert_eq!(paths(&ix), [".dockerignore", "link", "ok.txt"]);
    fs::write(root.join(".dockerignore"), "caf?.txt\nd*\n").unwrap();
    let ix = scan(root, None, &opts, None).unwrap();
    assert_eq!(paths(&ix), [".dockerignore", "link", "ok.txt"]);
}

/// A real name holding characters of the escape range stays distinct from
/// the escape of raw bytes that look the same (the mapping is one-to-one).
#[test]
fn names_in_the_escape_range_stay_distinct_from_raw_bytes() {
    use std::os::unix::ffi::OsStrExt;
    use xbuild_engine::context::{host_path, names};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // U+F7E9 as a real character, and the raw byte 0xE9 it would stand for.
    fs::write(root.join("x\u{F7E9}"), "real").unwrap();
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"x\xe9")), "raw").unwrap();
    let ix = scan(root, None, &ScanOptions::default(), None).unwrap();
    assert_eq!(ix.entries.len(), 2);
    for e in &ix.entries {
        let want: &[u8] = if e.path == names::encode(b"x\xe9") {
            b"raw"
        } else {
            b"real"
        };
        assert_eq!(
            fs::read(host_path(root, &e.path)).unwrap(),
            want,
            "{:?}",
            e.path
        );
    }
    // A Dockerfile source naming the real character selects that file only.
    let real = checksum(&ix, &s(&["x\u{F7E9}"]), &[], false).unwrap();
    let raw = checksum(&ix, &s(&["x?"]), &[], false).unwrap();
    let both = checksum(&ix, &s(&["x*"]), &[], false).unwrap();
    assert!(real != raw && raw != both && real != both);
}
