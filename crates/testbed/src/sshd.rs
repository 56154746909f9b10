//! [`Sshd`]: a real OpenSSH server on a loopback address (127.0.0.2,
//! 127.0.0.3, …) and a free port, with its own host key and one authorized
//! client key, accepting root by key only. Killed on drop.

use crate::{io_err, run, which, Result, TestbedError};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The OpenSSH server binary.
pub const SSHD_BIN: &str = "/usr/sbin/sshd";

/// Generate a passphrase-less key pair (`KEY` and `KEY.pub`) of `kind`
/// (`ed25519`, `rsa`, `ecdsa`), replacing any existing one.
pub fn keygen(path: &Path, kind: &str) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", "xbuild-test", "-f"])
        .arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    run(&mut cmd).map(|_| ())
}

/// `SHA256:...` of a public key file, as `ssh-keygen -l` prints it.
pub fn fingerprint(pub_key: &Path) -> Result<String> {
    let out = run(Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(pub_key))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .map(str::to_string)
        .ok_or_else(|| TestbedError::Startup(format!("no fingerprint in {text:?}")))
}

/// A running `sshd -D -e -f CONFIG`.
pub struct Sshd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ip: String,
    port: u16,
}

impl Sshd {
    /// `Some(sshd)` on `ip`, or `None` after printing why when root,
    /// `sshd` or `ssh-keygen` is missing. Panics if it fails to start.
    pub fn start_or_skip(ip: &str) -> Option<Sshd> {
        crate::require_root()?;
        if !Path::new(SSHD_BIN).exists() {
            crate::skip("openssh-server is not installed");
            return None;
        }
        crate::require_cmd("ssh-keygen")?;
        Some(Sshd::start(ip).unwrap_or_else(|e| panic!("sshd did not start on {ip}: {e}")))
    }

    /// Start on `ip` (a loopback address) and a free port, with a new
    /// ed25519 host key and a new authorized ed25519 client key.
    pub fn start(ip: &str) -> Result<Sshd> {
        let dir = tempfile::Builder::new()
            .prefix("xbuild-sshd-")
            .tempdir()
            .map_err(io_err("create temp dir"))?;
        keygen(&dir.path().join("host_ed25519"), "ed25519")?;
        keygen(&dir.path().join("client_ed25519"), "ed25519")?;
        std::fs::copy(
            dir.path().join("client_ed25519.pub"),
            dir.path().join("authorized_keys"),
        )
        .map_err(io_err("write authorized_keys"))?;
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map_err(io_err(format!("bind {ip}:0")))?
            .port();
        let mut s = Sshd {
            child: None,
            dir,
            ip: ip.to_string(),
            port,
        };
        s.launch()?;
        Ok(s)
    }

    fn launch(&mut self) -> Result<()> {
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").map_err(io_err("create /run/sshd"))?;
        let d = self.dir.path();
        let config = format!(
            "Port {port}\nListenAddress {ip}\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nLogLevel VERBOSE\nMaxStartups 50\nMaxSessions 50\n",
            port = self.port,
            ip = self.ip,
            d = d.display()
        );
        let cfg = d.join("sshd_config");
        std::fs::write(&cfg, config).map_err(io_err("write sshd_config"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("sshd.log"))
            .map_err(io_err("create sshd log"))?;
        let mut cmd = Command::new(which(SSHD_BIN).unwrap_or_else(|| SSHD_BIN.into()));
        cmd.args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs here.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(io_err("spawn sshd"))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(15))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(TestbedError::Startup(format!(
                        "sshd exited: {status}; log: {}",
                        self.log()
                    )));
                }
            }
            if let Ok(mut s) = TcpStream::connect((self.ip.as_str(), self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 8];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(TestbedError::Startup(format!(
                    "sshd on {}:{} did not answer within {timeout:?}; log: {}",
                    self.ip,
                    self.port,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the listening server (SIGTERM, then SIGKILL) and reap it: new
    /// connections are refused. Sessions already open end when their
    /// client disconnects, as with any OpenSSH server.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::stop_child(child);
        }
    }

    /// Start again on the same address and port, with the same keys.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }

    /// Restart with a newly generated host key (a "reinstalled" node).
    pub fn restart_with_new_host_key(&mut self) -> Result<()> {
        self.stop();
        keygen(&self.dir.path().join("host_ed25519"), "ed25519")?;
        self.launch()
    }

    /// Authorize another public key file.
    pub fn authorize(&self, pub_key: &Path) -> Result<()> {
        let key = std::fs::read_to_string(pub_key).map_err(io_err("read public key"))?;
        let path = self.dir.path().join("authorized_keys");
        let mut all = std::fs::read_to_string(&path).map_err(io_err("read authorized_keys"))?;
        all.push_str(key.trim());
        all.push('\n');
        std::fs::write(&path, all).map_err(io_err("write authorized_keys"))
    }

    /// The loopback address.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ssh://root@IP:PORT`.
    pub fn url(&self) -> String {
        format!("ssh://root@{}:{}", self.ip, self.port)
    }

    /// The authorized client private key (passphrase-less ed25519).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }

    /// The server's host public key file.
    pub fn host_key_pub(&self) -> PathBuf {
        self.dir.path().join("host_ed25519.pub")
    }

    /// The host key's `SHA256:` fingerprint.
    pub fn host_fingerprint(&self) -> Result<String> {
        fingerprint(&self.host_key_pub())
    }

    /// The `known_hosts` line for this server: `[IP]:PORT ssh-ed25519 AAAA…`.
    pub fn known_hosts_line(&self) -> Result<String> {
        let key = std::fs::read_to_string(self.host_key_pub()).map_err(io_err("read host key"))?;
        let mut words = key.split_whitespace();
        let (Some(alg), Some(b64)) = (words.next(), words.next()) else {
            return Err(TestbedError::Startup(format!("bad host key file: {key:?}")));
        };
        Ok(format!("[{}]:{} {alg} {b64}", self.ip, self.port))
    }

    /// Append [`Sshd::known_hosts_line`] to `path` (creating it).
    pub fn write_known_hosts(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io_err("create known_hosts dir"))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err("open known_hosts"))?;
        writeln!(f, "{}", self.known_hosts_line()?).map_err(io_err("write known_hosts"))
    }

    /// The server's log so far (sshd -e writes it to stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The server's directory (keys, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}
