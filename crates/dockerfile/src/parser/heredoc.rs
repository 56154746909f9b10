//! Heredoc detection (`<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`, ...).
//!
//! BuildKit finds heredocs by running its shell lexer over the whole
//! instruction line (keeping quotes, escapes and unset variables as they
//! are), then matching every word against `^(\d*)<<(-?)\s*([^<]*)$`. The
//! delimiter part is lexed twice, with and without quote removal: if the
//! number of quote characters differs, part of the delimiter was quoted and
//! the body must not be expanded. This module reproduces that with a small
//! lexer of its own (it only ever sees an empty environment).

use crate::ast::Heredoc;

/// A heredoc delimiter word that could not be lexed (e.g. an unterminated quote).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid heredoc delimiter {word:?}: {message}")]
pub struct HeredocError {
    /// The word as written (`<<'EOF`).
    pub word: String,
    /// What went wrong.
    pub message: String,
}

/// Nesting limit for `${a:-${b:-...}}`; deeper input is treated as a lexing error.
const MAX_DEPTH: usize = 64;

#[derive(Default)]
struct Words {
    buf: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(std::mem::take(&mut self.buf));
        }
        self.words
    }
}

/// BuildKit's `shell.Lex` in word mode, with escape `\`, an empty
/// environment and `SkipUnsetEnv` (so `$X` stays `$X`).
struct Lexer<'a> {
    s: &'a str,
    i: usize,
    raw_quotes: bool,
    raw_escapes: bool,
    depth: usize,
}

type LexResult<T> = Result<T, String>;

impl<'a> Lexer<'a> {
    fn new(s: &'a str, raw_quotes: bool, raw_escapes: bool) -> Self {
        Lexer {
            s,
            i: 0,
            raw_quotes,
            raw_escapes,
            depth: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.s[self.i..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += c.len_utf8();
        Some(c)
    }

    fn words(mut self) -> LexResult<Vec<String>> {
        let raw = self.raw_escapes;
        self.stop_on(None, raw).map(|(_, w)| w)
    }

    fn stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> LexResult<(String, Vec<String>)> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("substitutions nested too deeply".into());
        }
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.stop_on_inner(stop);
        self.raw_escapes = saved;
        self.depth -= 1;
        r
    }

    fn stop_on_inner(&mut self, stop: Option<char>) -> LexResult<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let tmp = self.dollar()?;
                    result.push_str(&tmp);
                    words.add_string(&tmp);
                }
                '\'' | '"' | '<' => {
                    let tmp = match ch {
                        '\'' => self.single_quote()?,
                        '"' => self.double_quote()?,
                        _ => self.possible_heredoc(),
                    };
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                _ => {
                    self.next();
                    let mut ch = ch;
                    if ch == '\\' {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        match self.next() {
                            None => break,
                            Some(c) => ch = c,
                        }
                        words.add_raw_char(ch);
                    } else {
                        words.add_char(ch);
                    }
                    result.push(ch);
                }
            }
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok((result, words.finish()))
    }

    /// `<<`, an optional `-` and any whitespace after it stay one word, so
    /// `<< EOF` and `<<- EOF` are found as heredocs.
    fn possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.next();
        let mut out = String::from("<<");
        if self.peek() == Some('-') {
            self.next();
            out.push('-');
        }
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            self.next();
            out.push(c);
        }
        out
    }

    fn single_quote(&mut self) -> LexResult<String> {
        let mut out = String::new();
        let q = self.next();
        if self.raw_quotes {
            out.extend(q);
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => {
                    if self.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> LexResult<String> {
        let mut out = String::new();
        let q = self.next();
        if self.raw_quotes {
            out.extend(q);
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.next();
                    if self.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let v = self.dollar()?;
                    out.push_str(&v);
                }
                Some(mut ch) => {
                    self.next();
                    if ch == '\\' {
                        if self.raw_escapes {
                            out.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(c @ ('"' | '$' | '\\')) => {
                                self.next();
                                ch = c;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(ch);
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(d) = self.peek().filter(|&c| is_digit(c)) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                name.push(ch);
                return name;
            }
            if !(ch.is_alphabetic() || is_digit(ch) || ch == '_') {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    /// `$NAME` / `${...}` with every variable unset: the text is kept.
    fn dollar(&mut self) -> LexResult<String> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            return Ok(format!("${name}"));
        }
        self.next();
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            _ => {}
        }
        let name = self.name();
        let ch = self.next();
        let mut chs: String = ch.map(String::from).unwrap_or_else(|| "\u{FFFD}".into());
        match ch {
            Some('}') => Ok(format!("${{{name}}}")),
            Some(':' | '+' | '-' | '?' | '#' | '%') => {
                let mut modifier = ch;
                let null_is_unset = ch == Some(':');
                if null_is_unset {
                    modifier = self.next();
                    chs.push(modifier.unwrap_or('\u{FFFD}'));
                }
                let raw = matches!(modifier, Some('#' | '%'));
                if null_is_unset && raw {
                    return Err(format!("unsupported modifier ({chs}) in substitution"));
                }
                let word = self.sub_word('}', raw, "syntax error: missing '}'")?;
                Ok(format!("${{{name}{chs}{word}}}"))
            }
            Some('/') => {
                if self.peek() == Some('/') {
                    self.next();
                }
                let pattern = self.sub_word('/', true, "syntax error: missing '/' in ${}")?;
                let replacement = self.sub_word('}', true, "syntax error: missing '}'")?;
                Ok(format!("${{{name}/{pattern}/{replacement}}}"))
            }
            _ => Err(format!("unsupported modifier ({chs}) in substitution")),
        }
    }

    fn sub_word(&mut self, stop: char, raw: bool, at_eof: &str) -> LexResult<String> {
        match self.stop_on(Some(stop), raw) {
            Ok((w, _)) => Ok(w),
            Err(_) if self.peek().is_none() => Err(at_eof.into()),
            Err(e) => Err(e),
        }
    }
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

/// Lex `s` into words the way BuildKit's `ProcessWords` does with an empty
/// environment and `SkipUnsetEnv`.
fn lex_words(s: &str, raw_quotes: bool, raw_escapes: bool) -> LexResult<Vec<String>> {
    Lexer::new(s, raw_quotes, raw_escapes).words()
}

fn count_quotes(s: &str) -> usize {
    s.chars().filter(|&c| c == '\'' || c == '"').count()
}

/// Parse one word as a heredoc operator with its delimiter, like BuildKit's
/// `ParseHeredoc`. `Ok(None)` means the word is not a heredoc (`EOF`,
/// `<<`, `<<<EOF`, `<<EOF sh`); an error means the delimiter cannot be lexed
/// (`<<'EOF`). The returned heredoc has empty `content`.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, HeredocError> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(after) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, after) = match after.strip_prefix('-') {
        Some(a) => (true, a),
        None => (false, after),
    };
    let rest = after.trim_start_matches(['\t', '\n', '\u{0c}', '\r', ' ']);
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let err = |message: String| HeredocError {
        word: word.to_string(),
        message,
    };
    let words = lex_words(rest, false, false).map_err(err)?;
    if words.len() != 1 {
        return Ok(None);
    }
    let raw = lex_words(rest, true, false).map_err(err)?;
    if raw.len() != 1 {
        return Err(err(format!(
            "lexing produced inconsistent results for {rest:?}"
        )));
    }
    let name = words.into_iter().next().unwrap_or_default();
    let expand = count_quotes(&name) == count_quotes(&raw[0]);
    let file_descriptor = word[..digits].parse::<u32>().unwrap_or(0);
    Ok(Some(Heredoc {
        name,
        file_descriptor,
        expand,
        chomp,
        content: String::new(),
    }))
}

/// The heredocs named in a whole instruction line (`RUN <<A cat - <<B`), in
/// order, like BuildKit's `heredocsFromLine`. Words that cannot be parsed
/// as a heredoc are skipped; see [`try_heredocs_from_line`] for the variant
/// that reports them.
pub fn heredocs_from_line(line: &str) -> Vec<Heredoc> {
    match lex_words(line, true, true) {
        Ok(words) => words
            .iter()
            .filter_map(|w| parse_heredoc(w).ok().flatten())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Like [`heredocs_from_line`], but a word that looks like a heredoc and has
/// an invalid delimiter is an error (this is what the parser uses).
pub fn try_heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, HeredocError> {
    let mut out = Vec::new();
    for w in &line_words(line) {
        if let Some(h) = parse_heredoc(w)? {
            out.push(h);
        }
    }
    Ok(out)
}

/// The words of an instruction line as the heredoc scan sees them (quotes
/// and escapes kept). A line the lexer rejects has no words, hence no
/// heredocs, as in BuildKit.
pub(crate) fn line_words(line: &str) -> Vec<String> {
    lex_words(line, true, true).unwrap_or_default()
}

/// Remove the leading tabs of every line (what `<<-` means), like BuildKit's
/// `ChompHeredocContent`.
pub fn chomp_heredoc_content(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.split_inclusive('\n') {
        out.push_str(line.trim_start_matches('\t'));
    }
    out
}
