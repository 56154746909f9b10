//! [`Descriptor`] and [`PlatformSpec`], with the exact JSON field names of the
//! OCI image spec, and [`Encoded`]: canonical bytes + descriptor of a JSON
//! document in one call.

use crate::digest::Digest;
use crate::platform::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Errors from encoding a document to canonical JSON.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    /// serde_json failed (only possible for maps with non-string keys).
    #[error("cannot encode JSON document: {0}")]
    Json(#[from] serde_json::Error),
}

/// A content descriptor: what a blob is, its digest and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// URLs the content may be fetched from (non-distributable layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform of a manifest referenced from an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    /// The artifact type of a referenced artifact manifest.
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// Fields this type does not know (`data`, vendor extensions), kept as-is.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Descriptor {
    /// A descriptor with only the required fields.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            extra: BTreeMap::new(),
        }
    }

    /// The descriptor of `bytes` with the given media type.
    pub fn of_bytes(media_type: impl Into<String>, bytes: &[u8]) -> Self {
        Descriptor::new(media_type, Digest::sha256_of(bytes), bytes.len() as u64)
    }

    /// Set the platform (builder style).
    pub fn with_platform(mut self, platform: &Platform) -> Self {
        self.platform = Some(PlatformSpec::from(platform));
        self
    }

    /// Add an annotation (builder style).
    pub fn with_annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// The platform as a normalized [`Platform`], if set.
    pub fn platform(&self) -> Option<Platform> {
        self.platform.as_ref().map(PlatformSpec::to_platform)
    }
}

/// The `platform` object of a descriptor in an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformSpec {
    /// CPU architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// Operating system version (Windows).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features (Windows).
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// CPU variant (`v7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Reserved by the spec; kept for round-trips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl PlatformSpec {
    /// The normalized [`Platform`] (os version and features are dropped).
    pub fn to_platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

impl From<&Platform> for PlatformSpec {
    fn from(p: &Platform) -> Self {
        PlatformSpec {
            architecture: p.architecture().to_string(),
            os: p.os().to_string(),
            os_version: None,
            os_features: Vec::new(),
            variant: p.variant().map(str::to_string),
            features: Vec::new(),
        }
    }
}

impl From<Platform> for PlatformSpec {
    fn from(p: Platform) -> Self {
        PlatformSpec::from(&p)
    }
}

impl From<&PlatformSpec> for Platform {
    fn from(p: &PlatformSpec) -> Self {
        p.to_platform()
    }
}

impl From<PlatformSpec> for Platform {
    fn from(p: PlatformSpec) -> Self {
        p.to_platform()
    }
}

/// A JSON document serialized to its canonical bytes, with its descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The exact bytes whose digest the descriptor carries.
    pub bytes: Vec<u8>,
    /// Media type, digest (sha256) and size of `bytes`.
    pub descriptor: Descriptor,
}

impl Encoded {
    /// The digest of the bytes.
    pub fn digest(&self) -> &Digest {
        &self.descriptor.digest
    }
}

/// Serialize `value` to canonical bytes: compact JSON, fields in declaration
/// order, maps sorted by key. The same value always gives the same bytes.
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, DescriptorError> {
    Ok(serde_json::to_vec(value)?)
}

/// Serialize `value` canonically and describe the bytes with `media_type`.
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
    media_type: &str,
) -> Result<Encoded, DescriptorError> {
    let bytes = canonical_json(value)?;
    let descriptor = Descriptor::of_bytes(media_type, &bytes);
    Ok(Encoded { bytes, descriptor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_json_names() {
        let d = Descriptor::of_bytes("application/x", b"abc")
            .with_platform(&Platform::parse("linux/arm/v7").unwrap())
            .with_annotation("k", "v");
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(
            j,
            r#"{"mediaType":"application/x","digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","size":3,"annotations":{"k":"v"},"platform":{"architecture":"arm","os":"linux","variant":"v7"}}"#
        );
        let back: Descriptor = serde_json::from_str(&j).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.platform().unwrap().to_string(), "linux/arm/v7");
    }

    #[test]
    fn unknown_fields_kept() {
        let j = r#"{"mediaType":"a","digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","size":3,"data":"YWJj","platform":{"architecture":"aarch64","os":"linux","variant":"v8","os.version":"1"}}"#;
        let d: Descriptor = serde_json::from_str(j).unwrap();
        assert_eq!(d.extra["data"], "YWJj");
        assert_eq!(d.platform().unwrap().to_string(), "linux/arm64");
        assert_eq!(
            d.platform.as_ref().unwrap().os_version.as_deref(),
            Some("1")
        );
        let again = serde_json::to_string(&d).unwrap();
        assert!(again.contains(r#""data":"YWJj""#));
    }

    #[test]
    fn encode_is_stable() {
        let mut m1 = BTreeMap::new();
        m1.insert("b", vec![1]);
        m1.insert("a", vec![1, 2]);
        let mut m2 = BTreeMap::new();
        m2.insert("a", vec![1, 2]);
        m2.insert("b", vec![1]);
        let a = encode(&m1, "t").unwrap();
        let b = encode(&m2, "t").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.bytes, br#"{"a":[1,2],"b":[1]}"#);
        assert_eq!(a.descriptor.size, a.bytes.len() as u64);
    }
}
