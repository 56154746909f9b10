//! Debian packages: `/var/lib/dpkg/status` (installed entries only) and
//! the one-file-per-package `/var/lib/dpkg/status.d/*` of distroless
//! images; licenses from machine-readable `/usr/share/doc/PKG/copyright`.

use super::{Ecosystem, Package, Root, ScanResult};
use crate::purl::Purl;

/// Path of the dpkg status database.
pub const STATUS: &str = "/var/lib/dpkg/status";
/// Directory of per-package status files (distroless).
pub const STATUS_D: &str = "/var/lib/dpkg/status.d";

/// One control paragraph: fields in order, continuation lines joined by `\n`.
pub type Paragraph = Vec<(String, String)>;

/// Split deb822 text into paragraphs.
pub fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut cur: Paragraph = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = cur.last_mut() {
                last.1.push('\n');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn field<'a>(p: &'a Paragraph, name: &str) -> Option<&'a str> {
    p.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The license of package `name` from its machine-readable copyright file,
/// as the SPDX-ish string of every `License:` synopsis joined by AND.
pub fn copyright_license(root: &Root, name: &str) -> Option<String> {
    let bytes = root.read(&format!("/usr/share/doc/{name}/copyright"))?;
    let text = String::from_utf8_lossy(&bytes);
    let paras = paragraphs(&text);
    let header = paras.first()?;
    if !field(header, "Format")?.contains("copyright-format") {
        return None;
    }
    let mut synopses: Vec<String> = Vec::new();
    for p in &paras {
        // Stand-alone license paragraphs (no Files:) only define texts.
        if p.iter().any(|(k, _)| k.eq_ignore_ascii_case("Files")) || std::ptr::eq(p, header) {
            if let Some(l) = field(p, "License") {
                let syn = l.lines().next().unwrap_or("").trim().to_string();
                if !syn.is_empty() && !synopses.contains(&syn) {
                    synopses.push(syn);
                }
            }
        }
    }
    let e = super::license::all_of(synopses.iter().map(String::as_str))?;
    Some(e.expression)
}

fn to_package(root: &Root, p: &Paragraph, location: &str, require_status: bool) -> Option<Package> {
    let name = field(p, "Package")?;
    if require_status {
        let status = field(p, "Status")?;
        if status.split_whitespace().last() != Some("installed") {
            return None;
        }
    }
    let version = field(p, "Version").unwrap_or("");
    let arch = field(p, "Architecture").unwrap_or("");
    let os = root.os_release();
    let ns = os.id.clone().unwrap_or_else(|| "debian".into());
    let mut purl = Purl::new("deb", name)
        .namespace(&ns)
        .version(version)
        .qualifier("arch", arch);
    if let Some(d) = os.distro() {
        purl = purl.qualifier("distro", &d);
    }
    if let Some(src) = field(p, "Source") {
        // "src" or "src (version)": the upstream qualifier names the source
        // package when it differs from the binary one.
        let (sname, sver) = match src.split_once('(') {
            Some((n, v)) => (n.trim(), Some(v.trim_end_matches(')').trim())),
            None => (src.trim(), None),
        };
        if sname != name {
            let up = match sver {
                Some(v) => format!("{sname}@{v}"),
                None => sname.to_string(),
            };
            purl = purl.qualifier("upstream", &up);
        }
    }
    let mut pkg = Package::new(Ecosystem::Deb, name, version, purl.to_string(), location);
    pkg.supplier = field(p, "Maintainer").map(str::to_string);
    pkg.homepage = field(p, "Homepage").map(str::to_string);
    pkg.summary = field(p, "Description")
        .and_then(|d| d.lines().next())
        .map(str::to_string);
    pkg.license = copyright_license(root, name);
    Some(pkg)
}

/// Add the installed Debian packages of `root` to `res`.
pub fn scan(root: &Root, res: &mut ScanResult) {
    if let Some(bytes) = root.read(STATUS) {
        let text = String::from_utf8_lossy(&bytes);
        for p in paragraphs(&text) {
            if let Some(pkg) = to_package(root, &p, STATUS, true) {
                res.packages.push(pkg);
            }
        }
    }
    for f in root.list(STATUS_D) {
        if f.ends_with(".md5sums") || f.starts_with('.') {
            continue;
        }
        let path = format!("{STATUS_D}/{f}");
        let Some(bytes) = root.read(&path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for p in paragraphs(&text) {
            // Distroless entries carry no Status field; when one does, it counts.
            let has_status = field(&p, "Status").is_some();
            match to_package(root, &p, &path, has_status) {
                Some(pkg) => res.packages.push(pkg),
                None if field(&p, "Package").is_none() => res
                    .warnings
                    .push(format!("{path}: paragraph without Package field")),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::fs;
    use std::process::Command;

    /// A root made from this machine's real dpkg database and copyright files.
    fn host_root() -> Option<tempfile::TempDir> {
        if !std::path::Path::new(STATUS).exists() {
            return None;
        }
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::copy(STATUS, r.join("var/lib/dpkg/status")).unwrap();
        if let Ok(os) = fs::read("/etc/os-release") {
            fs::write(r.join("etc/os-release"), os).unwrap();
        }
        for pkg in ["bash", "libc6", "coreutils", "base-files"] {
            let src = format!("/usr/share/doc/{pkg}/copyright");
            if std::path::Path::new(&src).exists() {
                fs::create_dir_all(r.join(format!("usr/share/doc/{pkg}"))).unwrap();
                fs::copy(&src, r.join(format!("usr/share/doc/{pkg}/copyright"))).unwrap();
            }
        }
        Some(t)
    }

    #[test]
    fn host_status_matches_dpkg_query() {
        let Some(t) = host_root() else {
            eprintln!("skipped: no {STATUS} on this machine");
            return;
        };
        let out = match Command::new("dpkg-query")
            .args([
                "-W",
                "-f",
                "${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\n",
            ])
            .output()
        {
            Ok(o) if o.status.success() => o,
            _ => {
                eprintln!("skipped: dpkg-query not runnable");
                return;
            }
        };
        let want: BTreeSet<(String, String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() == 4 && f[0] == "installed")
                    .then(|| (f[1].to_string(), f[2].to_string(), f[3].to_string()))
            })
            .collect();
        let root = Root::open(t.path()).unwrap();
        let mut res = ScanResult::default();
        scan(&root, &mut res);
        let got: BTreeSet<(String, String, String)> = res
            .packages
            .iter()
            .map(|p| {
                let arch = p
                    .purl
                    .split("arch=")
                    .nth(1)
                    .unwrap()
                    .split('&')
                    .next()
                    .unwrap();
                (p.name.clone(), p.version.clone(), arch.to_string())
            })
            .collect();
        assert!(!want.is_empty());
        assert_eq!(got, want);
        assert_eq!(got.len(), res.packages.len(), "duplicates");
        let bash = res.packages.iter().find(|p| p.name == "bash").unwrap();
        let os = root.os_release();
        if os.id.as_deref() == Some("debian") {
            let d = os.distro().unwrap();
            assert!(
                bash.purl.starts_with("pkg:deb/debian/bash@")
                    && bash.purl.contains(&format!("distro={d}")),
                "{}",
                bash.purl
            );
        }
        // bash's copyright file is machine-readable and says GPL-3+.
        let lic = bash.license.as_deref().unwrap_or("");
        assert!(lic.contains("GPL-3.0-or-later"), "bash license: {lic:?}");
        // libc6's copyright file is not machine-readable: no license claimed.
        if let Some(libc) = res.packages.iter().find(|p| p.name == "libc6") {
            let text = fs::read_to_string("/usr/share/doc/libc6/copyright").unwrap_or_default();
            if !text.starts_with("Format:") {
                assert_eq!(libc.license, None);
            }
        }
    }

    #[test]
    fn status_d_and_not_installed() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("var/lib/dpkg/status.d")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
        // The format distroless writes: one control paragraph per package.
        fs::write(
            r.join("var/lib/dpkg/status.d/tzdata"),
            "Package: tzdata\nVersion: 2024a-0+deb12u1\nArchitecture: all\nMaintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>\nInstalled-Size: 3296\nSection: localization\nPriority: required\nMulti-Arch: foreign\nHomepage: https://www.iana.org/time-zones\nDescription: time zone and daylight-saving time data\n This package contains data required.\n",
        )
        .unwrap();
        fs::write(r.join("var/lib/dpkg/status.d/tzdata.md5sums"), "x  y\n").unwrap();
        fs::write(
            r.join("var/lib/dpkg/status"),
            "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\nArchitecture: amd64\n\nPackage: libssl3\nStatus: install ok installed\nArchitecture: amd64\nSource: openssl (3.0.11-1~deb12u2)\nVersion: 3.0.11-1~deb12u2\n",
        )
        .unwrap();
        let root = Root::open(r).unwrap();
        let mut res = ScanResult::default();
        scan(&root, &mut res);
        let purls: Vec<&str> = res.packages.iter().map(|p| p.purl.as_str()).collect();
        assert_eq!(
            purls,
            vec![
                "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12&upstream=openssl%403.0.11-1~deb12u2",
                "pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all&distro=debian-12",
            ]
        );
        assert_eq!(res.packages[1].location, "/var/lib/dpkg/status.d/tzdata");
        assert_eq!(
            res.packages[1].summary.as_deref(),
            Some("time zone and daylight-saving time data")
        );
    }
}
