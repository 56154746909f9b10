//! Hostile layers must never create or modify anything outside the root.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use xbuild_oci::layer::{apply_layer, ApplyOptions};

enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// Write a raw header name (bypassing the tar crate's own path checks).
fn raw_name(h: &mut tar::Header, name: &str) {
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name.as_bytes());
}

fn raw_link(h: &mut tar::Header, target: &str) {
    let old = h.as_old_mut();
    old.linkname = [0; 100];
    old.linkname[..target.len()].copy_from_slice(target.as_bytes());
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(0);
        h.set_mtime(1_000);
        let data: &[u8] = match e {
            E::File(n, d) => {
                raw_name(&mut h, n);
                h.set_size(d.len() as u64);
                d
            }
            E::Dir(n, mode) => {
                raw_name(&mut h, n);
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                &[]
            }
            E::Symlink(n, t) => {
                raw_name(&mut h, n);
                raw_link(&mut h, t);
                h.set_entry_type(tar::EntryType::Symlink);
                &[]
            }
            E::Hardlink(n, t) => {
                raw_name(&mut h, n);
                raw_link(&mut h, t);
                h.set_entry_type(tar::EntryType::Link);
                &[]
            }
        };
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

struct Bed {
    _t: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

/// temp/root (the layer root) next to temp/outside (must stay untouched).
fn bed() -> Bed {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(outside.join("sub")).unwrap();
    fs::write(outside.join("sub/x"), b"x").unwrap();
    Bed {
        _t: t,
        root,
        outside,
    }
}

/// Apply `layer` and check the outside directory (and the temp dir itself)
/// did not change. Returns whether apply succeeded.
fn check(b: &Bed, layer: &[u8]) -> bool {
    let parent = b.outside.parent().unwrap();
    let before = snapshot(&b.outside);
    let parent_before: Vec<_> = fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let outside_meta = fs::metadata(&b.outside).unwrap();
    let r = apply_layer(layer, &b.root, &ApplyOptions::default());
    let after = snapshot(&b.outside);
    assert_eq!(before, after, "outside directory changed");
    let parent_after: Vec<_> = fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        parent_before, parent_after,
        "something created next to the root"
    );
    let m = fs::metadata(&b.outside).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (m.mode(), m.mtime()),
        (outside_meta.mode(), outside_meta.mtime())
    );
    match &r {
        Ok(s) => println!("applied; warnings: {:?}", s.warnings),
        Err(e) => println!("refused: {e}"),
    }
    r.is_ok()
}

fn abs(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[test]
fn dotdot_names_stay_inside() {
    let b = bed();
    let ok = check(
        &b,
        &tar_of(&[
            E::File("../../outside/secret", b"pwned"),
            E::File("../outside/new", b"pwned"),
        ]),
    );
    assert!(ok);
    assert_eq!(fs::read(b.root.join("outside/secret")).unwrap(), b"pwned");
    assert!(b.root.join("outside/new").exists());
}

#[test]
fn absolute_names_stay_inside() {
    let b = bed();
    let name = format!("{}/secret", abs(&b.outside));
    assert!(check(&b, &tar_of(&[E::File(&name, b"pwned")])));
    let inside = b.root.join(name.trim_start_matches('/'));
    assert_eq!(fs::read(inside).unwrap(), b"pwned");
}

#[test]
fn write_through_symlink_parent_stays_inside() {
    for kind in ["absolute", "relative", "many-dotdots"] {
        let b = bed();
        let target = match kind {
            "absolute" => abs(&b.outside),
            "relative" => "../outside".to_string(),
            _ => "../../../../../../../../..".to_string(),
        };
        let layer = tar_of(&[
            E::Symlink("link", &target),
            E::File("link/secret", b"pwned"),
            E::Dir("link/sub/", 0o777),
            E::File("link/sub/x", b"pwned"),
        ]);
        assert!(check(&b, &layer), "{kind}");
        assert!(fs::symlink_metadata(b.root.join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        // The write went to where the link points when the root is "/".
        let landed = match kind {
            "absolute" => b.root.join(target.trim_start_matches('/')),
            "relative" => b.root.join("outside"),
            _ => b.root.clone(),
        };
        assert_eq!(fs::read(landed.join("secret")).unwrap(), b"pwned", "{kind}");
        assert_eq!(fs::read(landed.join("sub/x")).unwrap(), b"pwned", "{kind}");
    }
}

#[test]
fn absolute_symlink_parent_is_rooted() {
    let b = bed();
    // "sys" -> "/" then "sys/<path of outside>/secret": with the root as "/"
    // this lands in root/<path of outside>/secret.
    let rel = abs(&b.outside).trim_start_matches('/').to_string();
    let name = format!("sys/{rel}/secret");
    assert!(check(
        &b,
        &tar_of(&[E::Symlink("sys", "/"), E::File(&name, b"pwned")])
    ));
    assert_eq!(
        fs::read(b.root.join(&rel).join("secret")).unwrap(),
        b"pwned"
    );
}

#[test]
fn file_over_symlink_replaces_the_link() {
    let b = bed();
    let secret = format!("{}/secret", abs(&b.outside));
    assert!(check(
        &b,
        &tar_of(&[E::Symlink("s", &secret), E::File("s", b"pwned")])
    ));
    assert_eq!(fs::read(b.root.join("s")).unwrap(), b"pwned");
    // Same with a directory entry over a symlink to an outside directory.
    let b = bed();
    let out = abs(&b.outside);
    check(
        &b,
        &tar_of(&[
            E::Symlink("d", &out),
            E::Dir("d/", 0o777),
            E::File("d/secret", b"pwned"),
        ]),
    );
}

#[test]
fn hardlinks_to_outside_are_refused_or_contained() {
    let b = bed();
    assert!(!check(
        &b,
        &tar_of(&[E::Hardlink("h", "../outside/secret")])
    ));
    let b = bed();
    let secret = format!("{}/secret", abs(&b.outside));
    assert!(!check(&b, &tar_of(&[E::Hardlink("h", &secret)])));
    let b = bed();
    let out = abs(&b.outside);
    assert!(!check(
        &b,
        &tar_of(&[E::Symlink("l", &out), E::Hardlink("h", "l/secret")])
    ));
    // A hardlink to a symlink that points outside links the symlink itself;
    // writing through the new name then replaces it.
    let b = bed();
    check(
        &b,
        &tar_of(&[
            E::Symlink("s", &secret),
            E::Hardlink("h", "s"),
            E::File("h", b"pwned"),
        ]),
    );
}

#[test]
fn whiteouts_cannot_delete_outside() {
    let b = bed();
    let out = abs(&b.outside);
    check(
        &b,
        &tar_of(&[
            E::Symlink("l", &out),
            E::File("l/.wh.secret", b""),
            E::File("../outside/.wh.secret", b""),
            E::File("../.wh.outside", b""),
            E::File("l/sub/.wh..wh..opq", b""),
            E::File(".wh..", b""),
            E::File("l/.wh..", b""),
        ]),
    );
}

#[test]
fn deferred_directory_modes_do_not_follow_a_later_symlink() {
    let b = bed();
    let out = abs(&b.outside);
    // "d" is a directory with mode 0777 (applied at the end), then replaced
    // by a symlink to the outside directory.
    check(
        &b,
        &tar_of(&[
            E::Dir("d/", 0o777),
            E::Dir("d/e/", 0o777),
            E::Symlink("d", &out),
        ]),
    );
    check(
        &b,
        &tar_of(&[
            E::Dir("x/", 0o700),
            E::Symlink("x", "../outside"),
            E::Dir("x/sub/", 0o777),
        ]),
    );
}
