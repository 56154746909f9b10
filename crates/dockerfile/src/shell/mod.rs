//! Shell-word expansion with BuildKit `shell.Lex` semantics.
//!
//! This is the substitution Docker applies to `FROM`, `ARG`, `ENV`, `COPY`,
//! `WORKDIR`, ... arguments at build time; it does not run a shell. It
//! removes quotes (`'…'`, `"…"`), handles the escape character inside and
//! outside quotes, and expands `$V`, `${V}` and the modifiers
//! `${V:-w} ${V-w} ${V:+w} ${V+w} ${V:?msg} ${V?msg}`, `${V#p} ${V##p}
//! ${V%p} ${V%%p}` (glob patterns: `*`, `?`, `\` escapes) and
//! `${V/p/r} ${V//p/r}`. Positional and special parameters (`$1`, `$@`,
//! `$#`, ...) expand to the empty string; `${V:=w}`/`${V=w}` are errors.
//!
//! Known, deliberate differences from BuildKit: an unterminated `${V` says
//! "missing '}'" (BuildKit: "unsupported modifier (\u{FFFD})"); nesting
//! deeper than 128 levels is an error instead of growing the stack; and
//! [`Lexer::process_words`] keeps the text before a nested `${V:-…}` in the
//! same word (BuildKit since its shared-buffer optimisation loses it).
//! Variable names follow Go's `unicode.IsLetter`/`IsDigit` approximately for
//! non-ASCII characters (Rust's alphabetic/numeric properties).

use crate::ignore::regex::{Inst, Look, Prog};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

/// A source of variable values for expansion.
pub trait VarLookup {
    /// The value of `name`, or `None` when it is unset (an empty value is set).
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl<S: BuildHasher> VarLookup for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl VarLookup for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// The last occurrence of a name wins, as with repeated `ENV`.
impl VarLookup for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The last occurrence of a name wins, as with repeated `ENV`.
impl VarLookup for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

impl<T: VarLookup + ?Sized> VarLookup for &T {
    fn lookup(&self, name: &str) -> Option<&str> {
        (**self).lookup(name)
    }
}

/// Why a word could not be expanded. Every variant carries the whole input
/// word; the messages follow BuildKit's (`failed to process "<word>": …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `${` without its closing `}`.
    #[error("failed to process {word:?}: syntax error: missing '}}'")]
    MissingBrace {
        /// The input word.
        word: String,
    },
    /// `${}`, `${{…}`, `${:…}`.
    #[error("failed to process {word:?}: syntax error: bad substitution")]
    BadSubstitution {
        /// The input word.
        word: String,
    },
    /// `${V/pattern` without the `/` before the replacement.
    #[error("failed to process {word:?}: syntax error: missing '/' in ${{}}")]
    MissingSlash {
        /// The input word.
        word: String,
    },
    /// A modifier that is not supported (`=`, `:=`, `:#`, `.`, ...).
    #[error("failed to process {word:?}: unsupported modifier ({modifier}) in substitution")]
    UnsupportedModifier {
        /// The input word.
        word: String,
        /// The modifier text, e.g. `:=`.
        modifier: String,
    },
    /// `${V?msg}` with `V` unset, or `${V:?msg}` with `V` unset or empty.
    #[error("failed to process {word:?}: {name}: {message}")]
    Required {
        /// The input word.
        word: String,
        /// The variable.
        name: String,
        /// The user's message, or "is not allowed to be unset"/"… empty".
        message: String,
    },
    /// A `'` without its closing quote.
    #[error("failed to process {word:?}: unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote {
        /// The input word.
        word: String,
    },
    /// A `"` without its closing quote.
    #[error("failed to process {word:?}: unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote {
        /// The input word.
        word: String,
    },
    /// The end of the word inside a `${…}` construct.
    #[error(
        "failed to process {word:?}: unexpected end of statement while looking for matching {stop}"
    )]
    UnexpectedEnd {
        /// The input word.
        word: String,
        /// The character that was expected.
        stop: char,
    },
    /// A bad pattern in `${V#p}`, `${V%p}` or `${V/p/r}` (e.g. `\x`).
    #[error("failed to process {word:?}: invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern {
        /// The input word.
        word: String,
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `${` constructs nested deeper than xbuild allows.
    #[error("failed to process {word:?}: substitutions nested too deeply")]
    TooDeep {
        /// The input word.
        word: String,
    },
}

impl ExpandError {
    /// The word whose expansion failed.
    pub fn word(&self) -> &str {
        match self {
            ExpandError::MissingBrace { word }
            | ExpandError::BadSubstitution { word }
            | ExpandError::MissingSlash { word }
            | ExpandError::UnsupportedModifier { word, .. }
            | ExpandError::Required { word, .. }
            | ExpandError::UnterminatedSingleQuote { word }
            | ExpandError::UnterminatedDoubleQuote { word }
            | ExpandError::UnexpectedEnd { word, .. }
            | ExpandError::InvalidPattern { word, .. }
            | ExpandError::TooDeep { word } => word,
        }
    }
}

/// Error kinds before the word is attached.
enum Kind {
    MissingBrace,
    BadSubstitution,
    MissingSlash,
    UnsupportedModifier(String),
    Required(String, String),
    SingleQuote,
    DoubleQuote,
    UnexpectedEnd(char),
    InvalidPattern(String, String),
    TooDeep,
}

impl Kind {
    fn with_word(self, word: &str) -> ExpandError {
        let word = word.to_string();
        match self {
            Kind::MissingBrace => ExpandError::MissingBrace { word },
            Kind::BadSubstitution => ExpandError::BadSubstitution { word },
            Kind::MissingSlash => ExpandError::MissingSlash { word },
            Kind::UnsupportedModifier(modifier) => {
                ExpandError::UnsupportedModifier { word, modifier }
            }
            Kind::Required(name, message) => ExpandError::Required {
                word,
                name,
                message,
            },
            Kind::SingleQuote => ExpandError::UnterminatedSingleQuote { word },
            Kind::DoubleQuote => ExpandError::UnterminatedDoubleQuote { word },
            Kind::UnexpectedEnd(stop) => ExpandError::UnexpectedEnd { word, stop },
            Kind::InvalidPattern(pattern, reason) => ExpandError::InvalidPattern {
                word,
                pattern,
                reason,
            },
            Kind::TooDeep => ExpandError::TooDeep { word },
        }
    }
}

/// The result of [`Lexer::process_word_with_matches`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word.
    pub value: String,
    /// Variables that were looked up and found (set, possibly empty).
    pub matched: BTreeSet<String>,
    /// Variables that were looked up and not found.
    pub unmatched: BTreeSet<String>,
}

/// Word expander (BuildKit `shell.Lex`). Cheap to copy; every call is
/// independent, so one lexer can be shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset_env: bool,
    skip_process_quotes: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

const MAX_DEPTH: usize = 128;

impl Lexer {
    /// A lexer with the given escape character (`\` or `` ` ``) and all
    /// modes off, like BuildKit's `NewLex`.
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    /// Keep quote characters in the output (BuildKit `RawQuotes`).
    pub fn raw_quotes(mut self, yes: bool) -> Self {
        self.raw_quotes = yes;
        self
    }

    /// Keep escape characters in the output (BuildKit `RawEscapes`).
    pub fn raw_escapes(mut self, yes: bool) -> Self {
        self.raw_escapes = yes;
        self
    }

    /// Leave references to unset variables as they are (`$X`, `${X}`,
    /// `${X:-w}`) instead of expanding them (BuildKit `SkipUnsetEnv`).
    pub fn skip_unset_env(mut self, yes: bool) -> Self {
        self.skip_unset_env = yes;
        self
    }

    /// Treat quotes as ordinary characters (BuildKit `SkipProcessQuotes`).
    pub fn skip_process_quotes(mut self, yes: bool) -> Self {
        self.skip_process_quotes = yes;
        self
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expands one word (BuildKit `ProcessWord`); whitespace is kept.
    pub fn process_word(&self, word: &str, env: &dyn VarLookup) -> Result<String, ExpandError> {
        self.run(word, env).map(|(value, _, _)| value)
    }

    /// Expands one word and reports which variables it looked up (BuildKit
    /// `ProcessWordWithMatches`).
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn VarLookup,
    ) -> Result<Expansion, ExpandError> {
        self.run(word, env).map(|(value, _, sw)| Expansion {
            value,
            matched: sw.matched,
            unmatched: sw.unmatched,
        })
    }

    /// Expands and then splits on unquoted whitespace (BuildKit
    /// `ProcessWords`). Whitespace that comes from a variable outside quotes
    /// splits too; quoted text and escaped whitespace do not.
    pub fn process_words(
        &self,
        word: &str,
        env: &dyn VarLookup,
    ) -> Result<Vec<String>, ExpandError> {
        self.run(word, env).map(|(_, words, _)| words)
    }

    fn run<'a>(
        &'a self,
        word: &'a str,
        env: &'a dyn VarLookup,
    ) -> Result<(String, Vec<String>, ShellWord<'a>), ExpandError> {
        // Go's text/scanner skips a leading byte-order mark.
        let pos = if word.starts_with('\u{feff}') { 3 } else { 0 };
        let mut sw = ShellWord {
            lex: self,
            src: word,
            pos,
            env,
            raw_escapes: self.raw_escapes,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
            depth: 0,
        };
        match sw.process_stop_on(None, self.raw_escapes) {
            Ok((value, words)) => Ok((value, words, sw)),
            Err(kind) => Err(kind.with_word(word)),
        }
    }
}

/// Word splitting state (BuildKit `wordsStruct`).
#[derive(Default)]
struct Words {
    words: Vec<String>,
    buf: String,
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
        s.chars().for_each(|c| self.add_char(c));
    }
    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(self.buf);
        }
        self.words
    }
}

struct ShellWord<'a> {
    lex: &'a Lexer,
    src: &'a str,
    pos: usize,
    env: &'a dyn VarLookup,
    raw_escapes: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
    depth: usize,
}

impl ShellWord<'_> {
    fn peek(&self) -> Option<char> {
        self.src.get(self.pos..).and_then(|s| s.chars().next())
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn get_env(&mut self, name: &str) -> (String, bool) {
        match self.env.lookup(name) {
            Some(v) => {
                self.matched.insert(name.to_string());
                (v.to_string(), true)
            }
            None => {
                self.unmatched.insert(name.to_string());
                (String::new(), false)
            }
        }
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), Kind> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.stop_on(stop);
        self.raw_escapes = saved;
        r
    }

    fn stop_on(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), Kind> {
        let mut result = String::new();
        let mut words = Words::default();
        let quotes = !self.lex.skip_process_quotes;
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                return Ok((result, words.finish()));
            }
            if ch == '$' {
                let tmp = self.process_dollar()?;
                result.push_str(&tmp);
                words.add_string(&tmp);
                continue;
            }
            if quotes && (ch == '\'' || ch == '"') {
                let tmp = if ch == '\'' {
                    self.single_quote()?
                } else {
                    self.double_quote()?
                };
                result.push_str(&tmp);
                words.add_raw_string(&tmp);
                continue;
            }
            self.next();
            let mut ch = ch;
            if ch == self.lex.escape {
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
        if let Some(stop) = stop {
            return Err(Kind::UnexpectedEnd(stop));
        }
        Ok((result, words.finish()))
    }

    fn single_quote(&mut self) -> Result<String, Kind> {
        let mut r = String::new();
        self.next();
        if self.lex.raw_quotes {
            r.push('\'');
        }
        loop {
            match self.next() {
                None => return Err(Kind::SingleQuote),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        r.push('\'');
                    }
                    return Ok(r);
                }
                Some(c) => r.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, Kind> {
        let mut r = String::new();
        self.next();
        if self.lex.raw_quotes {
            r.push('"');
        }
        loop {
            match self.peek() {
                None => return Err(Kind::DoubleQuote),
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        r.push('"');
                    }
                    return Ok(r);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    r.push_str(&v);
                }
                Some(mut ch) => {
                    self.next();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            r.push(ch);
                        }
                        match self.peek() {
                            // A trailing escape is dropped; the quote is
                            // then unterminated.
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                                self.next();
                                ch = c;
                            }
                            Some(_) => {}
                        }
                    }
                    r.push(ch);
                }
            }
        }
    }

    fn process_dollar(&mut self) -> Result<String, Kind> {
        if self.depth >= MAX_DEPTH {
            return Err(Kind::TooDeep);
        }
        self.depth += 1;
        let r = self.dollar();
        self.depth -= 1;
        r
    }

    fn dollar(&mut self) -> Result<String, Kind> {
        self.next(); // '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            let (value, set) = self.get_env(&name);
            if !set && self.lex.skip_unset_env {
                return Ok(format!("${name}"));
            }
            return Ok(value);
        }
        self.next(); // '{'
        match self.peek() {
            None => return Err(Kind::MissingBrace),
            Some('{' | '}' | ':') => return Err(Kind::BadSubstitution),
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(ch) = self.next() else {
            return Err(Kind::MissingBrace);
        };
        match ch {
            '}' => {
                let (value, set) = self.get_env(&name);
                if !set && self.lex.skip_unset_env {
                    return Ok(format!("${{{name}}}"));
                }
                Ok(value)
            }
            ':' | '+' | '-' | '?' | '#' | '%' => self.modifier(name, ch),
            '/' => self.replace(name),
            other => Err(Kind::UnsupportedModifier(other.to_string())),
        }
    }

    fn modifier(&mut self, name: String, first: char) -> Result<String, Kind> {
        let mut chs = first.to_string();
        let mut op = Some(first);
        let null_is_unset = first == ':';
        if null_is_unset {
            op = self.next();
            chs.push(op.unwrap_or('\u{fffd}'));
        }
        let raw = matches!(op, Some('#' | '%'));
        if null_is_unset && raw {
            return Err(Kind::UnsupportedModifier(chs));
        }
        let word = match self.process_stop_on(Some('}'), raw) {
            Ok((w, _)) => w,
            Err(e) => {
                return Err(if self.peek().is_none() {
                    Kind::MissingBrace
                } else {
                    e
                })
            }
        };
        let (value, set) = self.get_env(&name);
        if self.lex.skip_unset_env && !set {
            return Ok(format!("${{{name}{chs}{word}}}"));
        }
        let unset_or_null = !set || (null_is_unset && value.is_empty());
        match op {
            Some('-') => Ok(if unset_or_null { word } else { value }),
            Some('+') => Ok(if unset_or_null { String::new() } else { word }),
            Some('?') => {
                let default = if !set {
                    "is not allowed to be unset"
                } else if null_is_unset && value.is_empty() {
                    "is not allowed to be empty"
                } else {
                    return Ok(value);
                };
                let message = if word.is_empty() {
                    default.to_string()
                } else {
                    word
                };
                Err(Kind::Required(name, message))
            }
            Some(c @ ('#' | '%')) => {
                let (pattern, greedy) = match word.strip_prefix(c) {
                    Some(rest) => (rest, true),
                    None => (word.as_str(), false),
                };
                if c == '%' {
                    trim_suffix(pattern, &value, greedy)
                } else {
                    trim_prefix(pattern, &value, greedy)
                }
            }
            _ => Err(Kind::UnsupportedModifier(chs)),
        }
    }

    fn replace(&mut self, name: String) -> Result<String, Kind> {
        let replace_all = self.peek() == Some('/');
        if replace_all {
            self.next();
        }
        let pattern = match self.process_stop_on(Some('/'), true) {
            Ok((p, _)) => p,
            Err(e) => {
                return Err(if self.peek().is_none() {
                    Kind::MissingSlash
                } else {
                    e
                })
            }
        };
        let replacement = match self.process_stop_on(Some('}'), true) {
            Ok((r, _)) => r,
            Err(e) => {
                return Err(if self.peek().is_none() {
                    Kind::MissingBrace
                } else {
                    e
                })
            }
        };
        let (value, set) = self.get_env(&name);
        if self.lex.skip_unset_env && !set {
            return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
        }
        let prog = shell_pattern(&pattern, true, false)
            .map_err(|r| Kind::InvalidPattern(pattern.clone(), r))?;
        if replace_all {
            return Ok(replace_all_go(&value, &prog, &replacement));
        }
        Ok(match prog.find_at(&value, 0) {
            Some((s, e)) => format!("{}{}{}", &value[..s], replacement, &value[e..]),
            None => value,
        })
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(c) = self.peek().filter(|&c| is_digit(c)) {
                    self.next();
                    name.push(c);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !is_letter(ch) && !is_digit(ch) && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

fn is_letter(c: char) -> bool {
    c.is_ascii_alphabetic() || (!c.is_ascii() && c.is_alphabetic())
}

/// BuildKit's `convertShellPatternToRegex`, compiled straight to a program:
/// `*` is any run of characters but `\n` (greedy or lazy), `?` one such
/// character, `\*` `\?` `\\` literals, `\}` and `\/` drop the backslash, and
/// any other escape is an error.
fn shell_pattern(pattern: &str, greedy: bool, anchored: bool) -> Result<Prog, String> {
    let mut insts = Vec::new();
    if anchored {
        insts.push(Inst::Assert(Look::Start));
    }
    let body = pattern.strip_prefix('\u{feff}').unwrap_or(pattern);
    let mut chars = body.chars().peekable();
    while let Some(tok) = chars.next() {
        match tok {
            '*' => {
                let l = insts.len();
                insts.push(if greedy {
                    Inst::Split(l + 1, l + 3)
                } else {
                    Inst::Split(l + 3, l + 1)
                });
                insts.push(Inst::AnyNotNl);
                insts.push(Inst::Jmp(l));
            }
            '?' => insts.push(Inst::AnyNotNl),
            '\\' => {
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(c @ ('*' | '?' | '\\')) => insts.push(Inst::Char(c)),
                    Some(c) => return Err(format!("invalid escape '\\{c}'")),
                    None => return Err("invalid escape '\\' at end of pattern".to_string()),
                }
            }
            c => insts.push(Inst::Char(c)),
        }
    }
    Ok(Prog::from_insts(insts))
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, Kind> {
    let prog = shell_pattern(pattern, greedy, true)
        .map_err(|r| Kind::InvalidPattern(pattern.to_string(), r))?;
    Ok(match prog.find_at(value, 0) {
        Some((_, end)) => value.get(end..).unwrap_or_default().to_string(),
        None => value.to_string(),
    })
}

/// Shortest/longest suffix removal, done as BuildKit does: reverse the
/// pattern (keeping `\x` pairs) and the value, and remove a prefix.
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, Kind> {
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

fn reverse_pattern(pattern: &str) -> String {
    let p: Vec<char> = pattern.chars().collect();
    let n = p.len();
    let mut out = vec!['\0'; n];
    let mut i = 0;
    while i < n {
        let at = n - 1 - i;
        if p[i] == '\\' && i + 1 < n {
            out[at - 1] = '\\';
            out[at] = p[i + 1];
            i += 2;
        } else {
            out[at] = p[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

/// Go's `Regexp.ReplaceAllString`, including its `$` template expansion of
/// the replacement (the pattern has no groups, so only `$0` is non-empty).
fn replace_all_go(src: &str, prog: &Prog, repl: &str) -> String {
    let mut buf = String::new();
    let mut last_end = 0;
    let mut search = 0;
    while search <= src.len() {
        let Some((a0, a1)) = prog.find_at(src, search) else {
            break;
        };
        buf.push_str(src.get(last_end..a0).unwrap_or_default());
        if a1 > last_end || a0 == 0 {
            expand_template(&mut buf, repl, src.get(a0..a1).unwrap_or_default());
        }
        last_end = a1;
        let width = src
            .get(search..)
            .and_then(|s| s.chars().next())
            .map_or(0, char::len_utf8);
        if search + width > a1 {
            search += width;
        } else if search + 1 > a1 {
            search += 1;
        } else {
            search = a1;
        }
    }
    buf.push_str(src.get(last_end..).unwrap_or_default());
    buf
}

fn expand_template(dst: &mut String, template: &str, whole: &str) {
    let mut t = template;
    while let Some(i) = t.find('$') {
        dst.push_str(&t[..i]);
        t = &t[i + 1..];
        if let Some(rest) = t.strip_prefix('$') {
            dst.push('$');
            t = rest;
            continue;
        }
        let (brace, body) = match t.strip_prefix('{') {
            Some(b) => (true, b),
            None => (false, t),
        };
        let len: usize = body
            .chars()
            .take_while(|&c| is_letter(c) || is_digit(c) || c == '_')
            .map(char::len_utf8)
            .sum();
        if len == 0 || (brace && !body[len..].starts_with('}')) {
            dst.push('$'); // malformed: a literal '$'
            continue;
        }
        let name = &body[..len];
        t = &body[len + usize::from(brace)..];
        if name == "0" {
            dst.push_str(whole);
        }
    }
    dst.push_str(t);
}

#[cfg(test)]
mod tests;
