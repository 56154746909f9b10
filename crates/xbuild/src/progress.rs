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

    fn plain(&self, e: &Event) {
        let mut st = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        match e {
            Event::Started {
                id,
                platform,
                stage,
                index,
                total,
                name,
                ..
            } => {
                st.next += 1;
                let number = st.next;
                st.vertices.insert(
                    *id,
                    VertexState {
                        number,
                        ..Default::default()
                    },
                );
                let display = format!("[{platform} {stage} {index}/{total}] {name}");
                st.names.insert(*id, display.clone());
                drop(st);
                self.line(&format!("#{number} {display}"));
            }
            Event::Cached { id } => {
                let Some(v) = st.vertices.get_mut(id) else {
                    return;
                };
                v.cached = true;
                let n = v.number;
                st.steps_cached += 1;
                drop(st);
                self.line(&format!("#{n} CACHED"));
            }
            Event::Miss { id, reason, .. } => {
                let Some(v) = st.vertices.get(id) else {
                    return;
                };
                let n = v.number;
                drop(st);
                self.line(&format!("#{n} cache miss: {reason}"));
            }
            Event::Log {
                id,
                stream,
                elapsed,
                data,
            } => {
                let idx = match stream {
                    xbuild_engine::events::LogStream::Stdout => 0,
                    xbuild_engine::events::LogStream::Stderr => 1,
                };
                let Some(v) = st.vertices.get_mut(id) else {
                    return;
                };
                let n = v.number;
                v.partial[idx].extend_from_slice(data);
                let mut lines = Vec::new();
                while let Some(pos) = v.partial[idx].iter().position(|b| *b == b'\n') {
                    let rest = v.partial[idx].split_off(pos + 1);
                    let mut l = std::mem::replace(&mut v.partial[idx], rest);
                    l.pop();
                    if l.last() == Some(&b'\r') {
                        l.pop();
                    }
                    lines.push(String::from_utf8_lossy(&l).into_owned());
                }
                st.logs
                    .entry(*id)
                    .or_default()
                    .extend(lines.iter().cloned());
                drop(st);
                for l in lines {
                    self.line(&format!("#{n} {:.3} {l}", elapsed.as_secs_f64()));
                }
            }
            Event::Done { id, duration } => {
                let Some(v) = st.vertices.get_mut(id) else {
                    return;
                };
                let n = v.number;
                let cached = v.cached;
                let tails: Vec<String> = v
                    .partial
                    .iter_mut()
                    .filter(|p| !p.is_empty())
                    .map(|p| String::from_utf8_lossy(&std::mem::take(p)).into_owned())
                    .collect();
                st.logs
                    .entry(*id)
                    .or_default()
                    .extend(tails.iter().cloned());
                drop(st);
                for t in tails {
                    self.line(&format!("#{n} {t}"));
                }
                if !cached {
                    self.line(&format!("#{n} DONE {}", secs(*duration)));
                }
            }
            Event::Failed { id, error } => {
                let n = st.vertices.get(id).map(|v| v.number).unwrap_or(0);
                drop(st);
                self.line(&format!("#{n} ERROR: {error}"));
            }
            Event::Bytes {
                id,
                kind,
                label,
                current,
                total,
            } => {
                // Plain mode reports transfers only when they complete.
                if Some(*current) != *total {
                    return;
                }
                let prefix = id
                    .and_then(|i| st.vertices.get(&i).map(|v| format!("#{} ", v.number)))
                    .unwrap_or_default();
                drop(st);
                let verb = match kind {
                    xbuild_engine::events::Transfer::Pull => "pulled",
                    xbuild_engine::events::Transfer::Push => "pushed",
                    xbuild_engine::events::Transfer::Context => "sent",
                    xbuild_engine::events::Transfer::Export => "exported",
                };
                self.line(&format!("{prefix}{verb} {label} {}", human_bytes(*current)));
            }
            Event::Warning { message } => {
                drop(st);
                self.line(&format!("WARNING: {}", sanitize_terminal(message)));
            }
        }
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
            Style::Quiet => {
                // Still track vertices so failures can be reported with their output.
                if let Ok(mut st) = self.state.lock() {
                    match &event {
                        Event::Started {
                            id,
                            platform,
                            stage,
                            index,
                            total,
                            name,
                            ..
                        } => {
                            st.names.insert(
                                *id,
                                format!("[{platform} {stage} {index}/{total}] {name}"),
                            );
                            st.next += 1;
                            let n = st.next;
                            st.vertices.insert(
                                *id,
                                VertexState {
                                    number: n,
                                    ..Default::default()
                                },
                            );
                        }
                        Event::Cached { .. } => st.steps_cached += 1,
                        Event::Log { id, data, .. } => {
                            let text = String::from_utf8_lossy(data).into_owned();
                            st.logs
                                .entry(*id)
                                .or_default()
                                .extend(text.lines().map(str::to_string));
                        }
                        _ => {}
                    }
                }
            }
            Style::RawJson => {
                if let Ok(mut st) = self.state.lock() {
                    if matches!(event, Event::Cached { .. }) {
                        st.steps_cached += 1;
                    }
                }
                if let Ok(s) = serde_json::to_string(&event) {
                    self.line(&s);
                }
            }
            Style::Plain => self.plain(&event),
            Style::Tty => {
                let Some(live) = &self.live else {
                    return;
                };
                let Ok(mut st) = live.state.lock() else {
                    return;
                };
                // Printed under the state lock so lines keep the events' order.
                for l in st.apply(&event, Instant::now()) {
                    self.above(live, &l);
                }
            }
        }
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        self.finish();
    }
}

// ---------------------------------------------------------------------------
// The tty view.
// ---------------------------------------------------------------------------

/// Output lines of a running step shown in the live area.
const TAIL_LINES: usize = 3;
/// Width of a byte bar, brackets excluded.
const BAR_WIDTH: usize = 20;
/// Transfers not tied to a running step shown at once; the rest are counted.
const MAX_FLOWS: usize = 6;
/// Characters of an error kept on a failed step's log line.
const ERROR_CHARS: usize = 160;
/// Frames of the spinner of a platform with a running step (ASCII, so any
/// terminal and any locale shows it).
const SPINNER: [char; 4] = ['-', '\\', '|', '/'];

/// The live area and the state it is drawn from.
struct Live {
    state: Mutex<TtyState>,
    /// The live area; `None` when stderr is not a terminal.
    bar: Option<ProgressBar>,
    /// Set when [`Renderer::finish`] starts; stops the ticker thread.
    stop: AtomicBool,
    /// Set once the live area is gone: later lines go straight to the writer.
    finished: AtomicBool,
}

impl Live {
    /// Recomputes the live area for the terminal's current size and hands it
    /// to indicatif, which redraws it in place.
    fn redraw(&self, tick: usize) {
        let Some(bar) = &self.bar else {
            return;
        };
        let (width, height) = terminal_size().unwrap_or((80, 24));
        let text = match self.state.lock() {
            Ok(st) => st.render(Instant::now(), width, height, tick).join("\n"),
            Err(_) => return,
        };
        bar.set_message(text);
    }
}

/// Columns and rows of the terminal on stderr, if it is one.
fn terminal_size() -> Option<(usize, usize)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the struct it is
    // given; on a descriptor that is not a terminal it fails with ENOTTY.
    let r = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some((usize::from(ws.ws_col), usize::from(ws.ws_row)))
}

/// One vertex as the tty view knows it.
struct TtyVertex {
    number: u64,
    /// `[linux/arm64 stage-1 2/6] RUN make`, as plain mode names it.
    display: String,
    /// `[stage-1 2/6] RUN make`: its name inside the platform's block.
    short: String,
    /// Index of its platform's block.
    block: usize,
    started: Instant,
    /// Bytes of an unfinished line, per stream.
    partial: [Vec<u8>; 2],
    /// The last complete lines, for the live area.
    tail: VecDeque<String>,
    /// Everything it printed, for the failure report.
    logs: Vec<String>,
    /// Why it missed the cache, shown with its DONE line.
    miss: Option<String>,
    cached: bool,
    finished: bool,
}

impl TtyVertex {
    /// Moves unfinished lines into the log (the step ended).
    fn flush_partial(&mut self) {
        for p in &mut self.partial {
            if !p.is_empty() {
                self.logs
                    .push(String::from_utf8_lossy(&std::mem::take(p)).into_owned());
            }
        }
    }

    /// The last `n` lines to show: complete lines, then unfinished ones.
    fn tail_lines(&self, n: usize) -> Vec<String> {
        let mut lines: Vec<String> = self.tail.iter().map(|l| clean(l)).collect();
        lines.extend(
            self.partial
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| clean(&String::from_utf8_lossy(p))),
        );
        lines.retain(|l| !l.trim().is_empty());
        let skip = lines.len().saturating_sub(n);
        lines.split_off(skip)
    }
}

/// One platform's block in the live area.
struct Block {
    platform: String,
    worker: String,
    first: Instant,
    last: Instant,
    /// Running vertices, in start order.
    running: Vec<VertexId>,
    done: usize,
    cached: usize,
    failed: bool,
}

/// A transfer in flight.
struct Flow {
    vertex: Option<VertexId>,
    kind: Transfer,
    label: String,
    current: u64,
    total: Option<u64>,
    /// When and at which byte the throughput measurement started.
    since: Instant,
    from: u64,
}

impl Flow {
    /// Bytes per second since the first report, once there is enough time
    /// to say.
    fn rate(&self, now: Instant) -> Option<u64> {
        let dt = now.saturating_duration_since(self.since).as_secs_f64();
        (dt >= 0.2).then(|| (self.current.saturating_sub(self.from) as f64 / dt) as u64)
    }

    fn line(&self, now: Instant, indent: &str, width: usize) -> String {
        let verb = match self.kind {
            Transfer::Pull => "pull",
            Transfer::Push => "push",
            Transfer::Context => "send",
            Transfer::Export => "export",
        };
        let mut right = match self.total {
            Some(t) => format!(
                "{} {}/{}",
                byte_bar(self.current, t),
                human_bytes(self.current),
                human_bytes(t)
            ),
            None => human_bytes(self.current),
        };
        if let Some(r) = self.rate(now) {
            right.push_str(&format!("  {}/s", human_bytes(r)));
        }
        fit(
            &format!("{indent}{verb} {}", one_line(&self.label)),
            &right,
            width,
        )
    }
}

/// Everything the tty view shows, updated by events and drawn by
/// [`TtyState::render`]; no terminal involved, so it is testable as text.
struct TtyState {
    start: Instant,
    next: u64,
    vertices: HashMap<VertexId, TtyVertex>,
    /// One per platform, in the order platforms first started a step.
    blocks: Vec<Block>,
    flows: Vec<Flow>,
    failed: Vec<VertexId>,
    cached: usize,
}

impl TtyState {
    fn new(start: Instant) -> Self {
        TtyState {
            start,
            next: 0,
            vertices: HashMap::new(),
            blocks: Vec::new(),
            flows: Vec::new(),
            failed: Vec::new(),
            cached: 0,
        }
    }

    /// Takes in one event; returns the lines to print above the live area.
    fn apply(&mut self, e: &Event, now: Instant) -> Vec<String> {
        match e {
            Event::Started {
                id,
                platform,
                stage,
                index,
                total,
                name,
                worker,
            } => {
                let p = platform.to_string();
                let block = match self.blocks.iter().position(|b| b.platform == p) {
                    Some(i) => i,
                    None => {
                        self.blocks.push(Block {
                            platform: p.clone(),
                            worker: worker.clone(),
                            first: now,
                            last: now,
                            running: Vec::new(),
                            done: 0,
                            cached: 0,
                            failed: false,
                        });
                        self.blocks.len() - 1
                    }
                };
                let b = &mut self.blocks[block];
                b.worker.clone_from(worker);
                b.running.retain(|r| r != id);
                b.running.push(*id);
                self.next += 1;
                self.vertices.insert(
                    *id,
                    TtyVertex {
                        number: self.next,
                        display: format!("[{p} {stage} {index}/{total}] {name}"),
                        short: format!("[{stage} {index}/{total}] {name}"),
                        block,
                        started: now,
                        partial: Default::default(),
                        tail: VecDeque::new(),
                        logs: Vec::new(),
                        miss: None,
                        cached: false,
                        finished: false,
                    },
                );
                Vec::new()
            }
            Event::Cached { id } => {
                if let Some(v) = self.vertices.get_mut(id) {
                    if !v.cached {
                        v.cached = true;
                        self.cached += 1;
                        if let Some(b) = self.blocks.get_mut(v.block) {
                            b.cached += 1;
                        }
                    }
                }
                Vec::new()
            }
            Event::Miss { id, reason, .. } => {
                if let Some(v) = self.vertices.get_mut(id) {
                    v.miss = Some(reason.clone());
                }
                Vec::new()
            }
            Event::Log {
                id, stream, data, ..
            } => {
                let Some(v) = self.vertices.get_mut(id) else {
                    return Vec::new();
                };
                let idx = match stream {
                    LogStream::Stdout => 0,
                    LogStream::Stderr => 1,
                };
                v.partial[idx].extend_from_slice(data);
                while let Some(pos) = v.partial[idx].iter().position(|b| *b == b'\n') {
                    let rest = v.partial[idx].split_off(pos + 1);
                    let mut l = std::mem::replace(&mut v.partial[idx], rest);
                    l.pop();
                    if l.last() == Some(&b'\r') {
                        l.pop();
                    }
                    let line = String::from_utf8_lossy(&l).into_owned();
                    if v.tail.len() == TAIL_LINES {
                        v.tail.pop_front();
                    }
                    v.tail.push_back(line.clone());
                    v.logs.push(line);
                }
                Vec::new()
            }
            Event::Done { id, duration } => {
                let Some(v) = self.vertices.get_mut(id) else {
                    return Vec::new();
                };
                if v.finished {
                    return Vec::new();
                }
                v.flush_partial();
                v.finished = true;
                let status = if v.cached {
                    "CACHED".to_string()
                } else {
                    format!("DONE {}", secs(*duration))
                };
                let mut line = format!("#{} {}  {status}", v.number, one_line(&v.display));
                if let (false, Some(m)) = (v.cached, &v.miss) {
                    line.push_str(&format!("  (cache miss: {})", one_line(m)));
                }
                let block = v.block;
                self.end_vertex(*id, block, now, false);
                vec![line]
            }
            Event::Failed { id, error } => {
                if !self.failed.contains(id) {
                    self.failed.push(*id);
                }
                let Some(v) = self.vertices.get_mut(id) else {
                    return vec![format!("ERROR: {}", one_line(error))];
                };
                v.flush_partial();
                v.finished = true;
                // The full error follows the build; the log line names it.
                let line = format!(
                    "#{} {}  ERROR: {}",
                    v.number,
                    one_line(&v.display),
                    truncate(&one_line(error), ERROR_CHARS)
                );
                let block = v.block;
                self.end_vertex(*id, block, now, true);
                vec![line]
            }
            Event::Bytes {
                id,
                kind,
                label,
                current,
                total,
            } => {
                let pos = self
                    .flows
                    .iter()
                    .position(|f| f.kind == *kind && f.label == *label);
                if *total == Some(*current) {
                    if let Some(i) = pos {
                        self.flows.remove(i);
                    }
                    let prefix = id
                        .and_then(|i| self.vertices.get(&i))
                        .map(|v| format!("#{} ", v.number))
                        .unwrap_or_default();
                    let verb = match kind {
                        Transfer::Pull => "pulled",
                        Transfer::Push => "pushed",
                        Transfer::Context => "sent",
                        Transfer::Export => "exported",
                    };
                    return vec![format!(
                        "{prefix}{verb} {} {}",
                        one_line(label),
                        human_bytes(*current)
                    )];
                }
                match pos {
                    Some(i) => {
                        let f = &mut self.flows[i];
                        if *current < f.current {
                            // Restarted (a retry): measure afresh.
                            f.since = now;
                            f.from = *current;
                        }
                        f.current = *current;
                        f.total = *total;
                    }
                    None => self.flows.push(Flow {
                        vertex: *id,
                        kind: *kind,
                        label: label.clone(),
                        current: *current,
                        total: *total,
                        since: now,
                        from: *current,
                    }),
                }
                Vec::new()
            }
            Event::Warning { message } => vec![format!("WARNING: {}", one_line(message))],
        }
    }

    fn end_vertex(&mut self, id: VertexId, block: usize, now: Instant, failed: bool) {
        if let Some(b) = self.blocks.get_mut(block) {
            b.running.retain(|r| *r != id);
            b.done += usize::from(!failed);
            b.failed |= failed;
            b.last = now;
        }
        self.flows.retain(|f| f.vertex != Some(id));
    }

    /// The build is over: the lines for steps that never finished.
    fn finish(&mut self) -> Vec<String> {
        let mut open: Vec<&mut TtyVertex> =
            self.vertices.values_mut().filter(|v| !v.finished).collect();
        open.sort_by_key(|v| v.number);
        let lines = open
            .into_iter()
            .map(|v| {
                v.flush_partial();
                v.finished = true;
                format!("#{} {}  CANCELED", v.number, one_line(&v.display))
            })
            .collect();
        for b in &mut self.blocks {
            b.running.clear();
        }
        self.flows.clear();
        lines
    }

    /// The failed vertices: display name and full output.
    fn failures(&self) -> Vec<(String, Vec<String>)> {
        self.failed
            .iter()
            .map(|id| match self.vertices.get(id) {
                Some(v) => (v.display.clone(), v.logs.clone()),
                None => (String::new(), Vec::new()),
            })
            .collect()
    }

    /// The live area for a terminal of `width` columns and `height` rows
    /// (0: unknown), at spinner frame `tick`. Every line fits the width; the
    /// whole fits the height, dropping output lines first.
    fn render(&self, now: Instant, width: usize, height: usize, tick: usize) -> Vec<String> {
        let width = if width == 0 { 80 } else { width };
        let max = match height {
            0 => usize::MAX,
            h => (h - 1).max(1),
        };
        let mut lines = Vec::new();
        for tail in [TAIL_LINES, 1, 0] {
            lines = self.compose(now, width, tick, tail);
            if lines.len() <= max {
                break;
            }
        }
        if lines.len() > max {
            let keep = max - 1;
            let hidden = lines.len() - keep;
            lines.truncate(keep);
            lines.push(format!("... {hidden} more lines"));
        }
        lines.into_iter().map(|l| truncate(&l, width)).collect()
    }

    fn compose(&self, now: Instant, width: usize, tick: usize, tail: usize) -> Vec<String> {
        let spin = SPINNER[tick % SPINNER.len()];
        let mut out = Vec::new();
        if self.blocks.is_empty() && self.flows.is_empty() {
            out.push(format!(
                "{spin} preparing the build  {}",
                secs(now.saturating_duration_since(self.start))
            ));
            return out;
        }
        for b in &self.blocks {
            let mut running: Vec<(&VertexId, &TtyVertex)> = b
                .running
                .iter()
                .filter_map(|id| self.vertices.get(id).map(|v| (id, v)))
                .collect();
            running.sort_by_key(|(_, v)| v.number);
            let (mark, elapsed) = if b.failed {
                ('x', b.last.saturating_duration_since(b.first))
            } else if running.is_empty() {
                ('*', b.last.saturating_duration_since(b.first))
            } else {
                (spin, now.saturating_duration_since(b.first))
            };
            out.push(format!(
                "{mark} {} @ {}  {}{} done, {} cached  {}",
                b.platform,
                b.worker,
                if b.failed { "FAILED  " } else { "" },
                b.done,
                b.cached,
                secs(elapsed)
            ));
            for (id, v) in running {
                out.push(fit(
                    &format!("    #{} {}", v.number, one_line(&v.short)),
                    &secs(now.saturating_duration_since(v.started)),
                    width,
                ));
                out.extend(
                    v.tail_lines(tail)
                        .into_iter()
                        .map(|l| format!("       | {l}")),
                );
                out.extend(
                    self.flows
                        .iter()
                        .filter(|f| f.vertex == Some(*id))
                        .map(|f| f.line(now, "       ", width)),
                );
            }
        }
        // Transfers of the build as a whole (pulling bases, pushing the
        // result), and of steps no longer shown.
        let shown = |f: &&Flow| {
            f.vertex.is_some_and(|id| {
                self.vertices
                    .get(&id)
                    .is_some_and(|v| !v.finished && self.blocks.get(v.block).is_some())
            })
        };
        let rest: Vec<&Flow> = self.flows.iter().filter(|f| !shown(f)).collect();
        for f in rest.iter().take(MAX_FLOWS) {
            out.push(f.line(now, "  ", width));
        }
        if rest.len() > MAX_FLOWS {
            out.push(format!(
                "  ... and {} more transfers",
                rest.len() - MAX_FLOWS
            ));
        }
        out
    }
}

/// `[=========>          ]`: `current` of `total`.
fn byte_bar(current: u64, total: u64) -> String {
    let filled = if total == 0 {
        BAR_WIDTH
    } else {
        (u128::from(current.min(total)) * BAR_WIDTH as u128 / u128::from(total)) as usize
    };
    let mut s = String::with_capacity(BAR_WIDTH + 2);
    s.push('[');
    for i in 0..BAR_WIDTH {
        s.push(
            if i + 1 < filled || (i + 1 == filled && filled == BAR_WIDTH) {
                '='
            } else if i + 1 == filled {
                '>'
            } else {
                ' '
            },
        );
    }
    s.push(']');
    s
}

/// `left  right` in at most `width` columns, shortening `left` first.
fn fit(left: &str, right: &str, width: usize) -> String {
    let room = width.saturating_sub(right.chars().count() + 2);
    if left.chars().count() <= room || room < 8 {
        format!("{left}  {right}")
    } else {
        format!("{}  {right}", truncate(left, room))
    }
}

/// At most `width` characters, `...` marking a cut.
fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    if width <= 3 {
        return s.chars().take(width).collect();
    }
    let mut t: String = s.chars().take(width - 3).collect();
    t.push_str("...");
    t
}

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

/// Control characters (newlines of a heredoc, tabs) as spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A log line as a terminal can show it in one row: what a carriage return
/// would leave visible, escape sequences dropped, tabs expanded.
fn clean(s: &str) -> String {
    let visible = s.rsplit('\r').find(|p| !p.is_empty()).unwrap_or("");
    let mut out = String::with_capacity(visible.len());
    let mut chars = visible.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c2 in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c2) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push_str("    "),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

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
        assert_eq!(
            sanitize_terminal("bad \x1b]0;owned\x07name\u{9b}2J\n"),
            "bad \\x1b]0;owned\\x07name\\u{9b}2J\n"
        );
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
