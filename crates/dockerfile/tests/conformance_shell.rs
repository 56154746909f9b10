//! Conformance of `shell` against BuildKit's own word-expansion tables
//! (`shared/conformance/shell-words`, see its README section 3).

use std::collections::BTreeMap;
use std::path::PathBuf;
use xbuild_dockerfile::shell::Lexer;

fn corpus() -> PathBuf {
    let dir = match std::env::var_os("XBUILD_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance"),
    };
    assert!(
        dir.join("shell-words").is_dir(),
        "conformance corpus not found at {} (set XBUILD_CONFORMANCE_DIR)",
        dir.display()
    );
    dir
}

fn read(rel: &str) -> String {
    let path = corpus().join(rel);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("{} is not UTF-8: {e}", path.display()))
}

/// Lines as Go's `bufio.Scanner` yields them.
fn lines(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    if text.ends_with('\n') || text.is_empty() {
        v.pop();
    }
    v
}

fn report(set: &str, total: usize, failures: &[String]) {
    println!("conformance {set}: {}/{}", total - failures.len(), total);
    assert!(total > 0, "{set}: no cases found");
    assert!(
        failures.is_empty(),
        "{set}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn env_var_test() {
    let text = read("shell-words/envVarTest");
    let env = map(&[
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]);
    let lexer = Lexer::new('\\');
    let (mut total, mut skipped_windows) = (0, 0);
    let mut failures = Vec::new();
    for (n, line) in lines(&text).into_iter().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.trim().split('|').collect();
        assert_eq!(fields.len(), 3, "line {}: {line:?}", n + 1);
        let (platform, input, expected) = (fields[0].trim(), fields[1].trim(), fields[2].trim());
        match platform {
            "A" | "U" => {}
            // Windows rows need case-insensitive names; xbuild builds Linux.
            "W" => {
                skipped_windows += 1;
                continue;
            }
            other => panic!("line {}: bad platform {other:?}", n + 1),
        }
        total += 1;
        let got = lexer.process_word(input, &env);
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(v), exp) => exp != "error" && v == exp,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "line {}: {input:?} -> {got:?}, want {expected:?}",
                n + 1
            ));
        }
    }
    println!("(skipped {skipped_windows} Windows-only rows)");
    report("shell-words/envVarTest", total, &failures);
}

#[test]
fn words_test() {
    let text = read("shell-words/wordsTest");
    let lexer = Lexer::new('\\');
    let mut env: Vec<(String, String)> = Vec::new();
    let mut total = 0;
    let mut failures = Vec::new();
    for (n, line) in lines(&text).into_iter().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            let def = rest.trim_start_matches(' ');
            let (k, v) = def.split_once('=').unwrap_or((def, ""));
            env.push((k.to_string(), v.to_string()));
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 2, "line {}: {line:?}", n + 1);
        let input = fields[0].trim();
        let expected: Vec<&str> = fields[1].trim_start_matches(' ').split(',').collect();
        total += 1;
        let got = match lexer.process_words(input, &env) {
            Ok(words) => words,
            Err(_) => vec!["error".to_string()],
        };
        if got != expected {
            failures.push(format!(
                "line {}: {input:?} -> {got:?}, want {expected:?}",
                n + 1
            ));
        }
    }
    report("shell-words/wordsTest", total, &failures);
}

#[test]
fn expansion_cases() {
    let text = read("shell-words/expansion-cases.jsonl");
    let lexer = Lexer::new('\\');
    let mut total = 0;
    let mut failures = Vec::new();
    for (n, line) in lines(&text).into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let case: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: bad JSON: {e}", n + 1));
        total += 1;
        let input = case["input"].as_str().expect("input");
        let env: BTreeMap<String, String> = case["envs"]
            .as_object()
            .expect("envs")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("env value").to_string()))
            .collect();
        let got = lexer.process_word_with_matches(input, &env);
        if case["unguaranteed"].as_bool() == Some(true) {
            // Only has to return without panicking.
            continue;
        }
        let mut problems = Vec::new();
        if case["error"].as_bool() == Some(true) {
            match &got {
                Ok(e) => problems.push(format!("expected an error, got {:?}", e.value)),
                Err(err) => {
                    if let Some(want) = case.get("error_contains").and_then(|v| v.as_str()) {
                        if !err.to_string().contains(want) {
                            problems.push(format!("error {err} does not contain {want:?}"));
                        }
                    }
                }
            }
        } else {
            match &got {
                Err(err) => problems.push(format!("unexpected error: {err}")),
                Ok(e) => {
                    let want = case["expected"].as_str().expect("expected");
                    if e.value != want {
                        problems.push(format!("value {:?}, want {want:?}", e.value));
                    }
                    for (key, have) in [("matched", &e.matched), ("unmatched", &e.unmatched)] {
                        if let Some(list) = case[key].as_array() {
                            let want: Vec<&str> = list.iter().filter_map(|v| v.as_str()).collect();
                            let have: Vec<&str> = have.iter().map(String::as_str).collect();
                            if have != want {
                                problems.push(format!("{key} {have:?}, want {want:?}"));
                            }
                        }
                    }
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "line {}: {input:?}: {}",
                n + 1,
                problems.join("; ")
            ));
        }
    }
    report("shell-words/expansion-cases", total, &failures);
}
