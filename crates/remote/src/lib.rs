//! Remote build nodes.
//!
//! A node is a machine reached over SSH that runs `xbuild agent --stdio`.
//! The coordinator talks to the agent through an [`AgentStream`]: the
//! agent's standard input and output, whether the agent runs as a local
//! child process (tests, and a "local" node) or at the far end of an SSH
//! channel. Everything above the stream (protocol, context and cache sync)
//! is the same for both.

pub mod agent;
pub mod client;
pub mod liveness;
pub mod local;
pub mod protocol;
pub mod sshfwd;

use std::fmt;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};

/// A duplex byte stream to one agent process.
pub struct AgentStream {
    /// The agent's standard output.
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
    /// The agent's standard input.
    pub writer: Pin<Box<dyn AsyncWrite + Send>>,
    /// Where the agent runs, for messages: `node amd1 (ssh://127.0.0.2:22)`.
    pub label: String,
}

impl fmt::Debug for AgentStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentStream")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

pub mod health;
pub mod inventory;
pub mod known_hosts;
pub mod schedule;
pub mod ssh;
