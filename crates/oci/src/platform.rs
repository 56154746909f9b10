//! The [`Platform`] newtype: `os/architecture[/variant]`, normalized the way
//! containerd normalizes platform strings, so that `arm64`,
//! `linux/arm64` and `linux/arm64/v8` are one platform.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Errors from parsing a platform string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// The string was empty.
    #[error("empty platform string")]
    Empty,
    /// Too many `/`-separated parts, or an empty part.
    #[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/arm64")]
    Malformed(String),
    /// A part contains characters other than `[A-Za-z0-9_.-]`.
    #[error("invalid platform {0:?}: parts may only contain letters, digits, '_', '.' and '-'")]
    BadCharacter(String),
    /// The operating system is not one xbuild knows.
    #[error("unknown operating system {os:?} in platform {input:?}")]
    UnknownOs {
        /// The os part.
        os: String,
        /// The whole input.
        input: String,
    },
    /// The variant does not exist for the architecture (`linux/amd64/v9`).
    #[error("invalid platform {input:?}: {arch} has no variant {variant:?} (known: {known})")]
    ImpossibleVariant {
        /// The whole platform, normalized.
        input: String,
        /// The architecture.
        arch: String,
        /// The variant given.
        variant: String,
        /// The variants that exist, for the message.
        known: &'static str,
    },
}

/// A target platform: operating system, CPU architecture and optional variant.
///
/// Always stored normalized: `aarch64` becomes `arm64`, `x86_64` becomes
/// `amd64`, `arm64/v8` loses its default variant, `arm` gains `v7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "illumos",
    "ios",
    "js",
    "linux",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
];

fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.map(|v| v.to_ascii_lowercase());
    match arch.as_str() {
        "i386" | "i486" | "i586" | "i686" | "x86" => ("386".into(), None),
        "x86_64" | "x86-64" | "amd64" => {
            // amd64/v1 is the default microarchitecture level.
            let v = variant.filter(|v| v != "v1");
            ("amd64".into(), v)
        }
        "aarch64" | "arm64" => {
            let v = variant.filter(|v| v != "8" && v != "v8");
            ("arm64".into(), v)
        }
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => {
            let v = match variant.as_deref() {
                None | Some("") | Some("7") | Some("v7") => "v7".to_string(),
                Some("5") => "v5".into(),
                Some("6") => "v6".into(),
                Some("8") => "v8".into(),
                Some(other) => other.to_string(),
            };
            ("arm".into(), Some(v))
        }
        _ => (arch, variant),
    }
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

impl Platform {
    /// Build a platform from its parts, normalizing them.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let (architecture, variant) =
            normalize_arch(architecture, variant.filter(|v| !v.is_empty()));
        Platform {
            os: os.to_ascii_lowercase(),
            architecture,
            variant,
        }
    }

    /// Parse `os/arch[/variant]`, `arch` alone (os = linux) or `os` alone
    /// (arch = the host's), the forms containerd accepts.
    pub fn parse(s: &str) -> Result<Self, PlatformError> {
        let input = s.trim();
        if input.is_empty() {
            return Err(PlatformError::Empty);
        }
        let parts: Vec<&str> = input.split('/').collect();
        if parts.len() > 3 {
            return Err(PlatformError::Malformed(input.to_string()));
        }
        for p in &parts {
            if p.is_empty() {
                return Err(PlatformError::Malformed(input.to_string()));
            }
            if !valid_part(p) {
                return Err(PlatformError::BadCharacter(input.to_string()));
            }
        }
        let is_os = |p: &str| KNOWN_OS.contains(&p.to_ascii_lowercase().as_str());
        match parts.as_slice() {
            [one] => {
                if is_os(one) {
                    let host = Platform::host();
                    Ok(Platform::new(one, &host.architecture, host.variant()))
                } else {
                    Ok(Platform::new("linux", one, None))
                }
            }
            [os, arch] => {
                if is_os(os) {
                    Ok(Platform::new(os, arch, None))
                } else if os.eq_ignore_ascii_case("arm") || os.eq_ignore_ascii_case("arm64") {
                    // `arm/v7` style: architecture and variant with the os left out.
                    Ok(Platform::new("linux", os, Some(arch)))
                } else {
                    Err(PlatformError::UnknownOs {
                        os: os.to_string(),
                        input: input.to_string(),
                    })
                }
            }
            [os, arch, variant] => {
                if !is_os(os) {
                    return Err(PlatformError::UnknownOs {
                        os: os.to_string(),
                        input: input.to_string(),
                    });
                }
                Ok(Platform::new(os, arch, Some(variant)))
            }
            _ => Err(PlatformError::Malformed(input.to_string())),
        }
    }

    /// Parse a comma-separated list (`linux/amd64,linux/arm64`), dropping duplicates
    /// while keeping the first occurrence's order.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, PlatformError> {
        let mut out: Vec<Platform> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let p = Platform::parse(item)?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if out.is_empty() {
            return Err(PlatformError::Empty);
        }
        Ok(out)
    }

    /// The platform of the machine this process runs on.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        Platform::new(os, arch, None)
    }

    /// The Linux platform a Linux worker on this machine builds natively: on
    /// macOS this is `linux/<host arch>`.
    pub fn host_linux() -> Self {
        let h = Platform::host();
        Platform::new("linux", &h.architecture, h.variant())
    }

    /// Parse a platform the user asks to build: [`Platform::parse`], then
    /// refuse variants the architecture does not have (`linux/amd64/v9`,
    /// `linux/arm/v9`), so that a typo fails before any work starts.
    pub fn parse_target(s: &str) -> Result<Self, PlatformError> {
        let p = Platform::parse(s)?;
        p.check_variant()?;
        Ok(p)
    }

    /// Check the variant against the ones the architecture defines:
    /// amd64 v1–v4 (microarchitecture levels), arm v5–v8, arm64 v8/v8.x/v9/v9.x,
    /// none for 386, ppc64le, s390x and riscv64 (where `rva20u64`/`rva22u64`/
    /// `rva23u64` profiles are accepted). Unknown architectures pass.
    pub fn check_variant(&self) -> Result<(), PlatformError> {
        let Some(v) = self.variant() else {
            return Ok(());
        };
        let minor = |v: &str, major: &str| {
            v == major
                || v.strip_prefix(major)
                    .and_then(|r| r.strip_prefix('.'))
                    .is_some_and(|m| {
                        !m.is_empty() && m.len() <= 2 && m.bytes().all(|b| b.is_ascii_digit())
                    })
        };
        let (ok, known) = match self.architecture.as_str() {
            "amd64" => (matches!(v, "v2" | "v3" | "v4"), "v1, v2, v3, v4"),
            "arm" => (matches!(v, "v5" | "v6" | "v7" | "v8"), "v5, v6, v7, v8"),
            "arm64" => (minor(v, "v8") || minor(v, "v9"), "v8, v8.N, v9, v9.N"),
            "riscv64" => (
                matches!(v, "rva20u64" | "rva22u64" | "rva23u64"),
                "rva20u64, rva22u64, rva23u64",
            ),
            "386" | "ppc64le" | "s390x" | "ppc64" | "mips64le" | "loong64" => (false, "none"),
            _ => (true, ""),
        };
        if ok {
            Ok(())
        } else {
            Err(PlatformError::ImpossibleVariant {
                input: self.to_string(),
                arch: self.architecture.clone(),
                variant: v.to_string(),
                known,
            })
        }
    }

    /// Operating system (`linux`).
    pub fn os(&self) -> &str {
        &self.os
    }

    /// Architecture in Go/OCI spelling (`amd64`, `arm64`, `arm`, `386`, ...).
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// Variant (`v7` for arm), if any.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// The variant or the empty string, as `TARGETVARIANT` wants it.
    pub fn variant_or_empty(&self) -> &str {
        self.variant.as_deref().unwrap_or("")
    }

    /// The `uname -m` machine name a kernel of this platform reports
    /// (`x86_64`, `aarch64`, `armv7l`, ...).
    pub fn uname_machine(&self) -> &str {
        match (self.architecture.as_str(), self.variant()) {
            ("amd64", _) => "x86_64",
            ("arm64", _) => "aarch64",
            ("arm", Some("v6")) => "armv6l",
            ("arm", Some("v5")) => "armv5l",
            ("arm", _) => "armv7l",
            ("386", _) => "i686",
            ("ppc64le", _) => "ppc64le",
            ("s390x", _) => "s390x",
            ("riscv64", _) => "riscv64",
            (other, _) => other,
        }
    }

    /// True when `other` can run natively where `self` runs (same os and
    /// architecture; arm64 also runs arm/v7 only with kernel support, which
    /// is not assumed).
    pub fn same_arch(&self, other: &Platform) -> bool {
        self.os == other.os && self.architecture == other.architecture
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

impl Serialize for Platform {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Platform::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        Platform::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalizes_like_containerd() {
        assert_eq!(p("arm64"), "linux/arm64");
        assert_eq!(p("linux/arm64"), "linux/arm64");
        assert_eq!(p("linux/arm64/v8"), "linux/arm64");
        assert_eq!(p("linux/aarch64"), "linux/arm64");
        assert_eq!(p("linux/x86_64"), "linux/amd64");
        assert_eq!(p("amd64"), "linux/amd64");
        assert_eq!(p("linux/amd64/v1"), "linux/amd64");
        assert_eq!(p("linux/amd64/v3"), "linux/amd64/v3");
        assert_eq!(p("linux/arm"), "linux/arm/v7");
        assert_eq!(p("linux/arm/v6"), "linux/arm/v6");
        assert_eq!(p("linux/armhf"), "linux/arm/v7");
        assert_eq!(p("arm/v6"), "linux/arm/v6");
        assert_eq!(p("linux/i386"), "linux/386");
        assert_eq!(p("linux/386"), "linux/386");
        assert_eq!(p("LINUX/PPC64LE"), "linux/ppc64le");
        assert_eq!(p("linux/s390x"), "linux/s390x");
        assert_eq!(p("linux/riscv64"), "linux/riscv64");
    }

    #[test]
    fn rejects_garbage() {
        assert!(Platform::parse("").is_err());
        assert!(Platform::parse("linux//arm64").is_err());
        assert!(Platform::parse("linux/arm64/v8/x").is_err());
        assert!(Platform::parse("linux/arm 64").is_err());
        assert!(matches!(
            Platform::parse("plan10/amd64"),
            Err(PlatformError::UnknownOs { .. })
        ));
    }

    #[test]
    fn impossible_variants_are_refused_for_targets() {
        for bad in [
            "linux/amd64/v9",
            "linux/arm/v9",
            "linux/arm64/v7",
            "linux/386/v2",
            "linux/arm64/v8.x",
        ] {
            assert!(
                matches!(
                    Platform::parse_target(bad),
                    Err(PlatformError::ImpossibleVariant { .. })
                ),
                "{bad}"
            );
            // Plain parsing (of what registries hold) still accepts them.
            assert!(Platform::parse(bad).is_ok(), "{bad}");
        }
        for good in [
            "linux/amd64/v3",
            "linux/amd64/v1",
            "linux/arm/v6",
            "linux/arm64/v8.2",
            "linux/arm64/v9",
            "linux/riscv64",
            "linux/ppc64le",
        ] {
            assert!(Platform::parse_target(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn list_dedups_equivalent_spellings() {
        let l = Platform::parse_list("linux/amd64, arm64,linux/arm64/v8,x86_64").unwrap();
        let s: Vec<String> = l.iter().map(|p| p.to_string()).collect();
        assert_eq!(s, ["linux/amd64", "linux/arm64"]);
    }

    #[test]
    fn serde_round_trip() {
        let pl = Platform::parse("linux/arm/v7").unwrap();
        let j = serde_json::to_string(&pl).unwrap();
        assert_eq!(j, "\"linux/arm/v7\"");
        let back: Platform = serde_json::from_str(&j).unwrap();
        assert_eq!(back, pl);
        assert_eq!(pl.uname_machine(), "armv7l");
    }
}
