//! Layer (re)compression between gzip, zstd and plain tar, for the export
//! options `compression=`, `compression-level=` and `force-compression=`.
//!
//! A layer built by xbuild is written in the requested compression directly
//! ([`crate::layer::WriteOptions::compression`]); layers that come from a base
//! image keep their blob unless [`LayerPolicy::needs_recompress`] says
//! otherwise: BuildKit converts a base layer only when it is not already in a
//! compression the export accepts, or always with `force-compression=true`.
//! Converting never changes the uncompressed tar, so the diffID (and the image
//! config) stays the same; only the manifest's layer descriptors change.

use crate::descriptor::Descriptor;
use crate::digest::{Digest, DigestWriter};
use crate::layer::write::zstd_encoder;
use crate::media_types::{self as mt, Compression};
use crate::store::{BlobStore, StoreError};
use std::io::{self, BufRead, BufReader, Read, Write};

/// Errors from reading or converting a compressed layer.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Decompressing or compressing the layer `{digest}` failed.
    #[error("recompressing layer {digest}: {source}")]
    Io {
        /// The source layer.
        digest: Digest,
        /// The I/O or codec error.
        #[source]
        source: io::Error,
    },
    /// The descriptor is not a layer this module understands.
    #[error("{digest}: media type {media_type:?} is not a tar layer")]
    NotALayer {
        /// The blob.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// The target format cannot express the compression.
    #[error("zstd layers need OCI media types (oci-mediatypes=true)")]
    ZstdNeedsOci,
}

/// The export's layer compression settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerPolicy {
    /// The compression of layers written by the export.
    pub compression: Compression,
    /// Its level (see [`Compression::check_level`]).
    pub level: u32,
    /// Convert base-image layers too, even when their compression is usable.
    pub force: bool,
}

impl Default for LayerPolicy {
    fn default() -> Self {
        LayerPolicy {
            compression: Compression::Gzip,
            level: Compression::Gzip.default_level(),
            force: false,
        }
    }
}

impl LayerPolicy {
    /// True when a layer stored with `have` must be rewritten under this
    /// policy: always when `force` is set and the compression differs from
    /// the target; otherwise only when the layer is uncompressed while a
    /// compressed output was asked for (a gzip base layer stays gzip in a
    /// zstd export, as BuildKit keeps it).
    pub fn needs_recompress(&self, have: Compression) -> bool {
        if have == self.compression {
            return false;
        }
        self.force || (have == Compression::None && self.compression != Compression::None)
    }
}

/// A decompressing reader over a layer blob of the given compression.
pub fn decompressed<'a, R: Read + 'a>(
    reader: R,
    compression: Compression,
) -> io::Result<Box<dyn Read + 'a>> {
    let br = BufReader::with_capacity(256 * 1024, reader);
    Ok(match compression {
        Compression::None => Box::new(br),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(br)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(br)?),
    })
}

/// Tell the compression of a stream by its magic bytes (without consuming).
pub fn sniff<R: BufRead>(reader: &mut R) -> io::Result<Compression> {
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

/// The diffID (sha256 of the uncompressed tar) of a layer blob in the store.
pub fn diff_id(
    store: &BlobStore,
    digest: &Digest,
    compression: Compression,
) -> Result<Digest, CompressError> {
    let f = store.open_blob(digest)?;
    let io_err = |source| CompressError::Io {
        digest: digest.clone(),
        source,
    };
    let mut r = decompressed(f, compression).map_err(io_err)?;
    let mut w = DigestWriter::new(io::sink());
    io::copy(&mut r, &mut w).map_err(io_err)?;
    Ok(w.finish().0)
}

/// The result of [`recompress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recompressed {
    /// The new layer descriptor (annotations of the source kept).
    pub descriptor: Descriptor,
    /// The diffID, unchanged by the conversion but computed while converting.
    pub diff_id: Digest,
}

/// Rewrite the layer `layer` (in `store`) with `compression` at `level`,
/// storing the new blob. `oci` selects OCI or Docker media types. A layer
/// already in the target compression is returned as is (with its diffID).
pub fn recompress(
    store: &BlobStore,
    layer: &Descriptor,
    compression: Compression,
    level: u32,
    oci: bool,
) -> Result<Recompressed, CompressError> {
    let have =
        mt::layer_compression(&layer.media_type).ok_or_else(|| CompressError::NotALayer {
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
        })?;
    let media_type = compression
        .layer_media_type(oci)
        .ok_or(CompressError::ZstdNeedsOci)?;
    let io_err = |source| CompressError::Io {
        digest: layer.digest.clone(),
        source,
    };
    if have == compression {
        let d = diff_id(store, &layer.digest, have)?;
        let mut descriptor = layer.clone();
        descriptor.media_type = media_type.to_string();
        return Ok(Recompressed {
            descriptor,
            diff_id: d,
        });
    }
    let src = store.open_blob(&layer.digest)?;
    let mut reader = decompressed(src, have).map_err(io_err)?;
    let blob = store.writer(layer.digest.algorithm())?;
    // Hash the uncompressed stream on its way into the compressor.
    let (diff_id, blob) = match compression {
        Compression::None => {
            let mut w = DigestWriter::new(blob);
            io::copy(&mut reader, &mut w).map_err(io_err)?;
            let (d, _, blob) = w.finish();
            (d, blob)
        }
        Compression::Gzip => {
            let gz = flate2::write::GzEncoder::new(blob, flate2::Compression::new(level.min(9)));
            let mut w = DigestWriter::new(gz);
            io::copy(&mut reader, &mut w).map_err(io_err)?;
            let (d, _, gz) = w.finish();
            (d, gz.finish().map_err(io_err)?)
        }
        Compression::Zstd => {
            let z = zstd_encoder(blob, level).map_err(io_err)?;
            let mut w = DigestWriter::new(z);
            io::copy(&mut reader, &mut w).map_err(io_err)?;
            let (d, _, z) = w.finish();
            (d, z.finish().map_err(io_err)?)
        }
    };
    let mut blob = blob;
    blob.flush().map_err(io_err)?;
    let (digest, size) = blob.commit(None)?;
    let mut descriptor = Descriptor::new(media_type, digest, size);
    descriptor.annotations = layer.annotations.clone();
    Ok(Recompressed {
        descriptor,
        diff_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{apply_layer, write_layer, ApplyOptions, WriteOptions};
    use std::fs;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("etc")).unwrap();
        fs::write(t.path().join("etc/hello"), b"hello zstd\n".repeat(100)).unwrap();
        t
    }

    fn write(c: Compression, level: u32) -> (crate::layer::LayerOutput, Vec<u8>) {
        let t = tree();
        let opts = WriteOptions {
            compression: c,
            compression_level: level,
            source_date_epoch: Some(0),
            ..Default::default()
        };
        write_layer(t.path(), Vec::new(), &opts).unwrap()
    }

    #[test]
    fn zstd_layer_is_written_deterministically_and_applies() {
        let (a, bytes) = write(Compression::Zstd, 3);
        let (b, _) = write(Compression::Zstd, 3);
        assert_eq!(a, b, "same tree, same level: same blob");
        assert_eq!(a.media_type, mt::OCI_LAYER_TAR_ZSTD);
        assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(a.digest, Digest::sha256_of(&bytes));
        // Same tar inside as the gzip and plain variants.
        let (g, _) = write(Compression::Gzip, 1);
        let (p, _) = write(Compression::None, 0);
        assert_eq!(a.diff_id, g.diff_id);
        assert_eq!(a.diff_id, p.digest);
        let root = tempfile::tempdir().unwrap();
        let stats = apply_layer(&bytes[..], root.path(), &ApplyOptions::default()).unwrap();
        assert_eq!(stats.diff_id, a.diff_id);
        assert_eq!(
            fs::read(root.path().join("etc/hello")).unwrap(),
            b"hello zstd\n".repeat(100)
        );
    }

    #[test]
    fn levels_change_the_blob_not_the_diff_id() {
        let (l1, _) = write(Compression::Zstd, 1);
        let (l19, _) = write(Compression::Zstd, 19);
        assert_eq!(l1.diff_id, l19.diff_id);
        let (g0, _) = write(Compression::Gzip, 0);
        let (g9, _) = write(Compression::Gzip, 9);
        assert_ne!(g0.digest, g9.digest);
        assert_eq!(g0.diff_id, g9.diff_id);
    }

    #[test]
    fn recompress_gzip_to_zstd_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let (g, bytes) = write(Compression::Gzip, 1);
        let gd = store.put_bytes(&bytes).unwrap();
        assert_eq!(gd, g.digest);
        let z = recompress(&store, &g.descriptor(), Compression::Zstd, 3, true).unwrap();
        assert_eq!(z.diff_id, g.diff_id);
        assert_eq!(z.descriptor.media_type, mt::OCI_LAYER_TAR_ZSTD);
        assert_ne!(z.descriptor.digest, g.digest);
        assert!(store.verify(&z.descriptor.digest).unwrap());
        assert_eq!(
            diff_id(&store, &z.descriptor.digest, Compression::Zstd).unwrap(),
            g.diff_id
        );
        let back = recompress(&store, &z.descriptor, Compression::None, 0, false).unwrap();
        assert_eq!(back.descriptor.digest, g.diff_id);
        assert_eq!(back.descriptor.media_type, mt::DOCKER_LAYER_TAR);
        assert!(matches!(
            recompress(&store, &g.descriptor(), Compression::Zstd, 3, false),
            Err(CompressError::ZstdNeedsOci)
        ));
        let cfg = Descriptor::new(mt::OCI_CONFIG, gd, 1);
        assert!(matches!(
            recompress(&store, &cfg, Compression::Zstd, 3, true),
            Err(CompressError::NotALayer { .. })
        ));
    }

    #[test]
    fn policy() {
        let zstd = LayerPolicy {
            compression: Compression::Zstd,
            level: 3,
            force: false,
        };
        assert!(!zstd.needs_recompress(Compression::Gzip));
        assert!(zstd.needs_recompress(Compression::None));
        assert!(!zstd.needs_recompress(Compression::Zstd));
        let forced = LayerPolicy {
            force: true,
            ..zstd
        };
        assert!(forced.needs_recompress(Compression::Gzip));
        assert!(!forced.needs_recompress(Compression::Zstd));
    }

    #[test]
    fn sniffing() {
        let (_, z) = write(Compression::Zstd, 3);
        let (_, g) = write(Compression::Gzip, 1);
        let (_, p) = write(Compression::None, 0);
        assert_eq!(sniff(&mut &z[..]).unwrap(), Compression::Zstd);
        assert_eq!(sniff(&mut &g[..]).unwrap(), Compression::Gzip);
        assert_eq!(sniff(&mut &p[..]).unwrap(), Compression::None);
    }
}
