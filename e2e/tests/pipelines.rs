//! Release pipelines: the exact argument vectors docker/metadata-action and
//! docker/build-push-action hand to `docker buildx build` (and the documented
//! multi-runner merge with `imagetools create`), given to `xbuild` instead,
//! against a real registry, a real `git daemon` and skopeo.
//!
//! The argument order follows build-push-action's `getArgs`: build flags
//! (add-host, allow, annotation, build-arg, build-context, cache-from,
//! cache-to, file, iidfile, label, output, platform, attest, secret, tag),
//! then the common ones (builder, load, metadata-file, network, no-cache,
//! pull, push), then the context. Labels and annotations are
//! metadata-action's eight `org.opencontainers.image.*` keys, sorted, with
//! its default annotation level `manifest` (or `manifest,index`).

use serde_json::Value;
use std::path::PathBuf;
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{
    context, git, image_files, index_platforms, publish_host_base, pushed_digest,
    require_multiplatform, s, GitDaemon, Xbuild,
};

const REPO: &str = "acme/widget";
const SHA: &str = "3b5a0c7e2f1d4c6b8a9e0f1d2c3b4a5968778695";
const RUN_URL: &str = "https://github.com/acme/widget/actions/runs/4242/attempts/1";

/// metadata-action's OCI keys for a `v1.2.3` tag push, sorted by key.
fn oci_keys() -> Vec<(String, String)> {
    let mut v = vec![
        (
            "org.opencontainers.image.created",
            "2026-12-05T06:00:00.000Z",
        ),
        // An empty repository description gives an empty value.
        ("org.opencontainers.image.description", ""),
        ("org.opencontainers.image.licenses", "Apache-2.0"),
        ("org.opencontainers.image.revision", SHA),
        (
            "org.opencontainers.image.source",
            "https://github.com/acme/widget",
        ),
        ("org.opencontainers.image.title", "widget"),
        (
            "org.opencontainers.image.url",
            "https://github.com/acme/widget",
        ),
        ("org.opencontainers.image.version", "1.2.3"),
    ];
    v.sort();
    v.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The inputs of build-push-action this file uses.
#[derive(Default)]
struct Inputs {
    annotations: Vec<String>,
    build_args: Vec<String>,
    cache_from: Vec<String>,
    cache_to: Vec<String>,
    iidfile: Option<PathBuf>,
    labels: Vec<String>,
    outputs: Vec<String>,
    platforms: Vec<String>,
    provenance: bool,
    tags: Vec<String>,
    load: bool,
    metadata_file: Option<PathBuf>,
    push: bool,
    context: String,
}

/// build-push-action's argument vector (`docker buildx` dropped).
fn bpa_args(i: &Inputs) -> Vec<String> {
    let mut a: Vec<String> = vec!["build".into()];
    for x in &i.annotations {
        a.extend(["--annotation".into(), x.clone()]);
    }
    for x in &i.build_args {
        a.extend(["--build-arg".into(), x.clone()]);
    }
    for x in &i.cache_from {
        a.extend(["--cache-from".into(), x.clone()]);
    }
    for x in &i.cache_to {
        a.extend(["--cache-to".into(), x.clone()]);
    }
    if let Some(f) = &i.iidfile {
        a.extend(["--iidfile".into(), s(f).to_string()]);
    }
    for x in &i.labels {
        a.extend(["--label".into(), x.clone()]);
    }
    for x in &i.outputs {
        a.extend(["--output".into(), x.clone()]);
    }
    if !i.platforms.is_empty() {
        a.extend(["--platform".into(), i.platforms.join(",")]);
    }
    // The default provenance attestation of a public repository.
    if i.provenance && !i.load {
        a.extend([
            "--attest".into(),
            format!("type=provenance,mode=max,builder-id={RUN_URL}"),
        ]);
    }
    for x in &i.tags {
        a.extend(["--tag".into(), x.clone()]);
    }
    if i.load {
        a.push("--load".into());
    }
    if let Some(f) = &i.metadata_file {
        a.extend(["--metadata-file".into(), s(f).to_string()]);
    }
    if i.push {
        a.push("--push".into());
    }
    a.push(i.context.clone());
    a
}

/// The platforms of an index's image manifests (attestations left out).
fn image_platforms(raw: &Value) -> Vec<String> {
    index_platforms(raw)
        .into_iter()
        .filter(|p| p != "unknown/unknown")
        .collect()
}

fn labels() -> Vec<String> {
    oci_keys().iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn annotations(levels: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for l in levels {
        for (k, v) in oci_keys() {
            out.push(format!("{l}:{k}={v}"));
        }
    }
    out
}

/// The image manifests (not attestations) a reference names, with digests.
fn image_manifests(reg: &Registry, repo: &str, reference: &str) -> Vec<(String, Value)> {
    let raw = testbed::skopeo_inspect_raw(reference).unwrap();
    if raw["manifests"].is_array() {
        raw["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["platform"]["os"] != "unknown")
            .map(|m| {
                let d = m["digest"].as_str().unwrap().to_string();
                let r = format!("{}/{repo}@{d}", reg.host());
                (d, testbed::skopeo_inspect_raw(&r).unwrap())
            })
            .collect()
    } else {
        vec![(pushed_digest(reference), raw)]
    }
}

#[test]
fn tag_push_with_metadata_action_labels_and_annotations() {
    if testbed::require_root().is_none() || testbed::require_cmd("skopeo").is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN echo built > /built\n"),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let iid = tmp.path().join("iidfile");
    let meta = tmp.path().join("metadata-file");
    let tags: Vec<String> = ["1.2.3", "1.2", "latest"]
        .iter()
        .map(|t| reg.reference(&format!("{REPO}:{t}")))
        .collect();
    let args = bpa_args(&Inputs {
        annotations: annotations(&["manifest"]),
        iidfile: Some(iid.clone()),
        labels: labels(),
        provenance: true,
        tags: tags.clone(),
        metadata_file: Some(meta.clone()),
        push: true,
        context: s(ctx.path()).to_string(),
        ..Default::default()
    });
    xb.run(&args).ok();

    // The iidfile and the metadata file name the digest the registry serves.
    let digest = pushed_digest(&tags[0]);
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), digest);
    let m: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.digest"], digest.as_str(), "{m}");
    for t in &tags {
        assert_eq!(pushed_digest(t), digest, "{t}");
    }
    // Labels in the config, annotations on the image manifest(s).
    for (d, manifest) in image_manifests(&reg, REPO, &tags[0]) {
        let cfg = testbed::skopeo_inspect_config(&format!("{}/{REPO}@{d}", reg.host())).unwrap();
        for (k, v) in oci_keys() {
            assert_eq!(cfg["config"]["Labels"][&k], v.as_str(), "label {k}: {cfg}");
            assert_eq!(manifest["annotations"][&k], v.as_str(), "annotation {k}");
        }
    }
}

#[test]
fn multi_platform_push_with_manifest_and_index_annotations() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = xbuild_e2e::publish_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN uname -m > /arch\n"),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let iid = tmp.path().join("iidfile");
    let tag = reg.reference(&format!("{REPO}:multi"));
    let mut ann = annotations(&["manifest", "index"]);
    ann.push("manifest[linux/arm64]:com.example.arch=arm".into());
    ann.push("manifest-descriptor:com.example.desc=yes".into());
    let args = bpa_args(&Inputs {
        annotations: ann,
        iidfile: Some(iid.clone()),
        labels: labels(),
        platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
        tags: vec![tag.clone()],
        push: true,
        context: s(ctx.path()).to_string(),
        ..Default::default()
    });
    xb.run(&args).ok();
    let raw = testbed::skopeo_inspect_raw(&tag).unwrap();
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), pushed_digest(&tag));
    for (k, v) in oci_keys() {
        assert_eq!(raw["annotations"][&k], v.as_str(), "index annotation {k}");
    }
    for entry in raw["manifests"].as_array().unwrap() {
        if entry["platform"]["os"] == "unknown" {
            continue;
        }
        assert_eq!(entry["annotations"]["com.example.desc"], "yes", "{entry}");
        let arch = entry["platform"]["architecture"].as_str().unwrap();
        let d = entry["digest"].as_str().unwrap();
        let m = testbed::skopeo_inspect_raw(&format!("{}/{REPO}@{d}", reg.host())).unwrap();
        assert_eq!(
            m["annotations"]["org.opencontainers.image.version"],
            "1.2.3"
        );
        let want = if arch == "arm64" {
            Value::from("arm")
        } else {
            Value::Null
        };
        assert_eq!(m["annotations"]["com.example.arch"], want, "{arch}");
    }
}

#[test]
fn git_context_build_like_the_default_build_push_action_context() {
    if testbed::require_root().is_none()
        || testbed::require_cmd("skopeo").is_none()
        || testbed::require_cmd("git").is_none()
    {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    // The repository: a Dockerfile at the root and one in a sub-directory.
    let served = tempfile::tempdir().unwrap();
    let work = served.path().join("widget");
    std::fs::create_dir_all(work.join("sub")).unwrap();
    std::fs::write(work.join("Dockerfile"), "FROM scratch\nCOPY . /src/\n").unwrap();
    std::fs::write(work.join("hello.txt"), "from git\n").unwrap();
    std::fs::write(
        work.join("sub/Dockerfile"),
        "FROM scratch\nCOPY note /note\n",
    )
    .unwrap();
    std::fs::write(work.join("sub/note"), "sub-directory\n").unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    git(
        served.path(),
        &["clone", "-q", "--bare", "widget", "widget.git"],
    );
    let daemon = GitDaemon::start(served.path());
    let url = format!("git://127.0.0.1:{}/widget.git", daemon.port);

    let xb = Xbuild::new();
    let tmp = tempfile::tempdir().unwrap();
    let iid = tmp.path().join("iidfile");
    // The action's default context: the repository pinned to the commit.
    let tag = reg.reference(&format!("{REPO}:git"));
    let args = bpa_args(&Inputs {
        iidfile: Some(iid.clone()),
        labels: labels(),
        tags: vec![tag.clone()],
        push: true,
        context: format!("{url}#{sha}"),
        ..Default::default()
    });
    xb.run(&args).ok();
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), pushed_digest(&tag));
    let files = image_files(&tag);
    assert_eq!(files["src/hello.txt"], b"from git\n");
    assert!(
        !files.keys().any(|k| k.starts_with("src/.git")),
        "no .git by default: {:?}",
        files.keys()
    );
    // The same commit twice, on another runner, gives the same image
    // (every mtime is the commit's).
    let again = reg.reference(&format!("{REPO}:git-again"));
    let fresh = Xbuild::new();
    let args = bpa_args(&Inputs {
        labels: labels(),
        tags: vec![again.clone()],
        push: true,
        context: format!("{url}#{sha}"),
        ..Default::default()
    });
    fresh.run(&args).ok();
    // Same layer bytes (the config's history times differ without
    // SOURCE_DATE_EPOCH, as for any build).
    let layers = |r: &str| testbed::skopeo_inspect_raw(r).unwrap()["layers"].clone();
    assert_eq!(layers(&again), layers(&tag));

    // The query form with a checksum and a sub-directory.
    let sub = reg.reference(&format!("{REPO}:sub"));
    xb.run(&[
        "build",
        "-q",
        "-t",
        &sub,
        "--push",
        &format!("{url}?ref=refs/heads/main&checksum={sha}&subdir=sub"),
    ])
    .ok();
    assert_eq!(image_files(&sub)["note"], b"sub-directory\n");
    // A checksum that does not match the ref is refused.
    let bad = xb
        .run(&[
            "build",
            "-q",
            &format!("{url}?ref=main&checksum=0000000000000000000000000000000000000000"),
        ])
        .failed();
    assert!(
        bad.stderr.contains("expected checksum to match"),
        "{}",
        bad.stderr
    );
    // BUILDKIT_CONTEXT_KEEP_GIT_DIR keeps .git in the context.
    let kept = reg.reference(&format!("{REPO}:kept"));
    xb.run(&[
        "build",
        "-q",
        "--build-arg",
        "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1",
        "-t",
        &kept,
        "--push",
        &format!("{url}#main"),
    ])
    .ok();
    assert!(image_files(&kept).contains_key("src/.git/HEAD"));

    // ADD <git URL> with --checksum and --keep-git-dir.
    let add_ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM scratch\nADD --checksum={sha} {url}#main /a/\nADD --keep-git-dir=true {url}#main:sub /b/\n"
        ),
    )]);
    let added = reg.reference(&format!("{REPO}:add"));
    xb.run(&["build", "-q", "-t", &added, "--push", s(add_ctx.path())])
        .ok();
    let f = image_files(&added);
    assert_eq!(f["a/hello.txt"], b"from git\n");
    assert!(!f.keys().any(|k| k.starts_with("a/.git")));
    assert_eq!(f["b/note"], b"sub-directory\n");
    let wrong = context(&[(
        "Dockerfile",
        &format!("FROM scratch\nADD --checksum=0123456789abcdef {url}#main /a/\n"),
    )]);
    let run = xb.run(&["build", "-q", s(wrong.path())]).failed();
    assert!(
        run.stderr.contains("expected checksum to match"),
        "{}",
        run.stderr
    );
}

#[test]
fn tarball_context_over_http() {
    if testbed::require_root().is_none() || testbed::require_cmd("skopeo").is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    // A context tarball served once from 127.0.0.1.
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        (
            "Dockerfile",
            &b"FROM scratch\nCOPY greeting /greeting\n"[..],
        ),
        ("greeting", b"hi from a tarball\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    }
    let body = b.into_inner().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        if let Ok((mut sock, _)) = listener.accept() {
            let mut r = BufReader::new(sock.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                sock,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(&body);
        }
    });
    let xb = Xbuild::new();
    let tag = reg.reference(&format!("{REPO}:tarball"));
    xb.run(&[
        "build",
        "-q",
        "-t",
        &tag,
        "--push",
        &format!("http://127.0.0.1:{port}/context.tar"),
    ])
    .ok();
    server.join().unwrap();
    assert_eq!(image_files(&tag)["greeting"], b"hi from a tarball\n");
}

#[test]
fn multi_runner_push_by_digest_then_imagetools_create() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = xbuild_e2e::publish_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN uname -m > /arch\n"),
    )]);
    let image = reg.reference(REPO).trim_end_matches(":latest").to_string();
    let image = image
        .split_once('@')
        .map_or(image.clone(), |(a, _)| a.to_string());
    let tmp = tempfile::tempdir().unwrap();
    // One runner per platform, as in Docker's "distribute build across
    // multiple runners" workflow: push by digest, no tag.
    let mut digests = Vec::new();
    for platform in ["linux/amd64", "linux/arm64"] {
        let meta = tmp
            .path()
            .join(format!("meta-{}", platform.replace('/', "-")));
        let args = bpa_args(&Inputs {
            labels: labels(),
            outputs: vec![format!(
                "type=image,\"name={image}\",push-by-digest=true,name-canonical=true,push=true"
            )],
            platforms: vec![platform.into()],
            provenance: true,
            metadata_file: Some(meta.clone()),
            context: s(ctx.path()).to_string(),
            ..Default::default()
        });
        xb.run(&args).ok();
        let m: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        let d = m["containerimage.digest"].as_str().unwrap().to_string();
        // Pushed by digest: the digest exists, and no tag was written.
        assert_eq!(pushed_digest(&format!("{image}@{d}")), d);
        digests.push(d);
    }
    let tags = testbed::skopeo_list_tags_or_empty(&image);
    assert!(tags.is_empty(), "push-by-digest wrote tags: {tags:?}");

    // The merge job: tags from metadata-action, sources by digest.
    let tag = format!("{image}:1.2.3");
    let latest = format!("{image}:latest");
    let mut merge: Vec<String> = vec![
        "imagetools".into(),
        "create".into(),
        "-t".into(),
        tag.clone(),
        "-t".into(),
        latest.clone(),
        "--annotation".into(),
        "index:org.opencontainers.image.version=1.2.3".into(),
    ];
    merge.extend(digests.iter().map(|d| format!("{image}@{d}")));
    // --dry-run prints the index and pushes nothing.
    let mut dry = merge.clone();
    dry.push("--dry-run".into());
    let shown = xb.run(&dry).ok();
    let dry_index: Value = serde_json::from_str(shown.stdout.trim()).unwrap();
    assert_eq!(
        dry_index["annotations"]["org.opencontainers.image.version"],
        "1.2.3"
    );
    assert!(testbed::skopeo_inspect_raw(&tag).is_err(), "dry run pushed");
    let created = xb.run(&merge).ok();
    let digest = pushed_digest(&tag);
    assert_eq!(created.stdout.trim(), digest);
    assert_eq!(pushed_digest(&latest), digest);
    let raw = testbed::skopeo_inspect_raw(&tag).unwrap();
    assert_eq!(image_platforms(&raw), ["linux/amd64", "linux/arm64"]);
    // With the action's default provenance, each runner's attestation
    // manifest is carried into the merged index.
    let att = index_platforms(&raw)
        .iter()
        .filter(|p| *p == "unknown/unknown")
        .count();
    assert_eq!(att, 2, "{raw}");
    assert_eq!(
        raw["annotations"]["org.opencontainers.image.version"],
        "1.2.3"
    );

    // The workflow's last step: inspect with a template.
    let v = xb
        .run(&[
            "imagetools",
            "inspect",
            &tag,
            "--format",
            "{{.Manifest.Digest}}",
        ])
        .ok();
    assert_eq!(v.stdout.trim(), digest);
    let v = xb
        .run(&[
            "imagetools",
            "inspect",
            &tag,
            "--format",
            "{{json .Manifest}}",
        ])
        .ok();
    let j: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(j["digest"], digest.as_str());
    assert_eq!(
        j["manifests"].as_array().unwrap().len(),
        raw["manifests"].as_array().unwrap().len()
    );
    let v = xb
        .run(&["imagetools", "inspect", &tag, "--format", "{{json .Image}}"])
        .ok();
    let j: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(j["linux/arm64"]["architecture"], "arm64", "{j}");
    assert_eq!(
        j["linux/amd64"]["config"]["Labels"]["org.opencontainers.image.revision"],
        SHA
    );
    xb.run(&[
        "imagetools",
        "inspect",
        &tag,
        "--format",
        "{{range .Manifest}}x{{end}}",
    ])
    .failed();

    // --append adds a platform build later without losing the others; the
    // same manifest named again is one entry.
    let appended = xb
        .run(&[
            "imagetools",
            "create",
            "--append",
            "-t",
            &tag,
            &format!("{image}@{}", digests[0]),
        ])
        .ok();
    assert_eq!(appended.stdout.trim(), pushed_digest(&tag));
    let raw2 = testbed::skopeo_inspect_raw(&tag).unwrap();
    assert_eq!(image_platforms(&raw2), ["linux/amd64", "linux/arm64"]);
    assert_eq!(
        index_platforms(&raw2),
        index_platforms(&raw),
        "nothing added twice"
    );
    // -f FILE: a descriptor from a file.
    let desc_file = tmp.path().join("desc.json");
    let amd = &raw["manifests"][0];
    std::fs::write(&desc_file, serde_json::to_vec(amd).unwrap()).unwrap();
    let from_file = format!("{image}:from-file");
    xb.run(&[
        "imagetools",
        "create",
        "-t",
        &from_file,
        "-f",
        s(&desc_file),
    ])
    .ok();
    let raw3 = testbed::skopeo_inspect_raw(&from_file).unwrap();
    assert_eq!(image_platforms(&raw3), ["linux/amd64"]);
}

#[test]
fn cache_to_and_from_registry_between_runners() {
    if testbed::require_root().is_none() || testbed::require_cmd("skopeo").is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN echo one > /one\nRUN echo two > /two\n"),
    )]);
    let cache = reg.reference(&format!("{REPO}:buildcache"));
    let tag = reg.reference(&format!("{REPO}:cached"));
    let args = || {
        bpa_args(
            &Inputs {
                cache_from: vec![format!("type=registry,ref={cache}")],
                cache_to: vec![format!(
                    "type=registry,ref={cache},mode=max,image-manifest=true,oci-mediatypes=true,ignore-error=true"
                )],
                labels: labels(),
                tags: vec![tag.clone()],
                push: true,
                context: s(ctx.path()).to_string(),
                ..Default::default()
            })
    };
    let mut first_args = args();
    first_args.insert(1, "--progress=plain".into());
    let first = xb.run(&first_args).ok();
    assert_eq!(first.cached_steps(), 0, "{}", first.stderr);
    // image-manifest=true: the tag is an OCI image manifest (not an index)
    // whose config is xbuild's cache records blob.
    let raw = testbed::skopeo_inspect_raw(&cache).unwrap();
    assert_eq!(
        raw["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{raw}"
    );
    assert_eq!(
        raw["config"]["mediaType"],
        "application/vnd.xbuild.cache.records.v1+json"
    );

    // Another runner (empty state) gets every step from the registry cache.
    let other = Xbuild::new();
    let mut second_args = args();
    second_args.insert(1, "--progress=plain".into());
    let second = other.run(&second_args).ok();
    assert_eq!(second.cached_steps(), 2, "{}", second.stderr);
    assert_eq!(second.missed_steps(), 0, "{}", second.stderr);

    // A cache registry that is down does not fail the build with ignore-error.
    let down = format!("127.0.0.1:{}/x/cache:c", testbed::closed_port());
    other
        .run(&[
            "build",
            "-q",
            "--cache-to",
            &format!("type=registry,ref={down},ignore-error=true"),
            s(ctx.path()),
        ])
        .ok();
    // GitHub's cache backend is refused with a way out.
    let gha = other
        .run(&[
            "build",
            "-q",
            "--cache-to",
            "type=gha,mode=max",
            s(ctx.path()),
        ])
        .failed();
    assert!(gha.stderr.contains("type=registry"), "{}", gha.stderr);
}

#[test]
fn load_keeps_the_image_locally_and_says_where() {
    if testbed::require_root().is_none() {
        return;
    }
    let xb = Xbuild::new();
    let ctx = context(&[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")]);
    let tmp = tempfile::tempdir().unwrap();
    let iid = tmp.path().join("iidfile");
    let args = bpa_args(&Inputs {
        iidfile: Some(iid.clone()),
        labels: labels(),
        tags: vec!["acme/widget:local".into()],
        load: true,
        context: s(ctx.path()).to_string(),
        ..Default::default()
    });
    let run = xb.run_with(&args, &[("XBUILD_LOAD", "none")], None).ok();
    assert!(
        run.stderr.contains("xbuild's image store"),
        "{}",
        run.stderr
    );
    let images = xb.run(&["images", "acme/widget"]).ok();
    assert!(images.stdout.contains("local"), "{}", images.stdout);
    let id = std::fs::read_to_string(&iid).unwrap();
    assert!(id.starts_with("sha256:"), "{id}");
    // Asking for a runtime that is not there fails the build.
    let run = xb
        .run_with(
            &args,
            &[("XBUILD_LOAD", "podman"), ("PATH", "/nonexistent")],
            None,
        )
        .failed();
    assert!(run.stderr.contains("podman"), "{}", run.stderr);
    // `-o type=tar` writes the root filesystem as a tar.
    let out = tmp.path().join("fs.tar");
    xb.run(&[
        "build",
        "-q",
        "-o",
        &format!("type=tar,dest={}", s(&out)),
        s(ctx.path()),
    ])
    .ok();
    let mut ar = tar::Archive::new(std::fs::File::open(&out).unwrap());
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.trim_start_matches("./") == "Dockerfile"),
        "{names:?}"
    );
}
