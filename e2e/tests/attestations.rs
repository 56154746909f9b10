//! Attestations (issue #19) end to end: a two-platform build on a base
//! whose root filesystem has a dpkg database, a Python dist-info and an npm
//! package, pushed with `--sbom=true --provenance=mode=max` to a real
//! registry, read back by third-party tools: skopeo (index, attestation
//! manifests, a full copy), pyspdxtools (the SPDX documents), dpkg-query,
//! pip and npm (the package lists, on the image's exported filesystem), and
//! the jsonschema package (the provenance against the in-toto Statement and
//! SLSA v1 schemas). Then the OCI 1.1 referrers layout, local outputs,
//! `imagetools inspect --format`, `xbuild attestations`, and a build with a
//! secret whose value is in no attestation.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{context, publish_base, require_multiplatform, s, Xbuild};

const SECRET: &str = "tok-9f3Kq2-attest-never";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/attest/tests/data")
        .join(name)
}

fn tool(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The build context: a Dockerfile over BASE that copies a root
/// filesystem with three package databases and uses a secret.
fn app_context() -> tempfile::TempDir {
    let status = "Package: base-files\nStatus: install ok installed\nPriority: required\nSection: admin\nInstalled-Size: 340\nMaintainer: Santiago Vila <sanvila@debian.org>\nArchitecture: all\nVersion: 12.4+deb12u5\nDescription: Debian base system miscellaneous files\n\nPackage: tzdata\nStatus: install ok installed\nPriority: required\nSection: localization\nMaintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>\nArchitecture: all\nVersion: 2024a-0+deb12u1\nDescription: time zone and daylight-saving time data\n\nPackage: removed-pkg\nStatus: deinstall ok config-files\nArchitecture: all\nVersion: 1.0\nDescription: left only its configuration\n";
    context(&[
        (
            "Dockerfile",
            "ARG BASE\nFROM ${BASE}\nCOPY rootfs/ /\nRUN --mount=type=secret,id=token test -s /run/secrets/token && echo ok > /built\n",
        ),
        ("rootfs/etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n"),
        ("rootfs/var/lib/dpkg/status", status),
        (
            "rootfs/usr/share/doc/tzdata/copyright",
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: tz\n\nFiles: *\nCopyright: public-domain\nLicense: public-domain\n This database is in the public domain.\n",
        ),
        (
            "rootfs/usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\nSummary: Python 2 and 3 compatibility utilities\nHome-page: https://github.com/benjaminp/six\nAuthor: Benjamin Peterson\nAuthor-email: benjamin@python.org\nLicense: MIT\n\nSix is a Python 2 and 3 compatibility library.\n",
        ),
        (
            "rootfs/usr/lib/python3/dist-packages/idna-3.6.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: idna\nVersion: 3.6\nSummary: Internationalized Domain Names in Applications (IDNA)\nClassifier: License :: OSI Approved :: BSD License\n\n",
        ),
        (
            "rootfs/usr/lib/node_modules/left-pad/package.json",
            r#"{"name":"left-pad","version":"1.3.0","description":"String left pad","main":"index.js","license":"WTFPL"}"#,
        ),
    ])
}

/// `skopeo copy --all` of `reference` into an OCI layout directory.
fn copy_all(reference: &str, dir: &Path) {
    let out = Command::new("skopeo")
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:img", dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn blob(dir: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()
}

fn validate(schema: &str, doc: &Path, pointer: &str) {
    let o = Command::new("python3")
        .arg(data("validate_json.py"))
        .arg(data(schema))
        .arg(doc)
        .arg(pointer)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{schema}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every regular file under `dir` that contains `needle`.
fn grep_tree(dir: &Path, needle: &[u8], out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            grep_tree(&p, needle, out);
        } else if let Ok(b) = std::fs::read(&p) {
            if b.windows(needle.len()).any(|w| w == needle) {
                out.push(p);
            }
        }
    }
}

#[test]
fn pushed_sbom_and_max_provenance_read_by_third_party_tools() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = app_context();
    let tag = reg.reference("attest/app:1");
    xb.run_with(
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &format!("BASE={base}"),
            "--secret",
            "id=token,env=ATTEST_TOKEN",
            "--sbom=true",
            "--provenance=mode=max",
            "-t",
            &tag,
            "--push",
            s(ctx.path()),
        ],
        &[("ATTEST_TOKEN", SECRET)],
        None,
    )
    .ok();

    // skopeo reads the index: two platforms, then one attestation manifest
    // per platform, pointing at it.
    let raw = testbed::skopeo_inspect_raw(&tag).unwrap();
    let ms = raw["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 4, "{raw}");
    let platforms: Vec<(String, String)> = ms[..2]
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].as_str().unwrap().to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(platforms[0].0, "amd64");
    assert_eq!(platforms[1].0, "arm64");
    for (i, a) in ms[2..].iter().enumerate() {
        assert_eq!(a["platform"]["os"], "unknown");
        assert_eq!(a["platform"]["architecture"], "unknown");
        assert_eq!(
            a["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );
        assert_eq!(
            a["annotations"]["vnd.docker.reference.digest"],
            platforms[i].1.as_str()
        );
    }

    // The whole index copied by skopeo; each attestation read from there.
    let oci = tempfile::tempdir().unwrap();
    copy_all(&tag, oci.path());
    // The image filesystem of each platform, exported, for the package tools.
    let fs_out = tempfile::tempdir().unwrap();
    xb.run_with(
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &format!("BASE={base}"),
            "--secret",
            "id=token,env=ATTEST_TOKEN",
            "--sbom=true",
            "--provenance=mode=max",
            "-o",
            &format!("type=local,dest={}", fs_out.path().display()),
            s(ctx.path()),
        ],
        &[("ATTEST_TOKEN", SECRET)],
        None,
    )
    .ok();

    let work = tempfile::tempdir().unwrap();
    for (i, a) in ms[2..].iter().enumerate() {
        let arch = &platforms[i].0;
        let m: Value =
            serde_json::from_slice(&blob(oci.path(), a["digest"].as_str().unwrap())).unwrap();
        let layers = m["layers"].as_array().unwrap();
        let by_type = |t: &str| -> Value {
            let l = layers
                .iter()
                .find(|l| {
                    l["annotations"]["in-toto.io/predicate-type"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with(t)
                })
                .unwrap_or_else(|| panic!("no {t} layer in {m}"));
            assert_eq!(l["mediaType"], "application/vnd.in-toto+json");
            serde_json::from_slice(&blob(oci.path(), l["digest"].as_str().unwrap())).unwrap()
        };
        let prov = by_type("https://slsa.dev/provenance/v1");
        let sbom = by_type("https://spdx.dev/Document");
        // Both are about this platform's manifest.
        for st in [&prov, &sbom] {
            assert_eq!(
                format!(
                    "sha256:{}",
                    st["subject"][0]["digest"]["sha256"].as_str().unwrap()
                ),
                platforms[i].1
            );
        }

        // The SPDX document passes pyspdxtools.
        let spdx_file = work.path().join(format!("{arch}.spdx.json"));
        std::fs::write(
            &spdx_file,
            serde_json::to_vec_pretty(&sbom["predicate"]).unwrap(),
        )
        .unwrap();
        if tool("pyspdxtools", "--help") {
            let o = Command::new("pyspdxtools")
                .arg("-i")
                .arg(&spdx_file)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "pyspdxtools: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        } else {
            testbed::skip("pyspdxtools not installed: SPDX validation skipped");
        }
        // Its packages are what dpkg-query, pip and npm list in the image's filesystem.
        let root = fs_out.path().join(format!("linux_{arch}"));
        let spdx_names = |prefix: &str| -> BTreeSet<String> {
            sbom["predicate"]["packages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| {
                    p["externalRefs"][0]["referenceLocator"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with(prefix)
                })
                .map(|p| {
                    format!(
                        "{} {}",
                        p["name"].as_str().unwrap().to_lowercase(),
                        p["versionInfo"].as_str().unwrap()
                    )
                })
                .collect()
        };
        let dpkg = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${db:Status-Status} ${Package} ${Version}\n"])
            .output()
            .unwrap();
        let want: BTreeSet<String> = String::from_utf8_lossy(&dpkg.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("installed "))
            .map(str::to_string)
            .collect();
        assert_eq!(want.len(), 2);
        assert_eq!(spdx_names("pkg:deb/"), want);
        let pip = Command::new("python3")
            .args(["-m", "pip", "list", "--format", "json", "--path"])
            .arg(root.join("usr/lib/python3/dist-packages"))
            .output()
            .unwrap();
        if pip.status.success() {
            let v: Value = serde_json::from_slice(&pip.stdout).unwrap();
            let want: BTreeSet<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    format!(
                        "{} {}",
                        p["name"].as_str().unwrap().to_lowercase(),
                        p["version"].as_str().unwrap()
                    )
                })
                .collect();
            assert_eq!(want.len(), 2, "pip list: {v}");
            assert_eq!(spdx_names("pkg:pypi/"), want);
        }
        let npm = Command::new("npm")
            .args(["ls", "-g", "--json", "--depth=0", "--prefix"])
            .arg(root.join("usr"))
            .output();
        if let Ok(npm) = npm {
            let v: Value = serde_json::from_slice(&npm.stdout).unwrap_or(Value::Null);
            let deps = v["dependencies"].as_object();
            assert!(deps.is_some(), "npm ls: {v}");
            if let Some(deps) = deps {
                let want: BTreeSet<String> = deps
                    .iter()
                    .map(|(n, d)| format!("{n} {}", d["version"].as_str().unwrap_or("")))
                    .collect();
                assert_eq!(spdx_names("pkg:npm/"), want);
            }
        }

        // The provenance validates against the in-toto and SLSA v1 schemas.
        let prov_file = work.path().join(format!("{arch}.provenance.json"));
        std::fs::write(&prov_file, serde_json::to_vec_pretty(&prov).unwrap()).unwrap();
        if Command::new("python3")
            .args(["-c", "import jsonschema"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            validate("in-toto-statement-v1.schema.json", &prov_file, "");
            validate("slsa-provenance-v1.schema.json", &prov_file, "/predicate");
        } else {
            testbed::skip("python jsonschema not installed: schema validation skipped");
        }
        let p = &prov["predicate"];
        let bd = &p["buildDefinition"];
        assert_eq!(
            bd["internalParameters"]["targetPlatform"],
            format!("linux/{arch}")
        );
        assert_eq!(
            bd["internalParameters"]["worker"]["kind"],
            if arch == "amd64" { "local" } else { "qemu" }
        );
        assert_eq!(
            bd["externalParameters"]["request"]["args"]["build-arg:BASE"],
            base.as_str()
        );
        assert_eq!(
            bd["externalParameters"]["request"]["secrets"][0]["id"],
            "token"
        );
        assert_eq!(
            bd["externalParameters"]["configSource"]["path"],
            "Dockerfile"
        );
        // The base image, by its platform manifest's digest.
        let deps = bd["resolvedDependencies"].as_array().unwrap();
        let base_dep = deps
            .iter()
            .find(|d| d["uri"].as_str().unwrap().contains("xbuild/busybox"))
            .unwrap_or_else(|| panic!("base image missing from {deps:?}"));
        assert!(base_dep["uri"]
            .as_str()
            .unwrap()
            .ends_with(&format!("platform=linux%2F{arch}")));
        let base_raw = testbed::skopeo_inspect_raw(&base).unwrap();
        let base_digest = base_raw["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch.as_str())
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            format!("sha256:{}", base_dep["digest"]["sha256"].as_str().unwrap()),
            base_digest
        );
        assert!(
            p["buildDefinition"]["internalParameters"]["buildConfig"]["llbDefinition"]
                .as_array()
                .unwrap()
                .len()
                >= 3
        );
        assert!(
            p["runDetails"]["metadata"]["buildkit_metadata"]["source"]["infos"][0]["data"]
                .is_string()
        );

        // Local output: the statements beside each platform's filesystem.
        let local_prov: Value =
            serde_json::from_slice(&std::fs::read(root.join("provenance.json")).unwrap()).unwrap();
        assert_eq!(
            local_prov["predicateType"],
            "https://slsa.dev/provenance/v1"
        );
        let local_sbom: Value =
            serde_json::from_slice(&std::fs::read(root.join("sbom.spdx.json")).unwrap()).unwrap();
        assert_eq!(local_sbom["predicateType"], "https://spdx.dev/Document");
    }
    // The secret's value is in no blob of the copied image, no exported file.
    for dir in [oci.path(), fs_out.path()] {
        let mut hits = Vec::new();
        grep_tree(dir, SECRET.as_bytes(), &mut hits);
        assert!(hits.is_empty(), "secret found in {hits:?}");
    }

    // imagetools inspect --format, like buildx: a map by platform.
    let prov = xb
        .run(&[
            "imagetools",
            "inspect",
            &tag,
            "--format",
            "{{json .Provenance}}",
        ])
        .ok();
    let v: Value = serde_json::from_str(prov.stdout.trim()).unwrap();
    assert_eq!(
        v["linux/arm64"]["SLSA"]["buildDefinition"]["internalParameters"]["targetPlatform"],
        "linux/arm64"
    );
    let sb = xb
        .run(&["imagetools", "inspect", &tag, "--format", "{{json .SBOM}}"])
        .ok();
    let v: Value = serde_json::from_str(sb.stdout.trim()).unwrap();
    assert_eq!(v["linux/amd64"]["SPDX"]["spdxVersion"], "SPDX-2.3");
    // xbuild attestations ls / get.
    let ls = xb.run(&["attestations", "ls", &tag]).ok();
    assert_eq!(
        ls.stdout
            .lines()
            .filter(|l| l.contains("provenance"))
            .count(),
        2,
        "{}",
        ls.stdout
    );
    assert_eq!(
        ls.stdout.lines().filter(|l| l.contains(" sbom ")).count(),
        2,
        "{}",
        ls.stdout
    );
    let get = xb
        .run(&[
            "attestations",
            "get",
            &tag,
            "--platform",
            "linux/arm64",
            "--type",
            "sbom",
        ])
        .ok();
    let v: Value = serde_json::from_str(&get.stdout).unwrap();
    assert_eq!(v["predicateType"], "https://spdx.dev/Document");
}

#[test]
fn referrers_layout_keeps_the_index_to_real_platforms() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = app_context();
    let tag = reg.reference("attest/referred:1");
    xb.run_with(
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &format!("BASE={base}"),
            "--secret",
            "id=token,env=ATTEST_TOKEN",
            "--sbom=true",
            "--provenance=mode=max",
            "-t",
            &tag,
            "-o",
            "type=image,push=true,attest-layout=referrers",
            s(ctx.path()),
        ],
        &[("ATTEST_TOKEN", SECRET)],
        None,
    )
    .ok();
    let raw = testbed::skopeo_inspect_raw(&tag).unwrap();
    let ms = raw["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "only real platforms: {raw}");
    for m in ms {
        assert_ne!(m["platform"]["os"], "unknown");
        // distribution 2.x has no referrers API: the tag schema index lists
        // the attestation manifest, whose subject is this platform manifest.
        let digest = m["digest"].as_str().unwrap();
        let fallback = format!("{}/attest/referred:sha256-{}", reg.host(), &digest[7..]);
        let idx = testbed::skopeo_inspect_raw(&fallback).unwrap();
        let refs = idx["manifests"].as_array().unwrap();
        assert_eq!(refs.len(), 1, "{idx}");
        assert_eq!(
            refs[0]["artifactType"],
            "application/vnd.docker.attestation.manifest.v1+json"
        );
        let art = testbed::skopeo_inspect_raw(&format!(
            "{}/attest/referred@{}",
            reg.host(),
            refs[0]["digest"].as_str().unwrap()
        ))
        .unwrap();
        assert_eq!(art["subject"]["digest"], digest);
        let types: BTreeSet<&str> = art["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                l["annotations"]["in-toto.io/predicate-type"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            types,
            BTreeSet::from([
                "https://slsa.dev/provenance/v1",
                "https://spdx.dev/Document"
            ])
        );
    }
    let ls = xb.run(&["attestations", "ls", &tag]).ok();
    assert_eq!(
        ls.stdout
            .lines()
            .filter(|l| l.contains("referrers"))
            .count(),
        4,
        "{}",
        ls.stdout
    );
    // Nothing secret in any referrer.
    let oci = tempfile::tempdir().unwrap();
    for m in ms {
        let digest = m["digest"].as_str().unwrap();
        let fallback = format!("{}/attest/referred:sha256-{}", reg.host(), &digest[7..]);
        copy_all(&fallback, oci.path());
    }
    let mut hits = Vec::new();
    grep_tree(oci.path(), SECRET.as_bytes(), &mut hits);
    assert!(hits.is_empty(), "secret found in {hits:?}");
}

#[test]
fn defaults_like_buildx() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[("Dockerfile", "ARG BASE\nFROM ${BASE}\nRUN echo hi > /hi\n")]);
    // Pushing: a min provenance by default.
    let tag = reg.reference("attest/default:1");
    // (The harness sets BUILDX_NO_DEFAULT_ATTESTATIONS; empty means unset.)
    xb.run_with(
        &[
            "build",
            "--progress",
            "plain",
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            &tag,
            "--push",
            s(ctx.path()),
        ],
        &[("BUILDX_NO_DEFAULT_ATTESTATIONS", "")],
        None,
    )
    .ok();
    let raw = testbed::skopeo_inspect_raw(&tag).unwrap();
    let ms = raw["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{raw}");
    assert_eq!(
        ms[1]["annotations"]["vnd.docker.reference.type"],
        "attestation-manifest"
    );
    // ... unless turned off.
    let off = reg.reference("attest/default:off");
    xb.run_with(
        &[
            "build",
            "--progress",
            "plain",
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            &off,
            "--push",
            s(ctx.path()),
        ],
        &[("BUILDX_NO_DEFAULT_ATTESTATIONS", "1")],
        None,
    )
    .ok();
    // A local image (not pushed) gets none by default either.
    let local = xb
        .run_with(
            &[
                "build",
                "--progress",
                "plain",
                "--build-arg",
                &format!("BASE={base}"),
                "-t",
                "local/attest:1",
                "-o",
                &format!("type=oci,dest={}", xb.root().join("o.tar").display()),
                s(ctx.path()),
            ],
            &[("BUILDX_NO_DEFAULT_ATTESTATIONS", "")],
            None,
        )
        .ok();
    let _ = local;
    let listing = Command::new("tar")
        .arg("-xOf")
        .arg(xb.root().join("o.tar"))
        .arg("index.json")
        .output()
        .unwrap();
    let idx: Value = serde_json::from_slice(&listing.stdout).unwrap();
    let top = idx["manifests"][0]["mediaType"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        top, "application/vnd.oci.image.manifest.v1+json",
        "a single-platform local build is one manifest: {idx}"
    );
    let raw = testbed::skopeo_inspect_raw(&off).unwrap();
    assert!(
        raw.get("manifests").is_none(),
        "a single manifest expected: {raw}"
    );
    let off2 = reg.reference("attest/default:off2");
    xb.run_with(
        &[
            "build",
            "--progress",
            "plain",
            "--provenance=false",
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            &off2,
            "--push",
            s(ctx.path()),
        ],
        &[("BUILDX_NO_DEFAULT_ATTESTATIONS", "")],
        None,
    )
    .ok();
    assert!(testbed::skopeo_inspect_raw(&off2)
        .unwrap()
        .get("manifests")
        .is_none());
    // One platform in the referrers layout stays a single manifest; its
    // attestation is found as a referrer.
    let one = reg.reference("attest/default:referred");
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "--provenance=true",
        "--build-arg",
        &format!("BASE={base}"),
        "-o",
        &format!("type=image,push=true,name={one},attest-layout=referrers"),
        s(ctx.path()),
    ])
    .ok();
    let raw = testbed::skopeo_inspect_raw(&one).unwrap();
    assert!(raw.get("manifests").is_none(), "{raw}");
    let ls = xb.run(&["attestations", "ls", &one]).ok();
    let rows: Vec<&str> = ls.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{}", ls.stdout);
    assert!(
        rows[0].starts_with("linux/amd64")
            && rows[0].contains("provenance")
            && rows[0].contains("referrers"),
        "{}",
        ls.stdout
    );
}

/// With SOURCE_DATE_EPOCH the attestations are reproducible: two builds
/// (the second from an empty state directory) push the same index digest.
/// And Docker media types (`oci-mediatypes=false`) carry the attestation
/// manifest in the manifest list, pointing at the Docker-typed manifest.
#[test]
fn reproducible_and_docker_typed_attestations() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = app_context();
    let build = |xb: &Xbuild, tag: &str, extra: &str| {
        let mut args = vec![
            "build".to_string(),
            "--progress".into(),
            "plain".into(),
            "--build-arg".into(),
            format!("BASE={base}"),
            "--secret".into(),
            "id=token,env=ATTEST_TOKEN".into(),
            "--sbom=true".into(),
            "--provenance=mode=max".into(),
            "-o".into(),
            format!("type=image,push=true,name={tag}{extra}"),
            s(ctx.path()).to_string(),
        ];
        args.retain(|a| !a.is_empty());
        xb.run_with(
            &args,
            &[
                ("ATTEST_TOKEN", SECRET),
                ("SOURCE_DATE_EPOCH", "1700000000"),
            ],
            None,
        )
        .ok();
    };
    // The same name twice (the statements' subjects are named after it).
    let a = reg.reference("attest/repro:1");
    build(&xb, &a, "");
    let da = testbed::sha256_digest(&testbed::skopeo_inspect_raw_bytes(&a, None).unwrap()).unwrap();
    build(&Xbuild::new(), &a, "");
    let db = testbed::sha256_digest(&testbed::skopeo_inspect_raw_bytes(&a, None).unwrap()).unwrap();
    assert_eq!(da, db, "same inputs and SOURCE_DATE_EPOCH, same index");
    let raw = testbed::skopeo_inspect_raw(&a).unwrap();
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2, "{raw}");

    let d = reg.reference("attest/repro:docker");
    build(&xb, &d, ",oci-mediatypes=false");
    let raw = testbed::skopeo_inspect_raw(&d).unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let ms = raw["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{raw}");
    assert_eq!(
        ms[0]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        ms[1]["annotations"]["vnd.docker.reference.digest"],
        ms[0]["digest"]
    );
    let att = testbed::skopeo_inspect_raw(&format!(
        "{}/attest/repro@{}",
        reg.host(),
        ms[1]["digest"].as_str().unwrap()
    ))
    .unwrap();
    assert_eq!(att["layers"].as_array().unwrap().len(), 2);
}

/// `BUILDKIT_SBOM_SCAN_CONTEXT=true`: the build context's packages (here a
/// package-lock.json that is never copied into the image) are listed too,
/// marked as found in the context; without it they are not.
#[test]
fn sbom_scan_context() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[
        ("Dockerfile", "ARG BASE\nFROM ${BASE}\nRUN echo hi > /hi\n"),
        (
            "package-lock.json",
            r#"{"name":"app","version":"1.0.0","lockfileVersion":3,"packages":{"":{"name":"app"},"node_modules/ms":{"version":"2.1.3","license":"MIT"}}}"#,
        ),
    ]);
    let sbom_of = |scan: bool| -> Value {
        let out = tempfile::tempdir().unwrap();
        let mut args = vec![
            "build".to_string(),
            "--progress".into(),
            "plain".into(),
            "--build-arg".into(),
            format!("BASE={base}"),
            "--sbom=true".into(),
            "-o".into(),
            format!("type=local,dest={}", out.path().display()),
        ];
        if scan {
            args.push("--build-arg".into());
            args.push("BUILDKIT_SBOM_SCAN_CONTEXT=true".into());
        }
        args.push(s(ctx.path()).to_string());
        xb.run(&args).ok();
        serde_json::from_slice(&std::fs::read(out.path().join("sbom.spdx.json")).unwrap()).unwrap()
    };
    let find_ms = |v: &Value| -> Option<Value> {
        v["predicate"]["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["externalRefs"][0]["referenceLocator"] == "pkg:npm/ms@2.1.3")
            .cloned()
    };
    assert!(find_ms(&sbom_of(false)).is_none());
    let with = sbom_of(true);
    let ms = find_ms(&with).expect("context package listed");
    assert!(
        ms["sourceInfo"]
            .as_str()
            .unwrap()
            .contains("found in context"),
        "{ms}"
    );
    assert_eq!(ms["licenseDeclared"], "MIT");
}
