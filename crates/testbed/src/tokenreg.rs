//! [`TokenRegistry`]: a tiny registry on 127.0.0.1 that wants bearer tokens
//! from its own token service, for tests of what a client does with the
//! token service's answer (a normal token, an endless answer, a huge
//! announced length). It serves a fixed set of manifests and blobs by
//! digest, and tags mapped to digests; every request but `/v2/` and the
//! token GET must carry the token `tok-1`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// What the token service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// A chunked `{"token":"AAAA…` that never ends (stops after 4 GiB or
    /// when the client hangs up).
    Endless,
    /// A header announcing 8 GiB of body, then silence.
    HugeLength,
    /// `{"token":"tok-1","expires_in":300}`.
    Good,
}

/// The content a [`TokenRegistry`] serves.
#[derive(Debug, Clone, Default)]
pub struct Content {
    /// Digest (`sha256:…`) -> (media type, bytes), for manifests and blobs.
    pub by_digest: HashMap<String, (String, Vec<u8>)>,
    /// Tag -> digest.
    pub tags: HashMap<String, String>,
    /// Digests whose GET answers HTTP 500 with an endless body.
    pub endless_errors: Vec<String>,
    /// Answer upload requests (`POST …/blobs/uploads/`) with HTTP 500 and
    /// an endless body (else 404: the fake takes no uploads).
    pub endless_upload_errors: bool,
}

#[derive(Default)]
struct Counters {
    token_requests: AtomicUsize,
    token_bytes: AtomicU64,
    unauthorized: AtomicUsize,
    stop: AtomicBool,
}

/// The running server; stopped on drop.
pub struct TokenRegistry {
    port: u16,
    counters: Arc<Counters>,
}

impl TokenRegistry {
    /// Starts the server on a free loopback port.
    pub fn start(mode: TokenMode, content: Content) -> std::io::Result<TokenRegistry> {
        let listener = TcpListener::bind(("127.0.0.1", crate::free_port()))
            .or_else(|_| TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let content = Arc::new(content);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if c.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (c, content) = (c.clone(), content.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, port, mode, &content, &c);
                });
            }
        });
        Ok(TokenRegistry { port, counters })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Token GETs received.
    pub fn token_requests(&self) -> usize {
        self.counters.token_requests.load(Ordering::SeqCst)
    }

    /// Bytes of an endless answer (token or error) written so far (what
    /// the client's socket took).
    pub fn token_bytes_sent(&self) -> u64 {
        self.counters.token_bytes.load(Ordering::SeqCst)
    }

    /// Registry requests (other than `/v2/`) that came without the token.
    pub fn unauthorized(&self) -> usize {
        self.counters.unauthorized.load(Ordering::SeqCst)
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        self.counters.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    conn: TcpStream,
    port: u16,
    mode: TokenMode,
    content: &Content,
    counters: &Counters,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
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
        let path = target.split('?').next().unwrap_or("");
        if path == "/token" {
            counters.token_requests.fetch_add(1, Ordering::SeqCst);
            match mode {
                TokenMode::Good => {
                    let body = br#"{"token":"tok-1","expires_in":300}"#;
                    write!(
                        out,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )?;
                    out.write_all(body)?;
                    continue;
                }
                TokenMode::HugeLength => {
                    out.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                          Content-Length: 8589934592\r\n\r\n{\"token\":\"",
                    )?;
                    std::thread::sleep(std::time::Duration::from_secs(30));
                    return Ok(());
                }
                TokenMode::Endless => {
                    out.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                          Transfer-Encoding: chunked\r\n\r\n",
                    )?;
                    endless_chunks(&mut out, b"{\"token\":\"", counters)?;
                    return Ok(());
                }
            }
        }
        if auth != "Bearer tok-1" {
            if path != "/v2/" {
                counters.unauthorized.fetch_add(1, Ordering::SeqCst);
            }
            write!(
                out,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer \
                 realm=\"http://127.0.0.1:{port}/token\",service=\"fake\"\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            )?;
            continue;
        }
        if path == "/v2/" {
            write!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{{}}")?;
            continue;
        }
        // /v2/<repo>/manifests/<ref> or /v2/<repo>/blobs/<digest>
        let last = path.rsplit_once('/').map(|(_, l)| l).unwrap_or("");
        let upload = path.ends_with("/blobs/uploads/") && content.endless_upload_errors;
        if upload || content.endless_errors.iter().any(|d| d == last) {
            out.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n\
                  Transfer-Encoding: chunked\r\n\r\n",
            )?;
            endless_chunks(
                &mut out,
                b"{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"",
                counters,
            )?;
            return Ok(());
        }
        let digest = if path.contains("/manifests/") && !last.contains(':') {
            content.tags.get(last).cloned()
        } else {
            Some(last.to_string())
        };
        match digest.and_then(|d| content.by_digest.get(&d).map(|c| (d, c))) {
            Some((digest, (media_type, bytes))) => {
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: {media_type}\r\n\
                     Docker-Content-Digest: {digest}\r\nContent-Length: {}\r\n\r\n",
                    bytes.len()
                )?;
                if method != "HEAD" {
                    out.write_all(bytes)?;
                }
            }
            None => write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\
                 Content-Length: 2\r\n\r\n{{}}"
            )?,
        }
    }
}

/// Writes `first` then 64 KiB chunks of `A` (chunked encoding) until the
/// client hangs up or 4 GiB went out, counting the bytes in
/// `counters.token_bytes`.
fn endless_chunks(out: &mut TcpStream, first: &[u8], counters: &Counters) -> std::io::Result<()> {
    write!(out, "{:x}\r\n", first.len())?;
    out.write_all(first)?;
    out.write_all(b"\r\n")?;
    let chunk = vec![b'A'; 64 << 10];
    for _ in 0..(1 << 16) {
        write!(out, "{:x}\r\n", chunk.len())?;
        out.write_all(&chunk)?;
        out.write_all(b"\r\n")?;
        counters
            .token_bytes
            .fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
    Ok(())
}
