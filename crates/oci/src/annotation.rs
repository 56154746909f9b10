//! Image annotations as `docker buildx build` takes them.
//!
//! Two spellings name the same thing:
//! - `--annotation [TYPE[,TYPE…]:]KEY=VALUE`, where each TYPE is `manifest`,
//!   `index`, `manifest-descriptor` or `index-descriptor`, optionally followed
//!   by a platform in square brackets (`manifest[linux/amd64]`);
//! - the exporter attribute `annotation[-TYPE][[PLATFORM]].KEY=VALUE` of
//!   `-o type=image,…` (`annotation.k=v`, `annotation-index.k=v`,
//!   `annotation-manifest[linux/arm64].k=v`).
//!
//! Without a type an annotation goes on the image manifest(s), as BuildKit
//! does. [`Annotations::for_platform`] picks what applies to one manifest and
//! to the index; [`Annotations::check_single_platform`] refuses index
//! annotations when no index is produced, with BuildKit's reasoning.

use crate::platform::Platform;
use std::collections::BTreeMap;

/// Errors from parsing an annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// No `=` in the argument.
    #[error("invalid annotation {0:?}: expected [TYPE:]KEY=VALUE")]
    NoValue(String),
    /// The key is empty.
    #[error("invalid annotation {0:?}: the key is empty")]
    EmptyKey(String),
    /// A TYPE part is not one of the four types (or its brackets are broken).
    #[error(
        "invalid annotation type {0:?}: expected manifest, index, manifest-descriptor or \
         index-descriptor, optionally followed by [PLATFORM]"
    )]
    UnknownType(String),
    /// The platform in brackets does not parse.
    #[error("invalid platform {platform:?} in annotation type {input:?}: {reason}")]
    BadPlatform {
        /// The type part.
        input: String,
        /// The platform text.
        platform: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Index annotations were given for an export that has no index.
    #[error(
        "index annotations ({0}) need a multi-platform image index, but this build exports \
         one platform as a single manifest"
    )]
    IndexOnSingleManifest(String),
}

/// Where an annotation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnnotationTarget {
    /// The image manifest (default).
    Manifest,
    /// The manifest's descriptor inside the index.
    ManifestDescriptor,
    /// The image index.
    Index,
    /// The index's descriptor (an OCI layout's `index.json`).
    IndexDescriptor,
}

impl AnnotationTarget {
    /// Parse a type name.
    pub fn parse(s: &str) -> Option<AnnotationTarget> {
        Some(match s {
            "manifest" => AnnotationTarget::Manifest,
            "manifest-descriptor" => AnnotationTarget::ManifestDescriptor,
            "index" => AnnotationTarget::Index,
            "index-descriptor" => AnnotationTarget::IndexDescriptor,
            _ => return None,
        })
    }

    /// The type name.
    pub fn as_str(self) -> &'static str {
        match self {
            AnnotationTarget::Manifest => "manifest",
            AnnotationTarget::ManifestDescriptor => "manifest-descriptor",
            AnnotationTarget::Index => "index",
            AnnotationTarget::IndexDescriptor => "index-descriptor",
        }
    }

    fn is_index(self) -> bool {
        matches!(
            self,
            AnnotationTarget::Index | AnnotationTarget::IndexDescriptor
        )
    }
}

/// One annotation key: target, optional platform (manifest types only) and key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AnnotationKey {
    /// Where it goes.
    pub target: AnnotationTarget,
    /// Only for this platform's manifest (None: every platform).
    pub platform: Option<Platform>,
    /// The annotation key, e.g. `org.opencontainers.image.title`.
    pub key: String,
}

/// A set of annotations, later ones overriding earlier ones with the same key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations {
    entries: BTreeMap<AnnotationKey, String>,
}

/// The annotations that apply to one manifest and its index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// On the image manifest.
    pub manifest: BTreeMap<String, String>,
    /// On the manifest's descriptor in the index.
    pub manifest_descriptor: BTreeMap<String, String>,
    /// On the index.
    pub index: BTreeMap<String, String>,
    /// On the index's descriptor.
    pub index_descriptor: BTreeMap<String, String>,
}

/// Parse one `TYPE[PLATFORM]` part; the bracket content must be a platform.
fn parse_type(part: &str) -> Result<(AnnotationTarget, Option<Platform>), AnnotationError> {
    let (name, platform) = match part.find('[') {
        Some(i) => {
            let rest = &part[i + 1..];
            let Some(p) = rest.strip_suffix(']') else {
                return Err(AnnotationError::UnknownType(part.to_string()));
            };
            if p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '/' || c == '-')
            {
                return Err(AnnotationError::UnknownType(part.to_string()));
            }
            (&part[..i], Some(p))
        }
        None => (part, None),
    };
    let target =
        AnnotationTarget::parse(name).ok_or_else(|| AnnotationError::UnknownType(part.into()))?;
    let platform = match platform {
        Some(p) => Some(
            Platform::parse(p).map_err(|e| AnnotationError::BadPlatform {
                input: part.to_string(),
                platform: p.to_string(),
                reason: e.to_string(),
            })?,
        ),
        None => None,
    };
    // A platform only selects among manifests; BuildKit drops it elsewhere.
    let platform = if target.is_index() { None } else { platform };
    Ok((target, platform))
}

impl Annotations {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when there is nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every annotation, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&AnnotationKey, &String)> {
        self.entries.iter()
    }

    /// Add one annotation (replacing the same key).
    pub fn insert(&mut self, key: AnnotationKey, value: impl Into<String>) {
        self.entries.insert(key, value.into());
    }

    /// Add the annotations of `other`, which win on equal keys.
    pub fn extend(&mut self, other: &Annotations) {
        for (k, v) in &other.entries {
            self.entries.insert(k.clone(), v.clone());
        }
    }

    /// Parse one `--annotation [TYPE[,TYPE]:]KEY=VALUE` argument and add it.
    /// Without a type, the annotation goes on the manifest(s). An empty
    /// argument is ignored, as buildx does.
    pub fn add_flag(&mut self, arg: &str) -> Result<(), AnnotationError> {
        if arg.is_empty() {
            return Ok(());
        }
        let (left, value) = arg
            .split_once('=')
            .ok_or_else(|| AnnotationError::NoValue(arg.to_string()))?;
        let (types, key) = match left.split_once(':') {
            Some((t, k)) => (Some(t), k),
            None => (None, left),
        };
        if key.is_empty() {
            return Err(AnnotationError::EmptyKey(arg.to_string()));
        }
        let targets = match types {
            None => vec![(AnnotationTarget::Manifest, None)],
            Some(t) => t.split(',').map(parse_type).collect::<Result<_, _>>()?,
        };
        for (target, platform) in targets {
            self.insert(
                AnnotationKey {
                    target,
                    platform,
                    key: key.to_string(),
                },
                value,
            );
        }
        Ok(())
    }

    /// Parse an exporter attribute key and value
    /// (`annotation[-TYPE][[PLATFORM]].KEY`). Returns `Ok(false)` when the
    /// attribute is not an annotation, so callers can handle other keys.
    pub fn add_attr(&mut self, attr: &str, value: &str) -> Result<bool, AnnotationError> {
        let Some(rest) = attr.strip_prefix("annotation") else {
            return Ok(false);
        };
        if !(rest.starts_with('.') || rest.starts_with('-') || rest.starts_with('[')) {
            return Ok(false);
        }
        // The type part ends at the first '.' after any bracket.
        let split = match rest.find(']') {
            Some(close) => rest[close..].find('.').map(|i| close + i),
            None => rest.find('.'),
        };
        let Some(dot) = split else {
            return Err(AnnotationError::EmptyKey(format!("{attr}={value}")));
        };
        let (type_part, key) = (&rest[..dot], &rest[dot + 1..]);
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err(AnnotationError::EmptyKey(format!("{attr}={value}")));
        }
        let type_part = type_part.strip_prefix('-').unwrap_or(type_part);
        let (target, platform) = if type_part.is_empty() {
            (AnnotationTarget::Manifest, None)
        } else if type_part.starts_with('[') {
            parse_type(&format!("manifest{type_part}"))?
        } else {
            parse_type(type_part)?
        };
        self.insert(
            AnnotationKey {
                target,
                platform,
                key: key.to_string(),
            },
            value,
        );
        Ok(true)
    }

    /// What applies to the manifest of `platform` (None: a manifest whose
    /// platform is unknown gets only the unqualified ones) and to the index.
    pub fn for_platform(&self, platform: Option<&Platform>) -> Applied {
        let mut out = Applied::default();
        // Unqualified first, then platform-specific ones override them.
        for pass in [false, true] {
            for (k, v) in &self.entries {
                if k.platform.is_some() != pass {
                    continue;
                }
                if let Some(p) = &k.platform {
                    if Some(p) != platform {
                        continue;
                    }
                }
                let map = match k.target {
                    AnnotationTarget::Manifest => &mut out.manifest,
                    AnnotationTarget::ManifestDescriptor => &mut out.manifest_descriptor,
                    AnnotationTarget::Index => &mut out.index,
                    AnnotationTarget::IndexDescriptor => &mut out.index_descriptor,
                };
                map.insert(k.key.clone(), v.clone());
            }
        }
        out
    }

    /// The keys of index annotations, if any (for error messages).
    fn index_keys(&self) -> Vec<String> {
        self.entries
            .keys()
            .filter(|k| k.target.is_index())
            .map(|k| format!("{}:{}", k.target.as_str(), k.key))
            .collect()
    }

    /// Refuse index or index-descriptor annotations for an export that
    /// writes a single manifest and no index (BuildKit refuses them too).
    pub fn check_single_platform(&self) -> Result<(), AnnotationError> {
        let keys = self.index_keys();
        if keys.is_empty() {
            Ok(())
        } else {
            Err(AnnotationError::IndexOnSingleManifest(keys.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn flag_forms() {
        let mut a = Annotations::new();
        a.add_flag("org.opencontainers.image.title=app").unwrap();
        a.add_flag("index:org.opencontainers.image.version=1.0")
            .unwrap();
        a.add_flag("manifest,manifest-descriptor:com.example.both=yes")
            .unwrap();
        a.add_flag("manifest[linux/arm64]:com.example.arch=arm")
            .unwrap();
        a.add_flag("index-descriptor:com.example.layout=1").unwrap();
        a.add_flag("").unwrap();
        // Values may contain '=' and ':'.
        a.add_flag("index:com.example.url=https://x.example/a=b")
            .unwrap();

        let amd = a.for_platform(Some(&p("linux/amd64")));
        assert_eq!(amd.manifest["org.opencontainers.image.title"], "app");
        assert_eq!(amd.manifest["com.example.both"], "yes");
        assert_eq!(amd.manifest_descriptor["com.example.both"], "yes");
        assert!(!amd.manifest.contains_key("com.example.arch"));
        assert_eq!(amd.index["org.opencontainers.image.version"], "1.0");
        assert_eq!(amd.index["com.example.url"], "https://x.example/a=b");
        assert_eq!(amd.index_descriptor["com.example.layout"], "1");
        let arm = a.for_platform(Some(&p("linux/arm64")));
        assert_eq!(arm.manifest["com.example.arch"], "arm");
    }

    #[test]
    fn platform_specific_overrides_generic() {
        let mut a = Annotations::new();
        a.add_flag("manifest[linux/arm64]:k=arm").unwrap();
        a.add_flag("k=all").unwrap();
        assert_eq!(a.for_platform(Some(&p("linux/arm64"))).manifest["k"], "arm");
        assert_eq!(a.for_platform(Some(&p("linux/amd64"))).manifest["k"], "all");
        assert_eq!(a.for_platform(None).manifest["k"], "all");
    }

    #[test]
    fn bad_flags() {
        let mut a = Annotations::new();
        assert!(matches!(
            a.add_flag("novalue"),
            Err(AnnotationError::NoValue(_))
        ));
        assert!(matches!(
            a.add_flag("bogus:k=v"),
            Err(AnnotationError::UnknownType(_))
        ));
        assert!(matches!(
            a.add_flag("manifest[linux/amd64:k=v"),
            Err(AnnotationError::UnknownType(_))
        ));
        assert!(matches!(
            a.add_flag("manifest[nosuchos/amd64]:k=v"),
            Err(AnnotationError::BadPlatform { .. })
        ));
        assert!(matches!(
            a.add_flag("index:=v"),
            Err(AnnotationError::EmptyKey(_))
        ));
        assert!(a.is_empty());
    }

    #[test]
    fn attr_forms() {
        let mut a = Annotations::new();
        assert!(a.add_attr("annotation.k1", "v1").unwrap());
        assert!(a.add_attr("annotation-index.k2", "v2").unwrap());
        assert!(a
            .add_attr("annotation-manifest[linux/arm64].k3", "v3")
            .unwrap());
        assert!(a.add_attr("annotation[linux/arm64].k4", "v4").unwrap());
        assert!(a
            .add_attr("annotation-manifest-descriptor.org.x.y", "v5")
            .unwrap());
        assert!(!a.add_attr("name", "x").unwrap());
        assert!(!a.add_attr("annotations", "x").unwrap());
        assert!(a.add_attr("annotation-bogus.k", "v").is_err());
        assert!(a.add_attr("annotation.", "v").is_err());
        let arm = a.for_platform(Some(&p("linux/arm64")));
        assert_eq!(arm.manifest["k1"], "v1");
        assert_eq!(arm.manifest["k3"], "v3");
        assert_eq!(arm.manifest["k4"], "v4");
        assert_eq!(arm.index["k2"], "v2");
        assert_eq!(arm.manifest_descriptor["org.x.y"], "v5");
        let amd = a.for_platform(Some(&p("linux/amd64")));
        assert!(!amd.manifest.contains_key("k3"));
    }

    #[test]
    fn single_platform_refuses_index_annotations() {
        let mut a = Annotations::new();
        a.add_flag("k=v").unwrap();
        a.add_flag("manifest-descriptor:d=v").unwrap();
        assert!(a.check_single_platform().is_ok());
        a.add_flag("index:k=v").unwrap();
        let e = a.check_single_platform().unwrap_err().to_string();
        assert!(e.contains("index:k"), "{e}");
    }

    #[test]
    fn later_wins_and_extend() {
        let mut a = Annotations::new();
        a.add_flag("k=1").unwrap();
        let mut b = Annotations::new();
        b.add_attr("annotation.k", "2").unwrap();
        a.extend(&b);
        assert_eq!(a.for_platform(None).manifest["k"], "2");
        assert_eq!(a.iter().count(), 1);
    }
}
