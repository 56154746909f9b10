//! Push, inspect (with skopeo), resolve and pull against a real registry.

mod common;

use common::*;
use xbuild_oci::{BlobStore, Descriptor, Reference};
use xbuild_registry::RegistryError;
use xbuild_testbed::{skopeo_inspect_config, skopeo_inspect_raw, skopeo_inspect_raw_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_inspect_resolve_pull() {
    let Some(reg) = xbuild_testbed::Registry::start_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::open(tmp.path().join("store")).unwrap();
    let amd64 = platform("linux/amd64");
    let desc = build_image(&store, &amd64, "hello amd64\n");
    let client = client(tmp.path());
    let r = Reference::parse(&reg.reference("test/app:1")).unwrap();

    let counter = Counter::default();
    let pushed = client
        .push_image(&r, &store, &desc, &|p| counter.record(p))
        .await
        .unwrap();
    assert_eq!(pushed.digest, desc.digest);
    // config + layer moved, with start and end events each.
    assert_eq!(counter.blobs.lock().unwrap().len(), 2);
    assert!(counter.pushes() >= 4, "{}", counter.pushes());

    // A third-party client sees the same manifest bytes.
    if xbuild_testbed::require_cmd("skopeo").is_some() {
        let raw = skopeo_inspect_raw_bytes(&r.to_string(), None).unwrap();
        assert_eq!(
            xbuild_testbed::sha256_digest(&raw).unwrap(),
            desc.digest.as_str()
        );
        let v = skopeo_inspect_raw(&r.to_string()).unwrap();
        assert_eq!(v["layers"].as_array().unwrap().len(), 1);
        let cfg = skopeo_inspect_config(&r.to_string()).unwrap();
        assert_eq!(cfg["architecture"], "amd64");
    }

    // resolve gives the same digests and the config.
    let res = client.resolve(&r, &amd64).await.unwrap();
    assert_eq!(res.manifest_digest, desc.digest);
    assert_eq!(res.index_digest, None);
    assert_eq!(res.config.platform(), amd64);
    assert_eq!(store.read_to_vec(&desc.digest).unwrap(), res.manifest_bytes);
    let (raw, media_type, digest) = client.fetch_manifest(&r).await.unwrap();
    assert_eq!(digest, desc.digest);
    assert_eq!(media_type, xbuild_oci::media_types::OCI_MANIFEST);
    assert_eq!(raw, res.manifest_bytes);

    // pull into an empty store: identical blobs.
    let store2 = BlobStore::open(tmp.path().join("store2")).unwrap();
    let pc = Counter::default();
    let pulled = client
        .pull(&r, &amd64, &store2, &|p| pc.record(p))
        .await
        .unwrap();
    assert_eq!(pulled.descriptor.digest, desc.digest);
    assert!(pc.pulls() >= 2);
    for d in std::iter::once(&pulled.manifest.config).chain(&pulled.manifest.layers) {
        assert!(store2.verify(&d.digest).unwrap());
        assert_eq!(
            store2.read_to_vec(&d.digest).unwrap(),
            store.read_to_vec(&d.digest).unwrap()
        );
    }
    assert!(store2.verify(&desc.digest).unwrap());

    // pulling again transfers nothing; pushing again uploads nothing.
    let pc2 = Counter::default();
    client
        .pull(&r, &amd64, &store2, &|p| pc2.record(p))
        .await
        .unwrap();
    assert_eq!(pc2.pulls(), 0);
    let again = Counter::default();
    client
        .push_image(&r, &store, &desc, &|p| again.record(p))
        .await
        .unwrap();
    assert_eq!(again.pushes(), 0);

    // by digest, and a fresh client (no cached knowledge).
    let fresh = common::client(tmp.path());
    let by_digest = r.with_digest(desc.digest.clone());
    assert_eq!(
        fresh
            .resolve(&by_digest, &amd64)
            .await
            .unwrap()
            .manifest_digest,
        desc.digest
    );

    // A single-platform image asked for another platform is used as it is
    // (BuildKit builds on it and warns: InvalidBaseImagePlatform).
    let other = client.resolve(&r, &platform("linux/arm64")).await.unwrap();
    assert_eq!(other.manifest_digest, desc.digest);
    assert_eq!(other.config.platform(), amd64);

    // A missing tag names the tag.
    let missing = Reference::parse(&reg.reference("test/app:nope")).unwrap();
    let err = client.resolve(&missing, &amd64).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("\"nope\""), "{err}");

    // A second repository gets its blobs by cross-repo mount: no upload.
    let r2 = Reference::parse(&reg.reference("other/app:1")).unwrap();
    let mounted = Counter::default();
    client
        .push_image(&r2, &store, &desc, &|p| mounted.record(p))
        .await
        .unwrap();
    assert_eq!(mounted.pushes(), 0);
    assert_eq!(
        client.resolve(&r2, &amd64).await.unwrap().manifest_digest,
        desc.digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_of_two_platforms() {
    let Some(reg) = xbuild_testbed::Registry::start_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::open(tmp.path().join("store")).unwrap();
    let (amd64, arm64) = (platform("linux/amd64"), platform("linux/arm64"));
    let a = build_image(&store, &amd64, "a\n");
    let b = build_image(&store, &arm64, "b\n");
    let client = client(tmp.path());
    let r = Reference::parse(&reg.reference("multi/app:v1")).unwrap();

    // An index whose children are not there yet is refused.
    let idx = build_index(&store, vec![a.clone(), b.clone()]);
    let err = client
        .push_index(&r, &store, &idx, &xbuild_registry::no_progress)
        .await
        .unwrap_err();
    match &err {
        RegistryError::MissingManifests { missing, .. } => assert_eq!(missing.len(), 2),
        other => panic!("{other}"),
    }

    for d in [&a, &b] {
        client
            .push_image_untagged(&r, &store, d, &xbuild_registry::no_progress)
            .await
            .unwrap();
    }
    let pushed = client
        .push_index(&r, &store, &idx, &xbuild_registry::no_progress)
        .await
        .unwrap();
    assert_eq!(pushed.digest, idx.digest);

    let ra = client.resolve(&r, &amd64).await.unwrap();
    assert_eq!(ra.manifest_digest, a.digest);
    assert_eq!(ra.index_digest.as_ref(), Some(&idx.digest));
    assert_eq!(ra.config.platform(), amd64);
    let rb = client
        .resolve(&r, &platform("linux/arm64/v8"))
        .await
        .unwrap();
    assert_eq!(rb.manifest_digest, b.digest);

    let err = client
        .resolve(&r, &platform("linux/s390x"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    match err {
        RegistryError::NoPlatform { available, .. } => {
            assert_eq!(available, vec![amd64.clone(), arm64.clone()])
        }
        other => panic!("{other}"),
    }
    assert!(msg.contains("linux/amd64, linux/arm64"), "{msg}");

    let (raw, media_type, digest) = client.fetch_manifest(&r).await.unwrap();
    assert_eq!(digest, idx.digest);
    assert_eq!(media_type, xbuild_oci::media_types::OCI_INDEX);
    assert_eq!(raw, store.read_to_vec(&idx.digest).unwrap());
    if xbuild_testbed::require_cmd("skopeo").is_some() {
        let v = skopeo_inspect_raw(&r.to_string()).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
        let cfg = skopeo_inspect_config(&format!("{}@{}", r.name(), b.digest)).unwrap();
        assert_eq!(cfg["architecture"], "arm64");
    }

    // Pull the arm64 image only.
    let store2 = BlobStore::open(tmp.path().join("s2")).unwrap();
    let pulled = client
        .pull(&r, &arm64, &store2, &xbuild_registry::no_progress)
        .await
        .unwrap();
    assert_eq!(pulled.descriptor.digest, b.digest);
    assert!(!store2.exists(&a.digest));

    // Copy the whole index to another repository (imagetools create).
    let dst = Reference::parse(&reg.reference("copy/app:c")).unwrap();
    let copied: Descriptor = client.copy_manifest(&r, &dst).await.unwrap();
    assert_eq!(copied.digest, idx.digest);
    client
        .tag_manifest(&dst, &raw, &copied.media_type)
        .await
        .unwrap();
    let fresh = common::client(tmp.path());
    assert_eq!(
        fresh.resolve(&dst, &arm64).await.unwrap().manifest_digest,
        b.digest
    );
    assert!(fresh
        .blob_exists(&dst, &pulled.manifest.layers[0].digest)
        .await
        .unwrap());
}

#[tokio::test]
async fn unreachable_is_quick_and_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let client = client(tmp.path());
    let port = xbuild_testbed::closed_port();
    let r = Reference::parse(&format!("127.0.0.1:{port}/a/b:1")).unwrap();
    let t0 = std::time::Instant::now();
    let err = client
        .resolve(&r, &platform("linux/amd64"))
        .await
        .unwrap_err();
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t0.elapsed()
    );
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_layer_in_several_chunks() {
    let Some(reg) = xbuild_testbed::Registry::start_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::open(tmp.path().join("store")).unwrap();
    // 10 MiB of incompressible bytes: three upload chunks of 4 MiB.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..10 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let blob = store.put_bytes(&data).unwrap();
    let layer = Descriptor::new(
        xbuild_oci::media_types::OCI_LAYER_TAR,
        blob.clone(),
        data.len() as u64,
    );
    let amd64 = platform("linux/amd64");
    let mut cfg = xbuild_oci::ImageConfig::for_platform(&amd64);
    cfg.rootfs.diff_ids = vec![blob.clone()];
    let cfg = cfg.encode().unwrap();
    store.put_bytes(&cfg.bytes).unwrap();
    let m = xbuild_oci::ImageManifest::new_oci(cfg.descriptor, vec![layer])
        .encode()
        .unwrap();
    store.put_bytes(&m.bytes).unwrap();
    let client = client(tmp.path());
    let r = Reference::parse(&reg.reference("big/app:1")).unwrap();
    let c = Counter::default();
    client
        .push_image(&r, &store, &m.descriptor, &|p| c.record(p))
        .await
        .unwrap();
    // start, two intermediate chunks, end for the layer; start+end for config.
    assert!(c.pushes() >= 6, "{}", c.pushes());
    let store2 = BlobStore::open(tmp.path().join("s2")).unwrap();
    client
        .pull(&r, &amd64, &store2, &xbuild_registry::no_progress)
        .await
        .unwrap();
    assert!(store2.verify(&blob).unwrap());
    assert_eq!(store2.size_of(&blob).unwrap(), data.len() as u64);
}
