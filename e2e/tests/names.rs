//! File names and paths the way BuildKit treats them (issue #16, item 10):
//!
//! - a base image whose first layer has `lib -> usr/lib` and whose next
//!   layer has `lib/x.so`: the RUN step (overlayfs, or the copy
//!   snapshotter) and the `-o type=local` export show the same filesystem,
//!   `lib` a directory holding only `x.so`, as overlayfs stacks layers;
//! - context files and directories whose names are not UTF-8 are copied
//!   with their exact bytes, cached like any other, excluded by
//!   `.dockerignore` like any other, and give the same image when the
//!   build runs on a node (the context travels to it in JSON messages).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
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

/// The busybox root filesystem alone.
fn busybox_layer(rootfs: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", rootfs).unwrap();
    b.into_inner().unwrap()
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

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// Every entry of every layer of the single image in the OCI archive
/// `tar_path`, by its exact name bytes: (kind, link target, content).
type LayerEntries = BTreeMap<Vec<u8>, (char, Vec<u8>, Vec<u8>)>;

fn oci_archive_entries(tar_path: &Path) -> LayerEntries {
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut ar = tar::Archive::new(fs::File::open(tar_path).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        blobs.insert(name, data);
    }
    let json = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&blobs[name]).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let mut m = json("index.json");
    while m["manifests"].is_array() {
        let d = m["manifests"][0]["digest"].as_str().unwrap().to_string();
        m = json(&blob(&d));
    }
    let mut out = LayerEntries::new();
    for l in m["layers"].as_array().unwrap() {
        let bytes = &blobs[&blob(l["digest"].as_str().unwrap())];
        let raw: Box<dyn std::io::Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::GzDecoder::new(&bytes[..]))
        } else {
            Box::new(&bytes[..])
        };
        let mut ar = tar::Archive::new(raw);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path_bytes().into_owned();
            let kind = match e.header().entry_type() {
                tar::EntryType::Directory => 'd',
                tar::EntryType::Symlink => 'l',
                _ => 'f',
            };
            let target = e
                .link_name_bytes()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            let name = name.strip_suffix(b"/").map(<[u8]>::to_vec).unwrap_or(name);
            out.insert(name, (kind, target, data));
        }
    }
    out
}

/// Plain progress on stderr must be text: no raw bytes of a name and no
/// private-use escapes; returns it.
fn assert_clean_text(stderr: &[u8]) -> String {
    let text = std::str::from_utf8(stderr).unwrap_or_else(|e| {
        panic!(
            "raw bytes reached the terminal ({e}):\n{}",
            String::from_utf8_lossy(stderr)
        )
    });
    assert!(
        !text.chars().any(|c| ('\u{F780}'..='\u{F7FF}').contains(&c)),
        "escaped names reached the terminal:\n{text}"
    );
    text.to_string()
}

/// Item 10, non-UTF-8 names: `COPY . /ctx/` of a context holding a
/// Latin-1 file name (`caf\xe9.txt`), a directory and a file inside it
/// with invalid UTF-8 names, and a link to the Latin-1 name, as BuildKit
/// does (byte names); a non-UTF-8 name excluded by `.dockerignore` stays
/// out. The rebuild is cached, a content change is a miss, and the same
/// build on a node (the context sent in JSON messages) gives the same
/// image digest.
#[test]
fn non_utf8_context_names_are_copied_byte_for_byte() {
    if testbed::require_root().is_none() {
        return;
    }
    let ctx = context(&[
        ("Dockerfile", "FROM scratch\nCOPY . /ctx/\n"),
        ("plain.txt", "plain\n"),
        (".dockerignore", "Dockerfile\n.dockerignore\nexcluded*\n"),
    ]);
    let c = ctx.path();
    fs::write(c.join(os(b"caf\xe9.txt")), "latin-1 v1\n").unwrap();
    fs::create_dir(c.join(os(b"d\xff\xfe"))).unwrap();
    fs::write(c.join(os(b"d\xff\xfe")).join(os(b"in\xe9")), "inner\n").unwrap();
    std::os::unix::fs::symlink(os(b"caf\xe9.txt"), c.join(os(b"l\xe9"))).unwrap();
    fs::write(c.join(os(b"excluded\xff.bin")), "never\n").unwrap();

    let xb = Xbuild::new();
    let platform = host_platform();
    let build = |xb: &Xbuild, out: &str, meta: Option<&Path>, env: &[(&str, &str)]| {
        let mut cmd = xb.command();
        cmd.args([
            "build",
            "--progress",
            "plain",
            "--platform",
            &platform,
            "-o",
            out,
        ]);
        if let Some(m) = meta {
            cmd.arg("--metadata-file").arg(m);
        }
        cmd.arg(c).env("SOURCE_DATE_EPOCH", "1700000000");
        cmd.envs(env.iter().copied());
        let o = cmd.output().unwrap();
        let text = assert_clean_text(&o.stderr);
        assert!(o.status.success(), "xbuild failed:\n{text}");
        text
    };
    let cached = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with('#') && l.ends_with(" CACHED"))
            .count()
    };

    // 1. The exported filesystem has the exact names and contents.
    let out = tempfile::tempdir().unwrap();
    let first = build(
        &xb,
        &format!("type=local,dest={}", s(out.path())),
        None,
        &[],
    );
    let o = out.path().join("ctx");
    assert_eq!(
        fs::read(o.join(os(b"caf\xe9.txt"))).unwrap(),
        b"latin-1 v1\n"
    );
    assert!(fs::symlink_metadata(o.join(os(b"d\xff\xfe")))
        .unwrap()
        .is_dir());
    assert_eq!(
        fs::read(o.join(os(b"d\xff\xfe")).join(os(b"in\xe9"))).unwrap(),
        b"inner\n"
    );
    assert_eq!(
        fs::read_link(o.join(os(b"l\xe9")))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"caf\xe9.txt"
    );
    let mut names: Vec<Vec<u8>> = fs::read_dir(&o)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            b"caf\xe9.txt".to_vec(),
            b"d\xff\xfe".to_vec(),
            b"l\xe9".to_vec(),
            b"plain.txt".to_vec()
        ],
        "excluded or missing names:\n{first}"
    );

    // 2. Rebuilt: the COPY is cached; the layer holds the byte names.
    let local_tar = tempfile::tempdir().unwrap();
    let a_tar = local_tar.path().join("a.tar");
    let ma = local_tar.path().join("a.json");
    let second = build(&xb, &format!("type=oci,dest={}", s(&a_tar)), Some(&ma), &[]);
    assert_eq!(cached(&second), 1, "{second}");
    let entries = oci_archive_entries(&a_tar);
    assert_eq!(
        entries[&b"ctx/caf\xe9.txt"[..]],
        ('f', Vec::new(), b"latin-1 v1\n".to_vec())
    );
    assert_eq!(entries[&b"ctx/d\xff\xfe"[..]].0, 'd');
    assert_eq!(entries[&b"ctx/d\xff\xfe/in\xe9"[..]].2, b"inner\n");
    assert_eq!(
        entries[&b"ctx/l\xe9"[..]],
        ('l', b"caf\xe9.txt".to_vec(), Vec::new())
    );
    assert!(!entries.keys().any(|k| k.starts_with(b"ctx/excluded")));
    let meta =
        |p: &Path| -> serde_json::Value { serde_json::from_slice(&fs::read(p).unwrap()).unwrap() };
    let local_digest = meta(&ma)["containerimage.digest"]
        .as_str()
        .unwrap()
        .to_string();

    // 3. The same build on a node: same image.
    let node = Xbuild::new();
    let agent_root = tempfile::tempdir().unwrap();
    let spec = format!("{platform}=names1:{}", s(agent_root.path()));
    let b_tar = local_tar.path().join("b.tar");
    let mb = local_tar.path().join("b.json");
    let remote = build(
        &node,
        &format!("type=oci,dest={}", s(&b_tar)),
        Some(&mb),
        &[("XBUILD_LOCAL_AGENT", spec.as_str())],
    );
    let m = meta(&mb);
    assert_eq!(
        m["xbuild.platforms"][&platform]["worker"], "node names1",
        "{remote}"
    );
    assert_eq!(
        m["containerimage.digest"],
        local_digest.as_str(),
        "{remote}"
    );
    assert_eq!(oci_archive_entries(&b_tar), entries);

    // 4. A changed content is a miss, and the new bytes are exported.
    fs::write(c.join(os(b"caf\xe9.txt")), "latin-1 v2\n").unwrap();
    let out2 = tempfile::tempdir().unwrap();
    let third = build(
        &xb,
        &format!("type=local,dest={}", s(out2.path())),
        None,
        &[],
    );
    assert_eq!(cached(&third), 0, "{third}");
    // The explanation names the file, lossily (U+FFFD for the byte).
    assert!(
        third.contains("context files changed: caf\u{FFFD}.txt"),
        "{third}"
    );
    assert_eq!(
        fs::read(out2.path().join("ctx").join(os(b"caf\xe9.txt"))).unwrap(),
        b"latin-1 v2\n"
    );
}

/// Item 10, non-UTF-8 names in `RUN --mount=type=bind` of the context: the
/// step sees the names with their bytes (what `.dockerignore` excludes is
/// not there), and its key follows the files (a content change reruns it).
#[test]
fn a_bind_mounted_context_shows_non_utf8_names() {
    if testbed::require_root().is_none() {
        return;
    }
    let Some(rootfs) = testbed::BusyboxRootfs::build_or_skip(testbed::host_arch()) else {
        return;
    };
    let layout = tempfile::tempdir().unwrap();
    write_layout(layout.path(), &[busybox_layer(rootfs.path())]);
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM base\n\
             RUN --mount=type=bind,target=/c cd /c && for f in *; do echo \"$f\"; done > /names.txt \\
             && cat /c/caf* > /content.txt\n",
        ),
        (".dockerignore", "Dockerfile\n.dockerignore\n*.bin\n"),
    ]);
    let c = ctx.path();
    fs::write(c.join(os(b"caf\xe9.txt")), "v1\n").unwrap();
    fs::create_dir(c.join(os(b"d\xff"))).unwrap();
    fs::write(c.join(os(b"no\xfe.bin")), "excluded\n").unwrap();
    let xb = Xbuild::new();
    let run = |out: &Path| {
        xb.run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            &host_platform(),
            "--build-context",
            &format!("base=oci-layout://{}", s(layout.path())),
            "-o",
            &format!("type=local,dest={}", s(out)),
            s(c),
        ])
        .ok()
    };
    let out = tempfile::tempdir().unwrap();
    run(out.path());
    assert_eq!(
        fs::read(out.path().join("names.txt")).unwrap(),
        b"caf\xe9.txt\nd\xff\n"
    );
    assert_eq!(fs::read(out.path().join("content.txt")).unwrap(), b"v1\n");
    let again = run(tempfile::tempdir().unwrap().path());
    assert_eq!(again.cached_steps(), 1, "{}", again.stderr);
    fs::write(c.join(os(b"caf\xe9.txt")), "v2\n").unwrap();
    let out3 = tempfile::tempdir().unwrap();
    let third = run(out3.path());
    assert_eq!(third.cached_steps(), 0, "{}", third.stderr);
    assert_eq!(fs::read(out3.path().join("content.txt")).unwrap(), b"v2\n");
}
