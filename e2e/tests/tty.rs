//! `--progress tty` in a real terminal: the CLI runs inside tmux (a
//! pseudo-terminal of 120x40), the screen is captured while both platforms
//! build and again at the end. Mid-build there is one live block per
//! platform with its worker; at the end the live area is gone and the
//! summary table sits under the log of finished steps. The captured screens
//! are saved as `e2e/fixtures/tty-screen-mid.txt` and `tty-screen-end.txt`
//! (rewritten with `XBUILD_UPDATE_FIXTURES=1`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{context, publish_base, require_multiplatform, s, xbuild_bin, Xbuild};

/// A private tmux server (its own socket in a temp dir) with one session;
/// the server is killed on drop, whatever happened in between.
///
/// The server runs in the foreground (`tmux -D`) as our child instead of
/// daemonizing: tmux's daemon() refuses to start when `/dev/null` is not
/// a character device, which a sandbox or an earlier careless process can
/// leave behind.
struct Tmux {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    session: String,
    server: Child,
}

impl Tmux {
    /// Starts `command` (run by the shell) in a detached session of 120x40.
    fn start(command: &str) -> Tmux {
        let dir = tempfile::Builder::new()
            .prefix("xbuild-tty-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("tmux.sock");
        let server = Command::new("tmux")
            .arg("-D")
            .arg("-S")
            .arg(&socket)
            .args(["-f", "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the tmux server");
        let mut t = Tmux {
            _dir: dir,
            socket,
            session: format!("xbuild-tty-{}", std::process::id()),
            server,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.socket.exists() {
            if let Ok(Some(status)) = t.server.try_wait() {
                panic!("the tmux server exited at once: {status}");
            }
            assert!(Instant::now() < deadline, "the tmux server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = t
            .cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                &t.session,
                "-x",
                "120",
                "-y",
                "40",
            ])
            .arg(command)
            .status()
            .expect("spawn tmux");
        assert!(status.success(), "tmux new-session failed: {status}");
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).args(["-f", "/dev/null"]);
        c
    }

    /// The visible screen as text (with the scrollback above it when
    /// `history`), trailing blanks dropped. `join` joins wrapped lines
    /// (the summary's rows are wider than the terminal); not for the live
    /// area, whose lines indicatif pads to the full width.
    fn capture(&self, join: bool, history: bool) -> String {
        let mut cmd = self.cmd();
        cmd.args(["capture-pane", "-p", "-t", &self.session]);
        if join {
            cmd.arg("-J");
        }
        if history {
            cmd.args(["-S", "-"]);
        }
        let out = cmd.output().expect("tmux capture-pane");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        while lines.last() == Some(&"") {
            lines.pop();
        }
        let mut s = lines.join("\n");
        s.push('\n');
        s
    }

    /// Polls the screen until `done` holds, panicking with the last screen
    /// after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.capture(false, false);
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Single-quoted for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Where a captured screen is saved: the committed fixture with
/// `XBUILD_UPDATE_FIXTURES=1`, else cargo's temp dir for integration tests
/// (so a test run never dirties the work tree; the path is printed).
fn save_screen(name: &str, text: &str) {
    let dir = if std::env::var_os("XBUILD_UPDATE_FIXTURES").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    };
    std::fs::create_dir_all(&dir).expect("fixtures dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the captured screen");
    eprintln!("captured screen saved as {}", path.display());
}

#[test]
fn tty_progress_shows_live_platform_blocks_then_a_clean_summary() {
    if testbed::require_cmd("tmux").is_none() {
        return;
    }
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        "ARG BASE\n\
         FROM $BASE\n\
         RUN for i in 1 2 3 4 5 6; do echo line $i; sleep 0.5; done\n\
         RUN uname -m > /arch\n",
    )]);
    let tag = reg.reference("e2e/tty:1");
    let root = xb.root();
    let command = format!(
        "env XBUILD_ROOT={root} XBUILD_CONFIG={config} DOCKER_CONFIG={docker} \
         {bin} build --progress tty --platform linux/amd64,linux/arm64 \
         --build-arg BASE={base} -t {tag} --push {ctx}; \
         echo \"xbuild exited $?\"; sleep 120",
        root = quote(s(root)),
        config = quote(s(&root.join("config.yaml"))),
        docker = quote(s(&root.join("docker"))),
        bin = quote(s(&xbuild_bin())),
        base = quote(&base),
        tag = quote(&tag),
        ctx = quote(s(ctx.path())),
    );
    let tmux = Tmux::start(&command);

    // Mid-build: both platforms' blocks, the running RUN and its last
    // output lines (wait until both show three).
    let mid = tmux.wait_for("both platform blocks", Duration::from_secs(120), |sc| {
        (sc.contains("linux/amd64 @ local")
            && sc.contains("linux/arm64 @ qemu")
            && sc.matches("| line 3").count() == 2)
            || sc.contains("xbuild exited")
    });
    assert!(mid.contains("linux/amd64 @ local"), "{mid}");
    assert!(mid.contains("linux/arm64 @ qemu"), "{mid}");
    assert!(mid.contains("RUN for i in 1 2 3 4 5 6"), "{mid}");
    assert!(!mid.contains("xbuild exited"), "{mid}");
    save_screen("tty-screen-mid.txt", &mid);

    // The end: the summary under the log, the live area cleared.
    tmux.wait_for("the end of the build", Duration::from_secs(300), |sc| {
        sc.contains("xbuild exited")
    });
    let end = tmux.capture(true, false);
    save_screen("tty-screen-end.txt", &end);
    let all = tmux.capture(true, true);
    assert!(end.contains("xbuild exited 0"), "{all}");
    let lines: Vec<&str> = end.lines().collect();
    let header = lines
        .iter()
        .position(|l| {
            l.split_whitespace().collect::<Vec<_>>()
                == ["PLATFORM", "WORKER", "STEPS", "CACHED", "TIME", "DIGEST"]
        })
        .unwrap_or_else(|| panic!("no summary header:\n{end}"));
    for (platform, worker) in [("linux/amd64", "local"), ("linux/arm64", "qemu")] {
        assert!(
            lines[header..].iter().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&platform)
                    && w.get(1) == Some(&worker)
                    && w.last().is_some_and(|d| d.starts_with("sha256:"))
            }),
            "no summary row for {platform}:\n{end}"
        );
    }
    assert!(end.contains("image digest: sha256:"), "{end}");
    assert!(end.contains(&format!("pushed: {tag}@sha256:")), "{end}");
    // Each finished step is logged once above; no live block is left over.
    for platform in ["linux/amd64", "linux/arm64"] {
        let run = format!("[{platform} stage-0 2/3] RUN for i in 1 2 3 4 5 6");
        let logged: Vec<&str> = all.lines().filter(|l| l.contains(&run)).collect();
        assert_eq!(logged.len(), 1, "{run}:\n{all}");
        assert!(logged[0].contains("  DONE "), "{all}");
    }
    assert!(
        !all.contains(" @ local") && !all.contains(" @ qemu"),
        "{all}"
    );
    assert!(!all.contains("| line "), "{all}");
}
