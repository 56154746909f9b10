//! A tiny HTTP/1.1 file server on 127.0.0.1 for the ADD-of-a-URL cases:
//! serves registered paths (body, status, a few headers), 404 otherwise.
//! Stopped when dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One served file.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
}

type Files = Arc<Mutex<HashMap<String, Served>>>;

/// The server.
pub struct HttpServer {
    port: u16,
    files: Files,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Listen on a free loopback port.
    pub fn start() -> std::io::Result<HttpServer> {
        let port = xbuild_e2e::testbed::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let files: Files = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (files.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let f = f.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &f);
                });
            }
        });
        Ok(HttpServer {
            port,
            files,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Serve `file` at `path` (starting with `/`).
    pub fn add(&self, path: &str, file: Served) {
        self.files
            .lock()
            .expect("files lock")
            .insert(path.to_string(), file);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, files: &Files) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let mut close = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if h.eq_ignore_ascii_case("connection: close") {
                close = true;
            }
        }
        let path = path.split('?').next().unwrap_or("/").to_string();
        let found = files.lock().expect("files lock").get(&path).cloned();
        let file = found.unwrap_or(Served {
            status: 404,
            body: b"not found\n".to_vec(),
            headers: Vec::new(),
        });
        let reason = if file.status == 200 { "OK" } else { "Other" };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\n",
            file.status,
            file.body.len()
        );
        for (k, v) in &file.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if method != "HEAD" {
            out.write_all(&file.body)?;
        }
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}
