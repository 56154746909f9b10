//! A fault-injecting HTTP/1.1 proxy for registry tests, in front of a real
//! registry on loopback. It forwards requests one by one (bodies framed by
//! `Content-Length` or chunked encoding, so keep-alive connections work)
//! and, when a [`Rule`] matches a request, answers it itself or breaks it:
//!
//! - [`Action::Status`]: answer with that status (500, 503, ...) and close;
//! - [`Action::DropAfter`]: forward the head and that many body bytes, then
//!   drop both connections (an upload cut mid-way);
//! - [`Action::Unauthorized`]: answer 401 with a Basic challenge;
//! - [`FaultProxy::set_slow`]: delay every forwarded 16 KiB piece.
//!
//! Every request is recorded (method, path, what was done) for assertions.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What to do with a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer with this HTTP status (no body forwarded), then close.
    Status(u16),
    /// Forward the head and this many body bytes, then drop the connection.
    DropAfter(u64),
    /// Answer 401 with `WWW-Authenticate: Basic`, then close.
    Unauthorized,
}

/// A fault: requests whose method is `method` (any when empty) and whose
/// path contains `path_contains` get `action`, `times` times.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `GET`, `PUT`, ... or empty for any.
    pub method: String,
    /// A substring of the request path (`/blobs/uploads/`, `/manifests/1`).
    pub path_contains: String,
    /// What happens.
    pub action: Action,
    /// How many more requests it applies to (`usize::MAX`: always).
    pub times: usize,
}

impl Rule {
    /// A rule for `method` (empty: any) and a path substring.
    pub fn new(method: &str, path_contains: &str, action: Action, times: usize) -> Rule {
        Rule {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            action,
            times,
        }
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// The path (with query).
    pub path: String,
    /// `forwarded`, or the fault applied.
    pub outcome: String,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    slow: Option<Duration>,
    seen: Vec<Seen>,
}

/// The proxy; stops (closing every connection) when dropped.
pub struct FaultProxy {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("port", &self.port)
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy on a free `127.0.0.1` port in front of
    /// `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> std::io::Result<FaultProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("proxy listener");
                let accept = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        let st = st.clone();
                        tokio::spawn(async move {
                            let _ = serve(client, upstream_port, st).await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = rx => {}
                }
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        Ok(FaultProxy {
            port,
            state,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Replaces the fault rules (first match wins).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        self.state.lock().expect("proxy state").rules = rules;
    }

    /// Delays each forwarded 16 KiB piece by `d` (`None`: full speed).
    pub fn set_slow(&self, d: Option<Duration>) {
        self.state.lock().expect("proxy state").slow = d;
    }

    /// Requests seen so far, and clears the record.
    pub fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut self.state.lock().expect("proxy state").seen)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Head {
    raw: Vec<u8>,
    method: String,
    path: String,
    content_length: Option<u64>,
    chunked: bool,
}

async fn read_head<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> std::io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut raw).await?;
        if n == 0 {
            return Ok(None);
        }
        if raw.ends_with(b"\r\n\r\n") || raw == b"\r\n" {
            break;
        }
        if raw.len() > 64 * 1024 {
            return Err(std::io::Error::other("request head too large"));
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let mut content_length = None;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-length" {
                content_length = v.trim().parse().ok();
            } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    Ok(Some(Head {
        raw,
        method,
        path,
        content_length,
        chunked,
    }))
}

/// Copies exactly `n` bytes, pausing per piece when slow; stops early (and
/// returns false) once `budget` bytes went through.
async fn copy_n<R, W>(
    r: &mut R,
    w: &mut W,
    mut n: u64,
    budget: &mut Option<u64>,
    slow: Option<Duration>,
) -> std::io::Result<bool>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    while n > 0 {
        let mut want = (buf.len() as u64).min(n) as usize;
        if let Some(b) = budget {
            if *b == 0 {
                return Ok(false);
            }
            want = want.min(*b as usize);
        }
        let k = r.read(&mut buf[..want]).await?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(d) = slow {
            tokio::time::sleep(d).await;
        }
        w.write_all(&buf[..k]).await?;
        n -= k as u64;
        if let Some(b) = budget {
            *b -= k as u64;
        }
    }
    Ok(true)
}

/// Forwards a request body (framed as the head says). False when the
/// budget ran out (the caller drops the connection).
async fn forward_body<R, W>(
    r: &mut BufReader<R>,
    w: &mut W,
    head: &Head,
    mut budget: Option<u64>,
    slow: Option<Duration>,
) -> std::io::Result<bool>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if head.chunked {
        loop {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line).await?;
            w.write_all(&line).await?;
            let size_text = String::from_utf8_lossy(&line);
            let size_hex = size_text.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size_hex, 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let mut t = Vec::new();
                    r.read_until(b'\n', &mut t).await?;
                    w.write_all(&t).await?;
                    if t == b"\r\n" || t.is_empty() {
                        return Ok(true);
                    }
                }
            }
            if !copy_n(r, w, size, &mut budget, slow).await? {
                return Ok(false);
            }
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await?;
            w.write_all(&crlf).await?;
        }
    } else if let Some(n) = head.content_length {
        copy_n(r, w, n, &mut budget, slow).await
    } else {
        Ok(true)
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Fault",
    }
}

async fn serve(
    client: TcpStream,
    upstream_port: u16,
    st: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let upstream = TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    let (cr, mut cw_raw) = client.into_split();
    let (ur, mut uw) = upstream.into_split();
    let mut cr = BufReader::new(cr);
    // Responses flow back on their own task; injected answers go through
    // the same writer, after closing the upstream side.
    let (inject_tx, mut inject_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let st2 = st.clone();
    let back = tokio::spawn(async move {
        let mut ur = ur;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                n = ur.read(&mut buf) => {
                    let n = match n { Ok(0) | Err(_) => break, Ok(n) => n };
                    let slow = st2.lock().expect("proxy state").slow;
                    if let Some(d) = slow {
                        tokio::time::sleep(d).await;
                    }
                    if cw_raw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                msg = inject_rx.recv() => {
                    if let Some(m) = msg {
                        let _ = cw_raw.write_all(&m).await;
                    }
                    let _ = cw_raw.shutdown().await;
                    break;
                }
            }
        }
    });
    let result = async {
        while let Some(head) = read_head(&mut cr).await? {
            let (action, slow) = {
                let mut s = st.lock().expect("proxy state");
                let slow = s.slow;
                let action = s.rules.iter_mut().find_map(|r| {
                    let hit = r.times > 0
                        && (r.method.is_empty() || r.method == head.method)
                        && head.path.contains(&r.path_contains);
                    if hit && r.times != usize::MAX {
                        r.times -= 1;
                    }
                    hit.then_some(r.action)
                });
                s.seen.push(Seen {
                    method: head.method.clone(),
                    path: head.path.clone(),
                    outcome: match action {
                        None => "forwarded".into(),
                        Some(a) => format!("{a:?}"),
                    },
                });
                (action, slow)
            };
            match action {
                None => {
                    uw.write_all(&head.raw).await?;
                    forward_body(&mut cr, &mut uw, &head, None, slow).await?;
                }
                Some(Action::DropAfter(n)) => {
                    uw.write_all(&head.raw).await?;
                    let _ = forward_body(&mut cr, &mut uw, &head, Some(n), slow).await;
                    return Err(std::io::Error::other("fault: connection dropped"));
                }
                Some(Action::Status(code)) => {
                    let body = format!(
                        "{{\"errors\":[{{\"code\":\"UNKNOWN\",\"message\":\"injected fault {code}\"}}]}}"
                    );
                    let msg = format!(
                        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        reason(code),
                        body.len()
                    );
                    let _ = inject_tx.send(msg.into_bytes());
                    return Ok(());
                }
                Some(Action::Unauthorized) => {
                    let body = "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\"}]}";
                    let msg = format!(
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"fault-proxy\"\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = inject_tx.send(msg.into_bytes());
                    return Ok(());
                }
            }
        }
        // The client is done: let the registry close its side too.
        let _ = uw.shutdown().await;
        Ok::<(), std::io::Error>(())
    }
    .await;
    // A drop aborts the response side too; otherwise let it finish.
    if result.is_err() {
        back.abort();
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(30), back).await;
    }
    result
}
