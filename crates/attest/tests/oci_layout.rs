//! The buildx attestation layout read by a third-party client: two
//! platform images with provenance and SBOM attestation manifests, written
//! as an OCI image-layout archive, then read with `skopeo` (index, the
//! platform an image resolves to, a full `copy --all`) and the SBOM it
//! copied checked with `pyspdxtools`. Skips, saying why, only when skopeo
//! is not installed.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};
use xbuild_attest::bundle;
use xbuild_attest::layout::{self, AttestationBlob};
use xbuild_attest::provenance::{self, BuildRecord, Material, Mode, PredicateOptions};
use xbuild_attest::sbom::{self, spdx::DocumentOptions, ScanOptions, SpdxDocument};
use xbuild_oci::descriptor::encode;
use xbuild_oci::layer::{write_layer, WriteOptions};
use xbuild_oci::media_types as mt;
use xbuild_oci::{BlobStore, Descriptor, Digest, ImageIndex, ImageManifest, Platform, Reference};

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A small root filesystem with a dpkg database, a Python dist-info and an
/// npm package, for `arch`.
fn rootfs(dir: &Path, arch: &str) {
    let w = |p: &str, s: &str| {
        let path = dir.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, s).unwrap();
    };
    w(
        "etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
    );
    w(
        "var/lib/dpkg/status",
        &format!(
            "Package: base-files\nStatus: install ok installed\nPriority: required\nSection: admin\nMaintainer: Santiago Vila <sanvila@debian.org>\nArchitecture: {arch}\nVersion: 12.4+deb12u5\nDescription: Debian base system miscellaneous files\n\nPackage: zlib1g\nStatus: install ok installed\nMaintainer: Mark Brown <broonie@debian.org>\nArchitecture: {arch}\nMulti-Arch: same\nSource: zlib\nVersion: 1:1.2.13.dfsg-1\nDescription: compression library - runtime\n"
        ),
    );
    w(
        "usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA",
        "Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\nSummary: Python 2 and 3 compatibility utilities\nHome-page: https://github.com/benjaminp/six\nAuthor: Benjamin Peterson\nAuthor-email: benjamin@python.org\nLicense: MIT\n\nSix is a Python 2 and 3 compatibility library.\n",
    );
    w(
        "usr/lib/node_modules/ms/package.json",
        r#"{"name":"ms","version":"2.1.3","description":"Tiny millisecond conversion utility","license":"MIT"}"#,
    );
}

struct Built {
    manifest: Descriptor,
    platform: Platform,
}

fn image(store: &BlobStore, arch: &str) -> Built {
    let t = tempfile::tempdir().unwrap();
    rootfs(t.path(), arch);
    let mut buf = Vec::new();
    let (out, _) = write_layer(t.path(), &mut buf, &WriteOptions::default()).unwrap();
    store.put_bytes(&buf).unwrap();
    let platform = Platform::parse(&format!("linux/{arch}")).unwrap();
    let config = serde_json::json!({
        "architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [out.diff_id.to_string()]}
    });
    let cfg = encode(&config, mt::OCI_CONFIG).unwrap();
    store.put_bytes(&cfg.bytes).unwrap();
    let m = ImageManifest::new_oci(cfg.descriptor, vec![out.descriptor()])
        .encode()
        .unwrap();
    store.put_bytes(&m.bytes).unwrap();
    Built {
        manifest: m.descriptor.with_platform(&platform),
        platform,
    }
}

fn attestations(store: &BlobStore, b: &Built) -> (Vec<AttestationBlob>, SpdxDocument) {
    let tags = vec![Reference::parse("localhost:5000/app:1").unwrap()];
    let subjects = provenance::image_subjects(&tags, &b.platform, &b.manifest.digest);
    let mut rec = BuildRecord::new(
        b.platform.clone(),
        "Dockerfile",
        b"FROM debian:12\n".to_vec(),
    );
    rec.invocation_id = "inv-1".into();
    rec.materials.push(Material::Image {
        reference: Reference::parse("debian:12").unwrap(),
        platform: Some(b.platform.clone()),
        digest: Some(Digest::sha256_of(b"debian")),
        local: false,
    });
    let opts = PredicateOptions {
        mode: Mode::Max,
        ..Default::default()
    };
    let m = ImageManifest::from_slice(&store.read_to_vec(&b.manifest.digest).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layers: Vec<_> = m
        .layers
        .iter()
        .map(|l| store.open_blob(&l.digest).unwrap())
        .collect();
    let scan = sbom::scan_layers(layers, dir.path(), &ScanOptions::default()).unwrap();
    let doc = SpdxDocument::build(
        &scan,
        &DocumentOptions {
            name: format!("localhost:5000/app:1 {}", b.platform),
            created: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            tool: "xbuild-test".into(),
            generator: None,
        },
    );
    let blobs = vec![
        bundle::provenance_blob(&rec, subjects.clone(), &opts).unwrap(),
        bundle::sbom_blob(&doc, subjects).unwrap(),
    ];
    (blobs, doc)
}

#[test]
fn skopeo_reads_the_buildx_layout() {
    if !have("skopeo") {
        eprintln!("skipped: skopeo is not installed (scripts/setup.sh installs it)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = BlobStore::open(t.path().join("store")).unwrap();
    let built = [image(&store, "amd64"), image(&store, "arm64")];
    let mut atts = Vec::new();
    let mut docs = Vec::new();
    for b in &built {
        let (blobs, doc) = attestations(&store, b);
        let a = layout::buildx_attestation(&b.manifest, blobs, false).unwrap();
        for (_, bytes) in a.blobs() {
            store.put_bytes(bytes).unwrap();
        }
        store.put_bytes(&a.manifest.bytes).unwrap();
        atts.push(a);
        docs.push(doc);
    }
    // The SBOM lists exactly what the root filesystem's databases list.
    let mut purls: Vec<&str> = docs[1].purls();
    purls.sort();
    assert_eq!(
        purls,
        vec![
            "pkg:deb/debian/base-files@12.4%2Bdeb12u5?arch=arm64&distro=debian-12",
            "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=arm64&distro=debian-12&upstream=zlib",
            "pkg:npm/ms@2.1.3",
            "pkg:pypi/six@1.16.0",
        ]
    );
    let idx = ImageIndex::new_oci(built.iter().map(|b| b.manifest.clone()).collect());
    let idx = layout::index_with_attestations(&idx, &atts)
        .encode()
        .unwrap();
    store.put_bytes(&idx.bytes).unwrap();
    let archive = t.path().join("image.tar");
    let f = fs::File::create(&archive).unwrap();
    xbuild_oci::archive::write_oci_archive(
        &store,
        &idx.descriptor,
        &["localhost:5000/app:1".to_string()],
        f,
    )
    .unwrap();
    let src = format!("oci-archive:{}", archive.display());

    // The index as skopeo reads it: two platforms, two attestation manifests
    // pointing at them.
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", &src])
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let ms = v["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 4);
    for (i, b) in built.iter().enumerate() {
        let a = &ms[2 + i];
        assert_eq!(a["platform"]["os"], "unknown");
        assert_eq!(
            a["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );
        assert_eq!(
            a["annotations"]["vnd.docker.reference.digest"],
            b.manifest.digest.as_str()
        );
        assert_eq!(ms[i]["digest"], b.manifest.digest.as_str());
    }
    // Resolving for a platform still picks the real image.
    let arm = Command::new("skopeo")
        .args([
            "--override-arch",
            "arm64",
            "--override-os",
            "linux",
            "inspect",
            &src,
        ])
        .output()
        .unwrap();
    assert!(
        arm.status.success(),
        "{}",
        String::from_utf8_lossy(&arm.stderr)
    );
    let av: serde_json::Value = serde_json::from_slice(&arm.stdout).unwrap();
    assert_eq!(av["Architecture"], "arm64");
    // (skopeo reports the digest of what the reference names: the index.)
    assert_eq!(av["Digest"], idx.descriptor.digest.as_str());

    // A full copy carries the attestation manifests and their statements.
    let out = t.path().join("copy");
    let cp = Command::new("skopeo")
        .args(["copy", "--all", &src])
        .arg(format!("oci:{}:app", out.display()))
        .output()
        .unwrap();
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    for a in &atts {
        let m = out
            .join("blobs/sha256")
            .join(a.manifest.descriptor.digest.hex());
        assert!(m.exists(), "attestation manifest not copied");
        for l in &a.layers {
            let p = out.join("blobs/sha256").join(l.descriptor.digest.hex());
            let copied = fs::read(&p).expect("statement copied");
            assert_eq!(copied, l.bytes);
        }
    }
    // The copied SBOM statement's predicate passes pyspdxtools.
    if Command::new("pyspdxtools").arg("--help").output().is_ok() {
        let sbom_layer = &atts[0].layers[1];
        let st: serde_json::Value = serde_json::from_slice(&sbom_layer.bytes).unwrap();
        let f = t.path().join("sbom.spdx.json");
        fs::write(&f, serde_json::to_vec(&st["predicate"]).unwrap()).unwrap();
        let o = Command::new("pyspdxtools")
            .arg("-i")
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    } else {
        eprintln!("pyspdxtools not installed: SBOM validation part skipped");
    }
}
