//! One image-identifier rule (docs/guide/identifiers.md): `images` shows
//! the config digest (the index digest for a multi-platform image); `-q`,
//! `--iidfile`, the metadata file's `containerimage.digest` and the
//! summary show the manifest digest (the index digest for several
//! platforms). A push that fails adds no tag to the local store.

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use xbuild_e2e::{context, s, testbed, Xbuild};

/// The manifest (or index) and config digests of `image`, read back from
/// an OCI archive `xbuild save` writes: independent of the build's output.
fn saved_digests(xb: &Xbuild, image: &str) -> (String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    xb.run(&["save", "--format", "oci", "-o", s(&tar), image])
        .ok();
    let out = dir.path().join("x");
    std::fs::create_dir(&out).unwrap();
    let st = Command::new("tar")
        .args(["-xf", s(&tar), "-C", s(&out)])
        .status()
        .unwrap();
    assert!(st.success());
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let top = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = |d: &str| -> Value {
        let hex = d.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(out.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let doc = blob(&top);
    (top, doc)
}

/// The IMAGE ID `xbuild images --no-trunc` shows for `repo`.
fn image_id(xb: &Xbuild, repo: &str) -> String {
    let out = xb.run(&["images", "--no-trunc", repo]).ok().stdout;
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 1, "{out}");
    rows[0][2].to_string()
}

fn build(xb: &Xbuild, ctx: &Path, platforms: &str, tag: &str, dir: &Path) -> String {
    let iid = dir.join("iid");
    let meta = dir.join("meta.json");
    let run = xb
        .run(&[
            "build",
            "-q",
            "--platform",
            platforms,
            "-t",
            tag,
            "--iidfile",
            s(&iid),
            "--metadata-file",
            s(&meta),
            s(ctx),
        ])
        .ok();
    let printed = run.stdout.trim().to_string();
    assert!(
        printed.starts_with("sha256:") && printed.len() == 71,
        "{printed}"
    );
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), printed);
    let m: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.digest"], printed.as_str(), "{m}");
    printed
}

#[test]
fn images_shows_the_config_digest_and_builds_report_the_manifest_digest() {
    let xb = Xbuild::new();
    let ctx = context(&[("Dockerfile", "FROM scratch\nCOPY a /a\n"), ("a", "a\n")]);
    let dir = tempfile::tempdir().unwrap();

    // One platform: the manifest digest from the build, the config digest
    // in `images`.
    let printed = build(&xb, ctx.path(), "linux/amd64", "ident/one:1", dir.path());
    let (manifest, doc) = saved_digests(&xb, "ident/one:1");
    assert_eq!(printed, manifest);
    let config = doc["config"]["digest"].as_str().unwrap();
    assert_ne!(config, manifest);
    assert_eq!(image_id(&xb, "ident/one"), config);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["containerimage.config.digest"], config, "{meta}");
    // Either digest finds the image.
    for id in [&printed[..19], &config[..19]] {
        let h = xb.run(&["history", "-q", id]).ok();
        assert!(!h.stdout.trim().is_empty(), "{id}");
    }

    // Two platforms: the index digest everywhere.
    let printed = build(
        &xb,
        ctx.path(),
        "linux/amd64,linux/arm64",
        "ident/two:1",
        dir.path(),
    );
    let (index, doc) = saved_digests(&xb, "ident/two:1");
    assert!(
        doc["manifests"].as_array().is_some_and(|m| m.len() >= 2),
        "{doc}"
    );
    assert_eq!(printed, index);
    assert_eq!(image_id(&xb, "ident/two"), index);

    // The summary names the same digest as -q.
    let run = xb
        .run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "-t",
            "ident/one:2",
            s(ctx.path()),
        ])
        .ok();
    assert!(
        run.stderr.contains(&format!("image digest: {manifest}")),
        "{}",
        run.stderr
    );
}

#[test]
fn a_failed_push_adds_no_tag_and_names_the_reference_once() {
    let xb = Xbuild::new();
    let ctx = context(&[("Dockerfile", "FROM scratch\nCOPY a /a\n"), ("a", "b\n")]);
    let port = testbed::closed_port();
    let reference = format!("127.0.0.1:{port}/ident/pushed:1");
    let run = xb
        .run(&[
            "build",
            "--progress",
            "plain",
            "-t",
            &reference,
            "--push",
            s(ctx.path()),
        ])
        .failed();
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("cannot reach registry"),
        "{}",
        run.stderr
    );
    assert_eq!(errors[0].matches(&reference).count(), 1, "{}", errors[0]);
    let images = xb.run(&["images"]).ok();
    assert!(
        !images.stdout.contains("ident/pushed"),
        "a failed push left its tag:\n{}",
        images.stdout
    );
    // The same build without --push tags it (the blobs were kept).
    xb.run(&["build", "-q", "-t", &reference, s(ctx.path())])
        .ok();
    assert!(xb.run(&["images"]).ok().stdout.contains("ident/pushed"));
}

#[test]
fn an_unreachable_base_is_named_once() {
    let xb = Xbuild::new();
    let port = testbed::closed_port();
    let base = format!("127.0.0.1:{port}/ident/base:1");
    let ctx = context(&[
        ("Dockerfile", &format!("FROM {base}\nCOPY a /a\n")),
        ("a", "a"),
    ]);
    let run = xb
        .run(&["build", "--progress", "plain", s(ctx.path())])
        .failed();
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("cannot reach registry"),
        "{}",
        run.stderr
    );
    assert_eq!(errors[0].matches(&base).count(), 1, "{}", errors[0]);
}
