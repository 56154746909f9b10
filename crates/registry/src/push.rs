//! Writing to registries: [`Registry::push_image`], [`Registry::push_index`],
//! [`Registry::tag_manifest`] and [`Registry::copy_manifest`].

use crate::pull::media_type_of;
use crate::{
    ctx, manifest_what, Direction, HostClient, Progress, ProgressFn, Registry, RegistryError,
};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, TryStreamExt};
use oci_client::RegistryOperation;
use reqwest::header::HeaderValue;
use tokio::io::AsyncReadExt;
use xbuild_oci::manifest::Manifest;
use xbuild_oci::media_types as mt;
use xbuild_oci::store::StoreError;
use xbuild_oci::{BlobStore, Descriptor, Digest, Reference};

/// Bytes per upload request (one PATCH each in a chunked upload).
const UPLOAD_CHUNK: usize = 4 << 20;

/// A stream of `file` in `UPLOAD_CHUNK` pieces that reports each piece's
/// length on `sent`.
fn file_stream(
    file: tokio::fs::File,
    sent: tokio::sync::mpsc::UnboundedSender<u64>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::try_unfold((file, sent), |(mut f, sent)| async move {
        let mut buf = BytesMut::with_capacity(UPLOAD_CHUNK);
        while buf.len() < UPLOAD_CHUNK {
            if f.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let _ = sent.send(buf.len() as u64);
        Ok(Some((buf.freeze(), (f, sent))))
    })
}

fn blobs_of(m: &xbuild_oci::ImageManifest) -> Vec<&Descriptor> {
    let mut out: Vec<&Descriptor> = Vec::new();
    for d in std::iter::once(&m.config).chain(&m.layers) {
        // Foreign layers live at their URLs; registries do not take them.
        if mt::is_nondistributable(&d.media_type) && !d.urls.is_empty() {
            continue;
        }
        if !out.iter().any(|o| o.digest == d.digest) {
            out.push(d);
        }
    }
    out
}

/// The manifest or index `desc` as stored, with its media type (the
/// descriptor's, else the one its bytes declare) and parsed; `what` names
/// it in the error when it does not parse.
fn read_for_push(
    r: &Reference,
    store: &BlobStore,
    desc: &Descriptor,
    what: &'static str,
) -> Result<(Bytes, String, Manifest), RegistryError> {
    let bytes = Bytes::from(store.read_to_vec(&desc.digest)?);
    let media_type = if desc.media_type.is_empty() {
        media_type_of(&bytes)
    } else {
        desc.media_type.clone()
    };
    let parsed =
        Manifest::parse(&bytes, Some(&media_type)).map_err(|e| RegistryError::Invalid {
            reference: r.to_string(),
            what,
            detail: e.to_string(),
        })?;
    Ok((bytes, media_type, parsed))
}

impl Registry {
    /// Push the image whose manifest `manifest` is in `store` to `r`'s
    /// repository: every blob the registry lacks (HEAD first, a cross-repo
    /// mount when another repository of the registry is known to hold it),
    /// `max_concurrent` at a time, then the manifest by digest, then `r`'s
    /// tag. Returns the pushed manifest's descriptor.
    pub async fn push_image(
        &self,
        r: &Reference,
        store: &BlobStore,
        manifest: &Descriptor,
        progress: ProgressFn<'_>,
    ) -> Result<Descriptor, RegistryError> {
        let (desc, bytes) = self.push_image_inner(r, store, manifest, progress).await?;
        self.tag_manifest(r, &bytes, &desc.media_type).await?;
        Ok(desc)
    }

    /// Like [`Registry::push_image`], without tagging: for the per-platform
    /// images of an index.
    pub async fn push_image_untagged(
        &self,
        r: &Reference,
        store: &BlobStore,
        manifest: &Descriptor,
        progress: ProgressFn<'_>,
    ) -> Result<Descriptor, RegistryError> {
        Ok(self.push_image_inner(r, store, manifest, progress).await?.0)
    }

    async fn push_image_inner(
        &self,
        r: &Reference,
        store: &BlobStore,
        manifest: &Descriptor,
        progress: ProgressFn<'_>,
    ) -> Result<(Descriptor, Bytes), RegistryError> {
        let (bytes, media_type, parsed) = read_for_push(r, store, manifest, "manifest")?;
        let Manifest::Image(image) = parsed else {
            return Err(RegistryError::Invalid {
                reference: r.to_string(),
                what: "manifest",
                detail: format!("{} is an index; use push_index", manifest.digest),
            });
        };
        let n = self.config().max_concurrent.max(1);
        // Owned items keep the future provably Send (see pull.rs).
        let owned: Vec<Descriptor> = blobs_of(&image).into_iter().cloned().collect();
        futures_util::stream::iter(owned)
            .map(|d| async move { self.push_blob(r, store, &d, progress).await })
            .buffer_unordered(n)
            .try_collect::<Vec<()>>()
            .await?;
        self.put_manifest(r, &manifest.digest, bytes.clone(), &media_type)
            .await?;
        let mut desc = manifest.clone();
        desc.media_type = media_type;
        desc.size = bytes.len() as u64;
        Ok((desc, bytes))
    }

    /// Push the index `index` (in `store`) to `r`: its child manifests must
    /// already be in the repository (checked with HEAD; a missing one is
    /// [`RegistryError::MissingManifests`]). Pushed by digest, then tagged.
    pub async fn push_index(
        &self,
        r: &Reference,
        store: &BlobStore,
        index: &Descriptor,
        _progress: ProgressFn<'_>,
    ) -> Result<Descriptor, RegistryError> {
        let (bytes, media_type, parsed) = read_for_push(r, store, index, "index")?;
        let Manifest::Index(idx) = parsed else {
            return Err(RegistryError::Invalid {
                reference: r.to_string(),
                what: "index",
                detail: format!("{} is an image manifest; use push_image", index.digest),
            });
        };
        let mut missing = Vec::new();
        for child in &idx.manifests {
            if !self.manifest_exists(r, &child.digest).await? {
                missing.push(child.digest.clone());
            }
        }
        if !missing.is_empty() {
            return Err(RegistryError::MissingManifests {
                reference: r.to_string(),
                missing,
            });
        }
        self.put_manifest(r, &index.digest, bytes.clone(), &media_type)
            .await?;
        self.tag_manifest(r, &bytes, &media_type).await?;
        let mut desc = index.clone();
        desc.media_type = media_type;
        desc.size = bytes.len() as u64;
        Ok(desc)
    }

    /// PUT `bytes` (a manifest or index of `media_type`) by its digest, so
    /// the repository holds it even untagged. Everything it refers to must
    /// be in the repository already (the registry checks).
    pub async fn push_manifest_bytes(
        &self,
        r: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Descriptor, RegistryError> {
        let digest = Digest::sha256_of(bytes);
        self.put_manifest(r, &digest, Bytes::copy_from_slice(bytes), media_type)
            .await?;
        Ok(Descriptor::new(media_type, digest, bytes.len() as u64))
    }

    /// PUT `bytes` (a manifest or index of `media_type`) under `r`'s tag.
    /// Does nothing when `r` has no tag.
    pub async fn tag_manifest(
        &self,
        r: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<(), RegistryError> {
        let Some(tag) = r.tag() else {
            return Ok(());
        };
        let hc = self.host(r.registry()).await?;
        let c = ctx(r, manifest_what(r));
        HeaderValue::from_str(media_type)
            .map_err(|e| c.protocol(None, format!("bad media type {media_type:?}: {e}")))?;
        let body = Bytes::copy_from_slice(bytes);
        self.retry(|| async {
            self.put_manifest_at(&hc, r, tag, body.clone(), media_type, &c)
                .await
        })
        .await?;
        Ok(())
    }

    /// PUT a manifest by its digest.
    async fn put_manifest(
        &self,
        r: &Reference,
        digest: &Digest,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<(), RegistryError> {
        let hc = self.host(r.registry()).await?;
        let c = ctx(r, format!("manifest {digest}"));
        let actual = Digest::of(digest.algorithm(), &bytes);
        if actual != *digest {
            return Err(c.mismatch(digest, format!("local bytes hash to {actual}")));
        }
        HeaderValue::from_str(media_type)
            .map_err(|e| c.protocol(None, format!("bad media type {media_type:?}: {e}")))?;
        self.retry(|| async {
            self.put_manifest_at(&hc, r, digest.as_str(), bytes.clone(), media_type, &c)
                .await
        })
        .await?;
        self.remember(digest, r.registry(), r.repository());
        Ok(())
    }

    /// Whether `r`'s repository has the manifest `digest`: one HEAD of
    /// `manifests/<digest>`, whose status says it. (oci-client's
    /// `fetch_manifest_digest` falls back to a GET whose body it reads
    /// without a limit when the HEAD has no digest header; the digest is
    /// known here, so no body is needed.)
    pub async fn manifest_exists(
        &self,
        r: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let hc = self.host(r.registry()).await?;
        let c = ctx(r, format!("manifest {digest}"));
        self.retry(|| async { self.head_exists(&hc, r, "manifests", digest, &c).await })
            .await
    }

    /// Whether `r`'s repository has the blob `digest` (HEAD).
    pub async fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        let hc = self.host(r.registry()).await?;
        self.blob_exists_with(&hc, r, digest).await
    }

    async fn blob_exists_with(
        &self,
        hc: &HostClient,
        r: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let c = ctx(r, format!("blob {digest}"));
        let found = self
            .retry(|| async { self.head_exists(hc, r, "blobs", digest, &c).await })
            .await?;
        if found {
            self.remember(digest, r.registry(), r.repository());
        }
        Ok(found)
    }

    /// Mount `digest` into `r`'s repository from another repository of the
    /// same registry known to hold it. False when none is known or the
    /// registry declined.
    async fn try_mount(&self, hc: &HostClient, r: &Reference, digest: &Digest) -> bool {
        let Some(from) = self.known_elsewhere(digest, r.registry(), r.repository()) else {
            return false;
        };
        let c = ctx(r, format!("blob {digest}"));
        let ok = self.mount_from(hc, r, &from, digest, &c).await;
        if ok {
            self.remember(digest, r.registry(), r.repository());
        }
        ok
    }

    /// Make sure `r`'s repository has the blob `desc`, uploading it from
    /// `store` if needed.
    async fn push_blob(
        &self,
        r: &Reference,
        store: &BlobStore,
        desc: &Descriptor,
        progress: ProgressFn<'_>,
    ) -> Result<(), RegistryError> {
        let hc = self.host(r.registry()).await?;
        if self.blob_exists_with(&hc, r, &desc.digest).await?
            || self.try_mount(&hc, r, &desc.digest).await
        {
            return Ok(());
        }
        let c = ctx(r, format!("blob {}", desc.digest));
        let size = store.size_of(&desc.digest)?;
        if size != desc.size {
            return Err(RegistryError::Store(StoreError::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: size,
            }));
        }
        // Never upload a damaged blob: check it against its digest first
        // (a corrupt one is quarantined and named in the error).
        let (st, d) = (store.clone(), desc.digest.clone());
        tokio::task::spawn_blocking(move || st.check(&d))
            .await
            .map_err(|e| {
                RegistryError::Store(StoreError::Read(std::io::Error::other(e.to_string())))
            })??;
        let report = |current| {
            progress(Progress {
                kind: Direction::Push,
                digest: desc.digest.clone(),
                current,
                total: desc.size,
            })
        };
        let path = store.path_of(&desc.digest);
        self.retry(|| async {
            report(0);
            self.prime_token(&hc, r, RegistryOperation::Push, &c)
                .await?;
            let file = tokio::fs::File::open(&path).await.map_err(|source| {
                RegistryError::Store(StoreError::Io {
                    op: "open blob",
                    path: path.clone(),
                    source,
                })
            })?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let push = self.upload_blob(&hc, r, &desc.digest, file_stream(file, tx), &c);
            let rep = async {
                let mut cur = 0;
                while let Some(n) = rx.recv().await {
                    cur += n;
                    if cur < desc.size {
                        report(cur);
                    }
                }
            };
            let (res, ()) = futures_util::future::join(push, rep).await;
            res?;
            report(desc.size);
            Ok(())
        })
        .await?;
        self.remember(&desc.digest, r.registry(), r.repository());
        Ok(())
    }

    /// Copy the manifest (or index, with its children) `src` names into
    /// `dst`'s repository without storing anything locally: blobs already
    /// there are skipped, blobs of the same registry are mounted, others are
    /// streamed across. The copy is pushed by digest only (tag it with
    /// [`Registry::tag_manifest`]). Returns its descriptor.
    pub async fn copy_manifest(
        &self,
        src: &Reference,
        dst: &Reference,
    ) -> Result<Descriptor, RegistryError> {
        let (bytes, media_type, digest) = self.fetch_manifest(src).await?;
        let doc =
            Manifest::parse(&bytes, Some(&media_type)).map_err(|e| RegistryError::Invalid {
                reference: src.to_string(),
                what: "manifest",
                detail: e.to_string(),
            })?;
        if !self.manifest_exists(dst, &digest).await? {
            match &doc {
                Manifest::Index(idx) => {
                    for child in &idx.manifests {
                        Box::pin(self.copy_manifest(&src.with_digest(child.digest.clone()), dst))
                            .await?;
                    }
                }
                Manifest::Image(m) => {
                    for d in blobs_of(m) {
                        self.copy_blob(src, dst, d).await?;
                    }
                }
            }
            self.put_manifest(dst, &digest, Bytes::from(bytes.clone()), &media_type)
                .await?;
        }
        Ok(Descriptor::new(media_type, digest, bytes.len() as u64))
    }

    async fn copy_blob(
        &self,
        src: &Reference,
        dst: &Reference,
        desc: &Descriptor,
    ) -> Result<(), RegistryError> {
        let dhc = self.host(dst.registry()).await?;
        if self.blob_exists_with(&dhc, dst, &desc.digest).await? {
            return Ok(());
        }
        self.remember(&desc.digest, src.registry(), src.repository());
        if self.try_mount(&dhc, dst, &desc.digest).await {
            return Ok(());
        }
        let shc = self.host(src.registry()).await?;
        let c = ctx(dst, format!("blob {}", desc.digest));
        self.retry(|| async {
            // The digest is checked at the end of the source stream, and by
            // the receiving registry.
            let stream = self.open_blob(&shc, src, desc).await?;
            self.upload_blob(&dhc, dst, &desc.digest, stream, &c).await
        })
        .await?;
        self.remember(&desc.digest, dst.registry(), dst.repository());
        Ok(())
    }
}
