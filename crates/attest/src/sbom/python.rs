//! Python distributions: `*.dist-info/METADATA` (wheels, pip) and
//! `*.egg-info/PKG-INFO` or `*.egg-info` files (setuptools), both in the
//! core metadata format (RFC 822 headers, then the description).

use super::{Ecosystem, Package, Root, ScanResult};
use crate::purl::Purl;

/// The header fields of a core metadata file (up to the first blank line);
/// continuation lines are joined with `\n`.
pub fn headers(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = out.last_mut() {
                last.1.push('\n');
                last.1
                    .push_str(line.trim_start_matches([' ', '\t', '|']).trim_end());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// PEP 503 name normalization (`Foo_Bar.baz` → `foo-bar-baz`), as purls use.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::new();
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
            continue;
        }
        if sep && !out.is_empty() {
            out.push('-');
        }
        sep = false;
        out.extend(c.to_lowercase());
    }
    out
}

/// The license a metadata file states: `License-Expression` (PEP 639),
/// else a short `License` value, else the `License ::` classifiers.
fn license(h: &[(String, String)]) -> Option<String> {
    let get = |k: &str| {
        h.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("UNKNOWN"))
    };
    if let Some(e) = get("License-Expression") {
        return Some(e.to_string());
    }
    // A whole license text pasted into License: is not a name.
    if let Some(l) = get("License").filter(|l| !l.contains('\n') && l.len() <= 100) {
        return Some(l.to_string());
    }
    let classifiers: Vec<&str> = h
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Classifier"))
        .filter_map(|(_, v)| v.strip_prefix("License ::"))
        .map(|v| v.rsplit("::").next().unwrap_or(v).trim())
        .filter(|v| *v != "OSI Approved")
        .collect();
    match classifiers.len() {
        0 => None,
        1 => Some(classifiers[0].to_string()),
        _ => Some(
            classifiers
                .iter()
                .map(|c| match super::license::normalize(c) {
                    Some(e) if !e.expression.starts_with("LicenseRef-") => e.expression,
                    _ => c.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" OR "),
        ),
    }
}

/// Parse one metadata file found at `location`.
pub fn parse(text: &str, location: &str) -> Option<Package> {
    let h = headers(text);
    let get = |k: &str| {
        h.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("UNKNOWN"))
    };
    let name = get("Name")?;
    let version = get("Version").unwrap_or("");
    let purl = Purl::new("pypi", &normalize_name(name)).version(version);
    let mut p = Package::new(Ecosystem::Python, name, version, purl.to_string(), location);
    p.license = license(&h);
    p.supplier = match (get("Author"), get("Author-email")) {
        (Some(a), Some(e)) if !e.contains('<') => Some(format!("{a} <{e}>")),
        (_, Some(e)) => Some(e.to_string()),
        (Some(a), None) => Some(a.to_string()),
        (None, None) => None,
    };
    p.homepage = get("Home-page").map(str::to_string).or_else(|| {
        h.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Project-URL"))
            .filter_map(|(_, v)| v.split_once(','))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("homepage"))
            .map(|(_, u)| u.trim().to_string())
    });
    p.summary = get("Summary").map(str::to_string);
    Some(p)
}

/// Add the Python distributions among `files` to `res`.
pub fn scan(root: &Root, files: &[String], res: &mut ScanResult) {
    for f in files {
        let Some(bytes) = root.read(f) else {
            continue;
        };
        match parse(&String::from_utf8_lossy(&bytes), f) {
            Some(p) => res.packages.push(p),
            None => res.warnings.push(format!("{f}: no Name: field")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;
    use std::process::Command;

    #[test]
    fn names() {
        assert_eq!(normalize_name("PyYAML"), "pyyaml");
        assert_eq!(normalize_name("typing_extensions"), "typing-extensions");
        assert_eq!(normalize_name("zope..interface"), "zope-interface");
    }

    /// Distributions of the system Python, read by our scanner and by
    /// Python's own `importlib.metadata`.
    #[test]
    fn system_python_dist_info_matches_importlib() {
        let dirs = ["/usr/lib/python3/dist-packages"];
        let Some(site) = dirs.iter().find(|d| Path::new(d).is_dir()) else {
            eprintln!("skipped: no system Python dist-packages");
            return;
        };
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join(site.trim_start_matches('/'));
        fs::create_dir_all(&dest).unwrap();
        let mut copied = 0;
        for e in fs::read_dir(site).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".dist-info") || name.ends_with(".egg-info") {
                let src = if e.path().is_dir() {
                    let m = if name.ends_with(".dist-info") {
                        "METADATA"
                    } else {
                        "PKG-INFO"
                    };
                    fs::create_dir_all(dest.join(&name)).unwrap();
                    (e.path().join(m), dest.join(&name).join(m))
                } else {
                    (e.path(), dest.join(&name))
                };
                if fs::copy(&src.0, &src.1).is_ok() {
                    copied += 1;
                }
            }
        }
        assert!(copied > 0);
        let root = Root::open(t.path()).unwrap();
        let found = super::super::walk(&root);
        let mut res = ScanResult::default();
        scan(&root, &found.python_metadata, &mut res);
        assert!(res.warnings.is_empty(), "{:?}", res.warnings);
        let mut got: Vec<String> = res
            .packages
            .iter()
            .map(|p| format!("{}=={}", normalize_name(&p.name), p.version))
            .collect();
        got.sort();
        let py = "import importlib.metadata as m, sys, re\n\
                  ds = m.distributions(path=[sys.argv[1]])\n\
                  for n in sorted(re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() + '==' + d.version for d in ds): print(n)\n";
        let out = match Command::new("python3").args(["-c", py]).arg(&dest).output() {
            Ok(o) if o.status.success() => o,
            _ => {
                eprintln!("skipped comparison: python3 not runnable");
                return;
            }
        };
        let mut want: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        want.sort();
        assert_eq!(got, want);
        for p in &res.packages {
            assert!(p.purl.starts_with("pkg:pypi/"), "{}", p.purl);
        }
    }

    #[test]
    fn licenses_in_order_of_preference() {
        let meta = "Metadata-Version: 2.4\nName: Demo_Pkg\nVersion: 1.0\nLicense-Expression: MIT OR Apache-2.0\nLicense: Whatever\nClassifier: License :: OSI Approved :: BSD License\n\nBody: not a header\n";
        let p = parse(meta, "/x/METADATA").unwrap();
        assert_eq!(p.license.as_deref(), Some("MIT OR Apache-2.0"));
        assert_eq!(p.purl, "pkg:pypi/demo-pkg@1.0");
        let meta = "Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\nLicense: MIT\nAuthor: Benjamin Peterson\nAuthor-email: benjamin@python.org\n";
        let p = parse(meta, "/x").unwrap();
        assert_eq!(p.license.as_deref(), Some("MIT"));
        assert_eq!(
            p.supplier.as_deref(),
            Some("Benjamin Peterson <benjamin@python.org>")
        );
        let meta = "Metadata-Version: 2.1\nName: a\nVersion: 1\nLicense: Copyright 2020\n        Permission is hereby granted\nClassifier: License :: OSI Approved :: MIT License\nClassifier: License :: OSI Approved :: Apache Software License\n";
        let p = parse(meta, "/x").unwrap();
        assert_eq!(p.license.as_deref(), Some("MIT OR Apache-2.0"));
        assert!(parse("Version: 1\n", "/x").is_none());
    }
}
