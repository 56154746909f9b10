//! Conformance of `ignore` against moby/patternmatcher's own test tables
//! (`shared/conformance/dockerignore`, see its README section 4).

use std::path::PathBuf;
use xbuild_dockerfile::ignore::{self, MatchInfo, MatchKind, PatternMatcher};

fn corpus() -> PathBuf {
    let dir = match std::env::var_os("XBUILD_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance"),
    };
    assert!(
        dir.join("dockerignore").is_dir(),
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

/// Data rows of a TSV file: `#` lines are comments; fields split on TAB.
fn rows(text: &str) -> Vec<(usize, Vec<&str>)> {
    text.split('\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, l)| (n + 1, l.split('\t').collect()))
        .collect()
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

fn outcome<E>(r: &Result<bool, E>) -> &'static str {
    match r {
        Ok(true) => "true",
        Ok(false) => "false",
        Err(_) => "error",
    }
}

/// `MatchesUsingParentResults` walking down from the top directory, as
/// upstream's test (and a context walk) does.
fn walk(pm: &PatternMatcher, path: &str) -> Result<bool, ignore::PatternError> {
    let parent = match path.rfind('/') {
        Some(i) => clean(&path[..=i]),
        None => ".".to_string(),
    };
    let mut info = MatchInfo::default();
    if parent != "." {
        let dirs: Vec<&str> = parent.split('/').collect();
        for i in 0..dirs.len() {
            // Upstream ignores the parents' errors too.
            if let Ok((_, next)) = pm.matches_using_parent_results(&dirs[..=i].join("/"), &info) {
                info = next;
            }
        }
    }
    pm.matches_using_parent_results(path, &info).map(|(m, _)| m)
}

/// Enough of `filepath.Clean` for the parent of a test path.
fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let parts: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    match (rooted, parts.is_empty()) {
        (true, _) => format!("/{}", parts.join("/")),
        (false, true) => ".".to_string(),
        (false, false) => parts.join("/"),
    }
}

#[test]
fn cases() {
    let text = read("dockerignore/cases.tsv");
    let mut total = 0;
    let mut failures = Vec::new();
    for (line, f) in rows(&text) {
        assert!(f.len() >= 5, "line {line}: too few fields");
        let (suite, api, platform, expected, path) = (f[0], f[1], f[2], f[3], f[4]);
        let patterns: Vec<&str> = f[5..].to_vec();
        assert!(
            matches!(platform, "all" | "unix"),
            "line {line}: platform {platform}"
        );
        total += 1;
        let mut problems = Vec::new();
        match api {
            "Matches" => {
                let got = ignore::matches(path, &patterns);
                if outcome(&got) != expected {
                    problems.push(format!("Matches -> {got:?}"));
                }
            }
            "MatchesOrParentMatches" => match PatternMatcher::new(&patterns) {
                Err(e) => {
                    if expected != "error" {
                        problems.push(format!("New -> {e}"));
                    }
                }
                Ok(pm) => {
                    let first = pm.matches_or_parent_matches(path);
                    if outcome(&first) != expected {
                        problems.push(format!("MatchesOrParentMatches -> {first:?}"));
                    }
                    if suite == "regression" {
                        let again = pm.matches_or_parent_matches(path);
                        if outcome(&again) != expected {
                            problems.push(format!("second MatchesOrParentMatches -> {again:?}"));
                        }
                    }
                    if suite.starts_with("matches-") {
                        let walked = walk(&pm, path);
                        if outcome(&walked) != expected {
                            problems
                                .push(format!("MatchesUsingParentResults (walk) -> {walked:?}"));
                        }
                        let none = pm
                            .matches_using_parent_results(path, &MatchInfo::default())
                            .map(|(m, _)| m);
                        if outcome(&none) != expected {
                            problems
                                .push(format!("MatchesUsingParentResults (no parent) -> {none:?}"));
                        }
                    }
                }
            },
            other => panic!("line {line}: unknown api {other:?}"),
        }
        if !problems.is_empty() {
            failures.push(format!(
                "line {line}: {suite} {path:?} {patterns:?} want {expected}: {}",
                problems.join("; ")
            ));
        }
    }
    report("dockerignore/cases", total, &failures);
}

#[test]
fn new_patterns() {
    let text = read("dockerignore/new-patterns.tsv");
    let mut total = 0;
    let mut failures = Vec::new();
    for (line, f) in rows(&text) {
        total += 1;
        let (expected, patterns) = (f[0], &f[1..]);
        let got = PatternMatcher::new(patterns);
        let ok = match (expected, &got) {
            ("error", r) => r.is_err(),
            ("exclusions=true", Ok(pm)) => pm.exclusions(),
            (exp, Ok(pm)) => {
                exp.strip_prefix("count=").and_then(|n| n.parse().ok()) == Some(pm.patterns().len())
            }
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "line {line}: {patterns:?} want {expected}, got {got:?}"
            ));
        }
    }
    report("dockerignore/new-patterns", total, &failures);
}

#[test]
fn readall() {
    let input = read("dockerignore/readall/input.dockerignore");
    let expected = read("dockerignore/readall/expected-patterns.txt");
    let want: Vec<&str> = expected.lines().collect();
    let got = ignore::read_ignore_file(&input);
    let failures = if got == want {
        Vec::new()
    } else {
        vec![format!("got {got:?}, want {want:?}")]
    };
    report("dockerignore/readall", 1, &failures);
}

#[test]
fn compile_regex() {
    let text = read("dockerignore/compile-regex.tsv");
    let mut total = 0;
    let mut failures = Vec::new();
    for (line, f) in rows(&text) {
        total += 1;
        let (pattern, kind, regex_unix) = (f[0], f[1], f[2]);
        let pm = PatternMatcher::new([pattern]).expect("valid pattern");
        let p = &pm.patterns()[0];
        let got_kind = match p.match_kind() {
            Some(MatchKind::Exact) => "exact",
            Some(MatchKind::Prefix) => "prefix",
            Some(MatchKind::Suffix) => "suffix",
            Some(MatchKind::Regexp) => "regexp",
            None => "invalid",
        };
        let got_regex = p.regex_source().unwrap_or("");
        if got_kind != kind || got_regex != regex_unix {
            failures.push(format!(
                "line {line}: {pattern:?}: got {got_kind} {got_regex:?}, want {kind} {regex_unix:?}"
            ));
        }
    }
    report("dockerignore/compile-regex", total, &failures);
}
