//! OCI 1.1 referrers against a real registry (Debian's docker-registry,
//! distribution 2.8, which has no referrers API: the tag schema is used).

mod common;

use common::*;
use xbuild_oci::descriptor::Encoded;
use xbuild_oci::media_types as mt;
use xbuild_oci::{BlobStore, Descriptor, ImageManifest, Reference};
use xbuild_registry::{referrers_tag, ReferrerIndexing};

const ARTIFACT_TYPE: &str = "application/vnd.docker.attestation.manifest.v1+json";

/// An artifact manifest with one in-toto layer whose subject is `subject`.
fn artifact(store: &BlobStore, subject: &Descriptor, payload: &[u8]) -> Descriptor {
    store.put_bytes(b"{}").unwrap();
    store.put_bytes(payload).unwrap();
    let layer = Descriptor::of_bytes("application/vnd.in-toto+json", payload).with_annotation(
        "in-toto.io/predicate-type",
        "https://slsa.dev/provenance/v1",
    );
    let mut m = ImageManifest::new_oci(Descriptor::of_bytes(mt::OCI_EMPTY, b"{}"), vec![layer]);
    m.artifact_type = Some(ARTIFACT_TYPE.into());
    m.subject = Some(Descriptor::new(
        subject.media_type.clone(),
        subject.digest.clone(),
        subject.size,
    ));
    let Encoded { bytes, descriptor } = m.encode().unwrap();
    store.put_bytes(&bytes).unwrap();
    descriptor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_list_referrers_with_the_tag_schema() {
    let Some(reg) = xbuild_testbed::Registry::start_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::open(tmp.path().join("store")).unwrap();
    let image = build_image(&store, &platform("linux/amd64"), "subject\n");
    let client = client(tmp.path());
    let r = Reference::parse(&reg.reference("test/app:1")).unwrap();
    client
        .push_image(&r, &store, &image, &|_| {})
        .await
        .unwrap();

    // Nothing refers to the image yet.
    let none = client.referrers(&r, &image.digest).await.unwrap();
    assert!(none.manifests.is_empty());

    let a1 = artifact(&store, &image, br#"{"n":1}"#);
    let a2 = artifact(&store, &image, br#"{"n":2}"#);
    let how = client
        .push_referrer(&r, &store, &a1, &image.digest, &|_| {})
        .await
        .unwrap();
    let tag = referrers_tag(&image.digest);
    assert_eq!(how, ReferrerIndexing::TagSchema { tag: tag.clone() });
    client
        .push_referrer(&r, &store, &a2, &image.digest, &|_| {})
        .await
        .unwrap();
    // Pushing the same one again does not duplicate it.
    client
        .push_referrer(&r, &store, &a1, &image.digest, &|_| {})
        .await
        .unwrap();

    let listed = client.referrers(&r, &image.digest).await.unwrap();
    let digests: Vec<_> = listed.manifests.iter().map(|d| d.digest.clone()).collect();
    assert_eq!(digests, vec![a1.digest.clone(), a2.digest.clone()]);

    // The tag schema index as a third-party client reads it.
    if xbuild_testbed::require_cmd("skopeo").is_some() {
        let v =
            xbuild_testbed::skopeo_inspect_raw(&format!("{}/test/app:{tag}", reg.host())).unwrap();
        assert_eq!(v["mediaType"], mt::OCI_INDEX);
        assert_eq!(v["manifests"][0]["artifactType"], ARTIFACT_TYPE);
        assert_eq!(v["manifests"][1]["digest"], a2.digest.as_str());
        let m =
            xbuild_testbed::skopeo_inspect_raw(&format!("{}/test/app@{}", reg.host(), a1.digest))
                .unwrap();
        assert_eq!(m["subject"]["digest"], image.digest.as_str());
    }
    // The image tag still names the image itself.
    let (_, _, d) = client.fetch_manifest(&r).await.unwrap();
    assert_eq!(d, image.digest);
}
