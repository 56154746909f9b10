//! Media types of the OCI image spec and of Docker's image manifest v2,
//! schema 2, with small classification helpers.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI layer, uncompressed tar.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI layer, gzip-compressed tar.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI layer, zstd-compressed tar.
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable layer, uncompressed tar (deprecated by the spec).
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// OCI non-distributable layer, gzip (deprecated by the spec).
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// OCI non-distributable layer, zstd (deprecated by the spec).
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// OCI empty descriptor (`{}`), used as config of artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The `oci-layout` file's content type in an OCI layout (not a real media type,
/// kept for completeness of layout writers).
pub const OCI_LAYOUT_HEADER: &str = "application/vnd.oci.layout.header.v1+json";

/// Docker manifest list (multi-platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest v2, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker layer, gzip-compressed tar.
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker layer, uncompressed tar (rare).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker foreign (non-distributable) layer.
pub const DOCKER_LAYER_FOREIGN_TAR_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// The compression of a layer, as told by its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Parse a buildx `compression=` value: `gzip`, `zstd` or `uncompressed`
    /// (`none` is accepted too). `estargz` and unknown names are refused.
    pub fn parse(s: &str) -> Result<Compression, String> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "uncompressed" | "none" => Ok(Compression::None),
            "estargz" => Err(
                "compression \"estargz\" is not supported (use gzip, zstd or uncompressed)".into(),
            ),
            other => Err(format!(
                "unknown compression {other:?} (expected gzip, zstd or uncompressed)"
            )),
        }
    }

    /// The buildx spelling of the compression.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The level used when none is given: gzip 1 (fast, xbuild's default
    /// for its own layers), zstd 3 (zstd's and BuildKit's default).
    pub fn default_level(self) -> u32 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Zstd => 3,
        }
    }

    /// Check a user-given `compression-level=` against the algorithm's range
    /// (gzip 0–9, zstd 0–22 where 0 means the default), as BuildKit does.
    pub fn check_level(self, level: u32) -> Result<u32, String> {
        match self {
            Compression::Gzip if level <= 9 => Ok(level),
            Compression::Zstd if level == 0 => Ok(self.default_level()),
            Compression::Zstd if level <= 22 => Ok(level),
            Compression::None => Ok(0),
            _ => Err(format!(
                "compression-level {level} is out of range for {} ({})",
                self.as_str(),
                if self == Compression::Gzip {
                    "0-9"
                } else {
                    "0-22"
                }
            )),
        }
    }

    /// The layer media type for this compression: OCI, or Docker's schema 2
    /// (which has no zstd type; `None` then).
    pub fn layer_media_type(self, oci: bool) -> Option<&'static str> {
        match (self, oci) {
            (Compression::None, true) => Some(OCI_LAYER_TAR),
            (Compression::Gzip, true) => Some(OCI_LAYER_TAR_GZIP),
            (Compression::Zstd, true) => Some(OCI_LAYER_TAR_ZSTD),
            (Compression::None, false) => Some(DOCKER_LAYER_TAR),
            (Compression::Gzip, false) => Some(DOCKER_LAYER_TAR_GZIP),
            (Compression::Zstd, false) => None,
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// True for an image manifest media type (OCI or Docker).
pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// True for an index / manifest list media type (OCI or Docker).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// True for an image config media type (OCI or Docker).
pub fn is_config(media_type: &str) -> bool {
    media_type == OCI_CONFIG || media_type == DOCKER_CONFIG
}

/// The compression of a layer media type, or `None` when it is not a layer.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        OCI_LAYER_TAR | OCI_LAYER_NONDISTRIBUTABLE_TAR | DOCKER_LAYER_TAR => {
            Some(Compression::None)
        }
        OCI_LAYER_TAR_GZIP
        | OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP
        | DOCKER_LAYER_TAR_GZIP
        | DOCKER_LAYER_FOREIGN_TAR_GZIP => Some(Compression::Gzip),
        OCI_LAYER_TAR_ZSTD | OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD => Some(Compression::Zstd),
        _ => None,
    }
}

/// True for any layer media type.
pub fn is_layer(media_type: &str) -> bool {
    layer_compression(media_type).is_some()
}

/// True for a non-distributable (foreign) layer, which registries do not serve.
pub fn is_nondistributable(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_LAYER_NONDISTRIBUTABLE_TAR
            | OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP
            | OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD
            | DOCKER_LAYER_FOREIGN_TAR_GZIP
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify() {
        assert!(is_manifest(DOCKER_MANIFEST) && is_manifest(OCI_MANIFEST));
        assert!(is_index(DOCKER_MANIFEST_LIST) && is_index(OCI_INDEX));
        assert!(is_config(DOCKER_CONFIG) && !is_config(OCI_MANIFEST));
        assert_eq!(
            layer_compression(DOCKER_LAYER_TAR_GZIP),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression(OCI_LAYER_TAR_ZSTD),
            Some(Compression::Zstd)
        );
        assert_eq!(layer_compression(OCI_CONFIG), None);
        assert!(is_nondistributable(DOCKER_LAYER_FOREIGN_TAR_GZIP));
        assert_eq!(Compression::parse("zstd"), Ok(Compression::Zstd));
        assert_eq!(Compression::parse("uncompressed"), Ok(Compression::None));
        assert!(Compression::parse("estargz").is_err());
        assert!(Compression::parse("lz4").is_err());
        assert_eq!(Compression::Zstd.check_level(0), Ok(3));
        assert!(Compression::Gzip.check_level(10).is_err());
        assert!(Compression::Zstd.check_level(23).is_err());
        assert_eq!(Compression::Zstd.layer_media_type(false), None);
        assert_eq!(
            Compression::Zstd.layer_media_type(true),
            Some(OCI_LAYER_TAR_ZSTD)
        );
        assert!(!is_nondistributable(OCI_LAYER_TAR_GZIP));
    }
}
