use super::*;
use std::time::{Duration, UNIX_EPOCH};

const DF: &[u8] = b"FROM busybox AS base\nRUN --mount=type=secret,id=tok cat /run/secrets/tok\nFROM alpine:3.19\nCOPY --from=base /x /x\n";

fn record() -> BuildRecord {
    let amd = Platform::parse("linux/amd64").unwrap();
    let mut r = BuildRecord::new(amd.clone(), "Dockerfile", DF.to_vec());
    r.invocation_id = "inv123".into();
    r.started_on = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    r.finished_on = UNIX_EPOCH + Duration::from_secs(1_700_000_060);
    r.build_args.insert("VERSION".into(), "1.2".into());
    r.labels.insert("org.example".into(), "x".into());
    r.target = Some("release".into());
    r.other_args.insert("platform".into(), "linux/amd64".into());
    r.other_args.insert("no-cache".into(), "".into());
    r.secrets.push(SecretId {
        id: "tok".into(),
        optional: false,
    });
    r.ssh.push(SshId {
        id: "default".into(),
        optional: true,
    });
    r.materials.push(Material::Image {
        reference: Reference::parse("busybox").unwrap(),
        platform: Some(amd.clone()),
        digest: Some(Digest::sha256_of(b"busybox")),
        local: false,
    });
    r.materials.push(Material::Image {
        reference: Reference::parse("alpine:3.19").unwrap(),
        platform: Some(amd),
        digest: Some(Digest::sha256_of(b"alpine")),
        local: false,
    });
    r.steps.push(BuildStep {
        id: "step0".into(),
        op: serde_json::json!({"source": {"identifier": "docker-image://busybox"}}),
        inputs: vec![],
        lines: vec![(1, 1)],
    });
    r.steps.push(BuildStep {
        id: "step1".into(),
        op: serde_json::json!({"exec": {"args": ["/bin/sh", "-c", "cat /run/secrets/tok"]}}),
        inputs: vec!["step0:0".into()],
        lines: vec![(2, 2)],
    });
    r.worker = Worker::Node {
        name: "arm1".into(),
    };
    r
}

fn json(r: &BuildRecord, mode: Mode, version: SlsaVersion) -> serde_json::Value {
    let opts = PredicateOptions {
        mode,
        version,
        builder_id: None,
    };
    let subj = image_subjects(&[], &r.platform, &Digest::sha256_of(b"manifest"));
    let st = statement(r, subj, &opts);
    serde_json::from_slice(&st.to_json().unwrap()).unwrap()
}

// Follows BuildKit's testProvenanceAttestation (dockerfile_provenance_test.go):
// min drops build args and marks the request incomplete; max keeps them.
#[test]
fn min_mode_like_buildkit() {
    let v = json(&record(), Mode::Min, SlsaVersion::V1);
    assert_eq!(v["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(v["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(v["subject"][0]["name"], "_");
    assert_eq!(
        v["subject"][0]["digest"]["sha256"],
        Digest::sha256_of(b"manifest").hex()
    );
    let p = &v["predicate"];
    let bd = &p["buildDefinition"];
    assert_eq!(bd["buildType"], BUILD_TYPE_V1);
    let req = &bd["externalParameters"]["request"];
    assert_eq!(req["frontend"], "dockerfile.v0");
    assert_eq!(req["args"]["target"], "release");
    assert_eq!(req["args"]["no-cache"], "");
    assert!(req["args"].get("build-arg:VERSION").is_none());
    assert!(req["args"].get("label:org.example").is_none());
    assert!(
        req["args"].get("platform").is_none(),
        "host-specific arg kept"
    );
    assert!(req.get("secrets").is_none() && req.get("ssh").is_none());
    assert_eq!(req["locals"][0]["name"], "context");
    assert_eq!(req["locals"][1]["name"], "dockerfile");
    let cs = &bd["externalParameters"]["configSource"];
    assert_eq!(cs["path"], "Dockerfile");
    assert_eq!(cs["digest"]["sha256"], hex::encode(Sha256::digest(DF)));
    assert!(bd["internalParameters"].get("buildConfig").is_none());
    assert_eq!(bd["internalParameters"]["targetPlatform"], "linux/amd64");
    assert_eq!(bd["internalParameters"]["worker"]["kind"], "node");
    assert_eq!(bd["internalParameters"]["worker"]["name"], "arm1");
    let deps = bd["resolvedDependencies"].as_array().unwrap();
    assert_eq!(deps.len(), 2);
    assert_eq!(
        deps[0]["uri"],
        "pkg:docker/busybox@latest?platform=linux%2Famd64"
    );
    assert_eq!(
        deps[0]["digest"]["sha256"],
        Digest::sha256_of(b"busybox").hex()
    );
    assert_eq!(
        deps[1]["uri"],
        "pkg:docker/alpine@3.19?platform=linux%2Famd64"
    );
    let rd = &p["runDetails"];
    assert_eq!(rd["builder"]["id"], "urn:xbuild:node:arm1");
    let md = &rd["metadata"];
    assert_eq!(md["invocationId"], "inv123");
    assert_eq!(md["startedOn"], "2023-11-14T22:13:20Z");
    assert_eq!(md["finishedOn"], "2023-11-14T22:14:20Z");
    assert_eq!(md["buildkit_completeness"]["request"], false);
    assert_eq!(md["buildkit_completeness"]["resolvedDependencies"], false);
    assert!(md.get("buildkit_hermetic").is_none());
    assert!(md["buildkit_metadata"].get("source").is_none());
}

#[test]
fn max_mode_records_args_ids_steps_and_dockerfile() {
    let v = json(&record(), Mode::Max, SlsaVersion::V1);
    let p = &v["predicate"];
    let req = &p["buildDefinition"]["externalParameters"]["request"];
    assert_eq!(req["args"]["build-arg:VERSION"], "1.2");
    assert_eq!(req["args"]["label:org.example"], "x");
    assert_eq!(req["secrets"], serde_json::json!([{"id": "tok"}]));
    assert_eq!(
        req["ssh"],
        serde_json::json!([{"id": "default", "optional": true}])
    );
    let steps = &p["buildDefinition"]["internalParameters"]["buildConfig"]["llbDefinition"];
    assert_eq!(steps.as_array().unwrap().len(), 2);
    assert_eq!(steps[1]["inputs"][0], "step0:0");
    let src = &p["runDetails"]["metadata"]["buildkit_metadata"]["source"];
    assert_eq!(src["infos"][0]["filename"], "Dockerfile");
    assert_eq!(src["infos"][0]["language"], "Dockerfile");
    let data = base64::engine::general_purpose::STANDARD
        .decode(src["infos"][0]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, DF);
    assert_eq!(
        src["locations"]["step1"]["locations"][0]["ranges"][0]["start"]["line"],
        2
    );
    assert_eq!(
        p["runDetails"]["metadata"]["buildkit_completeness"]["request"],
        true
    );
}

#[test]
fn git_context_is_config_source_and_dependency() {
    let mut r = record();
    let commit = "4b220de5058abfd01ff619c9d2ff6b09a049bea0";
    r.context = ContextSource::Git {
        url: "https://user:hunter2@example.com/repo.git#main".into(),
        commit: commit.into(),
    };
    r.network_used = false;
    let v = json(&r, Mode::Min, SlsaVersion::V1);
    let text = v.to_string();
    assert!(!text.contains("hunter2"), "credentials leaked: {text}");
    let bd = &v["predicate"]["buildDefinition"];
    let cs = &bd["externalParameters"]["configSource"];
    assert_eq!(cs["uri"], "https://example.com/repo.git#main");
    assert_eq!(cs["digest"]["sha1"], commit);
    assert!(bd["externalParameters"]["request"].get("locals").is_none());
    let deps = bd["resolvedDependencies"].as_array().unwrap();
    assert_eq!(deps.last().unwrap()["digest"]["sha1"], commit);
    let md = &v["predicate"]["runDetails"]["metadata"];
    assert_eq!(md["buildkit_completeness"]["resolvedDependencies"], true);
    assert_eq!(md["buildkit_hermetic"], true);
}

#[test]
fn v02_shape() {
    let mut r = record();
    r.worker = Worker::Qemu;
    let v = json(&r, Mode::Max, SlsaVersion::V02);
    assert_eq!(v["predicateType"], "https://slsa.dev/provenance/v0.2");
    let p = &v["predicate"];
    assert_eq!(p["buildType"], BUILD_TYPE_V02);
    assert_eq!(p["builder"]["id"], "urn:xbuild:qemu");
    assert_eq!(p["materials"].as_array().unwrap().len(), 2);
    assert_eq!(p["invocation"]["configSource"]["entryPoint"], "Dockerfile");
    assert_eq!(p["invocation"]["environment"]["worker"]["kind"], "qemu");
    assert!(p["invocation"]["environment"]["platform"].is_string());
    assert_eq!(
        p["invocation"]["parameters"]["args"]["build-arg:VERSION"],
        "1.2"
    );
    assert_eq!(p["buildConfig"]["llbDefinition"][0]["id"], "step0");
    assert_eq!(p["metadata"]["buildInvocationID"], "inv123");
    assert_eq!(p["metadata"]["completeness"]["environment"], true);
    // Round trip through the typed form.
    let back: Statement<Predicate> = serde_json::from_value(v.clone()).unwrap();
    assert!(matches!(back.predicate, Predicate::V02(_)));
}

#[test]
fn subjects_per_tag() {
    let amd = Platform::parse("linux/arm64").unwrap();
    let d = Digest::sha256_of(b"m");
    let tags = vec![
        Reference::parse("localhost:5000/app:1").unwrap(),
        Reference::parse("localhost:5000/app:latest").unwrap(),
    ];
    let s = image_subjects(&tags, &amd, &d);
    assert_eq!(s.len(), 2);
    assert_eq!(
        s[0].name,
        "pkg:docker/localhost:5000/app@1?platform=linux%2Farm64"
    );
    assert_eq!(s[1].digest["sha256"], d.hex());
}

#[test]
fn builder_id_option_and_redaction() {
    let r = record();
    let opts = PredicateOptions {
        mode: Mode::Min,
        version: SlsaVersion::V1,
        builder_id: Some("https://ci.example/run/7".into()),
    };
    let Predicate::V1(p) = predicate(&r, &opts) else {
        panic!("v1 expected")
    };
    assert_eq!(p.run_details.builder.id, "https://ci.example/run/7");
    assert_eq!(
        redact_credentials("ssh://git:pw@host/x@y"),
        "ssh://host/x@y"
    );
    assert_eq!(
        redact_credentials("git@github.com:a/b"),
        "git@github.com:a/b"
    );
}
