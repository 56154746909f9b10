//! A build context given as an `https://` (or loopback `http://`) URL: a tar
//! archive (plain, gzip, bzip2, xz or zstd) is unpacked and is the context;
//! anything else is taken as the Dockerfile of an empty context, as
//! BuildKit does.

use crate::copy::add::is_tar_archive;
use crate::copy::decompress;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use xbuild_oci::layer::apply::{apply_layer, ApplyOptions};

/// Errors from fetching an HTTP context.
#[derive(Debug, thiserror::Error)]
pub enum HttpContextError {
    /// Plain HTTP to a non-loopback host.
    #[error(
        "refusing plain http for build context {0}: use https (plain http is allowed only for \
         localhost and 127.0.0.0/8)"
    )]
    PlainHttp(String),
    /// The download failed.
    #[error("fetching build context {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// The archive could not be unpacked.
    #[error("unpacking build context {url}: {message}")]
    Unpack {
        /// The URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What the URL held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpContextKind {
    /// A tar archive, unpacked.
    Archive,
    /// A single file, used as the Dockerfile.
    Dockerfile,
}

/// A downloaded context.
#[derive(Debug)]
pub struct HttpContext {
    /// The context directory.
    pub root: PathBuf,
    /// What the URL held.
    pub kind: HttpContextKind,
    /// BuildKit's epoch of the context (for `SOURCE_DATE_EPOCH=context`):
    /// the `Last-Modified` time, else the newest file time of an archive.
    pub epoch: Option<i64>,
    _dir: tempfile::TempDir,
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let auth = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = auth.rsplit('@').next().unwrap_or("");
    if let Some(h) = hostport.strip_prefix('[') {
        return h.split(']').next().unwrap_or("");
    }
    hostport.split(':').next().unwrap_or("")
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// True for a URL this module fetches (`http://` or `https://`).
pub fn is_http_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.starts_with("https://") || l.starts_with("http://")
}

/// Download `url` into a new directory under `tmp_parent`.
pub fn fetch(url: &str, tmp_parent: &Path) -> Result<HttpContext, HttpContextError> {
    if url.to_ascii_lowercase().starts_with("http://") && !is_loopback(host_of(url)) {
        return Err(HttpContextError::PlainHttp(url.to_string()));
    }
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| HttpContextError::Io { op, path, source }
    };
    let dir = tempfile::Builder::new()
        .prefix("xbuild-url-")
        .tempdir_in(tmp_parent)
        .map_err(io_err("create directory in", tmp_parent))?;
    let fetch_err = |message: String| HttpContextError::Fetch {
        url: url.to_string(),
        message,
    };
    // The shared client settings (user agent, timeouts, TLS, proxies).
    let client = xbuild_registry::http::blocking_client_builder(Some(Duration::from_secs(600)))
        .build()
        .map_err(|e| fetch_err(e.to_string()))?;
    let resp = client.get(url).send().map_err(|e| {
        let mut m = e.to_string();
        let mut cur = std::error::Error::source(&e);
        while let Some(c) = cur {
            m.push_str(": ");
            m.push_str(&c.to_string());
            cur = c.source();
        }
        fetch_err(m)
    })?;
    let status = resp.status();
    let last_modified = resp
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::copy::add::parse_http_date);
    if !status.is_success() {
        return Err(fetch_err(format!(
            "HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )));
    }
    let file = dir.path().join("download");
    {
        let mut out = std::fs::File::create(&file).map_err(io_err("create", &file))?;
        let mut r = resp;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(fetch_err(e.to_string())),
            };
            out.write_all(&buf[..n]).map_err(io_err("write", &file))?;
        }
    }
    let mut c = unpack(dir, &file, url)?;
    if last_modified.is_some() {
        c.epoch = last_modified;
    }
    Ok(c)
}

/// The newest modification time of the files under `dir` (seconds).
fn newest_mtime(dir: &Path) -> Option<i64> {
    let mut best: Option<i64> = None;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.is_dir() {
                todo.push(e.path());
            }
            use std::os::unix::fs::MetadataExt;
            best = best.max(Some(md.mtime()));
        }
    }
    best
}

/// A build context given on standard input (`xbuild build - < ctx.tar`):
/// an archive (tar, possibly compressed) is unpacked into a new directory
/// under `tmp_parent`; anything else gives `Ok(None)` (it is a Dockerfile).
pub fn from_stdin_bytes(
    bytes: &[u8],
    tmp_parent: &Path,
) -> Result<Option<HttpContext>, HttpContextError> {
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| HttpContextError::Io { op, path, source }
    };
    let dir = tempfile::Builder::new()
        .prefix("xbuild-stdin-")
        .tempdir_in(tmp_parent)
        .map_err(io_err("create directory in", tmp_parent))?;
    let file = dir.path().join("download");
    std::fs::write(&file, bytes).map_err(io_err("write", &file))?;
    let c = unpack(dir, &file, "standard input")?;
    Ok((c.kind == HttpContextKind::Archive).then_some(c))
}

/// Unpack a downloaded `file` (in `dir`) into `dir/context`: an archive is
/// extracted, any other file becomes the context's Dockerfile.
fn unpack(dir: tempfile::TempDir, file: &Path, url: &str) -> Result<HttpContext, HttpContextError> {
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| HttpContextError::Io { op, path, source }
    };
    let file = file.to_path_buf();
    let root = dir.path().join("context");
    std::fs::create_dir(&root).map_err(io_err("create", &root))?;
    let unpack_err = |message: String| HttpContextError::Unpack {
        url: url.to_string(),
        message,
    };
    let zstd = {
        let mut head = [0u8; 4];
        let n = std::fs::File::open(&file)
            .and_then(|mut f| f.read(&mut head))
            .map_err(io_err("read", &file))?;
        n == 4 && head == [0x28, 0xb5, 0x2f, 0xfd]
    };
    let opts = ApplyOptions {
        chown: false,
        xattrs: false,
        ..ApplyOptions::default()
    };
    let kind = if zstd {
        let f = std::fs::File::open(&file).map_err(io_err("open", &file))?;
        apply_layer(f, &root, &opts).map_err(|e| unpack_err(e.to_string()))?;
        HttpContextKind::Archive
    } else if is_tar_archive(&file).map_err(|e| unpack_err(e.to_string()))? {
        let kind = decompress::sniff(&file).map_err(|e| unpack_err(e.to_string()))?;
        let f = decompress::open_for_apply(&file, kind, dir.path())
            .map_err(|e| unpack_err(e.to_string()))?;
        apply_layer(f, &root, &opts).map_err(|e| unpack_err(e.to_string()))?;
        HttpContextKind::Archive
    } else {
        let df = root.join("Dockerfile");
        std::fs::rename(&file, &df).map_err(io_err("rename", &df))?;
        HttpContextKind::Dockerfile
    };
    let _ = std::fs::remove_file(&file);
    let epoch = match kind {
        HttpContextKind::Archive => newest_mtime(&root),
        HttpContextKind::Dockerfile => None,
    };
    Ok(HttpContext {
        root,
        kind,
        epoch,
        _dir: dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// Serve `body` once on 127.0.0.1; returns the URL.
    fn serve_once(body: Vec<u8>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            }
        });
        format!("http://{addr}/ctx")
    }

    fn tarball(gzip: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let data = b"FROM scratch\nCOPY hello /\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1);
        b.append_data(&mut h, "Dockerfile", &data[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "hello", &b"hi\n"[..]).unwrap();
        let raw = b.into_inner().unwrap();
        if gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&raw).unwrap();
            e.finish().unwrap()
        } else {
            raw
        }
    }

    #[test]
    fn tarball_and_dockerfile_contexts() {
        let tmp = tempfile::tempdir().unwrap();
        for gz in [false, true] {
            let c = fetch(&serve_once(tarball(gz)), tmp.path()).unwrap();
            assert_eq!(c.kind, HttpContextKind::Archive);
            assert_eq!(std::fs::read(c.root.join("hello")).unwrap(), b"hi\n");
        }
        let c = fetch(&serve_once(b"FROM scratch\n".to_vec()), tmp.path()).unwrap();
        assert_eq!(c.kind, HttpContextKind::Dockerfile);
        assert_eq!(
            std::fs::read_to_string(c.root.join("Dockerfile")).unwrap(),
            "FROM scratch\n"
        );
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            fetch("http://example.invalid/x.tar", tmp.path()),
            Err(HttpContextError::PlainHttp(_))
        ));
        assert_eq!(host_of("http://u:p@127.0.0.1:80/x"), "127.0.0.1");
        assert_eq!(host_of("http://[::1]:80/x"), "::1");
        assert!(is_loopback("127.0.0.2"));
        assert!(!is_loopback("10.0.0.1"));
    }
}
