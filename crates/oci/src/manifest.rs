//! [`ImageManifest`] and [`ImageIndex`] (OCI and Docker v2 schema 2), and
//! [`Manifest`], which parses either from bytes.
//!
//! Digests of pulled manifests must be computed over the bytes as received,
//! never over a re-serialization: [`Manifest::parse`] keeps no bytes, so the
//! caller hashes what it fetched.

use crate::descriptor::{encode, Descriptor, DescriptorError, Encoded};
use crate::media_types as mt;
use crate::platform::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Errors from parsing or encoding manifests and indexes.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The bytes are not the JSON document expected.
    #[error("invalid manifest JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] DescriptorError),
    /// A media type that is neither a manifest nor an index.
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// `schemaVersion` is not 2 (Docker schema 1 is not supported).
    #[error("unsupported manifest schemaVersion {0} (only 2 is supported)")]
    SchemaVersion(u32),
    /// The document could not be recognized as manifest or index.
    #[error("cannot tell whether the document is an image manifest or an index")]
    Unrecognized,
}

fn schema_version_2() -> u32 {
    2
}

/// An image manifest: a config and an ordered list of layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// Always 2.
    #[serde(rename = "schemaVersion", default = "schema_version_2")]
    pub schema_version: u32,
    /// [`mt::OCI_MANIFEST`] or [`mt::DOCKER_MANIFEST`]; optional in OCI.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type (OCI 1.1 artifacts).
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to (OCI 1.1 referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Unknown fields, kept as-is.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl ImageManifest {
    /// An OCI manifest for `config` and `layers`.
    pub fn new_oci(config: Descriptor, layers: Vec<Descriptor>) -> Self {
        ImageManifest {
            schema_version: 2,
            media_type: Some(mt::OCI_MANIFEST.to_string()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    /// A Docker v2 schema 2 manifest for `config` and `layers`.
    pub fn new_docker(config: Descriptor, layers: Vec<Descriptor>) -> Self {
        ImageManifest {
            media_type: Some(mt::DOCKER_MANIFEST.to_string()),
            ..ImageManifest::new_oci(config, layers)
        }
    }

    /// The media type this manifest is served with (OCI when unset).
    pub fn effective_media_type(&self) -> &str {
        self.media_type.as_deref().unwrap_or(mt::OCI_MANIFEST)
    }

    /// True for a Docker v2 schema 2 manifest.
    pub fn is_docker(&self) -> bool {
        self.media_type.as_deref() == Some(mt::DOCKER_MANIFEST)
    }

    /// Parse and check `schemaVersion`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: ImageManifest = serde_json::from_slice(bytes)?;
        if m.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(m.schema_version));
        }
        Ok(m)
    }

    /// Canonical bytes and descriptor, in one call.
    pub fn encode(&self) -> Result<Encoded, ManifestError> {
        Ok(encode(self, self.effective_media_type())?)
    }
}

/// An image index (Docker: manifest list): one manifest per platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    /// Always 2.
    #[serde(rename = "schemaVersion", default = "schema_version_2")]
    pub schema_version: u32,
    /// [`mt::OCI_INDEX`] or [`mt::DOCKER_MANIFEST_LIST`]; optional in OCI.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type (OCI 1.1 artifacts).
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// The manifests, usually each with a platform.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (OCI 1.1 referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Unknown fields, kept as-is.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl ImageIndex {
    /// An OCI index of `manifests`.
    pub fn new_oci(manifests: Vec<Descriptor>) -> Self {
        ImageIndex {
            schema_version: 2,
            media_type: Some(mt::OCI_INDEX.to_string()),
            artifact_type: None,
            manifests,
            subject: None,
            annotations: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    /// A Docker manifest list of `manifests`.
    pub fn new_docker(manifests: Vec<Descriptor>) -> Self {
        ImageIndex {
            media_type: Some(mt::DOCKER_MANIFEST_LIST.to_string()),
            ..ImageIndex::new_oci(manifests)
        }
    }

    /// The media type this index is served with (OCI when unset).
    pub fn effective_media_type(&self) -> &str {
        self.media_type.as_deref().unwrap_or(mt::OCI_INDEX)
    }

    /// Parse and check `schemaVersion`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: ImageIndex = serde_json::from_slice(bytes)?;
        if m.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(m.schema_version));
        }
        Ok(m)
    }

    /// Canonical bytes and descriptor, in one call.
    pub fn encode(&self) -> Result<Encoded, ManifestError> {
        Ok(encode(self, self.effective_media_type())?)
    }

    /// The first manifest whose platform normalizes to `platform`. Entries
    /// without a platform (attestations) never match.
    pub fn find_platform(&self, platform: &Platform) -> Option<&Descriptor> {
        self.manifests
            .iter()
            .find(|d| d.platform().as_ref() == Some(platform))
    }
}

/// Either kind of top-level document a registry serves for a reference.
// Short-lived parse result; boxing would only make matching clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A single-platform image manifest.
    Image(ImageManifest),
    /// An index / manifest list.
    Index(ImageIndex),
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

impl Manifest {
    /// Parse a manifest or index. `content_type` is the media type the
    /// document was served or described with, if known; otherwise the
    /// document's own `mediaType`, then its shape, decide.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        let probe: Probe = serde_json::from_slice(bytes)?;
        if let Some(v) = probe.schema_version {
            if v != 2 {
                return Err(ManifestError::SchemaVersion(v));
            }
        }
        // Content types like "application/json" say nothing; fall through.
        let declared = content_type
            .filter(|c| mt::is_manifest(c) || mt::is_index(c))
            .map(str::to_string)
            .or(probe.media_type.clone());
        let is_index = match declared.as_deref() {
            Some(m) if mt::is_index(m) => true,
            Some(m) if mt::is_manifest(m) => false,
            Some(m) if probe.manifests.is_none() && probe.config.is_none() => {
                return Err(ManifestError::UnsupportedMediaType(m.to_string()))
            }
            _ => match (probe.manifests.is_some(), probe.config.is_some()) {
                (true, false) => true,
                (false, true) => false,
                _ => return Err(ManifestError::Unrecognized),
            },
        };
        if is_index {
            Ok(Manifest::Index(ImageIndex::from_slice(bytes)?))
        } else {
            Ok(Manifest::Image(ImageManifest::from_slice(bytes)?))
        }
    }

    /// The media type of the parsed document.
    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Image(m) => m.effective_media_type(),
            Manifest::Index(i) => i.effective_media_type(),
        }
    }

    /// Canonical bytes and descriptor, in one call.
    pub fn encode(&self) -> Result<Encoded, ManifestError> {
        match self {
            Manifest::Image(m) => m.encode(),
            Manifest::Index(i) => i.encode(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn d(media: &str, b: &[u8]) -> Descriptor {
        Descriptor::of_bytes(media, b)
    }

    #[test]
    fn manifest_field_names_and_order() {
        let m = ImageManifest::new_oci(
            d(mt::OCI_CONFIG, b"{}"),
            vec![d(mt::OCI_LAYER_TAR_GZIP, b"x")],
        );
        let e = m.encode().unwrap();
        let s = String::from_utf8(e.bytes.clone()).unwrap();
        assert!(s.starts_with(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json""#
        ));
        assert_eq!(e.descriptor.media_type, mt::OCI_MANIFEST);
        assert_eq!(e.descriptor.digest, Digest::sha256_of(&e.bytes));
        assert_eq!(ImageManifest::from_slice(&e.bytes).unwrap(), m);
    }

    #[test]
    fn parse_detects_kind() {
        let m = ImageManifest::new_docker(d(mt::DOCKER_CONFIG, b"{}"), vec![]);
        let b = m.encode().unwrap().bytes;
        assert!(matches!(
            Manifest::parse(&b, None).unwrap(),
            Manifest::Image(_)
        ));
        let i = ImageIndex::new_docker(vec![
            d(mt::DOCKER_MANIFEST, &b).with_platform(&Platform::parse("linux/arm64").unwrap())
        ]);
        let ib = i.encode().unwrap().bytes;
        let parsed = Manifest::parse(&ib, Some("application/json")).unwrap();
        let Manifest::Index(pi) = parsed else {
            panic!("not an index")
        };
        assert_eq!(pi.media_type.as_deref(), Some(mt::DOCKER_MANIFEST_LIST));
        assert!(pi
            .find_platform(&Platform::parse("linux/arm64/v8").unwrap())
            .is_some());
        assert!(pi
            .find_platform(&Platform::parse("linux/amd64").unwrap())
            .is_none());
        // No mediaType at all: decided by shape.
        let bare = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            Manifest::parse(bare, None).unwrap(),
            Manifest::Index(_)
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None),
            Err(ManifestError::SchemaVersion(1))
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#, None),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
    }
}
