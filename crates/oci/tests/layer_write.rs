//! Layer writing: determinism, SOURCE_DATE_EPOCH, tar format details checked
//! with an independent reader (GNU tar when present, and the `tar` crate).

mod common;

use common::*;
use flate2::read::GzDecoder;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use xbuild_oci::layer::{write_layer, WriteOptions};
use xbuild_oci::media_types::{self as mt, Compression};
use xbuild_oci::Digest;

fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("etc/hostname"), b"box\n").unwrap();
    fs::write(root.join("etc/conf.d/a.conf"), vec![b'a'; 70_000]).unwrap();
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    symlink("../etc/hostname", root.join("usr/hostname-link")).unwrap();
    fs::hard_link(root.join("etc/hostname"), root.join("usr/hostname-hard")).unwrap();
    let long_dir = root.join("d".repeat(120));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("f".repeat(150)), b"long name").unwrap();
    symlink("t".repeat(200), root.join("long-target")).unwrap();
}

fn write(root: &Path, opts: &WriteOptions) -> (xbuild_oci::layer::LayerOutput, Vec<u8>) {
    write_layer(root, Vec::new(), opts).unwrap()
}

#[test]
fn digests_are_consistent_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path());
    let opts = WriteOptions::default();
    let (a, bytes_a) = write(dir.path(), &opts);
    let (b, bytes_b) = write(dir.path(), &opts);
    assert_eq!(a, b);
    assert_eq!(bytes_a, bytes_b);
    assert_eq!(a.digest, Digest::sha256_of(&bytes_a));
    assert_eq!(a.size, bytes_a.len() as u64);
    assert_eq!(a.media_type, mt::OCI_LAYER_TAR_GZIP);
    let mut raw = Vec::new();
    GzDecoder::new(&bytes_a[..]).read_to_end(&mut raw).unwrap();
    assert_eq!(a.diff_id, Digest::sha256_of(&raw));
    assert_eq!(a.uncompressed_size, raw.len() as u64);
    assert_eq!(raw.len() % 512, 0);

    let plain = WriteOptions {
        compression: Compression::None,
        ..WriteOptions::default()
    };
    let (p, pbytes) = write(dir.path(), &plain);
    assert_eq!(pbytes, raw, "plain output is the same tar");
    assert_eq!(p.digest, a.diff_id);
    assert_eq!(p.media_type, mt::OCI_LAYER_TAR);

    let best = WriteOptions {
        compression_level: 9,
        ..WriteOptions::default()
    };
    let (c, _) = write(dir.path(), &best);
    assert_eq!(
        c.diff_id, a.diff_id,
        "compression level changes only the blob"
    );
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path());
    let sde = WriteOptions {
        source_date_epoch: Some(1_000_000),
        ..WriteOptions::default()
    };
    let (a, _) = write(dir.path(), &sde);
    // Touch a file and a dir: with the clamp nothing changes.
    set_mtime(&dir.path().join("etc/hostname"), 2_000_000_000);
    set_mtime(&dir.path().join("etc"), 1_900_000_000);
    let (b, _) = write(dir.path(), &sde);
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.diff_id, b.diff_id);
    // Without it, the change shows.
    let (c, _) = write(dir.path(), &WriteOptions::default());
    set_mtime(&dir.path().join("etc/hostname"), 1_500_000_000);
    let (d, _) = write(dir.path(), &WriteOptions::default());
    assert_ne!(c.diff_id, d.diff_id);
    // Older mtimes are kept as they are.
    set_mtime(&dir.path().join("empty"), 500);
    let (e, bytes) = write(dir.path(), &sde);
    assert_ne!(e.diff_id, a.diff_id);
    let mut ar = tar::Archive::new(GzDecoder::new(&bytes[..]));
    for ent in ar.entries().unwrap() {
        let ent = ent.unwrap();
        let m = ent.header().mtime().unwrap();
        if ent.path().unwrap().as_os_str() == "empty" {
            assert_eq!(m, 500);
        } else {
            assert!(m <= 1_000_000, "{:?} {m}", ent.path());
        }
    }
}

#[test]
fn entries_sorted_named_and_typed_like_docker() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path());
    let (out, bytes) = write(dir.path(), &WriteOptions::default());
    let mut ar = tar::Archive::new(GzDecoder::new(&bytes[..]));
    let mut names = Vec::new();
    for ent in ar.entries().unwrap() {
        let ent = ent.unwrap();
        let name = String::from_utf8(ent.path_bytes().into_owned()).unwrap();
        let h = ent.header();
        assert_eq!(h.username().unwrap(), Some(""));
        assert_eq!(h.groupname().unwrap(), Some(""));
        match name.as_str() {
            "usr/bin/tool" => assert_eq!(h.mode().unwrap(), 0o4755),
            "usr/hostname-link" => {
                assert_eq!(h.entry_type(), tar::EntryType::Symlink);
                assert_eq!(
                    ent.link_name().unwrap().unwrap().to_str(),
                    Some("../etc/hostname")
                );
            }
            "usr/hostname-hard" => {
                assert_eq!(h.entry_type(), tar::EntryType::Link);
                assert_eq!(
                    ent.link_name().unwrap().unwrap().to_str(),
                    Some("etc/hostname")
                );
            }
            "long-target" => {
                assert_eq!(
                    ent.link_name().unwrap().unwrap().to_str().unwrap(),
                    "t".repeat(200)
                );
            }
            n if n.ends_with('/') => assert_eq!(h.entry_type(), tar::EntryType::Directory),
            _ => {}
        }
        names.push(name);
    }
    assert_eq!(out.entries as usize, names.len());
    assert!(names.contains(&format!("{}/{}", "d".repeat(120), "f".repeat(150))));
    assert_eq!(names[0], format!("{}/", "d".repeat(120)));
    assert!(names.contains(&"etc/".to_string()));
    // Depth-first, each directory's entries in byte order.
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
    assert!(pos("etc/") < pos("etc/conf.d/"));
    assert!(pos("etc/conf.d/a.conf") < pos("etc/hostname"));
    assert!(pos("empty") < pos("etc/"));

    // An independent reader agrees.
    if Path::new("/usr/bin/tar").exists() {
        let f = dir.path().join("../layer-check.tar.gz");
        fs::write(&f, &bytes).unwrap();
        let o = std::process::Command::new("tar")
            .arg("-tzf")
            .arg(&f)
            .output()
            .unwrap();
        fs::remove_file(&f).unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let listed: Vec<String> = String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(listed, names);
    } else {
        println!("GNU tar not installed; skipped the cross-check");
    }
}

#[test]
fn extra_whiteouts_are_merged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("a")).unwrap();
    fs::write(dir.path().join("a/keep"), b"k").unwrap();
    fs::write(dir.path().join("a/recreated"), b"new").unwrap();
    let opts = WriteOptions {
        extra_whiteouts: vec![
            "a/gone".into(),
            "/a/recreated".into(),
            "x/y/z".into(),
            "b".into(),
        ],
        ..WriteOptions::default()
    };
    let (_, bytes) = write(dir.path(), &opts);
    let mut ar = tar::Archive::new(GzDecoder::new(&bytes[..]));
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
        .collect();
    // ".wh.b" sorts before "a/" at the top level; "a/recreated" exists, so
    // its whiteout is dropped; "x/y" exists only as a whiteout parent.
    assert_eq!(
        names,
        [
            ".wh.b",
            "a/",
            "a/.wh.gone",
            "a/keep",
            "a/recreated",
            "x/y/.wh.z"
        ]
    );
    let bad = WriteOptions {
        extra_whiteouts: vec!["../etc".into()],
        ..WriteOptions::default()
    };
    assert!(write_layer(dir.path(), Vec::new(), &bad).is_err());
}

#[test]
fn xattrs_become_pax_records() {
    let dir = tempfile::tempdir().unwrap();
    if !user_xattrs_supported(dir.path()) {
        println!(
            "skipped: the filesystem of {} has no user xattrs",
            dir.path().display()
        );
        return;
    }
    fs::write(dir.path().join("f"), b"x").unwrap();
    set_xattr(&dir.path().join("f"), "user.note", b"\x00bin\xffary").unwrap();
    let (_, bytes) = write(dir.path(), &WriteOptions::default());
    let mut ar = tar::Archive::new(GzDecoder::new(&bytes[..]));
    let mut found = false;
    for ent in ar.entries().unwrap() {
        let mut ent = ent.unwrap();
        if let Some(exts) = ent.pax_extensions().unwrap() {
            for e in exts {
                let e = e.unwrap();
                if e.key().unwrap() == "SCHILY.xattr.user.note" {
                    assert_eq!(e.value_bytes(), b"\x00bin\xffary");
                    found = true;
                }
            }
        }
    }
    assert!(found);
}
