//! What third-party tools say about xbuild's attestations: `pyspdxtools`
//! (the `spdx-tools` package from PyPI) validates the SBOMs, and the
//! `jsonschema` package validates the provenance against the in-toto
//! Statement and SLSA schemas under `tests/data/`. Each test skips, saying
//! why, only when its tool is not installed (`scripts/setup.sh` installs
//! both).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};
use xbuild_attest::provenance::{
    self, BuildRecord, BuildStep, ContextSource, Material, Mode, PredicateOptions, SecretId,
    SlsaVersion, SshId, Worker,
};
use xbuild_attest::sbom::{self, spdx::DocumentOptions, ExtraRoot, ScanOptions, SpdxDocument};
use xbuild_oci::{Digest, Platform, Reference};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn have_jsonschema() -> bool {
    Command::new("python3")
        .args(["-c", "import jsonschema"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A root filesystem with a real dpkg database (this machine's), the
/// system Python's dist-info directories and an npm package.
fn debian_like_root() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
    fs::create_dir_all(r.join("etc")).unwrap();
    if Path::new("/var/lib/dpkg/status").exists() {
        fs::copy("/var/lib/dpkg/status", r.join("var/lib/dpkg/status")).unwrap();
    }
    if let Ok(os) = fs::read("/etc/os-release") {
        fs::write(r.join("etc/os-release"), os).unwrap();
    }
    // Every machine-readable copyright file, so that licenses of all kinds
    // reach the validator.
    if let Ok(rd) = fs::read_dir("/usr/share/doc") {
        for e in rd.flatten() {
            let src = e.path().join("copyright");
            if src.is_file() {
                let dest = r.join("usr/share/doc").join(e.file_name());
                fs::create_dir_all(&dest).unwrap();
                let _ = fs::copy(&src, dest.join("copyright"));
            }
        }
    }
    let site = "/usr/lib/python3/dist-packages";
    if let Ok(rd) = fs::read_dir(site) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".dist-info") && e.path().join("METADATA").is_file() {
                let dest = r.join(&site[1..]).join(&name);
                fs::create_dir_all(&dest).unwrap();
                fs::copy(e.path().join("METADATA"), dest.join("METADATA")).unwrap();
            }
        }
    }
    // An Alpine database in the same root (a multi-distro root is odd but
    // puts apk purls and licenses through the validator too).
    fs::create_dir_all(r.join("lib/apk/db")).unwrap();
    fs::write(
        r.join("lib/apk/db/installed"),
        "P:zlib\nV:1.3.1-r0\nA:x86_64\nS:53730\nI:110592\nT:A compression/decompression Library\nU:https://zlib.net/\nL:Zlib\no:zlib\nm:Natanael Copa <ncopa@alpinelinux.org>\nt:1706028453\nc:7f8a0de1c5e2a2bb85ea2e2d5ed15eb4f54e4b7d\nD:so:libc.musl-x86_64.so.1\np:so:libz.so.1=1.3.1\n\nP:ca-certificates-bundle\nV:20240226-r0\nA:x86_64\nT:Pre generated bundle of Mozilla certificates\nU:https://www.mozilla.org/en-US/about/governance/policies/security-group/certs/\nL:MPL-2.0 AND MIT\no:ca-certificates\nm:Natanael Copa <ncopa@alpinelinux.org>\n\n",
    )
    .unwrap();
    // A Rust binary with cargo-auditable data (objcopy adds the section
    // to this machine's /bin/true).
    fs::create_dir_all(r.join("usr/local/bin")).unwrap();
    let dep = {
        use std::io::Write;
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(br#"{"packages":[{"name":"ripgrep","version":"14.1.0","source":"crates.io","root":true,"dependencies":[1]},{"name":"memchr","version":"2.7.1","source":"crates.io"}]}"#).unwrap();
        e.finish().unwrap()
    };
    let dep_file = r.join("dep.z");
    fs::write(&dep_file, dep).unwrap();
    let _ = Command::new("objcopy")
        .arg(format!("--add-section=.dep-v0={}", dep_file.display()))
        .arg("/bin/true")
        .arg(r.join("usr/local/bin/rg"))
        .status();
    fs::remove_file(&dep_file).unwrap();
    let nm = r.join("usr/lib/node_modules/left-pad");
    fs::create_dir_all(&nm).unwrap();
    fs::write(
        nm.join("package.json"),
        r#"{"name":"left-pad","version":"1.3.0","description":"String left pad","main":"index.js","license":"WTFPL","author":"azer","homepage":"https://github.com/stevemao/left-pad#readme"}"#,
    )
    .unwrap();
    t
}

#[test]
fn sbom_passes_pyspdxtools() {
    if !have("pyspdxtools", "--help") {
        eprintln!(
            "skipped: pyspdxtools not installed (pip install spdx-tools; scripts/setup.sh does it)"
        );
        return;
    }
    let root = debian_like_root();
    let ctx = tempfile::tempdir().unwrap();
    fs::create_dir_all(ctx.path().join("node_modules/@types/node")).unwrap();
    fs::write(
        ctx.path().join("node_modules/@types/node/package.json"),
        r#"{"name":"@types/node","version":"20.11.5","license":"MIT"}"#,
    )
    .unwrap();
    let opts = ScanOptions {
        extra_roots: vec![ExtraRoot {
            name: "context".into(),
            dir: ctx.path().to_path_buf(),
        }],
    };
    let scan = sbom::scan(root.path(), &opts).unwrap();
    assert!(scan
        .packages
        .iter()
        .any(|p| p.purl == "pkg:npm/left-pad@1.3.0"));
    let types = scan
        .packages
        .iter()
        .find(|p| p.name == "@types/node")
        .expect("context root scanned");
    assert_eq!(types.origin.as_deref(), Some("context"));
    let doc = SpdxDocument::build(
        &scan,
        &DocumentOptions {
            name: "localhost:5000/app:1 linux/amd64".into(),
            created: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            tool: "xbuild-0.1.0".into(),
            generator: Some("docker/buildkit-syft-scanner:stable-1".into()),
        },
    );
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("sbom.spdx.json");
    fs::write(&file, doc.to_json().unwrap()).unwrap();
    let o = Command::new("pyspdxtools")
        .arg("-i")
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "pyspdxtools rejected the document:\n{text}"
    );
    assert!(!text.contains("Validation"), "{text}");
    eprintln!(
        "pyspdxtools accepted {} packages, {} extracted licenses",
        doc.packages.len(),
        doc.extracted_licenses.len()
    );
}

fn record(secret_value: &str) -> BuildRecord {
    let arm = Platform::parse("linux/arm64").unwrap();
    let df = b"# syntax=docker/dockerfile:1\nFROM debian:12\nRUN --mount=type=secret,id=token --mount=type=ssh make\n".to_vec();
    let mut r = BuildRecord::new(arm.clone(), "Dockerfile", df);
    r.invocation_id = "9pqmnvhu7x2l6bsy3ac0k1f4r".into();
    r.started_on = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    r.finished_on = UNIX_EPOCH + Duration::from_secs(1_700_000_042);
    r.build_args.insert("VERSION".into(), "2.0".into());
    r.secrets.push(SecretId {
        id: "token".into(),
        optional: false,
    });
    r.ssh.push(SshId {
        id: "default".into(),
        optional: false,
    });
    r.materials.push(Material::Image {
        reference: Reference::parse("debian:12").unwrap(),
        platform: Some(arm.clone()),
        digest: Some(Digest::sha256_of(b"debian")),
        local: false,
    });
    r.steps.push(BuildStep {
        id: "step0".into(),
        op: serde_json::json!({"exec": {"args": ["/bin/sh", "-c", "make"], "secrets": ["token"]}}),
        inputs: vec![],
        lines: vec![(3, 3)],
    });
    r.worker = Worker::Node {
        name: "arm-1".into(),
    };
    r.network_used = true;
    let _ = secret_value;
    r
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
        "{schema} {pointer}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn provenance_passes_json_schemas() {
    if !have_jsonschema() {
        eprintln!("skipped: the jsonschema Python package is not installed (scripts/setup.sh installs it)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let manifest = Digest::sha256_of(b"platform manifest");
    let tags = vec![Reference::parse("localhost:5000/app:1").unwrap()];
    let mut git = record("x");
    git.context = ContextSource::Git {
        url: "https://github.com/example/app.git#v1".into(),
        commit: "4b220de5058abfd01ff619c9d2ff6b09a049bea0".into(),
    };
    let cases = [
        ("min", record("x"), Mode::Min, SlsaVersion::V1, None),
        (
            "max",
            record("x"),
            Mode::Max,
            SlsaVersion::V1,
            Some("https://ci.example/runs/7"),
        ),
        ("git", git, Mode::Max, SlsaVersion::V1, None),
        ("v02", record("x"), Mode::Max, SlsaVersion::V02, None),
    ];
    for (name, rec, mode, version, builder_id) in cases {
        let opts = PredicateOptions {
            mode,
            version,
            builder_id: builder_id.map(str::to_string),
        };
        let subjects = provenance::image_subjects(&tags, &rec.platform, &manifest);
        let st = provenance::statement(&rec, subjects, &opts);
        let file = out.path().join(format!("{name}.json"));
        fs::write(&file, st.to_json().unwrap()).unwrap();
        validate("in-toto-statement-v1.schema.json", &file, "");
        let schema = match version {
            SlsaVersion::V1 => "slsa-provenance-v1.schema.json",
            SlsaVersion::V02 => "slsa-provenance-v0.2.schema.json",
        };
        validate(schema, &file, "/predicate");
    }
    // The schemas do reject what they must: a statement without subjects
    // and a predicate without a builder id.
    let bad = out.path().join("bad.json");
    fs::write(&bad, r#"{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"https://slsa.dev/provenance/v1","predicate":{"buildDefinition":{"buildType":"x:y","externalParameters":{}},"runDetails":{"builder":{}}}}"#).unwrap();
    for (schema, ptr) in [
        ("in-toto-statement-v1.schema.json", ""),
        ("slsa-provenance-v1.schema.json", "/predicate"),
    ] {
        let o = Command::new("python3")
            .arg(data("validate_json.py"))
            .arg(data(schema))
            .arg(&bad)
            .arg(ptr)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{schema} accepted an invalid document");
    }
}

/// A build with a secret and an ssh forward: the provenance names them by
/// id (max mode) and never carries a value; min mode does not even name them.
#[test]
fn secrets_never_in_provenance() {
    let secret_value = "s3cr3t-Zq8v-value";
    let ssh_key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n";
    // The build's secret material exists on the machine...
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("token"), secret_value).unwrap();
    fs::write(dir.path().join("id_ed25519"), ssh_key).unwrap();
    let rec = record(secret_value);
    let mut all = BTreeMap::new();
    for (mode, version) in [
        (Mode::Min, SlsaVersion::V1),
        (Mode::Max, SlsaVersion::V1),
        (Mode::Max, SlsaVersion::V02),
    ] {
        let opts = PredicateOptions {
            mode,
            version,
            builder_id: None,
        };
        let st = provenance::statement(&rec, vec![], &opts);
        let text = String::from_utf8(st.to_json().unwrap()).unwrap();
        assert!(!text.contains(secret_value));
        assert!(!text.contains("BEGIN OPENSSH"));
        assert!(!text.contains("b3BlbnNzaC1rZXktdjEAAAAA"));
        all.insert(format!("{mode:?}{version:?}"), text);
    }
    assert!(all["MaxV1"].contains(r#""id": "token""#));
    assert!(!all["MinV1"].contains(r#""id": "token""#));
}
