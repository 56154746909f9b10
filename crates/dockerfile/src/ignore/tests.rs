use super::*;

fn pm(patterns: &[&str]) -> PatternMatcher {
    PatternMatcher::new(patterns).unwrap()
}

fn excluded(patterns: &[&str], path: &str) -> bool {
    pm(patterns).matches_or_parent_matches(path).unwrap()
}

#[test]
fn go_clean() {
    for (input, want) in [
        ("", "."),
        ("abc", "abc"),
        ("abc/def", "abc/def"),
        ("a/b/c", "a/b/c"),
        (".", "."),
        ("..", ".."),
        ("../..", "../.."),
        ("../../abc", "../../abc"),
        ("/abc", "/abc"),
        ("/", "/"),
        ("abc/", "abc"),
        ("abc/def/", "abc/def"),
        ("a/b/c/", "a/b/c"),
        ("./", "."),
        ("../", ".."),
        ("//abc", "/abc"),
        ("///abc", "/abc"),
        ("//abc//", "/abc"),
        ("abc//def//ghi", "abc/def/ghi"),
        ("//abc", "/abc"),
        ("abc/./def", "abc/def"),
        ("/./abc/def", "/abc/def"),
        ("abc/.", "abc"),
        ("abc/def/ghi/../jkl", "abc/def/jkl"),
        ("abc/def/../ghi/../jkl", "abc/jkl"),
        ("abc/def/..", "abc"),
        ("abc/def/../..", "."),
        ("/abc/def/../..", "/"),
        ("abc/def/../../..", ".."),
        ("/abc/def/../../..", "/"),
        ("abc/def/../../../ghi/jkl/../../../mno", "../../mno"),
        ("/../abc", "/abc"),
        ("abc/./../def", "def"),
        ("abc//./../def", "def"),
        ("abc/../../././../def", "../../def"),
        ("./foo", "foo"),
        ("!./foo", "!./foo"),
        ("한/./국/..", "한"),
    ] {
        assert_eq!(clean(input), want, "clean({input:?})");
    }
}

#[test]
fn go_dir() {
    assert_eq!(dir("file"), ".");
    assert_eq!(dir("file/"), "file");
    assert_eq!(dir("/"), "/");
    assert_eq!(dir("a/b/c"), "a/b");
    assert_eq!(dir("/a"), "/");
    assert_eq!(dir(""), ".");
}

#[test]
fn double_star_forms() {
    assert!(excluded(&["**"], "a/b/c"));
    assert!(excluded(&["**/*.go"], "main.go"));
    assert!(excluded(&["**/*.go"], "x/y/main.go"));
    assert!(!excluded(&["**/*.go"], "x/y/main.rs"));
    assert!(excluded(&["a/**/b"], "a/b"));
    assert!(excluded(&["a/**/b"], "a/x/y/b"));
    assert!(!excluded(&["a/**/b"], "ab"));
    assert!(excluded(&["node_modules/**"], "node_modules/x"));
    // dir/** does not match dir itself
    assert!(!excluded(&["node_modules/**"], "node_modules"));
    assert!(excluded(&["**/target"], "target/debug/x"));
    assert!(excluded(&["**/target"], "crates/a/target"));
}

#[test]
fn exclusion_order_last_wins() {
    assert!(!excluded(&["*.md", "!README.md"], "README.md"));
    assert!(excluded(&["*.md", "!README.md", "README*"], "README.md"));
    assert!(excluded(&["*.md", "!README.md"], "CHANGES.md"));
    // an exception naming a file re-includes it even below an excluded dir
    assert!(!excluded(&["docs", "!docs/keep.md"], "docs/keep.md"));
    assert!(excluded(&["docs", "!docs/keep.md"], "docs/other.md"));
}

#[test]
fn parent_directory_exclusion() {
    assert!(excluded(&["build"], "build/out/a.o"));
    assert!(!excluded(&["build"], "src/build.rs"));
    assert!(excluded(&["*/tmp"], "a/tmp/x/y"));
    assert!(!excluded(&["*/tmp"], "a/b/tmp/x"));
}

#[test]
fn cleaning_of_patterns() {
    let m = pm(&["./foo", "/bar", "baz/", "  qux  ", "", "a//b/../c"]);
    let texts: Vec<&str> = m.patterns().iter().map(Pattern::as_str).collect();
    // leading '/' is not removed by New (ReadAll does that)
    assert_eq!(texts, ["foo", "/bar", "baz", "qux", "a/c"]);
    assert!(excluded(&["./foo"], "foo/x"));
    assert!(!excluded(&["/bar"], "bar"));
    let read = read_ignore_file("/bar\n./x/\n! /y\n");
    assert_eq!(read, ["bar", "x", "!y"]);
    assert!(excluded(&["bar"], "bar"));
}

#[test]
fn errors() {
    assert_eq!(
        PatternMatcher::new(["!"]).unwrap_err(),
        PatternError::IllegalExclusion
    );
    assert!(matches!(
        PatternMatcher::new(["a["]),
        Err(PatternError::BadPattern { .. })
    ));
    assert!(PatternMatcher::new(["a\\"]).is_err());
    // valid glob, invalid regexp: error only when used, every time
    let m = pm(&["[z-a]"]);
    assert!(m.matches_or_parent_matches("x").is_err());
    assert!(m.matches_or_parent_matches("x").is_err());
    assert_eq!(m.patterns()[0].match_kind(), None);
    let (_, info) = pm(&["a", "b"])
        .matches_using_parent_results("a", &MatchInfo::default())
        .unwrap();
    assert!(matches!(
        pm(&["a"]).matches_using_parent_results("a/x", &info),
        Err(PatternError::WrongParentCount { want: 1, got: 2 })
    ));
}

#[test]
fn upstream_quirks() {
    // `[!x]` is not a negation in Go: a class of '!' and 'x'.
    assert!(excluded(&["[!x]"], "!"));
    assert!(!excluded(&["[!x]"], "y"));
    assert!(excluded(&["[^x]"], "y"));
    // `.` and `*` stay literal / segment-local
    assert!(!excluded(&["a.c"], "abc"));
    assert!(excluded(&["a?c"], "abc"));
    assert!(!excluded(&["a?c"], "a/c"));
    assert!(excluded(&["a\\*b"], "a*b"));
    assert!(!excluded(&["a\\*b"], "axb"));
}

#[test]
fn utf8_paths() {
    assert!(excluded(&["한?어"], "한국어"));
    assert!(excluded(&["*/*어"], "dir/한국어/x"));
    assert!(!excluded(&["*어"], "dir/한국어/x"));
    assert!(excluded(&["[가-힣]*"], "국"));
}

#[test]
fn walk_with_parent_results() {
    let m = pm(&["**", "!keep", "keep/tmp"]);
    let (a, ia) = m
        .matches_using_parent_results("keep", &MatchInfo::default())
        .unwrap();
    assert!(!a);
    let (b, ib) = m.matches_using_parent_results("keep/src", &ia).unwrap();
    assert!(!b);
    let (c, _) = m.matches_using_parent_results("keep/tmp", &ia).unwrap();
    assert!(c);
    let (d, _) = m
        .matches_using_parent_results("keep/src/x.rs", &ib)
        .unwrap();
    assert!(!d);
}

#[test]
fn candidates() {
    assert_eq!(
        ignore_file_candidates("Dockerfile"),
        ["Dockerfile.dockerignore", ".dockerignore"]
    );
    assert_eq!(
        ignore_file_candidates("build/app.Dockerfile"),
        ["build/app.Dockerfile.dockerignore", ".dockerignore"]
    );
    assert_eq!(ignore_file_candidates(""), [".dockerignore"]);
}

#[test]
fn many_paths_fast() {
    let m = pm(&[
        "**/*.o",
        "**/node_modules/**",
        "!**/keep/**",
        "a*b*c*d*e*f*g",
    ]);
    let start = std::time::Instant::now();
    for i in 0..20_000 {
        let p = format!("dir{}/sub{}/node_modules/pkg/file{}.o", i % 7, i % 13, i);
        assert!(m.matches_or_parent_matches(&p).unwrap());
    }
    assert!(start.elapsed().as_secs() < 20);
}
