//! `--progress rawjson` read the way tools written for `docker buildx build
//! --progress=rawjson` read it: every line one BuildKit `SolveStatus`.
//!
//! The reader below is written from BuildKit's published client types
//! (`client/graph.go`: `SolveStatus`, `Vertex`, `VertexStatus`,
//! `VertexLog`, `VertexWarning`) and Go's JSON encoding of them: `[]byte`
//! fields are standard base64, times RFC 3339, omitted fields absent. It
//! rejects fields those types do not have, so xbuild's own event schema
//! cannot pass for it.

use base64::Engine as _;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use xbuild_e2e::testbed::Registry;
use xbuild_e2e::{context, publish_base, require_multiplatform, s, Run, Xbuild};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SolveStatus {
    #[serde(default)]
    vertexes: Vec<Vertex>,
    #[serde(default)]
    statuses: Vec<VertexStatus>,
    #[serde(default)]
    logs: Vec<VertexLog>,
    #[serde(default)]
    warnings: Vec<VertexWarning>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vertex {
    digest: String,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    name: String,
    started: Option<String>,
    completed: Option<String>,
    #[serde(default)]
    cached: bool,
    #[serde(default)]
    error: String,
    #[serde(rename = "progressGroup")]
    #[allow(dead_code)]
    progress_group: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VertexStatus {
    id: String,
    #[serde(default)]
    vertex: String,
    #[serde(default)]
    #[allow(dead_code)]
    name: String,
    #[serde(default)]
    total: i64,
    current: i64,
    timestamp: String,
    started: Option<String>,
    completed: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VertexLog {
    #[serde(default)]
    vertex: String,
    #[serde(default)]
    stream: i64,
    data: String,
    timestamp: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct VertexWarning {
    #[serde(default)]
    vertex: String,
    #[serde(default)]
    level: i64,
    #[serde(default)]
    short: Option<String>,
    #[serde(default)]
    detail: Vec<String>,
    #[serde(default)]
    url: String,
    #[serde(rename = "sourceInfo")]
    source_info: Option<serde_json::Value>,
    range: Option<serde_json::Value>,
}

/// RFC 3339 (`2024-01-02T03:04:05.123Z`, or with an offset) as seconds and
/// nanoseconds since the epoch; panics on anything else.
fn parse_time(t: &str) -> (i64, u32) {
    let bad = || -> ! { panic!("not an RFC 3339 time: {t:?}") };
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        bad()
    }
    let num = |r: std::ops::Range<usize>| -> i64 { t[r].parse().unwrap_or_else(|_| bad()) };
    let (y, mo, d) = (num(0..4), num(5..7), num(8..10));
    let (h, mi, sec) = (num(11..13), num(14..16), num(17..19));
    let mut rest = &t[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() || digits.len() > 9 {
            bad()
        }
        nanos = format!("{digits:0<9}").parse().unwrap_or_else(|_| bad());
        rest = &frac[digits.len()..];
    }
    let offset = match rest {
        "Z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let s = (num(t.len() - 5..t.len() - 3) * 60 + num(t.len() - 2..t.len())) * 60;
            if o.starts_with('-') {
                -s
            } else {
                s
            }
        }
        _ => bad(),
    };
    // Days from the civil date (proleptic Gregorian).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + h * 3600 + mi * 60 + sec - offset, nanos)
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("log data is not base64 ({e}): {s:?}"))
}

/// What a rawjson reader makes of a run: the last state of every vertex
/// (by digest, in first-seen order), the log bytes per vertex and stream,
/// the statuses and the warnings.
#[derive(Default)]
struct Reader {
    order: Vec<String>,
    vertices: HashMap<String, Vertex>,
    logs: HashMap<(String, i64), Vec<u8>>,
    statuses: Vec<VertexStatus>,
    warnings: Vec<String>,
}

impl Reader {
    fn read(stderr: &str) -> Reader {
        let mut r = Reader::default();
        for line in stderr.lines() {
            let st: SolveStatus = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a SolveStatus ({e}): {line}\n{stderr}"));
            for v in st.vertexes {
                assert!(
                    v.digest.starts_with("sha256:") && v.digest.len() == 71,
                    "{v:?}"
                );
                if let Some(t) = &v.started {
                    parse_time(t);
                }
                if !r.vertices.contains_key(&v.digest) {
                    r.order.push(v.digest.clone());
                }
                r.vertices.insert(v.digest.clone(), v);
            }
            for l in st.logs {
                parse_time(&l.timestamp);
                assert!(
                    r.vertices.contains_key(&l.vertex),
                    "a log of an unknown vertex: {l:?}"
                );
                assert!(matches!(l.stream, 1 | 2), "{l:?}");
                r.logs
                    .entry((l.vertex.clone(), l.stream))
                    .or_default()
                    .extend(b64(&l.data));
            }
            for s in st.statuses {
                parse_time(&s.timestamp);
                assert!(r.vertices.contains_key(&s.vertex), "{s:?}");
                r.statuses.push(s);
            }
            for w in st.warnings {
                r.warnings
                    .push(String::from_utf8(b64(w.short.as_deref().unwrap_or(""))).unwrap());
            }
        }
        r
    }

    fn by_name(&self, name: &str) -> &Vertex {
        let found: Vec<&Vertex> = self.vertices.values().filter(|v| v.name == name).collect();
        assert_eq!(
            found.len(),
            1,
            "vertices named {name:?}: {:#?}",
            self.names()
        );
        found[0]
    }

    fn names(&self) -> Vec<&str> {
        self.order
            .iter()
            .map(|d| self.vertices[d].name.as_str())
            .collect()
    }

    fn log(&self, v: &Vertex, stream: i64) -> String {
        String::from_utf8_lossy(
            self.logs
                .get(&(v.digest.clone(), stream))
                .map(Vec::as_slice)
                .unwrap_or_default(),
        )
        .into_owned()
    }
}

fn build(xb: &Xbuild, dir: &std::path::Path, progress: &str) -> Run {
    xb.run(&[
        "build",
        "--progress",
        progress,
        "--platform",
        "linux/amd64,linux/arm64",
        s(dir),
    ])
    .ok()
}

#[test]
fn rawjson_is_buildkit_solve_status_for_a_two_platform_build() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    // Published from another state directory: the build pulls the base,
    // so transfers show up as statuses.
    let base = publish_base(&Xbuild::new(), &reg);
    let xb = Xbuild::new();
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base}\n\
             RUN echo \"hello from $(uname -m)\"\n\
             ENV WHO=world\n\
             RUN echo \"bye $WHO\" >&2\n"
        ),
    )]);

    let first = build(&xb, ctx.path(), "rawjson");
    assert!(first.stdout.is_empty(), "{}", first.stdout);
    let r = Reader::read(&first.stderr);
    let mut run_digests = BTreeMap::new();
    for (platform, arch) in [("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")] {
        let from = r.by_name(&format!("[{platform} stage-0 1/3] FROM {base}"));
        let hello = r.by_name(&format!(
            "[{platform} stage-0 2/3] RUN echo \"hello from $(uname -m)\""
        ));
        // Metadata-only instructions take no step number, and show as written.
        let env = r.by_name(&format!("[{platform} stage-0] ENV WHO=world"));
        let bye = r.by_name(&format!(
            "[{platform} stage-0 3/3] RUN echo \"bye $WHO\" >&2"
        ));
        assert_eq!(
            hello.inputs,
            std::slice::from_ref(&from.digest),
            "{hello:?}"
        );
        assert_eq!(bye.inputs, std::slice::from_ref(&env.digest), "{bye:?}");
        for v in [from, hello, env, bye] {
            assert!(!v.cached, "{v:?}");
            assert!(v.error.is_empty(), "{v:?}");
            let started = parse_time(v.started.as_deref().expect("started"));
            let completed = parse_time(v.completed.as_deref().expect("completed"));
            assert!(started <= completed, "{v:?}");
        }
        assert_eq!(r.log(hello, 1), format!("hello from {arch}\n"));
        assert_eq!(r.log(bye, 2), "bye world\n");
        assert_eq!(r.log(bye, 1), "");
        run_digests.insert(platform, hello.digest.clone());
    }
    assert_ne!(run_digests["linux/amd64"], run_digests["linux/arm64"]);
    // Pulls: statuses with current/total under the "pulling images"
    // vertex, named by platform, each completed with all its bytes.
    let pulling = r.by_name("pulling images");
    assert!(pulling.completed.is_some(), "{pulling:?}");
    let pulls: Vec<&VertexStatus> = r
        .statuses
        .iter()
        .filter(|st| st.vertex == pulling.digest)
        .collect();
    for platform in ["linux/amd64", "linux/arm64"] {
        assert!(
            pulls
                .iter()
                .any(|st| st.id.starts_with(platform) && st.completed.is_some() && st.total > 0),
            "no completed pull for {platform}: {pulls:#?}"
        );
    }
    for st in &r.statuses {
        if let Some(c) = &st.completed {
            assert!(parse_time(st.started.as_deref().expect("started")) <= parse_time(c));
            assert_eq!(st.current, st.total, "{st:?}");
        }
        assert!(!st.id.is_empty());
    }

    // Again: every step cached, same digests, no output replayed.
    let second = build(&xb, ctx.path(), "rawjson");
    let r2 = Reader::read(&second.stderr);
    for platform in ["linux/amd64", "linux/arm64"] {
        let hello = r2.by_name(&format!(
            "[{platform} stage-0 2/3] RUN echo \"hello from $(uname -m)\""
        ));
        assert!(hello.cached, "{hello:?}");
        assert!(hello.completed.is_some(), "{hello:?}");
        assert_eq!(hello.digest, run_digests[platform]);
        assert_eq!(r2.log(hello, 1), "");
        assert!(
            r2.by_name(&format!("[{platform} stage-0] ENV WHO=world"))
                .cached
        );
        assert!(
            r2.by_name(&format!(
                "[{platform} stage-0 3/3] RUN echo \"bye $WHO\" >&2"
            ))
            .cached
        );
    }

    // `--progress json` keeps xbuild's own events, with the miss reasons.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nRUN echo \"hello from $(uname -m)\"\nENV WHO=you\nRUN echo \"bye $WHO\" >&2\n"),
    )
    .unwrap();
    let json = build(&xb, ctx.path(), "json");
    let events: Vec<serde_json::Value> = json
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        events.iter().all(|e| e["type"].is_string()),
        "{}",
        json.stderr
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "miss" && e["causes"][0]["kind"] == "instruction_changed"),
        "{}",
        json.stderr
    );
}

#[test]
fn rfc3339_reader_itself() {
    assert_eq!(parse_time("1970-01-01T00:00:00Z"), (0, 0));
    assert_eq!(
        parse_time("2023-11-14T22:13:20.5Z"),
        (1_700_000_000, 500_000_000)
    );
    assert_eq!(parse_time("2023-11-14T23:13:20+01:00"), (1_700_000_000, 0));
}
