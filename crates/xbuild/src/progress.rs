//! Rendering the engine's event stream: BuildKit-shaped plain lines,
//! one JSON object per line (`rawjson`), or nothing (`quiet`).
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

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;
use xbuild_engine::events::{Event, EventSink, VertexId};

/// How to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// BuildKit's numbered lines.
    Plain,
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
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Renderer {
    /// Render to standard error.
    pub fn stderr(style: Style) -> Self {
        Self::to_writer(style, Box::new(std::io::stderr()))
    }

    /// Render to any writer.
    pub fn to_writer(style: Style, out: Box<dyn Write + Send>) -> Self {
        Renderer {
            style,
            out: Mutex::new(out),
            state: Mutex::new(State::default()),
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
        self.state.lock().map(|s| s.steps_cached).unwrap_or(0)
    }

    /// Whether step output was already shown live (plain mode).
    pub fn shows_logs(&self) -> bool {
        self.style == Style::Plain
    }

    /// The failed vertices so far: display name and full output.
    pub fn failures(&self) -> Vec<(String, Vec<String>)> {
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
            Event::Miss { id, reason } => {
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
                self.line(&format!("WARNING: {message}"));
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
        }
    }
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

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(1000), "1kB");
        assert_eq!(human_bytes(1_234_567), "1.235MB");
    }
}
