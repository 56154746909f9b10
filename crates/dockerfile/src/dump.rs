//! Render a [`Document`] in BuildKit's `Node.Dump()` format, one
//! s-expression per instruction:
//!
//! ```text
//! (from "golang" "AS" "build")
//! (copy ["--from=build"] "/out" "/bin/")
//! (onbuild (run "echo test"))
//! ```
//!
//! This is the format of BuildKit's parser test corpus and is handy for
//! debugging (`xbuild build --call outline`). Strings are quoted like Go's
//! `strconv.Quote`.

use crate::ast::{Document, Node};

/// Keywords BuildKit's parser knows; any other keyword dumps as `(kw "")`,
/// because BuildKit ignores the arguments of unknown instructions.
const KNOWN: &[&str] = &[
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// Dump a whole document: one `(...)` line per instruction, each ending in `\n`.
pub fn dump(doc: &Document) -> String {
    let mut out = String::new();
    for node in &doc.nodes {
        out.push('(');
        out.push_str(&dump_node(node));
        out.push_str(")\n");
    }
    out
}

/// Dump one instruction without the surrounding parentheses.
pub fn dump_node(node: &Node) -> String {
    let mut s = node.keyword.to_lowercase();
    if !node.flags.is_empty() {
        s.push_str(" [");
        for (i, f) in node.flags.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(&go_quote(f));
        }
        s.push(']');
    }
    if let Some(inner) = &node.onbuild {
        s.push_str(" (");
        s.push_str(&dump_node(inner));
        s.push(')');
    } else if !KNOWN.contains(&node.keyword.as_str()) {
        s.push_str(" \"\"");
    } else {
        for a in &node.args {
            s.push(' ');
            s.push_str(&go_quote(a));
        }
    }
    s
}

/// Quote a string the way Go's `strconv.Quote` does: `"` and `\` escaped,
/// `\a \b \f \n \r \t \v` for those controls, `\xNN` for other ASCII
/// controls, `\uNNNN` / `\UNNNNNNNN` for non-printable characters, printable
/// non-ASCII written as is.
///
/// Printability follows Go's `unicode.IsPrint` for controls, separators
/// (other than the ASCII space), format characters, private use and
/// noncharacters; unassigned code points are treated as printable.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if is_print(c) => out.push(c),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

fn is_print(c: char) -> bool {
    let u = c as u32;
    if c.is_ascii() {
        return (0x20..0x7f).contains(&u);
    }
    !matches!(u,
        0x80..=0x9f
        | 0xa0 | 0xad | 0x1680 | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x2064
        | 0x2066..=0x206f | 0x3000 | 0xfeff | 0xfff9..=0xfffb | 0xfdd0..=0xfdef
        | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x8e2 | 0x180e
        | 0xe000..=0xf8ff | 0xf0000..=0x10ffff
        | 0x110bd | 0x110cd | 0x13430..=0x1343f | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a
        | 0xe0001 | 0xe0020..=0xe007f
    ) && (u & 0xfffe) != 0xfffe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("\u{0}\u{1b}\u{7f}"), r#""\x00\x1b\x7f""#);
        assert_eq!(go_quote("♥ é"), "\"♥ é\"");
        assert_eq!(
            go_quote("\u{a0}\u{200b}\u{feff}"),
            r#""\u00a0\u200b\ufeff""#
        );
        assert_eq!(go_quote("\u{10ffff}"), r#""\U0010ffff""#);
        assert_eq!(go_quote("\u{7}\u{8}\u{b}"), r#""\a\b\v""#);
    }

    #[test]
    fn unknown_and_onbuild() {
        let doc = crate::parser::parse("FROM a\nFOO --x bar\nONBUILD RUN [\"a\"]\n", "Dockerfile")
            .unwrap();
        assert_eq!(
            dump(&doc),
            "(from \"a\")\n(foo [\"--x\"] \"\")\n(onbuild (run \"a\"))\n"
        );
    }
}
