//! write -> apply round trips, whiteouts, opaque directories and the
//! overlayfs upper-directory translation (on a real overlay mount when root).

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use xbuild_oci::layer::{apply_layer, write_layer, ApplyOptions, SourceMode, WriteOptions};

fn layer_of(src: &Path, opts: &WriteOptions) -> Vec<u8> {
    let (out, bytes) = write_layer(src, Vec::new(), opts).unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    bytes
}

fn apply(bytes: &[u8], root: &Path) -> xbuild_oci::layer::ApplyStats {
    apply_layer(bytes, root, &ApplyOptions::default()).unwrap()
}

fn rich_tree(root: &Path) -> bool {
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("srv/ro")).unwrap();
    fs::write(root.join("etc/hostname"), b"box\n").unwrap();
    fs::write(
        root.join("etc/conf.d/big"),
        (0..300_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::write(root.join("srv/ro/file"), b"ro").unwrap();
    fs::set_permissions(root.join("srv/ro/file"), fs::Permissions::from_mode(0o400)).unwrap();
    fs::set_permissions(root.join("srv/ro"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(root.join("srv"), fs::Permissions::from_mode(0o1777)).unwrap();
    symlink("../etc/hostname", root.join("usr/link")).unwrap();
    symlink("/does/not/exist", root.join("dangling")).unwrap();
    fs::hard_link(root.join("etc/hostname"), root.join("usr/hard1")).unwrap();
    fs::hard_link(root.join("etc/hostname"), root.join("srv/hard2")).unwrap();
    let long = root.join("l".repeat(110)).join("m".repeat(200));
    fs::create_dir_all(long.parent().unwrap()).unwrap();
    fs::write(&long, b"long").unwrap();
    mknod(&root.join("fifo"), libc::S_IFIFO, 0o640, 0, 0).unwrap();
    if is_root() {
        mknod(&root.join("null"), libc::S_IFCHR, 0o666, 1, 3).unwrap();
        mknod(&root.join("blk"), libc::S_IFBLK, 0o600, 7, 0).unwrap();
        let c = std::ffi::CString::new(root.join("usr/bin/tool").as_os_str().as_encoded_bytes())
            .unwrap();
        assert_eq!(unsafe { libc::lchown(c.as_ptr(), 1234, 5678) }, 0);
        // chown clears setuid; restore it.
        fs::set_permissions(
            root.join("usr/bin/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
    }
    let xattrs = user_xattrs_supported(root);
    if xattrs {
        set_xattr(&root.join("etc/hostname"), "user.a", b"1").unwrap();
        set_xattr(&root.join("etc/conf.d"), "user.dir", b"d").unwrap();
    } else {
        println!(
            "xattr part skipped: the filesystem of {} has no user xattrs",
            root.display()
        );
    }
    for (p, t) in [
        ("etc/hostname", 1_600_000_000),
        ("usr/link", 1_600_000_001),
        ("etc", 1_600_000_002),
        ("srv/ro", 1_600_000_003),
    ] {
        set_mtime(&root.join(p), t);
    }
    xattrs
}

#[test]
fn round_trip_preserves_everything() {
    let src = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    let before = snapshot(src.path());
    let bytes = layer_of(src.path(), &WriteOptions::default());
    let dst = tempfile::tempdir().unwrap();
    let stats = apply(&bytes, dst.path());
    assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
    assert_eq!(stats.hardlinks, 2);
    assert!(stats.bytes >= 300_000);
    let (out, _) = write_layer(src.path(), Vec::new(), &WriteOptions::default()).unwrap();
    assert_eq!(stats.diff_id, out.diff_id, "apply computes the same diffID");
    let after = snapshot(dst.path());
    assert_same_tree(&before, &after, true);
    // Re-writing the applied tree gives the very same layer.
    let again = layer_of(dst.path(), &WriteOptions::default());
    assert_eq!(again, bytes);
}

#[test]
fn applying_over_existing_content_replaces_types() {
    let dst = tempfile::tempdir().unwrap();
    // Lower: "x" is a dir with content, "y" a file, "z" a symlink.
    fs::create_dir_all(dst.path().join("x/sub")).unwrap();
    fs::write(dst.path().join("x/sub/f"), b"f").unwrap();
    fs::write(dst.path().join("y"), b"old").unwrap();
    symlink("y", dst.path().join("z")).unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("x"), b"now a file").unwrap();
    fs::create_dir(src.path().join("y")).unwrap();
    fs::write(src.path().join("z"), b"now a file too").unwrap();
    apply(&layer_of(src.path(), &WriteOptions::default()), dst.path());
    assert_eq!(fs::read(dst.path().join("x")).unwrap(), b"now a file");
    assert!(dst.path().join("y").is_dir());
    assert!(!fs::symlink_metadata(dst.path().join("z"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(dst.path().join("z")).unwrap(), b"now a file too");
}

fn lower(root: &Path) {
    fs::create_dir_all(root.join("keep")).unwrap();
    fs::create_dir_all(root.join("gone-dir/deep")).unwrap();
    fs::create_dir_all(root.join("opaque/old-sub")).unwrap();
    fs::write(root.join("keep/a"), b"a").unwrap();
    fs::write(root.join("keep/b"), b"b").unwrap();
    fs::write(root.join("gone-dir/deep/f"), b"f").unwrap();
    fs::write(root.join("opaque/old"), b"old").unwrap();
    fs::write(root.join("opaque/old-sub/x"), b"x").unwrap();
    fs::write(root.join("modified"), b"v1").unwrap();
}

#[test]
fn whiteouts_and_opaque_from_explicit_list() {
    let img = tempfile::tempdir().unwrap();
    let l1 = tempfile::tempdir().unwrap();
    lower(l1.path());
    apply(&layer_of(l1.path(), &WriteOptions::default()), img.path());

    // Layer 2 as a copy-based differ would describe it.
    let l2 = tempfile::tempdir().unwrap();
    fs::create_dir_all(l2.path().join("opaque")).unwrap();
    fs::write(l2.path().join("opaque/-new"), b"sorted before the marker").unwrap();
    fs::write(l2.path().join("modified"), b"v2").unwrap();
    let opts = WriteOptions {
        extra_whiteouts: vec!["keep/b".into(), "gone-dir".into(), "never-existed".into()],
        ..WriteOptions::default()
    };
    let bytes = layer_of(l2.path(), &opts);
    let stats = apply(&bytes, img.path());
    assert_eq!(stats.whiteouts, 3);
    let s = snapshot(img.path());
    let names: Vec<&str> = s.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "keep",
            "keep/a",
            "modified",
            "opaque",
            "opaque/-new",
            "opaque/old",
            "opaque/old-sub",
            "opaque/old-sub/x"
        ]
    );
    assert_eq!(fs::read(img.path().join("modified")).unwrap(), b"v2");

    // A hand-made tar with an opaque marker placed after a new child: the
    // child (written by this layer) survives, lower content goes.
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("opaque/", None),
        ("opaque/-newer", Some(&b"n"[..])),
        ("opaque/.wh..wh..opq", Some(&b""[..])),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        match data {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            Some(d) => {
                h.set_mode(0o644);
                h.set_size(d.len() as u64);
                h.set_cksum();
                b.append(&h, d).unwrap();
            }
        }
    }
    apply(&b.into_inner().unwrap(), img.path());
    let s = snapshot(img.path());
    let names: Vec<&str> = s.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["keep", "keep/a", "modified", "opaque", "opaque/-newer"]
    );
}

fn mount_overlay(lower: &Path, upper: &Path, work: &Path, merged: &Path) -> Result<(), String> {
    let base = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let mut last = String::new();
    for extra in [",redirect_dir=off,metacopy=off,index=off", ""] {
        let o = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("{base}{extra}"))
            .arg(merged)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&o.stderr).into_owned();
    }
    Err(last)
}

#[test]
fn overlay_upper_translation_on_a_real_mount() {
    if !is_root() {
        println!("skipped: mounting overlayfs needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (lo, up, wk, mg) = (
        t.path().join("lower"),
        t.path().join("upper"),
        t.path().join("work"),
        t.path().join("merged"),
    );
    for d in [&lo, &up, &wk, &mg] {
        fs::create_dir(d).unwrap();
    }
    lower(&lo);
    if let Err(e) = mount_overlay(&lo, &up, &wk, &mg) {
        println!("skipped: cannot mount overlayfs here: {e}");
        return;
    }
    // Changes through the merged view.
    let changes = || -> std::io::Result<()> {
        fs::remove_file(mg.join("keep/b"))?;
        fs::remove_dir_all(mg.join("gone-dir"))?;
        fs::remove_dir_all(mg.join("opaque"))?;
        fs::create_dir(mg.join("opaque"))?;
        fs::write(mg.join("opaque/fresh"), b"fresh")?;
        fs::write(mg.join("modified"), b"v2")?;
        fs::write(mg.join("keep/c"), b"c")?;
        Ok(())
    };
    let r = changes();
    let expected = snapshot(&mg);
    let um = Command::new("umount").arg(&mg).status().unwrap();
    assert!(um.success());
    r.unwrap();

    // The upper dir holds a 0/0 char device and an opaque dir.
    let l1 = layer_of(&lo, &WriteOptions::default());
    let l2 = layer_of(
        &up,
        &WriteOptions {
            mode: SourceMode::OverlayUpper,
            ..WriteOptions::default()
        },
    );
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&l2[..]));
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&".wh.gone-dir".to_string()), "{names:?}");
    assert!(names.contains(&"keep/.wh.b".to_string()), "{names:?}");
    assert!(
        names.contains(&"opaque/.wh..wh..opq".to_string()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("overlay")), "{names:?}");

    let img = tempfile::tempdir().unwrap();
    apply(&l1, img.path());
    apply(&l2, img.path());
    let got = snapshot(img.path());
    // Directory mtimes and inode-based checks differ between an overlay and a
    // plain tree; compare the rest.
    assert_same_tree(&expected, &got, false);
}
