//! Round-trips of realistic OCI / Docker documents.

use serde_json::Value;
use xbuild_oci::manifest::Manifest;
use xbuild_oci::media_types as mt;
use xbuild_oci::{Digest, ImageConfig, ImageIndex, ImageManifest, Platform};

const MANIFEST: &str = r#"{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7",
    "size": 7023
  },
  "layers": [
    {
      "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
      "digest": "sha256:9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0",
      "size": 32654
    },
    {
      "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
      "digest": "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b",
      "size": 16724,
      "annotations": { "org.example.layer": "two" },
      "urls": ["https://mirror.example/blob"]
    }
  ],
  "subject": {
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270",
    "size": 7682
  },
  "annotations": {
    "com.example.key1": "value1",
    "org.opencontainers.image.created": "2024-01-02T03:04:05Z"
  }
}"#;

const INDEX: &str = r#"{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f",
      "size": 7143,
      "platform": { "architecture": "ppc64le", "os": "linux" }
    },
    {
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270",
      "size": 7682,
      "platform": { "architecture": "arm", "os": "linux", "variant": "v7" }
    },
    {
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "sha256:1b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501271",
      "size": 566,
      "annotations": {
        "vnd.docker.reference.digest": "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270",
        "vnd.docker.reference.type": "attestation-manifest"
      },
      "platform": { "architecture": "unknown", "os": "unknown" }
    }
  ],
  "annotations": { "com.example.key1": "value1" }
}"#;

const DOCKER_CONFIG: &str = r#"{
  "architecture": "amd64",
  "config": {
    "Hostname": "",
    "User": "app",
    "ExposedPorts": { "8080/tcp": {} },
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
    "Entrypoint": ["/docker-entrypoint.sh"],
    "Cmd": ["nginx", "-g", "daemon off;"],
    "Volumes": { "/data": {} },
    "WorkingDir": "/srv",
    "Labels": { "maintainer": "someone" },
    "StopSignal": "SIGQUIT",
    "Shell": ["/bin/bash", "-c"],
    "Healthcheck": { "Test": ["CMD-SHELL", "curl -f http://localhost/"], "Interval": 30000000000, "Timeout": 5000000000, "StartPeriod": 1000000000, "StartInterval": 2000000000, "Retries": 3 },
    "OnBuild": ["RUN echo hi"],
    "ArgsEscaped": true
  },
  "container": "3f2a",
  "created": "2024-05-01T10:00:00.123456789Z",
  "author": "someone@example.com",
  "docker_version": "24.0.7",
  "history": [
    { "created": "2024-05-01T09:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:abc in / " },
    { "created": "2024-05-01T09:00:01Z", "created_by": "/bin/sh -c #(nop)  CMD [\"bash\"]", "empty_layer": true },
    { "created": "2024-05-01T10:00:00Z", "created_by": "RUN /bin/sh -c make # buildkit", "comment": "buildkit.dockerfile.v0", "author": "x" }
  ],
  "os": "linux",
  "rootfs": {
    "type": "layers",
    "diff_ids": [
      "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef",
      "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    ]
  }
}"#;

fn semantic(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

#[test]
fn oci_manifest_round_trip() {
    let m = ImageManifest::from_slice(MANIFEST.as_bytes()).unwrap();
    assert_eq!(m.layers.len(), 2);
    assert_eq!(m.layers[1].urls, ["https://mirror.example/blob"]);
    assert!(m.subject.is_some());
    assert_eq!(serde_json::to_value(&m).unwrap(), semantic(MANIFEST));
    let e = m.encode().unwrap();
    assert_eq!(e.descriptor.media_type, mt::OCI_MANIFEST);
    assert_eq!(e.descriptor.digest, Digest::sha256_of(&e.bytes));
    // Canonical: compact and stable.
    assert!(!e.bytes.contains(&b'\n'));
    assert_eq!(
        ImageManifest::from_slice(&e.bytes)
            .unwrap()
            .encode()
            .unwrap(),
        e
    );
    assert!(matches!(
        Manifest::parse(MANIFEST.as_bytes(), Some(mt::OCI_MANIFEST)).unwrap(),
        Manifest::Image(_)
    ));
}

#[test]
fn oci_index_round_trip() {
    let i = ImageIndex::from_slice(INDEX.as_bytes()).unwrap();
    assert_eq!(serde_json::to_value(&i).unwrap(), semantic(INDEX));
    let arm = i
        .find_platform(&Platform::parse("linux/arm").unwrap())
        .unwrap();
    assert_eq!(arm.size, 7682);
    let Manifest::Index(again) = Manifest::parse(INDEX.as_bytes(), None).unwrap() else {
        panic!("index expected")
    };
    assert_eq!(again, i);
}

#[test]
fn docker_config_round_trip() {
    let c = ImageConfig::from_slice(DOCKER_CONFIG.as_bytes()).unwrap();
    assert_eq!(c.platform(), Platform::parse("linux/amd64").unwrap());
    assert_eq!(c.config.user, "app");
    assert_eq!(c.config.healthcheck.as_ref().unwrap().retries, 3);
    assert_eq!(
        c.config.healthcheck.as_ref().unwrap().start_interval,
        2_000_000_000
    );
    assert!(c.config.args_escaped);
    assert_eq!(c.rootfs.diff_ids.len(), 2);
    assert!(c.history[1].empty_layer);
    assert_eq!(c.extra["docker_version"], "24.0.7");
    assert_eq!(serde_json::to_value(&c).unwrap(), semantic(DOCKER_CONFIG));
    let e = c.encode_as(mt::DOCKER_CONFIG).unwrap();
    assert_eq!(e.descriptor.media_type, mt::DOCKER_CONFIG);
    assert_eq!(ImageConfig::from_slice(&e.bytes).unwrap(), c);
}

#[test]
fn docker_manifest_list_parses() {
    let list = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f","size":528,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#;
    let Manifest::Index(i) = Manifest::parse(list.as_bytes(), None).unwrap() else {
        panic!()
    };
    assert!(i
        .find_platform(&Platform::parse("linux/arm64").unwrap())
        .is_some());
    // Variant kept verbatim in the JSON even though Platform normalizes it away.
    assert_eq!(serde_json::to_value(&i).unwrap(), semantic(list));
}
