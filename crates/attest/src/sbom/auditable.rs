//! Rust binaries built with `cargo auditable`: the `.dep-v0` section holds
//! the dependency tree as zlib-compressed JSON (`{"packages": [{"name",
//! "version", "source", "kind", "dependencies", "root"}]}`).

use super::elf::Elf;
use super::{Ecosystem, Package, ScanResult};
use crate::purl::Purl;
use serde::Deserialize;
use std::io::Read;

/// The section `cargo auditable` writes.
pub const SECTION: &str = ".dep-v0";
/// Largest decompressed document accepted.
const MAX_JSON: u64 = 16 << 20;

/// One crate of the dependency tree.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AuditablePackage {
    /// Crate name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `crates.io`, `local`, `git`, `registry` or another source.
    #[serde(default)]
    pub source: String,
    /// `runtime` (default) or `build`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Indexes of dependencies.
    #[serde(default)]
    pub dependencies: Vec<usize>,
    /// True for the binary's own crate.
    #[serde(default)]
    pub root: bool,
}

#[derive(Debug, Deserialize)]
struct VersionInfo {
    packages: Vec<AuditablePackage>,
}

/// Decompress and parse a `.dep-v0` section.
pub fn parse_section(data: &[u8]) -> Option<Vec<AuditablePackage>> {
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .take(MAX_JSON)
        .read_to_end(&mut json)
        .ok()?;
    let v: VersionInfo = serde_json::from_slice(&json).ok()?;
    Some(v.packages)
}

/// Add the crates of a `cargo auditable` binary at `location` to `res`.
pub fn scan_binary(elf: &Elf, bytes: &[u8], location: &str, res: &mut ScanResult) {
    if let Some(data) = elf.section_data(bytes, SECTION) {
        scan_section(data, location, res);
    }
}

/// Add the crates in section bytes `data` of the binary at `location`.
pub fn scan_section(data: &[u8], location: &str, res: &mut ScanResult) {
    let Some(pkgs) = parse_section(data) else {
        res.warnings
            .push(format!("{location}: unreadable {SECTION} section"));
        return;
    };
    for p in pkgs {
        let purl = Purl::new("cargo", &p.name).version(&p.version).to_string();
        res.packages.push(Package::new(
            Ecosystem::Cargo,
            &p.name,
            &p.version,
            purl,
            location,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;
    use std::process::Command;

    /// The document `cargo auditable` 0.6 embeds for a binary `hello` that
    /// depends on `itoa` (runtime) and `cc` (build).
    const DOC: &str = r#"{"packages":[{"name":"cc","version":"1.0.83","source":"crates.io","kind":"build"},{"name":"hello","version":"0.1.0","source":"local","dependencies":[0,2],"root":true},{"name":"itoa","version":"1.0.10","source":"crates.io"}]}"#;

    fn zlib(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    /// A real ELF file (this machine's `/bin/true`) given a `.dep-v0`
    /// section by binutils' objcopy, the way the linker places it.
    #[test]
    fn section_added_by_objcopy() {
        if Command::new("objcopy").arg("--version").output().is_err()
            || !Path::new("/bin/true").exists()
        {
            eprintln!("skipped: objcopy or /bin/true missing");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let sec = t.path().join("dep.z");
        std::fs::write(&sec, zlib(DOC.as_bytes())).unwrap();
        let bin = t.path().join("hello");
        let st = Command::new("objcopy")
            .arg(format!("--add-section=.dep-v0={}", sec.display()))
            .arg("/bin/true")
            .arg(&bin)
            .status()
            .unwrap();
        assert!(st.success());
        let bytes = std::fs::read(&bin).unwrap();
        let elf = Elf::parse(&bytes).unwrap();
        let mut res = ScanResult::default();
        scan_binary(&elf, &bytes, "/usr/local/bin/hello", &mut res);
        let purls: Vec<&str> = res.packages.iter().map(|p| p.purl.as_str()).collect();
        assert_eq!(
            purls,
            vec![
                "pkg:cargo/cc@1.0.83",
                "pkg:cargo/hello@0.1.0",
                "pkg:cargo/itoa@1.0.10"
            ]
        );
        let pkgs = parse_section(&zlib(DOC.as_bytes())).unwrap();
        assert!(pkgs[1].root && pkgs[1].dependencies == vec![0, 2]);
        assert_eq!(pkgs[0].kind.as_deref(), Some("build"));
        // Corrupt data is a warning, not a panic.
        let mut res = ScanResult::default();
        scan_section(b"not zlib", "/x", &mut res);
        assert!(res.packages.is_empty() && res.warnings.len() == 1);
    }

    /// A binary built by `cargo auditable` itself, when it is installed
    /// (`cargo install cargo-auditable`). Builds offline with no
    /// dependencies, so it needs no registry access.
    #[test]
    fn real_cargo_auditable_binary() {
        let ok = Command::new("cargo")
            .args(["auditable", "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("skipped: cargo-auditable is not installed (cargo install cargo-auditable)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir_all(d.join("src")).unwrap();
        std::fs::write(
            d.join("Cargo.toml"),
            "[package]\nname = \"audited-hello\"\nversion = \"0.3.1\"\nedition = \"2021\"\n\n[workspace]\n",
        )
        .unwrap();
        std::fs::write(d.join("src/main.rs"), "fn main() { println!(\"hi\"); }\n").unwrap();
        let out = Command::new("cargo")
            .args(["auditable", "build", "--offline", "--quiet"])
            .current_dir(d)
            .env("CARGO_TARGET_DIR", d.join("target"))
            .env_remove("RUSTC_WRAPPER")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(d.join("target/debug/audited-hello")).unwrap();
        let elf = Elf::parse(&bytes).unwrap();
        let mut res = ScanResult::default();
        scan_binary(&elf, &bytes, "/bin/audited-hello", &mut res);
        assert_eq!(res.packages.len(), 1, "{:?}", res);
        assert_eq!(res.packages[0].purl, "pkg:cargo/audited-hello@0.3.1");
    }
}
