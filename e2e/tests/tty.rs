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
        Tmux::start_sized(command, 120, 40)
    }

    /// Starts `command` in a detached session of `cols`x`rows`.
    fn start_sized(command: &str, cols: u16, rows: u16) -> Tmux {
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
                &cols.to_string(),
                "-y",
                &rows.to_string(),
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

    /// The whole history with colour attributes as escape sequences.
    fn capture_escapes(&self) -> String {
        let out = self
            .cmd()
            .args([
                "capture-pane",
                "-p",
                "-e",
                "-J",
                "-S",
                "-",
                "-t",
                &self.session,
            ])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends keys (`C-c`) to the session.
    fn send_keys(&self, keys: &str) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", &self.session, keys])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
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

/// The shell command that runs `xbuild ARGS` with `xb`'s state in a tmux
/// pane, then says how it exited and stays open.
fn pane_command(xb: &Xbuild, env: &str, builds: &[String]) -> String {
    let root = xb.root();
    let mut cmd = String::from("trap 'true' INT; ");
    for b in builds {
        // `!COMMAND`: a shell command between builds, not an xbuild run.
        if let Some(shell) = b.strip_prefix('!') {
            cmd.push_str(&format!("{shell}; "));
            continue;
        }
        cmd.push_str(&format!(
            "env XBUILD_ROOT={root} XBUILD_CONFIG={config} DOCKER_CONFIG={docker} {env} {bin} {b}; ",
            root = quote(s(root)),
            config = quote(s(&root.join("config.yaml"))),
            docker = quote(s(&root.join("docker"))),
            bin = quote(s(&xbuild_bin())),
        ));
    }
    cmd.push_str("echo \"xbuild exited $?\"; sleep 300");
    cmd
}

/// Columns a captured line takes (tmux gives plain text; wide characters
/// are not used by these builds).
fn cols(l: &str) -> usize {
    l.chars().count()
}

/// Issue 21: at 80 and 120 columns no line is longer than the terminal
/// (nothing wraps: tmux's joined capture would show a wrapped line as one
/// longer line), the summary table keeps one row per platform, pull lines
/// name their platform, the step counts agree, and colour follows
/// NO_COLOR. The screens are saved as fixtures (`tty-80-end.txt`,
/// `tty-120-end.txt`) for docs/guide/progress.md.
#[test]
fn tty_fits_80_and_120_columns_with_colour_on_and_off() {
    if testbed::require_cmd("tmux").is_none() {
        return;
    }
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let base = publish_base(&Xbuild::new(), &reg);
    let dockerfile = |word: &str| {
        format!(
            "ARG BASE\n\
             FROM $BASE\n\
             ENV GREETING=hello\n\
             RUN echo \"$GREETING from a rather long instruction that does not fit in eighty columns, {word}\" > /greeting\n\
             RUN for i in 1 2 3; do echo \"output line $i of a step whose lines are long enough to need cutting at eighty columns\"; sleep 0.3; done\n\
             WORKDIR /app\n\
             CMD [\"cat\", \"/greeting\"]\n"
        )
    };
    for (width, colour) in [(80u16, false), (120u16, true)] {
        // A fresh state directory: the base is pulled, and the second
        // build misses on the changed instruction.
        let xb = Xbuild::new();
        // Both builds in one context (one project: explanations compare
        // only with the same project's records); the second Dockerfile
        // replaces the first between them.
        let ctx = context(&[("Dockerfile", &dockerfile("first"))]);
        let ctx2 = context(&[("Dockerfile", &dockerfile("second"))]);
        let swap = format!(
            "!cp {} {}",
            quote(s(&ctx2.path().join("Dockerfile"))),
            quote(s(&ctx.path().join("Dockerfile")))
        );
        let build = |dir: &Path| {
            format!(
                "build --progress tty --platform linux/amd64,linux/arm64 --build-arg BASE={} {}",
                quote(&base),
                quote(s(dir))
            )
        };
        let env = if colour {
            "TERM=xterm-256color"
        } else {
            "NO_COLOR=1 TERM=xterm-256color"
        };
        let tmux = Tmux::start_sized(
            &pane_command(&xb, env, &[build(ctx.path()), swap, build(ctx.path())]),
            width,
            30,
        );
        tmux.wait_for("the end of both builds", Duration::from_secs(600), |sc| {
            sc.contains("xbuild exited")
        });
        let all = tmux.capture(true, true);
        assert!(all.contains("xbuild exited 0"), "{all}");
        for l in all.lines() {
            assert!(
                cols(l) <= usize::from(width),
                "{width} columns: {l:?}\n{all}"
            );
        }
        // The closing build-check warning (`FROM $BASE` with no default) is
        // folded to the width, every word kept.
        let words: Vec<&str> = all.split_whitespace().collect();
        assert!(
            words
                .windows(4)
                .any(|w| w == ["InvalidDefaultArgInFrom:", "Default", "value", "for"])
                && words.windows(3).any(|w| w == ["name", "(line", "2)"]),
            "{width} columns: the warning is not shown whole:\n{all}"
        );
        // The summary: its header and one row per platform, after each build.
        let lines: Vec<&str> = all.lines().collect();
        let headers: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                l.split_whitespace().collect::<Vec<_>>()
                    == ["PLATFORM", "WORKER", "STEPS", "CACHED", "TIME", "DIGEST"]
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(headers.len(), 2, "{all}");
        for h in &headers {
            for (k, (platform, worker)) in [("linux/amd64", "local"), ("linux/arm64", "qemu")]
                .iter()
                .enumerate()
            {
                let w: Vec<&str> = lines[h + 1 + k].split_whitespace().collect();
                assert_eq!(w.first(), Some(platform), "{all}");
                assert_eq!(w.get(1), Some(worker), "{all}");
                // Every instruction after FROM (ENV, RUN, RUN, WORKDIR,
                // CMD): what the live counters count too.
                assert_eq!(w.get(2), Some(&"5"), "{all}");
                assert!(w.last().is_some_and(|d| d.starts_with("sha256:")), "{all}");
            }
            assert!(lines[h + 3].starts_with("image digest: sha256:"), "{all}");
        }
        // Metadata-only instructions take no number; RUN lines do.
        assert!(
            all.contains("[linux/amd64 stage-0] ENV GREETING=hello"),
            "{all}"
        );
        assert!(
            all.contains("[linux/arm64 stage-0 2/4] RUN echo \"$GREETING"),
            "{all}"
        );
        // The second build misses on the changed RUN, reason on one line.
        let miss: Vec<&str> = all
            .lines()
            .filter(|l| {
                l.trim_start()
                    .starts_with("cache miss: instruction changed")
            })
            .collect();
        assert_eq!(miss.len(), 2, "{all}");
        // Pulls name the platform.
        let pulled: Vec<&str> = all.lines().filter(|l| l.starts_with("pulled ")).collect();
        assert!(!pulled.is_empty(), "{all}");
        for l in &pulled {
            assert!(
                l.starts_with("pulled linux/amd64 ") || l.starts_with("pulled linux/arm64 "),
                "{l}"
            );
        }
        // Colour: SGR sequences only when allowed.
        let esc = tmux.capture_escapes();
        if colour {
            assert!(esc.contains("\x1b[32mDONE"), "no colour:\n{esc}");
        } else {
            assert!(!esc.contains("\x1b["), "colour despite NO_COLOR:\n{esc}");
        }
        save_screen(&format!("tty-{width}-end.txt"), &tmux.capture(false, true));
    }
}

/// Pids whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                out.push(format!("{name}: {cmd}"));
            }
        }
    }
    out
}

/// Mount points under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(&dir))
        .collect()
}

/// Issue 21: Ctrl-C while both platforms run a step: exit code 130, every
/// running step marked CANCELED, a "cancelled" line, and no process of the
/// steps nor any mount left under the state directory.
#[test]
fn tty_ctrl_c_cancels_cleanly() {
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
    // A number no other process on the machine sleeps for.
    let marker = format!("{}", 31_000 + std::process::id() % 9_000);
    let ctx = context(&[(
        "Dockerfile",
        &format!("ARG BASE\nFROM $BASE\nRUN echo started; sleep {marker}\nRUN echo never\n"),
    )]);
    let build = format!(
        "build --progress tty --platform linux/amd64,linux/arm64 --build-arg BASE={} {}",
        quote(&base),
        quote(s(ctx.path()))
    );
    let tmux = Tmux::start_sized(&pane_command(&xb, "", &[build]), 100, 30);
    tmux.wait_for("both steps running", Duration::from_secs(300), |sc| {
        sc.matches("| started").count() == 2 || sc.contains("xbuild exited")
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_with(&format!("sleep {marker}")).len() < 2 {
        assert!(Instant::now() < deadline, "the steps' sleeps did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    tmux.send_keys("C-c");
    tmux.wait_for("xbuild to exit", Duration::from_secs(120), |sc| {
        sc.contains("xbuild exited")
    });
    let all = tmux.capture(true, true);
    assert!(all.contains("xbuild exited 130"), "{all}");
    assert!(all.contains("cancelled"), "{all}");
    for platform in ["linux/amd64", "linux/arm64"] {
        let step = format!("[{platform} stage-0 2/3] RUN echo started; sleep {marker}");
        let lines: Vec<&str> = all.lines().filter(|l| l.contains(&step)).collect();
        assert_eq!(lines.len(), 1, "{step}:\n{all}");
        assert!(lines[0].ends_with("CANCELED"), "{all}");
    }
    assert!(!all.contains("ERROR"), "{all}");
    assert!(!all.contains("error:"), "{all}");
    assert!(!all.contains("RUN echo never"), "{all}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_with(&format!("sleep {marker}"));
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "steps still running: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mounts_under(xb.root()), Vec::<String>::new());
    save_screen("tty-ctrl-c.txt", &tmux.capture(false, true));
}
