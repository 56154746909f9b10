//! `--progress plain`: BuildKit-shaped lines.

use super::*;

impl Renderer {
    pub(super) fn plain(&self, e: &Event) {
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
                worker,
                shared_by,
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
                let p = xbuild_engine::events::platform_label(platform, shared_by);
                let display = title(&p, stage, *index, *total, name);
                st.names.insert(*id, display.clone());
                drop(st);
                // BuildKit's line, then where it runs (as errors name it).
                self.line(&format!("#{number} {display}  [{p} @ {worker}]"));
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
            Event::Log { .. } => self.plain_log(st, e),
            Event::Done { id, duration } => {
                let Some(v) = st.vertices.get_mut(id) else {
                    return;
                };
                let n = v.number;
                let cached = v.cached;
                v.ended = true;
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
                let n = match st.vertices.get_mut(id) {
                    Some(v) => {
                        v.ended = true;
                        v.number
                    }
                    None => 0,
                };
                drop(st);
                if self.is_cancelled() {
                    self.line(&format!("#{n} CANCELED"));
                } else {
                    self.line(&format!("#{n} ERROR: {error}"));
                }
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
                self.line(&format!("WARNING: {}", super::sanitize_terminal(message)));
            }
        }
    }

    /// Output of a step: complete lines, numbered and timed.
    fn plain_log(&self, mut st: std::sync::MutexGuard<'_, State>, e: &Event) {
        let Event::Log {
            id,
            stream,
            elapsed,
            data,
        } = e
        else {
            return;
        };
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

    /// The end of the build: steps that never finished are marked
    /// `CANCELED` (as BuildKit does), and an interrupted build says so.
    /// Idempotent.
    pub(super) fn plain_finish(&self) {
        let mut st = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        if st.closed {
            return;
        }
        st.closed = true;
        let mut open: Vec<u64> = st
            .vertices
            .values()
            .filter(|v| !v.ended)
            .map(|v| v.number)
            .collect();
        open.sort_unstable();
        drop(st);
        for n in open {
            self.line(&format!("#{n} CANCELED"));
        }
        if self.is_cancelled() {
            self.line("cancelled: the build was interrupted; running steps were stopped");
        }
    }
}
