//! Alpine packages: `/lib/apk/db/installed`, blank-line separated records
//! of one-letter fields (`P` name, `V` version, `A` arch, `L` license, `o`
//! origin, `m` maintainer, `U` url, `T` description).

use super::{Ecosystem, Package, Root, ScanResult};
use crate::purl::Purl;

/// Path of the apk database.
pub const INSTALLED: &str = "/lib/apk/db/installed";

/// Parse the database text into packages.
pub fn parse(text: &str, root: &Root, res: &mut ScanResult) {
    let os = root.os_release();
    let ns = os.id.clone().unwrap_or_else(|| "alpine".into());
    let mut rec: Vec<(char, &str)> = Vec::new();
    let flush = |rec: &mut Vec<(char, &str)>, res: &mut ScanResult| {
        if rec.is_empty() {
            return;
        }
        let get = |c: char| rec.iter().find(|(k, _)| *k == c).map(|(_, v)| *v);
        match (get('P'), get('V')) {
            (Some(name), version) => {
                let version = version.unwrap_or("");
                let mut purl = Purl::new("apk", name)
                    .namespace(&ns)
                    .version(version)
                    .qualifier("arch", get('A').unwrap_or(""));
                if let Some(o) = get('o').filter(|o| *o != name) {
                    purl = purl.qualifier("upstream", o);
                }
                if let Some(d) = os.distro() {
                    purl = purl.qualifier("distro", &d);
                }
                let mut p =
                    Package::new(Ecosystem::Apk, name, version, purl.to_string(), INSTALLED);
                p.license = get('L').map(str::to_string);
                p.supplier = get('m').map(str::to_string);
                p.homepage = get('U').map(str::to_string);
                p.summary = get('T').map(str::to_string);
                res.packages.push(p);
            }
            (None, _) => res
                .warnings
                .push(format!("{INSTALLED}: record without P: (package name)")),
        }
        rec.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut rec, res);
            continue;
        }
        let mut chars = line.chars();
        if let (Some(k), Some(':')) = (chars.next(), chars.next()) {
            // File entries (F, R, a, Z, …) repeat; only the first of each
            // package-level key matters, which `get` picks.
            rec.push((k, &line[k.len_utf8() + 1..]));
        }
    }
    flush(&mut rec, res);
}

/// Add the installed Alpine packages of `root` to `res`.
pub fn scan(root: &Root, res: &mut ScanResult) {
    if let Some(bytes) = root.read(INSTALLED) {
        parse(&String::from_utf8_lossy(&bytes), root, res);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Records in the layout apk 2 writes for an Alpine 3.19 base (fields
    /// and values as `apk info -a` shows them for these packages).
    const DB: &str = "C:Q1bIS4tCbNcAVUzVd/vP3VbuL0gwE=
P:musl
V:1.2.4_git20230717-r4
A:x86_64
S:407278
I:667648
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Timo Teräs <timo.teras@iki.fi>
t:1699271358
c:ca7f2ab5e88794e4e654b40776f8a92256f50639
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1+zEJiG53Cxy7DkV5oZQqeWnzybY=

C:Q1cBXbn5J4UfbWxQ9Nf3BufrdDVzs=
P:busybox-binsh
V:1.36.1-r15
A:x86_64
S:1543
I:8192
T:busybox ash /bin/sh
U:https://busybox.net/
L:GPL-2.0-only
o:busybox
m:Sören Tempel <soeren+alpine@soeren-tempel.net>
t:1699383189
c:d1b6f274f29076967826e0ecf6ebcaa5d360272f
D:busybox=1.36.1-r15
p:/bin/sh cmd:sh=1.36.1-r15
F:bin
R:sh
a:0:0:777
Z:Q1pcfTfDNEbNKQc2s1tia7da05M8Q=

C:Q1x
V:9
";

    #[test]
    fn alpine_db() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("lib/apk/db")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("lib/apk/db/installed"), DB).unwrap();
        fs::write(
            r.join("etc/os-release"),
            "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.19.1\n",
        )
        .unwrap();
        let root = Root::open(r).unwrap();
        let mut res = ScanResult::default();
        scan(&root, &mut res);
        assert_eq!(res.packages.len(), 2);
        assert_eq!(
            res.packages[0].purl,
            "pkg:apk/alpine/musl@1.2.4_git20230717-r4?arch=x86_64&distro=alpine-3.19.1"
        );
        assert_eq!(
            res.packages[1].purl,
            "pkg:apk/alpine/busybox-binsh@1.36.1-r15?arch=x86_64&distro=alpine-3.19.1&upstream=busybox"
        );
        assert_eq!(res.packages[1].license.as_deref(), Some("GPL-2.0-only"));
        assert_eq!(
            res.packages[0].supplier.as_deref(),
            Some("Timo Teräs <timo.teras@iki.fi>")
        );
        assert_eq!(res.warnings.len(), 1, "{:?}", res.warnings);
    }
}
