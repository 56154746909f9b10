//! The renderers as text: plain lines, rawjson/json lines, the tty view's
//! log lines, live area and screen updates.

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

impl Buf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
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
        shared_by: Vec::new(),
    }
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
        shared_by: Vec::new(),
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

fn done(id: u64, ms: u64) -> Event {
    Event::Done {
        id: VertexId(id),
        duration: Duration::from_millis(ms),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const NO: Paint = Paint(false);

/// The text of tty log lines without a width limit.
fn texts(lines: &[Logged]) -> Vec<String> {
    lines.iter().map(|l| l.render(None, NO)).collect()
}

#[test]
fn plain_matches_buildkit_shape_and_names_the_worker() {
    let buf = Buf::default();
    let r = Renderer::to_writer(Style::Plain, Box::new(buf.clone()));
    r.emit(started(10, "RUN make"));
    r.emit(Event::Log {
        id: VertexId(10),
        stream: LogStream::Stdout,
        elapsed: Duration::from_millis(412),
        data: b"cc -O2 -c main.c\npartial".to_vec(),
    });
    r.emit(done(10, 1900));
    r.emit(started(11, "COPY . ."));
    r.emit(Event::Cached { id: VertexId(11) });
    r.emit(done(11, 0));
    r.emit(started_on(12, "linux/amd64", "local", 0, "ENV A=$B"));
    r.emit(done(12, 0));
    r.finish();
    assert_eq!(
        buf.text(),
        "#1 [linux/arm64 build 2/5] RUN make  [linux/arm64 @ qemu]\n\
         #1 0.412 cc -O2 -c main.c\n#1 partial\n#1 DONE 1.9s\n\
         #2 [linux/arm64 build 2/5] COPY . .  [linux/arm64 @ qemu]\n#2 CACHED\n\
         #3 [linux/amd64 stage-1] ENV A=$B  [linux/amd64 @ local]\n#3 DONE 0.0s\n"
    );
    assert_eq!(r.cached_count(), 1);
    assert_eq!(r.output_of(VertexId(10)), ["cc -O2 -c main.c", "partial"]);
}

#[test]
fn plain_marks_unfinished_steps_and_an_interrupt() {
    let buf = Buf::default();
    let r = Renderer::to_writer(Style::Plain, Box::new(buf.clone()));
    r.emit(started(1, "RUN sleep 100"));
    r.emit(started(2, "RUN sleep 200"));
    r.cancel();
    r.emit(Event::Failed {
        id: VertexId(1),
        error: "killed".into(),
    });
    r.finish();
    r.finish();
    let out = buf.text();
    assert!(out.contains("#1 CANCELED\n"), "{out}");
    assert!(out.contains("#2 CANCELED\n"), "{out}");
    assert!(!out.contains("ERROR"), "{out}");
    assert_eq!(out.matches("cancelled: ").count(), 1, "{out}");
}

#[test]
fn rawjson_is_solve_status_and_json_is_events() {
    let buf = Buf::default();
    let r = Renderer::to_writer(Style::RawJson, Box::new(buf.clone()));
    r.emit(started(1, "RUN x"));
    r.emit(Event::Cached { id: VertexId(1) });
    r.emit(done(1, 0));
    r.emit(started(2, "RUN y"));
    r.finish();
    let lines: Vec<serde_json::Value> = buf
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines.iter().all(|v| v.get("vertexes").is_some()));
    assert_eq!(lines[1]["vertexes"][0]["cached"], true);
    assert_eq!(lines[3]["vertexes"][0]["error"], "canceled");

    let buf = Buf::default();
    let r = Renderer::to_writer(Style::Json, Box::new(buf.clone()));
    r.emit(started(1, "RUN x"));
    r.emit(Event::Cached { id: VertexId(1) });
    for l in buf.text().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v.get("type").is_some());
    }
    assert_eq!(buf.text().lines().count(), 2);
}

#[test]
fn tty_blocks_show_worker_running_step_tail_and_one_step_count() {
    let t0 = Instant::now();
    let mut st = TtyState::new(t0);
    assert_eq!(
        st.render(t0 + ms(300), 80, 40, 0, NO),
        ["- preparing the build  0.3s"]
    );
    st.apply(&started_on(9, "linux/arm64", "qemu", 1, "FROM busybox"), t0);
    st.apply(&done(9, 0), t0);
    assert!(st
        .apply(&started_on(1, "linux/amd64", "local", 3, "RUN make"), t0)
        .is_empty());
    st.apply(&started_on(2, "linux/arm64", "qemu", 2, "RUN uname -m"), t0);
    st.apply(&log(1, "one\ntwo\nthree\nfour\nfi"), t0 + ms(100));
    let d = st.apply(&done(2, 400), t0 + ms(400));
    assert_eq!(
        texts(&d),
        ["#3 [linux/arm64 stage-1 2/6] RUN uname -m  DONE 0.4s"]
    );
    st.apply(
        &started_on(3, "linux/arm64", "qemu", 3, "RUN make"),
        t0 + ms(500),
    );
    st.apply(&Event::Cached { id: VertexId(3) }, t0 + ms(500));
    let cached = st.apply(&done(3, 0), t0 + ms(500));
    assert_eq!(
        texts(&cached),
        ["#4 [linux/arm64 stage-1 3/6] RUN make  CACHED"]
    );
    // A metadata step counts (FROM does not), as in the summary.
    st.apply(&started_on(5, "linux/arm64", "qemu", 0, "ENV A=1"), t0);
    st.apply(&done(5, 0), t0 + ms(500));

    let screen = st.render(t0 + ms(1500), 80, 40, 1, NO);
    assert_eq!(
        screen,
        [
            "* linux/arm64 @ qemu  3 steps done, 1 cached  0.5s",
            "\\ linux/amd64 @ local  0 steps done, 0 cached  1.5s",
            "    #2 [stage-1 3/6] RUN make  1.5s",
            "       | three",
            "       | four",
            "       | fi",
        ]
    );
    // Fewer rows: output lines go first, then the block is cut.
    assert_eq!(st.render(t0 + ms(1500), 80, 6, 1, NO).len(), 4);
    assert_eq!(
        st.render(t0 + ms(1500), 80, 6, 1, NO)[3],
        "       | fi",
        "one output line per step when space is short"
    );
    let tiny = st.render(t0 + ms(1500), 80, 3, 1, NO);
    assert_eq!(tiny.len(), 2);
    assert_eq!(tiny[1], "… 2 more lines");
    assert_eq!(st.cached, 1);
}

#[test]
fn tty_lines_fit_any_width_without_panicking() {
    let t0 = Instant::now();
    let mut st = TtyState::new(t0);
    let long = format!("RUN {}", "x".repeat(300));
    st.apply(&started_on(1, "linux/arm64", "qemu", 2, &long), t0);
    st.apply(
        &log(1, "\x1b[31mred\x1b[0m\tok\rprogress 50% 漢字漢字漢字\n"),
        t0,
    );
    for width in [0, 1, 2, 3, 4, 10, 40, 80, 120] {
        for height in [0, 1, 2, 3, 40] {
            let lines = st.render(t0 + ms(2000), width, height, 7, NO);
            let w = if width == 0 { 80 } else { width };
            assert!(!lines.is_empty());
            for l in &lines {
                assert!(columns(l) < w.max(2), "{width}x{height}: {l:?}");
            }
            if height > 1 {
                assert!(lines.len() < height, "{width}x{height}: {lines:?}");
            }
        }
    }
    let wide = st.render(t0 + ms(2000), 60, 40, 0, NO);
    assert_eq!(columns(&wide[1]), 59);
    assert!(wide[1].ends_with("…  2.0s"), "{}", wide[1]);
    assert_eq!(wide[2], "       | progress 50% 漢字漢字漢字");
    // Log lines above the area are fitted the same way.
    let line = Logged::Step(format!("#1 {long}"), "DONE 1.0s".into());
    let shown = line.render(Some(79), NO);
    assert_eq!(columns(&shown), 79);
    assert!(shown.ends_with("…  DONE 1.0s"), "{shown}");
}

#[test]
fn tty_colour_wraps_statuses_and_can_be_off() {
    let line = Logged::Step("#1 [linux/amd64 b 2/3] RUN x".into(), "DONE 0.1s".into());
    assert_eq!(
        line.render(Some(79), Paint(true)),
        "#1 [linux/amd64 b 2/3] RUN x  \x1b[32mDONE 0.1s\x1b[0m"
    );
    assert!(!line.render(Some(79), Paint(false)).contains('\x1b'));
    let err = Logged::Step("#2 x".into(), "ERROR".into());
    assert!(err.render(None, Paint(true)).contains("\x1b[1;31mERROR"));
    let st = TtyState::new(Instant::now());
    let area = st.render(Instant::now(), 80, 24, 0, Paint(true));
    assert!(area[0].starts_with("\x1b[34m"), "{area:?}");
    assert!(!colour_wanted(false));
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
        st.render(t0 + ms(1000), 100, 40, 0, NO),
        ["  push reg/app sha256:abcd  [=========>          ] 2MB/4MB  2MB/s"]
    );
    let d = st.apply(&bytes(4_000_000), t0 + ms(1500));
    assert_eq!(texts(&d), ["pushed reg/app sha256:abcd 4MB"]);
    assert!(st.flows.is_empty());
    assert_eq!(byte_bar(0, 0), format!("[{}]", "=".repeat(BAR_WIDTH)));
    assert_eq!(byte_bar(5, 10), "[=========>          ]");
    assert_eq!(byte_bar(50, 10), format!("[{}]", "=".repeat(BAR_WIDTH)));
}

#[test]
fn tty_writer_prints_an_error_once_and_marks_cancelled_steps() {
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
    assert_eq!(
        buf.text(),
        "WARNING: FROM without a tag\n\
         #1 [linux/arm64 stage-1 2/6] RUN false  ERROR\n\
         #2 [linux/amd64 stage-1 2/6] RUN sleep 9  CANCELED\n"
    );
    assert_eq!(
        r.failures(),
        [(
            "[linux/arm64 stage-1 2/6] RUN false".to_string(),
            vec!["first".to_string(), "last words".to_string()]
        )]
    );

    // Ctrl-C: running steps are cancelled, not failed, and it is said once.
    let buf = Buf::default();
    let r = Renderer::to_writer(Style::Tty, Box::new(buf.clone()));
    r.emit(started_on(1, "linux/arm64", "qemu", 2, "RUN sleep 100"));
    r.emit(started_on(2, "linux/amd64", "local", 2, "RUN sleep 100"));
    r.cancel();
    assert!(r.is_cancelled());
    r.emit(Event::Failed {
        id: VertexId(2),
        error: "cancelled".into(),
    });
    r.finish();
    let out = buf.text();
    assert!(
        out.contains("#2 [linux/amd64 stage-1 2/6] RUN sleep 100  CANCELED\n"),
        "{out}"
    );
    assert!(
        out.contains("#1 [linux/arm64 stage-1 2/6] RUN sleep 100  CANCELED\n"),
        "{out}"
    );
    assert!(out.ends_with("cancelled: the build was interrupted; running steps were stopped\n"));
    assert!(r.failures().is_empty());
}

#[test]
fn tty_miss_reason_is_one_line_under_the_step() {
    let t0 = Instant::now();
    let mut st = TtyState::new(t0);
    st.apply(&started_on(1, "linux/amd64", "local", 2, "RUN echo b"), t0);
    st.apply(
        &Event::Miss {
            id: VertexId(1),
            reason: format!(
                "instruction changed: \"RUN echo {}\" -> \"RUN echo b\"",
                "a".repeat(200)
            ),
            causes: Vec::new(),
        },
        t0,
    );
    let lines = st.apply(&done(1, 300), t0);
    let shown: Vec<String> = lines.iter().map(|l| l.render(Some(79), NO)).collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert_eq!(
        shown[0],
        "#1 [linux/amd64 stage-1 2/6] RUN echo b  DONE 0.3s"
    );
    assert!(shown[1].starts_with("     cache miss: instruction changed: "));
    assert!(
        shown[1].ends_with('…') && columns(&shown[1]) == 79,
        "{}",
        shown[1]
    );
}

#[test]
fn tty_ignores_events_of_unknown_vertices() {
    let t0 = Instant::now();
    let mut st = TtyState::new(t0);
    assert!(st.apply(&log(5, "x\n"), t0).is_empty());
    assert!(st.apply(&done(5, 1), t0).is_empty());
    assert!(st.apply(&Event::Cached { id: VertexId(5) }, t0).is_empty());
    assert_eq!(st.render(t0, 80, 24, 0, NO).len(), 1);
}

/// A tiny terminal: rows of text and a cursor, for the escape sequences
/// the screen writes (CUU, CUD, CR, LF, EL, ED, SGR and sync ignored).
fn play(rows: &mut Vec<String>, cursor: &mut usize, bytes: &str) {
    let mut chars = bytes.chars().peekable();
    let mut col_text = String::new();
    let flush = |rows: &mut Vec<String>, cursor: usize, text: &mut String| {
        if !text.is_empty() {
            while rows.len() <= cursor {
                rows.push(String::new());
            }
            rows[cursor] = std::mem::take(text);
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                chars.next(); // '['
                let mut arg = String::new();
                let mut end = ' ';
                for c2 in chars.by_ref() {
                    if c2.is_ascii_alphabetic() {
                        end = c2;
                        break;
                    }
                    arg.push(c2);
                }
                let n: usize = arg.trim_start_matches('?').parse().unwrap_or(1);
                match end {
                    'A' => {
                        flush(rows, *cursor, &mut col_text);
                        *cursor -= n;
                    }
                    'B' => {
                        flush(rows, *cursor, &mut col_text);
                        *cursor += n;
                    }
                    'K' => {
                        flush(rows, *cursor, &mut col_text);
                        if arg == "2" && *cursor < rows.len() {
                            rows[*cursor].clear();
                        }
                    }
                    'J' => {
                        flush(rows, *cursor, &mut col_text);
                        rows.truncate(*cursor);
                    }
                    _ => {}
                }
            }
            '\r' => {}
            '\n' => {
                flush(rows, *cursor, &mut col_text);
                *cursor += 1;
            }
            c => col_text.push(c),
        }
    }
    flush(rows, *cursor, &mut col_text);
}

#[test]
fn screen_rewrites_only_changed_rows_in_one_synchronized_update() {
    let mut s = Screen::new(Box::new(std::io::sink()));
    let (mut rows, mut cur) = (Vec::new(), 0);
    let a = vec!["one".to_string(), "two".into(), "three".into()];
    let f = s.frame(&[], &a);
    assert!(
        f.starts_with("\x1b[?2026h") && f.ends_with("\x1b[?2026l"),
        "{f:?}"
    );
    play(&mut rows, &mut cur, &f);
    assert_eq!((rows.clone(), cur), (a.clone(), 3));
    // Nothing changed: nothing written.
    assert_eq!(s.frame(&[], &a), "");
    // One row changed: only it is written.
    let b = vec!["one".to_string(), "TWO".into(), "three".into()];
    let f = s.frame(&[], &b);
    assert!(
        f.contains("TWO") && !f.contains("one") && !f.contains("three"),
        "{f:?}"
    );
    play(&mut rows, &mut cur, &f);
    assert_eq!((rows.clone(), cur), (b.clone(), 3));
    // Lines above: printed, then the area again below them.
    let f = s.frame(&["#1 done".to_string()], &b[..2]);
    play(&mut rows, &mut cur, &f);
    assert_eq!(rows, ["#1 done", "one", "TWO"]);
    assert_eq!(cur, 3);
    // The area shrinks and grows.
    let f = s.frame(&[], &["x".to_string()]);
    assert!(
        !f.contains("\x1b[J"),
        "no erase-display (tmux scrolls it into history)"
    );
    play(&mut rows, &mut cur, &f);
    assert_eq!(rows, ["#1 done", "x", ""]);
    assert_eq!(cur, 2);
    let f = s.frame(&[], &["x".to_string(), "y".into(), "z".into()]);
    play(&mut rows, &mut cur, &f);
    assert_eq!(rows, ["#1 done", "x", "y", "z"]);
    let f = s.frame(&[], &[]);
    play(&mut rows, &mut cur, &f);
    assert_eq!(rows, ["#1 done", "", "", ""]);
    assert_eq!(cur, 1);
}

#[test]
fn log_lines_are_cleaned_for_one_row() {
    assert_eq!(clean("a\tb"), "a    b");
    assert_eq!(clean("10%\r20%\r"), "20%");
    assert_eq!(clean("\x1b[1;32mgreen\x1b[0m"), "green");
    assert_eq!(one_line("RUN <<EOF\necho\nEOF"), "RUN <<EOF echo EOF");
    assert_eq!(truncate("abcdef", 4), "abc…");
    assert_eq!(truncate("abcdef", 1), "…");
    assert_eq!(truncate("abc", 0), "abc".get(..0).unwrap());
    assert_eq!(truncate("漢字漢字", 5), "漢字…");
    assert_eq!(prefix("linux/amd64", "build", 0, 3), "[linux/amd64 build]");
    assert_eq!(prefix("", "build", 2, 3), "[build 2/3]");
}

#[test]
fn sizes() {
    assert_eq!(human_bytes(999), "999B");
    assert_eq!(human_bytes(1000), "1kB");
    assert_eq!(human_bytes(1_234_567), "1.235MB");
}

#[test]
fn terminal_sequences_are_neutralised() {
    assert_eq!(
        super::sanitize_terminal("bad \x1b]0;owned\x07name\u{9b}2J\n"),
        "bad \\x1b]0;owned\\x07name\\u{9b}2J\n"
    );
}
