//! Layers applied one after the other onto one root give the filesystem an
//! overlay mount of the same layers shows (what a RUN step sees): a later
//! layer's directory hides an earlier layer's symlink or file at the same
//! path instead of writing through it; symlinks of the layer being applied
//! are still followed. Checked against a real read-only overlayfs mount of
//! the layers (each unpacked into its own directory) when root.

mod common;

use common::*;
use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;
use tar::{EntryType, Header};
use xbuild_oci::layer::{apply_layer, ApplyFormat, ApplyOptions};

/// A tar layer written entry by entry, in the order given.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(ty: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    fn dir(&mut self, name: &str) -> &mut Layer {
        let mut h = Self::header(EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, name, io::empty()).unwrap();
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Layer {
        let mut h = Self::header(EntryType::Regular, 0o644, data.len() as u64);
        self.0.append_data(&mut h, name, data).unwrap();
        self
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Layer {
        let mut h = Self::header(EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, name, target).unwrap();
        self
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Layer {
        let mut h = Self::header(EntryType::Link, 0o644, 0);
        self.0.append_link(&mut h, name, target).unwrap();
        self
    }

    fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

/// The base: `lib -> usr/lib` with `usr/lib/a.so`, and more links and a
/// file that the next layer puts directories over.
fn lower_layer() -> Vec<u8> {
    Layer::new()
        .dir("usr/")
        .dir("usr/lib/")
        .file("usr/lib/a.so", b"a")
        .symlink("lib", "usr/lib")
        .symlink("abs", "/usr/lib")
        .symlink("lib32", "usr/lib")
        .symlink("lib64", "usr/lib")
        .symlink("esc", "../../../../outside")
        .file("plainfile", b"f")
        .dir("d/")
        .symlink("d/l", "../usr/lib")
        .bytes()
}

/// The next layer, writing through the names the base made symlinks.
///
/// With `whiteout`, it also whites out `lib32/a.so` through the base's
/// `lib32` link: that makes `lib32` an empty directory and keeps
/// `usr/lib/a.so`. (A real overlay mount lists such a whiteout in a
/// directory that merges with nothing below, though the name cannot be
/// looked up; the mount comparison leaves it out.)
fn upper_layer(whiteout: bool) -> Vec<u8> {
    let mut l = Layer::new();
    if whiteout {
        l.file("lib32/.wh.a.so", b"");
    }
    l
        // Implied parent only (no `lib/` entry): the base's link is hidden.
        .file("lib/x.so", b"x")
        .hardlink("hl", "lib/x.so")
        .file("abs/y.so", b"y")
        .file("plainfile/inner", b"i")
        .file("d/l/z", b"z")
        .file("esc/e", b"e")
        // The explicit directory entry after the file in it.
        .file("lib64/v.so", b"v")
        .dir("lib64/")
        // A link of this layer is followed, as containerd resolves links
        // within the layer it applies.
        .symlink("own", "usr/lib")
        .file("own/w.so", b"w")
        .bytes()
}

fn names(root: &Path, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

/// What both views must show.
fn assert_overlay_semantics(root: &Path) {
    for d in ["lib", "abs", "plainfile", "d/l", "esc", "lib64"] {
        assert!(is_real_dir(&root.join(d)), "{d} is not a directory");
    }
    assert_eq!(names(root, "lib"), ["x.so"]);
    assert_eq!(names(root, "abs"), ["y.so"]);
    assert_eq!(names(root, "plainfile"), ["inner"]);
    assert_eq!(names(root, "d/l"), ["z"]);
    assert_eq!(names(root, "esc"), ["e"]);
    assert_eq!(names(root, "lib64"), ["v.so"]);
    // The base's directory keeps its file, gains only the same-layer link's
    // file, and none of the files written through the hidden links.
    assert_eq!(names(root, "usr/lib"), ["a.so", "w.so"]);
    assert_eq!(fs::read(root.join("usr/lib/a.so")).unwrap(), b"a");
    assert_eq!(fs::read(root.join("lib/x.so")).unwrap(), b"x");
    assert_eq!(fs::read(root.join("hl")).unwrap(), b"x");
    assert_eq!(
        fs::read_link(root.join("own")).unwrap(),
        Path::new("usr/lib")
    );
}

#[test]
fn later_directories_hide_earlier_symlinks_when_flattened() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    apply_layer(&lower_layer()[..], &root, &ApplyOptions::default()).unwrap();
    apply_layer(&upper_layer(true)[..], &root, &ApplyOptions::default()).unwrap();
    assert_overlay_semantics(&root);
    assert!(is_real_dir(&root.join("lib32")));
    assert!(names(&root, "lib32").is_empty());
    // Nothing escaped the root through the base's `esc` link.
    assert!(!t.path().join("outside").exists());
    assert!(!root.join("outside").exists());
}

/// A symlink made earlier in the same layer is followed (unchanged rule),
/// a file of the same layer in a parent position is still an error.
#[test]
fn same_layer_links_are_followed_and_same_layer_files_refused() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    let one = Layer::new()
        .dir("usr/")
        .dir("usr/lib/")
        .symlink("lib", "usr/lib")
        .file("lib/x.so", b"x")
        .bytes();
    apply_layer(&one[..], &root, &ApplyOptions::default()).unwrap();
    assert_eq!(
        fs::read_link(root.join("lib")).unwrap(),
        Path::new("usr/lib")
    );
    assert_eq!(names(&root, "usr/lib"), ["x.so"]);

    let bad = Layer::new().file("f", b"f").file("f/g", b"g").bytes();
    let e = apply_layer(&bad[..], &root, &ApplyOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
}

fn mount_overlay_ro(lowers: &[&Path], merged: &Path) -> Result<(), String> {
    let lower = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let o = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={lower}"))
        .arg(merged)
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// The flattened root equals a real overlay mount of the two layers, each
/// unpacked into its own directory the way the engine stores snapshots.
#[test]
fn flattened_layers_equal_the_overlay_mount() {
    if !is_root() {
        println!("skipped: mounting overlayfs needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (l1, l2, mg, flat) = (
        t.path().join("l1"),
        t.path().join("l2"),
        t.path().join("merged"),
        t.path().join("flat"),
    );
    for d in [&l1, &l2, &mg, &flat] {
        fs::create_dir(d).unwrap();
    }
    let overlay = ApplyOptions {
        format: ApplyFormat::Overlay,
        ..ApplyOptions::default()
    };
    apply_layer(&lower_layer()[..], &l1, &overlay).unwrap();
    apply_layer(&upper_layer(false)[..], &l2, &overlay).unwrap();
    if let Err(e) = mount_overlay_ro(&[&l2, &l1], &mg) {
        println!("skipped: cannot mount overlayfs here: {e}");
        return;
    }
    let seen = std::panic::catch_unwind(|| {
        assert_overlay_semantics(&mg);
        snapshot(&mg)
    });
    let um = Command::new("umount").arg(&mg).status().unwrap();
    assert!(um.success());
    let expected = seen.unwrap();

    apply_layer(&lower_layer()[..], &flat, &ApplyOptions::default()).unwrap();
    apply_layer(&upper_layer(false)[..], &flat, &ApplyOptions::default()).unwrap();
    assert_same_tree(&expected, &snapshot(&flat), false);
}
