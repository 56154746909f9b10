//! Size caps on what a registry and its token service send (#16: "size
//! caps … on any JSON read from a network peer"), against the fake
//! bearer-token registry of xbuild-testbed on 127.0.0.1: an endless token
//! answer fails pulls and pushes at the cap (1 MiB) with the registry and
//! the token service named, a huge announced length is refused by its
//! header, an endless error answer to a blob GET is read only up to 64,000
//! bytes; the server could send only a bounded amount and the test
//! process's memory stays small. A normal token is fetched once and is the
//! one oci-client's own requests carry; a blob whose bytes do not hash to
//! its digest is a mismatch.

mod common;

use common::*;
use xbuild_oci::{BlobStore, Digest, Reference};
use xbuild_registry::no_progress;
use xbuild_testbed::{Content, TokenMode, TokenRegistry};

/// Peak resident memory of this process (nextest runs each test in its
/// own process), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_token_answer_fails_pull_and_push_at_the_cap() {
    let fake = TokenRegistry::start(TokenMode::Endless, Content::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let client = client(tmp.path());
    let amd64 = platform("linux/amd64");
    let r = Reference::parse(&format!("{}/app/endless:1", fake.host())).unwrap();

    let err = client.resolve(&r, &amd64).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&fake.host()), "{msg}");
    assert!(
        msg.contains(&format!("token service http://{}", fake.host())),
        "{msg}"
    );
    assert!(msg.contains("more than 1048576 bytes"), "{msg}");
    assert!(!err.is_transient(), "{err:?}");

    // A push asks for a push token: refused the same way.
    let store = BlobStore::open(tmp.path().join("store")).unwrap();
    let desc = build_image(&store, &amd64, "never pushed\n");
    let err = client
        .push_image(&r, &store, &desc, &no_progress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");

    // The reads stopped at the cap: the server could only fill the socket
    // buffers past it, and the process never held the answer.
    let sent = fake.token_bytes_sent();
    let rss = peak_rss_mib();
    eprintln!("token bytes the server wrote: {sent}; peak RSS {rss} MiB");
    assert!(sent < 64 << 20, "{sent} bytes sent");
    assert!(rss < 100, "peak RSS {rss} MiB");
    // Nothing reached the registry without a token.
    assert_eq!(fake.unauthorized(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_answer_announcing_a_huge_length_is_refused_by_its_header() {
    let fake = TokenRegistry::start(TokenMode::HugeLength, Content::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let client = client(tmp.path());
    let r = Reference::parse(&format!("{}/app/huge:1", fake.host())).unwrap();
    let err = client
        .resolve(&r, &platform("linux/amd64"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("(8589934592 bytes seen)"), "{msg}");
    assert!(msg.contains(&fake.host()), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_token_is_fetched_once_and_carried_by_every_request() {
    let tmp = tempfile::tempdir().unwrap();
    let amd64 = platform("linux/amd64");
    let (desc, m, content) = served_image(tmp.path());
    let fake = TokenRegistry::start(TokenMode::Good, content).unwrap();
    let client = client(tmp.path());
    let r = Reference::parse(&format!("{}/app/good:1", fake.host())).unwrap();
    let store = BlobStore::open(tmp.path().join("dst")).unwrap();
    let pulled = client.pull(&r, &amd64, &store, &no_progress).await.unwrap();
    assert_eq!(pulled.descriptor.digest, desc.digest);
    for l in &m.layers {
        assert!(store.verify(&l.digest).unwrap(), "{}", l.digest);
    }
    assert!(client.manifest_exists(&r, &desc.digest).await.unwrap());
    let absent = Digest::sha256_of(b"no such manifest");
    assert!(!client.manifest_exists(&r, &absent).await.unwrap());
    // One token GET (ours); oci-client's blob GETs used it and never asked
    // the token service themselves, nor went out without it.
    assert_eq!(fake.token_requests(), 1);
    assert_eq!(fake.unauthorized(), 0);
}

/// A store with one image, and the fake registry content serving it.
fn served_image(
    tmp: &std::path::Path,
) -> (xbuild_oci::Descriptor, xbuild_oci::ImageManifest, Content) {
    let src = BlobStore::open(tmp.join("src")).unwrap();
    let desc = build_image(&src, &platform("linux/amd64"), "blob bytes\n");
    let manifest = src.read_to_vec(&desc.digest).unwrap();
    let m = xbuild_oci::ImageManifest::from_slice(&manifest).unwrap();
    let mut content = Content::default();
    content.tags.insert("1".into(), desc.digest.to_string());
    content
        .by_digest
        .insert(desc.digest.to_string(), (desc.media_type.clone(), manifest));
    for d in std::iter::once(&m.config).chain(&m.layers) {
        content.by_digest.insert(
            d.digest.to_string(),
            (d.media_type.clone(), src.read_to_vec(&d.digest).unwrap()),
        );
    }
    (desc, m, content)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_error_answer_to_a_blob_get_is_read_only_up_to_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, m, mut content) = served_image(tmp.path());
    let layer = m.layers[0].clone();
    content.endless_errors.push(layer.digest.to_string());
    let fake = TokenRegistry::start(TokenMode::Good, content).unwrap();
    let r = Reference::parse(&format!("{}/app/errors:1", fake.host())).unwrap();
    let client = client(tmp.path());
    let store = BlobStore::open(tmp.path().join("dst")).unwrap();
    let err = client
        .pull_blob(&r, &layer, &store, &no_progress)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&fake.host()), "{msg}");
    assert!(msg.contains("HTTP 500"), "{msg}");
    // Retried (a 500 is transient), each attempt reading at most the cap.
    let sent = fake.token_bytes_sent();
    let rss = peak_rss_mib();
    eprintln!("error bytes the server wrote: {sent}; peak RSS {rss} MiB");
    assert!(rss < 100, "peak RSS {rss} MiB");
    assert!(!store.exists(&layer.digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_whose_bytes_do_not_hash_to_its_digest_is_a_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, m, mut content) = served_image(tmp.path());
    let config = m.config.clone();
    // Same length, other bytes.
    let entry = content.by_digest.get_mut(config.digest.as_str()).unwrap();
    entry.1.iter_mut().for_each(|b| *b = b' ');
    let fake = TokenRegistry::start(TokenMode::Good, content).unwrap();
    let r = Reference::parse(&format!("{}/app/corrupt:1", fake.host())).unwrap();
    let client = client(tmp.path());
    let err = client.fetch_blob(&r, &config).await.unwrap_err();
    assert!(
        matches!(err, xbuild_registry::RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(config.digest.as_str()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_error_answer_to_an_upload_is_read_only_up_to_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let content = Content {
        endless_upload_errors: true,
        ..Content::default()
    };
    let fake = TokenRegistry::start(TokenMode::Good, content).unwrap();
    let r = Reference::parse(&format!("{}/app/uploads:1", fake.host())).unwrap();
    let client = client(tmp.path());
    let store = BlobStore::open(tmp.path().join("store")).unwrap();
    let desc = build_image(&store, &platform("linux/amd64"), "never stored\n");
    let err = client
        .push_image(&r, &store, &desc, &no_progress)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&fake.host()), "{msg}");
    assert!(msg.contains("HTTP 500"), "{msg}");
    let rss = peak_rss_mib();
    eprintln!(
        "error bytes the server wrote: {}; peak RSS {rss} MiB",
        fake.token_bytes_sent()
    );
    assert!(rss < 100, "peak RSS {rss} MiB");
    assert_eq!(fake.unauthorized(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_referrers_api_answer_is_read_and_an_endless_error_is_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let subject = Digest::sha256_of(b"subject manifest");
    let referrer = xbuild_oci::Descriptor::of_bytes(
        xbuild_oci::media_types::OCI_MANIFEST,
        b"a signature manifest",
    );
    let index = xbuild_oci::ImageIndex::new_oci(vec![referrer.clone()])
        .encode()
        .unwrap();
    let mut content = Content::default();
    // The fake serves /v2/<repo>/referrers/<subject> like a blob.
    content.by_digest.insert(
        subject.to_string(),
        (
            xbuild_oci::media_types::OCI_INDEX.to_string(),
            index.bytes.clone(),
        ),
    );
    let fake = TokenRegistry::start(TokenMode::Good, content).unwrap();
    let r = Reference::parse(&format!("{}/app/signed:1", fake.host())).unwrap();
    let client = client(tmp.path());
    let got = client.referrers(&r, &subject).await.unwrap();
    assert_eq!(got.manifests.len(), 1);
    assert_eq!(got.manifests[0].digest, referrer.digest);

    let content = Content {
        endless_errors: vec![subject.to_string()],
        ..Content::default()
    };
    let fake = TokenRegistry::start(TokenMode::Good, content).unwrap();
    let r = Reference::parse(&format!("{}/app/signed:1", fake.host())).unwrap();
    let err = client.referrers(&r, &subject).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    let rss = peak_rss_mib();
    assert!(rss < 100, "peak RSS {rss} MiB");
}
