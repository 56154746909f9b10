//! `xbuild login REGISTRY [-u USER] [--password-stdin]` and
//! `xbuild logout REGISTRY`, like `docker login` / `docker logout`.
//!
//! Login checks the credentials against the registry first (`GET /v2/` with
//! basic auth, or the token endpoint of a bearer challenge), then records
//! them where `docker login` would: the registry's credential helper
//! (`credHelpers` / `credsStore`, `docker-credential-<helper> store`), else
//! `auths.<registry>.auth = base64(user:password)` in
//! `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`), written
//! atomically with mode 0600. The password is never printed or logged.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, IsTerminal, Read, Write};
use xbuild_registry::auth::normalize_registry_key;
use xbuild_registry::{DockerConfig, Secret};

/// What `xbuild login` is about to check and store; `Debug` never shows
/// the password ([`Secret`] redacts it).
#[derive(Debug)]
struct Login {
    registry: String,
    username: String,
    password: Secret,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The registry as given, checked and reduced to `host[:port]`
/// (`https://reg.example/v2/` -> `reg.example`, Docker Hub's aliases ->
/// `docker.io`).
fn registry_key(registry: &str) -> Result<String> {
    let key = normalize_registry_key(registry);
    if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c.is_control()) {
        bail!("invalid registry {registry:?}: expected a host name such as registry.example.com or localhost:5000");
    }
    Ok(key)
}

/// `xbuild login`.
pub fn cmd_login(registry: &str, username: Option<&str>, password_stdin: bool) -> Result<()> {
    let registry = registry_key(registry)?;
    let login = read_credentials(registry, username, password_stdin)?;
    let client = crate::config::registry(None)?;
    let config_path = client.docker_config_path().to_path_buf();
    let result = runtime()?.block_on(client.login(
        &login.registry,
        &login.username,
        login.password.expose(),
    ));
    if let Err(e) = result {
        if e.is_unauthorized() {
            bail!(
                "login to {} failed: 401 Unauthorized: the registry refused user {:?} \
                 (wrong user name or password); nothing was stored",
                login.registry,
                login.username
            );
        }
        return Err(anyhow!(e).context(format!("login to {} failed", login.registry)));
    }
    let helper = DockerConfig::load(&config_path)
        .ok()
        .and_then(|c| c.helper_for(&login.registry).map(|(h, _)| h.to_string()));
    if helper.is_none() {
        eprintln!(
            "WARNING! Your password is stored unencrypted in {}.\n\
             Configure a credential helper to remove this warning. See\n\
             https://docs.docker.com/go/credential-store/",
            config_path.display()
        );
    }
    println!("Login Succeeded");
    Ok(())
}

/// `xbuild logout`.
pub fn cmd_logout(registry: &str) -> Result<()> {
    let registry = registry_key(registry)?;
    let client = crate::config::registry(None)?;
    let removed = client
        .logout(&registry)
        .with_context(|| format!("logout from {registry} failed"))?;
    if removed {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(())
}

/// The user name and password: the password from standard input
/// (`--password-stdin`) or typed at the terminal without echo.
fn read_credentials(
    registry: String,
    username: Option<&str>,
    password_stdin: bool,
) -> Result<Login> {
    let stdin = std::io::stdin();
    if password_stdin {
        let Some(username) = username else {
            bail!("--password-stdin needs the user name: add --username USER (-u USER)");
        };
        let mut raw = String::new();
        stdin
            .lock()
            .read_to_string(&mut raw)
            .context("reading the password from standard input")?;
        // Like docker: one trailing newline (from `echo`) is not part of it.
        let trimmed = raw.strip_suffix('\n').unwrap_or(&raw);
        let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
        let password = Secret::new(trimmed);
        drop(raw);
        return finish(registry, username.to_string(), password);
    }
    if !stdin.is_terminal() {
        bail!(
            "cannot ask for a password: standard input is not a terminal; \
             pass it on standard input instead: \
             `printf '%s' \"$PASSWORD\" | xbuild login {registry} -u USER --password-stdin`"
        );
    }
    let username = match username {
        Some(u) => u.to_string(),
        None => {
            eprint!("Username: ");
            std::io::stderr().flush().ok();
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .context("reading the user name")?;
            line.trim().to_string()
        }
    };
    if username.is_empty() {
        bail!("a user name is required");
    }
    let password = read_password_no_echo("Password: ")?;
    finish(registry, username, password)
}

fn finish(registry: String, username: String, password: Secret) -> Result<Login> {
    if username.trim().is_empty() {
        bail!("a user name is required");
    }
    if username.contains(':') {
        bail!("invalid user name {username:?}: it must not contain ':'");
    }
    if password.expose().is_empty() {
        bail!("a password is required (standard input was empty)");
    }
    Ok(Login {
        registry,
        username,
        password,
    })
}

/// The terminal settings to put back if the prompt is interrupted.
static SAVED_TERMIOS: std::sync::Mutex<Option<libc::termios>> = std::sync::Mutex::new(None);

/// Restores the terminal's echo on drop (and on Ctrl-C while waiting).
struct EchoOff {
    fd: libc::c_int,
    saved: libc::termios,
    old_sigint: libc::sighandler_t,
}

extern "C" fn restore_and_die(sig: libc::c_int) {
    // try_lock: never block in a signal handler; the prompt holds no lock
    // while it waits for input.
    if let Ok(saved) = SAVED_TERMIOS.try_lock() {
        if let Some(t) = saved.as_ref() {
            // SAFETY: tcsetattr is async-signal-safe; `t` is a valid termios.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t);
            }
        }
    }
    // SAFETY: restore the default action and re-raise so the exit status
    // says "killed by SIGINT" as usual.
    unsafe {
        libc::write(libc::STDERR_FILENO, b"\n".as_ptr().cast(), 1);
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

impl EchoOff {
    fn new(fd: libc::c_int) -> Result<EchoOff> {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; saved is a valid out pointer.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error()).context("reading terminal settings");
        }
        *SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        // SAFETY: installing a handler that only calls async-signal-safe
        // functions.
        let old_sigint = unsafe {
            libc::signal(
                libc::SIGINT,
                restore_and_die as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
        let mut quiet = saved;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL);
        quiet.c_lflag |= libc::ICANON;
        // SAFETY: fd is a terminal; quiet is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: put the previous handler back.
            unsafe { libc::signal(libc::SIGINT, old_sigint) };
            return Err(e).context("turning off terminal echo");
        }
        Ok(EchoOff {
            fd,
            saved,
            old_sigint,
        })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restoring settings read from the same terminal.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
            libc::signal(libc::SIGINT, self.old_sigint);
        }
        *SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Prompt on stderr and read one line from the terminal on stdin with echo
/// turned off.
fn read_password_no_echo(prompt: &str) -> Result<Secret> {
    let mut line = String::new();
    {
        // Echo goes off before the prompt shows, so nothing typed in
        // response to it can be echoed.
        let _echo_off = EchoOff::new(libc::STDIN_FILENO)?;
        eprint!("{prompt}");
        std::io::stderr().flush().ok();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password")?;
    }
    eprintln!();
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    Ok(Secret::new(password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_debug_redacts_the_password() {
        let l = Login {
            registry: "r.example".into(),
            username: "bob".into(),
            password: Secret::new("hunter2"),
        };
        let d = format!("{l:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("bob") && d.contains("<redacted>"), "{d}");
    }

    #[test]
    fn registry_keys() {
        assert_eq!(registry_key("localhost:5000").unwrap(), "localhost:5000");
        assert_eq!(
            registry_key("https://Reg.Example:8443/v2/").unwrap(),
            "reg.example:8443"
        );
        assert_eq!(
            registry_key("https://index.docker.io/v1/").unwrap(),
            "docker.io"
        );
        assert!(registry_key("").is_err());
        assert!(registry_key("a b").is_err());
    }

    #[test]
    fn finish_checks_fields() {
        let ok = finish("r".into(), "u".into(), Secret::new("p")).unwrap();
        assert_eq!(ok.username, "u");
        assert!(finish("r".into(), "".into(), Secret::new("p")).is_err());
        assert!(finish("r".into(), "a:b".into(), Secret::new("p")).is_err());
        let e = finish("r".into(), "u".into(), Secret::new(""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("password is required"), "{e}");
    }
}
