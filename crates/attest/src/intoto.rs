//! The in-toto attestation Statement (v1): subjects by digest, a predicate
//! type and the predicate.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use xbuild_oci::Digest;

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// `_type` of an in-toto Statement v0.1 (what SLSA v0.2 tooling expects).
pub const STATEMENT_V01: &str = "https://in-toto.io/Statement/v0.1";
/// Media type of an in-toto statement stored as an OCI layer.
pub const MEDIA_TYPE: &str = "application/vnd.in-toto+json";
/// Predicate type of an SPDX document.
pub const PREDICATE_SPDX: &str = "https://spdx.dev/Document";

/// One artifact the statement is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// A name for the artifact (a purl of the image, or `_`).
    pub name: String,
    /// Its digests by algorithm (`{"sha256": "<hex>"}`).
    pub digest: BTreeMap<String, String>,
}

impl Subject {
    /// A subject named `name` with the digest of `digest`.
    pub fn new(name: impl Into<String>, digest: &Digest) -> Self {
        let mut d = BTreeMap::new();
        d.insert(
            digest.algorithm().as_str().to_string(),
            digest.hex().to_string(),
        );
        Subject {
            name: name.into(),
            digest: d,
        }
    }
}

/// An in-toto Statement with a predicate of type `P`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement<P> {
    /// [`STATEMENT_V1`] or [`STATEMENT_V01`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// The artifacts.
    pub subject: Vec<Subject>,
    /// The predicate's type URI.
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The predicate.
    pub predicate: P,
}

impl<P: Serialize> Statement<P> {
    /// A v1 statement.
    pub fn new(subject: Vec<Subject>, predicate_type: &str, predicate: P) -> Self {
        Statement {
            statement_type: STATEMENT_V1.to_string(),
            subject,
            predicate_type: predicate_type.to_string(),
            predicate,
        }
    }

    /// Pretty JSON bytes, as BuildKit writes its attestation layers.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec_pretty(self)
    }
}
