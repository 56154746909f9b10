//! Authentication against an htpasswd-protected registry: anonymous access
//! is refused with advice, login verifies and records, logout forgets.

mod common;

use common::*;
use xbuild_oci::{BlobStore, Reference};
use xbuild_registry::{no_progress, RegistryError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_push_pull_logout() {
    let Some(reg) = xbuild_testbed::Registry::start_with_htpasswd_or_skip("alice", "s3cret-pw")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cfg_path = tmp.path().join("config.json");
    let store = BlobStore::open(tmp.path().join("store")).unwrap();
    let amd64 = platform("linux/amd64");
    let desc = build_image(&store, &amd64, "secret image\n");
    let r = Reference::parse(&reg.reference("private/app:1")).unwrap();
    let client = client(tmp.path());

    // Anonymous: refused, with the registry named and advice given.
    let err = client.resolve(&r, &amd64).await.unwrap_err();
    assert!(err.is_unauthorized(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&reg.host()), "{msg}");
    assert!(
        msg.contains(&format!("xbuild login {}", reg.host())),
        "{msg}"
    );
    let err = client
        .push_image(&r, &store, &desc, &no_progress)
        .await
        .unwrap_err();
    assert!(err.is_unauthorized(), "{err:?}");

    // Wrong password: refused, nothing stored, password never shown.
    let err = client
        .login(&reg.host(), "alice", "wrong-pw")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("wrong-pw"));
    assert!(!cfg_path.exists());

    // Right password: stored as base64 user:pass under the host.
    client
        .login(&reg.host(), "alice", "s3cret-pw")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    use base64::Engine as _;
    assert_eq!(
        v["auths"][reg.host()]["auth"],
        base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw")
    );

    // The same client now works (its cached anonymous client was dropped).
    client
        .push_image(&r, &store, &desc, &no_progress)
        .await
        .unwrap();
    assert_eq!(
        client.resolve(&r, &amd64).await.unwrap().manifest_digest,
        desc.digest
    );
    // So does a fresh one reading the config, and skopeo with the creds.
    let fresh = common::client(tmp.path());
    let store2 = BlobStore::open(tmp.path().join("store2")).unwrap();
    let pulled = fresh.pull(&r, &amd64, &store2, &no_progress).await.unwrap();
    assert_eq!(pulled.descriptor.digest, desc.digest);
    if xbuild_testbed::require_cmd("skopeo").is_some() {
        let raw = xbuild_testbed::skopeo_inspect_raw_bytes(&r.to_string(), Some("alice:s3cret-pw"))
            .unwrap();
        assert_eq!(
            xbuild_testbed::sha256_digest(&raw).unwrap(),
            desc.digest.as_str()
        );
    }

    // A config holding a wrong password gives Unauthorized too.
    let bad_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        bad_dir.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"username":"alice","password":"nope"}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();
    let err = common::client(bad_dir.path())
        .resolve(&r, &amd64)
        .await
        .unwrap_err();
    assert!(err.is_unauthorized(), "{err:?}");

    // Logout forgets: entry gone, anonymous again.
    client.logout(&reg.host()).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    assert!(v["auths"].get(reg.host()).is_none(), "{v}");
    let err = client.resolve(&r, &amd64).await.unwrap_err();
    assert!(err.is_unauthorized(), "{err:?}");
    // Logging out twice is fine.
    client.logout(&reg.host()).unwrap();
}
