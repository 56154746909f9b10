//! Dockerfile parser: text to the raw syntax tree of [`crate::ast`].
//!
//! It follows BuildKit's `frontend/dockerfile/parser` line by line:
//!
//! - Parser directives (`# syntax=`, `# escape=`, `# check=`) are read from
//!   the leading comment lines, until the first line that is not one
//!   (another comment, a blank line or an instruction). Names are
//!   case-insensitive; a repeated directive is an error.
//! - The escape character (`\` or `` ` ``) at the end of a line continues the
//!   instruction. Comment lines inside a continuation are dropped; blank ones
//!   are dropped with a `NoEmptyContinuation` warning. Leading whitespace of
//!   continuation lines is kept. A continuation may run to the end of file.
//! - CRLF line endings and a UTF-8 byte-order mark are accepted.
//! - RUN, COPY and ADD (also behind ONBUILD) in shell form take heredocs:
//!   their bodies follow the instruction, one after another, each ended by a
//!   line equal to the delimiter (with leading tabs ignored for `<<-`).
//!   Bodies are kept byte for byte (a CRLF file gives CRLF bodies, as in
//!   BuildKit), before any chomping.
//!
//! Arguments are split per keyword as BuildKit does (see the crate's
//! conformance README): nothing is expanded or unquoted here, except inside
//! leading `--flags`, where BuildKit already removes quotes and `\` escapes.
//!
//! The parser never recurses on input (JSON and nested `${}` are read with
//! explicit stacks or a depth limit) and works line by line, so large and
//! hostile inputs are handled in linear time.

mod directives;
mod heredoc;
mod json;
mod node;
#[cfg(test)]
mod tests;
mod words;

pub use heredoc::{
    chomp_heredoc_content, heredocs_from_line, parse_heredoc, try_heredocs_from_line, HeredocError,
};

use crate::ast::{Directives, Document, Node, Span, Warning};
use directives::DirectiveParser;

/// A syntax error with its location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ParseError {
    /// File name as given by the caller.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What went wrong and what was expected.
    pub message: String,
}

/// Physical lines of the input, each with its line ending.
struct Lines<'a> {
    rest: &'a str,
    /// 1-based number of the line returned last (0 before the first).
    number: usize,
}

impl<'a> Lines<'a> {
    fn next_line(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        let end = self.rest.find('\n').map_or(self.rest.len(), |i| i + 1);
        let (line, rest) = self.rest.split_at(end);
        self.rest = rest;
        self.number += 1;
        Some(line)
    }
}

/// The line without its trailing `\r` / `\n` characters.
fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(words::is_space).starts_with('#')
}

/// Remove a trailing continuation (escape character, then only spaces or
/// tabs). Returns the remaining text and whether the instruction ends here.
/// An escaped escape character (`\\`) at the end is not a continuation.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    if let Some(before) = t.strip_suffix(escape) {
        if before.is_empty() || !before.ends_with(escape) {
            return (before, false);
        }
    }
    (line, true)
}

/// 1-based column of the first non-blank character of `line`.
fn first_column(line: &str) -> usize {
    line.chars().take_while(|c| words::is_space(*c)).count() + 1
}

/// Whether this node (or the node inside ONBUILD) can take heredocs.
fn can_contain_heredoc(node: &Node) -> bool {
    let n = match (&*node.keyword, &node.onbuild) {
        ("onbuild", Some(inner)) => inner,
        _ => node,
    };
    matches!(&*n.keyword, "run" | "copy" | "add") && !n.json
}

fn heredoc_operator(h: &crate::ast::Heredoc) -> String {
    format!("<<{}{}", if h.chomp { "-" } else { "" }, h.name)
}

/// Parse a Dockerfile. `file` is used in error messages only.
pub fn parse(src: &str, file: &str) -> Result<Document, ParseError> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let err = |line: usize, column: usize, message: String| ParseError {
        file: file.to_string(),
        line: line.max(1),
        column: column.max(1),
        message,
    };
    let mut lines = Lines {
        rest: src,
        number: 0,
    };
    let mut dp = DirectiveParser::default();
    let mut directives = Directives::default();
    let mut nodes: Vec<Node> = Vec::new();
    let mut warnings: Vec<Warning> = Vec::new();
    let mut buf = String::new();

    while let Some(raw) = lines.next_line() {
        let start_line = lines.number;
        let text = trim_newline(raw).trim_start_matches(words::is_space);
        if let Some(found) = dp.parse_line(text).map_err(|m| err(start_line, 1, m))? {
            match found.name.as_str() {
                "escape" => directives.escape = found.escape.unwrap_or('\\'),
                "syntax" => directives.syntax = Some(found.value),
                "check" => directives.check = Some(found.value),
                _ => {}
            }
            continue;
        }
        if text.starts_with('#') {
            continue;
        }
        let escape = directives.escape;
        let (first, mut at_end) = trim_continuation(text, escape);
        if at_end && first.is_empty() {
            continue;
        }
        let column = first_column(trim_newline(raw));
        buf.clear();
        buf.push_str(first);
        let mut empty_continuation: Option<usize> = None;
        while !at_end {
            let Some(raw) = lines.next_line() else { break };
            let text = trim_newline(raw);
            if is_comment(text) {
                continue;
            }
            if text.trim_start_matches(words::is_space).is_empty() {
                empty_continuation.get_or_insert(lines.number);
                continue;
            }
            let (part, end) = trim_continuation(text, escape);
            buf.push_str(part);
            at_end = end;
        }
        if let Some(line) = empty_continuation {
            warnings.push(Warning {
                rule: "NoEmptyContinuation".into(),
                message: format!(
                    "Empty continuation line found in: {buf} (empty continuation lines will become errors in a future release)"
                ),
                line,
            });
        }

        let mut node =
            node::node_from_line(&buf, escape, false).map_err(|m| err(start_line, column, m))?;

        if can_contain_heredoc(&node) && buf.contains("<<") {
            // Each body is read as soon as its delimiter is parsed, so a
            // missing terminator fails before later words are looked at.
            let mut heredocs = Vec::new();
            for word in heredoc::line_words(&buf) {
                let Some(mut h) =
                    parse_heredoc(&word).map_err(|e| err(start_line, column, e.to_string()))?
                else {
                    continue;
                };
                let mut terminated = false;
                while let Some(raw) = lines.next_line() {
                    let mut candidate = trim_newline(raw);
                    if h.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == h.name {
                        terminated = true;
                        break;
                    }
                    h.content.push_str(raw);
                }
                if !terminated {
                    return Err(err(
                        start_line,
                        column,
                        format!(
                            "unterminated heredoc {} started at line {start_line}: expected a line {:?} before the end of the file",
                            heredoc_operator(&h),
                            h.name
                        ),
                    ));
                }
                heredocs.push(h);
            }
            if let Some(inner) = node.onbuild.as_mut() {
                inner.heredocs = heredocs.clone();
            }
            node.heredocs = heredocs;
        }

        let span = Span::new(start_line, lines.number);
        node.span = span;
        if let Some(inner) = node.onbuild.as_mut() {
            inner.span = span;
        }
        nodes.push(node);
    }

    let (Some(first), Some(last)) = (nodes.first(), nodes.last()) else {
        return Err(err(
            lines.number,
            1,
            "file with no instructions: expected at least one instruction such as FROM".into(),
        ));
    };
    let span = Span::new(first.span.start_line, last.span.end_line);
    Ok(Document {
        directives,
        nodes,
        span,
        warnings,
    })
}
