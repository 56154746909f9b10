//! Reading attestations back, as `imagetools inspect --format '{{json
//! .Provenance}}'` / `'{{json .SBOM}}'` and `xbuild attestations ls|get`
//! show them: pure functions over fetched manifests and blobs.
//!
//! The views have buildx's shape: for one platform `{"SLSA": predicate}`
//! and `{"SPDX": document, "AdditionalSPDXs": [...]}`; for several, a map
//! from platform (`linux/amd64`) to that object.

use crate::intoto::{MEDIA_TYPE, PREDICATE_SPDX};
use crate::layout::ANNOTATION_PREDICATE_TYPE;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use xbuild_oci::{Descriptor, ImageManifest};

/// Prefix of SLSA provenance predicate types.
pub const PREDICATE_SLSA_PREFIX: &str = "https://slsa.dev/provenance/";

/// Errors from reading attestation blobs.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A layer is not an in-toto statement.
    #[error("attestation layer {digest} is not an in-toto statement: {source}")]
    NotAStatement {
        /// The layer digest.
        digest: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// The in-toto layers of an attestation manifest, with their predicate types.
pub fn statement_layers(manifest: &ImageManifest) -> Vec<(&str, &Descriptor)> {
    manifest
        .layers
        .iter()
        .filter(|l| {
            l.media_type == MEDIA_TYPE || l.media_type.starts_with("application/vnd.in-toto")
        })
        .filter_map(|l| {
            l.annotations
                .get(ANNOTATION_PREDICATE_TYPE)
                .map(|t| (t.as_str(), l))
        })
        .collect()
}

/// The `predicate` of a statement blob.
pub fn predicate_of(digest: &str, bytes: &[u8]) -> Result<Value, InspectError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|source| InspectError::NotAStatement {
        digest: digest.to_string(),
        source,
    })?;
    Ok(v.get("predicate").cloned().unwrap_or(Value::Null))
}

/// buildx's provenance object from the statements of one platform
/// (`(predicate type, statement bytes)`): the first SLSA predicate.
pub fn provenance_view(statements: &[(String, Vec<u8>)]) -> Result<Option<Value>, InspectError> {
    for (ty, bytes) in statements {
        if ty.starts_with(PREDICATE_SLSA_PREFIX) {
            let mut m = Map::new();
            m.insert("SLSA".into(), predicate_of(ty, bytes)?);
            return Ok(Some(Value::Object(m)));
        }
    }
    Ok(None)
}

/// buildx's SBOM object from the statements of one platform: the first
/// SPDX document, and the others as `AdditionalSPDXs`.
pub fn sbom_view(statements: &[(String, Vec<u8>)]) -> Result<Option<Value>, InspectError> {
    let mut docs = Vec::new();
    for (ty, bytes) in statements {
        if ty == PREDICATE_SPDX {
            docs.push(predicate_of(ty, bytes)?);
        }
    }
    if docs.is_empty() {
        return Ok(None);
    }
    let mut m = Map::new();
    m.insert("SPDX".into(), docs.remove(0));
    if !docs.is_empty() {
        m.insert("AdditionalSPDXs".into(), Value::Array(docs));
    }
    Ok(Some(Value::Object(m)))
}

/// The template value for `.Provenance` / `.SBOM`: the one platform's
/// object, or a map by platform when there are several; `{}` when none.
pub fn per_platform_view(views: BTreeMap<String, Value>) -> Value {
    match views.len() {
        0 => Value::Object(Map::new()),
        1 => views.into_values().next().unwrap_or(Value::Null),
        _ => Value::Object(views.into_iter().collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{buildx_attestation, AttestationBlob};
    use xbuild_oci::media_types as mt;

    #[test]
    fn views_like_buildx() {
        let prov = br#"{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"https://slsa.dev/provenance/v1","predicate":{"buildDefinition":{"buildType":"b"}}}"#.to_vec();
        let spdx = br#"{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"https://spdx.dev/Document","predicate":{"spdxVersion":"SPDX-2.3"}}"#.to_vec();
        let sts = vec![
            ("https://slsa.dev/provenance/v1".to_string(), prov.clone()),
            (PREDICATE_SPDX.to_string(), spdx.clone()),
            (PREDICATE_SPDX.to_string(), spdx.clone()),
        ];
        let p = provenance_view(&sts).unwrap().unwrap();
        assert_eq!(p["SLSA"]["buildDefinition"]["buildType"], "b");
        let s = sbom_view(&sts).unwrap().unwrap();
        assert_eq!(s["SPDX"]["spdxVersion"], "SPDX-2.3");
        assert_eq!(s["AdditionalSPDXs"].as_array().unwrap().len(), 1);
        assert!(sbom_view(&sts[..1]).unwrap().is_none());
        let mut m = BTreeMap::new();
        m.insert("linux/amd64".to_string(), p.clone());
        assert_eq!(per_platform_view(m.clone()), p);
        m.insert("linux/arm64".to_string(), p.clone());
        assert_eq!(per_platform_view(m)["linux/arm64"], p);
        assert!(
            provenance_view(&[("https://slsa.dev/provenance/v1".into(), b"nope".to_vec())])
                .is_err()
        );

        let subject = Descriptor::of_bytes(mt::OCI_MANIFEST, b"x");
        let a = buildx_attestation(
            &subject,
            vec![AttestationBlob::new(prov, "https://slsa.dev/provenance/v1")],
            false,
        )
        .unwrap();
        let m = ImageManifest::from_slice(&a.manifest.bytes).unwrap();
        let l = statement_layers(&m);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].0, "https://slsa.dev/provenance/v1");
    }
}
