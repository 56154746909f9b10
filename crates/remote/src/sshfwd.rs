//! `--ssh` through build nodes: the coordinator's ssh-agent answers the
//! RUN steps of a node, and the keys never leave the coordinator.
//!
//! The ssh-agent protocol is request/response: each message is a `u32`
//! big-endian length and that many bytes. On the node, the agent serves one
//! Unix socket per `--ssh` id of the job ([`NodeAgents`], in a private
//! `0700` directory); every request a step writes there travels to the
//! coordinator as a [`crate::protocol::Message::SshAgent`], and the answer
//! comes back as the reply. On the coordinator, [`CoordinatorAgents`] passes
//! each request to the user's agent socket of that id, on one connection
//! per step connection (so the order of a connection's requests, and
//! per-connection state, are kept), refuses ids the user did not pass with
//! `--ssh`, and answers only read-only requests (a key list, a signature:
//! [`xbuild_engine::sshproxy::read_only`]), whatever the node sends; the
//! rest get the protocol's failure answer without reaching the agent.
//!
//! The engine's own ssh proxy then points the step's mount at the node's
//! socket, exactly as it points a local step at the user's agent. Messages
//! are bounded by [`MAX_AGENT_MESSAGE`]; their bytes are never logged.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::Shutdown;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use xbuild_engine::sshproxy::MAX_MESSAGE as MAX_AGENT_MESSAGE;
use xbuild_engine::sshproxy::{read_message, read_only, write_message, FAILURE};
/// How long the coordinator waits for its agent to answer one request.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections of a node's steps to one coordinator's agents open at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Errors of ssh-agent forwarding.
#[derive(Debug, thiserror::Error)]
pub enum SshForwardError {
    /// A message larger than [`MAX_AGENT_MESSAGE`].
    #[error("ssh agent message of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The node asked for an agent the user did not pass with `--ssh`.
    #[error("ssh agent {0:?} was not passed with --ssh; refused")]
    UnknownId(String),
    /// Too many step connections are open.
    #[error("more than {0} ssh agent connections are open at once; refused")]
    TooManyConnections(usize),
    /// Talking to the coordinator's agent failed.
    #[error("ssh agent {id:?} at {path}: {source}")]
    Agent {
        /// The `--ssh` id.
        id: String,
        /// Its socket.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Setting up the node's agent sockets failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn check_size(len: usize) -> Result<(), SshForwardError> {
    if len > MAX_AGENT_MESSAGE {
        return Err(SshForwardError::Oversized {
            len,
            max: MAX_AGENT_MESSAGE,
        });
    }
    Ok(())
}

/// The coordinator's side: the user's agent sockets by `--ssh` id, and the
/// connections to them opened for the node's step connections.
pub struct CoordinatorAgents {
    sockets: BTreeMap<String, PathBuf>,
    conns: HashMap<(String, u64), UnixStream>,
}

impl std::fmt::Debug for CoordinatorAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorAgents")
            .field("ids", &self.sockets.keys().collect::<Vec<_>>())
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl CoordinatorAgents {
    /// Forwards to these `(id, socket)` agents, and to no other.
    pub fn new(sockets: impl IntoIterator<Item = (String, PathBuf)>) -> Self {
        CoordinatorAgents {
            sockets: sockets.into_iter().collect(),
            conns: HashMap::new(),
        }
    }

    /// The ids forwarded, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.sockets.keys().cloned().collect()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// Passes one request of the node's connection `conn` to the agent of
    /// `id` and returns its response (both without the length prefix); a
    /// request that is not read-only is answered with `SSH_AGENT_FAILURE`
    /// here. Any error closes that connection.
    pub async fn request(
        &mut self,
        id: &str,
        conn: u64,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, SshForwardError> {
        check_size(request.len())?;
        let path = self
            .sockets
            .get(id)
            .ok_or_else(|| SshForwardError::UnknownId(id.to_string()))?
            .clone();
        if !read_only(&request) {
            return Ok(vec![FAILURE]);
        }
        let key = (id.to_string(), conn);
        let agent_err = |source| SshForwardError::Agent {
            id: id.to_string(),
            path: path.display().to_string(),
            source,
        };
        let stream = match self.conns.remove(&key) {
            Some(s) => s,
            None => {
                if self.conns.len() >= MAX_CONNECTIONS {
                    return Err(SshForwardError::TooManyConnections(MAX_CONNECTIONS));
                }
                let s = UnixStream::connect(&path).map_err(agent_err)?;
                s.set_read_timeout(Some(AGENT_TIMEOUT)).map_err(agent_err)?;
                s.set_write_timeout(Some(AGENT_TIMEOUT))
                    .map_err(agent_err)?;
                s
            }
        };
        let done = tokio::task::spawn_blocking(move || {
            let mut s = stream;
            write_message(&mut s, &request)?;
            match read_message(&mut s)? {
                Some(r) => Ok((s, r)),
                None => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the agent closed the connection without answering",
                )),
            }
        })
        .await
        .map_err(|e| agent_err(io::Error::other(e.to_string())))?;
        let (stream, response) = done.map_err(agent_err)?;
        self.conns.insert(key, stream);
        Ok(response)
    }

    /// The node's connection `conn` to the agent of `id` was closed.
    pub fn close(&mut self, id: &str, conn: u64) {
        self.conns.remove(&(id.to_string(), conn));
    }
}

/// The node's way to the coordinator (implemented by the agent's link).
pub trait AgentLink: Send + Sync + 'static {
    /// Sends one request of step connection `conn` to the coordinator's
    /// agent `ssh_id` and waits (blocking the calling thread) for its
    /// response, or the coordinator's refusal.
    fn request(&self, ssh_id: &str, conn: u64, request: Vec<u8>) -> Result<Vec<u8>, String>;
    /// Tells the coordinator that step connection `conn` closed.
    fn closed(&self, ssh_id: &str, conn: u64);
}

static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
static DIRS: AtomicU64 = AtomicU64::new(0);

/// The node's side: one listening socket per `--ssh` id, each acting as
/// an ssh-agent whose requests are answered by the coordinator's agent.
/// Dropping it stops listening, closes the step connections and removes
/// the sockets.
pub struct NodeAgents {
    dir: PathBuf,
    sockets: Vec<(String, PathBuf)>,
    stop: Arc<AtomicBool>,
    accept: Vec<JoinHandle<()>>,
    clients: Arc<Mutex<HashMap<u64, UnixStream>>>,
}

impl std::fmt::Debug for NodeAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAgents")
            .field("dir", &self.dir)
            .field("sockets", &self.sockets)
            .finish_non_exhaustive()
    }
}

/// Serves one step connection until it closes, the coordinator refuses a
/// request, or the agents are dropped.
fn serve_client(mut c: UnixStream, id: &str, conn: u64, link: &dyn AgentLink) {
    // A malformed or oversized message ends the connection, as a real
    // agent does; its bytes are not logged.
    while let Ok(Some(request)) = read_message(&mut c) {
        let Ok(response) = link.request(id, conn, request) else {
            break;
        };
        if response.len() > MAX_AGENT_MESSAGE || write_message(&mut c, &response).is_err() {
            break;
        }
    }
    let _ = c.shutdown(Shutdown::Both);
    link.closed(id, conn);
}

impl NodeAgents {
    /// Listens on a socket for each id in a new private directory under
    /// `parent` (the system's temporary directory when `None`), forwarding
    /// through `link`.
    pub fn start(
        ids: &[String],
        parent: Option<&Path>,
        link: Arc<dyn AgentLink>,
    ) -> Result<NodeAgents, SshForwardError> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let io_err = |op, p: &Path| {
            let path = p.display().to_string();
            move |source| SshForwardError::Io { op, path, source }
        };
        let dir = loop {
            let n = DIRS.fetch_add(1, Ordering::Relaxed);
            let d = parent.join(format!("xbuild-ssh-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&d) {
                Ok(()) => break d,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create directory", &d)(e)),
            }
        };
        let mut agents = NodeAgents {
            dir: dir.clone(),
            sockets: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            accept: Vec::new(),
            clients: Arc::new(Mutex::new(HashMap::new())),
        };
        for (n, id) in ids.iter().enumerate() {
            // Sockets are named by position: ids may be long or odd, and a
            // Unix socket path is short.
            let path = dir.join(format!("{n}.sock"));
            let listener = UnixListener::bind(&path).map_err(io_err("listen on", &path))?;
            listener
                .set_nonblocking(true)
                .map_err(io_err("listen on", &path))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err("chmod", &path))?;
            let (stop, clients, link, id2) = (
                agents.stop.clone(),
                agents.clients.clone(),
                link.clone(),
                id.clone(),
            );
            let t = std::thread::Builder::new()
                .name("ssh-agent-forward".into())
                .spawn(move || {
                    // Polled, so that stopping never depends on reaching
                    // the socket (it may have been removed under us).
                    while !stop.load(Ordering::Relaxed) {
                        let c = match listener.accept() {
                            Ok((c, _)) => c,
                            Err(_) => {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        };
                        if c.set_nonblocking(false).is_err() {
                            continue;
                        }
                        let Ok(c2) = c.try_clone() else { continue };
                        let conn = CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1;
                        if let Ok(mut all) = clients.lock() {
                            all.insert(conn, c2);
                        }
                        let (link, id, clients) = (link.clone(), id2.clone(), clients.clone());
                        let _ = std::thread::Builder::new()
                            .name("ssh-agent-conn".into())
                            .spawn(move || {
                                serve_client(c, &id, conn, link.as_ref());
                                if let Ok(mut all) = clients.lock() {
                                    all.remove(&conn);
                                }
                            });
                    }
                })
                .map_err(io_err("start a thread for", &path))?;
            agents.accept.push(t);
            agents.sockets.push((id.clone(), path));
        }
        Ok(agents)
    }

    /// `(id, socket)` of each forwarded agent.
    pub fn sockets(&self) -> &[(String, PathBuf)] {
        &self.sockets
    }
}

impl Drop for NodeAgents {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.accept.drain(..) {
            let _ = t.join();
        }
        // Connection threads end when their stream does (or, waiting for
        // the coordinator, when the job's pending requests are dropped).
        if let Ok(all) = self.clients.lock() {
            for c in all.values() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    /// A fake ssh-agent: answers each message with `ok:` + its reverse, and
    /// counts the connections it accepted.
    fn fake_agent(path: &Path) -> Arc<AtomicU64> {
        let l = UnixListener::bind(path).unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let a = accepted.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                a.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    while let Ok(Some(mut m)) = read_message(&mut c) {
                        m.reverse();
                        let mut r = b"ok:".to_vec();
                        r.extend_from_slice(&m);
                        if write_message(&mut c, &r).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        accepted
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn the_coordinator_forwards_known_ids_on_one_connection_per_step_connection() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("agent.sock");
        let accepted = fake_agent(&sock);
        rt().block_on(async {
            let mut a = CoordinatorAgents::new([("default".to_string(), sock.clone())]);
            assert_eq!(a.ids(), ["default"]);
            for _ in 0..3 {
                let r = a.request("default", 7, b"\x0dabc".to_vec()).await.unwrap();
                assert_eq!(r, b"ok:cba\x0d");
            }
            assert_eq!(
                accepted.load(Ordering::Relaxed),
                1,
                "one connection for conn 7"
            );
            a.request("default", 8, b"\x0b".to_vec()).await.unwrap();
            assert_eq!(accepted.load(Ordering::Relaxed), 2);
            // Requests that are not read-only (add a key, remove all,
            // lock, an extension) are refused here, never reaching it.
            for req in [&b"\x11key"[..], b"\x13", b"\x16pw", b"\x1bsession-bind"] {
                let r = a.request("default", 9, req.to_vec()).await.unwrap();
                assert_eq!(r, [5], "SSH_AGENT_FAILURE");
            }
            assert_eq!(accepted.load(Ordering::Relaxed), 2, "not forwarded");
            assert_eq!(a.open_connections(), 2);
            a.close("default", 7);
            a.close("default", 99);
            assert_eq!(a.open_connections(), 1);

            // An id not passed with --ssh is refused, naming it.
            let e = a.request("deploy", 1, b"\x0b".to_vec()).await.unwrap_err();
            assert!(matches!(e, SshForwardError::UnknownId(_)));
            assert_eq!(
                e.to_string(),
                "ssh agent \"deploy\" was not passed with --ssh; refused"
            );
            // Oversized requests never reach the agent.
            let e = a
                .request("default", 1, vec![0; MAX_AGENT_MESSAGE + 1])
                .await
                .unwrap_err();
            assert!(e.to_string().contains("exceeds the limit"), "{e}");
            // A dead agent is an error naming its socket.
            let mut dead =
                CoordinatorAgents::new([("default".to_string(), d.path().join("gone.sock"))]);
            let e = dead
                .request("default", 1, b"\x0b".to_vec())
                .await
                .unwrap_err();
            assert!(e.to_string().contains("gone.sock"), "{e}");
            assert!(!format!("{a:?}").contains("agent.sock"));
        });
    }

    /// A link that answers in-process through a [`CoordinatorAgents`].
    struct Direct {
        rt: tokio::runtime::Handle,
        agents: tokio::sync::Mutex<CoordinatorAgents>,
        closed: Mutex<Vec<u64>>,
    }

    impl AgentLink for Direct {
        fn request(&self, ssh_id: &str, conn: u64, request: Vec<u8>) -> Result<Vec<u8>, String> {
            self.rt.block_on(async {
                self.agents
                    .lock()
                    .await
                    .request(ssh_id, conn, request)
                    .await
                    .map_err(|e| e.to_string())
            })
        }
        fn closed(&self, ssh_id: &str, conn: u64) {
            self.rt
                .block_on(async { self.agents.lock().await.close(ssh_id, conn) });
            self.closed.lock().unwrap().push(conn);
        }
    }

    #[test]
    fn node_sockets_are_private_and_speak_the_agent_protocol() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("agent.sock");
        fake_agent(&sock);
        let rt = rt();
        let link = Arc::new(Direct {
            rt: rt.handle().clone(),
            agents: tokio::sync::Mutex::new(CoordinatorAgents::new([(
                "default".to_string(),
                sock,
            )])),
            closed: Mutex::new(Vec::new()),
        });
        let ids = vec!["default".to_string(), "other".to_string()];
        let node = NodeAgents::start(&ids, Some(d.path()), link.clone()).unwrap();
        let dir = node.sockets()[0].1.parent().unwrap().to_path_buf();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let (id, path) = &node.sockets()[0];
        assert_eq!(id, "default");
        assert_eq!(std::fs::metadata(path).unwrap().mode() & 0o777, 0o600);

        let mut c = UnixStream::connect(path).unwrap();
        for msg in [&b"\x0bhello"[..], b"\x0dagain"] {
            write_message(&mut c, msg).unwrap();
            let mut want = b"ok:".to_vec();
            want.extend(msg.iter().rev());
            assert_eq!(read_message(&mut c).unwrap().unwrap(), want);
        }
        drop(c);
        // "other" is served on the node but the coordinator has no such
        // agent: the connection is closed without an answer.
        let mut c = UnixStream::connect(&node.sockets()[1].1).unwrap();
        write_message(&mut c, b"\x0b").unwrap();
        assert!(read_message(&mut c).unwrap().is_none());
        // An oversized message ends the connection, unforwarded.
        let mut c = UnixStream::connect(path).unwrap();
        c.write_all(&((MAX_AGENT_MESSAGE as u32) + 1).to_be_bytes())
            .unwrap();
        assert!(matches!(read_message(&mut c), Ok(None) | Err(_)));
        // Closed connections are reported to the coordinator.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while link.closed.lock().unwrap().len() < 3 {
            assert!(std::time::Instant::now() < deadline, "closes not reported");
            std::thread::sleep(Duration::from_millis(20));
        }
        // A connection still open when the agents go is closed; the
        // directory is removed.
        let mut open = UnixStream::connect(path).unwrap();
        write_message(&mut open, b"\x0b").unwrap();
        assert!(read_message(&mut open).unwrap().is_some());
        drop(node);
        assert!(!dir.exists());
        assert!(matches!(read_message(&mut open), Ok(None) | Err(_)));
    }
}
