//! `--cache-to …,compression=gzip|zstd|uncompressed[,compression-level=N]`:
//! the exported cache's layers are written in that compression (checked in
//! the registry with skopeo and raw blob GETs: media types, magic bytes,
//! each record's diffID equal to the sha256 of its decompressed layer), and
//! a `--cache-from` build on a fresh state directory hits every step and
//! produces the right files.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{context, publish_host_base, s, Run, Xbuild};

const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn build(xb: &Xbuild, ctx: &Path, args: &[&str]) -> Run {
    let mut v = vec!["build", "--progress", "plain"];
    v.extend_from_slice(args);
    v.push(s(ctx));
    xb.run(&v)
}

/// GET `http://HOST/v2/REPO/blobs/DIGEST` (the registry speaks plain HTTP).
fn blob(reg: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    let url = format!("http://{}/v2/{repo}/blobs/{digest}", reg.host());
    let out = Command::new("curl").args(["-sSfL", &url]).output().unwrap();
    assert!(
        out.status.success(),
        "GET {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sha256(bytes: &[u8]) -> String {
    testbed::sha256_digest(bytes).unwrap()
}

fn decompress(media_type: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match media_type {
        ZSTD => {
            zstd::stream::read::Decoder::new(bytes)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
        }
        GZIP => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
        }
        _ => out = bytes.to_vec(),
    }
    out
}

/// The platform manifest of the cache tagged `reference` (an index over
/// platforms), and the records blob it carries as its config.
fn cache_manifest(reg: &Registry, repo: &str, reference: &str) -> (Value, Value) {
    let index = testbed::skopeo_inspect_raw(reference).unwrap();
    assert_eq!(
        index["artifactType"], "application/vnd.xbuild.cache.v1",
        "{index}"
    );
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let name = reference.rsplit_once(':').unwrap().0;
    let m = testbed::skopeo_inspect_raw(&format!("{name}@{digest}")).unwrap();
    let records: Value =
        serde_json::from_slice(&blob(reg, repo, m["config"]["digest"].as_str().unwrap())).unwrap();
    (m, records)
}

/// Checks that every layer of the cache manifest is `media_type`, that its
/// bytes are in that compression, and that each record's diffID is the
/// sha256 of its layer's tar. Returns the number of layers.
fn assert_layers(reg: &Registry, repo: &str, reference: &str, media_type: &str) -> usize {
    let (m, records) = cache_manifest(reg, repo, reference);
    let layers = m["layers"].as_array().unwrap();
    let mut tar_sums = BTreeMap::new();
    for l in layers {
        assert_eq!(l["mediaType"], media_type, "{m}");
        let d = l["digest"].as_str().unwrap();
        let bytes = blob(reg, repo, d);
        assert_eq!(sha256(&bytes), d, "blob {d} matches its digest");
        match media_type {
            ZSTD => assert!(bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "{d}"),
            GZIP => assert!(bytes.starts_with(&[0x1f, 0x8b]), "{d}"),
            _ => assert!(
                !bytes.starts_with(&[0x1f, 0x8b]) && !bytes.starts_with(&[0x28, 0xb5]),
                "{d}"
            ),
        }
        tar_sums.insert(d.to_string(), sha256(&decompress(media_type, &bytes)));
    }
    let mut with_layer = 0;
    for r in records["records"].as_array().unwrap() {
        let Some(l) = r["layer"].as_object() else {
            continue;
        };
        with_layer += 1;
        let d = l["digest"].as_str().unwrap();
        assert_eq!(l["mediaType"], media_type, "{r}");
        assert_eq!(
            tar_sums.get(d),
            Some(&r["diff_id"].as_str().unwrap().to_string()),
            "record {r} names a layer of the manifest whose tar is its diffID"
        );
    }
    assert!(with_layer > 0, "{records}");
    layers.len()
}

#[test]
fn zstd_cache_export_to_a_registry_is_zstd_and_a_fresh_state_hits_it() {
    if testbed::require_root().is_none()
        || testbed::require_cmd("skopeo").is_none()
        || testbed::require_cmd("curl").is_none()
    {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    let ctx = context(&[
        (
            "Dockerfile",
            &format!(
                "FROM {base} AS deps\nRUN echo deps > /deps\n\
                 FROM {base}\nRUN echo one > /one\nCOPY greeting.txt /greeting.txt\n\
                 COPY --from=deps /deps /deps\nRUN cat /one /greeting.txt /deps > /out\n"
            ),
        ),
        ("greeting.txt", "hello from the cache\n"),
    ]);
    let cache = reg.reference("cc/app:buildcache");
    let to = format!("type=registry,ref={cache},mode=max,compression=zstd,compression-level=19");
    let first = build(&xb, ctx.path(), &["--cache-to", &to]).ok();
    assert_eq!(first.missed_steps(), 5, "{}", first.stderr);
    // mode=max: the deps stage's RUN, the final stage's two RUNs and COPY.
    let n = assert_layers(&reg, "cc/app", &cache, ZSTD);
    assert!(n >= 4, "{n} layers");

    // A fresh state directory: every step comes from the zstd cache.
    let fresh = Xbuild::new();
    let tag = reg.reference("cc/app:1");
    let second = build(
        &fresh,
        ctx.path(),
        &[
            "--cache-from",
            &format!("type=registry,ref={cache}"),
            "-t",
            &tag,
            "--push",
        ],
    )
    .ok();
    assert_eq!(second.missed_steps(), 0, "{}", second.stderr);
    assert_eq!(second.cached_steps(), 5, "{}", second.stderr);
    // The image reads back right, through a third party (skopeo checks the
    // layers against the config's diffIDs while copying).
    let d = tempfile::tempdir().unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{tag}"))
        .arg(format!("dir:{}", d.path().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value =
        serde_json::from_slice(&std::fs::read(d.path().join("manifest.json")).unwrap()).unwrap();
    let mut files = BTreeMap::new();
    for l in m["layers"].as_array().unwrap() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let bytes = std::fs::read(d.path().join(hex)).unwrap();
        let tar = decompress(l["mediaType"].as_str().unwrap(), &bytes);
        let mut ar = tar::Archive::new(&tar[..]);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            files.insert(p, data);
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&files["out"]),
        "one\nhello from the cache\ndeps\n"
    );

    // Exporting the same cache again as gzip rewrites the layers in gzip
    // (the cache's records keep their keys: still all hits).
    let gz = format!("type=registry,ref={cache},mode=max,compression=gzip");
    let third = build(&fresh, ctx.path(), &["--cache-to", &gz]).ok();
    assert_eq!(third.missed_steps(), 0, "{}", third.stderr);
    assert_layers(&reg, "cc/app", &cache, GZIP);
}

#[test]
fn uncompressed_cache_export_to_a_local_layout() {
    if testbed::require_root().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN echo plain > /plain\nRUN cat /plain > /out\n"),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let to = format!(
        "type=local,dest={},mode=max,compression=uncompressed",
        dir.path().display()
    );
    build(&xb, ctx.path(), &["--cache-to", &to]).ok();
    let read = |d: &str| {
        std::fs::read(
            dir.path()
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let m: Value =
        serde_json::from_slice(&read(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{m}");
    for l in layers {
        assert_eq!(l["mediaType"], TAR, "{m}");
        let bytes = read(l["digest"].as_str().unwrap());
        // A plain tar: "ustar" at offset 257 of the first header.
        assert_eq!(&bytes[257..262], b"ustar", "{l}");
    }
    // A fresh state imports it and hits both RUN steps.
    let fresh = Xbuild::new();
    let out = tempfile::tempdir().unwrap();
    let run = build(
        &fresh,
        ctx.path(),
        &[
            "--cache-from",
            &format!("type=local,src={}", dir.path().display()),
            "-o",
            &format!("type=local,dest={}", out.path().display()),
        ],
    )
    .ok();
    assert_eq!(run.cached_steps(), 2, "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(out.path().join("out")).unwrap(),
        "plain\n"
    );
}
