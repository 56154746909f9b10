//! Where attestations go in an image: pure functions over the `oci` types.
//!
//! - The buildx layout (the default, what `docker buildx` writes): one
//!   image manifest per platform whose layers are in-toto statements
//!   (`application/vnd.in-toto+json`, annotated with
//!   `in-toto.io/predicate-type`), listed in the image index with platform
//!   `unknown/unknown` and the annotations `vnd.docker.reference.digest`
//!   (the platform manifest it describes) and `vnd.docker.reference.type:
//!   attestation-manifest`.
//! - The OCI 1.1 referrers layout: the same layers in an artifact manifest
//!   with `artifactType` and a `subject` pointing at the platform manifest,
//!   found through the registry's referrers API or the tag schema fallback
//!   (an index tagged `sha256-<hex>`, kept by `xbuild-registry`), so the
//!   image index lists only real platforms.

use crate::intoto;
use serde::Serialize;
use std::collections::BTreeMap;
use xbuild_oci::descriptor::{encode, DescriptorError, Encoded};
use xbuild_oci::manifest::ManifestError;
use xbuild_oci::media_types as mt;
use xbuild_oci::{Descriptor, Digest, ImageIndex, ImageManifest, PlatformSpec};

/// Annotation naming the predicate type of an in-toto layer.
pub const ANNOTATION_PREDICATE_TYPE: &str = "in-toto.io/predicate-type";
/// Annotation (on the index entry) naming the described manifest.
pub const ANNOTATION_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";
/// Annotation (on the index entry) naming the kind of reference.
pub const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// The value of [`ANNOTATION_REFERENCE_TYPE`] for attestations.
pub const REFERENCE_TYPE_ATTESTATION: &str = "attestation-manifest";
/// `artifactType` of an attestation manifest pushed as a referrer.
pub const ARTIFACT_TYPE_ATTESTATION: &str = "application/vnd.docker.attestation.manifest.v1+json";

/// Errors from building attestation manifests.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A document could not be encoded.
    #[error("cannot encode attestation document: {0}")]
    Encode(#[from] DescriptorError),
    /// A manifest could not be encoded.
    #[error("cannot encode attestation manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// No statements were given.
    #[error("an attestation manifest needs at least one statement")]
    Empty,
}

/// One in-toto statement as a layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationBlob {
    /// The statement's bytes.
    pub bytes: Vec<u8>,
    /// Its layer descriptor (media type, digest, size, predicate type).
    pub descriptor: Descriptor,
}

impl AttestationBlob {
    /// Wrap statement bytes whose predicate is of `predicate_type`.
    pub fn new(bytes: Vec<u8>, predicate_type: &str) -> Self {
        let descriptor = Descriptor::of_bytes(intoto::MEDIA_TYPE, &bytes)
            .with_annotation(ANNOTATION_PREDICATE_TYPE, predicate_type);
        AttestationBlob { bytes, descriptor }
    }

    /// The predicate type annotation.
    pub fn predicate_type(&self) -> &str {
        self.descriptor
            .annotations
            .get(ANNOTATION_PREDICATE_TYPE)
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// An attestation manifest in the buildx layout, with every blob it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildxAttestation {
    /// The image config (`unknown/unknown`, diff ids of the statements).
    pub config: Encoded,
    /// The statement layers.
    pub layers: Vec<AttestationBlob>,
    /// The manifest.
    pub manifest: Encoded,
    /// The entry to add to the image index.
    pub index_entry: Descriptor,
}

/// An attestation manifest in the OCI 1.1 referrers layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferrerArtifact {
    /// The empty config `{}`.
    pub config: Encoded,
    /// The statement layers.
    pub layers: Vec<AttestationBlob>,
    /// The manifest (with `subject` and `artifactType`).
    pub manifest: Encoded,
    /// Its descriptor as a referrers list carries it (with `artifactType`).
    pub referrer_descriptor: Descriptor,
}

impl BuildxAttestation {
    /// Every blob to upload before the manifest: config then layers.
    pub fn blobs(&self) -> Vec<(&Descriptor, &[u8])> {
        blobs(&self.config, &self.layers)
    }
}

impl ReferrerArtifact {
    /// Every blob to upload before the manifest: config then layers.
    pub fn blobs(&self) -> Vec<(&Descriptor, &[u8])> {
        blobs(&self.config, &self.layers)
    }
}

fn blobs<'a>(
    config: &'a Encoded,
    layers: &'a [AttestationBlob],
) -> Vec<(&'a Descriptor, &'a [u8])> {
    let mut v = vec![(&config.descriptor, config.bytes.as_slice())];
    v.extend(layers.iter().map(|l| (&l.descriptor, l.bytes.as_slice())));
    v
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    diff_ids: Vec<&'a Digest>,
}

#[derive(Serialize)]
struct AttestationConfig<'a> {
    architecture: &'static str,
    os: &'static str,
    config: BTreeMap<String, String>,
    rootfs: RootFs<'a>,
}

/// The platform of attestation manifests in an index.
pub fn unknown_platform() -> PlatformSpec {
    PlatformSpec {
        architecture: "unknown".into(),
        os: "unknown".into(),
        os_version: None,
        os_features: Vec::new(),
        variant: None,
        features: Vec::new(),
    }
}

/// Build the buildx-layout attestation manifest for the platform manifest
/// `subject`. `docker_types` selects Docker media types, for indexes that
/// are Docker manifest lists.
pub fn buildx_attestation(
    subject: &Descriptor,
    layers: Vec<AttestationBlob>,
    docker_types: bool,
) -> Result<BuildxAttestation, LayoutError> {
    if layers.is_empty() {
        return Err(LayoutError::Empty);
    }
    let (config_type, _) = media_types(docker_types);
    let cfg = AttestationConfig {
        architecture: "unknown",
        os: "unknown",
        config: BTreeMap::new(),
        rootfs: RootFs {
            ty: "layers",
            diff_ids: layers.iter().map(|l| &l.descriptor.digest).collect(),
        },
    };
    let config = encode(&cfg, config_type)?;
    let mut manifest = ImageManifest::new_oci(
        config.descriptor.clone(),
        layers.iter().map(|l| l.descriptor.clone()).collect(),
    );
    if docker_types {
        manifest.media_type = Some(mt::DOCKER_MANIFEST.to_string());
    }
    let manifest = manifest.encode()?;
    let mut index_entry = manifest
        .descriptor
        .clone()
        .with_annotation(ANNOTATION_REFERENCE_DIGEST, subject.digest.as_str())
        .with_annotation(ANNOTATION_REFERENCE_TYPE, REFERENCE_TYPE_ATTESTATION);
    index_entry.platform = Some(unknown_platform());
    Ok(BuildxAttestation {
        config,
        layers,
        manifest,
        index_entry,
    })
}

fn media_types(docker: bool) -> (&'static str, &'static str) {
    if docker {
        (mt::DOCKER_CONFIG, mt::DOCKER_MANIFEST)
    } else {
        (mt::OCI_CONFIG, mt::OCI_MANIFEST)
    }
}

/// Build the OCI 1.1 referrer artifact for the platform manifest `subject`.
pub fn referrer_artifact(
    subject: &Descriptor,
    layers: Vec<AttestationBlob>,
) -> Result<ReferrerArtifact, LayoutError> {
    if layers.is_empty() {
        return Err(LayoutError::Empty);
    }
    let config = Encoded {
        bytes: b"{}".to_vec(),
        descriptor: Descriptor::of_bytes(mt::OCI_EMPTY, b"{}"),
    };
    let mut manifest = ImageManifest::new_oci(
        config.descriptor.clone(),
        layers.iter().map(|l| l.descriptor.clone()).collect(),
    );
    manifest.artifact_type = Some(ARTIFACT_TYPE_ATTESTATION.to_string());
    manifest.subject = Some(Descriptor::new(
        subject.media_type.clone(),
        subject.digest.clone(),
        subject.size,
    ));
    let manifest = manifest.encode()?;
    let mut referrer_descriptor = manifest.descriptor.clone();
    referrer_descriptor.artifact_type = Some(ARTIFACT_TYPE_ATTESTATION.to_string());
    Ok(ReferrerArtifact {
        config,
        layers,
        manifest,
        referrer_descriptor,
    })
}

/// `index` with the attestation manifests appended (after the platforms,
/// as buildx orders them).
pub fn index_with_attestations(index: &ImageIndex, atts: &[BuildxAttestation]) -> ImageIndex {
    let mut out = index.clone();
    out.manifests
        .extend(atts.iter().map(|a| a.index_entry.clone()));
    out
}

/// The attestation manifest entries of a buildx-layout index, with the
/// platform manifest digest each one describes.
pub fn attestation_entries(index: &ImageIndex) -> Vec<(Digest, &Descriptor)> {
    index
        .manifests
        .iter()
        .filter(|d| {
            d.annotations
                .get(ANNOTATION_REFERENCE_TYPE)
                .map(String::as_str)
                == Some(REFERENCE_TYPE_ATTESTATION)
        })
        .filter_map(|d| {
            let target = d.annotations.get(ANNOTATION_REFERENCE_DIGEST)?;
            Some((Digest::parse(target).ok()?, d))
        })
        .collect()
}

/// The entries of an index that are real platform images (not attestations).
pub fn platform_entries(index: &ImageIndex) -> Vec<&Descriptor> {
    index
        .manifests
        .iter()
        .filter(|d| !d.annotations.contains_key(ANNOTATION_REFERENCE_TYPE))
        .filter(|d| {
            d.platform
                .as_ref()
                .map(|p| p.os != "unknown" || p.architecture != "unknown")
                .unwrap_or(true)
        })
        .collect()
}

/// The in-toto layers of an attestation manifest whose predicate type
/// starts with `predicate_prefix` (`https://slsa.dev/provenance/`,
/// `https://spdx.dev/Document`).
pub fn layers_of_type<'a>(
    manifest: &'a ImageManifest,
    predicate_prefix: &str,
) -> Vec<&'a Descriptor> {
    manifest
        .layers
        .iter()
        .filter(|l| {
            l.annotations
                .get(ANNOTATION_PREDICATE_TYPE)
                .is_some_and(|t| t.starts_with(predicate_prefix))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use xbuild_oci::Platform;

    fn platform_manifest(arch: &str) -> Descriptor {
        Descriptor::of_bytes(mt::OCI_MANIFEST, arch.as_bytes())
            .with_platform(&Platform::parse(&format!("linux/{arch}")).unwrap())
    }

    fn blobs2() -> Vec<AttestationBlob> {
        vec![
            AttestationBlob::new(b"{\"p\":1}".to_vec(), "https://slsa.dev/provenance/v1"),
            AttestationBlob::new(b"{\"s\":1}".to_vec(), intoto::PREDICATE_SPDX),
        ]
    }

    #[test]
    fn buildx_layout() {
        let amd = platform_manifest("amd64");
        let arm = platform_manifest("arm64");
        let a1 = buildx_attestation(&amd, blobs2(), false).unwrap();
        let a2 = buildx_attestation(&arm, blobs2(), false).unwrap();
        let idx = ImageIndex::new_oci(vec![amd.clone(), arm.clone()]);
        let full = index_with_attestations(&idx, &[a1.clone(), a2.clone()]);
        let j: serde_json::Value = serde_json::from_slice(&full.encode().unwrap().bytes).unwrap();
        let e = &j["manifests"][2];
        assert_eq!(e["platform"]["os"], "unknown");
        assert_eq!(e["platform"]["architecture"], "unknown");
        assert_eq!(
            e["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );
        assert_eq!(
            e["annotations"]["vnd.docker.reference.digest"],
            amd.digest.as_str()
        );
        assert_eq!(
            j["manifests"][3]["annotations"]["vnd.docker.reference.digest"],
            arm.digest.as_str()
        );
        // The manifest: config unknown/unknown with the layers as diff ids.
        let m: serde_json::Value = serde_json::from_slice(&a1.manifest.bytes).unwrap();
        assert_eq!(m["mediaType"], mt::OCI_MANIFEST);
        assert_eq!(m["layers"][0]["mediaType"], "application/vnd.in-toto+json");
        assert_eq!(
            m["layers"][0]["annotations"]["in-toto.io/predicate-type"],
            "https://slsa.dev/provenance/v1"
        );
        assert_eq!(
            m["layers"][1]["annotations"]["in-toto.io/predicate-type"],
            "https://spdx.dev/Document"
        );
        let c: serde_json::Value = serde_json::from_slice(&a1.config.bytes).unwrap();
        assert_eq!(c["architecture"], "unknown");
        assert_eq!(
            c["rootfs"]["diff_ids"][1],
            a1.layers[1].descriptor.digest.as_str()
        );
        assert_eq!(a1.blobs().len(), 3);
        // Reading back.
        let back = ImageIndex::from_slice(&full.encode().unwrap().bytes).unwrap();
        let ents = attestation_entries(&back);
        assert_eq!(ents.len(), 2);
        assert_eq!(ents[0].0, amd.digest);
        assert_eq!(platform_entries(&back).len(), 2);
        let mm = ImageManifest::from_slice(&a1.manifest.bytes).unwrap();
        assert_eq!(layers_of_type(&mm, "https://slsa.dev/provenance/").len(), 1);
        assert_eq!(layers_of_type(&mm, intoto::PREDICATE_SPDX).len(), 1);
        // Docker types for Docker manifest lists.
        let d = buildx_attestation(&amd, blobs2(), true).unwrap();
        assert_eq!(d.manifest.descriptor.media_type, mt::DOCKER_MANIFEST);
        assert_eq!(d.config.descriptor.media_type, mt::DOCKER_CONFIG);
        assert!(matches!(
            buildx_attestation(&amd, vec![], false),
            Err(LayoutError::Empty)
        ));
    }

    #[test]
    fn referrers_layout() {
        let amd = platform_manifest("amd64");
        let r = referrer_artifact(&amd, blobs2()).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&r.manifest.bytes).unwrap();
        assert_eq!(m["artifactType"], ARTIFACT_TYPE_ATTESTATION);
        assert_eq!(m["subject"]["digest"], amd.digest.as_str());
        assert_eq!(m["subject"]["mediaType"], mt::OCI_MANIFEST);
        assert!(m["subject"].get("platform").is_none());
        assert_eq!(m["config"]["mediaType"], mt::OCI_EMPTY);
        assert_eq!(m["config"]["digest"], Digest::sha256_of(b"{}").as_str());
        assert_eq!(
            r.referrer_descriptor.artifact_type.as_deref(),
            Some(ARTIFACT_TYPE_ATTESTATION)
        );
    }
}
