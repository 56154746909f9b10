//! ADD: local tar archives (plain, gzip, bzip2 or xz, detected by content) and
//! `http(s)://` downloads.

use super::{decompress, dest, Copier, CopyError, Target};
use crate::context::{select, FsTree};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use xbuild_oci::digest::{Algorithm, Hasher};
use xbuild_oci::layer::apply::{apply_layer, ApplyOptions};
use xbuild_oci::Digest;

/// Whether the tar header checksum of a 512-byte block is valid.
fn tar_header_ok(h: &[u8]) -> bool {
    if h.len() < 512 || h.iter().all(|&b| b == 0) {
        return false;
    }
    if &h[257..262] == b"ustar" {
        return true;
    }
    let field = std::str::from_utf8(&h[148..156]).unwrap_or("");
    let field = field.trim_matches(|c: char| c == '\0' || c == ' ');
    let Ok(stored) = u32::from_str_radix(field, 8) else {
        return false;
    };
    let sum: u32 = h[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    sum == stored
}

/// Whether `host` is a tar archive, plain or compressed with gzip, bzip2 or
/// xz (judged by content, not by name), as Docker's ADD recognises. zstd
/// archives are not recognised and are copied as files.
pub(crate) fn is_tar_archive(host: &Path) -> Result<bool, CopyError> {
    let kind = decompress::sniff(host)?;
    let block = decompress::decoded_prefix(host, kind, 512)?;
    Ok(tar_header_ok(&block))
}

/// A scratch directory next to the destination root when possible (same
/// filesystem, not RAM), else in the system temporary directory.
pub(crate) fn staging_dir(dest_root: &Path) -> Result<tempfile::TempDir, CopyError> {
    if let Some(parent) = dest_root.parent() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix(".xbuild-add-")
            .tempdir_in(parent)
        {
            return Ok(d);
        }
    }
    tempfile::Builder::new()
        .prefix("xbuild-add-")
        .tempdir()
        .map_err(dest::io_at(
            "create staging directory",
            &std::env::temp_dir(),
        ))
}

/// The last segment of a URL's path, percent-decoded (`None` when empty).
pub(crate) fn url_file_name(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or("");
    let last = path.rsplit('/').next().unwrap_or("");
    let b = last.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&last[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    // The name's bytes, escaped like file names (byte-exact on disk).
    let name = crate::context::names::encode(&out);
    (!name.is_empty() && name != "." && name != ".." && !name.contains('/')).then_some(name)
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds.
pub(crate) fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as i64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (proleptic Gregorian), 1970-01-01 = 0.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

impl Copier<'_> {
    /// Unpacks the archive at `host` into the directory `dest_comps`.
    pub(crate) fn extract_archive(
        &mut self,
        host: &Path,
        source: &str,
        dest_comps: &[String],
    ) -> Result<(), CopyError> {
        let staging = staging_dir(self.dest_root)?;
        let sp = staging.path();
        let kind = decompress::sniff(host)?;
        let decoded = staging_dir(self.dest_root)?;
        let f = decompress::open_for_apply(host, kind, decoded.path())?;
        apply_layer(
            f,
            sp,
            &ApplyOptions {
                chown: true,
                xattrs: false,
                ..ApplyOptions::default()
            },
        )
        .map_err(|e| CopyError::Archive {
            source_path: source.to_string(),
            source: e,
        })?;
        fs::set_permissions(sp, fs::Permissions::from_mode(0o755))
            .map_err(dest::io_at("chmod", sp))?;
        dest::lchown(sp, (0, 0))?;
        let roots = select(&FsTree::new(sp), &[".".to_string()], &[], false)?;
        let keep = std::mem::replace(&mut self.preserve_owner, true);
        let r = self.place(sp, &roots[0], Target::Dir(dest_comps.to_vec()));
        self.preserve_owner = keep;
        r?;
        self.stats.archives += 1;
        Ok(())
    }

    /// Clones the git repository `url` (shallow) and merges its tree (or the
    /// URL's sub-directory) into `dest_comps`. `--checksum` must be the
    /// commit (or a prefix of it); `--keep-git-dir` keeps `.git`. Files are
    /// owned by root unless `--chown`, with the commit's time as mtime.
    pub(crate) fn fetch_git(
        &mut self,
        url: &str,
        opts: &super::AddOptions,
        dest_comps: &[String],
    ) -> Result<(), CopyError> {
        use crate::remote::{git, GitRef};
        let shown = crate::remote::gitref::redact_url(url);
        let git_err = |message: String| CopyError::Git {
            url: shown.clone(),
            message,
        };
        let mut r = GitRef::parse(url)
            .map_err(|e| git_err(e.to_string()))?
            .ok_or_else(|| git_err("not a git URL".into()))?;
        if let Some(sum) = opts.checksum.as_deref().map(str::trim) {
            let hex = sum.strip_prefix("sha1:").unwrap_or(sum);
            if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(CopyError::BadChecksum {
                    value: sum.to_string(),
                    reason: "for a Git URL, expected hex commit hash".into(),
                });
            }
            r.checksum = Some(hex.to_ascii_lowercase());
        }
        let staging = staging_dir(self.dest_root)?;
        let fetched = git::fetch(
            &r,
            staging.path(),
            &git::FetchOptions {
                keep_git_dir: opts.keep_git_dir,
                ssh_auth_sock: opts.ssh_auth_sock.clone(),
            },
        )
        .map_err(|e| git_err(e.to_string()))?;
        let roots = select(&FsTree::new(&fetched.root), &[".".to_string()], &[], false)?;
        let keep = std::mem::replace(&mut self.preserve_owner, false);
        let res = self.place(&fetched.root, &roots[0], Target::Dir(dest_comps.to_vec()));
        self.preserve_owner = keep;
        res?;
        self.stats.downloads += 1;
        Ok(())
    }

    /// Downloads `url` and writes it at `target` (mode 0600 unless
    /// `--chmod`, mtime from `Last-Modified`), verifying the checksum.
    /// With `--unpack=true` a tar archive (plain or compressed) is
    /// extracted into the directory `dest_comps` instead, as BuildKit does.
    pub(crate) fn fetch_url(
        &mut self,
        url: &str,
        opts: &super::AddOptions,
        target: Target,
        dest_comps: &[String],
    ) -> Result<(), CopyError> {
        let expected = opts
            .checksum
            .as_deref()
            .map(|c| {
                Digest::parse(c.trim()).map_err(|e| CopyError::BadChecksum {
                    value: c.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let fetch_err = |message: String| CopyError::Fetch {
            url: url.to_string(),
            message,
        };
        // The registry's client settings (user agent, timeouts, TLS, proxies).
        let client = xbuild_registry::http::blocking_client_builder(Some(
            opts.timeout.unwrap_or(Duration::from_secs(600)),
        ))
        .build()
        .map_err(|e| fetch_err(e.to_string()))?;
        let resp = client
            .get(url)
            .send()
            .map_err(|e| fetch_err(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(fetch_err(format!(
                "HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )));
        }
        let mtime = resp
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date);
        let staging = staging_dir(self.dest_root)?;
        let tmp: PathBuf = staging.path().join("download");
        let mut out = fs::File::create(&tmp).map_err(dest::io_at("create", &tmp))?;
        let alg = expected
            .as_ref()
            .map_or(Algorithm::Sha256, |d| d.algorithm());
        let mut hasher = Hasher::new(alg);
        let mut reader = resp;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(fetch_err(e.to_string())),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(dest::io_at("write", &tmp))?;
        }
        let actual = hasher.finish();
        if let Some(exp) = expected {
            if exp != actual {
                return Err(CopyError::ChecksumMismatch {
                    url: url.to_string(),
                    expected: exp.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        let when = mtime.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
        dest::set_times_fd(&out, &tmp, (when, 0))?;
        drop(out);
        // `ADD --unpack=true URL DEST`: an archive is extracted into DEST
        // (BuildKit's AttemptUnpack); without the flag a URL never is.
        if opts.unpack == Some(true) && is_tar_archive(&tmp)? {
            self.extract_archive(&tmp, url, dest_comps)?;
            self.stats.downloads += 1;
            return Ok(());
        }
        let Target::File(parent, name) = target else {
            unreachable!("downloads are files")
        };
        let dir = self.ensure(&parent)?;
        let owner = self.chown.unwrap_or((0, 0));
        let mode = self.mode_for(0o600, false);
        let dst = dir.join(crate::context::names::to_os(&name));
        self.copy_file(&tmp, &dst, owner, mode)?;
        self.stats.downloads += 1;
        Ok(())
    }
}

/// An error with its causes (reqwest's own message is terse: "error
/// sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(parse_http_date("garbage"), None);
    }

    #[test]
    fn url_names() {
        assert_eq!(
            url_file_name("http://h/a/b.tar.gz?x=1").as_deref(),
            Some("b.tar.gz")
        );
        assert_eq!(url_file_name("https://h/a%20b").as_deref(), Some("a b"));
        assert_eq!(url_file_name("https://h/"), None);
        assert_eq!(url_file_name("https://h"), None);
    }
}
