//! Size caps on what a token service answers (#16: "size caps … on any JSON
//! read from a network peer"). A fake bearer-token registry on 127.0.0.1:
//! an endless token answer fails pulls and pushes at the cap (1 MiB) with
//! the registry and the token service named, while the server could send
//! only a bounded amount and the test process's memory stays small; a
//! normal token is fetched once and is the one oci-client's own requests
//! (the blob GETs) carry.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use xbuild_oci::{BlobStore, Digest, Reference};
use xbuild_registry::no_progress;

/// What the token endpoint answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TokenMode {
    /// A chunked `{"token":"AAAA…` that never ends.
    Endless,
    /// A `Content-Length` of 8 GiB (the body never comes).
    HugeLength,
    /// `{"token":"tok-1","expires_in":300}`.
    Good,
}

/// A registry that wants bearer tokens, with its token service, serving
/// the blobs of one store by digest and the tag `1` as `manifest`.
struct FakeRegistry {
    port: u16,
    token_requests: Arc<AtomicUsize>,
    token_bytes_sent: Arc<AtomicU64>,
    unauthorized: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeRegistry {
    fn start(
        mode: TokenMode,
        blobs: HashMap<String, (String, Vec<u8>)>,
        tag: Option<String>,
    ) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", xbuild_testbed::free_port()))
            .or_else(|_| TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = FakeRegistry {
            port,
            token_requests: Arc::default(),
            token_bytes_sent: Arc::default(),
            unauthorized: Arc::default(),
            stop: Arc::default(),
        };
        let (tr, tb, un, stop) = (
            fake.token_requests.clone(),
            fake.token_bytes_sent.clone(),
            fake.unauthorized.clone(),
            fake.stop.clone(),
        );
        let blobs = Arc::new(blobs);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (tr, tb, un, blobs, tag) = (
                    tr.clone(),
                    tb.clone(),
                    un.clone(),
                    blobs.clone(),
                    tag.clone(),
                );
                std::thread::spawn(move || {
                    let _ = serve(conn, port, mode, &blobs, tag.as_deref(), &tr, &tb, &un);
                });
            }
        });
        fake
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[allow(clippy::too_many_arguments)]
fn serve(
    conn: TcpStream,
    port: u16,
    mode: TokenMode,
    blobs: &HashMap<String, (String, Vec<u8>)>,
    tag: Option<&str>,
    token_requests: &AtomicUsize,
    token_bytes: &AtomicU64,
    unauthorized: &AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut auth = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") {
                    auth = v.trim().to_string();
                }
            }
        }
        let path = target.split('?').next().unwrap_or("").to_string();
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\"\r\n"
        );
        if path == "/token" {
            token_requests.fetch_add(1, Ordering::SeqCst);
            match mode {
                TokenMode::Good => {
                    let body = br#"{"token":"tok-1","expires_in":300}"#;
                    write!(
                        out,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )?;
                    out.write_all(body)?;
                }
                TokenMode::HugeLength => {
                    out.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8589934592\r\n\r\n{\"token\":\"",
                    )?;
                    // Then nothing: the client must refuse by the header.
                    std::thread::sleep(std::time::Duration::from_secs(30));
                    return Ok(());
                }
                TokenMode::Endless => {
                    out.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                    )?;
                    let first = b"{\"token\":\"";
                    write!(out, "{:x}\r\n", first.len())?;
                    out.write_all(first)?;
                    out.write_all(b"\r\n")?;
                    let chunk = vec![b'A'; 64 << 10];
                    // Until the client hangs up (or 4 GiB, far past any cap).
                    for _ in 0..(1 << 16) {
                        write!(out, "{:x}\r\n", chunk.len())?;
                        out.write_all(&chunk)?;
                        out.write_all(b"\r\n")?;
                        token_bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    }
                    return Ok(());
                }
            }
            continue;
        }
        if auth != "Bearer tok-1" {
            if path != "/v2/" {
                unauthorized.fetch_add(1, Ordering::SeqCst);
            }
            write!(
                out,
                "HTTP/1.1 401 Unauthorized\r\n{challenge}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            )?;
            continue;
        }
        // /v2/<repo>/manifests/<ref> or /v2/<repo>/blobs/<digest>
        let found = path
            .rsplit_once('/')
            .map(|(_, last)| last)
            .and_then(|last| match (path.contains("/manifests/"), tag) {
                (true, Some(t)) if last == t => blobs.get(&format!("tag:{t}")),
                _ => blobs.get(last),
            });
        match found {
            Some((media_type, bytes)) => {
                let digest = Digest::sha256_of(bytes);
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: {media_type}\r\nDocker-Content-Digest: {digest}\r\nContent-Length: {}\r\n\r\n",
                    bytes.len()
                )?;
                if method != "HEAD" {
                    out.write_all(bytes)?;
                }
            }
            None => write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            )?,
        }
    }
}

/// Peak resident memory of this process (nextest runs each test in its
/// own process), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_token_answer_fails_pull_and_push_at_the_cap() {
    let fake = FakeRegistry::start(TokenMode::Endless, HashMap::new(), None);
    let tmp = tempfile::tempdir().unwrap();
    let client = client(tmp.path());
    let amd64 = platform("linux/amd64");
    let r = Reference::parse(&format!("{}/app/endless:1", fake.host())).unwrap();

    let err = client.resolve(&r, &amd64).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&fake.host()), "{msg}");
    assert!(
        msg.contains(&format!("token service http://{}", fake.host())),
        "{msg}"
    );
    assert!(msg.contains("more than 1048576 bytes"), "{msg}");
    assert!(!err.is_transient(), "{err:?}");

    // A push asks for a push token: refused the same way.
    let store = BlobStore::open(tmp.path().join("store")).unwrap();
    let desc = build_image(&store, &amd64, "never pushed\n");
    let err = client
        .push_image(&r, &store, &desc, &no_progress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");

    // The reads stopped at the cap: the server could only fill the socket
    // buffers past it, and the process never held the answer.
    let sent = fake.token_bytes_sent.load(Ordering::SeqCst);
    let rss = peak_rss_mib();
    eprintln!("token bytes the server wrote: {sent}; peak RSS {rss} MiB");
    assert!(sent < 64 << 20, "{sent} bytes sent");
    assert!(rss < 100, "peak RSS {rss} MiB");
    // Nothing reached the registry without a token.
    assert_eq!(fake.unauthorized.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_answer_announcing_a_huge_length_is_refused_by_its_header() {
    let fake = FakeRegistry::start(TokenMode::HugeLength, HashMap::new(), None);
    let tmp = tempfile::tempdir().unwrap();
    let client = client(tmp.path());
    let r = Reference::parse(&format!("{}/app/huge:1", fake.host())).unwrap();
    let err = client
        .resolve(&r, &platform("linux/amd64"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("(8589934592 bytes seen)"), "{msg}");
    assert!(msg.contains(&fake.host()), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_token_is_fetched_once_and_carried_by_every_request() {
    let tmp = tempfile::tempdir().unwrap();
    let src = BlobStore::open(tmp.path().join("src")).unwrap();
    let amd64 = platform("linux/amd64");
    let desc = build_image(&src, &amd64, "hello through a token\n");
    let manifest = src.read_to_vec(&desc.digest).unwrap();
    let m = xbuild_oci::ImageManifest::from_slice(&manifest).unwrap();
    let mut blobs = HashMap::new();
    blobs.insert(
        "tag:1".to_string(),
        (desc.media_type.clone(), manifest.clone()),
    );
    blobs.insert(desc.digest.to_string(), (desc.media_type.clone(), manifest));
    for d in std::iter::once(&m.config).chain(&m.layers) {
        blobs.insert(
            d.digest.to_string(),
            (d.media_type.clone(), src.read_to_vec(&d.digest).unwrap()),
        );
    }
    let fake = FakeRegistry::start(TokenMode::Good, blobs, Some("1".into()));
    let client = client(tmp.path());
    let r = Reference::parse(&format!("{}/app/good:1", fake.host())).unwrap();
    let store = BlobStore::open(tmp.path().join("dst")).unwrap();
    let pulled = client.pull(&r, &amd64, &store, &no_progress).await.unwrap();
    assert_eq!(pulled.descriptor.digest, desc.digest);
    for l in &m.layers {
        assert!(store.verify(&l.digest).unwrap(), "{}", l.digest);
    }
    assert!(client.manifest_exists(&r, &desc.digest).await.unwrap());
    let absent = Digest::sha256_of(b"no such manifest");
    assert!(!client.manifest_exists(&r, &absent).await.unwrap());
    // One token GET (ours); oci-client's blob GETs used it and never asked
    // the token service themselves, nor went out without it.
    assert_eq!(fake.token_requests.load(Ordering::SeqCst), 1);
    assert_eq!(fake.unauthorized.load(Ordering::SeqCst), 0);
}
