//! The local image store through the real binary: load, images, history,
//! save, rmi, image prune and garbage collection, each in a temp XBUILD_ROOT.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use xbuild_oci::Digest;

fn xbuild(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xbuild"))
        .args(args)
        .env("XBUILD_ROOT", root)
        .env("HOME", root)
        .env_remove("XBUILD_CONFIG")
        .output()
        .expect("run xbuild")
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o = xbuild(root, args);
    assert!(
        o.status.success(),
        "xbuild {args:?} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn tar_bytes(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A pre-Docker-25 style `docker save` archive made by hand: uncompressed
/// layers under `<id>/layer.tar`, the config as `<hex>.json`.
/// Answers the archive, the config digest and the layer digests.
fn hand_made_archive() -> (Vec<u8>, Digest, Vec<Digest>) {
    let l1 = tar_bytes(&[("etc/hello", b"hello\n")]);
    let l2 = tar_bytes(&[("app/run.sh", b"#!/bin/sh\necho hi\n")]);
    let d1 = Digest::sha256_of(&l1);
    let d2 = Digest::sha256_of(&l2);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": {"Cmd": ["/app/run.sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [d1.to_string(), d2.to_string()]},
        "history": [
            {"created": "2024-01-02T03:04:00Z", "created_by": "COPY hello /etc/hello # buildkit", "comment": "buildkit.dockerfile.v0"},
            {"created": "2024-01-02T03:04:01Z", "created_by": "ENV PATH=/bin", "empty_layer": true},
            {"created": "2024-01-02T03:04:05Z", "created_by": "COPY run.sh /app/run.sh # a long instruction that is certainly truncated"}
        ]
    });
    let cbytes = serde_json::to_vec(&config).unwrap();
    let cd = Digest::sha256_of(&cbytes);
    let manifest = serde_json::json!([{
        "Config": format!("{}.json", cd.hex()),
        "RepoTags": ["hand/made:1"],
        "Layers": [format!("{}/layer.tar", &d1.hex()[..10]), format!("{}/layer.tar", &d2.hex()[..10])]
    }]);
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let cname = format!("{}.json", cd.hex());
    let p1 = format!("{}/layer.tar", &d1.hex()[..10]);
    let p2 = format!("{}/layer.tar", &d2.hex()[..10]);
    let archive = tar_bytes(&[
        (cname.as_str(), &cbytes),
        (p1.as_str(), &l1),
        (p2.as_str(), &l2),
        ("manifest.json", &mbytes),
    ]);
    (archive, cd, vec![d1, d2])
}

fn blobs(root: &Path) -> Vec<String> {
    match fs::read_dir(root.join("content/blobs/sha256")) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
        Err(_) => Vec::new(),
    }
}

#[test]
fn load_list_history_save_rmi_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    let (archive, config_digest, layers) = hand_made_archive();
    let hand = tmp.path().join("hand.tar");
    fs::write(&hand, &archive).unwrap();

    // load
    let out = ok(&a, &["load", "-i", hand.to_str().unwrap()]);
    assert!(out.contains("Loaded image: hand/made:1"), "{out}");

    // images
    let out = ok(&a, &["images"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("REPOSITORY"), "{out}");
    for col in ["TAG", "IMAGE ID", "CREATED", "PLATFORMS", "SIZE"] {
        assert!(lines[0].contains(col), "{out}");
    }
    let row = lines
        .iter()
        .find(|l| l.starts_with("hand/made "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains(" 1 "), "{row}");
    assert!(row.contains(config_digest.short()), "{row}");
    assert!(row.contains("linux/amd64"), "{row}");
    assert!(row.contains("ago"), "{row}");
    let q = ok(&a, &["images", "-q"]);
    assert_eq!(q.trim(), config_digest.short());

    // history
    let out = ok(&a, &["history", "hand/made:1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].contains("CREATED BY") && lines[0].contains("COMMENT"));
    assert!(lines[1].starts_with(config_digest.short()), "{out}");
    assert!(lines[1].contains('…'), "truncated: {out}");
    assert!(lines[2].starts_with("<missing>") && lines[2].contains("ENV PATH=/bin"));
    assert!(lines[2].contains("0B"), "{out}");
    assert!(lines[3].contains("buildkit.dockerfile.v0"), "{out}");
    let full = ok(&a, &["history", "--no-trunc", "hand/made:1"]);
    assert!(full.contains("certainly truncated"), "{full}");

    // save (docker format) -> load into another root
    let saved = tmp.path().join("saved.tar");
    ok(&a, &["save", "-o", saved.to_str().unwrap(), "hand/made:1"]);
    let out = ok(&b, &["load", "-i", saved.to_str().unwrap()]);
    assert!(out.contains("Loaded image: hand/made:1"), "{out}");
    let q = ok(&b, &["images", "-q"]);
    assert_eq!(q.trim(), config_digest.short());
    assert_eq!(blobs(&a), blobs(&b), "same blobs in both roots");
    // and as OCI
    let oci = tmp.path().join("saved-oci.tar");
    ok(
        &a,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            oci.to_str().unwrap(),
            "hand/made:1",
        ],
    );
    let c = tmp.path().join("c");
    let out = ok(&c, &["load", "-i", oci.to_str().unwrap()]);
    assert!(out.contains("Loaded image: hand/made:1"), "{out}");
    assert_eq!(blobs(&a), blobs(&c));

    // rmi of an unknown image fails and names it
    let o = xbuild(&a, &["rmi", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nope"), "{err}");

    // A build-cache record keeps one layer alive through GC.
    fs::create_dir_all(a.join("cache/records")).unwrap();
    fs::write(
        a.join("cache/records/r.json"),
        format!(r#"{{"layer":"{}"}}"#, layers[0]),
    )
    .unwrap();
    let out = ok(&a, &["rmi", "hand/made:1"]);
    assert!(out.contains("Untagged: hand/made:1"), "{out}");
    assert!(out.contains("Deleted: sha256:"), "{out}");
    let out = ok(&a, &["images"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(blobs(&a), vec![layers[0].hex().to_string()]);
    let o = xbuild(&a, &["history", "hand/made:1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("hand/made:1"));

    // image prune -a in root b removes everything.
    let out = ok(&b, &["image", "prune", "-a", "-f"]);
    assert!(out.contains("untagged: hand/made:1"), "{out}");
    assert!(out.contains("Total reclaimed space"), "{out}");
    assert!(blobs(&b).is_empty(), "{:?}", blobs(&b));
    // prune without -a keeps tagged images.
    let out = ok(&c, &["image", "prune", "-f"]);
    assert!(out.contains("Total reclaimed space: 0B"), "{out}");
    assert_eq!(ok(&c, &["images", "-q"]).trim(), config_digest.short());
}

#[test]
fn load_refuses_garbage_and_save_needs_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.tar");
    fs::write(&bad, tar_bytes(&[("hello.txt", b"hi")])).unwrap();
    let o = xbuild(tmp.path(), &["load", "-i", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an image archive"));
    let o = xbuild(tmp.path(), &["save", "-o", "x.tar", "missing:1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing:1"));
    assert!(!Path::new("x.tar").exists());
}
