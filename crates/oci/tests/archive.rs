//! Image archives: OCI layout and docker-archive tarballs written from a
//! store, checked by skopeo (when installed), read back, and hostile input.

use std::fs;
use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use xbuild_oci::archive::{
    read_archive, select_platform, write_docker_archive, write_oci_archive, ArchiveError,
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME,
};
use xbuild_oci::config::History;
use xbuild_oci::gc::gc;
use xbuild_oci::layer::{write_layer, WriteOptions};
use xbuild_oci::manifest::Manifest;
use xbuild_oci::media_types as mt;
use xbuild_oci::{BlobStore, Descriptor, ImageConfig, ImageIndex, ImageManifest, Platform};

/// Write a layer from `files` into the store; answers its descriptor and diffID.
fn layer(store: &BlobStore, files: &[(&str, &str)]) -> (Descriptor, xbuild_oci::Digest) {
    let dir = tempfile::tempdir().unwrap();
    for (p, c) in files {
        let path = dir.path().join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, c).unwrap();
    }
    let opts = WriteOptions {
        source_date_epoch: Some(0),
        ..WriteOptions::default()
    };
    let w = store.writer(xbuild_oci::digest::Algorithm::Sha256).unwrap();
    let (out, w) = write_layer(dir.path(), w, &opts).unwrap();
    let (digest, _) = w.commit(Some(&out.digest)).unwrap();
    assert_eq!(digest, out.digest);
    (out.descriptor(), out.diff_id)
}

/// A two-layer image for `platform`; answers the manifest descriptor.
fn image(store: &BlobStore, platform: &str) -> Descriptor {
    let p = Platform::parse(platform).unwrap();
    let (l1, d1) = layer(store, &[("etc/os-release", "ID=test\n")]);
    let (l2, d2) = layer(
        store,
        &[("app/hello", platform), ("app/sub/data", "some data\n")],
    );
    let mut c = ImageConfig::for_platform(&p);
    c.created = Some("2024-01-02T03:04:05Z".into());
    c.config.cmd = Some(vec!["/app/hello".into()]);
    c.rootfs.diff_ids = vec![d1, d2];
    c.history = vec![
        History {
            created_by: Some("ADD rootfs /".into()),
            ..History::default()
        },
        History {
            created_by: Some("ENV A=1".into()),
            empty_layer: true,
            ..History::default()
        },
        History {
            created_by: Some("COPY app /app".into()),
            ..History::default()
        },
    ];
    let ce = c.encode().unwrap();
    store.put_bytes(&ce.bytes).unwrap();
    let me = ImageManifest::new_oci(ce.descriptor, vec![l1, l2])
        .encode()
        .unwrap();
    store.put_bytes(&me.bytes).unwrap();
    me.descriptor.with_platform(&p)
}

fn index(store: &BlobStore) -> Descriptor {
    let a = image(store, "linux/amd64");
    let b = image(store, "linux/arm64");
    let e = ImageIndex::new_oci(vec![a, b]).encode().unwrap();
    store.put_bytes(&e.bytes).unwrap();
    e.descriptor
}

fn store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = BlobStore::open(dir.path().join("content")).unwrap();
    (dir, s)
}

fn skopeo(transport: &str, file: &Path, image: &str) -> Option<serde_json::Value> {
    if Command::new("skopeo").arg("--version").output().is_err() {
        eprintln!("skipping skopeo check: skopeo is not installed");
        return None;
    }
    let out = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("{transport}:{}{image}", file.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {transport} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out2 = Command::new("skopeo")
        .args(["inspect"])
        .arg(format!("{transport}:{}{image}", file.display()))
        .output()
        .unwrap();
    assert!(
        out2.status.success(),
        "skopeo inspect {transport} failed: {}",
        String::from_utf8_lossy(&out2.stderr)
    );
    Some(serde_json::from_slice(&out2.stdout).unwrap())
}

fn want_tag(name: &str) -> String {
    xbuild_oci::Reference::parse(name)
        .unwrap()
        .tag()
        .unwrap()
        .to_string()
}

fn config_of(store: &BlobStore, d: &Descriptor) -> (xbuild_oci::Digest, ImageConfig) {
    let Manifest::Image(m) = xbuild_oci::archive::read_manifest(store, d).unwrap() else {
        panic!("not a manifest")
    };
    let c = ImageConfig::from_slice(&store.read_to_vec(&m.config.digest).unwrap()).unwrap();
    (m.config.digest, c)
}

#[test]
fn oci_archive_single_and_index_round_trip() {
    let (dir, s) = store();
    let single = image(&s, "linux/amd64");
    let idx = index(&s);
    for (root, names) in [
        (&single, vec!["app:1.0".to_string()]),
        (
            &idx,
            vec![
                "localhost:5000/multi:2".to_string(),
                "multi:latest".to_string(),
            ],
        ),
    ] {
        let bytes = write_oci_archive(&s, root, &names, Vec::new()).unwrap();
        // Deterministic.
        let again = write_oci_archive(&s, root, &names, Vec::new()).unwrap();
        assert_eq!(bytes, again, "two writes of the same image differ");
        let file = dir.path().join("img.tar");
        fs::write(&file, &bytes).unwrap();
        let tag = want_tag(&names[0]);
        if let Some(v) = skopeo("oci-archive", &file, &format!(":{tag}")) {
            assert!(v["Layers"].as_array().unwrap().len() == 2, "{v}");
        }
        // Read back into an empty store: same digests, same names.
        let (_d2, s2) = store();
        let got = read_archive(Cursor::new(&bytes), &s2).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.digest, root.digest);
        let want: Vec<String> = names
            .iter()
            .map(|n| xbuild_oci::Reference::parse(n).unwrap().to_string())
            .collect();
        assert_eq!(got[0].1, want);
        let mut a: Vec<_> = xbuild_oci::archive::collect_blobs(&s, root)
            .unwrap()
            .into_iter()
            .collect();
        let mut b: Vec<_> = s2.list().unwrap();
        a.sort();
        b.sort();
        assert_eq!(a, b, "the read store holds exactly the image's blobs");
        // A gzip-compressed archive reads the same.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        let (_d3, s3) = store();
        let got3 = read_archive(Cursor::new(gz.finish().unwrap()), &s3).unwrap();
        assert_eq!(got3, got);
        // index.json annotations.
        let mut ar = tar::Archive::new(Cursor::new(&bytes));
        let mut idx_json = None;
        let mut paths = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            assert_eq!(e.header().mtime().unwrap(), 0);
            if p == "index.json" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut v).unwrap();
                idx_json = Some(v);
            }
            paths.push(p);
        }
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "entries are sorted");
        assert!(paths.contains(&"oci-layout".to_string()));
        let ij: ImageIndex = serde_json::from_slice(&idx_json.unwrap()).unwrap();
        assert_eq!(ij.manifests.len(), names.len());
        assert_eq!(
            ij.manifests[0].annotations[ANNOTATION_IMAGE_NAME],
            want[0].as_str()
        );
        assert_eq!(ij.manifests[0].annotations[ANNOTATION_REF_NAME], tag);
    }
}

#[test]
fn docker_archive_round_trip() {
    let (dir, s) = store();
    let idx = index(&s);
    // An index needs a platform.
    let err =
        write_docker_archive(&s, &[(idx.clone(), vec!["multi:1".into()])], Vec::new()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ArchiveError::MultiPlatform { .. })
            && msg.contains("linux/amd64")
            && msg.contains("linux/arm64"),
        "{msg}"
    );
    let arm = select_platform(&s, &idx, Some(&Platform::parse("linux/arm64").unwrap())).unwrap();
    let bytes =
        write_docker_archive(&s, &[(arm.clone(), vec!["multi:1".into()])], Vec::new()).unwrap();
    let again =
        write_docker_archive(&s, &[(arm.clone(), vec!["multi:1".into()])], Vec::new()).unwrap();
    assert_eq!(bytes, again);
    let file = dir.path().join("docker.tar");
    fs::write(&file, &bytes).unwrap();
    let (cdigest, config) = config_of(&s, &arm);
    if let Some(v) = skopeo("docker-archive", &file, "") {
        assert_eq!(v["Architecture"], "arm64", "{v}");
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2, "{v}");
    }
    // manifest.json as docker writes it.
    let mut ar = tar::Archive::new(Cursor::new(&bytes));
    let mut mj = None;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("manifest.json") {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            mj = Some(v);
        }
    }
    let mj: serde_json::Value = serde_json::from_slice(&mj.unwrap()).unwrap();
    assert_eq!(mj[0]["RepoTags"][0], "multi:1");
    assert_eq!(
        mj[0]["Config"],
        format!("blobs/sha256/{}", cdigest.hex()).as_str()
    );

    let (_d2, s2) = store();
    let got = read_archive(Cursor::new(&bytes), &s2).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, vec!["multi:1".to_string()]);
    let (cd2, c2) = config_of(&s2, &got[0].0);
    assert_eq!(cd2, cdigest);
    assert_eq!(c2.rootfs.diff_ids, config.rootfs.diff_ids);
    assert_eq!(got[0].0.digest, arm.digest, "the original manifest is kept");
}

#[test]
fn skopeo_copy_docker_archive_is_loadable() {
    // skopeo re-writes our docker archive as its own docker archive (layers
    // uncompressed, no OCI layout); reading that builds a fresh manifest
    // whose config and diffIDs must match.
    if Command::new("skopeo").arg("--version").output().is_err() {
        eprintln!("skipping: skopeo is not installed");
        return;
    }
    let (dir, s) = store();
    let img = image(&s, "linux/amd64");
    let (cdigest, config) = config_of(&s, &img);
    let src = dir.path().join("ours.tar");
    let dst = dir.path().join("theirs.tar");
    let bytes = write_docker_archive(&s, &[(img, vec!["app:1".into()])], Vec::new()).unwrap();
    fs::write(&src, bytes).unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("docker-archive:{}", src.display()))
        .arg(format!("docker-archive:{}:app:1", dst.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_d2, s2) = store();
    let got = read_archive(fs::File::open(&dst).unwrap(), &s2).unwrap();
    assert_eq!(got.len(), 1);
    // skopeo writes the full name.
    assert_eq!(got[0].1, vec!["docker.io/library/app:1".to_string()]);
    let (cd2, c2) = config_of(&s2, &got[0].0);
    assert_eq!(cd2, cdigest);
    assert_eq!(c2.rootfs.diff_ids, config.rootfs.diff_ids);
    let Manifest::Image(m) = xbuild_oci::archive::read_manifest(&s2, &got[0].0).unwrap() else {
        panic!()
    };
    assert!(m.layers.iter().all(|l| l.media_type == mt::OCI_LAYER_TAR));
}

fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        // set_path refuses `..`; write the raw name.
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn hostile_archives_are_refused() {
    let (_d, s) = store();
    for name in ["../evil", "blobs/../../evil", "/etc/passwd"] {
        let t = tar_with(&[(name, b"x")]);
        let err = read_archive(Cursor::new(t), &s).unwrap_err();
        assert!(matches!(err, ArchiveError::UnsafePath(_)), "{name}: {err}");
    }
    // A blob whose content does not match its name.
    let fake = format!("blobs/sha256/{}", "ab".repeat(32));
    let t = tar_with(&[(fake.as_str(), b"not that")]);
    let err = read_archive(Cursor::new(t), &s).unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    // Symlink escaping the archive.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "x/layer.tar", "../../outside")
        .unwrap();
    let err = read_archive(Cursor::new(b.into_inner().unwrap()), &s).unwrap_err();
    assert!(matches!(err, ArchiveError::UnsafePath(_)), "{err}");
    // Not an image archive.
    let t = tar_with(&[("hello.txt", b"hi")]);
    assert!(matches!(
        read_archive(Cursor::new(t), &s).unwrap_err(),
        ArchiveError::Unrecognized
    ));
    // manifest.json naming a file that is not there.
    let mj = br#"[{"Config":"c.json","RepoTags":["a:1"],"Layers":[]}]"#;
    let t = tar_with(&[("manifest.json", mj)]);
    assert!(matches!(
        read_archive(Cursor::new(t), &s).unwrap_err(),
        ArchiveError::MissingFile(_)
    ));
    // Nothing was left referenced: GC empties the store.
    gc(&s, &[]).unwrap();
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn gc_keeps_reachable_only() {
    let (_d, s) = store();
    let idx = index(&s);
    let single = image(&s, "linux/arm/v7");
    let junk = s.put_bytes(b"junk").unwrap();
    s.set_ref("docker.io/library/multi:latest", &idx.digest)
        .unwrap();
    let keep_extra = s.put_bytes(b"cache-only").unwrap();
    let all_idx = xbuild_oci::archive::collect_blobs(&s, &idx).unwrap();
    let st = gc(&s, std::slice::from_ref(&keep_extra)).unwrap();
    assert!(st.removed.contains(&junk));
    assert!(st.removed.contains(&single.digest));
    for d in all_idx.keys() {
        assert!(s.exists(d), "{d} was removed");
    }
    assert!(s.exists(&keep_extra));
    assert_eq!(st.blobs_kept as usize, all_idx.len() + 1);
    // Untag: everything goes.
    s.delete_ref("docker.io/library/multi:latest").unwrap();
    let st = gc(&s, &[]).unwrap();
    assert_eq!(st.blobs_kept, 0);
    assert!(s.list().unwrap().is_empty());
}
