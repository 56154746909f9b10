//! `--progress tty`: the live per-platform view.
//!
//! The live area sits at the bottom of the terminal, one block per platform
//! (its worker, the running steps with their elapsed time and last output
//! lines, byte bars for transfers); each finished step is printed once
//! above it, so the scrollback keeps a clean log. Every line is fitted to
//! the terminal's width (cut with `…`), so nothing wraps.
//!
//! Drawing: each frame rewrites only the rows that changed since the last
//! one, inside a synchronized update (DEC private mode 2026: the terminal
//! shows the whole frame at once; terminals without it ignore the mode), so
//! slow or remote terminals do not flicker. Colour is used unless
//! `NO_COLOR` is set, `CLICOLOR=0`, `TERM=dumb`, or stderr is not a
//! terminal.

use super::term::*;
use super::*;

impl Renderer {
    pub(super) fn tty(&self, event: &Event) {
        let Some(live) = &self.live else {
            return;
        };
        let Ok(mut st) = live.state.lock() else {
            return;
        };
        let lines = st.apply(event, Instant::now());
        // Printed under the state lock so lines keep the events' order.
        self.above(live, &st, &lines);
    }
}

/// Output lines of a running step shown in the live area.
pub(super) const TAIL_LINES: usize = 3;
/// Transfers not tied to a running step shown at once; the rest are counted.
pub(super) const MAX_FLOWS: usize = 6;
/// Frames of the spinner of a platform with a running step (ASCII, so any
/// terminal and any locale shows it).
pub(super) const SPINNER: [char; 4] = ['-', '\\', '|', '/'];
/// The live area and the state it is drawn from.
pub(super) struct Live {
    pub(super) state: Mutex<TtyState>,
    /// The terminal; `None` when stderr is not a terminal (finished lines
    /// are then printed as they come, without a live area).
    pub(super) screen: Option<Mutex<Screen>>,
    /// Colours on.
    pub(super) paint: Paint,
    /// Set when [`Renderer::finish`] starts; stops the ticker thread.
    pub(super) stop: AtomicBool,
    /// Set once the live area is gone: later lines go straight to the writer.
    pub(super) finished: AtomicBool,
    /// Spinner frame.
    pub(super) tick: std::sync::atomic::AtomicUsize,
}

impl Live {
    /// Draws the live area for the terminal's current size (rows that did
    /// not change are left alone).
    pub(super) fn redraw(&self) {
        let Some(screen) = &self.screen else {
            return;
        };
        let Ok(st) = self.state.lock() else {
            return;
        };
        let (width, height) = terminal_size().unwrap_or((80, 24));
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let area = st.render(Instant::now(), width, height, tick, self.paint);
        if let Ok(mut s) = screen.lock() {
            s.draw(&[], &area);
        }
    }
}

/// One vertex as the tty view knows it.
pub(super) struct TtyVertex {
    pub(super) number: u64,
    /// `[linux/arm64 stage-1 2/6] RUN make`, as plain mode names it.
    pub(super) display: String,
    /// `[stage-1 2/6] RUN make`: its name inside the platform's block.
    pub(super) short: String,
    /// Index of its platform's block.
    pub(super) block: usize,
    /// Whether it counts as a step (not FROM): what the block's counters
    /// and the summary's STEPS count.
    pub(super) step: bool,
    pub(super) started: Instant,
    /// Bytes of an unfinished line, per stream.
    pub(super) partial: [Vec<u8>; 2],
    /// The last complete lines, for the live area.
    pub(super) tail: VecDeque<String>,
    /// Everything it printed, for the failure report.
    pub(super) logs: Vec<String>,
    /// Why it missed the cache, shown under its DONE line.
    pub(super) miss: Option<String>,
    pub(super) cached: bool,
    pub(super) finished: bool,
}

impl TtyVertex {
    /// Moves unfinished lines into the log (the step ended).
    pub(super) fn flush_partial(&mut self) {
        for p in &mut self.partial {
            if !p.is_empty() {
                self.logs
                    .push(String::from_utf8_lossy(&std::mem::take(p)).into_owned());
            }
        }
    }

    /// The last `n` lines to show: complete lines, then unfinished ones.
    pub(super) fn tail_lines(&self, n: usize) -> Vec<String> {
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
pub(super) struct Block {
    pub(super) platform: String,
    pub(super) worker: String,
    pub(super) first: Instant,
    pub(super) last: Instant,
    /// Running vertices, in start order.
    pub(super) running: Vec<VertexId>,
    /// Steps finished (cached ones included), as the summary counts them.
    pub(super) done: usize,
    pub(super) cached: usize,
    pub(super) failed: bool,
}

/// A transfer in flight.
pub(super) struct Flow {
    pub(super) vertex: Option<VertexId>,
    pub(super) kind: Transfer,
    pub(super) label: String,
    pub(super) current: u64,
    pub(super) total: Option<u64>,
    /// When and at which byte the throughput measurement started.
    pub(super) since: Instant,
    pub(super) from: u64,
}

impl Flow {
    /// Bytes per second since the first report, once there is enough time
    /// to say.
    pub(super) fn rate(&self, now: Instant) -> Option<u64> {
        let dt = now.saturating_duration_since(self.since).as_secs_f64();
        (dt >= 0.2).then(|| (self.current.saturating_sub(self.from) as f64 / dt) as u64)
    }

    pub(super) fn line(&self, now: Instant, indent: &str, width: usize) -> String {
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

/// A line for above the live area, and how to colour it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Logged {
    /// `#N title` and a status (`DONE 1.2s`, `CACHED`, `ERROR`, `CANCELED`).
    Step(String, String),
    /// Why the step above missed the cache.
    Miss(String),
    /// `WARNING: ...`.
    Warning(String),
    /// The build was interrupted.
    Cancelled(String),
    /// Anything else (completed transfers).
    Other(String),
}

impl Logged {
    /// The line in at most `width` columns (`None`: as is), coloured.
    pub(super) fn render(&self, width: Option<usize>, paint: Paint) -> String {
        let cut = |s: &str| width.map_or_else(|| s.to_string(), |w| truncate(s, w));
        match self {
            Logged::Step(left, status) => {
                let line = match width {
                    Some(w) => fit(left, status, w),
                    None => format!("{left}  {status}"),
                };
                let Some(head) = line.strip_suffix(status.as_str()) else {
                    return line;
                };
                let status = if status.starts_with("DONE") {
                    paint.ok(status)
                } else if status == "CACHED" {
                    paint.cached(status)
                } else if status == "CANCELED" {
                    paint.warn(status)
                } else {
                    paint.bad(status)
                };
                format!("{head}{status}")
            }
            Logged::Miss(s) => paint.dim(&cut(s)),
            Logged::Warning(s) => paint.warn(&cut(s)),
            Logged::Cancelled(s) => paint.warn(&cut(s)),
            Logged::Other(s) => cut(s),
        }
    }
}

/// Everything the tty view shows, updated by events and drawn by
/// [`TtyState::render`]; no terminal involved, so it is testable as text.
pub(super) struct TtyState {
    pub(super) start: Instant,
    pub(super) next: u64,
    pub(super) vertices: HashMap<VertexId, TtyVertex>,
    /// One per platform, in the order platforms first started a step.
    pub(super) blocks: Vec<Block>,
    pub(super) flows: Vec<Flow>,
    pub(super) failed: Vec<VertexId>,
    pub(super) cached: usize,
    /// The build was interrupted: failures of running steps are reported
    /// as cancellations.
    pub(super) cancelled: bool,
}

impl TtyState {
    pub(super) fn new(start: Instant) -> Self {
        TtyState {
            start,
            next: 0,
            vertices: HashMap::new(),
            blocks: Vec::new(),
            flows: Vec::new(),
            failed: Vec::new(),
            cached: 0,
            cancelled: false,
        }
    }

    /// Takes in one event; returns the lines to print above the live area.
    pub(super) fn apply(&mut self, e: &Event, now: Instant) -> Vec<Logged> {
        match e {
            Event::Started { .. } => {
                self.started(e, now);
                Vec::new()
            }
            Event::Cached { id } => {
                if let Some(v) = self.vertices.get_mut(id) {
                    if !v.cached {
                        v.cached = true;
                        if v.step {
                            self.cached += 1;
                            if let Some(b) = self.blocks.get_mut(v.block) {
                                b.cached += 1;
                            }
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
                self.log(*id, *stream, data);
                Vec::new()
            }
            Event::Done { id, duration } => self.done(*id, *duration, now),
            Event::Failed { id, .. } => self.failed(*id, now),
            Event::Bytes { .. } => self.bytes(e, now),
            Event::Warning { message } => {
                vec![Logged::Warning(format!("WARNING: {}", one_line(message)))]
            }
        }
    }

    /// A vertex started: into its platform's block (made on first use).
    fn started(&mut self, e: &Event, now: Instant) {
        let Event::Started {
            id,
            platform,
            stage,
            index,
            total,
            name,
            worker,
            shared_by,
        } = e
        else {
            return;
        };
        let p = xbuild_engine::events::platform_label(platform, shared_by);
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
        // What the summary counts as steps: every vertex but FROM.
        let step = !name.starts_with("FROM ") || *index > 1;
        self.vertices.insert(
            *id,
            TtyVertex {
                number: self.next,
                display: title(&p, stage, *index, *total, name),
                short: title("", stage, *index, *total, name),
                block,
                step,
                started: now,
                partial: Default::default(),
                tail: VecDeque::new(),
                logs: Vec::new(),
                miss: None,
                cached: false,
                finished: false,
            },
        );
    }

    /// Output of a running step: complete lines into its tail and log.
    fn log(&mut self, id: VertexId, stream: LogStream, data: &[u8]) {
        let Some(v) = self.vertices.get_mut(&id) else {
            return;
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
    }

    /// A step finished: its line, and why it missed on the line under it.
    fn done(&mut self, id: VertexId, duration: Duration, now: Instant) -> Vec<Logged> {
        let Some(v) = self.vertices.get_mut(&id) else {
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
            format!("DONE {}", secs(duration))
        };
        let mut lines = vec![Logged::Step(
            format!("#{} {}", v.number, one_line(&v.display)),
            status,
        )];
        if let (false, Some(m)) = (v.cached, &v.miss) {
            lines.push(Logged::Miss(format!("     cache miss: {}", one_line(m))));
        }
        let (block, step) = (v.block, v.step);
        self.end_vertex(id, block, now, false, step);
        lines
    }

    /// A step failed (or was stopped by an interrupt).
    fn failed(&mut self, id: VertexId, now: Instant) -> Vec<Logged> {
        let Some(v) = self.vertices.get_mut(&id) else {
            return Vec::new();
        };
        if v.finished {
            return Vec::new();
        }
        v.flush_partial();
        v.finished = true;
        // The error itself is printed once, after the build.
        let status = if self.cancelled { "CANCELED" } else { "ERROR" };
        let line = Logged::Step(
            format!("#{} {}", v.number, one_line(&v.display)),
            status.into(),
        );
        let block = v.block;
        let cancelled = self.cancelled;
        if !cancelled && !self.failed.contains(&id) {
            self.failed.push(id);
        }
        self.end_vertex(id, block, now, !cancelled, false);
        vec![line]
    }

    /// Bytes moved: the transfer's bar, or its line once complete.
    fn bytes(&mut self, e: &Event, now: Instant) -> Vec<Logged> {
        let Event::Bytes {
            id,
            kind,
            label,
            current,
            total,
        } = e
        else {
            return Vec::new();
        };
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
            return vec![Logged::Other(format!(
                "{prefix}{verb} {} {}",
                one_line(label),
                human_bytes(*current)
            ))];
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

    pub(super) fn end_vertex(
        &mut self,
        id: VertexId,
        block: usize,
        now: Instant,
        failed: bool,
        step: bool,
    ) {
        if let Some(b) = self.blocks.get_mut(block) {
            b.running.retain(|r| *r != id);
            b.done += usize::from(step && !failed);
            b.failed |= failed;
            b.last = now;
        }
        self.flows.retain(|f| f.vertex != Some(id));
    }

    /// The build is over: the lines for steps that never finished (marked
    /// CANCELED), and after an interrupt the line that says so.
    pub(super) fn finish(&mut self) -> Vec<Logged> {
        let mut open: Vec<&mut TtyVertex> =
            self.vertices.values_mut().filter(|v| !v.finished).collect();
        open.sort_by_key(|v| v.number);
        let mut lines: Vec<Logged> = open
            .into_iter()
            .map(|v| {
                v.flush_partial();
                v.finished = true;
                Logged::Step(
                    format!("#{} {}", v.number, one_line(&v.display)),
                    "CANCELED".into(),
                )
            })
            .collect();
        if self.cancelled {
            lines.push(Logged::Cancelled(
                "cancelled: the build was interrupted; running steps were stopped".into(),
            ));
        }
        for b in &mut self.blocks {
            b.running.clear();
        }
        self.flows.clear();
        lines
    }

    /// The failed vertices: display name and full output.
    pub(super) fn failures(&self) -> Vec<(String, Vec<String>)> {
        self.failed
            .iter()
            .map(|id| match self.vertices.get(id) {
                Some(v) => (v.display.clone(), v.logs.clone()),
                None => (String::new(), Vec::new()),
            })
            .collect()
    }

    /// The live area for a terminal of `width` columns and `height` rows
    /// (0: unknown), at spinner frame `tick`. Every line is narrower than
    /// the width (the last column stays free, so no terminal wraps); the
    /// whole fits the height, dropping output lines first.
    pub(super) fn render(
        &self,
        now: Instant,
        width: usize,
        height: usize,
        tick: usize,
        paint: Paint,
    ) -> Vec<String> {
        let width = if width == 0 { 80 } else { width };
        let width = width.saturating_sub(1).max(1);
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
            lines.push((Row::Other, format!("… {hidden} more lines")));
        }
        lines
            .into_iter()
            .map(|(kind, l)| {
                let l = truncate(&l, width);
                match kind {
                    Row::Header => paint.bold(&l),
                    Row::Running => paint.busy(&l),
                    Row::Failed => paint.bad(&l),
                    Row::Output => paint.dim(&l),
                    Row::Other => l,
                }
            })
            .collect()
    }

    fn compose(&self, now: Instant, width: usize, tick: usize, tail: usize) -> Vec<(Row, String)> {
        let spin = SPINNER[tick % SPINNER.len()];
        let mut out = Vec::new();
        if self.blocks.is_empty() && self.flows.is_empty() {
            out.push((
                Row::Running,
                format!(
                    "{spin} preparing the build  {}",
                    secs(now.saturating_duration_since(self.start))
                ),
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
            let s = if b.done == 1 { "" } else { "s" };
            out.push((
                if b.failed { Row::Failed } else { Row::Header },
                fit(
                    &format!("{mark} {} @ {}", b.platform, b.worker),
                    &format!(
                        "{}{} step{s} done, {} cached  {}",
                        if b.failed { "FAILED  " } else { "" },
                        b.done,
                        b.cached,
                        secs(elapsed)
                    ),
                    width,
                ),
            ));
            for (id, v) in running {
                out.push((
                    Row::Running,
                    fit(
                        &format!("    #{} {}", v.number, one_line(&v.short)),
                        &secs(now.saturating_duration_since(v.started)),
                        width,
                    ),
                ));
                out.extend(
                    v.tail_lines(tail)
                        .into_iter()
                        .map(|l| (Row::Output, format!("       | {l}"))),
                );
                out.extend(
                    self.flows
                        .iter()
                        .filter(|f| f.vertex == Some(*id))
                        .map(|f| (Row::Other, f.line(now, "       ", width))),
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
            out.push((Row::Other, f.line(now, "  ", width)));
        }
        if rest.len() > MAX_FLOWS {
            out.push((
                Row::Other,
                format!("  … and {} more transfers", rest.len() - MAX_FLOWS),
            ));
        }
        out
    }
}

/// What a row of the live area is, for its colour.
#[derive(Debug, Clone, Copy)]
enum Row {
    Header,
    Running,
    Failed,
    Output,
    Other,
}
