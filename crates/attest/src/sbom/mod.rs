//! SBOMs: an SPDX 2.3 JSON document listing the packages found in a root
//! filesystem, read straight from the package databases.
//!
//! Each ecosystem is a small module: [`dpkg`], [`apk`], [`python`], [`npm`],
//! [`gobin`] (Go build info in binaries) and [`auditable`] (`cargo
//! auditable` data in Rust binaries). [`scan`] walks a root once, hands
//! each scanner what it needs, and returns the packages; [`spdx`] turns
//! them into a document. Extra roots (the build context with
//! `BUILDKIT_SBOM_SCAN_CONTEXT`, other stages with
//! `BUILDKIT_SBOM_SCAN_STAGE`) are scanned the same way and their packages
//! are marked with the root they came from.
//!
//! The root filesystem is untrusted: symlinks are resolved inside it, never
//! against the host, and unreadable or malformed entries become warnings.

pub mod apk;
pub mod auditable;
pub mod dpkg;
pub mod elf;
pub mod gobin;
pub mod license;
pub mod npm;
pub mod python;
pub mod spdx;

pub use spdx::SpdxDocument;

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Errors from scanning a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The root is not a readable directory.
    #[error("cannot scan {path}: {source}")]
    Root {
        /// The root.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A layer of the image could not be unpacked for scanning.
    #[error("cannot unpack layer {index} of the image into {dir} for the SBOM scan: {source}")]
    Unpack {
        /// 0-based layer index.
        index: usize,
        /// The destination.
        dir: PathBuf,
        /// The cause.
        source: xbuild_oci::layer::ApplyError,
    },
}

/// The package ecosystem a package was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ecosystem {
    /// Debian packages (dpkg).
    Deb,
    /// Alpine packages (apk).
    Apk,
    /// Python distributions.
    Python,
    /// npm packages.
    Npm,
    /// Go modules linked into a binary.
    Go,
    /// Rust crates linked into a binary (`cargo auditable`).
    Cargo,
}

impl Ecosystem {
    /// A short name used in SPDX ids and source info.
    pub fn as_str(self) -> &'static str {
        match self {
            Ecosystem::Deb => "deb",
            Ecosystem::Apk => "apk",
            Ecosystem::Python => "python",
            Ecosystem::Npm => "npm",
            Ecosystem::Go => "go-module",
            Ecosystem::Cargo => "rust-crate",
        }
    }
}

/// One package found in a root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The package's name in its ecosystem.
    pub name: String,
    /// Its version (empty when the database has none).
    pub version: String,
    /// The package URL.
    pub purl: String,
    /// The license as the database states it (free text or an expression).
    pub license: Option<String>,
    /// The ecosystem.
    pub ecosystem: Ecosystem,
    /// Where it was found, as an absolute path inside the root.
    pub location: String,
    /// Maintainer or author, `Name <email>` or `Name`.
    pub supplier: Option<String>,
    /// Project homepage.
    pub homepage: Option<String>,
    /// One-line summary.
    pub summary: Option<String>,
    /// The extra root it came from (`context`, a stage name); `None` for
    /// the image itself.
    pub origin: Option<String>,
}

impl Package {
    fn new(ecosystem: Ecosystem, name: &str, version: &str, purl: String, location: &str) -> Self {
        Package {
            name: name.to_string(),
            version: version.to_string(),
            purl,
            license: None,
            ecosystem,
            location: location.to_string(),
            supplier: None,
            homepage: None,
            summary: None,
            origin: None,
        }
    }
}

/// The distribution a root filesystem says it is (`/etc/os-release`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OsRelease {
    /// `ID` (`debian`, `alpine`, `ubuntu`).
    pub id: Option<String>,
    /// `VERSION_ID` (`12`, `3.19.1`).
    pub version_id: Option<String>,
}

impl OsRelease {
    /// Parse os-release text.
    pub fn parse(text: &str) -> Self {
        let mut out = OsRelease::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').trim_matches('\'').to_string();
            match k.trim() {
                "ID" if !v.is_empty() => out.id = Some(v),
                "VERSION_ID" if !v.is_empty() => out.version_id = Some(v),
                _ => {}
            }
        }
        out
    }

    /// The purl `distro` qualifier: `ID-VERSION_ID` (`debian-12`).
    pub fn distro(&self) -> Option<String> {
        match (&self.id, &self.version_id) {
            (Some(i), Some(v)) => Some(format!("{i}-{v}")),
            (Some(i), None) => Some(i.clone()),
            _ => None,
        }
    }
}

/// Largest file a scanner reads (databases, binaries).
const MAX_FILE: u64 = 512 << 20;

/// A root filesystem being scanned: every path is resolved inside it.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
    os: OsRelease,
}

impl Root {
    /// Open `dir` as a root filesystem.
    pub fn open(dir: &Path) -> Result<Self, ScanError> {
        let md = fs::metadata(dir).map_err(|source| ScanError::Root {
            path: dir.to_path_buf(),
            source,
        })?;
        if !md.is_dir() {
            return Err(ScanError::Root {
                path: dir.to_path_buf(),
                source: std::io::Error::other("not a directory"),
            });
        }
        let mut r = Root {
            dir: dir.to_path_buf(),
            os: OsRelease::default(),
        };
        let text = r
            .read("/etc/os-release")
            .or_else(|| r.read("/usr/lib/os-release"));
        if let Some(t) = text {
            r.os = OsRelease::parse(&String::from_utf8_lossy(&t));
        }
        Ok(r)
    }

    /// The distribution.
    pub fn os_release(&self) -> &OsRelease {
        &self.os
    }

    /// The host path of `path` (absolute inside the root), with symlinks
    /// resolved as if the root were `/`. `None` when a component is missing
    /// or the links loop.
    pub fn resolve(&self, path: &str) -> Option<PathBuf> {
        let mut pending: VecDeque<OsString> = comps(Path::new(path));
        let mut cur = PathBuf::new();
        let mut hops = 0;
        while let Some(c) = pending.pop_front() {
            if c == ".." {
                cur.pop();
                continue;
            }
            let cand = cur.join(&c);
            let host = self.dir.join(&cand);
            let md = fs::symlink_metadata(&host).ok()?;
            if md.file_type().is_symlink() {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = fs::read_link(&host).ok()?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                let mut t = comps(&target);
                t.extend(pending);
                pending = t;
            } else {
                cur = cand;
            }
        }
        Some(self.dir.join(cur))
    }

    /// Read a regular file at `path` inside the root (at most 512 MiB).
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        let host = self.resolve(path)?;
        let f = fs::File::open(&host).ok()?;
        let md = f.metadata().ok()?;
        if !md.is_file() || md.len() > MAX_FILE {
            return None;
        }
        let mut buf = Vec::with_capacity(md.len() as usize);
        f.take(MAX_FILE).read_to_end(&mut buf).ok()?;
        Some(buf)
    }

    /// The entries of the directory at `path`, sorted by name.
    pub fn list(&self, path: &str) -> Vec<String> {
        let Some(host) = self.resolve(path) else {
            return Vec::new();
        };
        let Ok(rd) = fs::read_dir(host) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }
}

fn comps(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Files of interest found by one walk of a root.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Found {
    /// `*.dist-info/METADATA`, `*.egg-info/PKG-INFO` and `*.egg-info` files.
    pub python_metadata: Vec<String>,
    /// `node_modules/[@scope/]name/package.json`.
    pub npm_packages: Vec<String>,
    /// `package-lock.json` files outside `node_modules`.
    pub npm_locks: Vec<String>,
    /// Regular files with an execute bit and the ELF magic.
    pub elf_binaries: Vec<String>,
}

/// Walk the root (without following symlinks; `/proc`, `/sys` and `/dev`
/// skipped) and collect the files the scanners read.
pub fn walk(root: &Root) -> Found {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Found::default();
    let mut stack: Vec<(PathBuf, usize)> = vec![(PathBuf::from("/"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let host = root.dir.join(dir.strip_prefix("/").unwrap_or(&dir));
        let Ok(rd) = fs::read_dir(&host) else {
            continue;
        };
        let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries.into_iter().rev() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let rel = dir.join(&name);
            let Ok(ft) = e.file_type() else { continue };
            let rel_s = rel.to_string_lossy().to_string();
            if ft.is_dir() {
                if depth == 0 && matches!(name.as_str(), "proc" | "sys" | "dev") {
                    continue;
                }
                if name.ends_with(".dist-info") {
                    found.python_metadata.push(format!("{rel_s}/METADATA"));
                } else if name.ends_with(".egg-info") {
                    found.python_metadata.push(format!("{rel_s}/PKG-INFO"));
                }
                if depth < 64 {
                    stack.push((rel, depth + 1));
                }
                continue;
            }
            if !ft.is_file() {
                continue;
            }
            if name.ends_with(".egg-info") {
                found.python_metadata.push(rel_s);
                continue;
            }
            if name == "package.json" && is_node_module_manifest(&rel) {
                found.npm_packages.push(rel_s);
                continue;
            }
            if name == "package-lock.json" && !rel.iter().any(|c| c == "node_modules") {
                found.npm_locks.push(rel_s);
                continue;
            }
            let Ok(md) = e.metadata() else { continue };
            if md.permissions().mode() & 0o111 != 0 && md.len() >= 64 && md.len() <= MAX_FILE {
                let mut magic = [0u8; 4];
                if fs::File::open(e.path())
                    .and_then(|mut f| f.read_exact(&mut magic))
                    .is_ok()
                    && magic == *b"\x7fELF"
                {
                    found.elf_binaries.push(rel_s);
                }
            }
        }
    }
    for v in [
        &mut found.python_metadata,
        &mut found.npm_packages,
        &mut found.npm_locks,
        &mut found.elf_binaries,
    ] {
        v.sort();
    }
    found
}

/// `…/node_modules/name/package.json` or `…/node_modules/@scope/name/package.json`.
fn is_node_module_manifest(rel: &Path) -> bool {
    let parts: Vec<_> = rel.iter().map(|c| c.to_string_lossy()).collect();
    let n = parts.len();
    if n >= 3 && parts[n - 3] == "node_modules" && !parts[n - 2].starts_with('@') {
        return true;
    }
    n >= 4 && parts[n - 4] == "node_modules" && parts[n - 3].starts_with('@')
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// The packages, in a stable order.
    pub packages: Vec<Package>,
    /// Entries that could not be read or parsed, naming the file.
    pub warnings: Vec<String>,
}

/// An additional root to scan (`BUILDKIT_SBOM_SCAN_CONTEXT`,
/// `BUILDKIT_SBOM_SCAN_STAGE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraRoot {
    /// `context` or the stage name.
    pub name: String,
    /// The directory.
    pub dir: PathBuf,
}

/// What to scan besides the image's root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// Additional roots.
    pub extra_roots: Vec<ExtraRoot>,
}

/// Scan one root with every scanner.
pub fn scan_root(dir: &Path) -> Result<ScanResult, ScanError> {
    let root = Root::open(dir)?;
    let found = walk(&root);
    let mut res = ScanResult::default();
    dpkg::scan(&root, &mut res);
    apk::scan(&root, &mut res);
    python::scan(&root, &found.python_metadata, &mut res);
    npm::scan(&root, &found.npm_packages, &found.npm_locks, &mut res);
    for b in &found.elf_binaries {
        let Some(bytes) = root.read(b) else { continue };
        let Some(elf) = elf::Elf::parse(&bytes) else {
            continue;
        };
        gobin::scan_binary(&elf, &bytes, b, &mut res);
        auditable::scan_binary(&elf, &bytes, b, &mut res);
    }
    dedupe(&mut res.packages);
    Ok(res)
}

/// Scan the image root `dir` and the extra roots of `opts`.
pub fn scan(dir: &Path, opts: &ScanOptions) -> Result<ScanResult, ScanError> {
    let mut res = scan_root(dir)?;
    for extra in &opts.extra_roots {
        let mut r = scan_root(&extra.dir)?;
        for p in &mut r.packages {
            p.origin = Some(extra.name.clone());
        }
        res.packages.extend(r.packages);
        res.warnings.extend(
            r.warnings
                .into_iter()
                .map(|w| format!("{}: {w}", extra.name)),
        );
    }
    Ok(res)
}

/// Unpack an image's layers (base first; gzip or plain tar) into the empty
/// directory `dir`, whiteouts applied, and scan the result with
/// [`scan`]. Owners and extended attributes are not restored: the
/// scanners only read file contents and modes. The caller removes `dir`.
pub fn scan_layers<R: Read>(
    layers: impl IntoIterator<Item = R>,
    dir: &Path,
    opts: &ScanOptions,
) -> Result<ScanResult, ScanError> {
    use xbuild_oci::layer::{apply_layer, ApplyFormat, ApplyOptions};
    let apply = ApplyOptions {
        chown: false,
        xattrs: false,
        format: ApplyFormat::Merged,
        ..ApplyOptions::default()
    };
    for (index, layer) in layers.into_iter().enumerate() {
        apply_layer(layer, dir, &apply).map_err(|source| ScanError::Unpack {
            index,
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    scan(dir, opts)
}

/// Drop repeats of the same package at the same place, keeping the first
/// (the richer record: installed packages are scanned before lock files).
fn dedupe(pkgs: &mut Vec<Package>) {
    let mut seen: BTreeMap<(String, String, String), ()> = BTreeMap::new();
    pkgs.retain(|p| {
        let key = match p.ecosystem {
            // A lock file and node_modules describe the same install.
            Ecosystem::Npm => (p.purl.clone(), String::new(), String::new()),
            _ => (p.purl.clone(), p.location.clone(), String::new()),
        };
        seen.insert(key, ()).is_none()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Two layers: the second deletes an npm package with a whiteout and
    /// replaces the dpkg database; the scan sees the merged filesystem.
    #[test]
    fn scan_of_layers_applies_whiteouts() {
        let base = tar_of(&[
            ("etc/os-release", b"ID=debian\nVERSION_ID=\"12\"\n"),
            (
                "var/lib/dpkg/status",
                b"Package: old\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n",
            ),
            (
                "app/node_modules/gone/package.json",
                br#"{"name":"gone","version":"1.0.0"}"#,
            ),
            (
                "app/node_modules/kept/package.json",
                br#"{"name":"kept","version":"2.0.0"}"#,
            ),
        ]);
        let top = tar_of(&[
            ("app/node_modules/.wh.gone", b""),
            (
                "var/lib/dpkg/status",
                b"Package: new\nStatus: install ok installed\nVersion: 2\nArchitecture: amd64\n",
            ),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let res = scan_layers(
            [std::io::Cursor::new(base), std::io::Cursor::new(top)],
            dir.path(),
            &ScanOptions::default(),
        )
        .unwrap();
        let purls: Vec<&str> = res.packages.iter().map(|p| p.purl.as_str()).collect();
        assert_eq!(
            purls,
            vec![
                "pkg:deb/debian/new@2?arch=amd64&distro=debian-12",
                "pkg:npm/kept@2.0.0"
            ]
        );
        let bad = scan_layers(
            [std::io::Cursor::new(b"\x28\xb5\x2f\xfd zstd".to_vec())],
            dir.path(),
            &ScanOptions::default(),
        );
        assert!(matches!(bad, Err(ScanError::Unpack { index: 0, .. })));
    }

    #[test]
    fn resolve_stays_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("etc/real"), "ID=alpine\nVERSION_ID=3.19.1\n").unwrap();
        symlink("/etc/real", r.join("etc/os-release")).unwrap();
        // An absolute link to a host file must resolve inside the root.
        symlink("/etc/passwd", r.join("etc/escape")).unwrap();
        symlink("../../../../etc/hostname", r.join("etc/up")).unwrap();
        symlink("loop", r.join("etc/loop")).unwrap();
        let root = Root::open(r).unwrap();
        assert_eq!(root.os_release().distro().as_deref(), Some("alpine-3.19.1"));
        assert!(root.read("/etc/escape").is_none());
        assert!(root.read("/etc/up").is_none());
        assert!(root.read("/etc/loop").is_none());
        assert!(Root::open(&r.join("etc/real")).is_err());
    }

    #[test]
    fn walk_finds_candidates() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in [
            "usr/lib/python3/dist-packages/six-1.16.0.dist-info",
            "app/node_modules/@scope/pkg",
            "app/node_modules/left-pad/node_modules/x",
            "proc/1",
            "usr/bin",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("app/node_modules/@scope/pkg/package.json"), "{}").unwrap();
        fs::write(r.join("app/node_modules/left-pad/package.json"), "{}").unwrap();
        fs::write(
            r.join("app/node_modules/left-pad/node_modules/x/package.json"),
            "{}",
        )
        .unwrap();
        fs::write(r.join("app/package.json"), "{}").unwrap();
        fs::write(r.join("app/package-lock.json"), "{}").unwrap();
        fs::write(r.join("usr/lib/python3/dist-packages/old.egg-info"), "").unwrap();
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(100, 0);
        fs::write(r.join("usr/bin/tool"), &elf).unwrap();
        fs::set_permissions(r.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(r.join("usr/bin/data"), &elf).unwrap();
        fs::set_permissions(r.join("usr/bin/data"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(r.join("proc/1/exe"), &elf).unwrap();
        let f = walk(&Root::open(r).unwrap());
        assert_eq!(
            f.python_metadata,
            vec![
                "/usr/lib/python3/dist-packages/old.egg-info",
                "/usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA"
            ]
        );
        assert_eq!(
            f.npm_packages,
            vec![
                "/app/node_modules/@scope/pkg/package.json",
                "/app/node_modules/left-pad/node_modules/x/package.json",
                "/app/node_modules/left-pad/package.json",
            ]
        );
        assert_eq!(f.npm_locks, vec!["/app/package-lock.json"]);
        assert_eq!(f.elf_binaries, vec!["/usr/bin/tool"]);
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    /// A tiny deterministic generator (xorshift), so the inputs are the
    /// same on every run.
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Every parser takes arbitrary bytes (and near-valid text) without
    /// panicking.
    #[test]
    fn parsers_survive_garbage() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::open(t.path()).unwrap();
        for seed in 1..300u64 {
            let b = bytes(seed, (seed as usize * 37) % 4096);
            let text = String::from_utf8_lossy(&b).to_string();
            let mut res = ScanResult::default();
            let _ = dpkg::paragraphs(&text);
            apk::parse(&text, &root, &mut res);
            let _ = python::parse(&text, "/x");
            let _ = npm::parse_package_json(&b, "/x");
            let _ = npm::parse_lock(&b, "/x");
            let _ = auditable::parse_section(&b);
            let _ = gobin::parse_modinfo("go1.22", &text);
            let _ = license::normalize(&text);
            let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
            elf.extend_from_slice(&b);
            if let Some(e) = elf::Elf::parse(&elf) {
                gobin::scan_binary(&e, &elf, "/x", &mut res);
                auditable::scan_binary(&e, &elf, "/x", &mut res);
            }
            // Near-valid: a Go build info header followed by garbage.
            let mut go = b"\xff Go buildinf:\x08\x02".to_vec();
            go.resize(32, 0);
            go.extend_from_slice(&b);
            let _ = gobin::parse_modinfo("go", &String::from_utf8_lossy(&go));
        }
    }
}
