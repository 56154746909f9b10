//! Pull and push images over [`oci_client`]: credentials from Docker's
//! `config.json` and credential helpers, a token cache shared by clones of
//! one [`Registry`], plain HTTP for loopback and configured insecure
//! registries, bounded concurrency, retries with exponential backoff, and
//! typed errors that name the registry, the reference and the reason.
//!
//! Everything is stored in and read from an [`xbuild_oci::BlobStore`];
//! layers are streamed, never held in memory whole.
//!
//! Every body read from a registry or its token service has a cap:
//! manifests [`MAX_MANIFEST_SIZE`], configs and small blobs 16 MiB, token
//! answers [`token::MAX_TOKEN_RESPONSE`], error answers
//! [`token::MAX_ERROR_BODY`]. Where oci-client would read a body without
//! one (token fetches, error answers of blob GETs, uploads and manifest
//! PUTs, the referrers API, its digest GET fallback) the request is made
//! here with the same credentials and token ([`token`], `blob_get`,
//! `upload`, [`referrers`]); oci-client keeps the credential store and the
//! token cache (primed by [`token`], so that any request it makes carries
//! a token fetched with a cap).
#![warn(missing_docs)]

pub mod auth;
mod blob_get;
pub mod error;
pub mod http;
mod login;
mod pull;
mod push;
pub mod referrers;
pub mod token;
mod upload;

pub use auth::{Credential, DockerConfig, Secret};
pub use error::RegistryError;
pub use referrers::{referrers_tag, ReferrerIndexing};

use crate::auth::normalize_registry_key;
use crate::error::Ctx;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xbuild_oci::reference::{api_host, is_loopback_host};
use xbuild_oci::{Descriptor, Digest, ImageConfig, ImageManifest, Reference};

/// The `User-Agent` sent to registries.
pub use http::USER_AGENT;

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`host` or `host:port`) spoken to over plain HTTP besides
    /// loopback ones (`localhost`, `127.0.0.0/8`, `::1`), which always are.
    pub insecure: Vec<String>,
    /// Docker config file; default `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// Blobs uploaded or downloaded at once (at least 1).
    pub max_concurrent: usize,
    /// Retries after a connection error, 5xx or 429 (not after other 4xx).
    pub retries: u32,
    /// A directory where the repositories known to hold each blob are kept
    /// between runs (one file per digest, one `registry repository` line per
    /// place), so a later push can mount a base image's layers from the
    /// repository they were pulled from instead of uploading them.
    pub origins: Option<PathBuf>,
    /// The deadline for progress: a request that moves no bytes for this
    /// long fails (naming the registry), and retries stop once twice this
    /// long has passed since the first attempt. Default
    /// `$XBUILD_REGISTRY_TIMEOUT` seconds, else 60.
    pub timeout: Duration,
}

/// The environment variable that sets [`RegistryConfig::timeout`] (seconds).
pub const TIMEOUT_ENV: &str = "XBUILD_REGISTRY_TIMEOUT";

/// [`RegistryConfig::timeout`] when `XBUILD_REGISTRY_TIMEOUT` is unset or invalid.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest manifest or index accepted from a registry: containerd's
/// `MaxManifestSize` (its resolver refuses larger ones), rounded to 4 MiB.
/// Bodies are read up to this many bytes and no further.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// `XBUILD_REGISTRY_TIMEOUT` (whole or fractional seconds, > 0), else the default.
pub fn timeout_from_env() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e7)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_TIMEOUT)
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            docker_config: None,
            max_concurrent: 3,
            retries: 3,
            origins: None,
            timeout: timeout_from_env(),
        }
    }
}

/// Which way bytes are moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Registry to store.
    Pull,
    /// Store to registry.
    Push,
}

/// Bytes transferred for one blob. Reported when a transfer starts
/// (`current == 0`), as it goes, and when it ends (`current == total`).
/// Blobs that need no transfer (present already, or mounted) report nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Pull or push.
    pub kind: Direction,
    /// The blob.
    pub digest: Digest,
    /// Bytes done so far.
    pub current: u64,
    /// The blob's size.
    pub total: u64,
}

/// A progress callback.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// A progress callback that ignores everything.
pub fn no_progress(_: Progress) {}

/// What [`Registry::resolve`] found for one platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Digest of the platform's image manifest.
    pub manifest_digest: Digest,
    /// The image manifest.
    pub manifest: ImageManifest,
    /// Its exact bytes.
    pub manifest_bytes: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// The image config.
    pub config: ImageConfig,
    /// Its exact bytes.
    pub config_bytes: Vec<u8>,
    /// Digest of the index the manifest was picked from, if the reference
    /// named an index / manifest list.
    pub index_digest: Option<Digest>,
}

/// What [`Registry::pull`] stored.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// Descriptor of the stored manifest (with the image's platform).
    pub descriptor: Descriptor,
    /// The image manifest.
    pub manifest: ImageManifest,
    /// The image config.
    pub config: ImageConfig,
    /// Digest of the index the manifest was picked from, if any.
    pub index_digest: Option<Digest>,
}

/// One oci-client per registry host: its protocol and credentials are fixed
/// at creation, its token cache is shared by every clone.
#[derive(Clone)]
pub(crate) struct HostClient {
    pub client: oci_client::Client,
    pub auth: RegistryAuth,
    /// Bearer tokens fetched with capped reads, per (repository, push), see
    /// [`token`].
    pub tokens: Arc<Mutex<HashMap<(String, bool), token::Cached>>>,
}

struct Inner {
    cfg: RegistryConfig,
    docker_config: PathBuf,
    hosts: Mutex<HashMap<String, HostClient>>,
    /// The plain HTTP client, made on first use.
    http: Mutex<Option<reqwest::Client>>,
    /// Blob digest -> (registry, repository) known to hold it, for mounts.
    known: Mutex<HashMap<Digest, BTreeSet<(String, String)>>>,
}

/// A registry client. Cheap to clone; clones share credentials, tokens and
/// what they know about where blobs live.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("cfg", &self.inner.cfg)
            .field("docker_config", &self.inner.docker_config)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A client with `cfg`.
    pub fn new(cfg: RegistryConfig) -> Self {
        let docker_config = cfg
            .docker_config
            .clone()
            .unwrap_or_else(DockerConfig::default_path);
        Registry {
            inner: Arc::new(Inner {
                cfg,
                docker_config,
                hosts: Mutex::new(HashMap::new()),
                http: Mutex::new(None),
                known: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.cfg
    }

    /// The docker config file used for credentials.
    pub fn docker_config_path(&self) -> &std::path::Path {
        &self.inner.docker_config
    }

    /// Whether `registry` (as written in references) is spoken to over
    /// plain HTTP.
    pub fn is_plain_http(&self, registry: &str) -> bool {
        if is_loopback_host(registry) {
            return true;
        }
        let host = normalize_registry_key(registry);
        let bare = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&host);
        self.inner.cfg.insecure.iter().any(|i| {
            let i = normalize_registry_key(i);
            i == host || (!i.contains(':') && i == bare)
        })
    }

    /// The client for `registry`, created with its credentials on first use.
    pub(crate) async fn host(&self, registry: &str) -> Result<HostClient, RegistryError> {
        let key = normalize_registry_key(registry);
        if let Some(h) = self.inner.hosts.lock().expect("hosts lock").get(&key) {
            return Ok(h.clone());
        }
        let path = self.inner.docker_config.clone();
        let reg = key.clone();
        let cred =
            tokio::task::spawn_blocking(move || DockerConfig::load(&path)?.credentials_for(&reg))
                .await
                .map_err(|e| RegistryError::CredentialHelper {
                    helper: "(lookup)".into(),
                    registry: key.clone(),
                    detail: e.to_string(),
                })??;
        let auth = cred
            .as_ref()
            .map(Credential::to_oci)
            .unwrap_or(RegistryAuth::Anonymous);
        let client = self.oci_client(&key);
        client.store_auth_if_needed(api_host(&key), &auth).await;
        let hc = HostClient {
            client,
            auth,
            tokens: Arc::default(),
        };
        let mut hosts = self.inner.hosts.lock().expect("hosts lock");
        Ok(hosts.entry(key).or_insert(hc).clone())
    }

    fn oci_client(&self, registry: &str) -> oci_client::Client {
        let n = self.inner.cfg.max_concurrent.max(1);
        let protocol = if self.is_plain_http(registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        oci_client::Client::new(ClientConfig {
            protocol,
            platform_resolver: None,
            max_concurrent_upload: n,
            max_concurrent_download: n,
            connect_timeout: Some(self.connect_timeout()),
            // reqwest's read timeout restarts on every read: no bytes for
            // this long fails the request.
            read_timeout: Some(self.inner.cfg.timeout),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        })
    }

    fn connect_timeout(&self) -> Duration {
        self.inner.cfg.timeout.min(Duration::from_secs(10))
    }

    /// A plain HTTP client with the same deadlines (for requests oci-client
    /// cannot bound, such as size-capped manifest reads).
    pub(crate) fn http(&self) -> Result<reqwest::Client, reqwest::Error> {
        if let Some(c) = self.inner.http.lock().expect("http lock").as_ref() {
            return Ok(c.clone());
        }
        let c = http::client_builder(None)
            .connect_timeout(self.connect_timeout())
            .read_timeout(self.inner.cfg.timeout)
            .build()?;
        *self.inner.http.lock().expect("http lock") = Some(c.clone());
        Ok(c)
    }

    /// Drop the cached client (credentials and tokens) of `registry`.
    pub(crate) fn forget_host(&self, registry: &str) {
        self.inner
            .hosts
            .lock()
            .expect("hosts lock")
            .remove(&normalize_registry_key(registry));
    }

    /// Run `f` until it succeeds, fails with a non-transient error, or has
    /// been retried `cfg.retries` times, sleeping 100 ms, 200 ms, 400 ms, ...
    /// (at most 5 s) in between. No retry starts once twice
    /// [`RegistryConfig::timeout`] has passed since the first attempt, so
    /// a registry that accepts connections and never answers fails the
    /// operation in bounded time.
    pub(crate) async fn retry<T, Fut>(&self, mut f: impl FnMut() -> Fut) -> Result<T, RegistryError>
    where
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let budget = self.inner.cfg.timeout.saturating_mul(2);
        let start = std::time::Instant::now();
        let mut attempt: u32 = 0;
        loop {
            match f().await {
                Err(e) if e.is_transient() && attempt < self.inner.cfg.retries => {
                    let ms = 100u64.saturating_mul(1 << attempt.min(10)).min(5_000);
                    let pause = Duration::from_millis(ms);
                    if start.elapsed() + pause >= budget {
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Remember that `registry/repository` holds `digest` (and persist it
    /// under [`RegistryConfig::origins`]).
    pub(crate) fn remember(&self, digest: &Digest, registry: &str, repository: &str) {
        let place = (normalize_registry_key(registry), repository.to_string());
        let new = self
            .inner
            .known
            .lock()
            .expect("known lock")
            .entry(digest.clone())
            .or_default()
            .insert(place.clone());
        if new {
            if let Some(dir) = &self.inner.cfg.origins {
                let path = origins_file(dir, digest);
                let listed = std::fs::read_to_string(&path).unwrap_or_default();
                let line = format!("{} {}", place.0, place.1);
                if !listed.lines().any(|l| l == line) {
                    use std::io::Write;
                    // Best effort: a lost line only costs an upload later.
                    let _ = std::fs::create_dir_all(dir).and_then(|_| {
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)
                            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
                    });
                }
            }
        }
    }

    /// Another repository of `registry` known to hold `digest`.
    pub(crate) fn known_elsewhere(
        &self,
        digest: &Digest,
        registry: &str,
        repository: &str,
    ) -> Option<String> {
        let reg = normalize_registry_key(registry);
        let in_memory = self
            .inner
            .known
            .lock()
            .expect("known lock")
            .get(digest)
            .and_then(|places| {
                places
                    .iter()
                    .find(|(r, repo)| *r == reg && repo != repository)
                    .map(|(_, repo)| repo.clone())
            });
        if in_memory.is_some() {
            return in_memory;
        }
        let dir = self.inner.cfg.origins.as_ref()?;
        let listed = std::fs::read_to_string(origins_file(dir, digest)).ok()?;
        listed.lines().find_map(|l| {
            let (r, repo) = l.split_once(' ')?;
            (r == reg && repo != repository).then(|| repo.to_string())
        })
    }
}

impl Registry {
    /// Every place (`registry`, `repository`) known to hold `digest`: seen
    /// in this process, or remembered under [`RegistryConfig::origins`].
    pub fn origins_of(&self, digest: &Digest) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .inner
            .known
            .lock()
            .expect("known lock")
            .get(digest)
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default();
        if let Some(dir) = &self.inner.cfg.origins {
            let listed = std::fs::read_to_string(origins_file(dir, digest)).unwrap_or_default();
            for l in listed.lines() {
                if let Some((r, repo)) = l.split_once(' ') {
                    let place = (r.to_string(), repo.to_string());
                    if !out.contains(&place) {
                        out.push(place);
                    }
                }
            }
        }
        out
    }

    /// Downloads `desc` again from a repository known to hold it (see
    /// [`Registry::origins_of`]), replacing a missing or damaged copy in
    /// `store`. Returns false when no place is known; the last error when
    /// every place failed.
    pub async fn refetch(
        &self,
        desc: &Descriptor,
        store: &xbuild_oci::BlobStore,
        progress: ProgressFn<'_>,
    ) -> Result<bool, RegistryError> {
        let mut last = None;
        for (registry, repo) in self.origins_of(&desc.digest) {
            let Ok(r) = Reference::parse(&format!("{registry}/{repo}@{}", desc.digest)) else {
                continue;
            };
            match self.pull_blob(&r, desc, store, progress).await {
                Ok(()) => return Ok(true),
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None => Ok(false),
        }
    }
}

/// The oci-client reference for `r`'s repository at `tag`.
pub(crate) fn oci_tag_ref(r: &Reference, tag: &str) -> oci_client::Reference {
    oci_client::Reference::with_tag(
        r.api_registry().to_string(),
        r.repository().to_string(),
        tag.to_string(),
    )
}

/// The oci-client reference for `r`'s repository at `digest`.
///
/// The digest doubles as the tag: oci-client's fallback for registries that
/// send no `Location` after a manifest PUT strips the tag from the URL, and
/// the URL of a digest reference ends with the digest.
pub(crate) fn oci_digest_ref(r: &Reference, digest: &Digest) -> oci_client::Reference {
    oci_client::Reference::with_tag_and_digest(
        r.api_registry().to_string(),
        r.repository().to_string(),
        digest.to_string(),
        digest.to_string(),
    )
}

/// The oci-client reference for `r` itself (its digest if it has one, else
/// its tag).
pub(crate) fn oci_ref(r: &Reference) -> oci_client::Reference {
    match r.digest() {
        Some(d) => oci_digest_ref(r, d),
        None => oci_tag_ref(r, r.tag().unwrap_or("latest")),
    }
}

/// Error context for an operation on `r` about `what`.
pub(crate) fn ctx<'a>(r: &'a Reference, what: impl Into<String>) -> Ctx<'a> {
    Ctx {
        registry: r.registry(),
        reference: r.to_string(),
        what: what.into(),
    }
}

/// What a manifest request for `r` is about, for `NotFound` messages.
pub(crate) fn manifest_what(r: &Reference) -> String {
    match (r.digest(), r.tag()) {
        (Some(d), _) => format!("manifest {d}"),
        (None, Some(t)) => format!("tag {t:?} of repository {}", r.repository()),
        (None, None) => format!("repository {}", r.repository()),
    }
}

fn origins_file(dir: &std::path::Path, digest: &Digest) -> PathBuf {
    dir.join(digest.as_str().replace(':', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_rules() {
        let r = Registry::new(RegistryConfig {
            insecure: vec!["reg.lan".into(), "other.lan:5000".into()],
            ..RegistryConfig::default()
        });
        assert!(r.is_plain_http("localhost:5000"));
        assert!(r.is_plain_http("127.0.0.1:41234"));
        assert!(r.is_plain_http("[::1]:5000"));
        assert!(r.is_plain_http("reg.lan"));
        assert!(r.is_plain_http("reg.lan:8080"));
        assert!(r.is_plain_http("other.lan:5000"));
        assert!(!r.is_plain_http("other.lan"));
        assert!(!r.is_plain_http("docker.io"));
    }

    #[test]
    fn oci_refs() {
        let r = Reference::parse("busybox:1").unwrap();
        let o = oci_ref(&r);
        assert_eq!(o.resolve_registry(), "registry-1.docker.io");
        assert_eq!(o.repository(), "library/busybox");
        assert_eq!(o.tag(), Some("1"));
        let d = Digest::sha256_of(b"x");
        let o = oci_ref(&r.with_digest(d.clone()));
        assert_eq!(o.digest(), Some(d.as_str()));
        assert_eq!(manifest_what(&r), "tag \"1\" of repository library/busybox");
    }

    #[tokio::test]
    async fn retry_is_bounded() {
        let r = Registry::new(RegistryConfig {
            retries: 2,
            ..RegistryConfig::default()
        });
        let reference = Reference::parse("localhost:1/a").unwrap();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let res: Result<(), _> = r
            .retry(|| async {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(ctx(&reference, "x").unreachable("refused"))
            })
            .await;
        assert!(res.is_err());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        let calls = std::sync::atomic::AtomicU32::new(0);
        let _: Result<(), _> = r
            .retry(|| async {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(ctx(&reference, "x").status(404, "nope"))
            })
            .await;
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// Retries stop once twice the progress deadline has passed, however
    /// many are left: slow failures cannot add up to minutes.
    #[tokio::test]
    async fn retries_are_bounded_in_total_time() {
        let r = Registry::new(RegistryConfig {
            retries: 1000,
            timeout: Duration::from_millis(200),
            ..RegistryConfig::default()
        });
        let reference = Reference::parse("localhost:1/a").unwrap();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let res: Result<(), _> = r
            .retry(|| async {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                Err(ctx(&reference, "x").unreachable("timed out"))
            })
            .await;
        assert!(res.is_err());
        let n = calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!((2..=3).contains(&n), "{n} attempts within a 400 ms budget");
    }
}
