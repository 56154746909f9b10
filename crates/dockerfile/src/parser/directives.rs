//! Parser directives at the top of a Dockerfile (`# syntax=`, `# escape=`,
//! `# check=`).

/// One directive found on a line.
pub(crate) struct Found {
    /// Lower-cased name.
    pub name: String,
    /// Value with surrounding whitespace removed.
    pub value: String,
    /// For `escape`: the escape character.
    pub escape: Option<char>,
}

/// Reads directives from consecutive lines until the first line that is not
/// one; after that every line is ignored.
#[derive(Default)]
pub(crate) struct DirectiveParser {
    done: bool,
    seen: Vec<String>,
}

/// `\s` of Go's regexp (RE2): `[\t\n\f\r ]`.
fn is_re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{0c}' | '\r' | ' ')
}

/// Match `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`.
fn match_directive(s: &str) -> Option<(&str, &str)> {
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let key_len = s.len()
        - s.trim_start_matches(|c: char| c.is_ascii_alphanumeric())
            .len();
    let key = &s[..key_len];
    let after = s[key_len..]
        .trim_start_matches(is_re_space)
        .strip_prefix('=')?;
    if after.is_empty() {
        return None;
    }
    let value = after.trim_matches(is_re_space);
    if value.is_empty() {
        // Only whitespace after `=`: the lazy group still takes one character.
        let last = after.char_indices().last().map_or(0, |(i, _)| i);
        return Some((key, &after[last..]));
    }
    Some((key, value))
}

impl DirectiveParser {
    /// Look at one line (leading whitespace already removed). Returns the
    /// directive it holds, `None` when it holds none, or an error for a
    /// repeated directive or an invalid escape character.
    pub(crate) fn parse_line(&mut self, line: &str) -> Result<Option<Found>, String> {
        if self.done {
            return Ok(None);
        }
        let Some(rest) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(None);
        };
        let Some((key, value)) = match_directive(rest.trim_start_matches(char::is_whitespace))
        else {
            self.done = true;
            return Ok(None);
        };
        let name = key.to_ascii_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&name) {
            return Err(format!(
                "only one {name} parser directive can be used: expected a single `# {name}=` line"
            ));
        }
        self.seen.push(name.clone());
        let mut escape = None;
        if name == "escape" {
            escape = match value {
                "\\" => Some('\\'),
                "`" => Some('`'),
                _ => {
                    return Err(format!(
                        "invalid escape token '{value}' does not match ` or \\"
                    ))
                }
            };
        }
        Ok(Some(Found {
            name,
            value: value.to_string(),
            escape,
        }))
    }
}
