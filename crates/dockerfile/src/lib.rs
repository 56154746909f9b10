//! The Dockerfile frontend of xbuild: parsing with source spans
//! ([`parser`], [`ast`]), typed instructions ([`instructions`]), BuildKit
//! compatible shell-word expansion ([`shell`]) and `.dockerignore`
//! matching with moby/patternmatcher semantics ([`ignore`]).
//!
//! This crate does no I/O beyond what it is handed, so it builds anywhere.
#![warn(missing_docs)]

pub mod ast;
pub mod dump;
pub mod ignore;
pub mod instructions;
pub mod parser;
pub mod shell;
pub mod suggest;

pub use ast::{Directives, Document, Heredoc, Node, Position, Span};
pub use parser::{parse, ParseError};
