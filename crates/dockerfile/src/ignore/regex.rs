//! A small regular-expression engine with Go `regexp` (RE2) semantics for the
//! subset that moby/patternmatcher and BuildKit's shell lexer generate.
//!
//! Both upstream components translate glob patterns into Go regular
//! expressions; the quirks of that translation (a `*` inside a `[...]` class
//! becomes `[^/]*` and closes the class early, `[l-O]` is a compile error, `.`
//! does not match `\n`, ...) are part of the observable behaviour. Rather
//! than guessing, xbuild builds the same regular-expression text and runs it
//! here.
//!
//! Matching is a Pike VM: one pass over the text, `O(text × program)`, with
//! leftmost-first (Perl/Go) priorities, so there is no exponential
//! backtracking whatever the pattern.
//!
//! Supported syntax: literals, `.`, `^`, `$` (text anchors: Go's default
//! one-line mode), `( )` groups, `|`, `*` `+` `?` and their lazy `?` forms,
//! `[...]` classes with ranges, negation, `[:name:]` and Perl classes,
//! escapes (`\.` punctuation, `\t \n \r \f \v \a`, octal, `\x..`,
//! `\d \s \w` and negations, `\A \z \b \B`, `\Q...\E`). Not supported (an
//! error): `(?flags)`, `{n,m}` counted repetition, `\p{...}` Unicode classes.

use std::fmt;

/// Why a regular expression could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReError {
    /// Go `ErrMissingBracket`.
    MissingBracket,
    /// Go `ErrInvalidCharRange` (also unknown `[:name:]`).
    InvalidCharRange,
    /// Go `ErrInvalidEscape` / `ErrTrailingBackslash`.
    InvalidEscape,
    /// Go `ErrMissingParen` / `ErrUnexpectedParen`.
    Paren,
    /// Go `ErrMissingRepeatArgument` / `ErrInvalidRepeatOp`.
    Repeat,
    /// Valid Go syntax that this engine does not implement.
    Unsupported,
}

impl fmt::Display for ReError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReError::MissingBracket => "missing closing ]",
            ReError::InvalidCharRange => "invalid character class range",
            ReError::InvalidEscape => "invalid escape sequence",
            ReError::Paren => "unbalanced parenthesis",
            ReError::Repeat => "invalid or missing argument to repetition operator",
            ReError::Unsupported => "unsupported regular expression syntax",
        })
    }
}

/// A zero-width assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// Beginning of the text (`^`, `\A`).
    Start,
    /// End of the text (`$`, `\z`).
    End,
    /// ASCII word boundary (`\b`).
    WordBoundary,
    /// Not an ASCII word boundary (`\B`).
    NotWordBoundary,
}

/// A character class: inclusive ranges of code points, possibly negated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Class {
    ranges: Vec<(u32, u32)>,
    negated: bool,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        let c = c as u32;
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }

    fn from_ranges(ranges: &[(u32, u32)], negated: bool) -> Self {
        Class {
            ranges: ranges.to_vec(),
            negated,
        }
    }
}

/// One instruction of a compiled program.
#[derive(Debug, Clone)]
pub(crate) enum Inst {
    /// Consume exactly this character.
    Char(char),
    /// Consume any character except `\n`.
    AnyNotNl,
    /// Consume a character of the class.
    Class(Class),
    /// Try the first target, then (lower priority) the second.
    Split(usize, usize),
    /// Continue at the target.
    Jmp(usize),
    /// Zero-width assertion.
    Assert(Look),
    /// Accept.
    Match,
}

/// A compiled program.
#[derive(Debug, Clone)]
pub(crate) struct Prog {
    insts: Vec<Inst>,
}

const MAX_DEPTH: usize = 200;

impl Prog {
    /// Builds a program from raw instructions; a final `Match` is appended.
    pub(crate) fn from_insts(mut insts: Vec<Inst>) -> Self {
        insts.push(Inst::Match);
        Prog { insts }
    }

    /// Parses Go regular-expression syntax (the supported subset).
    pub(crate) fn parse(src: &str) -> Result<Self, ReError> {
        let mut p = Parser {
            chars: src.chars().collect(),
            pos: 0,
            depth: 0,
        };
        let node = p.parse_alt()?;
        if p.pos != p.chars.len() {
            // Only an unmatched ')' stops the top level early.
            return Err(ReError::Paren);
        }
        let mut insts = Vec::new();
        compile(&node, &mut insts);
        Ok(Prog::from_insts(insts))
    }

    /// Whether the program matches anywhere in `text` (for anchored
    /// programs: matches the whole text).
    pub(crate) fn is_match(&self, text: &str) -> bool {
        self.run(text, 0, true).is_some()
    }

    /// The leftmost-first match starting the search at byte `start`
    /// (a char boundary of `text`), as byte offsets.
    pub(crate) fn find_at(&self, text: &str, start: usize) -> Option<(usize, usize)> {
        self.run(text, start, false)
    }

    fn run(&self, text: &str, start: usize, early: bool) -> Option<(usize, usize)> {
        let n = self.insts.len();
        let mut clist = Threads::new(n);
        let mut nlist = Threads::new(n);
        let mut stack = Vec::new();
        let mut matched = None;
        let mut pos = start;
        let rest = text.get(start..)?;
        let mut prev = text.get(..start).and_then(|s| s.chars().next_back());
        let mut iter = rest.chars();
        let mut cur = iter.next();
        let anchored = matches!(self.insts.first(), Some(Inst::Assert(Look::Start)));
        loop {
            if matched.is_none() && !(anchored && pos > 0) {
                let ctx = Ctx {
                    pos,
                    len: text.len(),
                    prev,
                    next: cur,
                };
                self.add(&mut clist, &mut stack, 0, pos, &ctx);
            }
            if clist.dense.is_empty() && (matched.is_some() || cur.is_none() || anchored) {
                break;
            }
            let after = iter.clone().next();
            let npos = pos + cur.map_or(0, char::len_utf8);
            let nctx = Ctx {
                pos: npos,
                len: text.len(),
                prev: cur,
                next: after,
            };
            for i in 0..clist.dense.len() {
                let (pc, cap) = clist.dense[i];
                let ok = match (&self.insts[pc], cur) {
                    (Inst::Match, _) => {
                        matched = Some((cap, pos));
                        if early {
                            return matched;
                        }
                        break;
                    }
                    (Inst::Char(c), Some(ch)) => *c == ch,
                    (Inst::AnyNotNl, Some(ch)) => ch != '\n',
                    (Inst::Class(cls), Some(ch)) => cls.matches(ch),
                    _ => false,
                };
                if ok {
                    self.add(&mut nlist, &mut stack, pc + 1, cap, &nctx);
                }
            }
            if cur.is_none() {
                break;
            }
            std::mem::swap(&mut clist, &mut nlist);
            nlist.clear();
            pos = npos;
            prev = cur;
            cur = iter.next();
        }
        matched
    }

    fn add(&self, list: &mut Threads, stack: &mut Vec<usize>, pc0: usize, cap: usize, ctx: &Ctx) {
        stack.clear();
        stack.push(pc0);
        while let Some(pc) = stack.pop() {
            if pc >= self.insts.len() || list.contains(pc) {
                continue;
            }
            list.insert(pc, cap);
            match self.insts[pc] {
                Inst::Jmp(x) => stack.push(x),
                Inst::Split(x, y) => {
                    stack.push(y);
                    stack.push(x);
                }
                Inst::Assert(look) if ctx.holds(look) => stack.push(pc + 1),
                _ => {}
            }
        }
    }
}

struct Ctx {
    pos: usize,
    len: usize,
    prev: Option<char>,
    next: Option<char>,
}

impl Ctx {
    fn holds(&self, look: Look) -> bool {
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        match look {
            Look::Start => self.pos == 0,
            Look::End => self.pos == self.len,
            Look::WordBoundary => word(self.prev) != word(self.next),
            Look::NotWordBoundary => word(self.prev) == word(self.next),
        }
    }
}

/// A sparse set of threads, in priority order.
struct Threads {
    dense: Vec<(usize, usize)>,
    sparse: Vec<usize>,
}

impl Threads {
    fn new(n: usize) -> Self {
        Threads {
            dense: Vec::with_capacity(n),
            sparse: vec![0; n],
        }
    }
    fn contains(&self, pc: usize) -> bool {
        let i = self.sparse[pc];
        i < self.dense.len() && self.dense[i].0 == pc
    }
    fn insert(&mut self, pc: usize, cap: usize) {
        self.sparse[pc] = self.dense.len();
        self.dense.push((pc, cap));
    }
    fn clear(&mut self) {
        self.dense.clear();
    }
}

// ---------------------------------------------------------------- parsing

#[derive(Debug, Clone)]
enum Node {
    Char(char),
    AnyNotNl,
    Class(Class),
    Look(Look),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat {
        node: Box<Node>,
        min_one: bool,
        max_one: bool,
        greedy: bool,
    },
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

enum Esc {
    Char(char),
    Class(Class),
}

const DIGIT: &[(u32, u32)] = &[(0x30, 0x39)];
const SPACE: &[(u32, u32)] = &[(0x09, 0x0a), (0x0c, 0x0d), (0x20, 0x20)];
const WORD: &[(u32, u32)] = &[(0x30, 0x39), (0x41, 0x5a), (0x5f, 0x5f), (0x61, 0x7a)];

fn posix_class(name: &str) -> Option<&'static [(u32, u32)]> {
    Some(match name {
        "alnum" => &[(0x30, 0x39), (0x41, 0x5a), (0x61, 0x7a)],
        "alpha" => &[(0x41, 0x5a), (0x61, 0x7a)],
        "ascii" => &[(0x00, 0x7f)],
        "blank" => &[(0x09, 0x09), (0x20, 0x20)],
        "cntrl" => &[(0x00, 0x1f), (0x7f, 0x7f)],
        "digit" => DIGIT,
        "graph" => &[(0x21, 0x7e)],
        "lower" => &[(0x61, 0x7a)],
        "print" => &[(0x20, 0x7e)],
        "punct" => &[(0x21, 0x2f), (0x3a, 0x40), (0x5b, 0x60), (0x7b, 0x7e)],
        "space" => &[(0x09, 0x0d), (0x20, 0x20)],
        "upper" => &[(0x41, 0x5a)],
        "word" => WORD,
        "xdigit" => &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
        _ => return None,
    })
}

fn perl_class(c: char) -> Option<Class> {
    let (ranges, negated) = match c {
        'd' => (DIGIT, false),
        'D' => (DIGIT, true),
        's' => (SPACE, false),
        'S' => (SPACE, true),
        'w' => (WORD, false),
        'W' => (WORD, true),
        _ => return None,
    };
    Some(Class::from_ranges(ranges, negated))
}

/// Adds `cls` (possibly negated) to a list of ranges.
fn add_class(out: &mut Vec<(u32, u32)>, cls: &Class) {
    if !cls.negated {
        out.extend_from_slice(&cls.ranges);
        return;
    }
    let mut sorted = cls.ranges.clone();
    sorted.sort_unstable();
    let mut next = 0u32;
    for (lo, hi) in sorted {
        if lo > next {
            out.push((next, lo - 1));
        }
        next = next.max(hi.saturating_add(1));
    }
    if next <= 0x10ffff {
        out.push((next, 0x10ffff));
    }
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn peek_at(&self, off: usize) -> Option<char> {
        self.chars.get(self.pos + off).copied()
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn parse_alt(&mut self) -> Result<Node, ReError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ReError::Unsupported);
        }
        let mut alts = vec![self.parse_concat()?];
        while self.eat('|') {
            alts.push(self.parse_concat()?);
        }
        self.depth -= 1;
        Ok(if alts.len() == 1 {
            alts.pop().unwrap_or(Node::Concat(Vec::new()))
        } else {
            Node::Alt(alts)
        })
    }

    fn parse_concat(&mut self) -> Result<Node, ReError> {
        let mut items: Vec<Node> = Vec::new();
        let mut last_repeat = false;
        while let Some(c) = self.peek() {
            match c {
                '|' | ')' => break,
                '*' | '+' | '?' => {
                    self.pos += 1;
                    let node = items.pop().ok_or(ReError::Repeat)?;
                    if last_repeat {
                        return Err(ReError::Repeat);
                    }
                    let greedy = !self.eat('?');
                    items.push(Node::Repeat {
                        node: Box::new(node),
                        min_one: c == '+',
                        max_one: c == '?',
                        greedy,
                    });
                    last_repeat = true;
                    continue;
                }
                _ => {}
            }
            last_repeat = false;
            self.pos += 1;
            let node = match c {
                '(' => {
                    if self.peek() == Some('?') {
                        return Err(ReError::Unsupported);
                    }
                    let inner = self.parse_alt()?;
                    if !self.eat(')') {
                        return Err(ReError::Paren);
                    }
                    // Wrapped so that `(a*)*` is not a nested repetition.
                    Node::Concat(vec![inner])
                }
                '[' => Node::Class(self.parse_class()?),
                '.' => Node::AnyNotNl,
                '^' => Node::Look(Look::Start),
                '$' => Node::Look(Look::End),
                '{' if self.is_counted_repeat() => return Err(ReError::Unsupported),
                '\\' => match self.peek() {
                    Some('A') => {
                        self.pos += 1;
                        Node::Look(Look::Start)
                    }
                    Some('z') => {
                        self.pos += 1;
                        Node::Look(Look::End)
                    }
                    Some('b') => {
                        self.pos += 1;
                        Node::Look(Look::WordBoundary)
                    }
                    Some('B') => {
                        self.pos += 1;
                        Node::Look(Look::NotWordBoundary)
                    }
                    Some('Q') => {
                        self.pos += 1;
                        let mut lit = Vec::new();
                        while let Some(ch) = self.peek() {
                            if ch == '\\' && self.peek_at(1) == Some('E') {
                                self.pos += 2;
                                break;
                            }
                            self.pos += 1;
                            lit.push(Node::Char(ch));
                        }
                        Node::Concat(lit)
                    }
                    _ => match self.parse_escape()? {
                        Esc::Char(ch) => Node::Char(ch),
                        Esc::Class(cls) => Node::Class(cls),
                    },
                },
                other => Node::Char(other),
            };
            items.push(node);
        }
        Ok(Node::Concat(items))
    }

    /// After a `{`: does `n}`, `n,}` or `n,m}` follow (Go counted repeat)?
    fn is_counted_repeat(&self) -> bool {
        let mut i = self.pos;
        let digits = |i: &mut usize| {
            let s = *i;
            while self.chars.get(*i).is_some_and(|c| c.is_ascii_digit()) {
                *i += 1;
            }
            *i > s
        };
        if !digits(&mut i) {
            return false;
        }
        if self.chars.get(i) == Some(&',') {
            i += 1;
            digits(&mut i);
        }
        self.chars.get(i) == Some(&'}')
    }

    /// Parses an escape after the backslash (not the assertions).
    fn parse_escape(&mut self) -> Result<Esc, ReError> {
        let c = self.peek().ok_or(ReError::InvalidEscape)?;
        self.pos += 1;
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            return Ok(Esc::Char(c));
        }
        let is_oct = |c: Option<char>| c.is_some_and(|c| ('0'..='7').contains(&c));
        let ch = match c {
            '1'..='7' | '0' => {
                if c != '0' && !is_oct(self.peek()) {
                    return Err(ReError::InvalidEscape);
                }
                let mut v = c as u32 - '0' as u32;
                for _ in 1..3 {
                    match self.peek() {
                        Some(d) if is_oct(Some(d)) => {
                            v = v * 8 + (d as u32 - '0' as u32);
                            self.pos += 1;
                        }
                        _ => break,
                    }
                }
                char::from_u32(v).ok_or(ReError::InvalidEscape)?
            }
            'x' => {
                let mut v: u32 = 0;
                if self.eat('{') {
                    let mut n = 0;
                    loop {
                        let d = self.peek().ok_or(ReError::InvalidEscape)?;
                        self.pos += 1;
                        if d == '}' {
                            break;
                        }
                        let h = d.to_digit(16).ok_or(ReError::InvalidEscape)?;
                        v = v.saturating_mul(16).saturating_add(h);
                        n += 1;
                        if v > 0x10ffff {
                            return Err(ReError::InvalidEscape);
                        }
                    }
                    if n == 0 {
                        return Err(ReError::InvalidEscape);
                    }
                } else {
                    for _ in 0..2 {
                        let d = self.peek().and_then(|d| d.to_digit(16));
                        let h = d.ok_or(ReError::InvalidEscape)?;
                        self.pos += 1;
                        v = v * 16 + h;
                    }
                }
                char::from_u32(v).ok_or(ReError::Unsupported)?
            }
            'a' => '\u{7}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{b}',
            'p' | 'P' => return Err(ReError::Unsupported),
            other => {
                return perl_class(other)
                    .map(Esc::Class)
                    .ok_or(ReError::InvalidEscape)
            }
        };
        Ok(Esc::Char(ch))
    }

    /// Parses a class after its `[`.
    fn parse_class(&mut self) -> Result<Class, ReError> {
        let negated = self.eat('^');
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            match self.peek() {
                None => return Err(ReError::MissingBracket),
                Some(']') if !first => {
                    self.pos += 1;
                    break;
                }
                _ => {}
            }
            first = false;
            // [:alpha:] and [:^alpha:]
            if self.peek() == Some('[') && self.peek_at(1) == Some(':') {
                let start = self.pos + 2;
                let end = (start..self.chars.len().saturating_sub(1))
                    .find(|&i| self.chars[i] == ':' && self.chars[i + 1] == ']');
                if let Some(end) = end {
                    let name: String = self.chars[start..end].iter().collect();
                    let (neg, name) = match name.strip_prefix('^') {
                        Some(n) => (true, n.to_string()),
                        None => (false, name),
                    };
                    let table = posix_class(&name).ok_or(ReError::InvalidCharRange)?;
                    add_class(&mut ranges, &Class::from_ranges(table, neg));
                    self.pos = end + 2;
                    continue;
                }
            }
            if self.peek() == Some('\\') {
                if let Some(cls) = self.peek_at(1).and_then(perl_class) {
                    add_class(&mut ranges, &cls);
                    self.pos += 2;
                    continue;
                }
            }
            let lo = self.class_char()?;
            let mut hi = lo;
            if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                self.pos += 1;
                hi = self.class_char()?;
                if hi < lo {
                    return Err(ReError::InvalidCharRange);
                }
            }
            ranges.push((lo as u32, hi as u32));
        }
        Ok(Class { ranges, negated })
    }

    fn class_char(&mut self) -> Result<char, ReError> {
        let c = self.peek().ok_or(ReError::MissingBracket)?;
        self.pos += 1;
        if c != '\\' {
            return Ok(c);
        }
        match self.peek() {
            Some('A' | 'z' | 'b' | 'B' | 'Q') => Err(ReError::InvalidEscape),
            _ => match self.parse_escape()? {
                Esc::Char(ch) => Ok(ch),
                Esc::Class(_) => Err(ReError::InvalidEscape),
            },
        }
    }
}

// ---------------------------------------------------------------- compiling

fn compile(node: &Node, out: &mut Vec<Inst>) {
    match node {
        Node::Char(c) => out.push(Inst::Char(*c)),
        Node::AnyNotNl => out.push(Inst::AnyNotNl),
        Node::Class(cls) => out.push(Inst::Class(cls.clone())),
        Node::Look(l) => out.push(Inst::Assert(*l)),
        Node::Concat(items) => items.iter().for_each(|n| compile(n, out)),
        Node::Alt(alts) => {
            let mut jumps = Vec::new();
            for (i, alt) in alts.iter().enumerate() {
                if i + 1 < alts.len() {
                    let split = out.len();
                    out.push(Inst::Split(split + 1, 0));
                    compile(alt, out);
                    jumps.push(out.len());
                    out.push(Inst::Jmp(0));
                    let next = out.len();
                    out[split] = Inst::Split(split + 1, next);
                } else {
                    compile(alt, out);
                }
            }
            let end = out.len();
            for j in jumps {
                out[j] = Inst::Jmp(end);
            }
        }
        Node::Repeat {
            node,
            min_one,
            max_one,
            greedy,
        } => {
            let order = |a: usize, b: usize| {
                if *greedy {
                    Inst::Split(a, b)
                } else {
                    Inst::Split(b, a)
                }
            };
            if *min_one {
                // L1: body; Split(L1, L2); L2:
                let l1 = out.len();
                compile(node, out);
                let here = out.len();
                out.push(order(l1, here + 1));
            } else {
                // L0: Split(L1, L2); L1: body; [Jmp L0]; L2:
                let l0 = out.len();
                out.push(Inst::Match); // placeholder
                compile(node, out);
                if !*max_one {
                    out.push(Inst::Jmp(l0));
                }
                let l2 = out.len();
                out[l0] = order(l0 + 1, l2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(re: &str, text: &str) -> bool {
        Prog::parse(re).unwrap().is_match(text)
    }

    #[test]
    fn basics() {
        assert!(m("^a[^/]*$", "abc"));
        assert!(!m("^a[^/]*$", "ab/c"));
        assert!(m("^(.*/)?dir2/[^/]*$", "x/y/dir2/f"));
        assert!(m("^(.*/)?dir2/[^/]*$", "dir2/f"));
        assert!(!m("^(.*/)?x$", "a\n/x"));
        assert!(m("^[[:alpha:]]$", "q"));
        assert!(m("^a|b$", "ab") && m("^a|b$", "xb"));
        assert!(m("^[\\]a]$", "]"));
        assert!(m("^\\d+\\s?$", "12 "));
        assert!(m("^[^a]$", "\n"));
        assert!(m("^\\Q.*\\E$", ".*"));
    }

    #[test]
    fn errors() {
        assert_eq!(
            Prog::parse("^[Local-Only]$").unwrap_err(),
            ReError::InvalidCharRange
        );
        assert!(Prog::parse("a**").is_err());
        assert!(Prog::parse("*a").is_err());
        assert!(Prog::parse("(a").is_err());
        assert!(Prog::parse("a)").is_err());
        assert!(Prog::parse("[a").is_err());
        assert!(Prog::parse("\\q").is_err());
        assert!(Prog::parse("[[:foo:]]").is_err());
        assert!(Prog::parse("(a*)*").is_ok());
    }

    #[test]
    fn leftmost_first() {
        let p = Prog::parse("x*?y|x").unwrap();
        assert_eq!(p.find_at("xxy", 0), Some((0, 3)));
        let lazy = Prog::parse("^.*?x").unwrap();
        assert_eq!(lazy.find_at("axbx", 0), Some((0, 2)));
        let greedy = Prog::parse("^.*x").unwrap();
        assert_eq!(greedy.find_at("axbx", 0), Some((0, 4)));
        let unanchored = Prog::parse("b+").unwrap();
        assert_eq!(unanchored.find_at("abbb", 0), Some((1, 4)));
        assert_eq!(unanchored.find_at("ab", 2), None);
    }

    #[test]
    fn no_blowup() {
        let p = Prog::parse(&format!("^{}$", "(.*/)?a".repeat(30))).unwrap();
        let text = "a/".repeat(2000) + "b";
        assert!(!p.is_match(&text));
    }
}
