//! Package URLs (<https://github.com/package-url/purl-spec>): building the
//! canonical string form, with percent-encoding of each component and
//! qualifiers sorted by key.

use std::fmt::Write as _;
use xbuild_oci::{Platform, Reference};

/// A package URL under construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purl {
    ty: String,
    namespace: Vec<String>,
    name: String,
    version: Option<String>,
    qualifiers: Vec<(String, String)>,
}

impl Purl {
    /// `pkg:TYPE/NAME` with no namespace, version or qualifiers.
    pub fn new(ty: &str, name: &str) -> Self {
        Purl {
            ty: ty.to_ascii_lowercase(),
            namespace: Vec::new(),
            name: name.to_string(),
            version: None,
            qualifiers: Vec::new(),
        }
    }

    /// Set the namespace; `/` separates its segments (`@scope`, `a/b`).
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        self
    }

    /// Set the version.
    pub fn version(mut self, v: &str) -> Self {
        if !v.is_empty() {
            self.version = Some(v.to_string());
        }
        self
    }

    /// Add a qualifier; empty values are dropped as the spec requires.
    pub fn qualifier(mut self, key: &str, value: &str) -> Self {
        if !value.is_empty() {
            self.qualifiers
                .push((key.to_ascii_lowercase(), value.to_string()));
        }
        self
    }
}

impl std::fmt::Display for Purl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = format!("pkg:{}/", self.ty);
        for seg in &self.namespace {
            s.push_str(&encode(seg));
            s.push('/');
        }
        s.push_str(&encode(&self.name));
        if let Some(v) = &self.version {
            s.push('@');
            s.push_str(&encode(v));
        }
        let mut q = self.qualifiers.clone();
        q.sort();
        for (i, (k, v)) in q.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(k);
            s.push('=');
            s.push_str(&encode(v));
        }
        f.write_str(&s)
    }
}

/// Percent-encode everything but the RFC 3986 unreserved characters and
/// `:`, which the purl spec allows unencoded (epochs, registry ports).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The `pkg:docker/...` purl BuildKit uses for an image reference: the
/// familiar name split into namespace and name, the tag as version
/// (`latest` when the reference has none), a `digest` qualifier when the
/// reference pins one, and the `platform` qualifier.
pub fn docker_image(reference: &Reference, platform: Option<&Platform>) -> String {
    image_purl("docker", reference, platform)
}

/// As [`docker_image`] with type `oci`, for images from a local source.
pub fn oci_image(reference: &Reference, platform: Option<&Platform>) -> String {
    image_purl("oci", reference, platform)
}

fn image_purl(ty: &str, reference: &Reference, platform: Option<&Platform>) -> String {
    let familiar = if reference.registry() == "docker.io" {
        let repo = reference.repository();
        match repo.strip_prefix("library/") {
            Some(r) if !r.contains('/') => r.to_string(),
            _ => repo.to_string(),
        }
    } else {
        reference.name()
    };
    let (ns, name) = match familiar.rsplit_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (String::new(), familiar),
    };
    let version = match (reference.tag(), reference.digest()) {
        (Some(t), _) => t.to_string(),
        (None, Some(_)) => String::new(),
        (None, None) => "latest".to_string(),
    };
    let mut p = Purl::new(ty, &name).namespace(&ns).version(&version);
    if let Some(d) = reference.digest() {
        p = p.qualifier("digest", d.as_str());
    }
    if let Some(pl) = platform {
        p = p.qualifier("platform", &pl.to_string());
    }
    p.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_purl_matches_syft_shape() {
        let p = Purl::new("deb", "libc6")
            .namespace("debian")
            .version("2.36-9+deb12u4")
            .qualifier("distro", "debian-12")
            .qualifier("arch", "amd64");
        assert_eq!(
            p.to_string(),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
        );
    }

    #[test]
    fn npm_scope_is_encoded_namespace() {
        let p = Purl::new("npm", "core")
            .namespace("@babel")
            .version("7.0.0");
        assert_eq!(p.to_string(), "pkg:npm/%40babel/core@7.0.0");
        // Empty qualifier values vanish.
        assert_eq!(
            Purl::new("pypi", "six").qualifier("x", "").to_string(),
            "pkg:pypi/six"
        );
    }

    #[test]
    fn docker_purls_like_buildkit() {
        let amd = Platform::parse("linux/amd64").unwrap();
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            docker_image(&r, Some(&amd)),
            "pkg:docker/busybox@latest?platform=linux%2Famd64"
        );
        let r = Reference::parse("localhost:5000/team/app:1.0").unwrap();
        assert_eq!(
            docker_image(&r, None),
            "pkg:docker/localhost:5000/team/app@1.0"
        );
        let d = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let r = Reference::parse(&format!("user/app@{d}")).unwrap();
        let s = docker_image(&r, Some(&Platform::parse("linux/arm/v7").unwrap()));
        assert!(s.starts_with("pkg:docker/user/app"), "{s}");
        assert!(s.contains("digest=sha256:ba7816"), "{s}");
        assert!(s.ends_with("platform=linux%2Farm%2Fv7"), "{s}");
    }
}
