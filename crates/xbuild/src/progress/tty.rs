//! `--progress tty`: the live per-platform view.

use super::*;

impl Renderer {
    pub(super) fn tty(&self, event: &Event) {
        let Some(live) = &self.live else {
            return;
        };
        let Ok(mut st) = live.state.lock() else {
            return;
        };
        // Printed under the state lock so lines keep the events' order.
        for l in st.apply(event, Instant::now()) {
            self.above(live, &l);
        }
    }
}

// The tty view.
// ---------------------------------------------------------------------------

/// Output lines of a running step shown in the live area.
pub(super) const TAIL_LINES: usize = 3;
/// Width of a byte bar, brackets excluded.
pub(super) const BAR_WIDTH: usize = 20;
/// Transfers not tied to a running step shown at once; the rest are counted.
pub(super) const MAX_FLOWS: usize = 6;
/// Characters of an error kept on a failed step's log line.
pub(super) const ERROR_CHARS: usize = 160;
/// Frames of the spinner of a platform with a running step (ASCII, so any
/// terminal and any locale shows it).
pub(super) const SPINNER: [char; 4] = ['-', '\\', '|', '/'];

/// The live area and the state it is drawn from.
pub(super) struct Live {
    pub(super) state: Mutex<TtyState>,
    /// The live area; `None` when stderr is not a terminal.
    pub(super) bar: Option<ProgressBar>,
    /// Set when [`Renderer::finish`] starts; stops the ticker thread.
    pub(super) stop: AtomicBool,
    /// Set once the live area is gone: later lines go straight to the writer.
    pub(super) finished: AtomicBool,
}

impl Live {
    /// Recomputes the live area for the terminal's current size and hands it
    /// to indicatif, which redraws it in place.
    pub(super) fn redraw(&self, tick: usize) {
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
pub(super) fn terminal_size() -> Option<(usize, usize)> {
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
pub(super) struct TtyVertex {
    pub(super) number: u64,
    /// `[linux/arm64 stage-1 2/6] RUN make`, as plain mode names it.
    pub(super) display: String,
    /// `[stage-1 2/6] RUN make`: its name inside the platform's block.
    pub(super) short: String,
    /// Index of its platform's block.
    pub(super) block: usize,
    pub(super) started: Instant,
    /// Bytes of an unfinished line, per stream.
    pub(super) partial: [Vec<u8>; 2],
    /// The last complete lines, for the live area.
    pub(super) tail: VecDeque<String>,
    /// Everything it printed, for the failure report.
    pub(super) logs: Vec<String>,
    /// Why it missed the cache, shown with its DONE line.
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
        }
    }

    /// Takes in one event; returns the lines to print above the live area.
    pub(super) fn apply(&mut self, e: &Event, now: Instant) -> Vec<String> {
        match e {
            Event::Started { .. } => self.started(e, now),
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
            Event::Bytes { .. } => self.bytes(e, now),
            Event::Warning { message } => vec![format!("WARNING: {}", one_line(message))],
        }
    }

    /// A vertex started: its platform's block, its numbers and names.
    fn started(&mut self, e: &Event, now: Instant) -> Vec<String> {
        let Event::Started {
            id,
            platform,
            stage,
            index,
            total,
            name,
            worker,
        } = e
        else {
            return Vec::new();
        };
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

    /// Bytes moved: a finished transfer is logged, a running one drawn as a bar.
    fn bytes(&mut self, e: &Event, now: Instant) -> Vec<String> {
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

    pub(super) fn end_vertex(&mut self, id: VertexId, block: usize, now: Instant, failed: bool) {
        if let Some(b) = self.blocks.get_mut(block) {
            b.running.retain(|r| *r != id);
            b.done += usize::from(!failed);
            b.failed |= failed;
            b.last = now;
        }
        self.flows.retain(|f| f.vertex != Some(id));
    }

    /// The build is over: the lines for steps that never finished.
    pub(super) fn finish(&mut self) -> Vec<String> {
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
    /// (0: unknown), at spinner frame `tick`. Every line fits the width; the
    /// whole fits the height, dropping output lines first.
    pub(super) fn render(
        &self,
        now: Instant,
        width: usize,
        height: usize,
        tick: usize,
    ) -> Vec<String> {
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

    pub(super) fn compose(
        &self,
        now: Instant,
        width: usize,
        tick: usize,
        tail: usize,
    ) -> Vec<String> {
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
pub(super) fn byte_bar(current: u64, total: u64) -> String {
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
pub(super) fn fit(left: &str, right: &str, width: usize) -> String {
    let room = width.saturating_sub(right.chars().count() + 2);
    if left.chars().count() <= room || room < 8 {
        format!("{left}  {right}")
    } else {
        format!("{}  {right}", truncate(left, room))
    }
}

/// At most `width` characters, `...` marking a cut.
pub(super) fn truncate(s: &str, width: usize) -> String {
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

/// Control characters (newlines of a heredoc, tabs) as spaces.
pub(super) fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A log line as a terminal can show it in one row: what a carriage return
/// would leave visible, escape sequences dropped, tabs expanded.
pub(super) fn clean(s: &str) -> String {
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
