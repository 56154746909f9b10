//! Dockerfile parser (placeholder until the parser lands).
use crate::ast::Document;

/// A syntax error with its location.
#[derive(Debug, thiserror::Error)]
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

/// Parse a Dockerfile. `file` is used in error messages only.
pub fn parse(_src: &str, file: &str) -> Result<Document, ParseError> {
    Err(ParseError {
        file: file.to_string(),
        line: 1,
        column: 1,
        message: "parser not built yet".into(),
    })
}
