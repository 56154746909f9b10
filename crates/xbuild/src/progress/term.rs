//! The terminal end of the tty view: its size, whether to colour, SGR
//! colouring, the screen that redraws only changed rows inside a
//! synchronized update, and the text fitting every row goes through
//! (display columns, `…` cuts, control characters and escapes removed).

use std::io::Write;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Width of a byte bar, brackets excluded.
pub(super) const BAR_WIDTH: usize = 20;
/// Begin and end of a synchronized update (DEC private mode 2026).
const SYNC_BEGIN: &str = "\x1b[?2026h";
const SYNC_END: &str = "\x1b[?2026l";

/// Columns and rows of the terminal on stderr, if it is one.
pub(super) fn terminal_size() -> Option<(usize, usize)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the struct it is
    // given; on a descriptor that is not a terminal it fails with ENOTTY.
    let r = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some((usize::from(ws.ws_col), usize::from(ws.ws_row)))
}

/// Whether to colour the tty view: stderr is a terminal, `NO_COLOR` is not
/// set (to anything non-empty), `CLICOLOR` is not `0`, `TERM` is not `dumb`.
pub(super) fn colour_wanted(is_terminal: bool) -> bool {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    is_terminal
        && var("NO_COLOR").is_none()
        && var("CLICOLOR").is_none_or(|v| v != "0")
        && var("TERM").is_none_or(|v| v != "dumb")
}

/// SGR colouring, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Paint(pub(super) bool);

impl Paint {
    pub(super) fn sgr(self, code: &str, s: &str) -> String {
        if self.0 && !s.is_empty() {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    pub(super) fn ok(self, s: &str) -> String {
        self.sgr("32", s)
    }
    pub(super) fn cached(self, s: &str) -> String {
        self.sgr("36", s)
    }
    pub(super) fn bad(self, s: &str) -> String {
        self.sgr("1;31", s)
    }
    pub(super) fn warn(self, s: &str) -> String {
        self.sgr("33", s)
    }
    pub(super) fn dim(self, s: &str) -> String {
        self.sgr("2", s)
    }
    pub(super) fn bold(self, s: &str) -> String {
        self.sgr("1", s)
    }
    pub(super) fn busy(self, s: &str) -> String {
        self.sgr("34", s)
    }
}

/// The terminal end of the view: what the live area shows now, and how to
/// change it into the next frame.
pub(super) struct Screen {
    out: Box<dyn Write + Send>,
    /// The rows of the live area as drawn (the cursor rests at the start of
    /// the row below them).
    shown: Vec<String>,
}

impl Screen {
    pub(super) fn new(out: Box<dyn Write + Send>) -> Self {
        Screen {
            out,
            shown: Vec::new(),
        }
    }

    /// Prints `above` (finished lines) over the live area and draws `area`.
    pub(super) fn draw(&mut self, above: &[String], area: &[String]) {
        let bytes = self.frame(above, area);
        if !bytes.is_empty() {
            let _ = self.out.write_all(bytes.as_bytes());
            let _ = self.out.flush();
        }
    }

    /// The bytes that turn the screen into `above` printed and `area`
    /// shown: only rows that differ are rewritten; nothing at all when
    /// nothing changed. One synchronized update.
    ///
    /// The lines above take the live area's first rows and the area moves
    /// down under them. Rows are cleared one by one (never with "erase
    /// display", which tmux turns into scrolling the screen into history).
    pub(super) fn frame(&mut self, above: &[String], area: &[String]) -> String {
        let mut out = String::new();
        let old = self.shown.len();
        let mut row = old;
        let goto = |out: &mut String, row: &mut usize, to: usize| {
            if to < *row {
                out.push_str(&format!("\x1b[{}A", *row - to));
            } else if to > *row {
                out.push_str(&format!("\x1b[{}B", to - *row));
            }
            out.push('\r');
            *row = to;
        };
        let target: Vec<&String> = above.iter().chain(area).collect();
        for (i, l) in target.iter().enumerate().take(old) {
            if self.shown[i] != **l {
                goto(&mut out, &mut row, i);
                out.push_str(l);
                out.push_str("\x1b[K");
            }
        }
        if target.len() > old {
            goto(&mut out, &mut row, old);
            for l in &target[old..] {
                out.push_str(l);
                out.push_str("\x1b[K\r\n");
            }
        } else if target.len() < old {
            // The rows the area no longer uses, and the row under it (the
            // terminal may have echoed a key there: `^C`).
            for i in target.len()..=old {
                goto(&mut out, &mut row, i);
                out.push_str("\x1b[2K");
            }
            goto(&mut out, &mut row, target.len());
        } else if !out.is_empty() {
            goto(&mut out, &mut row, target.len());
        }
        self.shown = area.to_vec();
        if out.is_empty() {
            return out;
        }
        format!("{SYNC_BEGIN}{out}{SYNC_END}")
    }

    /// Removes the live area; the cursor is left where it began.
    pub(super) fn clear(&mut self) {
        self.draw(&[], &[]);
    }
}

/// `[=========>          ]`: `current` of `total`.
pub(super) fn byte_bar(current: u64, total: u64) -> String {
    let filled = if total == 0 {
        BAR_WIDTH
    } else {
        (u128::from(current.min(total)) * BAR_WIDTH as u128 / u128::from(total)) as usize
    };
    let mut s = String::with_capacity(BAR_WIDTH + 2);
    s.push('[');
    for i in 0..BAR_WIDTH {
        s.push(
            if i + 1 < filled || (i + 1 == filled && filled == BAR_WIDTH) {
                '='
            } else if i + 1 == filled {
                '>'
            } else {
                ' '
            },
        );
    }
    s.push(']');
    s
}

/// Columns `s` takes on a terminal.
pub(super) fn columns(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

/// `left  right` in at most `width` columns, shortening `left` first (and
/// `right` too when even it does not fit).
pub(super) fn fit(left: &str, right: &str, width: usize) -> String {
    let r = columns(right);
    if columns(left) + 2 + r <= width {
        return format!("{left}  {right}");
    }
    if r + 2 + 8 > width {
        return truncate(&format!("{left}  {right}"), width);
    }
    format!("{}  {right}", truncate(left, width - r - 2))
}

/// At most `width` columns, `…` marking a cut.
pub(super) fn truncate(s: &str, width: usize) -> String {
    if columns(s) <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut t = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w > width - 1 {
            break;
        }
        t.push(c);
        used += w;
    }
    t.push('…');
    t
}

/// Control characters (newlines of a heredoc, tabs) as spaces.
pub(crate) fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A log line as a terminal can show it in one row: what a carriage return
/// would leave visible, escape sequences dropped, tabs expanded.
pub(super) fn clean(s: &str) -> String {
    let visible = s.rsplit('\r').find(|p| !p.is_empty()).unwrap_or("");
    let mut out = String::with_capacity(visible.len());
    let mut chars = visible.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c2 in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c2) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push_str("    "),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Columns of the terminal on stderr, if it is one.
pub(crate) fn terminal_columns() -> Option<usize> {
    terminal_size().map(|(w, _)| w)
}

/// `text` after `first`, folded at spaces into lines of at most `width`
/// columns, each later line starting with `rest` (a word longer than a
/// line stands alone, uncut). Without `width`, one line.
pub(crate) fn fold(text: &str, first: &str, rest: &str, width: Option<usize>) -> Vec<String> {
    let Some(width) = width else {
        return vec![format!("{first}{text}")];
    };
    let mut out = Vec::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if !empty && columns(&line) + 1 + columns(word) > width {
            out.push(std::mem::replace(&mut line, rest.to_string()));
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push(line);
    out
}

#[cfg(test)]
mod tests {
    use super::fold;

    #[test]
    fn fold_keeps_every_word_within_the_width() {
        let text = "InvalidDefaultArgInFrom: Default value for ARG $BASE results in empty or \
                    invalid base image name (line 2)";
        assert_eq!(fold(text, " - ", "   ", None), vec![format!(" - {text}")]);
        let lines = fold(text, " - ", "   ", Some(40));
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.chars().count() <= 40), "{lines:?}");
        assert!(lines[0].starts_with(" - Invalid"));
        assert!(lines[1..]
            .iter()
            .all(|l| l.starts_with("   ") && !l.starts_with("    ")));
        let joined: Vec<&str> = lines.iter().flat_map(|l| l.split_whitespace()).collect();
        let words: Vec<&str> = std::iter::once("-")
            .chain(text.split_whitespace())
            .collect();
        assert_eq!(joined, words, "no word lost or cut");
        // A word longer than the width stands alone, uncut.
        let long = "x".repeat(50);
        assert_eq!(
            fold(&format!("a {long} b"), " - ", "   ", Some(20)),
            vec![" - a".to_string(), format!("   {long}"), "   b".to_string()]
        );
    }
}
