//! Word-level helpers of the line parser: splitting the keyword from its
//! arguments, extracting leading `--flags`, BuildKit's quote-preserving word
//! splitter (ENV, LABEL, ARG) and whitespace splitting (FROM, EXPOSE, ...).

/// Whitespace as Go's `unicode.IsSpace` sees it (Rust's `char::is_whitespace`
/// uses the same Unicode `White_Space` property).
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// The separator class BuildKit splits keywords and plain word lists on:
/// `[\t\v\f\r ]`.
pub(crate) fn is_token_ws(c: char) -> bool {
    matches!(c, '\t' | '\u{0b}' | '\u{0c}' | '\r' | ' ')
}

/// ASCII whitespace as Go's `unicode.IsSpace` sees single bytes
/// (`\t \n \v \f \r` and space).
pub(crate) fn is_ascii_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{0b}' | '\u{0c}' | '\r' | ' ')
}

/// Split `s` (already trimmed) into runs separated by `[\t\v\f\r ]+`, like
/// Go's `regexp.Split(s, -1)`. An empty `s` gives one empty element.
pub(crate) fn split_token_ws(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_sep = false;
    for c in s.chars() {
        if is_token_ws(c) {
            if !in_sep {
                out.push(std::mem::take(&mut cur));
                in_sep = true;
            }
        } else {
            in_sep = false;
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Split `s` at its first `[\t\v\f\r ]+` run, like Go's `regexp.Split(s, 2)`.
pub(crate) fn split2_token_ws(s: &str) -> (&str, Option<&str>) {
    match s.find(is_token_ws) {
        None => (s, None),
        Some(i) => {
            let rest = s[i..].trim_start_matches(is_token_ws);
            (&s[..i], Some(rest))
        }
    }
}

/// The parts of one instruction line: lower-cased keyword, flags, and the
/// remaining (trimmed) argument text.
pub(crate) struct SplitCommand<'a> {
    pub keyword: String,
    pub flags: Vec<String>,
    pub args: &'a str,
}

/// Split an instruction line into keyword, flags and arguments.
pub(crate) fn split_command(line: &str) -> SplitCommand<'_> {
    let line = line.trim_matches(is_space);
    let (kw, rest) = split2_token_ws(line);
    let (args, flags) = match rest {
        Some(rest) => extract_flags(rest),
        None => ("", Vec::new()),
    };
    SplitCommand {
        keyword: kw.to_lowercase(),
        flags,
        args: args.trim_matches(is_space),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Spaces,
    Word,
    Quote,
}

/// Take the leading `--flag` words off `line`. Quotes inside a flag group
/// characters and are removed, and `\` escapes the next character, as in
/// BuildKit's `extractBuilderFlags`. A bare `--` ends the flags and is dropped.
/// Returns the rest of the line and the flags.
pub(crate) fn extract_flags(line: &str) -> (&str, Vec<String>) {
    let mut flags = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut it = line.char_indices().peekable();
    while let Some((pos, ch)) = it.next() {
        if phase == Phase::Spaces {
            if is_space(ch) {
                continue;
            }
            let next_is_dash = it.peek().map(|&(_, c)| c) == Some('-');
            if ch != '-' || !next_is_dash {
                return (&line[pos..], flags);
            }
            phase = Phase::Word;
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if word == "--" {
                    return (&line[pos..], flags);
                }
                if blank_ok || !word.is_empty() {
                    flags.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                continue;
            }
            let mut ch = ch;
            if ch == '\\' {
                match it.next() {
                    None => continue,
                    Some((_, c)) => ch = c,
                }
            }
            word.push(ch);
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            continue;
        }
        let mut ch = ch;
        if ch == '\\' {
            match it.next() {
                None => {
                    phase = Phase::Word;
                    continue;
                }
                Some((_, c)) => ch = c,
            }
        }
        word.push(ch);
    }
    if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
        flags.push(word);
    }
    ("", flags)
}

/// BuildKit's `parseWords`: split on whitespace, keeping quotes and escape
/// characters in the words (they are removed later, at expansion time).
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut it = rest.chars().peekable();
    while let Some(ch) = it.next() {
        if phase == Phase::Spaces {
            if is_space(ch) {
                continue;
            }
            phase = Phase::Word;
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                continue;
            }
            let mut ch = ch;
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                match it.next() {
                    // An escape character at the end of the input is dropped.
                    None => continue,
                    Some(c) => {
                        word.push(ch);
                        ch = c;
                    }
                }
            }
            word.push(ch);
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        let mut ch = ch;
        if ch == escape && quote != '\'' {
            match it.next() {
                None => {
                    phase = Phase::Word;
                    continue;
                }
                Some(c) => {
                    word.push(ch);
                    ch = c;
                }
            }
        }
        word.push(ch);
    }
    if phase != Phase::Spaces && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}
