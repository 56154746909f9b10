//! What the build's options change in each platform manifest after the
//! solve, before the index is written: the export's layer compression (`compression=`, `compression-level=`,
//! `force-compression=`) and `--annotation` / `annotation.*` (on the
//! manifest and on its descriptor in the index).
//!
//! None of it reaches a cache key: annotations are metadata of the result,
//! and recompression keeps every diffID. `--label` is not here: like
//! BuildKit's frontend, the engine sets it on the final image config during
//! the solve ([`xbuild_plan::BuildGraph::labels`]), so the config the solve
//! returns (and provenance describes) is the one that ships.

use xbuild_oci::annotation::Annotations;
use xbuild_oci::compress::{recompress, CompressError, LayerPolicy};
use xbuild_oci::manifest::{ImageManifest, ManifestError};
use xbuild_oci::media_types as mt;
use xbuild_oci::store::StoreError;
use xbuild_oci::{BlobStore, Descriptor};

/// Why a platform manifest could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The content store failed (the error names the blob).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored manifest cannot be read.
    #[error("manifest {digest}")]
    Manifest {
        /// The manifest.
        digest: xbuild_oci::Digest,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// A layer could not be recompressed.
    #[error("compressing layer {digest}")]
    Compress {
        /// The layer.
        digest: xbuild_oci::Digest,
        /// Why.
        #[source]
        source: CompressError,
    },
    /// The rewritten manifest could not be encoded.
    #[error("encoding the manifest")]
    Encode(#[source] ManifestError),
}

/// The rewrites of one build.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Layer compression of the export (`None`: layers as built).
    pub layers: Option<LayerPolicy>,
    /// Annotations for manifests and their descriptors.
    pub annotations: Annotations,
    /// Layers that come from base images: they keep a usable compression
    /// unless `force-compression`; every other layer (built by this build)
    /// is written in the requested compression.
    pub base_layers: std::collections::HashSet<xbuild_oci::Digest>,
}

impl Rewrite {
    /// Collect the layers of the base images `graphs` start from (as
    /// stored after the solve), for [`Rewrite::base_layers`].
    pub fn base_layers_of(
        store: &BlobStore,
        graphs: &[xbuild_plan::BuildGraph],
    ) -> std::collections::HashSet<xbuild_oci::Digest> {
        let mut out = std::collections::HashSet::new();
        for g in graphs {
            for st in &g.stages {
                let xbuild_plan::Base::Image(r) = &st.base else {
                    continue;
                };
                let Some(d) = r
                    .digest
                    .as_deref()
                    .and_then(|d| xbuild_oci::Digest::parse(d).ok())
                else {
                    continue;
                };
                let Ok(size) = store.size_of(&d) else {
                    continue;
                };
                let Ok(bytes) = store.read_to_vec(&d) else {
                    continue;
                };
                let media = match xbuild_oci::manifest::Manifest::parse(&bytes, None) {
                    Ok(m) => m.media_type().to_string(),
                    Err(_) => continue,
                };
                let top = Descriptor::new(media, d, size);
                let Ok(one) = xbuild_oci::archive::select_platform(store, &top, Some(&r.platform))
                else {
                    continue;
                };
                if let Ok(b) = store.read_to_vec(&one.digest) {
                    if let Ok(m) = ImageManifest::from_slice(&b) {
                        out.extend(m.layers.into_iter().map(|l| l.digest));
                    }
                }
            }
        }
        out
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.layers.is_none() && self.annotations.is_empty()
    }

    /// Rewrite the platform manifest `desc` (in `store`); returns the new
    /// descriptor (platform kept, manifest-descriptor annotations added).
    pub fn apply(&self, store: &BlobStore, desc: &Descriptor) -> Result<Descriptor, RewriteError> {
        if self.is_empty() {
            return Ok(desc.clone());
        }
        let bytes = store.read_to_vec(&desc.digest)?;
        let mut m = ImageManifest::from_slice(&bytes).map_err(|source| RewriteError::Manifest {
            digest: desc.digest.clone(),
            source,
        })?;
        let platform = desc.platform();
        if let Some(policy) = &self.layers {
            let oci = m.effective_media_type() == mt::OCI_MANIFEST;
            let mut layers = Vec::with_capacity(m.layers.len());
            for l in &m.layers {
                let have = mt::layer_compression(&l.media_type);
                let needs = match have {
                    Some(h) if self.base_layers.contains(&l.digest) => policy.needs_recompress(h),
                    Some(h) => h != policy.compression,
                    None => false,
                };
                match have {
                    Some(_) if needs => {
                        let r = recompress(store, l, policy.compression, policy.level, oci)
                            .map_err(|source| RewriteError::Compress {
                                digest: l.digest.clone(),
                                source,
                            })?;
                        layers.push(r.descriptor);
                    }
                    _ => layers.push(l.clone()),
                }
            }
            m.layers = layers;
        }
        let applied = self.annotations.for_platform(platform.as_ref());
        m.annotations.extend(applied.manifest);
        let enc = m.encode().map_err(RewriteError::Encode)?;
        store.put_bytes(&enc.bytes)?;
        let mut out = desc.clone();
        out.digest = enc.descriptor.digest;
        out.size = enc.descriptor.size;
        out.annotations.extend(applied.manifest_descriptor);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xbuild_oci::compress::LayerPolicy;
    use xbuild_oci::layer::{write_layer, WriteOptions};
    use xbuild_oci::media_types::Compression;
    use xbuild_oci::{ImageConfig, Platform};

    fn image(store: &BlobStore) -> Descriptor {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), b"data").unwrap();
        let w = store.writer(xbuild_oci::digest::Algorithm::Sha256).unwrap();
        let (out, w) = write_layer(src.path(), w, &WriteOptions::default()).unwrap();
        w.commit(Some(&out.digest)).unwrap();
        let p = Platform::parse("linux/amd64").unwrap();
        let mut c = ImageConfig::for_platform(&p);
        c.rootfs.diff_ids = vec![out.diff_id.clone()];
        c.config.labels.insert("from.dockerfile".into(), "1".into());
        let ce = c.encode().unwrap();
        store.put_bytes(&ce.bytes).unwrap();
        let me = ImageManifest::new_oci(ce.descriptor, vec![out.descriptor()])
            .encode()
            .unwrap();
        store.put_bytes(&me.bytes).unwrap();
        me.descriptor.with_platform(&p)
    }

    fn old_config(store: &BlobStore, d: &Descriptor) -> Descriptor {
        ImageManifest::from_slice(&store.read_to_vec(&d.digest).unwrap())
            .unwrap()
            .config
    }

    #[test]
    fn compression_and_annotations() {
        let t = tempfile::tempdir().unwrap();
        let store = BlobStore::open(t.path()).unwrap();
        let d = image(&store);
        let mut rw = Rewrite::default();
        assert_eq!(
            rw.apply(&store, &d).unwrap(),
            d,
            "nothing asked, nothing changed"
        );
        rw.layers = Some(LayerPolicy {
            compression: Compression::Zstd,
            level: 3,
            force: true,
        });
        rw.annotations.add_flag("manifest:a=1").unwrap();
        rw.annotations
            .add_flag("manifest[linux/arm64]:arm=1")
            .unwrap();
        rw.annotations.add_flag("manifest-descriptor:d=2").unwrap();
        let out = rw.apply(&store, &d).unwrap();
        assert_ne!(out.digest, d.digest);
        assert_eq!(out.platform, d.platform);
        assert_eq!(out.annotations["d"], "2");
        let m = ImageManifest::from_slice(&store.read_to_vec(&out.digest).unwrap()).unwrap();
        assert_eq!(m.annotations["a"], "1");
        assert!(!m.annotations.contains_key("arm"));
        assert_eq!(m.layers[0].media_type, mt::OCI_LAYER_TAR_ZSTD);
        assert!(store.verify(&m.layers[0].digest).unwrap());
        let c = ImageConfig::from_slice(&store.read_to_vec(&m.config.digest).unwrap()).unwrap();
        assert_eq!(c.config.labels["from.dockerfile"], "1");
        assert_eq!(
            m.config,
            old_config(&store, &d),
            "the config is not rewritten"
        );
        let old = ImageManifest::from_slice(&store.read_to_vec(&d.digest).unwrap()).unwrap();
        let oldc =
            ImageConfig::from_slice(&store.read_to_vec(&old.config.digest).unwrap()).unwrap();
        assert_eq!(c.rootfs.diff_ids, oldc.rootfs.diff_ids, "diffIDs survive");
    }
}
