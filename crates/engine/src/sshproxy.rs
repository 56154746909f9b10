//! `RUN --mount=type=ssh`: the step sees a Unix socket that forwards every
//! connection to the user's ssh-agent (`--ssh ID=SOCKET`). The step's socket
//! is a fresh one in the step's private files directory, with the mount's
//! `uid`, `gid` and `mode` (default `0600`, root), bound into the sandbox at
//! the target; the agent's own socket is never exposed, and keys never leave
//! the agent: only the agent protocol passes, so nothing of a key can land
//! in a layer, the cache or a log.
//!
//! The step gets a read-only agent, as BuildKit gives it: it may list the
//! keys and ask for signatures ([`read_only`]); adding, removing or locking
//! keys and extensions are answered with the agent protocol's failure and
//! never reach the user's agent. Messages are bounded by [`MAX_MESSAGE`].
//!
//! The proxy runs on threads of the worker for as long as the step runs;
//! dropping [`SshProxy`] stops accepting and removes the socket.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A listening socket forwarding to an agent socket.
pub struct SshProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SshProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshProxy")
            .field("path", &self.path)
            .finish()
    }
}

/// The largest ssh-agent message passed either way (real ones are a few
/// KiB: a key list, a signature).
pub const MAX_MESSAGE: usize = 256 << 10;
/// `SSH_AGENT_FAILURE`: the answer to a request the step may not make.
pub const FAILURE: u8 = 5;
const REQUEST_IDENTITIES: u8 = 11;
const SIGN_REQUEST: u8 = 13;

/// Whether an agent request (without its length prefix) only reads: a
/// key list or a signature. Everything else (add, remove, lock, unlock,
/// extensions, the old protocol 1 requests) changes or probes the user's
/// agent and is refused, as BuildKit refuses it.
pub fn read_only(request: &[u8]) -> bool {
    matches!(
        request.first(),
        Some(&REQUEST_IDENTITIES) | Some(&SIGN_REQUEST)
    )
}

/// Reads one length-prefixed agent message; `None` at a clean end of
/// stream. A message over [`MAX_MESSAGE`] is an `InvalidData` error.
pub fn read_message(s: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match s.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("ssh agent message of {len} bytes exceeds the limit of {MAX_MESSAGE} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Writes one length-prefixed agent message.
pub fn write_message(s: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    s.write_all(&buf)?;
    s.flush()
}

/// Serves one step connection: each read-only request goes to the agent
/// (one connection for the step's connection) and its answer back; any
/// other request is answered with [`FAILURE`]. A malformed or oversized
/// message, or the agent going away, ends the connection.
fn forward(mut client: UnixStream, agent: &Path) {
    let mut upstream: Option<UnixStream> = None;
    while let Ok(Some(request)) = read_message(&mut client) {
        if !read_only(&request) {
            if write_message(&mut client, &[FAILURE]).is_err() {
                break;
            }
            continue;
        }
        if upstream.is_none() {
            // The step sees a closed connection, as with a dead agent.
            match UnixStream::connect(agent) {
                Ok(u) => upstream = Some(u),
                Err(_) => break,
            }
        }
        let Some(up) = upstream.as_mut() else { break };
        let answer = write_message(up, &request).and_then(|()| read_message(up));
        match answer {
            Ok(Some(a)) if write_message(&mut client, &a).is_ok() => {}
            _ => break,
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

impl SshProxy {
    /// Listen at `at` (created with `uid`:`gid` and `mode`) and forward each
    /// connection to the agent at `agent`.
    pub fn start(agent: &Path, at: &Path, uid: u32, gid: u32, mode: u32) -> io::Result<SshProxy> {
        // Fail early, with the agent's path, when the agent is not there.
        UnixStream::connect(agent).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("connecting to the ssh agent {}: {e}", agent.display()),
            )
        })?;
        let listener = UnixListener::bind(at)?;
        std::fs::set_permissions(at, std::fs::Permissions::from_mode(mode & 0o7777))?;
        std::os::unix::fs::lchown(at, Some(uid), Some(gid))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let agent = agent.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("ssh-agent-proxy".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((c, _)) => {
                            if c.set_nonblocking(false).is_err() {
                                continue;
                            }
                            let agent = agent.clone();
                            std::thread::spawn(move || forward(c, &agent));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(SshProxy {
            path: at.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// The socket the step connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// An "agent" that answers every message with its reverse, and
    /// records the requests it saw.
    fn echo_agent(path: &Path) -> Arc<std::sync::Mutex<Vec<Vec<u8>>>> {
        let l = UnixListener::bind(path).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let seen = seen2.clone();
                std::thread::spawn(move || {
                    while let Ok(Some(m)) = read_message(&mut c) {
                        seen.lock().unwrap().push(m.clone());
                        let mut v = m;
                        v.reverse();
                        if write_message(&mut c, &v).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        seen
    }

    #[test]
    fn forwards_read_only_requests_with_the_requested_mode() {
        let d = tempfile::tempdir().unwrap();
        let agent = d.path().join("agent.sock");
        let seen = echo_agent(&agent);
        let at = d.path().join("proxy.sock");
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let p = SshProxy::start(&agent, &at, uid, gid, 0o640).unwrap();
        let m = std::fs::metadata(p.path()).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        for msg in [&[REQUEST_IDENTITIES][..], &[SIGN_REQUEST, 1, 2, 3]] {
            let mut c = UnixStream::connect(&at).unwrap();
            write_message(&mut c, msg).unwrap();
            let mut want = msg.to_vec();
            want.reverse();
            assert_eq!(read_message(&mut c).unwrap().unwrap(), want);
        }
        // Add (17), remove all (19), lock (22) and extensions (27) are
        // refused without reaching the agent.
        let mut c = UnixStream::connect(&at).unwrap();
        for msg in [&[17u8, 0, 0, 0, 1][..], &[19], &[22, 0], &[27, 9]] {
            write_message(&mut c, msg).unwrap();
            assert_eq!(read_message(&mut c).unwrap().unwrap(), [FAILURE]);
        }
        // The connection still serves read-only requests after a refusal.
        write_message(&mut c, &[REQUEST_IDENTITIES]).unwrap();
        assert_eq!(read_message(&mut c).unwrap().unwrap(), [REQUEST_IDENTITIES]);
        // An oversized message ends the connection, unforwarded.
        c.write_all(&((MAX_MESSAGE as u32) + 1).to_be_bytes())
            .unwrap();
        assert!(matches!(read_message(&mut c), Ok(None) | Err(_)));
        let firsts: Vec<u8> = seen.lock().unwrap().iter().map(|m| m[0]).collect();
        assert_eq!(
            firsts,
            [REQUEST_IDENTITIES, SIGN_REQUEST, REQUEST_IDENTITIES]
        );
        drop(p);
        assert!(!at.exists(), "the socket goes with the proxy");
    }

    #[test]
    fn missing_agent_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let e = SshProxy::start(
            &d.path().join("nope.sock"),
            &d.path().join("p.sock"),
            0,
            0,
            0o600,
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope.sock"), "{e}");
    }
}
