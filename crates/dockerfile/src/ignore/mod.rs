//! `.dockerignore` matching with moby/patternmatcher semantics (not gitignore).
//!
//! [`PatternMatcher::new`] trims each pattern, drops empty ones, runs Go's
//! `filepath.Clean` and treats a leading `!` as an exception. Rules apply in
//! order and the last matching rule wins; `*` and `?` do not match `/`, `**`
//! matches any number of path segments (including none), `[...]` classes
//! and `\` escapes work as in Go's `filepath.Match`.
//!
//! Like upstream, a pattern is classified as an exact string, a prefix
//! (`dir/**`), a suffix (`**/name`) or a regular expression. The regular
//! expression is the same text upstream builds and runs through Go's
//! `regexp`; xbuild runs it on its own small Pike VM (the private `regex`
//! module), so upstream quirks carry over (`[!x]` is *not* a negation,
//! `[l-O]` is accepted by [`PatternMatcher::new`] but fails when matched,
//! ...). Matching never backtracks exponentially.
//!
//! Paths are slash-separated and relative to the context root (no leading
//! `./`). Only Unix semantics are implemented (`\` escapes).

pub(crate) mod regex;

use regex::Prog;
use std::fmt;

/// Errors from building or using a [`PatternMatcher`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A pattern that is only `!`.
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    /// Go's `filepath.ErrBadPattern`: invalid glob syntax (found by
    /// [`PatternMatcher::new`]) or a pattern whose translation fails to
    /// compile (found when it is first used for matching).
    #[error("syntax error in pattern {pattern:?}")]
    BadPattern {
        /// The cleaned pattern, without its `!`.
        pattern: String,
    },
    /// [`PatternMatcher::matches_using_parent_results`] got a [`MatchInfo`]
    /// from a matcher with a different number of patterns.
    #[error("wrong number of values in parentMatched: got {got}, want {want}")]
    WrongParentCount {
        /// Number of patterns of this matcher.
        want: usize,
        /// Number of values in the given [`MatchInfo`].
        got: usize,
    },
}

/// How a pattern is matched (upstream's `matchType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// The path must equal the pattern.
    Exact,
    /// `dir/**`: the path must start with the pattern minus its `**`.
    Prefix,
    /// `**/name` or `**name`: the path must end with the pattern minus its
    /// leading `**` (`**/name` also matches `name` itself).
    Suffix,
    /// Anything else: a regular expression.
    Regexp,
}

#[derive(Debug, Clone)]
enum Compiled {
    Exact,
    Prefix,
    Suffix,
    Regexp(Prog),
    /// The regular expression does not compile (Go `regexp` error).
    Invalid,
}

/// One cleaned `.dockerignore` rule.
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    dirs: usize,
    regex_source: String,
    compiled: Compiled,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cleaned)
    }
}

impl Pattern {
    /// The cleaned pattern text, without the leading `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether this is an exception (`!pattern`) that re-includes paths.
    pub fn exclusion(&self) -> bool {
        self.exclusion
    }

    /// How the pattern is matched; `None` when its regular expression does
    /// not compile (matching it then fails with [`PatternError::BadPattern`]).
    pub fn match_kind(&self) -> Option<MatchKind> {
        match self.compiled {
            Compiled::Exact => Some(MatchKind::Exact),
            Compiled::Prefix => Some(MatchKind::Prefix),
            Compiled::Suffix => Some(MatchKind::Suffix),
            Compiled::Regexp(_) => Some(MatchKind::Regexp),
            Compiled::Invalid => None,
        }
    }

    /// The Go regular expression upstream builds for this pattern (Unix
    /// flavour), when the pattern is matched by a regular expression (also
    /// when that expression fails to compile).
    pub fn regex_source(&self) -> Option<&str> {
        match self.compiled {
            Compiled::Regexp(_) | Compiled::Invalid => Some(&self.regex_source),
            _ => None,
        }
    }

    fn new(cleaned: String, exclusion: bool) -> Self {
        let (kind, regex_source) = translate(&cleaned);
        let compiled = match kind {
            MatchKind::Exact => Compiled::Exact,
            MatchKind::Prefix => Compiled::Prefix,
            MatchKind::Suffix => Compiled::Suffix,
            MatchKind::Regexp => match Prog::parse(&regex_source) {
                Ok(p) => Compiled::Regexp(p),
                Err(_) => Compiled::Invalid,
            },
        };
        Pattern {
            dirs: cleaned.split('/').count(),
            cleaned,
            exclusion,
            regex_source,
            compiled,
        }
    }

    /// Matches one (slash-separated) path against this pattern alone.
    pub fn matches(&self, path: &str) -> Result<bool, PatternError> {
        let pat = self.cleaned.as_bytes();
        let path_b = path.as_bytes();
        Ok(match &self.compiled {
            Compiled::Exact => path == self.cleaned,
            Compiled::Prefix => path_b.starts_with(&pat[..pat.len().saturating_sub(2)]),
            Compiled::Suffix => {
                let suffix = pat.get(2..).unwrap_or_default();
                path_b.ends_with(suffix)
                    || (suffix.first() == Some(&b'/') && path_b == &suffix[1..])
            }
            Compiled::Regexp(prog) => prog.is_match(path),
            Compiled::Invalid => {
                return Err(PatternError::BadPattern {
                    pattern: self.cleaned.clone(),
                })
            }
        })
    }
}

/// Upstream's `compile`: the match kind and the regular-expression text.
fn translate(pattern: &str) -> (MatchKind, String) {
    let mut reg = String::from("^");
    let mut kind = MatchKind::Exact;
    // Go's text/scanner skips a leading byte-order mark.
    let body = pattern.strip_prefix('\u{feff}').unwrap_or(pattern);
    let mut chars = body.chars().peekable();
    let mut i = 0;
    while let Some(ch) = chars.next() {
        match ch {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    if kind == MatchKind::Exact {
                        kind = MatchKind::Prefix;
                    } else {
                        reg.push_str(".*");
                        kind = MatchKind::Regexp;
                    }
                } else {
                    reg.push_str("(.*/)?");
                    kind = MatchKind::Regexp;
                }
                if i == 0 {
                    kind = MatchKind::Suffix;
                }
            }
            '*' => {
                reg.push_str("[^/]*");
                kind = MatchKind::Regexp;
            }
            '?' => {
                reg.push_str("[^/]");
                kind = MatchKind::Regexp;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                reg.push('\\');
                reg.push(ch);
            }
            '\\' => match chars.next() {
                Some(next) => {
                    reg.push('\\');
                    reg.push(next);
                    kind = MatchKind::Regexp;
                }
                None => reg.push('\\'),
            },
            '[' | ']' => {
                reg.push(ch);
                kind = MatchKind::Regexp;
            }
            other => reg.push(other),
        }
        i += 1;
    }
    if kind == MatchKind::Regexp {
        reg.push('$');
    }
    (kind, reg)
}

/// Per-directory results for [`PatternMatcher::matches_using_parent_results`]:
/// which patterns matched the parent directory. The default value means "no
/// information about the parent".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

impl MatchInfo {
    /// Per pattern: whether it matched (this directory or one of its parents).
    pub fn parent_matched(&self) -> &[bool] {
        &self.parent_matched
    }
}

/// An ordered list of `.dockerignore` rules (upstream `PatternMatcher`).
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl PatternMatcher {
    /// Builds a matcher (upstream `New`): trims each pattern, drops empty
    /// ones, cleans them, and checks their glob syntax.
    pub fn new<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut pm = PatternMatcher::default();
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            let mut p = clean(p);
            let exclusion = p.starts_with('!');
            if exclusion {
                if p.len() == 1 {
                    return Err(PatternError::IllegalExclusion);
                }
                p.remove(0);
                pm.exclusions = true;
            }
            if !glob_syntax_ok(&p) {
                return Err(PatternError::BadPattern { pattern: p });
            }
            pm.patterns.push(Pattern::new(p, exclusion));
        }
        Ok(pm)
    }

    /// Whether `path` or any of its parent directories is excluded (upstream
    /// `MatchesOrParentMatches`). The path is used as given (not cleaned).
    pub fn matches_or_parent_matches(&self, path: &str) -> Result<bool, PatternError> {
        let parent = dir(path);
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let mut m = pattern.matches(path)?;
            if !m && parent != "." {
                m = parent_prefixes(&parent).any(|p| pattern.matches(p).unwrap_or(false));
            }
            if m {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// Like [`matches_or_parent_matches`](Self::matches_or_parent_matches),
    /// using the [`MatchInfo`] returned for the parent directory (upstream
    /// `MatchesUsingParentResults`), which is how a context walk applies the
    /// rules cheaply. Pass `MatchInfo::default()` for a top-level entry, or
    /// when the parent's results are unknown (the parents are then checked).
    pub fn matches_using_parent_results(
        &self,
        path: &str,
        parent: &MatchInfo,
    ) -> Result<(bool, MatchInfo), PatternError> {
        let parent_matched = &parent.parent_matched;
        if !parent_matched.is_empty() && parent_matched.len() != self.patterns.len() {
            return Err(PatternError::WrongParentCount {
                want: self.patterns.len(),
                got: parent_matched.len(),
            });
        }
        let mut matched = false;
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut m = parent_matched.get(i).copied().unwrap_or(false);
            if !m {
                if pattern.exclusion != matched {
                    continue;
                }
                m = pattern.matches(path)?;
                if !m && parent_matched.is_empty() {
                    let parent = dir(path);
                    if parent != "." {
                        m = parent_prefixes(&parent).any(|p| pattern.matches(p).unwrap_or(false));
                    }
                }
            }
            info.parent_matched[i] = m;
            if m {
                matched = !pattern.exclusion;
            }
        }
        Ok((matched, info))
    }

    /// Upstream's deprecated `PatternMatcher.Matches`: only the parent prefix
    /// with as many segments as the pattern is checked.
    fn matches_single_parent(&self, path: &str) -> Result<bool, PatternError> {
        let parent = dir(path);
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let mut m = pattern.matches(path)?;
            if !m && parent != "." && pattern.dirs <= parent_dirs.len() {
                let prefix = parent_dirs[..pattern.dirs].join("/");
                m = pattern.matches(&prefix).unwrap_or(false);
            }
            if m {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// Whether any pattern is an exception (`!pattern`).
    pub fn exclusions(&self) -> bool {
        self.exclusions
    }

    /// The patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }
}

/// The prefixes of a cleaned directory path at each separator, shortest
/// first, ending with the whole path (upstream's `Join(dirs[:i+1], "/")`).
fn parent_prefixes(parent: &str) -> impl Iterator<Item = &str> {
    parent
        .match_indices('/')
        .map(move |(i, _)| &parent[..i])
        .chain(std::iter::once(parent))
}

/// Upstream's deprecated top-level `Matches(file, patterns)`: builds a
/// matcher, cleans the path, never matches `.`, and checks only the parent
/// prefix with as many segments as each pattern. Prefer
/// [`PatternMatcher::matches_or_parent_matches`].
pub fn matches(path: &str, patterns: &[&str]) -> Result<bool, PatternError> {
    let pm = PatternMatcher::new(patterns)?;
    let path = clean(path);
    if path == "." {
        return Ok(false);
    }
    pm.matches_single_parent(&path)
}

/// Reads a `.dockerignore` file (upstream `ignorefile.ReadAll`): drops a
/// UTF-8 byte-order mark, `#` comment lines (only when `#` is the first
/// character) and blank lines, trims whitespace, cleans each path, removes a
/// leading `/`, and turns `! /x` into `!x`. A lone `!` is kept (and then
/// rejected by [`PatternMatcher::new`]).
pub fn read_ignore_file(contents: &str) -> Vec<String> {
    let contents = contents.strip_prefix('\u{feff}').unwrap_or(contents);
    let mut out = Vec::new();
    for line in contents.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        out.push(if invert {
            format!("!{cleaned}")
        } else {
            cleaned
        });
    }
    out
}

/// The ignore files to look for, in order of preference: the
/// Dockerfile-specific `<dockerfile>.dockerignore` (next to the Dockerfile,
/// same directory part as `dockerfile_path`), then `.dockerignore` at the
/// root of the build context. The caller uses the first that exists.
pub fn ignore_file_candidates(dockerfile_path: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(2);
    let name = dockerfile_path.rsplit('/').next().unwrap_or_default();
    if !name.is_empty() {
        out.push(format!("{dockerfile_path}.dockerignore"));
    }
    out.push(".dockerignore".to_string());
    out
}

/// Go's `filepath.Clean` with `/` separators.
pub(crate) fn clean(path: &str) -> String {
    let p = path.as_bytes();
    if p.is_empty() {
        return ".".to_string();
    }
    let rooted = p[0] == b'/';
    let n = p.len();
    let mut out: Vec<u8> = Vec::with_capacity(n);
    let (mut r, mut dotdot) = (0, 0);
    if rooted {
        out.push(b'/');
        r = 1;
        dotdot = 1;
    }
    while r < n {
        if p[r] == b'/' || (p[r] == b'.' && (r + 1 == n || p[r + 1] == b'/')) {
            // empty element or `.`
            r += 1;
        } else if p[r] == b'.' && p[r + 1] == b'.' && (r + 2 == n || p[r + 2] == b'/') {
            r += 2;
            if out.len() > dotdot {
                // Back up to the previous separator (or the `..` floor).
                let mut w = out.len() - 1;
                while w > dotdot && out[w] != b'/' {
                    w -= 1;
                }
                out.truncate(w);
            } else if !rooted {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(b"..");
                dotdot = out.len();
            }
        } else {
            if (rooted && out.len() != 1) || (!rooted && !out.is_empty()) {
                out.push(b'/');
            }
            while r < n && p[r] != b'/' {
                out.push(p[r]);
                r += 1;
            }
        }
    }
    if out.is_empty() {
        return ".".to_string();
    }
    // Only ASCII '/' and '.' bytes were removed, so this stays UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Go's `filepath.Dir` with `/` separators.
pub(crate) fn dir(path: &str) -> String {
    let cut = path.rfind('/').map_or(0, |i| i + 1);
    clean(&path[..cut])
}

/// Whether Go's `filepath.Match(pattern, ".")` reports no syntax error
/// (Unix flavour): every `[...]` closes, ranges have both ends, and `\`
/// always escapes something.
fn glob_syntax_ok(pattern: &str) -> bool {
    let b = pattern.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                if i + 1 >= b.len() {
                    return false;
                }
                i += 2;
            }
            b'[' => {
                i += 1;
                if b.get(i) == Some(&b'^') {
                    i += 1;
                }
                let mut nrange = 0;
                loop {
                    if b.get(i) == Some(&b']') && nrange > 0 {
                        i += 1;
                        break;
                    }
                    match class_esc(b, i) {
                        Some(next) => i = next,
                        None => return false,
                    }
                    if b[i] == b'-' {
                        match class_esc(b, i + 1) {
                            Some(next) => i = next,
                            None => return false,
                        }
                    }
                    nrange += 1;
                }
            }
            _ => i += 1,
        }
    }
    true
}

/// Go's `getEsc`: one class character at `i`; the index after it, which
/// must not be the end of the pattern.
fn class_esc(b: &[u8], mut i: usize) -> Option<usize> {
    match b.get(i) {
        None | Some(b'-') | Some(b']') => return None,
        Some(b'\\') => {
            i += 1;
            if i >= b.len() {
                return None;
            }
        }
        _ => {}
    }
    // Skip one UTF-8 encoded character.
    i += 1;
    while i < b.len() && (b[i] & 0xc0) == 0x80 {
        i += 1;
    }
    (i < b.len()).then_some(i)
}

#[cfg(test)]
mod tests;
