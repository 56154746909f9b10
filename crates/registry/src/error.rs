//! [`RegistryError`]: what went wrong talking to a registry, naming the
//! registry, the reference and the reason, and the mapping from
//! `oci-client`'s errors.

use oci_client::errors::{OciDistributionError, OciErrorCode};
use std::path::PathBuf;
use xbuild_oci::{Digest, Platform};

/// Errors from registry operations.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused the credentials (or their absence): 401/403.
    #[error("{reference}: access denied by {registry} ({detail}); run `xbuild login {registry}` if it needs credentials")]
    Unauthorized {
        /// The registry as written in references.
        registry: String,
        /// The reference being accessed (or the registry for `login`).
        reference: String,
        /// What the registry said.
        detail: String,
    },
    /// A manifest, tag, repository or blob does not exist.
    #[error("{reference}: {what} not found in {registry}")]
    NotFound {
        /// The registry.
        registry: String,
        /// The reference being accessed.
        reference: String,
        /// What is missing (`tag "1.0"`, `manifest sha256:...`, `blob sha256:...`).
        what: String,
    },
    /// The index / manifest list has no entry for the wanted platform.
    #[error("{reference}: no image for platform {platform} (the image has: {})", list_platforms(.available))]
    NoPlatform {
        /// The reference being resolved.
        reference: String,
        /// The platform asked for.
        platform: Platform,
        /// The platforms the index offers.
        available: Vec<Platform>,
    },
    /// The registry could not be reached: connection refused, DNS, timeout,
    /// connection dropped mid-transfer.
    #[error("{reference}: cannot reach registry {registry}: {detail}")]
    Unreachable {
        /// The registry.
        registry: String,
        /// The reference being accessed.
        reference: String,
        /// The transport error.
        detail: String,
    },
    /// Content did not hash to (or was not the size of) what was expected.
    #[error("{reference}: content of {expected} from {registry} does not match: {detail}")]
    DigestMismatch {
        /// The registry.
        registry: String,
        /// The reference being accessed.
        reference: String,
        /// The digest expected.
        expected: Digest,
        /// What was found instead.
        detail: String,
    },
    /// The registry answered something this client cannot use: an
    /// unexpected status, a malformed manifest, a server error.
    #[error("{reference}: registry {registry} {}: {detail}", status_text(*.status))]
    Protocol {
        /// The registry.
        registry: String,
        /// The reference being accessed.
        reference: String,
        /// The HTTP status, when the registry answered with one.
        status: Option<u16>,
        /// What went wrong.
        detail: String,
    },
    /// An index refers to manifests the target repository does not have.
    #[error("{reference}: refusing to push the index: {} child manifest(s) missing in the repository: {}", .missing.len(), join_digests(.missing))]
    MissingManifests {
        /// The reference being pushed.
        reference: String,
        /// The children not found.
        missing: Vec<Digest>,
    },
    /// A blob or manifest the operation needs is not in the local store, or
    /// the store failed.
    #[error("local store: {0}")]
    Store(#[from] xbuild_oci::store::StoreError),
    /// The docker config file could not be read, parsed or written.
    #[error("docker config {path}: {detail}")]
    DockerConfig {
        /// The config file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} for {registry}: {detail}")]
    CredentialHelper {
        /// The helper's name (`pass`, `ecr-login`, ...).
        helper: String,
        /// The registry asked about.
        registry: String,
        /// What went wrong.
        detail: String,
    },
    /// A local document (manifest, index, config) could not be parsed.
    #[error("{reference}: invalid {what}: {detail}")]
    Invalid {
        /// The reference being processed.
        reference: String,
        /// Which document.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

fn list_platforms(p: &[Platform]) -> String {
    if p.is_empty() {
        return "no platform entries".into();
    }
    p.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn join_digests(d: &[Digest]) -> String {
    d.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")
}

fn status_text(status: Option<u16>) -> String {
    match status {
        Some(s) => format!("answered HTTP {s}"),
        None => "failed".to_string(),
    }
}

impl RegistryError {
    /// Worth trying again: connection problems, 5xx and 429.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Protocol {
                status: Some(s), ..
            } => *s >= 500 || *s == 429,
            _ => false,
        }
    }

    /// Whether this is an [`RegistryError::Unauthorized`].
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, RegistryError::Unauthorized { .. })
    }

    /// Whether this is a [`RegistryError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }
}

/// Context for mapping an `oci-client` error: which registry, reference and
/// object the request was about.
#[derive(Debug, Clone)]
pub(crate) struct Ctx<'a> {
    pub registry: &'a str,
    pub reference: String,
    /// What was being fetched, for `NotFound` (`tag "1"`, `blob sha256:..`).
    pub what: String,
}

impl Ctx<'_> {
    pub(crate) fn unauthorized(&self, detail: impl Into<String>) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.to_string(),
            reference: self.reference.clone(),
            detail: detail.into(),
        }
    }

    pub(crate) fn not_found(&self) -> RegistryError {
        RegistryError::NotFound {
            registry: self.registry.to_string(),
            reference: self.reference.clone(),
            what: self.what.clone(),
        }
    }

    pub(crate) fn protocol(&self, status: Option<u16>, detail: impl Into<String>) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.to_string(),
            reference: self.reference.clone(),
            status,
            detail: detail.into(),
        }
    }

    pub(crate) fn unreachable(&self, detail: impl Into<String>) -> RegistryError {
        RegistryError::Unreachable {
            registry: self.registry.to_string(),
            reference: self.reference.clone(),
            detail: detail.into(),
        }
    }

    pub(crate) fn mismatch(&self, expected: &Digest, detail: impl Into<String>) -> RegistryError {
        RegistryError::DigestMismatch {
            registry: self.registry.to_string(),
            reference: self.reference.clone(),
            expected: expected.clone(),
            detail: detail.into(),
        }
    }

    /// Map an HTTP status to an error.
    pub(crate) fn status(&self, code: u16, detail: impl Into<String>) -> RegistryError {
        match code {
            401 | 403 => self.unauthorized(format!("HTTP {code}")),
            404 => self.not_found(),
            _ => self.protocol(Some(code), detail),
        }
    }

    /// Map a reqwest transport error.
    pub(crate) fn reqwest(&self, e: &reqwest::Error) -> RegistryError {
        if let Some(s) = e.status() {
            return self.status(s.as_u16(), e.to_string());
        }
        if e.is_builder() {
            return self.protocol(None, e.to_string());
        }
        self.unreachable(strip_url_queries(&error_chain(e)))
    }

    /// Map an I/O error from a blob stream: a wrapped digest failure is a
    /// mismatch, anything else a broken transfer.
    pub(crate) fn stream_io(&self, expected: &Digest, e: &std::io::Error) -> RegistryError {
        if let Some(inner) = e.get_ref() {
            if let Some(d) = inner.downcast_ref::<oci_client::errors::DigestError>() {
                return self.mismatch(expected, d.to_string());
            }
            if let Some(r) = inner.downcast_ref::<reqwest::Error>() {
                return self.reqwest(r);
            }
        }
        self.unreachable(format!("transfer interrupted: {e}"))
    }

    /// Map an `oci-client` error.
    pub(crate) fn oci(&self, e: OciDistributionError) -> RegistryError {
        use OciDistributionError as E;
        match e {
            E::UnauthorizedError { .. } => self.unauthorized("HTTP 401"),
            E::AuthenticationFailure(m) => {
                self.unauthorized(format!("token request failed: {}", truncate(m.trim(), 200)))
            }
            E::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let msg = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    self.unauthorized(msg)
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    self.not_found()
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
                {
                    self.protocol(Some(429), msg)
                } else {
                    self.protocol(None, msg)
                }
            }
            E::ServerError { code, message, .. } => {
                self.status(code, truncate(message.trim(), 300))
            }
            E::RequestError(r) => self.reqwest(&r),
            E::DigestError(d) => {
                let expected = Digest::parse(&self.what_digest()).ok();
                match expected {
                    Some(exp) => self.mismatch(&exp, d.to_string()),
                    None => self.protocol(None, d.to_string()),
                }
            }
            E::ImageManifestNotFoundError(_) => self.not_found(),
            E::IoError(io) => self.unreachable(io.to_string()),
            other => self.protocol(None, other.to_string()),
        }
    }

    fn what_digest(&self) -> String {
        self.what.rsplit(' ').next().unwrap_or_default().to_string()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Drops the query of every URL in `s`: upload URLs carry long opaque
/// state tokens that make errors unreadable (and may carry credentials).
fn strip_url_queries(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("http") {
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        if !(from.starts_with("http://") || from.starts_with("https://")) {
            out.push_str("http");
            rest = &from[4..];
            continue;
        }
        let end = from
            .find(|c: char| c.is_whitespace() || c == ')' || c == '"')
            .unwrap_or(from.len());
        let url = &from[..end];
        out.push_str(url.split_once('?').map_or(url, |(u, _)| u));
        rest = &from[end..];
    }
    out.push_str(rest);
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_queries_are_dropped_from_messages() {
        assert_eq!(
            super::strip_url_queries(
                "error sending request for url (http://h:1/v2/r/blobs/uploads/u?_state=abc%3D): closed"
            ),
            "error sending request for url (http://h:1/v2/r/blobs/uploads/u): closed"
        );
        assert_eq!(super::strip_url_queries("no url, httpd"), "no url, httpd");
    }

    use super::*;

    fn ctx() -> Ctx<'static> {
        Ctx {
            registry: "r.example",
            reference: "r.example/a:1".into(),
            what: "tag \"1\"".into(),
        }
    }

    #[test]
    fn messages_name_registry_and_reference() {
        let e = ctx().status(401, "x");
        let m = e.to_string();
        assert!(
            m.contains("r.example/a:1") && m.contains("xbuild login r.example"),
            "{m}"
        );
        let e = ctx().status(404, "x");
        assert_eq!(
            e.to_string(),
            "r.example/a:1: tag \"1\" not found in r.example"
        );
        assert!(ctx().status(503, "busy").is_transient());
        assert!(ctx().status(429, "slow").is_transient());
        assert!(!ctx().status(400, "bad").is_transient());
        let np = RegistryError::NoPlatform {
            reference: "a".into(),
            platform: Platform::parse("linux/s390x").unwrap(),
            available: vec![
                Platform::parse("linux/amd64").unwrap(),
                Platform::parse("linux/arm64").unwrap(),
            ],
        };
        assert_eq!(
            np.to_string(),
            "a: no image for platform linux/s390x (the image has: linux/amd64, linux/arm64)"
        );
    }

    #[test]
    fn maps_oci_envelopes() {
        let env: oci_client::errors::OciEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
        .unwrap();
        let e = ctx().oci(OciDistributionError::RegistryError {
            envelope: env,
            url: "u".into(),
        });
        assert!(e.is_not_found());
        let env: oci_client::errors::OciEnvelope =
            serde_json::from_str(r#"{"errors":[{"code":"DENIED","message":"no"}]}"#).unwrap();
        let e = ctx().oci(OciDistributionError::RegistryError {
            envelope: env,
            url: "u".into(),
        });
        assert!(e.is_unauthorized());
    }
}
