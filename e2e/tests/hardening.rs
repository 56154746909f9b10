//! Hardening (issue #9), through the real binary: hostile tarballs given to
//! ADD and hostile base-image layers never create or change anything outside
//! the image root; context symlinks are copied as links; `COPY ../x` is
//! refused; broken Dockerfiles give a clear error with file:line, a non-zero
//! exit and no panic, in bounded time.

use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{context, publish_base, require_multiplatform, s, Xbuild};

/// A directory outside every root, with one file whose content, link count
/// and listing must not change.
struct Canary {
    dir: tempfile::TempDir,
}

const CANARY_TEXT: &str = "canary: must stay as it is\n";

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::Builder::new()
            .prefix("xb-canary-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("canary.txt"), CANARY_TEXT).unwrap();
        Canary { dir }
    }
    fn dir(&self) -> &str {
        s(self.dir.path())
    }
    fn file(&self) -> String {
        format!("{}/canary.txt", self.dir())
    }
    fn check(&self) {
        let names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["canary.txt"],
            "something was created in the canary dir"
        );
        let p = self.dir.path().join("canary.txt");
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert!(md.is_file(), "canary.txt was replaced");
        assert_eq!(md.nlink(), 1, "canary.txt got a hard link from an image");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            CANARY_TEXT,
            "canary.txt was written"
        );
    }
}

fn unique_tag() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}x{}", std::process::id(), t % 1_000_000_000)
}

/// Names the hostile layer tries to place at the extraction root or above.
fn escape_names(tag: &str) -> Vec<String> {
    let mut v: Vec<String> = (1..=12).map(|d| format!("esc{d}-{tag}")).collect();
    for n in [
        "dotesc",
        "abs",
        "absdot",
        "devesc",
        "blkesc",
        "fifoesc",
        "through",
        "through-up",
    ] {
        v.push(format!("{n}-{tag}"));
    }
    v
}

/// Every path below `dir` whose name contains `needle` (links not followed).
fn find_named(dir: &Path, needle: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().contains(needle) {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            find_named(&p, needle, out);
        }
    }
}

/// Nothing named after `tag` exists in any ancestor of `roots` (where
/// `../` and absolute names would land), and every file below the roots
/// named after `tag` sits below a directory holding `inside-<tag>`, i.e. in
/// an image root (or a copy of one).
fn check_contained(tag: &str, roots: &[&Path]) {
    let names = escape_names(tag);
    for r in roots {
        for a in r.ancestors().skip(1) {
            for n in &names {
                assert!(
                    std::fs::symlink_metadata(a.join(n)).is_err(),
                    "{} was created outside the image root",
                    a.join(n).display()
                );
            }
        }
        let mut found = Vec::new();
        find_named(r, tag, &mut found);
        let marker = format!("inside-{tag}");
        for f in found {
            let in_image = f
                .ancestors()
                .skip(1)
                .take_while(|a| a.starts_with(r))
                .any(|a| a.join(&marker).exists());
            assert!(in_image, "{} is outside any image root", f.display());
        }
    }
}

fn build_local(xb: &Xbuild, ctx: &Path, out: &Path) -> xbuild_e2e::Run {
    let dest = format!("type=local,dest={}", s(out));
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-o",
        &dest,
        s(ctx),
    ])
}

fn assert_no_panic(r: &xbuild_e2e::Run) {
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"),
        "xbuild panicked:\n{}",
        r.stderr
    );
}

#[test]
fn add_of_a_hostile_tarball_stays_inside_the_image() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let canary = Canary::new();
    let tag = unique_tag();
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nADD evil.tar /opt/evil/\nRUN ls -la /opt/evil > /listing.txt\n"),
    )]);
    std::fs::write(
        ctx.path().join("evil.tar"),
        testbed::hostile_layer(&tag, canary.dir(), &canary.file()),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = build_local(&xb, ctx.path(), out.path());
    assert_no_panic(&r);
    canary.check();
    check_contained(&tag, &[xb.root(), out.path(), ctx.path()]);
    // Docker extracts what it can, with names cleaned to the root.
    assert_eq!(r.code, 0, "{}", r.stderr);
    let evil = out.path().join("opt/evil");
    assert_eq!(
        std::fs::read_to_string(evil.join(format!("inside-{tag}"))).unwrap(),
        "inside\n"
    );
    assert!(
        evil.join(format!("esc1-{tag}")).is_file(),
        "../esc1 not cleaned into the root"
    );
    assert!(
        evil.join(format!("abs-{tag}")).is_file(),
        "/abs not placed in the root"
    );
    let f = std::fs::symlink_metadata(evil.join("evil-file")).unwrap();
    assert!(
        f.is_file(),
        "the symlink evil-file was not replaced by the file"
    );
    assert_eq!(
        std::fs::read_to_string(evil.join("evil-file")).unwrap(),
        "overwritten through a symlink\n"
    );

    // Hard links to files outside: refused (their target is not in the
    // archive), with the instruction and the entry named; nothing linked.
    std::fs::write(
        ctx.path().join("evil.tar"),
        testbed::hostile_hardlinks(&tag, canary.dir(), &canary.file()),
    )
    .unwrap();
    let r = build_local(&xb, ctx.path(), out.path());
    assert_no_panic(&r);
    canary.check();
    check_contained(&tag, &[xb.root(), out.path(), ctx.path()]);
    if r.code == 0 {
        // Linked inside the root instead: then it is a copy of nothing outside.
        assert!(!evil.join(format!("hard-rel-{tag}")).exists());
    } else {
        assert!(r.stderr.contains("Dockerfile:2"), "{}", r.stderr);
        assert!(r.stderr.contains("hardlink"), "{}", r.stderr);
    }
}

/// A base image whose layer holds the same tricks: pulling and applying it
/// stays inside the snapshot.
#[test]
fn a_hostile_base_image_layer_stays_inside_its_snapshot() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let canary = Canary::new();
    let tag = unique_tag();
    let layer = testbed::hostile_layer(&tag, canary.dir(), &canary.file());
    let image = reg.reference("e2e/hostile:1");
    push_single_layer_image(&layer, &image);

    let xb = Xbuild::new();
    let ctx = context(&[
        (
            "Dockerfile",
            &format!("FROM {image}\nCOPY hello.txt /hello.txt\n"),
        ),
        ("hello.txt", "hello\n"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let r = build_local(&xb, ctx.path(), out.path());
    assert_no_panic(&r);
    canary.check();
    check_contained(&tag, &[xb.root(), out.path()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(out.path().join(format!("inside-{tag}")).is_file());
    assert!(out.path().join(format!("esc3-{tag}")).is_file());
    assert_eq!(
        std::fs::read_to_string(out.path().join("hello.txt")).unwrap(),
        "hello\n"
    );
}

/// Writes a one-layer image (uncompressed layer) as an OCI layout and
/// copies it to `reference` with skopeo.
fn push_single_layer_image(layer: &[u8], reference: &str) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = testbed::sha256_digest(bytes).unwrap();
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        (d, bytes.len())
    };
    let (layer_digest, layer_size) = put(layer);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size}],
    });
    std::fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    testbed::run(
        Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}", s(dir.path())))
            .arg(format!("docker://{reference}")),
    )
    .unwrap();
}

/// Docker: symlinks in the context are sent as links; COPY copies the link,
/// never what it points to (inside or outside the context).
#[test]
fn context_symlinks_pointing_outside_are_copied_as_links() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let canary = Canary::new();
    let ctx = context(&[
        ("Dockerfile", &format!("FROM {base}\nCOPY . /ctx/\n")),
        ("plain.txt", "plain\n"),
    ]);
    let abs_file = canary.file();
    let rel_up = "../../../../../../../../etc/passwd";
    std::os::unix::fs::symlink(&abs_file, ctx.path().join("abs-link")).unwrap();
    std::os::unix::fs::symlink(rel_up, ctx.path().join("rel-link")).unwrap();
    std::os::unix::fs::symlink(canary.dir(), ctx.path().join("dirlink")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = build_local(&xb, ctx.path(), out.path());
    assert_no_panic(&r);
    canary.check();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = out.path().join("ctx");
    for (name, target) in [
        ("abs-link", abs_file.as_str()),
        ("rel-link", rel_up),
        ("dirlink", canary.dir()),
    ] {
        let md = std::fs::symlink_metadata(c.join(name)).unwrap();
        assert!(
            md.file_type().is_symlink(),
            "{name} was followed, not copied as a link"
        );
        assert_eq!(std::fs::read_link(c.join(name)).unwrap(), Path::new(target));
    }
    // A source path through a link is resolved inside the context (as if
    // the context were `/`), so `dirlink/` names a directory the context
    // does not have: an error naming the line, nothing copied from outside.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY dirlink/ /via-dir/\n"),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = build_local(&xb, ctx.path(), out.path());
    assert_no_panic(&r);
    canary.check();
    let mut found = Vec::new();
    find_named(out.path(), "canary.txt", &mut found);
    assert!(found.is_empty(), "outside files were copied: {found:?}");
    assert_ne!(
        r.code, 0,
        "COPY through a link out of the context succeeded"
    );
    assert!(r.stderr.contains("Dockerfile:2"), "{}", r.stderr);
}

#[test]
fn copy_from_outside_the_context_is_refused_with_file_and_line() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("secret.txt"), "outside the context\n").unwrap();
    let ctx = outer.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\n# the next line reaches out\nCOPY ../secret.txt /secret.txt\n"),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = build_local(&xb, &ctx, out.path());
    assert_no_panic(&r);
    assert_ne!(r.code, 0, "COPY ../secret.txt succeeded:\n{}", r.stderr);
    assert!(
        r.stderr.contains("Dockerfile:3"),
        "no file:line in:\n{}",
        r.stderr
    );
    assert!(!out.path().join("secret.txt").exists());
}

/// One broken Dockerfile: its text, extra flags, and what the error must
/// contain (`Dockerfile:N` for a line, or a phrase).
struct Bad {
    name: &'static str,
    text: Vec<u8>,
    flags: Vec<&'static str>,
    expect: Vec<String>,
}

fn bad(name: &'static str, text: impl Into<Vec<u8>>, expect: &[&str]) -> Bad {
    Bad {
        name,
        text: text.into(),
        flags: Vec::new(),
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

fn bad_corpus() -> Vec<Bad> {
    let mut v = vec![
        bad(
            "unterminated heredoc",
            "FROM scratch\nRUN <<EOF\necho hi\n",
            &["Dockerfile:2", "heredoc"],
        ),
        bad(
            "bad JSON form where JSON is required",
            "FROM scratch\nSHELL [\"/bin/sh\", \"-c\"\n",
            &["Dockerfile:2", "SHELL"],
        ),
        bad(
            "unknown flag",
            "FROM scratch\n\nCOPY --bogus=1 a /b\n",
            &["Dockerfile:3", "unknown flag: --bogus"],
        ),
        bad(
            "unknown instruction",
            "FROM scratch\nFROBNICATE x\n",
            &["Dockerfile:2", "unknown instruction"],
        ),
        bad(
            "stage index that is not defined yet",
            "FROM scratch AS a\nCOPY --from=3 /x /y\n",
            &["Dockerfile:2", "invalid stage index 3"],
        ),
        bad("empty file", "", &["Dockerfile:1", "no instructions"]),
        bad(
            "only comments",
            "# nothing\n# here\n",
            &["Dockerfile:", "no instructions"],
        ),
        bad(
            "instruction before FROM",
            "\n\nRUN true\nFROM scratch\n",
            &["Dockerfile:3", "FROM"],
        ),
        bad(
            "no FROM at all",
            "ARG A=1\nARG B\n",
            &["Dockerfile:2", "FROM"],
        ),
        bad(
            "binary garbage",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
                .collect::<Vec<u8>>(),
            &["Dockerfile:1", "UTF-8"],
        ),
        bad(
            "NUL bytes after a valid line",
            b"FROM scratch\nRUN a\0b\n\xff\xfe\n".to_vec(),
            &["Dockerfile:3", "UTF-8"],
        ),
        bad(
            "unterminated quote in a flag",
            "FROM scratch\nCOPY --chown=\"root a /b\n",
            &["Dockerfile:2"],
        ),
        bad(
            "bad variable expansion",
            "FROM scratch\nENV A=${B:?required}\n",
            &["Dockerfile:2", "required"],
        ),
        bad(
            "deeply nested expansion",
            format!(
                "FROM scratch\nENV A={}x{}\nBOGUS\n",
                "${A:-".repeat(20_000),
                "}".repeat(20_000)
            ),
            &["Dockerfile:3", "unknown instruction"],
        ),
    ];
    // A 50 MB file: valid comments, then an error on its last line.
    let line = format!("# {}\n", "x".repeat(98));
    let mut big = String::with_capacity(51 << 20);
    big.push_str("FROM scratch\n");
    for _ in 0..500_000 {
        big.push_str(&line);
    }
    big.push_str("BOGUS x\n");
    v.push(bad(
        "50 MB file",
        big,
        &["Dockerfile:500002", "unknown instruction"],
    ));
    // Deep continuation chains: 200,000 lines of one instruction.
    v.push(bad(
        "deep continuation chain into an unknown instruction",
        format!(
            "FROM scratch\nFROBNICATE \\\n{}end\n",
            "  a \\\n".repeat(200_000)
        ),
        &["Dockerfile:2", "unknown instruction"],
    ));
    v.push(bad(
        "deep continuation chain with a bad flag",
        format!(
            "FROM scratch\nCOPY \\\n{}--nope a b\n",
            "\\\n".repeat(200_000)
        ),
        &["Dockerfile:2", "unknown flag"],
    ));
    v.push(bad(
        "a 10 MB line",
        format!("FROM scratch\nFROBNICATE {}\n", "z".repeat(10 << 20)),
        &["Dockerfile:2", "unknown instruction"],
    ));
    let mut target = bad(
        "undefined target stage",
        "FROM scratch AS a\nCOPY x /x\n",
        &["target stage \"ghost\" could not be found", "stages: a"],
    );
    target.flags = vec!["--target", "ghost"];
    v.push(target);
    v
}

/// A corpus of broken Dockerfiles: each gives a clear error (file:line where
/// there is a line), a non-zero exit, no panic, a bounded error message and
/// bounded time. No registry is needed: nothing gets as far as a pull.
#[test]
fn broken_dockerfiles_fail_cleanly_with_file_and_line() {
    let xb = Xbuild::new();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("x"), "x\n").unwrap();
    let mut failures = Vec::new();
    for case in bad_corpus() {
        std::fs::write(ctx.path().join("Dockerfile"), &case.text).unwrap();
        let t0 = std::time::Instant::now();
        let mut args = vec!["build", "--progress", "plain", "--platform", "linux/amd64"];
        args.extend(case.flags.iter().copied());
        args.push(s(ctx.path()));
        let r = xb.run(&args);
        let took = t0.elapsed();
        let mut why = Vec::new();
        if r.code == 0 {
            why.push("exit 0".to_string());
        }
        if r.stderr.contains("panicked") || r.code == 101 || r.code < 0 {
            why.push(format!("crashed (exit {})", r.code));
        }
        for e in &case.expect {
            if !r.stderr.contains(e.as_str()) {
                why.push(format!("no {e:?} in the error"));
            }
        }
        if took > std::time::Duration::from_secs(20) {
            why.push(format!("took {took:?}"));
        }
        if r.stderr.len() > 16 * 1024 {
            why.push(format!("{} bytes of error output", r.stderr.len()));
        }
        if !why.is_empty() {
            let tail: String = r.stderr.chars().take(600).collect();
            failures.push(format!("{}: {}\n{tail}", case.name, why.join(", ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
