//! `--ssh default|ID[=SOCKET|KEY[,KEY…]]`, as buildx reads it: an agent
//! socket per id for `RUN --mount=type=ssh,id=ID`.
//!
//! - `default` or `ID` alone: the agent at `$SSH_AUTH_SOCK`;
//! - `ID=SOCKET`: that agent socket;
//! - `ID=KEY[,KEY…]`: private key files, loaded into a private `ssh-agent`
//!   started for this build (and stopped with it), so that the keys are only
//!   ever read by OpenSSH's own agent, never by the build.

use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The agents of one build; private agents stop on drop.
#[derive(Default)]
pub struct SshAgents {
    /// `(id, socket)` in the order given.
    pub sockets: Vec<(String, PathBuf)>,
    private: Vec<(Child, tempfile::TempDir)>,
}

impl std::fmt::Debug for SshAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshAgents")
            .field(
                "ids",
                &self.sockets.iter().map(|(i, _)| i).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Drop for SshAgents {
    fn drop(&mut self) {
        for (mut c, _) in self.private.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn is_socket(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

fn default_socket(id: &str) -> Result<PathBuf> {
    match std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) {
        Some(s) => Ok(PathBuf::from(s)),
        None => bail!(
            "--ssh {id}: SSH_AUTH_SOCK is not set; start an agent (eval $(ssh-agent); ssh-add) \
             or give --ssh {id}=SOCKET|KEY"
        ),
    }
}

/// Start a private `ssh-agent` holding `keys`; returns its socket.
fn private_agent(id: &str, keys: &[PathBuf], out: &mut SshAgents) -> Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix("xbuild-ssh-")
        .tempdir()
        .context("creating a directory for the ssh agent")?;
    let sock = dir.path().join("agent.sock");
    let child = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("--ssh {id}: starting ssh-agent (is OpenSSH installed?)"))?;
    out.private.push((child, dir));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !is_socket(&sock) {
        if std::time::Instant::now() > deadline {
            bail!("--ssh {id}: ssh-agent did not create its socket");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for k in keys {
        let o = Command::new("ssh-add")
            .arg("-q")
            .arg(k)
            .env("SSH_AUTH_SOCK", &sock)
            .env("SSH_ASKPASS_REQUIRE", "never")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("--ssh {id}: running ssh-add"))?;
        if !o.status.success() {
            bail!(
                "--ssh {id}: ssh-add {} failed (keys with a passphrase need an agent: \
                 ssh-add it yourself and pass --ssh {id}): {}",
                k.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
    Ok(sock)
}

/// Parse every `--ssh` value.
pub fn parse(specs: &[String]) -> Result<SshAgents> {
    let mut out = SshAgents::default();
    for spec in specs {
        for part in spec.split_whitespace() {
            let (id, paths) = match part.split_once('=') {
                Some((id, p)) => (id, Some(p)),
                None => (part, None),
            };
            if id.is_empty() {
                bail!("invalid --ssh {part:?}: expected default|ID[=SOCKET|KEY[,KEY...]]");
            }
            if out.sockets.iter().any(|(i, _)| i == id) {
                bail!("--ssh {id} is given twice");
            }
            let socket = match paths {
                None | Some("") => default_socket(id)?,
                Some(p) => {
                    let list: Vec<PathBuf> = p.split(',').map(PathBuf::from).collect();
                    for f in &list {
                        if !f.exists() {
                            return Err(anyhow!("--ssh {id}: {} does not exist", f.display()));
                        }
                    }
                    if list.len() == 1 && is_socket(&list[0]) {
                        list[0].clone()
                    } else {
                        private_agent(id, &list, &mut out)?
                    }
                }
            };
            out.sockets.push((id.to_string(), socket));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("a.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let a = parse(&[format!("build={}", sock.display())]).unwrap();
        assert_eq!(a.sockets, vec![("build".to_string(), sock.clone())]);
        assert!(!format!("{a:?}").contains("a.sock"));
        assert!(parse(&["x=/nonexistent/key".into()]).is_err());
        assert!(parse(&[
            format!("x={}", sock.display()),
            format!("x={}", sock.display())
        ])
        .is_err());
        assert!(parse(&["=y".into()]).is_err());
    }

    #[test]
    fn key_files_go_into_a_private_agent() {
        if Command::new("ssh-keygen").arg("-?").output().is_err()
            || Command::new("ssh-agent").arg("-?").output().is_err()
        {
            eprintln!("skipping: OpenSSH client tools are not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("id");
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(ok.success());
        let agents = parse(&[format!("deploy={}", key.display())]).unwrap();
        let (id, sock) = &agents.sockets[0];
        assert_eq!(id, "deploy");
        let listed = Command::new("ssh-add")
            .arg("-L")
            .env("SSH_AUTH_SOCK", sock)
            .output()
            .unwrap();
        let pubkey = std::fs::read_to_string(d.path().join("id.pub")).unwrap();
        let key_part = pubkey.split_whitespace().nth(1).unwrap();
        assert!(String::from_utf8_lossy(&listed.stdout).contains(key_part));
        let sock = sock.clone();
        drop(agents);
        assert!(Command::new("ssh-add")
            .arg("-L")
            .env("SSH_AUTH_SOCK", &sock)
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true));
    }
}
