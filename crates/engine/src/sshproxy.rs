//! `RUN --mount=type=ssh`: the step sees a Unix socket that forwards every
//! connection to the user's ssh-agent (`--ssh ID=SOCKET`). The step's socket
//! is a fresh one in the step's private files directory, with the mount's
//! `uid`, `gid` and `mode` (default `0600`, root), bound into the sandbox at
//! the target; the agent's own socket is never exposed, and keys never leave
//! the agent: only the agent protocol passes, so nothing of a key can land
//! in a layer, the cache or a log.
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

fn pump(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

fn forward(client: UnixStream, agent: &Path) {
    let Ok(upstream) = UnixStream::connect(agent) else {
        // The step sees a closed connection, as with a dead agent.
        return;
    };
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let t = std::thread::spawn(move || pump(c2, u2));
    pump(upstream, client);
    let _ = t.join();
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

    /// An "agent" that answers every message with its reverse.
    fn echo_agent(path: &Path) -> JoinHandle<()> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for c in l.incoming().take(3) {
                let mut c = c.unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut v = buf[..n].to_vec();
                        v.reverse();
                        let _ = c.write_all(&v);
                    }
                });
            }
        })
    }

    #[test]
    fn forwards_connections_with_the_requested_mode() {
        let d = tempfile::tempdir().unwrap();
        let agent = d.path().join("agent.sock");
        let _a = echo_agent(&agent);
        let at = d.path().join("proxy.sock");
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let p = SshProxy::start(&agent, &at, uid, gid, 0o640).unwrap();
        let m = std::fs::metadata(p.path()).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        for msg in [&b"abc"[..], b"hello"] {
            let mut c = UnixStream::connect(&at).unwrap();
            c.write_all(msg).unwrap();
            let mut got = vec![0u8; msg.len()];
            c.read_exact(&mut got).unwrap();
            let mut want = msg.to_vec();
            want.reverse();
            assert_eq!(got, want);
        }
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
