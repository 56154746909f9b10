//! The SSH transport, on `russh`: connect to a node, check its host key
//! against `known_hosts`, authenticate with a key file or the ssh-agent,
//! and run commands on channels of one connection per node.
//!
//! Nothing secret is kept in a type that prints itself: private keys live
//! only inside the authentication step, and xbuild never asks for a key
//! passphrase (an encrypted key is refused with the fix: `ssh-add` it).

use crate::inventory::{NodeSpec, SshAddress};
use crate::known_hosts::{self, HostKeyStatus};
use crate::AgentStream;
use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::{Algorithm, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, Disconnect};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// Errors of the SSH transport. Each names the host.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// TCP connection failed (refused, no route, …).
    #[error("cannot connect to {host}: {source}")]
    Connect {
        /// `host:port`.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// A step took too long.
    #[error("{host}: timed out after {limit:?} while {stage}")]
    Timeout {
        /// `host:port`.
        host: String,
        /// "connecting", "authenticating", ...
        stage: &'static str,
        /// The limit.
        limit: Duration,
    },
    /// The host key is not in `known_hosts`.
    #[error(transparent)]
    UnknownHostKey(Box<UnknownHostKey>),
    /// The host key differs from the one recorded.
    #[error(transparent)]
    HostKeyChanged(Box<HostKeyChanged>),
    /// The host key is marked `@revoked`.
    #[error("the host key of {host} ({fingerprint}) is marked @revoked in {recorded}")]
    HostKeyRevoked {
        /// `host:port`.
        host: String,
        /// The presented key's fingerprint.
        fingerprint: String,
        /// `file:line`.
        recorded: String,
    },
    /// The server presented a host certificate.
    #[error("{host} presented a host certificate; xbuild accepts only plain host keys")]
    HostCertificate {
        /// `host:port`.
        host: String,
    },
    /// `known_hosts` could not be read or written.
    #[error("{host}: {source}")]
    KnownHosts {
        /// `host:port`.
        host: String,
        /// The file error.
        source: known_hosts::KnownHostsError,
    },
    /// A private key file is unusable.
    #[error("identity file {}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No key was accepted.
    #[error(
        "authentication failed for {user}@{host}: the node accepted none of: {tried}. \
         Is the public key in ~{user}/.ssh/authorized_keys on the node?"
    )]
    AuthFailed {
        /// `host:port`.
        host: String,
        /// Remote user.
        user: String,
        /// What was offered.
        tried: String,
    },
    /// No key to offer at all.
    #[error(
        "no SSH key to log in to {host}: give the node an identity file (--identity KEY), \
         or load a key into ssh-agent (SSH_AUTH_SOCK)"
    )]
    NoIdentity {
        /// `host:port`.
        host: String,
    },
    /// The SSH protocol failed after connecting.
    #[error("{host}: SSH error: {message}")]
    Protocol {
        /// `host:port`.
        host: String,
        /// What russh said.
        message: String,
    },
    /// A command on the node could not be started or failed.
    #[error("{host}: {message}")]
    Command {
        /// `host:port`.
        host: String,
        /// What happened.
        message: String,
    },
}

/// An unknown host key, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the host key of {host} is not known: {algorithm} key {fingerprint} is not in {known_hosts}. \
     Check that fingerprint on the node (`ssh-keygen -lf /etc/ssh/ssh_host_{key_file}_key.pub`), \
     then run `xbuild node add ... --accept-new-host-key` to record it (or `ssh {ssh_target}` once)"
)]
pub struct UnknownHostKey {
    /// `host:port`.
    pub host: String,
    /// The key's algorithm (`ssh-ed25519`).
    pub algorithm: String,
    /// `ssh-keygen -l` key-file stem (`ed25519`).
    pub key_file: String,
    /// `SHA256:...`.
    pub fingerprint: String,
    /// The file checked (and that `--accept-new-host-key` writes).
    pub known_hosts: String,
    /// `-p PORT user@host` for the hint.
    pub ssh_target: String,
}

/// A changed host key, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error(
    "HOST KEY CHANGED for {host}: it presented {algorithm} key {fingerprint}, but {recorded} \
     records {recorded_fingerprint}. Someone may be intercepting the connection, or the node \
     was reinstalled. If the change is expected, remove the old key \
     (`ssh-keygen -R '{entry}' -f {known_hosts}`) and add the node again; \
     --accept-new-host-key never replaces a changed key"
)]
pub struct HostKeyChanged {
    /// `host:port`.
    pub host: String,
    /// The presented key's algorithm.
    pub algorithm: String,
    /// The presented key's fingerprint.
    pub fingerprint: String,
    /// `file:line` of the recorded key.
    pub recorded: String,
    /// The recorded key's fingerprint.
    pub recorded_fingerprint: String,
    /// `[host]:port` as recorded.
    pub entry: String,
    /// The file.
    pub known_hosts: String,
}

/// How to treat a host key that is not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Refuse it (default).
    #[default]
    Strict,
    /// Record it and go on (OpenSSH's `StrictHostKeyChecking accept-new`);
    /// a changed key is still refused.
    AcceptNew,
}

/// Connection settings shared by all nodes.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Unknown host keys.
    pub host_key_policy: HostKeyPolicy,
    /// TCP connect plus key exchange.
    pub connect_timeout: Duration,
    /// User authentication.
    pub auth_timeout: Duration,
    /// Keepalive interval (the connection is dropped after 3 unanswered).
    pub keepalive: Duration,
    /// The user's `known_hosts` (default `~/.ssh/known_hosts`); a node's
    /// `known-hosts` setting overrides it.
    pub known_hosts: Option<PathBuf>,
    /// Use the ssh-agent at `SSH_AUTH_SOCK` when set.
    pub use_agent: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            host_key_policy: HostKeyPolicy::Strict,
            connect_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(15),
            keepalive: Duration::from_secs(15),
            known_hosts: None,
            use_agent: true,
        }
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The `known_hosts` file written for `node`, and the files checked.
fn known_hosts_files(node: &NodeSpec, opts: &ConnectOptions) -> (PathBuf, Vec<PathBuf>) {
    if let Some(p) = &node.known_hosts {
        return (p.clone(), vec![p.clone()]);
    }
    let user = opts.known_hosts.clone().unwrap_or_else(|| {
        home()
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(".ssh/known_hosts")
    });
    let mut files = vec![user.clone()];
    if opts.known_hosts.is_none() {
        files.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
    }
    (user, files)
}

/// What the host-key check decided, kept for the error message.
#[derive(Default)]
struct HostKeyVerdict(std::sync::Mutex<Option<SshError>>);

struct ClientHandler {
    address: SshAddress,
    write_to: PathBuf,
    files: Vec<PathBuf>,
    policy: HostKeyPolicy,
    verdict: Arc<HostKeyVerdict>,
}

impl ClientHandler {
    fn judge(&self, key: &PublicKey) -> Result<(), SshError> {
        let host = self.address.host_port();
        let (h, port) = (self.address.host.as_str(), self.address.port);
        let fingerprint = known_hosts::fingerprint(key);
        let status = known_hosts::check(&self.files, h, port, key).map_err(|source| {
            SshError::KnownHosts {
                host: host.clone(),
                source,
            }
        })?;
        match status {
            HostKeyStatus::Known(_) => Ok(()),
            HostKeyStatus::Unknown => match self.policy {
                HostKeyPolicy::AcceptNew => known_hosts::append(&self.write_to, h, port, key)
                    .map(|_| ())
                    .map_err(|source| SshError::KnownHosts { host, source }),
                HostKeyPolicy::Strict => {
                    let alg = key.algorithm();
                    Err(SshError::UnknownHostKey(Box::new(UnknownHostKey {
                        host,
                        algorithm: alg.to_string(),
                        key_file: key_file_stem(&alg).into(),
                        fingerprint,
                        known_hosts: self.write_to.display().to_string(),
                        ssh_target: format!("-p {port} {}@{h}", self.address.user_or_default()),
                    })))
                }
            },
            HostKeyStatus::Changed {
                recorded,
                recorded_fingerprint,
            } => Err(SshError::HostKeyChanged(Box::new(HostKeyChanged {
                host,
                algorithm: key.algorithm().to_string(),
                fingerprint,
                entry: known_hosts::host_entry_name(h, port),
                known_hosts: recorded.path.display().to_string(),
                recorded: recorded.to_string(),
                recorded_fingerprint,
            }))),
            HostKeyStatus::Revoked(loc) => Err(SshError::HostKeyRevoked {
                host,
                fingerprint,
                recorded: loc.to_string(),
            }),
        }
    }
}

fn key_file_stem(alg: &Algorithm) -> &'static str {
    match alg {
        Algorithm::Ed25519 => "ed25519",
        Algorithm::Rsa { .. } => "rsa",
        Algorithm::Ecdsa { .. } => "ecdsa",
        _ => "*",
    }
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => self.judge(key),
            russh::keys::PublicKeyOrCertificate::Certificate(_) => Err(SshError::HostCertificate {
                host: self.address.host_port(),
            }),
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(e) => {
                if let Ok(mut v) = self.verdict.0.lock() {
                    *v = Some(e);
                }
                Ok(false)
            }
        }
    }
}

/// How long opening a channel and starting a command on it may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One authenticated SSH connection to a node; channels are opened on it
/// for every command (agent, info) of one xbuild invocation.
pub struct SshConnection {
    handle: Handle<ClientHandler>,
    node: String,
    host: String,
}

impl std::fmt::Debug for SshConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshConnection")
            .field("node", &self.node)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status (`None` when the node did not report one, e.g. killed).
    pub status: Option<u32>,
    /// Standard output (at most [`MAX_COMMAND_STDOUT`] bytes).
    pub stdout: Vec<u8>,
    /// Standard error (its first [`MAX_COMMAND_STDERR`] bytes).
    pub stderr: Vec<u8>,
}

/// The most standard output [`Connection::run`] accepts from a command
/// (its commands print one JSON document of a few hundred bytes, `xbuild
/// agent --info`): past it the command fails, nothing more is read.
pub const MAX_COMMAND_STDOUT: usize = 1 << 20;
/// The standard error [`Connection::run`] keeps (for messages); the rest
/// is read and dropped.
pub const MAX_COMMAND_STDERR: usize = 64 << 10;

/// Appends what fits of `data` under `cap` to `buf`; false when some did
/// not fit.
fn append_capped(buf: &mut Vec<u8>, data: &[u8], cap: usize) -> bool {
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
    data.len() <= room
}

fn protocol(host: &str, e: impl std::fmt::Display) -> SshError {
    SshError::Protocol {
        host: host.to_string(),
        message: e.to_string(),
    }
}

impl SshConnection {
    /// Connect to `node` and log in.
    pub async fn connect(
        node: &NodeSpec,
        opts: &ConnectOptions,
    ) -> Result<SshConnection, SshError> {
        let addr = &node.address;
        let host = addr.host_port();
        let (write_to, files) = known_hosts_files(node, opts);
        let mut config = client::Config {
            keepalive_interval: Some(opts.keepalive),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        };
        // Ask first for the key types already recorded, as OpenSSH does, so
        // a server with several host keys shows the one we can check.
        let recorded = known_hosts::recorded_algorithms(&files, &addr.host, addr.port);
        if !recorded.is_empty() {
            let mut algs: Vec<Algorithm> = config
                .preferred
                .key
                .iter()
                .filter(|a| recorded.iter().any(|r| same_key_type(r, a)))
                .cloned()
                .collect();
            algs.extend(
                config
                    .preferred
                    .key
                    .iter()
                    .filter(|a| !algs.contains(a))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            config.preferred.key = algs.into();
        }
        let verdict = Arc::new(HostKeyVerdict::default());
        let handler = ClientHandler {
            address: addr.clone(),
            write_to,
            files,
            policy: opts.host_key_policy,
            verdict: verdict.clone(),
        };
        let timeout = |stage| SshError::Timeout {
            host: host.clone(),
            stage,
            limit: opts.connect_timeout,
        };
        let deadline = tokio::time::Instant::now() + opts.connect_timeout;
        let tcp = tokio::time::timeout_at(
            deadline,
            tokio::net::TcpStream::connect((addr.host.as_str(), addr.port)),
        )
        .await
        .map_err(|_| timeout("connecting"))?
        .map_err(|source| SshError::Connect {
            host: host.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let connected = tokio::time::timeout_at(
            deadline,
            client::connect_stream(Arc::new(config), tcp, handler),
        )
        .await
        .map_err(|_| timeout("exchanging keys"))?;
        let mut handle = match connected {
            Ok(h) => h,
            Err(e) => {
                if let Some(v) = verdict.0.lock().ok().and_then(|mut v| v.take()) {
                    return Err(v);
                }
                return Err(protocol(&host, e));
            }
        };
        let auth = tokio::time::timeout(opts.auth_timeout, authenticate(&mut handle, node, opts))
            .await
            .map_err(|_| SshError::Timeout {
                host: host.clone(),
                stage: "authenticating",
                limit: opts.auth_timeout,
            })?;
        auth?;
        Ok(SshConnection {
            handle,
            node: node.name.clone(),
            host,
        })
    }

    /// `host:port`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    async fn exec(&self, command: &str) -> Result<russh::Channel<client::Msg>, SshError> {
        let mut ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| protocol(&self.host, format!("opening a channel: {e}")))?;
        ch.exec(true, command)
            .await
            .map_err(|e| protocol(&self.host, format!("running {command:?}: {e}")))?;
        // Wait for the server to accept the request.
        loop {
            match ch.wait().await {
                Some(ChannelMsg::Success) => return Ok(ch),
                Some(ChannelMsg::Failure) => {
                    return Err(SshError::Command {
                        host: self.host.clone(),
                        message: format!("the node refused to run {command:?}"),
                    })
                }
                Some(ChannelMsg::WindowAdjusted { .. }) => continue,
                Some(other) => {
                    return Err(SshError::Command {
                        host: self.host.clone(),
                        message: format!("unexpected reply to exec {command:?}: {other:?}"),
                    })
                }
                None => {
                    return Err(SshError::Command {
                        host: self.host.clone(),
                        message: format!("the channel closed before {command:?} started"),
                    })
                }
            }
        }
    }

    /// Run `command` to completion (bounded by `limit`), collecting its
    /// output: standard output up to [`MAX_COMMAND_STDOUT`] bytes (more
    /// fails the command), the start of standard error.
    pub async fn run(&self, command: &str, limit: Duration) -> Result<CommandOutput, SshError> {
        let work = async {
            let mut ch = self.exec(command).await?;
            let mut out = CommandOutput {
                status: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            while let Some(msg) = ch.wait().await {
                match msg {
                    // The guard keeps what fits; a chunk that fits needs
                    // nothing more (the catch-all arm below).
                    ChannelMsg::Data { data }
                        if !append_capped(&mut out.stdout, &data, MAX_COMMAND_STDOUT) =>
                    {
                        return Err(SshError::Command {
                            host: self.host.clone(),
                            message: format!(
                                "{command:?} printed more than {MAX_COMMAND_STDOUT} bytes; \
                                 refusing its output"
                            ),
                        });
                    }
                    ChannelMsg::ExtendedData { data, .. } => {
                        append_capped(&mut out.stderr, &data, MAX_COMMAND_STDERR);
                    }
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            Ok(out)
        };
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| SshError::Timeout {
                host: self.host.clone(),
                stage: "running a command",
                limit,
            })?
    }

    /// Start `command` on a new channel and return its standard input and
    /// output as an [`AgentStream`]. The stream keeps the connection open.
    pub async fn open_stream(
        self: &Arc<Self>,
        command: &str,
        label: String,
    ) -> Result<AgentStream, SshError> {
        // A node whose sshd accepts the connection but never answers the
        // channel request must not hold the build: bound the start.
        let ch = tokio::time::timeout(START_TIMEOUT, self.exec(command))
            .await
            .map_err(|_| SshError::Timeout {
                host: self.host.clone(),
                stage: "starting the agent",
                limit: START_TIMEOUT,
            })??;
        let (reader, writer) = tokio::io::split(ch.into_stream());
        Ok(AgentStream {
            reader: Box::pin(KeepConnection {
                inner: reader,
                _conn: self.clone(),
            }),
            writer: Box::pin(writer),
            label,
        })
    }

    /// Close the connection politely.
    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}

fn same_key_type(a: &Algorithm, b: &Algorithm) -> bool {
    match (a, b) {
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        _ => a == b,
    }
}

/// A reader that holds the connection its channel lives on.
struct KeepConnection<R> {
    inner: R,
    _conn: Arc<SshConnection>,
}

impl<R: AsyncRead + Unpin> AsyncRead for KeepConnection<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Load a passphrase-less private key, or explain why not.
fn load_key(path: &Path) -> Result<PrivateKey, SshError> {
    let err = |reason: String| SshError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    match russh::keys::decode_secret_key(&text, None) {
        Ok(k) => Ok(k),
        Err(russh::keys::Error::KeyIsEncrypted) => Err(err(
            "the key is protected by a passphrase, and xbuild does not prompt for one: \
             load it into ssh-agent (`ssh-add KEY`) and leave --identity unset, \
             or use a key without a passphrase"
                .into(),
        )),
        Err(e) => Err(err(format!("not a usable private key: {e}"))),
    }
}

async fn try_key(
    handle: &mut Handle<ClientHandler>,
    user: &str,
    host: &str,
    key: PrivateKey,
) -> Result<bool, SshError> {
    let key = Arc::new(key);
    let hash = if key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .map_err(|e| protocol(host, e))?
            .flatten()
    } else {
        None
    };
    let r = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash))
        .await
        .map_err(|e| protocol(host, e))?;
    Ok(r.success())
}

async fn authenticate(
    handle: &mut Handle<ClientHandler>,
    node: &NodeSpec,
    opts: &ConnectOptions,
) -> Result<(), SshError> {
    let host = node.address.host_port();
    let user = node.address.user_or_default();
    let mut tried = Vec::new();
    if let Some(path) = &node.identity {
        let key = load_key(path)?;
        tried.push(format!(
            "key {} ({})",
            path.display(),
            known_hosts::fingerprint(key.public_key())
        ));
        if try_key(handle, &user, &host, key).await? {
            return Ok(());
        }
    } else {
        if opts.use_agent && std::env::var_os("SSH_AUTH_SOCK").is_some_and(|s| !s.is_empty()) {
            if let Ok(mut agent) = AgentClient::connect_env().await {
                let ids = agent.request_identities().await.unwrap_or_default();
                for id in ids {
                    let russh::keys::agent::AgentIdentity::PublicKey { key, .. } = id else {
                        continue;
                    };
                    tried.push(format!("agent key {}", known_hosts::fingerprint(&key)));
                    let hash = if key.algorithm().is_rsa() {
                        handle
                            .best_supported_rsa_hash()
                            .await
                            .map_err(|e| protocol(&host, e))?
                            .flatten()
                    } else {
                        None
                    };
                    match handle
                        .authenticate_publickey_with(&user, key, hash, &mut agent)
                        .await
                    {
                        Ok(r) if r.success() => return Ok(()),
                        Ok(_) => {}
                        Err(e) => tried.push(format!("(agent signing failed: {e})")),
                    }
                }
            }
        }
        if let Some(home) = home() {
            for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                let path = home.join(".ssh").join(name);
                if !path.is_file() {
                    continue;
                }
                // Default keys that are encrypted are skipped, as ssh-agent may
                // hold them; a key named with --identity is an error instead.
                let Ok(key) = load_key(&path) else { continue };
                tried.push(format!("key {}", path.display()));
                if try_key(handle, &user, &host, key).await? {
                    return Ok(());
                }
            }
        }
    }
    if tried.is_empty() {
        return Err(SshError::NoIdentity { host });
    }
    Err(SshError::AuthFailed {
        host,
        user,
        tried: tried.join(", "),
    })
}

/// One connection per node, shared by every channel of an invocation.
/// Connections to different nodes are made concurrently; callers asking
/// for the same node wait for the one connection being made.
#[derive(Debug, Default)]
pub struct SshPool {
    opts: ConnectOptions,
    conns: std::sync::Mutex<HashMap<String, Slot>>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<SshConnection>>>>;

impl SshPool {
    /// A pool using `opts` for new connections.
    pub fn new(opts: ConnectOptions) -> SshPool {
        SshPool {
            opts,
            conns: Default::default(),
        }
    }

    /// The options.
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open connection to `node`, connecting if there is none (or it closed).
    pub async fn connection(&self, node: &NodeSpec) -> Result<Arc<SshConnection>, SshError> {
        let slot = self.slots().entry(node.name.clone()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let c = Arc::new(SshConnection::connect(node, &self.opts).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    fn all(&self) -> Vec<Slot> {
        self.slots().values().cloned().collect()
    }

    /// How many connections are open.
    pub async fn open_connections(&self) -> usize {
        let mut n = 0;
        for slot in self.all() {
            if slot.lock().await.as_ref().is_some_and(|c| !c.is_closed()) {
                n += 1;
            }
        }
        n
    }

    /// Start the node's agent command on a channel of its connection.
    pub async fn connect_agent(&self, node: &NodeSpec) -> Result<AgentStream, SshError> {
        let conn = self.connection(node).await?;
        conn.open_stream(node.agent_command(), node.label()).await
    }

    /// Close every connection.
    pub async fn close_all(&self) {
        let slots: Vec<Slot> = self.slots().drain().map(|(_, s)| s).collect();
        for slot in slots {
            if let Some(c) = slot.lock().await.take() {
                c.close().await;
            }
        }
    }
}

/// Start `node`'s agent over SSH, reusing this process's connection to the
/// node (one per node; the first call's `opts` set up the shared pool).
pub async fn connect_agent(
    node: &NodeSpec,
    opts: &ConnectOptions,
) -> Result<AgentStream, SshError> {
    static POOL: OnceLock<SshPool> = OnceLock::new();
    POOL.get_or_init(|| SshPool::new(opts.clone()))
        .connect_agent(node)
        .await
}

#[cfg(test)]
mod tests {
    use super::append_capped;

    #[test]
    fn output_is_kept_up_to_the_cap_and_overflow_is_told() {
        let mut buf = Vec::new();
        assert!(append_capped(&mut buf, b"abc", 5));
        assert!(append_capped(&mut buf, b"de", 5));
        assert!(!append_capped(&mut buf, b"f", 5));
        assert!(!append_capped(&mut buf, b"ghi", 5));
        assert_eq!(buf, b"abcde");
    }
}
