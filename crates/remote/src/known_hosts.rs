//! OpenSSH `known_hosts` files: look a host's key up, record a new one.
//!
//! Supports what OpenSSH writes and most people keep: comma-separated host
//! patterns with `*`/`?` wildcards and `!` negation, `[host]:port` for a
//! port other than 22, hashed entries (`|1|salt|hmac`, as written with
//! `HashKnownHosts yes`), `@revoked` markers; `@cert-authority` lines are
//! skipped (xbuild does not accept host certificates). Malformed lines are
//! skipped, as OpenSSH does.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::{Algorithm, HashAlg, PublicKey};
use sha1::Sha1;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A `known_hosts` file that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct KnownHostsError {
    /// "reading" or "writing".
    pub action: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub source: std::io::Error,
}

/// Where a recorded key was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// What the files say about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// The key is recorded for this host.
    Known(Location),
    /// Nothing is recorded for this host.
    Unknown,
    /// Other keys are recorded for this host: the key changed.
    Changed {
        /// The first recorded key for the host.
        recorded: Location,
        /// Its SHA256 fingerprint.
        recorded_fingerprint: String,
    },
    /// The key is marked `@revoked`.
    Revoked(Location),
}

/// The name a host is recorded under: `host`, or `[host]:port` when the
/// port is not 22.
pub fn host_entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The SHA256 fingerprint OpenSSH shows: `SHA256:base64`.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

struct Entry {
    line: usize,
    revoked: bool,
    key: PublicKey,
}

fn read_entries(path: &Path, name: &str) -> Result<Vec<Entry>, KnownHostsError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(KnownHostsError {
                action: "reading",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let mut revoked = false;
        if let Some(marker) = first.strip_prefix('@') {
            match marker {
                "revoked" => revoked = true,
                _ => continue, // @cert-authority and unknown markers
            }
            first = match fields.next() {
                Some(f) => f,
                None => continue,
            };
        }
        let (Some(alg), Some(b64)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !hosts_match(first, name) {
            continue;
        }
        let Ok(key) = PublicKey::from_openssh(&format!("{alg} {b64}")) else {
            continue;
        };
        out.push(Entry {
            line: i + 1,
            revoked,
            key,
        });
    }
    Ok(out)
}

/// Look `key` up for `host`:`port` in `files` (missing files count as empty).
pub fn check(
    files: &[PathBuf],
    host: &str,
    port: u16,
    key: &PublicKey,
) -> Result<HostKeyStatus, KnownHostsError> {
    let name = host_entry_name(host, port);
    let mut known = None;
    let mut other = None;
    for path in files {
        for e in read_entries(path, &name)? {
            let loc = Location {
                path: path.clone(),
                line: e.line,
            };
            let same = e.key.key_data() == key.key_data();
            if e.revoked {
                if same {
                    return Ok(HostKeyStatus::Revoked(loc));
                }
            } else if same {
                known.get_or_insert(loc);
            } else {
                other.get_or_insert((loc, fingerprint(&e.key)));
            }
        }
    }
    Ok(match (known, other) {
        (Some(loc), _) => HostKeyStatus::Known(loc),
        (None, Some((recorded, recorded_fingerprint))) => HostKeyStatus::Changed {
            recorded,
            recorded_fingerprint,
        },
        (None, None) => HostKeyStatus::Unknown,
    })
}

/// The key algorithms recorded for a host, so the client asks the server
/// for one of those first (as OpenSSH does).
pub fn recorded_algorithms(files: &[PathBuf], host: &str, port: u16) -> Vec<Algorithm> {
    let name = host_entry_name(host, port);
    let mut out = Vec::new();
    for path in files {
        for e in read_entries(path, &name).unwrap_or_default() {
            let alg = e.key.algorithm();
            if !e.revoked && !out.contains(&alg) {
                out.push(alg);
            }
        }
    }
    out
}

/// Append `key` for `host`:`port` to `path` (created with its directory,
/// mode 0600, if missing). Returns the line number written.
pub fn append(
    path: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
) -> Result<usize, KnownHostsError> {
    let err = |source| KnownHostsError {
        action: "writing",
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            fs::create_dir_all(dir).map_err(err)?;
        }
    }
    let existing = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(err(e)),
    };
    let mut entry = String::new();
    if !existing.is_empty() && !existing.ends_with('\n') {
        entry.push('\n');
    }
    let mut key = key.clone();
    key.set_comment("");
    let openssh = key
        .to_openssh()
        .map_err(|e| err(std::io::Error::other(e.to_string())))?;
    entry.push_str(&format!(
        "{} {}\n",
        host_entry_name(host, port),
        openssh.trim()
    ));
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(entry.as_bytes()).map_err(err)?;
    Ok(existing.lines().count() + 1)
}

/// Does a comma-separated pattern list (or a hashed entry) match `name`?
/// A matching negated pattern (`!pat`) makes the whole list not match.
fn hosts_match(patterns: &str, name: &str) -> bool {
    if let Some(rest) = patterns.strip_prefix("|1|") {
        return hashed_match(rest, name);
    }
    let mut matched = false;
    for p in patterns.split(',') {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg, name) {
                return false;
            }
        } else if glob(p, name) {
            matched = true;
        }
    }
    matched
}

fn hashed_match(rest: &str, name: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = rest.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// OpenSSH-style wildcard match (`*` any run, `?` one character), case-insensitive.
fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let n: Vec<char> = name.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        let hash = mac.finalize().into_bytes();
        format!("|1|{}|{}", b64.encode(salt), b64.encode(hash))
    }

    #[test]
    fn globs() {
        assert!(glob("*.example.com", "a.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("host?", "host1"));
        assert!(glob("[127.0.0.2]:*", "[127.0.0.2]:2222"));
        assert!(hosts_match("a,b,[c]:23", "[c]:23"));
        assert!(!hosts_match("*.lan,!bad.lan", "bad.lan"));
        assert!(hosts_match("*.lan,!bad.lan", "good.lan"));
    }

    #[test]
    fn known_unknown_changed_revoked_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let salt = b"0123456789abcdefghij";
        std::fs::write(
            &path,
            format!(
                "# comment\n\
                 garbage\n\
                 [10.0.0.1]:2222 {ED_A}\n\
                 {} {ED_A} hashed\n\
                 @revoked revoked.host {ED_B}\n\
                 @cert-authority *.lan {ED_B}\n",
                hashed("[hashed.host]:2200", salt)
            ),
        )
        .unwrap();
        let files = vec![path.clone(), dir.path().join("missing")];
        let (a, b) = (key(ED_A), key(ED_B));
        assert_eq!(
            check(&files, "10.0.0.1", 2222, &a).unwrap(),
            HostKeyStatus::Known(Location {
                path: path.clone(),
                line: 3
            })
        );
        // Port 22 is recorded without brackets: a different entry.
        assert_eq!(
            check(&files, "10.0.0.1", 22, &a).unwrap(),
            HostKeyStatus::Unknown
        );
        match check(&files, "10.0.0.1", 2222, &b).unwrap() {
            HostKeyStatus::Changed {
                recorded,
                recorded_fingerprint,
            } => {
                assert_eq!(recorded.line, 3);
                assert_eq!(recorded_fingerprint, fingerprint(&a));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check(&files, "hashed.host", 2200, &a).unwrap(),
            HostKeyStatus::Known(Location { line: 4, .. })
        ));
        assert!(matches!(
            check(&files, "hashed.host", 2200, &b).unwrap(),
            HostKeyStatus::Changed { .. }
        ));
        assert!(matches!(
            check(&files, "revoked.host", 22, &b).unwrap(),
            HostKeyStatus::Revoked(_)
        ));
        // @cert-authority lines are not host keys.
        assert_eq!(
            check(&files, "x.lan", 22, &b).unwrap(),
            HostKeyStatus::Unknown
        );
        assert_eq!(
            recorded_algorithms(&files, "10.0.0.1", 2222),
            vec![Algorithm::Ed25519]
        );
    }

    #[test]
    fn append_then_known() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh").join("known_hosts");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "other.host ssh-ed25519 AAAA").unwrap(); // no newline
        let a = key(ED_A);
        let line = append(&path, "127.0.0.2", 2222, &a).unwrap();
        assert_eq!(line, 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with(&format!("[127.0.0.2]:2222 {ED_A}\n")),
            "{text}"
        );
        assert!(matches!(
            check(&[path], "127.0.0.2", 2222, &a).unwrap(),
            HostKeyStatus::Known(Location { line: 2, .. })
        ));
        assert!(fingerprint(&a).starts_with("SHA256:"));
    }
}
