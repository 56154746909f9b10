//! `xbuild agent --stdio [--root DIR]`: serve one coordinator on standard
//! input and output. Standard output carries only protocol frames: the
//! original descriptor is kept for the protocol and fd 1 is pointed at
//! stderr, so nothing else (a stray print, a child process) can corrupt
//! the stream. Logs go to stderr.

use crate::cli::AgentArgs;
use anyhow::{Context, Result};
use std::os::fd::{FromRawFd, OwnedFd};
use xbuild_oci::Platform;
use xbuild_remote::agent::{self, AgentConfig};

/// Takes fd 1 for the protocol and points fd 1 at stderr.
fn protocol_stdout() -> Result<std::fs::File> {
    // SAFETY: dup/dup2 on the process's own standard descriptors.
    let fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("duplicating standard output");
    }
    // SAFETY: as above.
    if unsafe { libc::dup2(2, 1) } < 0 {
        return Err(std::io::Error::last_os_error()).context("redirecting standard output");
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `xbuild agent`.
pub fn run(args: &AgentArgs) -> Result<()> {
    let out = protocol_stdout()?;
    // SAFETY: fd 0 is the process's standard input, owned by nobody else here.
    let input = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(0) });
    let root = match &args.root {
        Some(r) => r.clone(),
        None => crate::paths::xbuild_root()?,
    };
    std::fs::create_dir_all(&root)
        .with_context(|| format!("creating the agent state directory {}", root.display()))?;
    // The pid, for operators (and the tests that kill an agent mid-build).
    let _ = std::fs::write(root.join("agent.pid"), std::process::id().to_string());
    let (init_program, init_args) = xbuild_coordinator::resolve::init_program()?;
    let cfg = AgentConfig {
        root,
        init_program,
        init_args,
        native: Platform::host_linux(),
        emulated: crate::nodes::local_emulated(),
        peer: "coordinator".into(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let r = rt.block_on(async move {
        let stdin = tokio::fs::File::from_std(input);
        let stdout = tokio::fs::File::from_std(out);
        agent::serve(stdin, stdout, cfg).await
    });
    // The stdin reader may still be parked in a blocking read: leave now.
    let code = match r {
        Ok(()) => 0,
        Err(e) => {
            // One write: stderr is unbuffered, and the coordinator (a
            // local agent shares its stderr) may print at the same time;
            // `eprintln!` would write each piece of the message apart.
            use std::io::Write;
            let line = format!("xbuild agent: {e}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            1
        }
    };
    std::process::exit(code)
}
