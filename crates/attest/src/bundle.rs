//! The attestations of one platform's image, ready to store: each in-toto
//! statement as a layer blob ([`AttestationBlob`]), and the file names a
//! local export uses.

use crate::intoto::{Statement, Subject, PREDICATE_SPDX};
use crate::layout::AttestationBlob;
use crate::provenance::{self, BuildRecord, PredicateOptions};
use crate::sbom::SpdxDocument;

/// File name of the provenance statement in a local export.
pub const PROVENANCE_FILE: &str = "provenance.json";
/// File name of the SBOM statement in a local export.
pub const SBOM_FILE: &str = "sbom.spdx.json";

/// Errors from serializing a statement.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// JSON encoding failed.
    #[error("cannot encode the {what} statement: {source}")]
    Json {
        /// `provenance` or `SBOM`.
        what: &'static str,
        /// The cause.
        source: serde_json::Error,
    },
}

/// The provenance statement of one platform's image as a layer blob.
pub fn provenance_blob(
    record: &BuildRecord,
    subjects: Vec<Subject>,
    opts: &PredicateOptions,
) -> Result<AttestationBlob, BundleError> {
    let st = provenance::statement(record, subjects, opts);
    let bytes = st.to_json().map_err(|source| BundleError::Json {
        what: "provenance",
        source,
    })?;
    Ok(AttestationBlob::new(bytes, &st.predicate_type))
}

/// The SBOM statement (predicate type `https://spdx.dev/Document`) of one
/// platform's image as a layer blob.
pub fn sbom_blob(
    doc: &SpdxDocument,
    subjects: Vec<Subject>,
) -> Result<AttestationBlob, BundleError> {
    let st = Statement::new(subjects, PREDICATE_SPDX, doc);
    let bytes = st.to_json().map_err(|source| BundleError::Json {
        what: "SBOM",
        source,
    })?;
    Ok(AttestationBlob::new(bytes, PREDICATE_SPDX))
}

/// The file a blob is written to by `-o type=local`.
pub fn local_file_name(blob: &AttestationBlob) -> &'static str {
    if blob.predicate_type() == PREDICATE_SPDX {
        SBOM_FILE
    } else {
        PROVENANCE_FILE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sbom::spdx::DocumentOptions;
    use crate::sbom::ScanResult;
    use std::time::UNIX_EPOCH;
    use xbuild_oci::{Digest, Platform};

    #[test]
    fn blobs_and_names() {
        let d = Digest::sha256_of(b"m");
        let rec = BuildRecord::new(
            Platform::parse("linux/amd64").unwrap(),
            "Dockerfile",
            b"FROM scratch\n".to_vec(),
        );
        let p = provenance_blob(
            &rec,
            vec![Subject::new("_", &d)],
            &PredicateOptions::default(),
        )
        .unwrap();
        assert_eq!(p.predicate_type(), "https://slsa.dev/provenance/v1");
        assert_eq!(local_file_name(&p), PROVENANCE_FILE);
        assert_eq!(p.descriptor.digest, Digest::sha256_of(&p.bytes));
        let doc = SpdxDocument::build(
            &ScanResult::default(),
            &DocumentOptions {
                name: "x".into(),
                created: UNIX_EPOCH,
                tool: "xbuild".into(),
                generator: None,
            },
        );
        let s = sbom_blob(&doc, vec![Subject::new("_", &d)]).unwrap();
        assert_eq!(local_file_name(&s), SBOM_FILE);
        let v: serde_json::Value = serde_json::from_slice(&s.bytes).unwrap();
        assert_eq!(v["predicateType"], "https://spdx.dev/Document");
        assert_eq!(v["predicate"]["spdxVersion"], "SPDX-2.3");
        assert_eq!(v["subject"][0]["digest"]["sha256"], d.hex());
    }
}
