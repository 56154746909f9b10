//! The attestation flags of `docker buildx build`, parsed and resolved:
//! `--attest type=provenance[,mode=min|max][,builder-id=…][,version=v0.2]`,
//! `--attest type=sbom[,generator=…]`, `--provenance true|false|mode=…`,
//! `--sbom true|false|generator=…`, and `BUILDX_NO_DEFAULT_ATTESTATIONS`.
//!
//! Like buildx, a min-mode provenance is attached by default when the image
//! is pushed, unless the user disabled it or set
//! `BUILDX_NO_DEFAULT_ATTESTATIONS`; an SBOM only when asked for.

use crate::provenance::{Mode, PredicateOptions, SlsaVersion};

/// Errors in attestation flag values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// `--attest` without `type=`.
    #[error("--attest {0:?}: missing type= (provenance or sbom)")]
    MissingType(String),
    /// An unknown `type=`.
    #[error("--attest {value:?}: unknown attestation type {ty:?} (expected provenance or sbom)")]
    UnknownType {
        /// The type given.
        ty: String,
        /// The whole value.
        value: String,
    },
    /// A key the attestation type does not know.
    #[error("{flag} {value:?}: unknown option {key:?}")]
    UnknownKey {
        /// `--attest`, `--provenance` or `--sbom`.
        flag: &'static str,
        /// The key.
        key: String,
        /// The whole value.
        value: String,
    },
    /// A bad value for a known key.
    #[error("{flag} {value:?}: invalid {key} {got:?} (expected {expected})")]
    BadValue {
        /// The flag.
        flag: &'static str,
        /// The key.
        key: &'static str,
        /// What was given.
        got: String,
        /// What is allowed.
        expected: &'static str,
        /// The whole value.
        value: String,
    },
}

/// Provenance settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProvenanceOptions {
    /// False when the user turned provenance off.
    pub enabled: bool,
    /// The predicate options.
    pub predicate: PredicateOptions,
}

/// SBOM settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SbomOptions {
    /// False when the user turned the SBOM off.
    pub enabled: bool,
    /// The `generator=` image BuildKit would run. xbuild scans with its own
    /// built-in scanners and records the value in the document's comment.
    pub generator: Option<String>,
}

/// The attestation flags of one build, before defaults apply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttestOptions {
    /// Set when a flag mentioned provenance.
    pub provenance: Option<ProvenanceOptions>,
    /// Set when a flag mentioned the SBOM.
    pub sbom: Option<SbomOptions>,
}

/// What to attach to a build, after defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    /// Provenance to attach, if any.
    pub provenance: Option<PredicateOptions>,
    /// SBOM to attach, if any.
    pub sbom: Option<SbomOptions>,
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Some(true),
        "0" | "f" | "false" => Some(false),
        _ => None,
    }
}

fn fields(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| match f.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_string()),
            None => (f.to_ascii_lowercase(), String::new()),
        })
        .collect()
}

impl AttestOptions {
    /// Apply one `--attest` value.
    pub fn add_attest(&mut self, value: &str) -> Result<(), OptionsError> {
        let fs = fields(value);
        let ty = fs
            .iter()
            .find(|(k, _)| k == "type")
            .map(|(_, v)| v.to_ascii_lowercase())
            .ok_or_else(|| OptionsError::MissingType(value.to_string()))?;
        let rest: Vec<_> = fs.into_iter().filter(|(k, _)| k != "type").collect();
        match ty.as_str() {
            "provenance" => self.apply_provenance("--attest", value, rest),
            "sbom" => self.apply_sbom("--attest", value, rest),
            _ => Err(OptionsError::UnknownType {
                ty,
                value: value.to_string(),
            }),
        }
    }

    /// Apply a `--provenance` value: a boolean, or `key=value` options.
    pub fn set_provenance_flag(&mut self, value: &str) -> Result<(), OptionsError> {
        match parse_bool(value) {
            Some(b) => self.apply_provenance(
                "--provenance",
                value,
                vec![("disabled".into(), (!b).to_string())],
            ),
            None => self.apply_provenance("--provenance", value, fields(value)),
        }
    }

    /// Apply an `--sbom` value: a boolean, or `key=value` options.
    pub fn set_sbom_flag(&mut self, value: &str) -> Result<(), OptionsError> {
        match parse_bool(value) {
            Some(b) => {
                self.apply_sbom("--sbom", value, vec![("disabled".into(), (!b).to_string())])
            }
            None => self.apply_sbom("--sbom", value, fields(value)),
        }
    }

    fn apply_provenance(
        &mut self,
        flag: &'static str,
        value: &str,
        fs: Vec<(String, String)>,
    ) -> Result<(), OptionsError> {
        let p = self.provenance.get_or_insert_with(Default::default);
        p.enabled = true;
        for (k, v) in fs {
            match k.as_str() {
                "disabled" => p.enabled = !disabled(flag, &v, value)?,
                "mode" => {
                    p.predicate.mode = match v.as_str() {
                        "min" => Mode::Min,
                        "max" | "full" => Mode::Max,
                        _ => {
                            return Err(OptionsError::BadValue {
                                flag,
                                key: "mode",
                                got: v,
                                expected: "min or max",
                                value: value.to_string(),
                            })
                        }
                    }
                }
                "version" => {
                    p.predicate.version = match v.as_str() {
                        "v1" | "v1.0" | "1" => SlsaVersion::V1,
                        "v0.2" | "0.2" => SlsaVersion::V02,
                        _ => {
                            return Err(OptionsError::BadValue {
                                flag,
                                key: "version",
                                got: v,
                                expected: "v1 or v0.2",
                                value: value.to_string(),
                            })
                        }
                    }
                }
                "builder-id" => p.predicate.builder_id = Some(v).filter(|s| !s.is_empty()),
                // Accepted by buildx/BuildKit; xbuild always writes the
                // attestation into the image and has nothing to tune here.
                "inline-only" | "filename" | "reproducible" => {}
                _ => return Err(unknown(flag, k, value)),
            }
        }
        Ok(())
    }

    fn apply_sbom(
        &mut self,
        flag: &'static str,
        value: &str,
        fs: Vec<(String, String)>,
    ) -> Result<(), OptionsError> {
        let s = self.sbom.get_or_insert_with(Default::default);
        s.enabled = true;
        for (k, v) in fs {
            match k.as_str() {
                "disabled" => s.enabled = !disabled(flag, &v, value)?,
                "generator" => s.generator = Some(v).filter(|s| !s.is_empty()),
                _ => return Err(unknown(flag, k, value)),
            }
        }
        Ok(())
    }

    /// Apply defaults: min provenance when `pushing` unless disabled or
    /// `no_default_attestations` (`BUILDX_NO_DEFAULT_ATTESTATIONS` set to a
    /// true value, see [`no_default_attestations`]).
    pub fn resolve(&self, pushing: bool, no_default_attestations: bool) -> Resolved {
        let provenance = match &self.provenance {
            Some(p) if p.enabled => Some(p.predicate.clone()),
            Some(_) => None,
            None if pushing && !no_default_attestations => Some(PredicateOptions::default()),
            None => None,
        };
        let sbom = self.sbom.clone().filter(|s| s.enabled);
        Resolved { provenance, sbom }
    }
}

/// The value of a `disabled` key (empty means true).
fn disabled(flag: &'static str, v: &str, value: &str) -> Result<bool, OptionsError> {
    parse_bool(if v.is_empty() { "true" } else { v }).ok_or_else(|| OptionsError::BadValue {
        flag,
        key: "disabled",
        got: v.to_string(),
        expected: "true or false",
        value: value.to_string(),
    })
}

/// A key the flag does not know.
fn unknown(flag: &'static str, key: String, value: &str) -> OptionsError {
    OptionsError::UnknownKey {
        flag,
        key,
        value: value.to_string(),
    }
}

/// Whether a `BUILDX_NO_DEFAULT_ATTESTATIONS` value turns the default
/// provenance off: any non-empty value that is not a false boolean.
pub fn no_default_attestations(env_value: Option<&str>) -> bool {
    match env_value {
        None | Some("") => false,
        Some(v) => parse_bool(v) != Some(false),
    }
}

/// Whether a `BUILDKIT_SBOM_SCAN_CONTEXT` / `BUILDKIT_SBOM_SCAN_STAGE` value
/// enables scanning for the stage named `stage`: `true`/`false`, or a comma
/// separated list of stage names.
pub fn scan_enabled_for_stage(stage: Option<&str>, value: &str) -> bool {
    if let Some(b) = parse_bool(value.trim()) {
        return b;
    }
    match stage {
        Some(name) => value
            .split(',')
            .map(str::trim)
            .any(|s| !s.is_empty() && s.eq_ignore_ascii_case(name)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_like_buildx() {
        let o = AttestOptions::default();
        assert_eq!(
            o.resolve(true, false).provenance,
            Some(PredicateOptions::default())
        );
        assert_eq!(o.resolve(false, false), Resolved::default());
        assert_eq!(o.resolve(true, true), Resolved::default());
        assert!(no_default_attestations(Some("1")));
        assert!(no_default_attestations(Some("yes")));
        assert!(!no_default_attestations(Some("false")));
        assert!(!no_default_attestations(None));
    }

    #[test]
    fn flags() {
        let mut o = AttestOptions::default();
        o.add_attest("type=provenance,mode=max,builder-id=https://ci/1,version=v0.2")
            .unwrap();
        let p = o.resolve(false, true).provenance.unwrap();
        assert_eq!(p.mode, Mode::Max);
        assert_eq!(p.version, SlsaVersion::V02);
        assert_eq!(p.builder_id.as_deref(), Some("https://ci/1"));

        let mut o = AttestOptions::default();
        o.set_provenance_flag("false").unwrap();
        assert_eq!(o.resolve(true, false).provenance, None);
        o.set_provenance_flag("mode=max").unwrap();
        assert_eq!(o.resolve(false, false).provenance.unwrap().mode, Mode::Max);

        let mut o = AttestOptions::default();
        o.set_sbom_flag("true").unwrap();
        assert!(o.resolve(false, false).sbom.is_some());
        o.add_attest("type=sbom,generator=docker/scanner:1")
            .unwrap();
        assert_eq!(
            o.resolve(false, false).sbom.unwrap().generator.as_deref(),
            Some("docker/scanner:1")
        );
        o.add_attest("type=sbom,disabled=true").unwrap();
        assert!(o.resolve(true, false).sbom.is_none());
    }

    #[test]
    fn errors_name_the_flag() {
        let mut o = AttestOptions::default();
        let e = o.add_attest("mode=max").unwrap_err();
        assert!(matches!(e, OptionsError::MissingType(_)));
        let e = o.add_attest("type=vex").unwrap_err();
        assert!(e.to_string().contains("vex"));
        let e = o.set_provenance_flag("mode=medium").unwrap_err();
        assert!(e.to_string().contains("--provenance"), "{e}");
        let e = o.set_sbom_flag("colour=red").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn scan_stage_values() {
        assert!(scan_enabled_for_stage(Some("build"), "true"));
        assert!(!scan_enabled_for_stage(Some("build"), "false"));
        assert!(scan_enabled_for_stage(Some("build"), "x,build"));
        assert!(!scan_enabled_for_stage(Some("final"), "x,build"));
        assert!(!scan_enabled_for_stage(None, "x"));
    }
}
