//! Rendering the engine's event stream: BuildKit-shaped plain lines, a live
//! per-platform view for terminals (`tty`), one JSON object per line
//! (`rawjson`), or nothing (`quiet`).
//!
//! Plain output, as DESIGN.md shows it:
//!
//! ```text
//! #3 [linux/arm64 build 2/5] RUN make
//! #3 0.412 cc -O2 -c main.c
//! #3 DONE 1.9s
//! #4 [linux/amd64 build 2/5] RUN make
//! #4 CACHED
//! ```
//!
//! The tty view redraws a live area at the bottom of the terminal with one
//! block per platform (its worker, the running steps with their elapsed
//! time and last few output lines, byte bars with throughput for pulls and
//! pushes) and prints each finished step once above it, so that the
//! scrollback keeps a clean log when the live area is cleared:
//!
//! ```text
//! #5 [linux/arm64 stage-1 2/6] RUN uname -m  DONE 0.4s
//! #6 [linux/amd64 stage-1 2/6] RUN uname -m  CACHED
//! / linux/arm64 @ qemu  2 done, 0 cached  3.1s
//!     #7 [stage-1 3/6] RUN make  1.5s
//!        | cc -O2 -c main.c
//! ```

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use xbuild_engine::events::{Event, EventSink, LogStream, Transfer, VertexId};

/// How to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// BuildKit's numbered lines.
    Plain,
    /// A live per-platform view redrawn in place, finished steps printed
    /// above it (plain finished-step lines when stderr is not a terminal).
    Tty,
    /// One JSON event per line.
    RawJson,
    /// Nothing.
    Quiet,
}

#[derive(Default)]
struct VertexState {
    number: u64,
    /// Bytes of an unfinished log line, per stream.
    partial: [Vec<u8>; 2],
    cached: bool,
}

#[derive(Default)]
struct State {
    next: u64,
    vertices: HashMap<VertexId, VertexState>,
    /// Full output per vertex, kept for the failure report.
    logs: HashMap<VertexId, Vec<String>>,
    names: HashMap<VertexId, String>,
    failed: Vec<VertexId>,
    steps_cached: usize,
}

/// A thread-safe renderer writing to stderr (or any writer, for tests).
pub struct Renderer {
    style: Style,
    out: Mutex<Box<dyn Write + Send>>,
    state: Mutex<State>,
    /// The tty view's state and live area (`Style::Tty` only).
    live: Option<Arc<Live>>,
    /// The thread that redraws the live area.
    ticker: Mutex<Option<JoinHandle<()>>>,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Renderer {
    /// Render to standard error. `Style::Tty` draws its live area only when
    /// stderr is a terminal; otherwise it prints just the finished steps.
    pub fn stderr(style: Style) -> Self {
        if style != Style::Tty || !std::io::stderr().is_terminal() {
            return Self::to_writer(style, Box::new(std::io::stderr()));
        }
        // One bar whose message is the whole live area: indicatif redraws it
        // in place at the terminal's current width and prints log lines
        // above it.
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(20));
        if let Ok(s) = ProgressStyle::with_template("{msg}") {
            bar.set_style(s);
        }
        let r = Self::build(style, Box::new(std::io::stderr()), Some(bar));
        r.start_ticker();
        r
    }

    /// Render to any writer (`Style::Tty` without a live area: finished
    /// steps only).
    pub fn to_writer(style: Style, out: Box<dyn Write + Send>) -> Self {
        Self::build(style, out, None)
    }

    fn build(style: Style, out: Box<dyn Write + Send>, bar: Option<ProgressBar>) -> Self {
        let live = (style == Style::Tty).then(|| {
            Arc::new(Live {
                state: Mutex::new(TtyState::new(Instant::now())),
                bar,
                stop: AtomicBool::new(false),
                finished: AtomicBool::new(false),
            })
        });
        Renderer {
            style,
            out: Mutex::new(out),
            state: Mutex::new(State::default()),
            live,
            ticker: Mutex::new(None),
        }
    }

    /// Starts the thread that redraws the live area ten times a second
    /// (elapsed times and the spinner move even when no event arrives).
    fn start_ticker(&self) {
        let Some(live) = self.live.as_ref().filter(|l| l.bar.is_some()) else {
            return;
        };
        let live = Arc::clone(live);
        let handle = std::thread::Builder::new()
            .name("xbuild-progress".into())
            .spawn(move || {
                let mut tick = 0usize;
                while !live.stop.load(Ordering::Acquire) {
                    live.redraw(tick);
                    tick = tick.wrapping_add(1);
                    std::thread::park_timeout(Duration::from_millis(100));
                }
            });
        if let (Ok(h), Ok(mut slot)) = (handle, self.ticker.lock()) {
            *slot = Some(h);
        }
    }

    /// Ends the live view: steps still running are reported as canceled,
    /// the live area is cleared, and later output (the summary, failures)
    /// goes below the clean log. Idempotent; a no-op for other styles.
    pub fn finish(&self) {
        let Some(live) = &self.live else {
            return;
        };
        if live.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(h) = self.ticker.lock().ok().and_then(|mut t| t.take()) {
            h.thread().unpark();
            let _ = h.join();
        }
        // Under the state lock, so no event's line lands between the last
        // lines and the clearing.
        let mut st = live.state.lock().unwrap_or_else(|e| e.into_inner());
        live.finished.store(true, Ordering::Release);
        let lines = st.finish();
        match &live.bar {
            Some(bar) => {
                for l in &lines {
                    bar.println(l);
                }
                bar.finish_and_clear();
            }
            None => {
                for l in &lines {
                    self.line(l);
                }
            }
        }
        drop(st);
    }

    /// Prints a line of the tty log above the live area.
    fn above(&self, live: &Live, s: &str) {
        match &live.bar {
            Some(bar) if !live.finished.load(Ordering::Acquire) => bar.println(s),
            _ => self.line(s),
        }
    }

    fn line(&self, s: &str) {
        if let Ok(mut o) = self.out.lock() {
            let _ = writeln!(o, "{s}");
            let _ = o.flush();
        }
    }

    /// Everything a vertex printed, line by line.
    #[cfg(test)]
    pub fn output_of(&self, id: VertexId) -> Vec<String> {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.logs.get(&id).cloned())
            .unwrap_or_default()
    }

    /// Steps reported as cached so far.
    #[cfg(test)]
    pub fn cached_count(&self) -> usize {
        if let Some(live) = &self.live {
            return live.state.lock().map(|s| s.cached).unwrap_or(0);
        }
        self.state.lock().map(|s| s.steps_cached).unwrap_or(0)
    }

    /// Whether step output was already shown live (plain mode).
    pub fn shows_logs(&self) -> bool {
        self.style == Style::Plain
    }

    /// The failed vertices so far: display name and full output.
    pub fn failures(&self) -> Vec<(String, Vec<String>)> {
        if let Some(live) = &self.live {
            return live.state.lock().map(|s| s.failures()).unwrap_or_default();
        }
        let Ok(st) = self.state.lock() else {
            return Vec::new();
        };
        st.failed
            .iter()
            .map(|id| {
                (
                    st.names.get(id).cloned().unwrap_or_default(),
                    st.logs.get(id).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// `1.2MB`-style sizes (decimal units, as Docker prints them).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        let s = format!("{v:.3}");
        format!(
            "{}{}",
            s.trim_end_matches('0').trim_end_matches('.'),
            UNITS[u]
        )
    }
}

impl EventSink for Renderer {
    fn emit(&self, event: Event) {
        if let Event::Failed { id, .. } = &event {
            if let Ok(mut st) = self.state.lock() {
                st.failed.push(*id);
            }
        }
        match self.style {
            Style::Quiet => self.quiet(&event),
            Style::RawJson => self.rawjson(&event),
            Style::Plain => self.plain(&event),
            Style::Tty => self.tty(&event),
        }
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        self.finish();
    }
}

// ---------------------------------------------------------------------------

mod plain;
mod quiet;
mod rawjson;
mod tty;
use tty::*;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use xbuild_engine::events::LogStream;
    use xbuild_oci::Platform;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn started(id: u64, name: &str) -> Event {
        Event::Started {
            id: VertexId(id),
            platform: Platform::parse("linux/arm64").unwrap(),
            stage: "build".into(),
            index: 2,
            total: 5,
            name: name.into(),
            worker: "qemu".into(),
        }
    }

    #[test]
    fn plain_matches_buildkit_shape() {
        let buf = Buf::default();
        let r = Renderer::to_writer(Style::Plain, Box::new(buf.clone()));
        r.emit(started(10, "RUN make"));
        r.emit(Event::Log {
            id: VertexId(10),
            stream: LogStream::Stdout,
            elapsed: Duration::from_millis(412),
            data: b"cc -O2 -c main.c\npartial".to_vec(),
        });
        r.emit(Event::Done {
            id: VertexId(10),
            duration: Duration::from_millis(1900),
        });
        r.emit(started(11, "COPY . ."));
        r.emit(Event::Cached { id: VertexId(11) });
        r.emit(Event::Done {
            id: VertexId(11),
            duration: Duration::ZERO,
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            out,
            "#1 [linux/arm64 build 2/5] RUN make\n#1 0.412 cc -O2 -c main.c\n#1 partial\n#1 DONE 1.9s\n#2 [linux/arm64 build 2/5] COPY . .\n#2 CACHED\n"
        );
        assert_eq!(r.cached_count(), 1);
        assert_eq!(r.output_of(VertexId(10)), ["cc -O2 -c main.c", "partial"]);
    }

    #[test]
    fn rawjson_lines_parse() {
        let buf = Buf::default();
        let r = Renderer::to_writer(Style::RawJson, Box::new(buf.clone()));
        r.emit(started(1, "RUN x"));
        r.emit(Event::Cached { id: VertexId(1) });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        for l in out.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v.get("type").is_some());
        }
        assert_eq!(out.lines().count(), 2);
    }

    fn started_on(id: u64, platform: &str, worker: &str, index: usize, name: &str) -> Event {
        Event::Started {
            id: VertexId(id),
            platform: Platform::parse(platform).unwrap(),
            stage: "stage-1".into(),
            index,
            total: 6,
            name: name.into(),
            worker: worker.into(),
        }
    }

    fn log(id: u64, data: &str) -> Event {
        Event::Log {
            id: VertexId(id),
            stream: LogStream::Stdout,
            elapsed: Duration::ZERO,
            data: data.as_bytes().to_vec(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn tty_blocks_show_worker_running_step_tail_and_elapsed() {
        let t0 = Instant::now();
        let mut st = TtyState::new(t0);
        assert_eq!(
            st.render(t0 + ms(300), 80, 40, 0),
            ["- preparing the build  0.3s"]
        );
        assert!(st
            .apply(&started_on(1, "linux/amd64", "local", 3, "RUN make"), t0)
            .is_empty());
        st.apply(&started_on(2, "linux/arm64", "qemu", 2, "RUN uname -m"), t0);
        st.apply(&log(1, "one\ntwo\nthree\nfour\nfi"), t0 + ms(100));
        let done = st.apply(
            &Event::Done {
                id: VertexId(2),
                duration: ms(400),
            },
            t0 + ms(400),
        );
        assert_eq!(
            done,
            ["#2 [linux/arm64 stage-1 2/6] RUN uname -m  DONE 0.4s"]
        );
        st.apply(
            &started_on(3, "linux/arm64", "qemu", 3, "RUN make"),
            t0 + ms(500),
        );
        st.apply(&Event::Cached { id: VertexId(3) }, t0 + ms(500));
        let cached = st.apply(
            &Event::Done {
                id: VertexId(3),
                duration: Duration::ZERO,
            },
            t0 + ms(500),
        );
        assert_eq!(cached, ["#3 [linux/arm64 stage-1 3/6] RUN make  CACHED"]);

        let screen = st.render(t0 + ms(1500), 80, 40, 1);
        assert_eq!(
            screen,
            [
                "\\ linux/amd64 @ local  0 done, 0 cached  1.5s",
                "    #1 [stage-1 3/6] RUN make  1.5s",
                "       | three",
                "       | four",
                "       | fi",
                "* linux/arm64 @ qemu  2 done, 1 cached  0.5s",
            ]
        );
        // Fewer rows: output lines go first, then the block is cut.
        assert_eq!(st.render(t0 + ms(1500), 80, 5, 1).len(), 4);
        assert_eq!(
            st.render(t0 + ms(1500), 80, 5, 1)[2],
            "       | fi",
            "one output line per step when space is short"
        );
        let tiny = st.render(t0 + ms(1500), 80, 3, 1);
        assert_eq!(tiny.len(), 2);
        assert_eq!(
            tiny,
            [
                "\\ linux/amd64 @ local  0 done, 0 cached  1.5s",
                "... 2 more lines"
            ]
        );
        assert_eq!(st.cached, 1);
    }

    #[test]
    fn tty_lines_fit_any_width_without_panicking() {
        let t0 = Instant::now();
        let mut st = TtyState::new(t0);
        let long = format!("RUN {}", "x".repeat(300));
        st.apply(&started_on(1, "linux/arm64", "qemu", 2, &long), t0);
        st.apply(&log(1, "\x1b[31mred\x1b[0m\tok\rprogress 50%\n"), t0);
        for width in [0, 1, 2, 3, 4, 10, 40, 120] {
            for height in [0, 1, 2, 3, 40] {
                let lines = st.render(t0 + ms(2000), width, height, 7);
                let w = if width == 0 { 80 } else { width };
                assert!(!lines.is_empty());
                for l in &lines {
                    assert!(l.chars().count() <= w, "{width}x{height}: {l:?}");
                }
                if height > 1 {
                    assert!(lines.len() < height, "{width}x{height}: {lines:?}");
                }
            }
        }
        let wide = st.render(t0 + ms(2000), 60, 40, 0);
        assert_eq!(wide[1].chars().count(), 60);
        assert!(wide[1].ends_with("...  2.0s"), "{}", wide[1]);
        assert_eq!(wide[2], "       | progress 50%");
    }

    #[test]
    fn tty_byte_bars_show_throughput_and_completed_transfers_are_logged() {
        let t0 = Instant::now();
        let mut st = TtyState::new(t0);
        let bytes = |current: u64| Event::Bytes {
            id: None,
            kind: Transfer::Push,
            label: "reg/app sha256:abcd".into(),
            current,
            total: Some(4_000_000),
        };
        assert!(st.apply(&bytes(0), t0).is_empty());
        st.apply(&bytes(2_000_000), t0 + ms(1000));
        assert_eq!(
            st.render(t0 + ms(1000), 100, 40, 0),
            ["  push reg/app sha256:abcd  [=========>          ] 2MB/4MB  2MB/s"]
        );
        let done = st.apply(&bytes(4_000_000), t0 + ms(1500));
        assert_eq!(done, ["pushed reg/app sha256:abcd 4MB"]);
        assert!(st.flows.is_empty());
        assert_eq!(byte_bar(0, 0), format!("[{}]", "=".repeat(BAR_WIDTH)));
        assert_eq!(byte_bar(5, 10), "[=========>          ]");
        assert_eq!(byte_bar(50, 10), format!("[{}]", "=".repeat(BAR_WIDTH)));
    }

    #[test]
    fn tty_writer_logs_finished_steps_failures_and_cancellations() {
        let buf = Buf::default();
        let r = Renderer::to_writer(Style::Tty, Box::new(buf.clone()));
        assert!(!r.shows_logs());
        r.emit(Event::Warning {
            message: "FROM without a tag".into(),
        });
        r.emit(started_on(10, "linux/arm64", "qemu", 2, "RUN false"));
        r.emit(log(10, "first\nlast words"));
        r.emit(started_on(11, "linux/amd64", "local", 2, "RUN sleep 9"));
        r.emit(Event::Failed {
            id: VertexId(10),
            error: "exit code 1\nmore".into(),
        });
        r.finish();
        r.finish();
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            out,
            "WARNING: FROM without a tag\n\
             #1 [linux/arm64 stage-1 2/6] RUN false  ERROR: exit code 1 more\n\
             #2 [linux/amd64 stage-1 2/6] RUN sleep 9  CANCELED\n"
        );
        assert_eq!(
            r.failures(),
            [(
                "[linux/arm64 stage-1 2/6] RUN false".to_string(),
                vec!["first".to_string(), "last words".to_string()]
            )]
        );
    }

    #[test]
    fn tty_done_lines_say_why_a_step_missed() {
        let buf = Buf::default();
        let r = Renderer::to_writer(Style::Tty, Box::new(buf.clone()));
        r.emit(started_on(1, "linux/amd64", "local", 2, "RUN echo b"));
        r.emit(Event::Miss {
            id: VertexId(1),
            reason: "instruction changed: \"RUN echo a\" -> \"RUN echo b\"".into(),
            causes: Vec::new(),
        });
        r.emit(Event::Done {
            id: VertexId(1),
            duration: Duration::from_millis(300),
        });
        r.finish();
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            out.contains(
                "#1 [linux/amd64 stage-1 2/6] RUN echo b  DONE 0.3s  \
                 (cache miss: instruction changed: \"RUN echo a\" -> \"RUN echo b\")"
            ),
            "{out}"
        );
    }

    #[test]
    fn tty_ignores_events_of_unknown_vertices() {
        let t0 = Instant::now();
        let mut st = TtyState::new(t0);
        assert!(st.apply(&log(5, "x\n"), t0).is_empty());
        assert!(st
            .apply(
                &Event::Done {
                    id: VertexId(5),
                    duration: ms(1)
                },
                t0
            )
            .is_empty());
        assert!(st.apply(&Event::Cached { id: VertexId(5) }, t0).is_empty());
        assert_eq!(st.render(t0, 80, 24, 0).len(), 1);
    }

    #[test]
    fn log_lines_are_cleaned_for_one_row() {
        assert_eq!(clean("a\tb"), "a    b");
        assert_eq!(clean("10%\r20%\r"), "20%");
        assert_eq!(clean("\x1b[1;32mgreen\x1b[0m"), "green");
        assert_eq!(one_line("RUN <<EOF\necho\nEOF"), "RUN <<EOF echo EOF");
        assert_eq!(truncate("abcdef", 4), "a...");
        assert_eq!(truncate("abcdef", 2), "ab");
        assert_eq!(truncate("abc", 0), "");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(1000), "1kB");
        assert_eq!(human_bytes(1_234_567), "1.235MB");
    }
}
