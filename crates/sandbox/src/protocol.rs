//! What the executor and the sandbox init say to each other.
//!
//! The executor passes two pipe ends to the init and names them in the
//! environment variable [`FDS_ENV`] as `SPEC_FD,REPORT_FD`. It writes one
//! [`InitRequest`] as JSON to the first and closes it; the init writes
//! newline-terminated [`Report`]s as JSON to the second until it exits.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{InitError, ProcessSpec};

/// Environment variable naming the request and report pipe ends.
pub(crate) const FDS_ENV: &str = "_XBUILD_SANDBOX_INIT_FDS";

/// Everything the init needs.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitRequest {
    /// Absolute, canonical root filesystem.
    pub rootfs: PathBuf,
    /// The process.
    pub spec: ProcessSpec,
    /// Host file to bind-mount at `/etc/hostname`.
    pub hostname_file: Option<PathBuf>,
    /// Skip `pivot_root` and use `chroot`.
    pub no_pivot: bool,
    /// The pasta program, for [`NetworkMode::Isolated`](crate::NetworkMode).
    #[serde(default)]
    pub pasta: Option<PathBuf>,
}

/// One message from the init.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Report {
    /// A mount point was created, relative to the root filesystem.
    Created { path: PathBuf },
    /// Setup or exec failed; the process never ran.
    Error { error: InitError },
    /// The process ended.
    Exited { code: i32, signal: Option<i32> },
}

/// Writes one report as a JSON line. Errors are ignored by callers that
/// cannot do anything better (the executor treats a missing report as a
/// dead init).
pub(crate) fn send(fd: BorrowedFd<'_>, report: &Report) -> io::Result<()> {
    let mut line = serde_json::to_vec(report).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut file = FdWriter(fd);
    file.write_all(&line)
}

/// `Write` over a borrowed fd, without taking ownership.
struct FdWriter<'a>(BorrowedFd<'a>);

impl Write for FdWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::write(self.0.as_fd(), buf) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decodes the report stream; the last [`Report::Error`] and
/// [`Report::Exited`] win.
pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let mut out = Decoded::default();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let report: Report = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        match report {
            Report::Created { path } => out.created.push(path),
            Report::Error { error } => out.error = Some(error),
            Report::Exited { code, signal } => out.exited = Some((code, signal)),
        }
    }
    Ok(out)
}

/// The report stream, decoded.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub created: Vec<PathBuf>,
    pub error: Option<InitError>,
    pub exited: Option<(i32, Option<i32>)>,
}
