//! The copy snapshotter (the fallback where overlayfs cannot be mounted)
//! against the overlay one: the same builds must give the same layers,
//! byte for byte (needs root: the sandbox, and overlayfs for the reference).

mod common;

use std::collections::BTreeSet;
use std::io::Read;

use common::*;
use xbuild_engine::image::{export_rootfs, read_config, read_manifest};
use xbuild_engine::{Engine, Secrets, Snapshotter, SolveResult};
use xbuild_oci::Digest;

const DOCKERFILE: &str = r#"FROM busybox:test AS builder
RUN mkdir -p /out/sub && echo built > /out/artifact && ln -s artifact /out/link && echo s > /out/sub/s

FROM busybox:test
WORKDIR /app
COPY hello.txt /app/
COPY --from=builder /out/ /app/out/
RUN echo new > /app/new.txt \
 && echo extra >> /etc/passwd \
 && rm /etc/group \
 && rm -r /home/app \
 && chmod 1777 /home \
 && ln -s /app/new.txt /app/new.link \
 && ln /app/hello.txt /app/hello.hard \
 && ln /bin/busybox /app/bb \
 && mkdir -p /var/tmp/x && rm -r /var/tmp/x
RUN chmod 600 /app/new.txt && ln -sf /etc/passwd /app/out/link
RUN --mount=type=bind,from=builder,source=/out,target=/mnt cp /mnt/artifact /app/from_bind
RUN --mount=type=bind,source=hello.txt,target=/ctx/hello.txt,rw sh -c 'echo scribble >> /ctx/hello.txt && cp /ctx/hello.txt /app/ctx_copy'
RUN --mount=type=cache,target=/cache sh -c 'echo x >> /cache/c && cp /cache/c /app/cached'
RUN --mount=type=secret,id=tok grep -q '^s3cr3t' /run/secrets/tok && echo ok > /app/secret_ok
RUN rm -r /app/out && mkdir /app/out && echo replaced > /app/out/file
RUN true
WORKDIR /app/sub/dir
"#;

const SDE: i64 = 1_700_000_000;

fn context_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(d.path().join("hello.txt"), "hello\n").unwrap();
    d
}

/// An engine of the given kind with the base image, or `None` (skipped).
fn setup(root: &std::path::Path, kind: Snapshotter) -> Option<Engine> {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return None;
    }
    let eng = engine_with(root, Some(kind));
    assert_eq!(eng.snapshotter(), kind);
    let p = native();
    make_base(eng.store(), p.architecture(), &p, BASE)?;
    Some(eng)
}

async fn build(eng: &Engine, src: &str, ctx: &std::path::Path) -> SolveResult {
    let mut secrets = Secrets::new();
    secrets.insert("tok", b"s3cr3t-value".to_vec());
    let graph = plan(eng.store(), src, &native());
    let (r, ev) = solve(
        eng,
        &graph,
        Some(ctx),
        Opts {
            secrets: Some(&secrets),
            sde: Some(SDE),
            ..Default::default()
        },
    )
    .await;
    r.unwrap_or_else(|e| panic!("{e}\n{}", logs(&ev)))
}

/// Layer digests and diffIDs of an image.
fn layers(eng: &Engine, r: &SolveResult) -> (Vec<Digest>, Vec<Digest>) {
    let m = read_manifest(eng.store(), &r.manifest.digest).unwrap();
    let cfg = read_config(eng.store(), &m.config.digest).unwrap();
    (
        m.layers.iter().map(|l| l.digest.clone()).collect(),
        cfg.rootfs.diff_ids,
    )
}

/// The entry names of a layer blob.
fn entries(eng: &Engine, layer: &Digest) -> BTreeSet<String> {
    let raw = std::fs::read(eng.store().path_of(layer)).unwrap();
    let mut tar_bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut ar = tar::Archive::new(tar_bytes.as_slice());
    ar.entries()
        .unwrap()
        .map(|e| {
            String::from_utf8_lossy(&e.unwrap().path_bytes())
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_overlay_give_identical_layers() {
    let (ro, rc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let Some(overlay) = setup(ro.path(), Snapshotter::Overlay) else {
        return;
    };
    let Some(copy) = setup(rc.path(), Snapshotter::Copy) else {
        return;
    };
    if Snapshotter::probe(&ro.path().join("mounts")).unwrap() != Snapshotter::Overlay {
        eprintln!("SKIPPED: overlayfs cannot be mounted here, nothing to compare with");
        return;
    }
    let ctx = context_dir();
    let ro_img = build(&overlay, DOCKERFILE, ctx.path()).await;
    let rc_img = build(&copy, DOCKERFILE, ctx.path()).await;
    let (od, oi) = layers(&overlay, &ro_img);
    let (cd, ci) = layers(&copy, &rc_img);
    assert_eq!(od[0], cd[0], "the two stores have the same base image");
    // base + WORKDIR + 2 COPY + 7 RUN with changes + the empty layer of
    // `RUN true` (BuildKit gives every RUN a layer) + WORKDIR.
    assert_eq!(od.len(), 13);
    for i in 0..od.len() {
        assert_eq!(
            entries(&copy, &cd[i]),
            entries(&overlay, &od[i]),
            "entries of layer {i}"
        );
    }
    for i in 0..od.len() {
        if ci[i] != oi[i] {
            eprintln!(
                "LAYER {i}\nCOPY\n{}\nOVERLAY\n{}",
                detail(&copy, &cd[i]),
                detail(&overlay, &od[i])
            );
        }
    }
    assert_eq!(ci, oi, "diffIDs");
    assert_eq!(cd, od, "layer digests");
    assert_eq!(rc_img.manifest.digest, ro_img.manifest.digest);
    // The context was not written through the rw bind.
    assert_eq!(
        std::fs::read_to_string(ctx.path().join("hello.txt")).unwrap(),
        "hello\n"
    );

    // What the copy snapshotter built is right, not just equal.
    let out = tempfile::tempdir().unwrap();
    export_rootfs(copy.store(), &rc_img.manifest, out.path()).unwrap();
    let o = out.path();
    let read = |p: &str| std::fs::read_to_string(o.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("app/new.txt"), "new\n");
    assert!(read("etc/passwd").ends_with("extra\n"));
    assert!(!o.join("etc/group").exists());
    assert!(!o.join("home/app").exists());
    assert_eq!(read("app/from_bind"), "built\n");
    assert_eq!(read("app/ctx_copy"), "hello\nscribble\n");
    assert_eq!(read("app/cached"), "x\n");
    assert_eq!(read("app/secret_ok"), "ok\n");
    assert_eq!(read("app/out/file"), "replaced\n");
    assert!(!o.join("app/out/artifact").exists());
    assert!(o.join("app/sub/dir").is_dir());
    assert!(!o.join("mnt/artifact").exists() && !o.join("run/secrets/tok").exists());
    use std::os::unix::fs::MetadataExt;
    let home = std::fs::metadata(o.join("home")).unwrap();
    assert_eq!(home.mode() & 0o7777, 0o1777);
    let new = std::fs::metadata(o.join("app/new.txt")).unwrap();
    assert_eq!(new.mode() & 0o7777, 0o600);
    let hello = std::fs::metadata(o.join("app/hello.txt")).unwrap();
    let hard = std::fs::metadata(o.join("app/hello.hard")).unwrap();
    assert_eq!(hard.ino(), hello.ino(), "the hardlink survived");

    let run = &cd[4]; // the first RUN of the final stage
    let names = entries(&copy, run);
    for n in [
        "etc/.wh.group",
        "home/.wh.app",
        "app/new.txt",
        "app/bb",
        "bin/busybox",
    ] {
        assert!(names.contains(n), "{n} missing from {names:#?}");
    }
    let replaced = entries(&copy, &cd[10]);
    assert!(
        replaced.contains("app/out/.wh..wh..opq"),
        "a recreated directory is opaque: {replaced:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_snapshotter_whiteouts_cache_and_cleanup() {
    let root = tempfile::tempdir().unwrap();
    let Some(eng) = setup(root.path(), Snapshotter::Copy) else {
        return;
    };
    let src = "FROM busybox:test\nRUN rm /etc/group && mkdir -p /d/sub && echo 1 > /d/sub/f\nRUN test ! -e /etc/group && rm -r /d/sub && mkdir /d/sub\nRUN true\n";
    let ctx = context_dir();
    let r = build(&eng, src, ctx.path()).await;
    let (d, _) = layers(&eng, &r);
    assert_eq!(d.len(), 4, "`RUN true` makes an empty layer, as BuildKit");
    let first = entries(&eng, &d[1]);
    assert!(first.contains("etc/.wh.group"), "{first:#?}");
    assert!(first.contains("d/sub/f"), "{first:#?}");
    let second = entries(&eng, &d[2]);
    assert!(second.contains("d/sub/.wh..wh..opq"), "{second:#?}");
    let out = tempfile::tempdir().unwrap();
    export_rootfs(eng.store(), &r.manifest, out.path()).unwrap();
    assert!(!out.path().join("etc/group").exists());
    assert!(out.path().join("d/sub").is_dir());
    assert!(!out.path().join("d/sub/f").exists());

    // Cached the second time, same image.
    let again = build(&eng, src, ctx.path()).await;
    assert_eq!(again.cached, again.steps);
    assert_eq!(again.manifest.digest, r.manifest.digest);

    // A failing RUN leaves no scratch copies behind.
    let graph = plan(
        eng.store(),
        "FROM busybox:test\nRUN echo x > /x; exit 4\n",
        &native(),
    );
    let (r, _) = solve(&eng, &graph, None, Opts::default()).await;
    assert!(r.unwrap_err().to_string().contains("exit code: 4"));
    for d in ["tmp", "mounts"] {
        let left: Vec<_> = std::fs::read_dir(root.path().join(d))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "{d}: {left:?}");
    }
}

fn detail(eng: &Engine, layer: &Digest) -> String {
    let raw = std::fs::read(eng.store().path_of(layer)).unwrap();
    let mut tar_bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut ar = tar::Archive::new(tar_bytes.as_slice());
    let mut out = String::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let x: Vec<String> = match e.pax_extensions().unwrap() {
            Some(it) => it
                .map(|p| {
                    let p = p.unwrap();
                    format!(
                        "{}={:?}",
                        p.key().unwrap(),
                        String::from_utf8_lossy(p.value_bytes())
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        out += &format!(
            "{} {:?} {:o} {}:{} {} {} {:?} {:?}\n",
            String::from_utf8_lossy(&e.path_bytes()),
            h.entry_type(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mtime().unwrap(),
            h.size().unwrap(),
            e.link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned()),
            x
        );
    }
    out
}
