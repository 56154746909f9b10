//! npm packages: `node_modules/[@scope/]name/package.json` of installed
//! packages, and `package-lock.json` files (lockfile v1 `dependencies`,
//! v2/v3 `packages`) for what a lock pins.

use super::{Ecosystem, Package, Root, ScanResult};
use crate::purl::Purl;
use serde_json::Value;

/// The purl of an npm package name (`@scope/name` puts the scope in the
/// namespace).
pub fn purl(name: &str, version: &str) -> String {
    match name.strip_prefix('@').and_then(|n| n.split_once('/')) {
        Some((scope, n)) => Purl::new("npm", n)
            .namespace(&format!("@{scope}"))
            .version(version)
            .to_string(),
        None => Purl::new("npm", name).version(version).to_string(),
    }
}

/// The `license` field: a string, `{ "type": … }`, or the old `licenses`
/// array (joined with OR).
fn license(v: &Value) -> Option<String> {
    match v.get("license") {
        Some(Value::String(s)) if !s.is_empty() => return Some(s.clone()),
        Some(Value::Object(o)) => {
            if let Some(Value::String(s)) = o.get("type") {
                return Some(s.clone());
            }
        }
        _ => {}
    }
    let arr = v.get("licenses")?.as_array()?;
    let names: Vec<String> = arr
        .iter()
        .filter_map(|l| match l {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("type").and_then(Value::as_str).map(str::to_string),
            _ => None,
        })
        .collect();
    (!names.is_empty()).then(|| names.join(" OR "))
}

fn author(v: &Value) -> Option<String> {
    match v.get("author")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => {
            let name = o.get("name").and_then(Value::as_str)?;
            match o.get("email").and_then(Value::as_str) {
                Some(e) => Some(format!("{name} <{e}>")),
                None => Some(name.to_string()),
            }
        }
        _ => None,
    }
}

/// Parse an installed package's `package.json`.
pub fn parse_package_json(bytes: &[u8], location: &str) -> Option<Package> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let name = v.get("name")?.as_str()?;
    let version = v.get("version").and_then(Value::as_str).unwrap_or("");
    let mut p = Package::new(Ecosystem::Npm, name, version, purl(name, version), location);
    p.license = license(&v);
    p.supplier = author(&v);
    p.homepage = v
        .get("homepage")
        .and_then(Value::as_str)
        .map(str::to_string);
    p.summary = v
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_string);
    Some(p)
}

/// The packages a `package-lock.json` pins (the root project excluded).
pub fn parse_lock(bytes: &[u8], location: &str) -> Option<Vec<Package>> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let mut out = Vec::new();
    if let Some(pkgs) = v.get("packages").and_then(Value::as_object) {
        for (path, info) in pkgs {
            // "" is the project itself; links point at workspace folders.
            let Some(idx) = path.rfind("node_modules/") else {
                continue;
            };
            if info.get("link").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            let name = info
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or(&path[idx + "node_modules/".len()..]);
            let Some(version) = info.get("version").and_then(Value::as_str) else {
                continue;
            };
            let mut p = Package::new(Ecosystem::Npm, name, version, purl(name, version), location);
            p.license = license(info);
            out.push(p);
        }
        return Some(out);
    }
    fn walk_v1(deps: &serde_json::Map<String, Value>, location: &str, out: &mut Vec<Package>) {
        for (name, info) in deps {
            if let Some(version) = info.get("version").and_then(Value::as_str) {
                // Local links ("file:…") are not registry packages.
                if !version.starts_with("file:") {
                    out.push(Package::new(
                        Ecosystem::Npm,
                        name,
                        version,
                        purl(name, version),
                        location,
                    ));
                }
            }
            if let Some(d) = info.get("dependencies").and_then(Value::as_object) {
                walk_v1(d, location, out);
            }
        }
    }
    if let Some(deps) = v.get("dependencies").and_then(Value::as_object) {
        walk_v1(deps, location, &mut out);
    }
    Some(out)
}

/// Add installed packages, then lock file entries, to `res`.
pub fn scan(root: &Root, manifests: &[String], locks: &[String], res: &mut ScanResult) {
    for m in manifests {
        let Some(bytes) = root.read(m) else { continue };
        match parse_package_json(&bytes, m) {
            Some(p) => res.packages.push(p),
            None => res
                .warnings
                .push(format!("{m}: not a package.json with a name")),
        }
    }
    for l in locks {
        let Some(bytes) = root.read(l) else { continue };
        match parse_lock(&bytes, l) {
            Some(ps) => res.packages.extend(ps),
            None => res.warnings.push(format!("{l}: not valid JSON")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    // The package.json npm 10 leaves in node_modules after `npm install
    // express@4.18.2` (trimmed of scripts and devDependencies).
    const EXPRESS: &str = r#"{
  "name": "express",
  "description": "Fast, unopinionated, minimalist web framework",
  "version": "4.18.2",
  "author": "TJ Holowaychuk <tj@vision-media.ca>",
  "contributors": ["Aaron Heckmann <aaron.heckmann+github@gmail.com>"],
  "license": "MIT",
  "repository": "expressjs/express",
  "homepage": "http://expressjs.com/",
  "keywords": ["express", "framework"],
  "dependencies": {"accepts": "~1.3.8", "array-flatten": "1.1.1"},
  "engines": {"node": ">= 0.10.0"}
}"#;

    const BABEL: &str = r#"{"name":"@babel/core","version":"7.23.9","license":{"type":"MIT"},"author":{"name":"The Babel Team","email":"team@babeljs.io","url":"https://babel.dev/team"}}"#;

    const LOCK_V3: &str = r#"{
  "name": "app", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
  "packages": {
    "": {"name": "app", "version": "1.0.0", "dependencies": {"express": "^4.18.2"}},
    "node_modules/express": {"version": "4.18.2", "resolved": "https://registry.npmjs.org/express/-/express-4.18.2.tgz", "integrity": "sha512-5/PsL6iGPdfQ/lKM1UuielYgv3BUoJfz1aUwU9vHZ+J7gyvwdQXFEBIEIaxeGf0GIcreATNyBExtalisDbuMqQ==", "license": "MIT"},
    "node_modules/express/node_modules/debug": {"version": "2.6.9", "license": "MIT"},
    "node_modules/@babel/core": {"version": "7.23.9", "dev": true, "license": "MIT"},
    "packages/local": {"version": "0.0.1"},
    "node_modules/local": {"resolved": "packages/local", "link": true}
  }
}"#;

    const LOCK_V1: &str = r#"{"name":"old","version":"1.0.0","lockfileVersion":1,"requires":true,
  "dependencies":{"ms":{"version":"2.0.0","resolved":"https://registry.npmjs.org/ms/-/ms-2.0.0.tgz"},
   "debug":{"version":"2.6.9","requires":{"ms":"2.0.0"},"dependencies":{"ms":{"version":"2.1.3"}}},
   "mine":{"version":"file:../mine"}}}"#;

    #[test]
    fn installed_and_locked() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("app/node_modules/express")).unwrap();
        fs::create_dir_all(r.join("app/node_modules/@babel/core")).unwrap();
        fs::create_dir_all(r.join("old")).unwrap();
        fs::write(r.join("app/node_modules/express/package.json"), EXPRESS).unwrap();
        fs::write(r.join("app/node_modules/@babel/core/package.json"), BABEL).unwrap();
        fs::write(r.join("app/package-lock.json"), LOCK_V3).unwrap();
        fs::write(r.join("old/package-lock.json"), LOCK_V1).unwrap();
        let res = super::super::scan_root(r).unwrap();
        let mut purls: Vec<(&str, &str)> = res
            .packages
            .iter()
            .map(|p| (p.purl.as_str(), p.license.as_deref().unwrap_or("-")))
            .collect();
        purls.sort();
        assert_eq!(
            purls,
            vec![
                ("pkg:npm/%40babel/core@7.23.9", "MIT"),
                ("pkg:npm/debug@2.6.9", "MIT"),
                ("pkg:npm/express@4.18.2", "MIT"),
                ("pkg:npm/ms@2.0.0", "-"),
                ("pkg:npm/ms@2.1.3", "-"),
            ]
        );
        let babel = &res.packages[0];
        assert_eq!(
            babel.supplier.as_deref(),
            Some("The Babel Team <team@babeljs.io>")
        );
        assert_eq!(babel.location, "/app/node_modules/@babel/core/package.json");
        assert_eq!(
            res.packages[1].homepage.as_deref(),
            Some("http://expressjs.com/")
        );
    }

    #[test]
    fn bad_json_is_a_warning() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("node_modules/x")).unwrap();
        fs::write(r.join("node_modules/x/package.json"), "{not json").unwrap();
        let res = super::super::scan_root(r).unwrap();
        assert!(res.packages.is_empty());
        assert_eq!(res.warnings.len(), 1);
        assert!(res.warnings[0].contains("/node_modules/x/package.json"));
    }
}
