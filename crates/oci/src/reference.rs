//! The [`Reference`] newtype: an image reference normalized the way Docker
//! normalizes one, so that `busybox`, `library/busybox` and
//! `docker.io/library/busybox:latest` are the same image.
//!
//! Grammar (after Docker's `reference` package):
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component ( "/" path-component )*
//! domain     := host [ ":" port ]      (a first component with '.', ':' or = "localhost")
//! path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! ```
//!
//! A reference with neither tag nor digest gets the tag `latest`.

use crate::digest::{Digest, DigestError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// The registry Docker uses when a reference names none.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The tag given to references without tag or digest.
pub const DEFAULT_TAG: &str = "latest";
/// The longest repository path (without the registry) Docker accepts.
pub const MAX_NAME_LEN: usize = 255;

/// Errors from parsing an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The string was empty.
    #[error("empty image reference")]
    Empty,
    /// The repository has uppercase letters (Docker refuses those).
    #[error("invalid reference {0:?}: repository name must be lowercase")]
    Uppercase(String),
    /// The repository path is malformed.
    #[error("invalid reference {input:?}: bad repository name {name:?} (components are lowercase letters, digits and separators '.', '_', '__', '-')")]
    BadName {
        /// The offending name part.
        name: String,
        /// The whole input.
        input: String,
    },
    /// The registry host (or its port) is malformed.
    #[error("invalid reference {input:?}: bad registry {registry:?}")]
    BadRegistry {
        /// The offending registry part.
        registry: String,
        /// The whole input.
        input: String,
    },
    /// The tag is malformed.
    #[error("invalid reference {input:?}: bad tag {tag:?} (up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-')")]
    BadTag {
        /// The offending tag.
        tag: String,
        /// The whole input.
        input: String,
    },
    /// The digest is malformed.
    #[error("invalid reference {input:?}: {source}")]
    BadDigest {
        /// Why the digest is invalid.
        #[source]
        source: DigestError,
        /// The whole input.
        input: String,
    },
    /// The repository name is longer than [`MAX_NAME_LEN`].
    #[error("invalid reference {0:?}: repository name longer than 255 characters")]
    TooLong(String),
}

/// A fully qualified image reference: registry, repository, tag and/or digest.
///
/// Always normalized: `registry` is never empty (`docker.io` by default),
/// official Docker Hub images get the `library/` prefix, and a reference
/// without digest always has a tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

fn is_path_component(s: &str) -> bool {
    // [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // a separator
        let sep_start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == sep_start || i == b.len() {
            return false;
        }
    }
}

fn is_valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

fn is_valid_host_label(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
}

/// Validate `host[:port]` where host is a DNS name, an IPv4 address or a
/// bracketed IPv6 address.
fn is_valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return false,
            },
        }
    } else {
        match r.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    if host.is_empty() {
        return r.starts_with('[');
    }
    host.split('.').all(is_valid_host_label)
}

/// Whether the first path component names a registry (Docker's rule).
fn looks_like_registry(first: &str) -> bool {
    first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.starts_with('[')
        || first.bytes().any(|c| c.is_ascii_uppercase())
}

impl Reference {
    /// Parse and normalize a reference string.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let err_input = || s.to_string();

        // Digest first: everything after '@'.
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let d = Digest::parse(d).map_err(|source| ReferenceError::BadDigest {
                    source,
                    input: err_input(),
                })?;
                (r, Some(d))
            }
            None => (s, None),
        };

        // Tag: after the last ':' if that comes after the last '/'.
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(c) if last_slash.is_none_or(|sl| c > sl) => {
                (&rest[..c], Some(rest[c + 1..].to_string()))
            }
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            if !is_valid_tag(t) {
                return Err(ReferenceError::BadTag {
                    tag: t.clone(),
                    input: err_input(),
                });
            }
        }
        if name.is_empty() {
            return Err(ReferenceError::BadName {
                name: name.to_string(),
                input: err_input(),
            });
        }

        // Registry: the first component when it looks like a host.
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if looks_like_registry(first) => (first.to_string(), path),
            _ => (DOCKER_HUB.to_string(), name),
        };
        if !is_valid_registry(&registry) {
            return Err(ReferenceError::BadRegistry {
                registry,
                input: err_input(),
            });
        }
        let registry = match registry.as_str() {
            "index.docker.io" | DOCKER_HUB_API => DOCKER_HUB.to_string(),
            _ => registry,
        };

        if path.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(err_input()));
        }
        if !path.split('/').all(is_path_component) {
            return Err(ReferenceError::BadName {
                name: path.to_string(),
                input: err_input(),
            });
        }
        if path.len() > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong(err_input()));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (t, _) => t,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry as written in references (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host:port to speak the registry API to: `registry-1.docker.io`
    /// for Docker Hub, otherwise [`Reference::registry`].
    pub fn api_registry(&self) -> &str {
        api_host(&self.registry)
    }

    /// The repository path (`library/busybox`, `a/b`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when the input had neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository with another tag (keeps the digest, if any).
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        if !is_valid_tag(tag) {
            return Err(ReferenceError::BadTag {
                tag: tag.to_string(),
                input: self.to_string(),
            });
        }
        Ok(Reference {
            tag: Some(tag.to_string()),
            ..self.clone()
        })
    }

    /// The same repository and tag pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository with neither tag nor digest replaced: the
    /// repository only, tagged `latest` if it had no digest. Useful to name
    /// another reference in the same repository.
    pub fn without_digest(&self) -> Self {
        Reference {
            digest: None,
            tag: Some(self.tag.clone().unwrap_or_else(|| DEFAULT_TAG.into())),
            ..self.clone()
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The tag if there is one, else the digest: what a registry's
    /// `/manifests/<reference>` endpoint wants. A tagged reference with a
    /// digest answers the digest, since the digest wins.
    pub fn tag_or_digest(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The short form Docker prints: `busybox:latest`, `user/app:1`,
    /// `localhost:5000/app:1`, `busybox@sha256:...`.
    pub fn familiar(&self) -> String {
        let mut out = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .filter(|r| !r.contains('/'))
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        };
        self.push_suffix(&mut out);
        out
    }

    /// Whether the registry is on this machine (`localhost`, `127.0.0.0/8`,
    /// `::1`) and so is spoken to over plain HTTP.
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(&self.registry)
    }

    fn push_suffix(&self, out: &mut String) {
        if let Some(t) = &self.tag {
            out.push(':');
            out.push_str(t);
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(d.as_str());
        }
    }
}

/// The host to speak the registry API to for a registry name as written in
/// references: `docker.io` (and `index.docker.io`) map to
/// `registry-1.docker.io`.
pub fn api_host(registry: &str) -> &str {
    match registry {
        DOCKER_HUB | "index.docker.io" => DOCKER_HUB_API,
        other => other,
    }
}

/// Whether `host[:port]` names this machine: `localhost`, an address in
/// `127.0.0.0/8` or `::1` (bracketed when a port follows).
pub fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split_once(']').map(|(h, _)| h).unwrap_or(rest)
    } else if registry.parse::<IpAddr>().is_ok() {
        registry
    } else {
        registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(registry)
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        self.push_suffix(&mut out);
        f.write_str(&out)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Reference::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn full(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_normalization() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(full("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            full("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            full("index.docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("localhost:5000/a/b:t"), "localhost:5000/a/b:t");
        assert_eq!(full("quay.io/a/b/c:v1.2-3"), "quay.io/a/b/c:v1.2-3");
        assert_eq!(
            full(&format!("127.0.0.1:5000/x@{D}")),
            format!("127.0.0.1:5000/x@{D}")
        );
        assert_eq!(
            full(&format!("host.example/ns/repo:tag@{D}")),
            format!("host.example/ns/repo:tag@{D}")
        );
        assert_eq!(full("[::1]:5000/app:1"), "[::1]:5000/app:1");
    }

    #[test]
    fn accessors() {
        let r = Reference::parse(&format!("host.example:5000/ns/repo:tag@{D}")).unwrap();
        assert_eq!(r.registry(), "host.example:5000");
        assert_eq!(r.api_registry(), "host.example:5000");
        assert_eq!(r.repository(), "ns/repo");
        assert_eq!(r.tag(), Some("tag"));
        assert_eq!(r.digest().unwrap().as_str(), D);
        assert_eq!(r.tag_or_digest(), D);
        assert_eq!(r.name(), "host.example:5000/ns/repo");
        let b = Reference::parse("busybox").unwrap();
        assert_eq!(b.registry(), "docker.io");
        assert_eq!(b.api_registry(), "registry-1.docker.io");
        assert_eq!(b.tag_or_digest(), "latest");
        assert!(b.digest().is_none());
        let pinned = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(pinned.tag(), None);
    }

    #[test]
    fn familiar_form() {
        let f = |s: &str| Reference::parse(s).unwrap().familiar();
        assert_eq!(f("busybox"), "busybox:latest");
        assert_eq!(f("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(f("user/app:2"), "user/app:2");
        assert_eq!(f("localhost:5000/app:1"), "localhost:5000/app:1");
        assert_eq!(f(&format!("busybox@{D}")), format!("busybox@{D}"));
    }

    #[test]
    fn with_tag_and_digest() {
        let r = Reference::parse("localhost:5000/app:1").unwrap();
        let t = r.with_tag("2").unwrap();
        assert_eq!(t.to_string(), "localhost:5000/app:2");
        assert!(r.with_tag("-bad").is_err());
        let d = r.with_digest(Digest::parse(D).unwrap());
        assert_eq!(d.to_string(), format!("localhost:5000/app:1@{D}"));
        assert_eq!(d.without_digest(), r);
    }

    #[test]
    fn rejects_invalid() {
        assert_eq!(Reference::parse(""), Err(ReferenceError::Empty));
        assert!(matches!(
            Reference::parse("Busybox"),
            Err(ReferenceError::BadRegistry { .. }) | Err(ReferenceError::Uppercase(_))
        ));
        assert!(matches!(
            Reference::parse("localhost:5000/App"),
            Err(ReferenceError::Uppercase(_))
        ));
        assert!(matches!(
            Reference::parse("busybox:-x"),
            Err(ReferenceError::BadTag { .. })
        ));
        assert!(matches!(
            Reference::parse(&format!("busybox:{}", "a".repeat(129))),
            Err(ReferenceError::BadTag { .. })
        ));
        assert!(matches!(
            Reference::parse("busybox@sha256:abc"),
            Err(ReferenceError::BadDigest { .. })
        ));
        assert!(matches!(
            Reference::parse("a//b"),
            Err(ReferenceError::BadName { .. })
        ));
        assert!(matches!(
            Reference::parse("a/b_"),
            Err(ReferenceError::BadName { .. })
        ));
        assert!(matches!(
            Reference::parse("a/b___c"),
            Err(ReferenceError::BadName { .. })
        ));
        assert!(Reference::parse("a/b__c").is_ok());
        assert!(Reference::parse("a/b---c").is_ok());
        assert!(matches!(
            Reference::parse("host:port/app"),
            Err(ReferenceError::BadRegistry { .. })
        ));
        assert!(matches!(
            Reference::parse(&format!("x/{}", "a".repeat(300))),
            Err(ReferenceError::TooLong(_))
        ));
        assert!(Reference::parse("localhost:5000/").is_err());
        assert!(Reference::parse(":tag").is_err());
    }

    #[test]
    fn loopback() {
        let l = |s: &str| Reference::parse(s).unwrap().is_loopback_registry();
        assert!(l("localhost:5000/a"));
        assert!(l("localhost/a"));
        assert!(l("127.0.0.1:5000/a"));
        assert!(l("127.3.2.1/a"));
        assert!(l("[::1]:5000/a"));
        assert!(!l("busybox"));
        assert!(!l("10.0.0.1:5000/a"));
        assert!(!l("localhost.example.com/a"));
        assert!(is_loopback_host("::1"));
        assert!(is_loopback_host("127.0.0.1"));
    }

    #[test]
    fn serde_and_fromstr() {
        let r: Reference = "localhost:5000/a/b:t".parse().unwrap();
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(j, "\"localhost:5000/a/b:t\"");
        let back: Reference = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
        let hub: Reference = serde_json::from_str("\"busybox\"").unwrap();
        assert_eq!(hub.to_string(), "docker.io/library/busybox:latest");
        assert!(serde_json::from_str::<Reference>("\"upper/X\"").is_err());
    }
}
