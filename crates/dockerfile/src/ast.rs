//! The raw syntax tree produced by [`crate::parser::parse`].
//!
//! The tree follows BuildKit's parser closely: every instruction becomes one
//! [`Node`] with its keyword, its leading `--flags`, its arguments split the
//! way BuildKit splits them for that keyword, and its heredocs. Nothing is
//! expanded and no quotes are removed here; that is the job of
//! [`crate::instructions`] and [`crate::shell`].

use serde::{Deserialize, Serialize};

/// A 1-based position in a source file.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Position {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

/// The lines an instruction occupies, both ends inclusive and 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Span {
    /// First line of the instruction (the line holding its keyword).
    pub start_line: usize,
    /// Last line of the instruction, including continuation and heredoc lines.
    pub end_line: usize,
}

impl Span {
    /// A span covering lines `start..=end`.
    pub fn new(start_line: usize, end_line: usize) -> Self {
        Span {
            start_line,
            end_line,
        }
    }
}

/// Parser directives found at the top of a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directives {
    /// The escape character: `\` (default) or `` ` ``.
    pub escape: char,
    /// `# syntax=` value, if given.
    pub syntax: Option<String>,
    /// `# check=` value, if given (e.g. `skip=JSONArgsRecommended;error=true`).
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
        }
    }
}

/// One heredoc attached to an instruction (`<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heredoc {
    /// Delimiter word with quotes removed (`EOF`).
    pub name: String,
    /// File descriptor written before `<<` (`3<<EOF`), 0 when none was given.
    pub file_descriptor: u32,
    /// False when any part of the delimiter was quoted: the body is taken literally.
    pub expand: bool,
    /// True for `<<-`: leading tabs are stripped from each body line when used.
    pub chomp: bool,
    /// The body, every line ending in `\n`, **before** chomping.
    pub content: String,
}

/// A non-fatal finding of the parser (e.g. an empty continuation line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// Short machine-readable name, e.g. `NoEmptyContinuation`.
    pub rule: String,
    /// Human-readable message.
    pub message: String,
    /// Line the warning is about (1-based).
    pub line: usize,
}

/// One Dockerfile instruction as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The instruction keyword in lower case (`from`, `run`, `copy`, ...).
    /// Unknown keywords are kept as written (lower-cased); the typed layer rejects them.
    pub keyword: String,
    /// Leading `--name` / `--name=value` words (`"--from=build"`), not
    /// validated. As in BuildKit, quotes inside a flag are removed and `\`
    /// escapes the next character (`--chown="a b"` gives `--chown=a b`).
    /// A bare `--` ends the flags and is dropped.
    pub flags: Vec<String>,
    /// Arguments, split per keyword exactly as BuildKit does (see the
    /// conformance README): JSON form gives one element per array item;
    /// shell form of RUN/CMD/ENTRYPOINT/SHELL is one string; ENV/LABEL are
    /// `name, value, sep` triples; HEALTHCHECK starts with its type word.
    pub args: Vec<String>,
    /// True when the arguments came from a JSON array (exec form).
    pub json: bool,
    /// For `ONBUILD`: the nested instruction. `args` is then empty.
    pub onbuild: Option<Box<Node>>,
    /// Heredocs of this instruction, in order of appearance. For `ONBUILD
    /// RUN <<EOF`, they are on the ONBUILD node and also on its nested node.
    pub heredocs: Vec<Heredoc>,
    /// The instruction's text with continuations joined (escape+newline
    /// removed, comment lines inside continuations dropped), heredoc bodies
    /// not included. Used for `created_by`-style messages and errors.
    pub original: String,
    /// Where the instruction is in the file.
    pub span: Span,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// Parser directives.
    pub directives: Directives,
    /// Instructions in file order.
    pub nodes: Vec<Node>,
    /// Lines spanned by all instructions (first instruction's start to last's end).
    pub span: Span,
    /// Non-fatal findings.
    pub warnings: Vec<Warning>,
}
