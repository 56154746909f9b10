//! The local transport: an agent run as a child process of the
//! coordinator (`xbuild agent --stdio --root DIR`), its stdin and stdout
//! as the [`AgentStream`]. Tests use it, and it is what an SSH channel
//! replaces for a real node.
//!
//! The child is killed when the stream's reader is dropped, so a
//! coordinator that gives up on an agent leaves no process behind; an
//! agent whose stdin closes exits by itself.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::process::{Child, ChildStdout, Command};

use crate::AgentStream;

/// The agent's stdout, owning the child so that dropping it kills the agent.
struct ChildOutput {
    out: ChildStdout,
    _child: Child,
}

impl AsyncRead for ChildOutput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.out).poll_read(cx, buf)
    }
}

/// A started local agent.
#[derive(Debug)]
pub struct LocalAgent {
    /// The stream to it.
    pub stream: AgentStream,
    /// Its process id.
    pub pid: u32,
}

/// Starts `program ARGS...` (an `xbuild agent --stdio ...`) as a child
/// process. Its stderr is inherited (the agent logs there).
pub fn spawn(program: &Path, args: &[OsString], label: &str) -> io::Result<LocalAgent> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("the agent's stdin is not piped"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("the agent's stdout is not piped"))?;
    Ok(LocalAgent {
        stream: AgentStream {
            reader: Box::pin(ChildOutput {
                out: stdout,
                _child: child,
            }),
            writer: Box::pin(stdin),
            label: format!("{label}, local agent pid {pid}"),
        },
        pid,
    })
}

/// `program agent --stdio --root ROOT`: the arguments of a local agent.
pub fn agent_args(root: &Path) -> Vec<OsString> {
    vec![
        "agent".into(),
        "--stdio".into(),
        "--root".into(),
        root.as_os_str().to_owned(),
    ]
}
