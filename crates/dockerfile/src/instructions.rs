//! Typed instructions built from [`crate::ast::Node`]s.
