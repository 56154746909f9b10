//! `--progress rawjson`: the build's events as BuildKit's `SolveStatus`
//! objects, one JSON object per line, so that tools written for
//! `docker buildx build --progress=rawjson` read xbuild's progress.
//!
//! The shapes follow BuildKit's published client types (`client/graph.go`:
//! `SolveStatus`, `Vertex`, `VertexStatus`, `VertexLog`, `VertexWarning`)
//! and Go's JSON encoding of them: byte slices as standard base64, times
//! as RFC 3339 with nanoseconds, empty optional fields left out. Each
//! update carries the whole current state of the vertices it names, as
//! BuildKit's do.
//!
//! How xbuild's events map onto them:
//! - a step starting: a `Vertex` with its `digest` (the SHA-256 of a
//!   stable identity: platform, stage and title, so the same Dockerfile
//!   gives the same digests on every run), `name` as BuildKit titles it
//!   (`[linux/arm64 build 2/5] RUN make`), `inputs` (the previous vertex of
//!   the stage) and `started`;
//! - a cache hit, a finish, a failure: the same vertex with `completed`,
//!   and `cached` or `error`;
//! - step output: a `VertexLog` (`stream` 1 for stdout, 2 for stderr);
//! - bytes moving: a `VertexStatus` with `current`/`total`, under the step
//!   it belongs to or under one vertex per kind of transfer (`pulling
//!   images`, `pushing`, ...);
//! - warnings: a `VertexWarning` with `level` 1 and the message as `short`.
//!
//! Cache-miss reasons have no place in BuildKit's schema; `--progress json`
//! keeps xbuild's own, richer events for those.

use base64::Engine as _;
use serde::Serialize;
use std::collections::HashMap;
#[cfg(test)]
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};
use xbuild_engine::events::{Event, LogStream, Transfer, VertexId};
use xbuild_oci::Digest;

use crate::progress::one_line;

/// BuildKit's `SolveStatus`: one update.
#[derive(Debug, Default, Serialize)]
pub struct SolveStatus {
    /// Vertices whose state changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vertexes: Vec<Vertex>,
    /// Progress of transfers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<VertexStatus>,
    /// Output of running vertices.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<VertexLog>,
    /// Warnings.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<VertexWarning>,
}

impl SolveStatus {
    fn is_empty(&self) -> bool {
        self.vertexes.is_empty()
            && self.statuses.is_empty()
            && self.logs.is_empty()
            && self.warnings.is_empty()
    }
}

/// BuildKit's `Vertex`.
#[derive(Debug, Clone, Serialize)]
pub struct Vertex {
    /// `sha256:...` of the vertex's identity.
    pub digest: String,
    /// Digests of the vertices it builds on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// Title (`[linux/arm64 build 2/5] RUN make`).
    pub name: String,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<String>,
    /// Taken from the cache.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// BuildKit's `VertexStatus`: progress of one transfer.
#[derive(Debug, Clone, Serialize)]
pub struct VertexStatus {
    /// What moves (a digest, a reference).
    pub id: String,
    /// The vertex it belongs to.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vertex: String,
    /// Display name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Total bytes, when known.
    #[serde(skip_serializing_if = "is_zero")]
    pub total: i64,
    /// Bytes so far.
    pub current: i64,
    /// RFC 3339: when this update was made.
    pub timestamp: String,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// RFC 3339, once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<String>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// BuildKit's `VertexLog`.
#[derive(Debug, Clone, Serialize)]
pub struct VertexLog {
    /// The vertex that printed it.
    pub vertex: String,
    /// 1 stdout, 2 stderr.
    pub stream: u8,
    /// Standard base64 of the bytes.
    pub data: String,
    /// RFC 3339.
    pub timestamp: String,
}

/// BuildKit's `VertexWarning`.
#[derive(Debug, Clone, Serialize)]
pub struct VertexWarning {
    /// The vertex it concerns, if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vertex: String,
    /// Severity (BuildKit's lint warnings use 1).
    pub level: u8,
    /// Standard base64 of the one-line message.
    pub short: String,
}

/// What the encoder remembers of a vertex.
struct Known {
    vertex: Vertex,
    started: SystemTime,
    finished: bool,
}

/// One synthetic vertex per kind of transfer not tied to a step.
struct TransferVertex {
    vertex: Vertex,
    finished: bool,
}

/// A transfer's first report.
struct Flow {
    started: String,
    done: bool,
}

/// Turns events into [`SolveStatus`] updates. Not thread-safe by itself;
/// the renderer holds it under its lock.
#[derive(Default)]
pub struct Encoder {
    vertices: HashMap<VertexId, Known>,
    /// How often each identity was seen, so repeated titles stay distinct.
    identities: HashMap<String, usize>,
    /// The last vertex of each (platform, stage): the next one's input.
    stage_tail: HashMap<(String, String), String>,
    transfers: HashMap<&'static str, TransferVertex>,
    flows: HashMap<(Option<VertexId>, &'static str, String), Flow>,
}

fn sha256(text: &str) -> String {
    Digest::sha256_of(text.as_bytes()).to_string()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// RFC 3339 in UTC with as many fractional digits as needed, as Go's
/// `time.Time` marshals to JSON (`2024-01-02T03:04:05.5Z`).
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let base = xbuild_engine::image::rfc3339(d.as_secs() as i64);
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        return base;
    }
    let frac = format!("{nanos:09}");
    let frac = frac.trim_end_matches('0');
    format!("{}.{frac}Z", base.trim_end_matches('Z'))
}

fn transfer_name(kind: Transfer) -> (&'static str, &'static str) {
    match kind {
        Transfer::Pull => ("pull", "pulling images"),
        Transfer::Push => ("push", "pushing to the registry"),
        Transfer::Context => ("context", "sending the build context"),
        Transfer::Export => ("export", "exporting the result"),
    }
}

impl Encoder {
    /// The update for one event at `now`, if the event has a BuildKit
    /// counterpart.
    pub fn encode(&mut self, event: &Event, now: SystemTime) -> Option<SolveStatus> {
        let mut out = SolveStatus::default();
        match event {
            Event::Started { .. } => out.vertexes.push(self.started(event, now)?),
            Event::Cached { id } => {
                let k = self.vertices.get_mut(id)?;
                k.vertex.cached = true;
                k.vertex.completed = Some(rfc3339_nanos(now));
                k.finished = true;
                out.vertexes.push(k.vertex.clone());
            }
            Event::Miss { .. } => return None,
            Event::Log {
                id,
                stream,
                elapsed,
                data,
            } => {
                let k = self.vertices.get(id)?;
                out.logs.push(VertexLog {
                    vertex: k.vertex.digest.clone(),
                    stream: match stream {
                        LogStream::Stdout => 1,
                        LogStream::Stderr => 2,
                    },
                    data: b64(data),
                    timestamp: rfc3339_nanos(k.started + *elapsed),
                });
            }
            Event::Done { id, duration } => {
                let k = self.vertices.get_mut(id)?;
                if k.finished && k.vertex.cached {
                    // Already reported complete with the cache hit.
                    return None;
                }
                let end = if duration.is_zero() {
                    now
                } else {
                    k.started + *duration
                };
                k.vertex.completed = Some(rfc3339_nanos(end));
                k.finished = true;
                out.vertexes.push(k.vertex.clone());
            }
            Event::Failed { id, error } => {
                let k = self.vertices.get_mut(id)?;
                k.vertex.completed = Some(rfc3339_nanos(now));
                k.vertex.error = error.clone();
                k.finished = true;
                out.vertexes.push(k.vertex.clone());
            }
            Event::Bytes { .. } => return self.bytes(event, now),
            Event::Warning { message } => out.warnings.push(VertexWarning {
                vertex: String::new(),
                level: 1,
                short: b64(message.as_bytes()),
            }),
        }
        (!out.is_empty()).then_some(out)
    }

    /// A vertex for a step that started.
    fn started(&mut self, event: &Event, now: SystemTime) -> Option<Vertex> {
        let Event::Started {
            id,
            platform,
            stage,
            index,
            total,
            name,
            shared_by,
            ..
        } = event
        else {
            return None;
        };
        // A step shared by several targets is one vertex, titled with all of them.
        let platform = xbuild_engine::events::platform_label(platform, shared_by);
        let prefix = if *index > 0 && *total > 0 {
            format!("[{platform} {stage} {index}/{total}]")
        } else {
            format!("[{platform} {stage}]")
        };
        let title = format!("{prefix} {}", one_line(name));
        let identity = format!("xbuild vertex\n{platform}\n{stage}\n{title}");
        let seen = self.identities.entry(identity.clone()).or_insert(0);
        *seen += 1;
        let digest = sha256(&format!("{identity}\n{seen}"));
        let tail_key = (platform.to_string(), stage.clone());
        let inputs = self
            .stage_tail
            .get(&tail_key)
            .cloned()
            .into_iter()
            .collect();
        self.stage_tail.insert(tail_key, digest.clone());
        let vertex = Vertex {
            digest,
            inputs,
            name: title,
            started: Some(rfc3339_nanos(now)),
            completed: None,
            cached: false,
            error: String::new(),
        };
        self.vertices.insert(
            *id,
            Known {
                vertex: vertex.clone(),
                started: now,
                finished: false,
            },
        );
        Some(vertex)
    }

    /// A transfer's progress, under its step or its kind's vertex.
    fn bytes(&mut self, event: &Event, now: SystemTime) -> Option<SolveStatus> {
        let Event::Bytes {
            id,
            kind,
            label,
            current,
            total,
        } = event
        else {
            return None;
        };
        let mut out = SolveStatus::default();
        let (key, title) = transfer_name(*kind);
        let vertex = match id.and_then(|i| self.vertices.get(&i)) {
            Some(k) => k.vertex.digest.clone(),
            None => {
                let t = self.transfers.entry(key).or_insert_with(|| TransferVertex {
                    vertex: Vertex {
                        digest: sha256(&format!("xbuild transfer\n{key}")),
                        inputs: Vec::new(),
                        name: title.to_string(),
                        started: Some(rfc3339_nanos(now)),
                        completed: None,
                        cached: false,
                        error: String::new(),
                    },
                    finished: true,
                });
                if t.finished {
                    // First report, or new work after it was closed.
                    t.finished = false;
                    t.vertex.completed = None;
                    out.vertexes.push(t.vertex.clone());
                }
                t.vertex.digest.clone()
            }
        };
        let stamp = rfc3339_nanos(now);
        let flow = self
            .flows
            .entry((*id, key, label.clone()))
            .or_insert_with(|| Flow {
                started: stamp.clone(),
                done: false,
            });
        let done = total.is_some_and(|t| *current >= t);
        if flow.done && done {
            return None;
        }
        flow.done = done;
        out.statuses.push(VertexStatus {
            id: label.clone(),
            vertex,
            name: label.clone(),
            total: total.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
            current: i64::try_from(*current).unwrap_or(i64::MAX),
            timestamp: stamp.clone(),
            started: Some(flow.started.clone()),
            completed: done.then_some(stamp),
        });
        Some(out)
    }

    /// The last update at the end of the build: transfer vertices
    /// completed, and steps still running (the build was interrupted or
    /// another platform failed) completed with the error `canceled`.
    pub fn finish(&mut self, now: SystemTime) -> Option<SolveStatus> {
        let mut out = SolveStatus::default();
        let stamp = rfc3339_nanos(now);
        let mut running: Vec<&mut Known> =
            self.vertices.values_mut().filter(|k| !k.finished).collect();
        running.sort_by_key(|k| k.started);
        for k in running {
            k.finished = true;
            k.vertex.completed = Some(stamp.clone());
            k.vertex.error = "canceled".into();
            out.vertexes.push(k.vertex.clone());
        }
        let mut open: Vec<&mut TransferVertex> = self
            .transfers
            .values_mut()
            .filter(|t| !t.finished)
            .collect();
        open.sort_by(|a, b| a.vertex.name.cmp(&b.vertex.name));
        for t in open {
            t.finished = true;
            t.vertex.completed = Some(stamp.clone());
            out.vertexes.push(t.vertex.clone());
        }
        (!out.is_empty()).then_some(out)
    }
}

/// One JSON line of an update (Go's encoder ends each with a newline; the
/// caller writes it as a line).
pub fn to_line(s: &SolveStatus) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "{}".into())
}

/// How long since `started`, for tests.
#[cfg(test)]
fn after(t: SystemTime, ms: u64) -> SystemTime {
    t + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use xbuild_oci::Platform;

    fn started(id: u64, platform: &str, index: usize, name: &str) -> Event {
        Event::Started {
            id: VertexId(id),
            platform: Platform::parse(platform).unwrap(),
            stage: "build".into(),
            index,
            total: 3,
            name: name.into(),
            worker: "qemu".into(),
            shared_by: Vec::new(),
        }
    }

    fn json(s: Option<SolveStatus>) -> Value {
        serde_json::from_str(&to_line(&s.expect("an update"))).unwrap()
    }

    #[test]
    fn times_are_rfc3339_like_go() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 0);
        assert_eq!(rfc3339_nanos(t), "2023-11-14T22:13:20Z");
        assert_eq!(
            rfc3339_nanos(t + Duration::from_millis(500)),
            "2023-11-14T22:13:20.5Z"
        );
        assert_eq!(
            rfc3339_nanos(t + Duration::from_nanos(1)),
            "2023-11-14T22:13:20.000000001Z"
        );
    }

    #[test]
    fn a_step_becomes_a_vertex_with_logs_and_completion() {
        let t0 = UNIX_EPOCH + Duration::new(1_700_000_000, 0);
        let mut enc = Encoder::default();
        let from = json(enc.encode(&started(1, "linux/arm64", 1, "FROM busybox"), t0));
        assert_eq!(
            from["vertexes"][0]["name"],
            "[linux/arm64 build 1/3] FROM busybox"
        );
        assert_eq!(from["vertexes"][0]["started"], "2023-11-14T22:13:20Z");
        assert!(from["vertexes"][0].get("inputs").is_none());
        assert!(from["vertexes"][0].get("completed").is_none());
        let from_digest = from["vertexes"][0]["digest"].as_str().unwrap().to_string();
        assert!(from_digest.starts_with("sha256:") && from_digest.len() == 71);

        let run = json(enc.encode(&started(2, "linux/arm64", 2, "RUN make"), t0));
        let v = &run["vertexes"][0];
        assert_eq!(v["inputs"][0], from_digest.as_str());
        let digest = v["digest"].as_str().unwrap().to_string();

        let log = json(enc.encode(
            &Event::Log {
                id: VertexId(2),
                stream: LogStream::Stderr,
                elapsed: Duration::from_millis(250),
                data: b"cc main.c\n".to_vec(),
            },
            after(t0, 900),
        ));
        assert_eq!(log["logs"][0]["vertex"], digest.as_str());
        assert_eq!(log["logs"][0]["stream"], 2);
        assert_eq!(log["logs"][0]["data"], "Y2MgbWFpbi5jCg==");
        assert_eq!(log["logs"][0]["timestamp"], "2023-11-14T22:13:20.25Z");

        let done = json(enc.encode(
            &Event::Done {
                id: VertexId(2),
                duration: Duration::from_millis(1500),
            },
            after(t0, 1600),
        ));
        assert_eq!(done["vertexes"][0]["completed"], "2023-11-14T22:13:21.5Z");
        assert!(done["vertexes"][0].get("cached").is_none());
        assert!(enc
            .encode(
                &Event::Miss {
                    id: VertexId(2),
                    reason: "no cache record".into(),
                    causes: Vec::new()
                },
                t0
            )
            .is_none());

        // The same build again gives the same digests.
        let mut again = Encoder::default();
        again.encode(&started(7, "linux/arm64", 1, "FROM busybox"), t0);
        let run2 = json(again.encode(&started(8, "linux/arm64", 2, "RUN make"), t0));
        assert_eq!(run2["vertexes"][0]["digest"], digest.as_str());
        // Another platform, another digest.
        let amd = json(again.encode(&started(9, "linux/amd64", 2, "RUN make"), t0));
        assert_ne!(amd["vertexes"][0]["digest"], digest.as_str());
    }

    #[test]
    fn cache_hits_failures_transfers_warnings_and_cancellation() {
        let t0 = UNIX_EPOCH + Duration::new(1_700_000_000, 0);
        let mut enc = Encoder::default();
        enc.encode(&started(1, "linux/amd64", 2, "COPY . ."), t0);
        let hit = json(enc.encode(&Event::Cached { id: VertexId(1) }, t0));
        assert_eq!(hit["vertexes"][0]["cached"], true);
        assert_eq!(hit["vertexes"][0]["completed"], "2023-11-14T22:13:20Z");
        assert!(enc
            .encode(
                &Event::Done {
                    id: VertexId(1),
                    duration: Duration::ZERO
                },
                t0
            )
            .is_none());

        enc.encode(&started(2, "linux/amd64", 3, "RUN false"), t0);
        let failed = json(enc.encode(
            &Event::Failed {
                id: VertexId(2),
                error: "exit code: 1".into(),
            },
            t0,
        ));
        assert_eq!(failed["vertexes"][0]["error"], "exit code: 1");

        let push = |current| Event::Bytes {
            id: None,
            kind: Transfer::Push,
            label: "sha256:abcd".into(),
            current,
            total: Some(10),
        };
        let first = json(enc.encode(&push(4), t0));
        assert_eq!(first["vertexes"][0]["name"], "pushing to the registry");
        let tv = first["vertexes"][0]["digest"].clone();
        assert_eq!(first["statuses"][0]["vertex"], tv);
        assert_eq!(first["statuses"][0]["current"], 4);
        assert_eq!(first["statuses"][0]["total"], 10);
        assert!(first["statuses"][0].get("completed").is_none());
        let last = json(enc.encode(&push(10), after(t0, 100)));
        assert!(last.get("vertexes").is_none());
        assert_eq!(last["statuses"][0]["completed"], "2023-11-14T22:13:20.1Z");
        assert_eq!(last["statuses"][0]["started"], "2023-11-14T22:13:20Z");

        let warn = json(enc.encode(
            &Event::Warning {
                message: "hi".into(),
            },
            t0,
        ));
        assert_eq!(warn["warnings"][0]["short"], "aGk=");
        assert_eq!(warn["warnings"][0]["level"], 1);

        enc.encode(&started(3, "linux/amd64", 0, "ENV A=$B"), t0);
        let end = json(enc.finish(after(t0, 2000)));
        let names: Vec<&str> = end["vertexes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["[linux/amd64 build] ENV A=$B", "pushing to the registry"]
        );
        assert_eq!(end["vertexes"][0]["error"], "canceled");
        assert!(enc.finish(t0).is_none());
        assert!(enc
            .encode(&Event::Cached { id: VertexId(99) }, t0)
            .is_none());
    }
}
