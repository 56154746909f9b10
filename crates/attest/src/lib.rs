//! Build attestations for xbuild.
//!
//! - [`provenance`]: an in-toto Statement carrying a SLSA provenance
//!   predicate (v1, or v0.2 on request), shaped like BuildKit's so that
//!   tools written for `docker buildx` read it; `mode=min` and `mode=max`
//!   include the same fields BuildKit does.
//! - [`sbom`]: an SPDX 2.3 JSON document made by reading the package
//!   databases of a root filesystem directly (dpkg, apk, Python, npm, Go
//!   build info, `cargo auditable`).
//! - [`layout`]: the manifests that carry attestations, either in buildx's
//!   layout (attestation manifests in the image index, platform
//!   `unknown/unknown`) or as OCI 1.1 referrers (`subject`).
//! - [`options`]: the `--attest`, `--provenance` and `--sbom` flag values.
//!
//! No type here carries a secret value or ssh key material: a build's
//! secrets and ssh forwards are known by their ids only.
#![warn(missing_docs)]

pub mod bundle;
pub mod inspect;
pub mod intoto;
pub mod layout;
pub mod options;
pub mod provenance;
pub mod purl;
pub mod sbom;
pub mod time;

pub use intoto::{Statement, Subject};
pub use layout::{AttestationBlob, BuildxAttestation, ReferrerArtifact};
pub use options::{AttestOptions, ProvenanceOptions, SbomOptions};

pub use provenance::{BuildRecord, Mode, SlsaVersion};
pub use sbom::{ScanOptions, SpdxDocument};
