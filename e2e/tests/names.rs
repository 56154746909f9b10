//! File names and paths the way BuildKit treats them (issue #16, item 10):
//!
//! - a base image whose first layer has `lib -> usr/lib` and whose next
//!   layer has `lib/x.so`: the RUN step (overlayfs, or the copy
//!   snapshotter) and the `-o type=local` export show the same filesystem,
//!   `lib` a directory holding only `x.so`, as overlayfs stacks layers.

use std::fs;
use std::path::Path;
use xbuild_e2e::testbed;
use xbuild_e2e::{context, s, Xbuild};

fn host_platform() -> String {
    format!("linux/{}", testbed::host_arch())
}

/// The bytes of `l`'s tar, its sha256 and its size.
fn put_blob(blobs: &Path, bytes: &[u8]) -> (String, usize) {
    let d = testbed::sha256_digest(bytes).unwrap();
    fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
    (d, bytes.len())
}

/// Writes an OCI layout holding one image of the host's platform made of
/// the uncompressed tar `layers`, bottom first.
fn write_layout(dir: &Path, layers: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let descs: Vec<(String, usize)> = layers.iter().map(|l| put_blob(&blobs, l)).collect();
    let config = serde_json::json!({
        "architecture": testbed::host_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": descs.iter().map(|d| d.0.clone()).collect::<Vec<_>>()},
    });
    let (cd, cs) = put_blob(&blobs, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs.iter().map(|(d, n)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n,
        })).collect::<Vec<_>>(),
    });
    let (md, ms) = put_blob(&blobs, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}],
    });
    fs::write(dir.join("index.json"), index.to_string()).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn header(ty: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(ty);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h
}

/// The busybox root filesystem plus `usr/lib/a.so` and `lib -> usr/lib`.
fn base_layer(rootfs: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", rootfs).unwrap();
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0),
        "usr/lib/",
        std::io::empty(),
    )
    .unwrap();
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o644, 1),
        "usr/lib/a.so",
        &b"a"[..],
    )
    .unwrap();
    b.append_link(
        &mut header(tar::EntryType::Symlink, 0o777, 0),
        "lib",
        "usr/lib",
    )
    .unwrap();
    b.into_inner().unwrap()
}

/// `lib/x.so` through the name the base made a symlink, no `lib/` entry.
fn through_link_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o644, 1),
        "lib/x.so",
        &b"x"[..],
    )
    .unwrap();
    b.into_inner().unwrap()
}

/// The same report the RUN step writes, made from an exported tree.
fn report_of(root: &Path) -> String {
    let kind = if fs::symlink_metadata(root.join("lib"))
        .unwrap()
        .file_type()
        .is_symlink()
    {
        "link"
    } else {
        "dir"
    };
    let list = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(root.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v.join("\n")
    };
    format!("lib:{kind}\n{}\n--\n{}\n", list("lib"), list("usr/lib"))
}

/// Item 10, symlinked directory: a RUN step and `-o type=local` agree, and
/// both show what overlayfs (Docker, BuildKit, containerd) shows — the
/// later layer's `lib` directory hides the base's `lib -> usr/lib` link;
/// `usr/lib` keeps `a.so` and never receives `x.so`. Checked with the
/// overlayfs snapshotter and with the copy snapshotter.
#[test]
fn run_step_and_local_export_agree_on_a_directory_over_an_earlier_symlink() {
    if testbed::require_root().is_none() {
        return;
    }
    let Some(rootfs) = testbed::BusyboxRootfs::build_or_skip(testbed::host_arch()) else {
        return;
    };
    let layout = tempfile::tempdir().unwrap();
    write_layout(
        layout.path(),
        &[base_layer(rootfs.path()), through_link_layer()],
    );
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\n\
         RUN { if [ -L /lib ]; then echo lib:link; else echo lib:dir; fi; \
         ls -1 /lib; echo --; ls -1 /usr/lib; } > /view.txt\n",
    )]);
    let expected = "lib:dir\nx.so\n--\na.so\n";
    for snapshotter in ["auto", "copy"] {
        let xb = Xbuild::new();
        let out = tempfile::tempdir().unwrap();
        let r = xb.run_with(
            &[
                "build",
                "--progress",
                "plain",
                "--platform",
                &host_platform(),
                "--build-context",
                &format!("base=oci-layout://{}", s(layout.path())),
                "-o",
                &format!("type=local,dest={}", s(out.path())),
                s(ctx.path()),
            ],
            &[("XBUILD_SNAPSHOTTER", snapshotter)],
            None,
        );
        let r = r.ok();
        let seen = fs::read_to_string(out.path().join("view.txt")).unwrap();
        assert_eq!(seen, expected, "RUN view ({snapshotter}):\n{}", r.stderr);
        assert_eq!(
            report_of(out.path()),
            seen,
            "the exported filesystem differs from the RUN step's ({snapshotter})"
        );
        assert_eq!(fs::read(out.path().join("lib/x.so")).unwrap(), b"x");
        assert_eq!(fs::read(out.path().join("usr/lib/a.so")).unwrap(), b"a");
    }
}
