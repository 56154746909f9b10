//! Reading from registries: [`Registry::fetch_manifest`],
//! [`Registry::resolve`] and [`Registry::pull`].

use crate::{
    ctx, manifest_what, Direction, HostClient, Progress, ProgressFn, Pulled, Registry,
    RegistryError, Resolved, MAX_MANIFEST_SIZE,
};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use std::io::Write;
use xbuild_oci::manifest::Manifest;
use xbuild_oci::media_types as mt;
use xbuild_oci::store::StoreError;
use xbuild_oci::{BlobStore, Descriptor, Digest, ImageConfig, Platform, Reference};

/// Media types asked for when fetching a manifest.
pub(crate) const ACCEPT: &[&str] = &[
    mt::OCI_INDEX,
    mt::DOCKER_MANIFEST_LIST,
    mt::OCI_MANIFEST,
    mt::DOCKER_MANIFEST,
];

/// Largest config (or other small JSON blob) read into memory.
const MAX_SMALL_BLOB: u64 = 32 << 20;

/// The media type of a fetched manifest document: its own `mediaType`, else
/// what its shape says.
pub(crate) fn media_type_of(bytes: &[u8]) -> String {
    if let Ok(m) = Manifest::parse(bytes, None) {
        return m.media_type().to_string();
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    if let Some(m) = v.get("mediaType").and_then(|m| m.as_str()) {
        return m.to_string();
    }
    if v.get("manifests").is_some() {
        mt::OCI_INDEX.to_string()
    } else {
        mt::OCI_MANIFEST.to_string()
    }
}

/// Pick the index entry for `platform`: an exact (normalized) match, else
/// an entry of the same os/architecture when no variant was asked for.
fn pick<'a>(index: &'a xbuild_oci::ImageIndex, platform: &Platform) -> Option<&'a Descriptor> {
    index.find_platform(platform).or_else(|| {
        if platform.variant().is_some() {
            return None;
        }
        index.manifests.iter().find(|d| {
            d.platform()
                .is_some_and(|p| p.same_arch(platform) && mt::is_manifest(&d.media_type))
        })
    })
}

impl Registry {
    /// Fetch the raw manifest (or index) `r` names: its exact bytes, media
    /// type and digest (verified against `r`'s digest when it has one).
    pub async fn fetch_manifest(
        &self,
        r: &Reference,
    ) -> Result<(Vec<u8>, String, Digest), RegistryError> {
        let hc = self.host(r.registry()).await?;
        let c = ctx(r, manifest_what(r));
        let (bytes, header) = self
            .retry(|| async { self.get_manifest_capped(&hc, r, &c).await })
            .await?;
        // The digest: the reference's, else the registry's header (when its
        // algorithm is known), else sha256 of the bytes.
        let digest = match (r.digest(), header.as_deref().map(Digest::parse)) {
            (Some(d), _) => d.clone(),
            (None, Some(Ok(d))) => d,
            _ => Digest::sha256_of(&bytes),
        };
        // oci-client checks the bytes against the digest it returns when the
        // algorithms agree; check the reference's digest here too.
        let actual = Digest::of(digest.algorithm(), &bytes);
        if actual != digest {
            return Err(c.mismatch(&digest, format!("manifest bytes hash to {actual}")));
        }
        if let Some(want) = r.digest() {
            if *want != digest && Digest::of(want.algorithm(), &bytes) != *want {
                return Err(c.mismatch(want, format!("registry served {digest}")));
            }
        }
        let media_type = media_type_of(&bytes);
        Ok((bytes.to_vec(), media_type, digest))
    }

    /// GET the manifest `r` names with oci-client's credentials and token,
    /// reading at most [`MAX_MANIFEST_SIZE`] bytes of body: a larger (or
    /// endless) body fails at the cap, never buffering more. Returns the
    /// bytes and the `Docker-Content-Digest` header.
    async fn get_manifest_capped(
        &self,
        hc: &HostClient,
        r: &Reference,
        c: &crate::error::Ctx<'_>,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let token = self
            .prime_token(hc, r, oci_client::RegistryOperation::Pull, c)
            .await?;
        let scheme = if self.is_plain_http(r.registry()) {
            "http"
        } else {
            "https"
        };
        let at = match r.digest() {
            Some(d) => d.to_string(),
            None => r.tag().unwrap_or("latest").to_string(),
        };
        let url = format!(
            "{scheme}://{}/v2/{}/manifests/{at}",
            r.api_registry(),
            r.repository()
        );
        let http = self.http().map_err(|e| c.reqwest(&e))?;
        let mut req = http
            .get(&url)
            .header(reqwest::header::ACCEPT, ACCEPT.join(", "));
        req = match (&token, &hc.auth) {
            (Some(t), _) => req.bearer_auth(t),
            (None, oci_client::secrets::RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
            (None, oci_client::secrets::RegistryAuth::Bearer(t)) => req.bearer_auth(t),
            (None, oci_client::secrets::RegistryAuth::Anonymous) => req,
        };
        let mut res = req.send().await.map_err(|e| c.reqwest(&e))?;
        let status = res.status().as_u16();
        let too_large = |n: u64| {
            c.protocol(
                None,
                format!(
                    "the manifest is larger than {MAX_MANIFEST_SIZE} bytes ({n} bytes read), \
                     more than any image needs; refusing it"
                ),
            )
        };
        let cap = if status == 200 {
            MAX_MANIFEST_SIZE
        } else {
            crate::token::MAX_ERROR_BODY
        };
        let header = res
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match crate::token::read_capped(&mut res, cap)
            .await
            .map_err(|e| c.reqwest(&e))?
        {
            Ok(body) => body,
            Err(n) if status == 200 => return Err(too_large(n)),
            // An error body past the cap: the status says enough.
            Err(_) => Vec::new(),
        };
        if status != 200 {
            let text = String::from_utf8_lossy(&body);
            if status == 404 || text.contains("MANIFEST_UNKNOWN") || text.contains("NAME_UNKNOWN") {
                return Err(c.not_found());
            }
            return Err(c.status(status, format!("GET {url}: HTTP {status}")));
        }
        Ok((body, header))
    }

    /// Resolve `r` for `platform`: the manifest (picked from an index when
    /// `r` names one), its digest and the image config. No layers.
    pub async fn resolve(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<Resolved, RegistryError> {
        let (bytes, media_type, digest) = self.fetch_manifest(r).await?;
        let bad = |what: &'static str, detail: String| RegistryError::Invalid {
            reference: r.to_string(),
            what,
            detail,
        };
        let doc = Manifest::parse(&bytes, Some(&media_type))
            .map_err(|e| bad("manifest", e.to_string()))?;
        let (manifest_bytes, media_type, manifest_digest, index_digest, manifest) = match doc {
            Manifest::Image(m) => (bytes, media_type, digest, None, m),
            Manifest::Index(index) => {
                let entry = pick(&index, platform).ok_or_else(|| RegistryError::NoPlatform {
                    reference: r.to_string(),
                    platform: platform.clone(),
                    available: index
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform())
                        .collect(),
                })?;
                let child = r.with_digest(entry.digest.clone());
                let (cb, cmt, cd) = self.fetch_manifest(&child).await?;
                let m = match Manifest::parse(&cb, Some(&cmt)) {
                    Ok(Manifest::Image(m)) => m,
                    Ok(Manifest::Index(_)) => {
                        return Err(bad(
                            "index",
                            format!("entry {} for {platform} is an index itself", entry.digest),
                        ))
                    }
                    Err(e) => return Err(bad("manifest", e.to_string())),
                };
                (cb, cmt, cd, Some(digest), m)
            }
        };
        let config_bytes = self.fetch_small_blob(r, &manifest.config).await?;
        let config = ImageConfig::from_slice(&config_bytes)
            .map_err(|e| bad("image config", e.to_string()))?;
        // A single-platform image is used whatever platform its config
        // names, as BuildKit does; the build warns about a mismatch
        // (InvalidBaseImagePlatform).
        Ok(Resolved {
            manifest_digest,
            manifest,
            manifest_bytes,
            media_type,
            config,
            config_bytes,
            index_digest,
        })
    }

    /// Pull `r` for `platform` into `store`: manifest, config and every
    /// layer not already present, `max_concurrent` at a time, each streamed
    /// to disk and verified against its digest and size.
    pub async fn pull(
        &self,
        r: &Reference,
        platform: &Platform,
        store: &BlobStore,
        progress: ProgressFn<'_>,
    ) -> Result<Pulled, RegistryError> {
        let res = self.resolve(r, platform).await?;
        let put = |bytes: &[u8], d: &Digest| -> Result<(), RegistryError> {
            store.ingest(bytes, Some(d), Some(bytes.len() as u64))?;
            Ok(())
        };
        let mut blobs: Vec<&Descriptor> = Vec::new();
        for l in &res.manifest.layers {
            if !blobs.iter().any(|b| b.digest == l.digest) {
                blobs.push(l);
            }
        }
        let n = self.config().max_concurrent.max(1);
        // Owned items: a closure over `&Descriptor` makes the future's Send
        // bound higher-ranked, which rustc cannot prove (callers need Send).
        let owned: Vec<Descriptor> = blobs.into_iter().cloned().collect();
        futures_util::stream::iter(owned)
            .map(|d| async move { self.pull_blob(r, &d, store, progress).await })
            .buffer_unordered(n)
            .try_collect::<Vec<()>>()
            .await?;
        // Config and manifest last, so that a stored manifest implies its
        // blobs are there.
        put(&res.config_bytes, &res.manifest.config.digest)?;
        put(&res.manifest_bytes, &res.manifest_digest)?;
        for d in std::iter::once(&res.manifest.config).chain(&res.manifest.layers) {
            self.remember(&d.digest, r.registry(), r.repository());
        }
        self.remember(&res.manifest_digest, r.registry(), r.repository());
        let descriptor = Descriptor::new(
            res.media_type.clone(),
            res.manifest_digest.clone(),
            res.manifest_bytes.len() as u64,
        )
        .with_platform(&res.config.platform());
        Ok(Pulled {
            descriptor,
            manifest: res.manifest,
            config: res.config,
            index_digest: res.index_digest,
        })
    }

    /// Download a small blob (a config) into memory, verified.
    pub(crate) async fn fetch_small_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let c = ctx(r, format!("blob {}", desc.digest));
        if desc.size > MAX_SMALL_BLOB {
            return Err(c.protocol(
                None,
                format!("{} is {} bytes, too large", desc.digest, desc.size),
            ));
        }
        let hc = self.host(r.registry()).await?;
        let bytes = self
            .retry(|| async {
                let mut buf = Vec::with_capacity(desc.size as usize);
                let mut stream = self.open_blob(&hc, r, desc).await?;
                let mut check = BlobCheck::new(r, desc);
                while let Some(chunk) = stream.next().await {
                    buf.extend_from_slice(&check.chunk(chunk)?);
                }
                check.finish()?;
                Ok(buf)
            })
            .await?;
        let actual = Digest::of(desc.digest.algorithm(), &bytes);
        if actual != desc.digest {
            return Err(c.mismatch(&desc.digest, format!("content hashes to {actual}")));
        }
        Ok(bytes)
    }

    /// Download one blob of `r`'s repository into `store` (streamed,
    /// verified, retried) unless it is there already.
    pub async fn pull_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        store: &BlobStore,
        progress: ProgressFn<'_>,
    ) -> Result<(), RegistryError> {
        if store.size_of(&desc.digest).ok() == Some(desc.size) {
            return Ok(());
        }
        let hc = self.host(r.registry()).await?;
        let report = |current| {
            progress(Progress {
                kind: Direction::Pull,
                digest: desc.digest.clone(),
                current,
                total: desc.size,
            })
        };
        self.retry(|| async {
            report(0);
            // The store's writer does blocking I/O: feed it on a blocking
            // thread through a small channel, so memory stays bounded.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
            let st = store.clone();
            let expected = desc.digest.clone();
            let size = desc.size;
            let writer = tokio::task::spawn_blocking(move || {
                let mut w = st.writer(expected.algorithm())?;
                while let Some(b) = rx.blocking_recv() {
                    w.write_all(&b).map_err(|source| StoreError::Io {
                        op: "write blob",
                        path: st.root().to_path_buf(),
                        source,
                    })?;
                }
                w.commit_checked(Some(&expected), Some(size))
            });
            let dl = async {
                let mut stream = self.open_blob(&hc, r, desc).await?;
                let mut check = BlobCheck::new(r, desc);
                while let Some(chunk) = stream.next().await {
                    let chunk = check.chunk(chunk)?;
                    if tx.send(chunk).await.is_err() {
                        // The writer failed; its error is reported below.
                        break;
                    }
                    report(check.done);
                }
                check.finish()
            }
            .await;
            drop(tx);
            let committed = writer.await.map_err(|e| {
                RegistryError::Store(StoreError::Read(std::io::Error::other(e.to_string())))
            })?;
            dl?;
            committed?;
            Ok(())
        })
        .await?;
        self.remember(&desc.digest, r.registry(), r.repository());
        Ok(())
    }
}

impl Registry {
    /// Read a small blob (an image config) of `r`'s repository into memory,
    /// checking its size and digest. Refuses blobs over 16 MiB.
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        const LIMIT: u64 = 16 << 20;
        let c = ctx(r, format!("blob {}", desc.digest));
        if desc.size > LIMIT {
            return Err(c.protocol(
                None,
                format!("{} bytes is too large to read into memory", desc.size),
            ));
        }
        let hc = self.host(r.registry()).await?;
        let bytes = self
            .retry(|| async {
                let mut stream = self.open_blob(&hc, r, desc).await?;
                let mut check = BlobCheck::new(r, desc);
                let mut buf = Vec::with_capacity(desc.size as usize);
                while let Some(chunk) = stream.next().await {
                    buf.extend_from_slice(&check.chunk(chunk)?);
                }
                check.finish()?;
                Ok(buf)
            })
            .await?;
        let actual = Digest::of(desc.digest.algorithm(), &bytes);
        if actual != desc.digest {
            return Err(c.mismatch(&desc.digest, format!("the bytes hash to {actual}")));
        }
        self.remember(&desc.digest, r.registry(), r.repository());
        Ok(bytes)
    }
}

/// Size and error checks over a blob stream.
pub(crate) struct BlobCheck<'a> {
    r: &'a Reference,
    desc: &'a Descriptor,
    /// Bytes seen so far.
    pub done: u64,
}

impl<'a> BlobCheck<'a> {
    pub(crate) fn new(r: &'a Reference, desc: &'a Descriptor) -> Self {
        BlobCheck { r, desc, done: 0 }
    }

    fn ctx(&self) -> crate::error::Ctx<'a> {
        ctx(self.r, format!("blob {}", self.desc.digest))
    }

    /// Account for one item of the stream.
    pub(crate) fn chunk(
        &mut self,
        item: Result<Bytes, std::io::Error>,
    ) -> Result<Bytes, RegistryError> {
        let chunk = item.map_err(|e| self.ctx().stream_io(&self.desc.digest, &e))?;
        self.done += chunk.len() as u64;
        if self.done > self.desc.size {
            return Err(self.ctx().mismatch(
                &self.desc.digest,
                format!(
                    "more than the {} bytes its descriptor gives",
                    self.desc.size
                ),
            ));
        }
        Ok(chunk)
    }

    /// The stream ended: was it complete?
    pub(crate) fn finish(&self) -> Result<(), RegistryError> {
        if self.done != self.desc.size {
            return Err(self.ctx().mismatch(
                &self.desc.digest,
                format!(
                    "got {} bytes, its descriptor gives {}",
                    self.done, self.desc.size
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_of_documents() {
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#),
            mt::OCI_INDEX
        );
        assert_eq!(
            media_type_of(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#
            ),
            mt::DOCKER_MANIFEST_LIST
        );
        assert_eq!(
            media_type_of(br#"{"mediaType":"application/x-custom"}"#),
            "application/x-custom"
        );
    }

    #[test]
    fn picks_platforms() {
        let d = |p: &str, b: &[u8]| {
            Descriptor::of_bytes(mt::OCI_MANIFEST, b).with_platform(&Platform::parse(p).unwrap())
        };
        let idx = xbuild_oci::ImageIndex::new_oci(vec![
            d("linux/amd64", b"a"),
            d("linux/arm64/v8", b"b"),
            d("linux/arm/v7", b"c"),
        ]);
        let p = |s: &str| Platform::parse(s).unwrap();
        assert_eq!(
            pick(&idx, &p("linux/arm64")).unwrap().digest,
            Digest::sha256_of(b"b")
        );
        assert_eq!(
            pick(&idx, &p("linux/arm/v7")).unwrap().digest,
            Digest::sha256_of(b"c")
        );
        assert!(pick(&idx, &p("linux/arm/v6")).is_none());
        assert!(pick(&idx, &p("linux/s390x")).is_none());
    }
}
