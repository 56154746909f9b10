//! BuildKit's parser test data (see `shared/conformance/README.md`) run
//! against xbuild's Dockerfile parser.
//!
//! The corpus is found at `$XBUILD_CONFORMANCE_DIR`, or else at
//! `<workspace root>/../shared/conformance`.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use xbuild_dockerfile::ast::Heredoc;
use xbuild_dockerfile::dump::dump;
use xbuild_dockerfile::parser::{chomp_heredoc_content, heredocs_from_line, parse, parse_heredoc};

fn corpus() -> PathBuf {
    let dir = match std::env::var_os("XBUILD_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance"),
    };
    if !dir.join("README.md").is_file() {
        panic!(
            "conformance corpus not found at {} (set XBUILD_CONFORMANCE_DIR to the shared/conformance directory)",
            dir.display()
        );
    }
    dir
}

fn read(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("{} is not UTF-8: {e}", path.display()))
}

/// Case directories (only subdirectories), sorted.
fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// Print the count line and fail with every failure listed.
fn report(set: &str, total: usize, failures: Vec<String>) {
    println!("conformance {set}: {}/{total}", total - failures.len());
    assert!(total > 0, "conformance {set}: no cases found");
    assert!(
        failures.is_empty(),
        "conformance {set}: {} of {total} failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

fn line_diff(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => out.push_str(&format!("   {x}\n")),
            (x, y) => {
                if let Some(x) = x {
                    out.push_str(&format!("-  {x}\n"));
                }
                if let Some(y) = y {
                    out.push_str(&format!("+  {y}\n"));
                }
            }
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        out.push_str("(final newline differs)\n");
    }
    out
}

#[test]
fn dockerfile_parser() {
    let dir = corpus().join("dockerfile-parser");
    let all = cases(&dir);
    let mut failures = Vec::new();
    for case in &all {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let src = read(&case.join("Dockerfile"));
        let expected = read(&case.join("result"));
        match parse(&src, "Dockerfile") {
            Err(e) => failures.push(format!("{name}: parse failed: {e}")),
            Ok(doc) => {
                let got = dump(&doc);
                if got != expected {
                    failures.push(format!(
                        "{name}: dump differs (- expected, + got):\n{}",
                        line_diff(&expected, &got)
                    ));
                }
            }
        }
    }
    report("dockerfile-parser", all.len(), failures);
}

#[test]
fn dockerfile_parser_negative() {
    let dir = corpus().join("dockerfile-parser-negative");
    let all = cases(&dir);
    let mut failures = Vec::new();
    for case in &all {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let src = read(&case.join("Dockerfile"));
        if let Ok(doc) = parse(&src, "Dockerfile") {
            failures.push(format!("{name}: expected an error, got:\n{}", dump(&doc)));
        }
    }
    report("dockerfile-parser-negative", all.len(), failures);
}

#[test]
fn dockerfile_parser_lines() {
    let dir = corpus().join("dockerfile-parser-lines");
    let doc = parse(&read(&dir.join("Dockerfile")), "Dockerfile").expect("parse");
    let table = read(&dir.join("expected-lines.tsv"));
    let mut total = 0;
    let mut failures = Vec::new();
    // Upstream also requires exactly 3 instructions (not counted as a case).
    if doc.nodes.len() != 3 {
        failures.push(format!("expected 3 instructions, got {}", doc.nodes.len()));
    }
    for row in table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        total += 1;
        let f: Vec<&str> = row.split('\t').collect();
        assert_eq!(f.len(), 3, "bad row {row:?}");
        let want: (usize, usize) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let got = if f[0] == "root" {
            Some(doc.span)
        } else {
            doc.nodes
                .get(f[0].parse::<usize>().unwrap())
                .map(|n| n.span)
        };
        match got {
            Some(s) if (s.start_line, s.end_line) == want => {}
            other => failures.push(format!("{}: expected lines {want:?}, got {other:?}", f[0])),
        }
    }
    report("dockerfile-parser-lines", total, failures);
}

fn heredoc_json(h: &Heredoc) -> Value {
    serde_json::json!({
        "Name": h.name,
        "FileDescriptor": h.file_descriptor,
        "Expand": h.expand,
        "Chomp": h.chomp,
        "Content": h.content,
    })
}

fn heredoc_extract_set(sub: &str) {
    let dir = corpus().join("dockerfile-heredoc").join(sub);
    let doc = parse(&read(&dir.join("Dockerfile")), "Dockerfile").expect("parse");
    let expected: Value =
        serde_json::from_str(&read(&dir.join("expected.json"))).expect("expected.json");
    let entries = expected.as_array().expect("array");
    let mut failures = Vec::new();
    for e in entries {
        let i = e["child_index"].as_u64().expect("child_index") as usize;
        let want = &e["heredocs"];
        let Some(node) = doc.nodes.get(i) else {
            failures.push(format!(
                "child {i}: missing (only {} instructions)",
                doc.nodes.len()
            ));
            continue;
        };
        let got = if node.heredocs.is_empty() {
            Value::Null
        } else {
            Value::Array(node.heredocs.iter().map(heredoc_json).collect())
        };
        if &got != want {
            failures.push(format!(
                "child {i} ({:?}):\n  expected {want}\n  got      {got}",
                node.original
            ));
        }
    }
    report(
        &format!("dockerfile-heredoc/{sub}"),
        entries.len(),
        failures,
    );
}

#[test]
fn dockerfile_heredoc_extract() {
    heredoc_extract_set("extract");
}

#[test]
fn dockerfile_heredoc_json_form() {
    heredoc_extract_set("json-form");
}

#[test]
fn dockerfile_heredoc_parse_heredoc() {
    let table = read(&corpus().join("dockerfile-heredoc/parse-heredoc.tsv"));
    let mut total = 0;
    let mut failures = Vec::new();
    for row in table.lines().filter(|l| !l.starts_with('#')) {
        total += 1;
        let f: Vec<&str> = row.split('\t').collect();
        assert_eq!(f.len(), 3, "bad row {row:?}");
        let (kind, name, token) = (f[0], f[1], f[2]);
        let got = parse_heredoc(token);
        let ok = match (kind, &got) {
            ("valid", Ok(Some(h))) => h.name == name,
            ("error", Err(_)) => true,
            ("not-heredoc", Ok(None)) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!("{kind} {token:?}: got {got:?}"));
        }
    }
    report("dockerfile-heredoc/parse-heredoc", total, failures);
}

#[test]
fn dockerfile_heredoc_heredocs_from_line() {
    let table = read(&corpus().join("dockerfile-heredoc/heredocs-from-line.tsv"));
    let mut total = 0;
    let mut failures = Vec::new();
    for row in table.lines().filter(|l| !l.starts_with('#')) {
        total += 1;
        let mut f = row.split('\t');
        let line = f.next().unwrap_or_default();
        let want: Vec<&str> = f.filter(|n| !n.is_empty()).collect();
        let got = heredocs_from_line(line);
        let got_names: Vec<&str> = got.iter().map(|h| h.name.as_str()).collect();
        if got_names != want {
            failures.push(format!("{line:?}: expected {want:?}, got {got_names:?}"));
        }
    }
    report("dockerfile-heredoc/heredocs-from-line", total, failures);
}

#[test]
fn dockerfile_heredoc_chomp() {
    let table = read(&corpus().join("dockerfile-heredoc/chomp.jsonl"));
    let mut total = 0;
    let mut failures = Vec::new();
    for row in table.lines().filter(|l| !l.trim().is_empty()) {
        total += 1;
        let v: Value = serde_json::from_str(row).expect("jsonl row");
        let input = v["input"].as_str().expect("input");
        let want = v["expected"].as_str().expect("expected");
        let got = chomp_heredoc_content(input);
        if got != want {
            failures.push(format!("{input:?}: expected {want:?}, got {got:?}"));
        }
    }
    report("dockerfile-heredoc/chomp", total, failures);
}
