//! Rendering the engine's event stream: BuildKit-shaped plain lines, a live
//! per-platform view for terminals (`tty`), BuildKit's SolveStatus objects
//! (`rawjson`), xbuild's own events as JSON lines (`json`), or nothing
//! (`quiet`).
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
    /// BuildKit's SolveStatus JSON, one object per line.
    RawJson,
    /// xbuild's events, one JSON object per line.
    Json,
    /// Nothing.
    Quiet,
}

#[derive(Default)]
struct VertexState {
    number: u64,
    /// Bytes of an unfinished log line, per stream.
    partial: [Vec<u8>; 2],
    cached: bool,
    /// Done, failed or cancelled.
    ended: bool,
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
    /// `rawjson`: events as BuildKit SolveStatus updates.
    solve_status: crate::solve_status::Encoder,
    /// `plain`: the closing lines were printed.
    closed: bool,
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
    /// Set by [`Renderer::cancel`].
    cancelled: AtomicBool,
}

/// A vertex's bracketed prefix as BuildKit writes it: `[linux/arm64 build
/// 2/5]`, or without a number for a vertex that has none (metadata-only
/// instructions, FROM scratch or another stage): `[linux/arm64 build]`.
/// `platform` may be empty (inside a platform's block).
pub(super) fn prefix(platform: &str, stage: &str, index: usize, total: usize) -> String {
    let mut s = String::from("[");
    if !platform.is_empty() {
        s.push_str(platform);
        s.push(' ');
    }
    s.push_str(stage);
    if index > 0 && total > 0 {
        s.push_str(&format!(" {index}/{total}"));
    }
    s.push(']');
    s
}

/// `[linux/arm64 build 2/5] RUN make` (see [`prefix`]).
pub(super) fn title(platform: &str, stage: &str, index: usize, total: usize, name: &str) -> String {
    format!("{} {name}", prefix(platform, stage, index, total))
}

/// Columns of the terminal on stderr, if stderr is one (for fitting the
/// end-of-build summary).
pub fn stderr_width() -> Option<usize> {
    if std::io::stderr().is_terminal() {
        terminal_size().map(|(w, _)| w)
    } else {
        None
    }
}

/// `s` cut to at most `width` columns with `…`.
pub fn fit_width(s: &str, width: usize) -> String {
    truncate(s, width)
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
        let screen = Screen::new(Box::new(std::io::stderr()));
        let r = Self::build(
            style,
            Box::new(std::io::stderr()),
            Some(screen),
            Paint(colour_wanted(true)),
        );
        r.start_ticker();
        r
    }

    /// Render to any writer (`Style::Tty` without a live area: finished
    /// steps only, without colour).
    pub fn to_writer(style: Style, out: Box<dyn Write + Send>) -> Self {
        Self::build(style, out, None, Paint(false))
    }

    fn build(
        style: Style,
        out: Box<dyn Write + Send>,
        screen: Option<Screen>,
        paint: Paint,
    ) -> Self {
        let live = (style == Style::Tty).then(|| {
            Arc::new(Live {
                state: Mutex::new(TtyState::new(Instant::now())),
                screen: screen.map(Mutex::new),
                paint,
                stop: AtomicBool::new(false),
                finished: AtomicBool::new(false),
                tick: std::sync::atomic::AtomicUsize::new(0),
            })
        });
        Renderer {
            style,
            out: Mutex::new(out),
            state: Mutex::new(State::default()),
            live,
            ticker: Mutex::new(None),
            cancelled: AtomicBool::new(false),
        }
    }

    /// Starts the thread that redraws the live area ten times a second
    /// (elapsed times and the spinner move even when no event arrives).
    fn start_ticker(&self) {
        let Some(live) = self.live.as_ref().filter(|l| l.screen.is_some()) else {
            return;
        };
        let live = Arc::clone(live);
        let handle = std::thread::Builder::new()
            .name("xbuild-progress".into())
            .spawn(move || {
                while !live.stop.load(Ordering::Acquire) {
                    live.redraw();
                    std::thread::park_timeout(Duration::from_millis(100));
                }
            });
        if let (Ok(h), Ok(mut slot)) = (handle, self.ticker.lock()) {
            *slot = Some(h);
        }
    }

    /// The build was interrupted (Ctrl-C): steps that fail from now on are
    /// shown as cancelled, not as errors, and [`Renderer::finish`] says the
    /// build was cancelled.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        if let Some(live) = &self.live {
            if let Ok(mut st) = live.state.lock() {
                st.cancelled = true;
            }
        }
    }

    /// A line for the user outside the event stream (the scheduling plan,
    /// warnings of the coordinator): above the live view in tty mode, as is
    /// in plain mode, nowhere in the JSON and quiet modes (stderr stays
    /// machine-readable).
    pub fn note(&self, text: &str) {
        match self.style {
            Style::Tty => {
                if let Some(live) = &self.live {
                    if let Ok(st) = live.state.lock() {
                        self.above(live, &st, &[Logged::Other(text.to_string())]);
                    }
                }
            }
            Style::Plain => self.line(text),
            Style::RawJson | Style::Json | Style::Quiet => {}
        }
    }

    /// Whether [`Renderer::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Ends the live view: steps still running are reported as canceled,
    /// the live area is cleared, and later output (the summary, failures)
    /// goes below the clean log. Idempotent.
    pub fn finish(&self) {
        if self.style == Style::RawJson {
            self.rawjson_finish();
        }
        if self.style == Style::Plain {
            self.plain_finish();
        }
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
        let lines = st.finish();
        self.above(live, &st, &lines);
        live.finished.store(true, Ordering::Release);
        if let Some(screen) = &live.screen {
            if let Ok(mut s) = screen.lock() {
                s.clear();
            }
        }
        drop(st);
    }

    /// Prints lines of the tty log above the live area (fitted to the
    /// terminal, coloured), or as they are when there is no terminal.
    fn above(&self, live: &Live, st: &TtyState, lines: &[Logged]) {
        if lines.is_empty() {
            return;
        }
        match &live.screen {
            Some(screen) if !live.finished.load(Ordering::Acquire) => {
                let (width, height) = terminal_size().unwrap_or((80, 24));
                let w = width.saturating_sub(1).max(1);
                let text: Vec<String> = lines
                    .iter()
                    .map(|l| l.render(Some(w), live.paint))
                    .collect();
                let tick = live.tick.load(Ordering::Relaxed);
                let area = if live.stop.load(Ordering::Acquire) {
                    Vec::new()
                } else {
                    st.render(Instant::now(), width, height, tick, live.paint)
                };
                if let Ok(mut s) = screen.lock() {
                    s.draw(&text, &area);
                }
            }
            _ => {
                for l in lines {
                    self.line(&l.render(None, Paint(false)));
                }
            }
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
            Style::Json => self.json(&event),
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

/// Text from outside (file names from tar headers and contexts, registry
/// messages) made safe for a terminal: control characters other than
/// newline and tab (ESC, CSI, BEL, backspace, carriage return, C1 codes)
/// are shown as `\xNN` / `\u{NN}` escapes instead of being interpreted.
pub fn sanitize_terminal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if ('\u{80}'..='\u{9f}').contains(&c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

mod plain;
mod quiet;
mod rawjson;
mod term;
mod tty;
use term::*;
pub(crate) use term::{fold, one_line, terminal_columns};
use tty::*;

#[cfg(test)]
mod tests;
