//! Where base images come from: the [`ImageSource`] trait (a registry
//! client, the local store) and [`StoreSource`], which finds images built
//! earlier in the local content store.

use std::future::Future;
use std::pin::Pin;

use xbuild_oci::manifest::{ImageIndex, ImageManifest, Manifest};
use xbuild_oci::reference::Reference;
use xbuild_oci::{BlobStore, Descriptor, Digest, ImageConfig};
use xbuild_plan::ImageRef;

use crate::events::EventSink;

/// A base image, with its manifest and config, whose blobs are in the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The manifest's descriptor (digest of the single-platform manifest).
    pub manifest: Descriptor,
    /// The manifest.
    pub image: ImageManifest,
    /// The image config.
    pub config: ImageConfig,
}

/// Future returned by [`ImageSource::pull`].
pub type PullFuture<'a> = Pin<Box<dyn Future<Output = Result<PulledImage, String>> + Send + 'a>>;

/// Future of the optional [`ImageSource`] hooks; errors are shown as they are.
pub type BoxFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Makes a base image's manifest, config and layers available in a store.
pub trait ImageSource: Send + Sync {
    /// Pulls `image` (for `image.platform`) into `store`. The error text is
    /// shown to the user as it is.
    fn pull<'a>(
        &'a self,
        image: &'a ImageRef,
        store: &'a BlobStore,
        events: &'a dyn EventSink,
    ) -> PullFuture<'a>;

    /// Whether [`fetch_blobs`](Self::fetch_blobs) can provide `blob` when
    /// the store lacks it (a remote agent asks its coordinator). When true,
    /// a cache record whose layer blob is absent still counts as a hit; the
    /// blob is fetched only if a later step reads the layer's files.
    fn can_fetch(&self, _blob: &Descriptor) -> bool {
        false
    }

    /// Makes layer blobs available in `store` when this source can get them
    /// from elsewhere. The default has nowhere to look and does nothing;
    /// the caller checks the store afterwards.
    fn fetch_blobs<'a>(&'a self, _blobs: &'a [Descriptor], _store: &'a BlobStore) -> BoxFuture<'a> {
        Box::pin(async { Ok(()) })
    }

    /// Called before a step reads the build context directory, so a source
    /// that delivers the context lazily (a remote agent) can fetch and lay
    /// it out first. The default does nothing.
    fn prepare_context(&self) -> BoxFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

/// Resolves images from the local store only: `ImageRef.digest` when set,
/// else the reference as a tag in the store's refs (as written by earlier
/// builds). Indexes are narrowed to the requested platform.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreSource;

impl ImageSource for StoreSource {
    fn pull<'a>(
        &'a self,
        image: &'a ImageRef,
        store: &'a BlobStore,
        _events: &'a dyn EventSink,
    ) -> PullFuture<'a> {
        Box::pin(async move { resolve_in_store(image, store) })
    }
}

/// The names a reference may be stored under: as written, fully qualified
/// and in Docker's short form.
fn ref_names(reference: &str) -> Vec<String> {
    let mut names = vec![reference.to_string()];
    if let Ok(r) = Reference::parse(reference) {
        for n in [r.to_string(), r.familiar()] {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

/// Looks `image` up in `store` (see [`StoreSource`]).
pub fn resolve_in_store(image: &ImageRef, store: &BlobStore) -> Result<PulledImage, String> {
    let digest = match &image.digest {
        Some(d) => Digest::parse(d).map_err(|e| format!("invalid digest {d:?}: {e}"))?,
        None => {
            let mut found = None;
            for n in ref_names(&image.reference) {
                if let Ok(Some(d)) = store.get_ref(&n) {
                    found = Some(d);
                    break;
                }
            }
            found.ok_or_else(|| {
                format!(
                    "image {} not found in the local store (build or pull it first)",
                    image.reference
                )
            })?
        }
    };
    load(store, &digest, image, 0)
}

fn load(
    store: &BlobStore,
    digest: &Digest,
    image: &ImageRef,
    depth: u8,
) -> Result<PulledImage, String> {
    let bytes = store.read_to_vec(digest).map_err(|e| {
        format!(
            "image {}: manifest {digest} is not in the local store: {e}",
            image.reference
        )
    })?;
    let parsed = Manifest::parse(&bytes, None)
        .map_err(|e| format!("image {}: manifest {digest}: {e}", image.reference))?;
    match parsed {
        Manifest::Image(m) => {
            let config_bytes = store.read_to_vec(&m.config.digest).map_err(|e| {
                format!(
                    "image {}: config {} missing: {e}",
                    image.reference, m.config.digest
                )
            })?;
            let config = ImageConfig::from_slice(&config_bytes)
                .map_err(|e| format!("image {}: invalid config: {e}", image.reference))?;
            if let Some(l) = m.layers.iter().find(|l| !store.exists(&l.digest)) {
                return Err(format!(
                    "image {}: layer {} is missing from the local store",
                    image.reference, l.digest
                ));
            }
            let mut desc = Descriptor::new(
                m.effective_media_type().to_string(),
                digest.clone(),
                bytes.len() as u64,
            );
            desc = desc.with_platform(&config.platform());
            Ok(PulledImage {
                manifest: desc,
                image: m,
                config,
            })
        }
        Manifest::Index(idx) => pick(store, &idx, image, depth),
    }
}

fn pick(
    store: &BlobStore,
    idx: &ImageIndex,
    image: &ImageRef,
    depth: u8,
) -> Result<PulledImage, String> {
    if depth > 2 {
        return Err(format!("image {}: nested indexes", image.reference));
    }
    let d = idx.find_platform(&image.platform).ok_or_else(|| {
        format!(
            "image {} has no manifest for {}",
            image.reference, image.platform
        )
    })?;
    load(store, &d.digest, image, depth + 1)
}
