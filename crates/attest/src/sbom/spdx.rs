//! The SPDX 2.3 JSON document for a scan: one package for the image (what
//! the document DESCRIBES), one per package found, each CONTAINED by the
//! image, with purls as external references, licenses where the database
//! states them and NOASSERTION where it does not.

use super::license;
use super::{Package, ScanResult};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::time::SystemTime;

/// `spdxVersion`.
pub const SPDX_VERSION: &str = "SPDX-2.3";
/// The value SPDX uses for "not stated".
pub const NOASSERTION: &str = "NOASSERTION";

/// `creationInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreationInfo {
    /// RFC 3339 UTC.
    pub created: String,
    /// `Tool: xbuild-0.1.0`, …
    pub creators: Vec<String>,
    /// Notes (the requested generator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// An external reference (purl).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalRef {
    /// `PACKAGE-MANAGER`.
    #[serde(rename = "referenceCategory")]
    pub category: String,
    /// `purl`.
    #[serde(rename = "referenceType")]
    pub ty: String,
    /// The purl.
    #[serde(rename = "referenceLocator")]
    pub locator: String,
}

/// An SPDX package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpdxPackage {
    /// Name.
    pub name: String,
    /// `SPDXRef-…`.
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    /// Version.
    #[serde(
        rename = "versionInfo",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub version_info: Option<String>,
    /// `Person: …`, `Organization: …` or NOASSERTION.
    pub supplier: String,
    /// Always NOASSERTION: databases do not record where files came from.
    #[serde(rename = "downloadLocation")]
    pub download_location: String,
    /// Files are not listed.
    #[serde(rename = "filesAnalyzed")]
    pub files_analyzed: bool,
    /// Homepage, when a valid http(s) URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homepage: Option<String>,
    /// Where the package was found.
    #[serde(
        rename = "sourceInfo",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub source_info: Option<String>,
    /// NOASSERTION: no conclusion is drawn beyond what the database says.
    #[serde(rename = "licenseConcluded")]
    pub license_concluded: String,
    /// What the database declares, or NOASSERTION.
    #[serde(rename = "licenseDeclared")]
    pub license_declared: String,
    /// NOASSERTION.
    #[serde(rename = "copyrightText")]
    pub copyright_text: String,
    /// Summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The purl.
    #[serde(
        rename = "externalRefs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub external_refs: Vec<ExternalRef>,
    /// `CONTAINER` for the image, `LIBRARY`/`APPLICATION` otherwise.
    #[serde(
        rename = "primaryPackagePurpose",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub purpose: Option<String>,
}

/// A relationship.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relationship {
    /// From.
    #[serde(rename = "spdxElementId")]
    pub element: String,
    /// `DESCRIBES`, `CONTAINS`.
    #[serde(rename = "relationshipType")]
    pub ty: String,
    /// To.
    #[serde(rename = "relatedSpdxElement")]
    pub related: String,
}

/// A `LicenseRef-` definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractedLicense {
    /// `LicenseRef-…`.
    #[serde(rename = "licenseId")]
    pub license_id: String,
    /// The text the database gave.
    #[serde(rename = "extractedText")]
    pub extracted_text: String,
    /// A readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An SPDX 2.3 document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpdxDocument {
    /// `SPDX-2.3`.
    #[serde(rename = "spdxVersion")]
    pub spdx_version: String,
    /// `CC0-1.0`.
    #[serde(rename = "dataLicense")]
    pub data_license: String,
    /// `SPDXRef-DOCUMENT`.
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    /// Document name.
    pub name: String,
    /// Unique URI of this document.
    #[serde(rename = "documentNamespace")]
    pub document_namespace: String,
    /// Creation info.
    #[serde(rename = "creationInfo")]
    pub creation_info: CreationInfo,
    /// Packages; the first is the image.
    pub packages: Vec<SpdxPackage>,
    /// Relationships.
    pub relationships: Vec<Relationship>,
    /// `LicenseRef-` definitions.
    #[serde(
        rename = "hasExtractedLicensingInfos",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub extracted_licenses: Vec<ExtractedLicense>,
}

/// An `SPDXRef-` id from free text (only letters, digits, `.` and `-`).
pub fn spdx_id(parts: &[&str]) -> String {
    let mut s = String::from("SPDXRef");
    for p in parts {
        s.push('-');
        s.extend(p.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        }));
    }
    s
}

/// `Name <email>` → `Person: Name (email)`.
fn supplier(s: Option<&str>) -> String {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty()) else {
        return NOASSERTION.to_string();
    };
    let s = s.replace(['\n', '\r'], " ");
    match s.split_once('<') {
        Some((name, rest)) => {
            let email = rest.split('>').next().unwrap_or("").trim();
            let name = name.trim().replace(['(', ')'], "");
            if name.is_empty() {
                format!("Person: {email} ({email})")
            } else {
                format!("Person: {name} ({email})")
            }
        }
        None => format!("Person: {}", s.replace(['(', ')'], "")),
    }
}

fn http_url(s: Option<&str>) -> Option<String> {
    let s = s?.trim();
    let ok = (s.starts_with("https://") || s.starts_with("http://"))
        && s.len() > 8
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '<' || c == '>');
    ok.then(|| s.to_string())
}

/// Options for the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentOptions {
    /// The image's name (a reference, or a description).
    pub name: String,
    /// Creation time (the build's, for reproducible documents).
    pub created: SystemTime,
    /// The tool, `xbuild-0.1.0`.
    pub tool: String,
    /// The `generator=` option, recorded as a comment.
    pub generator: Option<String>,
}

impl SpdxDocument {
    /// The document for `scan` of the image described by `opts`.
    pub fn build(scan: &ScanResult, opts: &DocumentOptions) -> Self {
        let root_id = spdx_id(&["DocumentRoot", "Image"]);
        let mut packages = vec![SpdxPackage {
            name: if opts.name.is_empty() {
                "image".into()
            } else {
                opts.name.clone()
            },
            spdx_id: root_id.clone(),
            version_info: None,
            supplier: NOASSERTION.into(),
            download_location: NOASSERTION.into(),
            files_analyzed: false,
            homepage: None,
            source_info: None,
            license_concluded: NOASSERTION.into(),
            license_declared: NOASSERTION.into(),
            copyright_text: NOASSERTION.into(),
            summary: None,
            external_refs: Vec::new(),
            purpose: Some("CONTAINER".into()),
        }];
        let mut relationships = vec![Relationship {
            element: "SPDXRef-DOCUMENT".into(),
            ty: "DESCRIBES".into(),
            related: root_id.clone(),
        }];
        let mut extracted: Vec<ExtractedLicense> = Vec::new();
        let mut ids = BTreeSet::new();
        ids.insert(root_id.clone());
        for p in &scan.packages {
            let sp = package(p, &mut ids, &mut extracted);
            relationships.push(Relationship {
                element: root_id.clone(),
                ty: "CONTAINS".into(),
                related: sp.spdx_id.clone(),
            });
            packages.push(sp);
        }
        let created = crate::time::rfc3339(opts.created);
        // Unique per content and time, stable for the same inputs.
        let mut h = Sha256::new();
        h.update(opts.name.as_bytes());
        h.update(created.as_bytes());
        for p in &scan.packages {
            h.update(p.purl.as_bytes());
            h.update(p.location.as_bytes());
        }
        let slug: String = opts
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let slug = if slug.is_empty() {
            "image".to_string()
        } else {
            slug
        };
        SpdxDocument {
            spdx_version: SPDX_VERSION.into(),
            data_license: "CC0-1.0".into(),
            spdx_id: "SPDXRef-DOCUMENT".into(),
            name: if opts.name.is_empty() { "image".into() } else { opts.name.clone() },
            document_namespace: format!(
                "https://xbuild.invalid/spdx/{slug}-{}",
                &hex::encode(h.finalize())[..32]
            ),
            creation_info: CreationInfo {
                created,
                creators: vec![format!("Tool: {}", opts.tool)],
                comment: opts
                    .generator
                    .as_ref()
                    .map(|g| format!("requested generator {g}; scanned by xbuild's built-in package database readers")),
            },
            packages,
            relationships,
            extracted_licenses: extracted,
        }
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec_pretty(self)
    }

    /// The purls of the packages found (the image itself excluded).
    pub fn purls(&self) -> Vec<&str> {
        self.packages
            .iter()
            .flat_map(|p| p.external_refs.iter())
            .filter(|r| r.ty == "purl")
            .map(|r| r.locator.as_str())
            .collect()
    }
}

fn package(
    p: &Package,
    ids: &mut BTreeSet<String>,
    extracted: &mut Vec<ExtractedLicense>,
) -> SpdxPackage {
    let base = spdx_id(&["Package", p.ecosystem.as_str(), &p.name, &p.version]);
    let mut id = base.clone();
    let mut n = 2;
    while !ids.insert(id.clone()) {
        id = format!("{base}-{n}");
        n += 1;
    }
    let declared = match p.license.as_deref().and_then(license::normalize) {
        Some(e) => {
            for (rid, text) in e.refs {
                if !extracted.iter().any(|x| x.license_id == rid) {
                    extracted.push(ExtractedLicense {
                        license_id: rid.clone(),
                        extracted_text: text.clone(),
                        name: Some(text.chars().take(80).collect()),
                    });
                }
            }
            e.expression
        }
        None => NOASSERTION.into(),
    };
    let source_info = match &p.origin {
        Some(o) => format!(
            "{} package found in {}: {}",
            p.ecosystem.as_str(),
            o,
            p.location
        ),
        None => format!("{} package found in {}", p.ecosystem.as_str(), p.location),
    };
    SpdxPackage {
        name: p.name.clone(),
        spdx_id: id,
        version_info: (!p.version.is_empty()).then(|| p.version.clone()),
        supplier: supplier(p.supplier.as_deref()),
        download_location: NOASSERTION.into(),
        files_analyzed: false,
        homepage: http_url(p.homepage.as_deref()),
        source_info: Some(source_info),
        license_concluded: NOASSERTION.into(),
        license_declared: declared,
        copyright_text: NOASSERTION.into(),
        summary: p.summary.clone().filter(|s| !s.is_empty()),
        external_refs: vec![ExternalRef {
            category: "PACKAGE-MANAGER".into(),
            ty: "purl".into(),
            locator: p.purl.clone(),
        }],
        purpose: Some(
            match p.ecosystem {
                super::Ecosystem::Deb | super::Ecosystem::Apk => "OPERATING-SYSTEM",
                _ => "LIBRARY",
            }
            .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sbom::{Ecosystem, Package};
    use std::time::{Duration, UNIX_EPOCH};

    fn pkg(name: &str, lic: Option<&str>) -> Package {
        let mut p = Package::new(
            Ecosystem::Npm,
            name,
            "1.0",
            format!("pkg:npm/{name}@1.0"),
            "/app/node_modules/x/package.json",
        );
        p.license = lic.map(str::to_string);
        p
    }

    #[test]
    fn document_shape() {
        let scan = ScanResult {
            packages: vec![
                pkg("a", Some("MIT")),
                pkg("a", Some("Some custom terms")),
                pkg("b@weird/name", None),
            ],
            warnings: vec![],
        };
        let opts = DocumentOptions {
            name: "localhost:5000/app:1 (linux/amd64)".into(),
            created: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            tool: "xbuild-0.1.0".into(),
            generator: None,
        };
        let doc = SpdxDocument::build(&scan, &opts);
        let v: serde_json::Value = serde_json::from_slice(&doc.to_json().unwrap()).unwrap();
        assert_eq!(v["spdxVersion"], "SPDX-2.3");
        assert_eq!(v["dataLicense"], "CC0-1.0");
        assert_eq!(v["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        let ns = v["documentNamespace"].as_str().unwrap();
        assert!(
            ns.starts_with("https://xbuild.invalid/spdx/localhost-5000-app-1--linux-amd64--"),
            "{ns}"
        );
        assert!(!ns.contains('#'));
        assert_eq!(v["relationships"][0]["relationshipType"], "DESCRIBES");
        assert_eq!(v["relationships"].as_array().unwrap().len(), 4);
        let ids: BTreeSet<&str> = v["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["SPDXID"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 4, "ids must be unique");
        for id in &ids {
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
                "{id}"
            );
        }
        assert_eq!(v["packages"][1]["licenseDeclared"], "MIT");
        let custom = v["packages"][2]["licenseDeclared"].as_str().unwrap();
        assert!(custom.starts_with("LicenseRef-"));
        assert_eq!(v["hasExtractedLicensingInfos"][0]["licenseId"], custom);
        assert_eq!(v["packages"][3]["licenseDeclared"], "NOASSERTION");
        assert_eq!(doc.purls().len(), 3);
        // Same inputs, same document.
        assert_eq!(SpdxDocument::build(&scan, &opts), doc);
        assert_eq!(
            supplier(Some("Jane Doe <jane@example.com>")),
            "Person: Jane Doe (jane@example.com)"
        );
        assert_eq!(supplier(None), "NOASSERTION");
    }
}
