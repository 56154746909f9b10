//! Shell-word expansion (BuildKit `shell.Lex` semantics).
