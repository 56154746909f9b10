//! Credential helpers (`credHelpers`, `credsStore`) through a fake
//! `docker-credential-fake` on PATH, against a real htpasswd registry.
//! One test in this binary: it changes PATH for the whole process.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use xbuild_oci::{BlobStore, Reference};
use xbuild_registry::{no_progress, DockerConfig};

const HELPER: &str = r#"#!/bin/sh
# A fake docker credential helper keeping one entry per server in $DIR.
DIR="$(dirname "$0")/store"
mkdir -p "$DIR"
read -r input
case "$1" in
  get)
    key=$(printf '%s' "$input" | tr '/:' '__')
    if [ -f "$DIR/$key" ]; then cat "$DIR/$key"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  store)
    key=$(printf '%s' "$input" | sed 's/.*"ServerURL":"\([^"]*\)".*/\1/' | tr '/:' '__')
    printf '%s' "$input" > "$DIR/$key" ;;
  erase)
    key=$(printf '%s' "$input" | tr '/:' '__')
    rm -f "$DIR/$key" ;;
  *) exit 2 ;;
esac
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_helpers() {
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("docker-credential-fake");
    std::fs::write(&helper, HELPER).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{}:{path}", bin.path().display()));
    let key = |server: &str| {
        bin.path()
            .join("store")
            .join(server.replace(['/', ':'], "_"))
    };

    // Parsing: credHelpers for one registry, credsStore for the rest,
    // `auths` when the helper has nothing.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("config.json");
    std::fs::create_dir_all(bin.path().join("store")).unwrap();
    std::fs::write(
        key("helped.example"),
        r#"{"ServerURL":"helped.example","Username":"hu","Secret":"hs"}"#,
    )
    .unwrap();
    std::fs::write(
        key("https://index.docker.io/v1/"),
        r#"{"ServerURL":"https://index.docker.io/v1/","Username":"du","Secret":"ds"}"#,
    )
    .unwrap();
    std::fs::write(
        &cfg,
        r#"{"credHelpers":{"helped.example":"fake","broken.example":"absent"},
            "credsStore":"fake",
            "auths":{"plain.example":{"auth":"cDpx"}}}"#,
    )
    .unwrap();
    let dc = DockerConfig::load(&cfg).unwrap();
    let basic = |u: &str, p: &str| {
        Some(xbuild_registry::Credential::Basic {
            username: u.into(),
            password: xbuild_registry::Secret::new(p),
        })
    };
    assert_eq!(
        dc.credentials_for("helped.example").unwrap(),
        basic("hu", "hs")
    );
    assert_eq!(dc.credentials_for("docker.io").unwrap(), basic("du", "ds"));
    assert_eq!(
        dc.credentials_for("plain.example").unwrap(),
        basic("p", "q")
    );
    assert_eq!(dc.credentials_for("nothing.example").unwrap(), None);
    let err = dc.credentials_for("broken.example").unwrap_err();
    assert!(
        err.to_string().contains("docker-credential-absent"),
        "{err}"
    );

    // A credsStore that is not installed falls back to `auths`.
    std::fs::write(
        &cfg,
        r#"{"credsStore":"desktop-absent","auths":{"plain.example":{"auth":"cDpx"}}}"#,
    )
    .unwrap();
    let dc = DockerConfig::load(&cfg).unwrap();
    assert_eq!(
        dc.credentials_for("plain.example").unwrap(),
        basic("p", "q")
    );

    // Against a real registry: login stores through the helper, pulls and
    // pushes get the credentials from it, logout erases them.
    let Some(reg) = xbuild_testbed::Registry::start_with_htpasswd_or_skip("bob", "pw-42") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"credHelpers":{{"{}":"fake"}}}}"#, reg.host()),
    )
    .unwrap();
    let client = client(dir.path());
    client.login(&reg.host(), "bob", "pw-42").await.unwrap();
    assert!(key(&reg.host()).exists());
    let conf = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert!(!conf.contains("pw-42"), "{conf}");

    let store = BlobStore::open(dir.path().join("store")).unwrap();
    let amd64 = platform("linux/amd64");
    let desc = build_image(&store, &amd64, "helped\n");
    let r = Reference::parse(&reg.reference("h/app:1")).unwrap();
    client
        .push_image(&r, &store, &desc, &no_progress)
        .await
        .unwrap();
    let fresh = common::client(dir.path());
    assert_eq!(
        fresh.resolve(&r, &amd64).await.unwrap().manifest_digest,
        desc.digest
    );

    client.logout(&reg.host()).unwrap();
    assert!(!key(&reg.host()).exists());
    let err = common::client(dir.path())
        .resolve(&r, &amd64)
        .await
        .unwrap_err();
    assert!(err.is_unauthorized(), "{err:?}");
}
