//! The headline command end to end: `xbuild --platform linux/amd64,linux/arm64
//! -t REF --push` against a real registry, with arm64 through QEMU, checked
//! by skopeo and by running the images with buildah.

use serde_json::Value;
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{
    buildah_run, context, index_platforms, publish_base, require_multiplatform, s, Xbuild,
};

fn hello_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello")
}

#[test]
fn demo_app_builds_pushes_runs_and_rebuilds_from_cache() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let tag = reg.reference("demo/hello:1.0");
    let meta = xb.root().join("meta.json");
    let build = |meta: &std::path::Path| {
        xb.run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            &tag,
            "--push",
            "--metadata-file",
            s(meta),
            s(&hello_dir()),
        ])
        .ok()
    };
    let first = build(&meta);
    assert!(first
        .stderr
        .contains("[linux/arm64 stage-1 2/5] RUN uname -m > /arch"));
    assert_eq!(first.cached_steps(), 0, "{}", first.stderr);

    // The registry holds an OCI index with both platforms.
    let raw = testbed::skopeo_inspect_raw(&tag).unwrap();
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(index_platforms(&raw), ["linux/amd64", "linux/arm64"]);
    // The metadata file names the digest skopeo sees for the tag.
    let m: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let raw_bytes = testbed::skopeo_inspect_raw_bytes(&tag, None).unwrap();
    let digest = testbed::sha256_digest(&raw_bytes).unwrap();
    assert_eq!(m["containerimage.digest"], digest.as_str());
    assert_eq!(m["image.name"], tag.as_str());

    // Each manifest's config says its architecture and carries the CMD.
    for entry in raw["manifests"].as_array().unwrap() {
        let arch = entry["platform"]["architecture"].as_str().unwrap();
        let by_digest = format!(
            "{}/demo/hello@{}",
            reg.host(),
            entry["digest"].as_str().unwrap()
        );
        let cfg = testbed::skopeo_inspect_config(&by_digest).unwrap();
        assert_eq!(cfg["architecture"], arch);
        // The metadata file's per-platform entry names the same manifest,
        // where it was built and how many steps ran.
        let per = &m["xbuild.platforms"][format!("linux/{arch}")];
        assert_eq!(per["digest"], entry["digest"], "{m}");
        assert_eq!(
            per["worker"],
            if arch == "amd64" { "local" } else { "qemu" }
        );
        assert_eq!(per["cached"], 0, "{m}");
        assert!(per["steps"].as_u64().unwrap() >= 6, "{m}");
        assert_eq!(cfg["config"]["WorkingDir"], "/app");
        assert_eq!(cfg["config"]["Cmd"][0], "sh");
    }

    // A third-party runtime runs both images; the arm64 one really ran its
    // RUN under arm64 emulation, the builder stage natively.
    if testbed::require_cmd("buildah").is_some() {
        let out = buildah_run(&tag, "arm64", "cat /arch /app/info.txt /app/arch");
        assert_eq!(
            out, "aarch64\nbuilt on linux/amd64 for linux/arm64\narm64\n",
            "arm64 image"
        );
        let out = buildah_run(&tag, "amd64", "cat /arch /app/info.txt /app/greeting.txt");
        assert!(
            out.starts_with("x86_64\nbuilt on linux/amd64 for linux/amd64\n"),
            "{out}"
        );
        assert!(out.contains("Greetings"), "{out}");
    }

    // Nothing changed: every step is a cache hit and the digest is the same.
    let meta2 = xb.root().join("meta2.json");
    let second = build(&meta2);
    assert_eq!(second.missed_steps(), 0, "{}", second.stderr);
    assert_eq!(second.cached_steps(), 18, "{}", second.stderr);
    let m2: Value = serde_json::from_slice(&std::fs::read(&meta2).unwrap()).unwrap();
    assert_eq!(m2["containerimage.digest"], m["containerimage.digest"]);

    // One context file changed: only the steps from that COPY on rebuild.
    let ctx = tempfile::tempdir().unwrap();
    for f in ["Dockerfile", "greeting.txt"] {
        std::fs::copy(hello_dir().join(f), ctx.path().join(f)).unwrap();
    }
    std::fs::write(ctx.path().join("greeting.txt"), "changed\n").unwrap();
    let third = xb
        .run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            &tag,
            "--push",
            s(ctx.path()),
        ])
        .ok();
    // Per platform: COPY greeting.txt, WORKDIR, CMD miss (3 of 9 steps).
    assert_eq!(third.missed_steps(), 6, "{}", third.stderr);
    if testbed::require_cmd("buildah").is_some() {
        assert_eq!(
            buildah_run(&tag, "arm64", "cat /app/greeting.txt"),
            "changed\n"
        );
    }
}

#[test]
fn a_failing_platform_fails_the_build_and_pushes_nothing() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base}\nRUN echo checking; test \"$(uname -m)\" = x86_64 || {{ echo \"not on $(uname -m)\"; exit 3; }}\nRUN echo ok\n"
        ),
    )]);
    let tag = reg.reference("demo/broken:1");
    let run = xb
        .run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &tag,
            "--push",
            s(ctx.path()),
        ])
        .failed();
    assert!(run.stderr.contains("not on aarch64"), "{}", run.stderr);
    assert!(
        run.stderr.contains("[linux/arm64 @ qemu]"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Dockerfile:2"), "{}", run.stderr);
    assert!(run.stderr.contains("exit code: 3"), "{}", run.stderr);
    assert!(run.stderr.contains("nothing was pushed"), "{}", run.stderr);
    // The tag does not exist: not even the amd64 image was pushed.
    assert!(testbed::skopeo_inspect_raw(&tag).is_err());
}

#[test]
fn a_missing_emulator_is_reported_before_any_step_runs() {
    if require_multiplatform().is_none() {
        return;
    }
    if std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-s390x").exists() {
        testbed::skip("an s390x handler is registered on this machine");
        return;
    }
    let xb = Xbuild::new();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM scratch\nCOPY tool /tool\nRUN [\"/tool\"]\n",
        ),
        ("tool", "not really a binary"),
    ]);
    let run = xb
        .run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/s390x",
            s(ctx.path()),
        ])
        .failed();
    assert!(run.stderr.contains("linux/s390x"), "{}", run.stderr);
    assert!(
        run.stderr.contains("xbuild binfmt install linux/s390x"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("COPY tool"),
        "a step ran: {}",
        run.stderr
    );
}

#[test]
fn docker_media_types_and_oci_archive_cover_every_platform() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN uname -m > /arch\n"),
    )]);
    let tag = reg.reference("demo/docker-types:1");
    let archive = xb.root().join("image-oci.tar");
    let run = xb
        .run(&[
            "build",
            "-q",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=image,name={tag},push=true,oci-mediatypes=false"),
            "-o",
            &format!("type=oci,dest={}", s(&archive)),
            s(ctx.path()),
        ])
        .ok();
    let raw = testbed::skopeo_inspect_raw(&tag).unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    for entry in raw["manifests"].as_array().unwrap() {
        assert_eq!(
            entry["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        let m = testbed::skopeo_inspect_raw(&format!(
            "{}/demo/docker-types@{}",
            reg.host(),
            entry["digest"].as_str().unwrap()
        ))
        .unwrap();
        assert_eq!(
            m["config"]["mediaType"],
            "application/vnd.docker.container.image.v1+json"
        );
        for l in m["layers"].as_array().unwrap() {
            assert_eq!(
                l["mediaType"],
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            );
        }
    }
    // -q printed the digest of what was pushed.
    let raw_bytes = testbed::skopeo_inspect_raw_bytes(&tag, None).unwrap();
    assert_eq!(
        run.stdout.trim(),
        testbed::sha256_digest(&raw_bytes).unwrap()
    );

    // The OCI archive holds both platforms; skopeo copies it whole into the
    // registry, and the copied index lists both platforms.
    let copied = reg.reference("demo/from-archive:1");
    testbed::run(std::process::Command::new("skopeo").args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci-archive:{}", s(&archive)),
        &format!("docker://{copied}"),
    ]))
    .unwrap();
    let raw = testbed::skopeo_inspect_raw(&copied).unwrap();
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
}

#[test]
fn imagetools_create_merges_per_platform_builds_without_pulling() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN uname -m > /arch\n"),
    )]);
    // What a release pipeline does: one runner per platform, then a merge.
    let mut digests = Vec::new();
    for arch in ["amd64", "arm64"] {
        let run = xb
            .run(&[
                "build",
                "-q",
                "--platform",
                &format!("linux/{arch}"),
                "-t",
                &reg.reference(&format!("ci/app:{arch}")),
                "--push",
                s(ctx.path()),
            ])
            .ok();
        digests.push(run.stdout.trim().to_string());
    }
    let target = reg.reference("release/app:1.0");
    let created = xb
        .run(&[
            "imagetools",
            "create",
            "-t",
            &target,
            &reg.reference("ci/app:amd64"),
            &reg.reference("ci/app:arm64"),
        ])
        .ok();
    let raw_bytes = testbed::skopeo_inspect_raw_bytes(&target, None).unwrap();
    assert_eq!(
        created.stdout.trim(),
        testbed::sha256_digest(&raw_bytes).unwrap()
    );
    let raw: Value = serde_json::from_slice(&raw_bytes).unwrap();
    let listed: Vec<&str> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed, digests,
        "the index lists the per-platform manifests as built"
    );
    assert_eq!(index_platforms(&raw), ["linux/amd64", "linux/arm64"]);
    // The manifests were copied into the new repository: it runs by itself.
    if testbed::require_cmd("buildah").is_some() {
        assert_eq!(buildah_run(&target, "arm64", "cat /arch"), "aarch64\n");
    }
    // `imagetools inspect` shows both platforms.
    let shown = xb.run(&["imagetools", "inspect", &target]).ok();
    assert!(
        shown.stdout.contains("Platform:  linux/amd64"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("Platform:  linux/arm64"),
        "{}",
        shown.stdout
    );
    let raw_shown = xb.run(&["imagetools", "inspect", "--raw", &target]).ok();
    assert_eq!(
        raw_shown.stdout.trim_end().as_bytes(),
        raw_bytes.trim_ascii_end()
    );

    // The same manifest named twice (directly and through the index) is one
    // entry, as buildx merges entries by digest.
    let twice = reg.reference("release/app:twice");
    xb.run(&[
        "imagetools",
        "create",
        "-t",
        &twice,
        &reg.reference("ci/app:amd64"),
        &target,
    ])
    .ok();
    let raw = testbed::skopeo_inspect_raw(&twice).unwrap();
    let listed: Vec<&str> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(listed, digests, "one entry per digest, first-seen order");
}
