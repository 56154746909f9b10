//! Go binaries: the build information the Go linker embeds (`go version
//! -m`), found in the `.go.buildinfo` section (or, without section headers,
//! at a 16-byte aligned `\xff Go buildinf:` magic). Both layouts are read:
//! Go 1.18+ inline strings, and older pointers to string headers.

use super::elf::Elf;
use super::{Ecosystem, Package, ScanResult};
use crate::purl::Purl;

const MAGIC: &[u8] = b"\xff Go buildinf:";

/// What a binary's build info says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildInfo {
    /// The toolchain (`go1.21.5`).
    pub go_version: String,
    /// The main package path (`path` line).
    pub path: String,
    /// The main module `(path, version)`.
    pub main: Option<(String, String)>,
    /// Dependencies `(path, version)`, replacements applied.
    pub deps: Vec<(String, String)>,
    /// `build` settings (`GOOS=linux`, `vcs.revision=…`).
    pub settings: Vec<(String, String)>,
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        x |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((x, i + 1));
        }
    }
    None
}

fn varint_string(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (n, used) = uvarint(b)?;
    let n = usize::try_from(n).ok()?;
    let rest = b.get(used..)?;
    Some((rest.get(..n)?, rest.get(n..)?))
}

/// Locate the build info blob: the section, else an aligned magic.
fn blob<'a>(elf: &Elf, bytes: &'a [u8]) -> Option<&'a [u8]> {
    if let Some(d) = elf.section_data(bytes, ".go.buildinfo") {
        if d.starts_with(MAGIC) {
            return Some(d);
        }
    }
    // The Go linker always writes the section; only a binary stripped of
    // its section headers needs the (slow) search for the magic.
    if !elf.sections().is_empty() {
        return None;
    }
    let mut off = 0;
    while off + 32 <= bytes.len() {
        if bytes[off..].starts_with(MAGIC) {
            return Some(&bytes[off..]);
        }
        off += 16;
    }
    None
}

/// Read a Go string header `{ptr, len}` at virtual address `addr`.
fn go_string(elf: &Elf, bytes: &[u8], addr: u64, ptr_size: usize, le: bool) -> Option<Vec<u8>> {
    let read_word = |b: &[u8]| -> Option<u64> {
        Some(match (ptr_size, le) {
            (8, true) => u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            (8, false) => u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            (4, true) => u64::from(u32::from_le_bytes(b.get(..4)?.try_into().ok()?)),
            (4, false) => u64::from(u32::from_be_bytes(b.get(..4)?.try_into().ok()?)),
            _ => return None,
        })
    };
    let hdr = elf.read_at_addr(bytes, addr, 2 * ptr_size as u64)?;
    let data = read_word(hdr)?;
    let len = read_word(&hdr[ptr_size..])?;
    if len > 1 << 24 {
        return None;
    }
    Some(elf.read_at_addr(bytes, data, len)?.to_vec())
}

/// Extract the version and module info strings.
fn strings(elf: &Elf, bytes: &[u8]) -> Option<(String, String)> {
    let b = blob(elf, bytes)?;
    let ptr_size = usize::from(*b.get(14)?);
    let flags = *b.get(15)?;
    let (vers, modinfo) = if flags & 2 != 0 {
        let (v, rest) = varint_string(b.get(32..)?)?;
        let (m, _) = varint_string(rest)?;
        (v.to_vec(), m.to_vec())
    } else {
        if ptr_size != 4 && ptr_size != 8 {
            return None;
        }
        let le = flags & 1 == 0;
        let word = |off: usize| -> Option<u64> {
            let s = b.get(off..off + ptr_size)?;
            Some(match (ptr_size, le) {
                (8, true) => u64::from_le_bytes(s.try_into().ok()?),
                (8, false) => u64::from_be_bytes(s.try_into().ok()?),
                (_, true) => u64::from(u32::from_le_bytes(s.try_into().ok()?)),
                (_, false) => u64::from(u32::from_be_bytes(s.try_into().ok()?)),
            })
        };
        let v = go_string(elf, bytes, word(16)?, ptr_size, le)?;
        let m = go_string(elf, bytes, word(16 + ptr_size)?, ptr_size, le)?;
        (v, m)
    };
    let mut modinfo = modinfo;
    // The module info is framed by 16-byte sentinels.
    if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        modinfo = modinfo[16..modinfo.len() - 16].to_vec();
    }
    Some((
        String::from_utf8_lossy(&vers).to_string(),
        String::from_utf8_lossy(&modinfo).to_string(),
    ))
}

/// Parse the module info text (`path`, `mod`, `dep`, `=>`, `build` lines).
pub fn parse_modinfo(go_version: &str, text: &str) -> BuildInfo {
    let mut bi = BuildInfo {
        go_version: go_version.to_string(),
        ..Default::default()
    };
    enum Last {
        None,
        Main,
        Dep,
    }
    let mut last = Last::None;
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["path", p, ..] => bi.path = p.to_string(),
            ["mod", p, v, ..] => {
                bi.main = Some((p.to_string(), v.to_string()));
                last = Last::Main;
            }
            ["dep", p, v, ..] => {
                bi.deps.push((p.to_string(), v.to_string()));
                last = Last::Dep;
            }
            ["=>", p, v, ..] => {
                let local = p.starts_with('.') || p.starts_with('/');
                let orig = match last {
                    Last::Main => bi.main.clone(),
                    Last::Dep => bi.deps.last().cloned(),
                    Last::None => None,
                };
                // A directory replacement keeps the module's name: its code
                // is whatever the directory held, so no version applies.
                let repl = match (local, orig) {
                    (true, Some((op, _))) => (op, "(devel)".to_string()),
                    _ => (p.to_string(), v.to_string()),
                };
                match last {
                    Last::Main => bi.main = Some(repl),
                    Last::Dep => {
                        if let Some(d) = bi.deps.last_mut() {
                            *d = repl;
                        }
                    }
                    Last::None => {}
                }
            }
            ["build", kv, ..] => {
                if let Some((k, v)) = kv.split_once('=') {
                    bi.settings
                        .push((k.to_string(), v.trim_matches('"').to_string()));
                }
            }
            _ => {}
        }
    }
    bi
}

/// The build info of an ELF binary, if it is a Go binary.
pub fn build_info(elf: &Elf, bytes: &[u8]) -> Option<BuildInfo> {
    let (v, m) = strings(elf, bytes)?;
    if !v.starts_with("go") && !v.starts_with("devel") {
        return None;
    }
    Some(parse_modinfo(&v, &m))
}

/// The purl of a Go module path.
pub fn purl(path: &str, version: &str) -> String {
    let (ns, name) = match path.rsplit_once('/') {
        Some((ns, n)) => (ns, n),
        None => ("", path),
    };
    let version = if version == "(devel)" { "" } else { version };
    Purl::new("golang", name)
        .namespace(ns)
        .version(version)
        .to_string()
}

/// Add the modules of a Go binary at `location` to `res`.
pub fn scan_binary(elf: &Elf, bytes: &[u8], location: &str, res: &mut ScanResult) {
    let Some(bi) = build_info(elf, bytes) else {
        return;
    };
    let mut add = |path: &str, version: &str| {
        res.packages.push(Package::new(
            Ecosystem::Go,
            path,
            version,
            purl(path, version),
            location,
        ));
    };
    if let Some((p, v)) = &bi.main {
        add(p, v);
    }
    for (p, v) in &bi.deps {
        add(p, v);
    }
    // The standard library is linked in too, at the toolchain's version.
    let std_version = bi.go_version.trim_start_matches("go");
    if !std_version.is_empty() && !std_version.starts_with("devel") {
        add("stdlib", &format!("v{std_version}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn modinfo_lines() {
        let text = "path\texample.com/hello\nmod\texample.com/hello\t(devel)\t\ndep\tgithub.com/pkg/errors\tv0.9.1\th1:abc=\ndep\tgolang.org/x/text\tv0.3.0\th1:x=\n=>\tgolang.org/x/text\tv0.14.0\th1:y=\nbuild\t-compiler=gc\nbuild\tGOOS=linux\n";
        let bi = parse_modinfo("go1.21.5", text);
        assert_eq!(bi.path, "example.com/hello");
        assert_eq!(
            bi.main,
            Some(("example.com/hello".into(), "(devel)".into()))
        );
        assert_eq!(
            bi.deps,
            vec![
                ("github.com/pkg/errors".into(), "v0.9.1".into()),
                ("golang.org/x/text".into(), "v0.14.0".into())
            ]
        );
        assert!(bi.settings.contains(&("GOOS".into(), "linux".into())));
        assert_eq!(
            purl("github.com/pkg/errors", "v0.9.1"),
            "pkg:golang/github.com/pkg/errors@v0.9.1"
        );
        assert_eq!(
            purl("example.com/hello", "(devel)"),
            "pkg:golang/example.com/hello"
        );
    }

    /// A binary built by the real Go toolchain with a module dependency
    /// vendored locally (no network), compared with `go version -m`.
    #[test]
    fn real_go_binary() {
        if Command::new("go").arg("version").output().is_err() {
            eprintln!("skipped: the go toolchain is not installed (apt-get install golang-go)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let w = |p: &str, s: &str| {
            let path = d.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, s).unwrap();
        };
        w("go.mod", "module example.com/hello\n\ngo 1.18\n\nrequire example.org/greet v1.2.3\n\nreplace example.org/greet v1.2.3 => ./greet\n");
        w("main.go", "package main\n\nimport \"example.org/greet\"\n\nfunc main() { println(greet.Hello()) }\n");
        w("greet/go.mod", "module example.org/greet\n\ngo 1.18\n");
        w(
            "greet/greet.go",
            "package greet\n\nfunc Hello() string { return \"hi\" }\n",
        );
        let out = Command::new("go")
            .args(["build", "-o", "hello", "."])
            .current_dir(d)
            .env("GOFLAGS", "-mod=mod")
            .env("GOCACHE", d.join(".cache"))
            .env("GOPATH", d.join(".gopath"))
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(d.join("hello")).unwrap();
        let elf = Elf::parse(&bytes).unwrap();
        let bi = build_info(&elf, &bytes).expect("build info");
        // What the toolchain itself reports.
        let gv = Command::new("go")
            .args(["version", "-m"])
            .arg(d.join("hello"))
            .output()
            .unwrap();
        let gv = String::from_utf8_lossy(&gv.stdout).to_string();
        assert!(gv.contains(&bi.go_version), "{gv}");
        assert_eq!(bi.path, "example.com/hello");
        assert_eq!(bi.main.as_ref().unwrap().0, "example.com/hello");
        // The dependency, with its local replacement applied.
        assert_eq!(
            bi.deps,
            vec![("example.org/greet".to_string(), "(devel)".to_string())]
        );
        assert!(gv.contains("dep\texample.org/greet\tv1.2.3"), "{gv}");
        let mut res = ScanResult::default();
        scan_binary(&elf, &bytes, "/usr/bin/hello", &mut res);
        let purls: Vec<&str> = res.packages.iter().map(|p| p.purl.as_str()).collect();
        assert_eq!(purls[0], "pkg:golang/example.com/hello");
        assert!(
            purls.last().unwrap().starts_with("pkg:golang/stdlib@v1."),
            "{purls:?}"
        );
        // A non-Go binary has none.
        let t = std::fs::read("/bin/true").unwrap();
        assert!(build_info(&Elf::parse(&t).unwrap(), &t).is_none());
    }
}
