//! A small, non-recursive JSON reader for the exec form (`["a", "b"]`).
//!
//! It follows Go's `encoding/json` as BuildKit uses it: the whole text must
//! be one valid JSON value (surrounding whitespace allowed), lone UTF-16
//! surrogates in `\u` escapes become U+FFFD, and a valid array holding
//! anything but strings is reported separately, because BuildKit turns that
//! into an error instead of falling back to the shell form.

/// What the argument text turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JsonArgs {
    /// Not a JSON array (or not valid JSON): use the shell form.
    NotJson,
    /// A JSON array of strings.
    Strings(Vec<String>),
    /// Valid JSON array with an element that is not a string.
    NotStrings,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.b.len() && is_ws(self.b[self.i]) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let h = self.b.get(at..at + 4)?;
        let mut v = 0u32;
        for &c in h {
            v = v * 16 + (c as char).to_digit(16)?;
        }
        Some(v)
    }

    /// Read a string starting at `"`; returns its decoded value.
    fn string(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out: Vec<u8> = Vec::new();
        loop {
            let c = self.peek()?;
            match c {
                b'"' => {
                    self.i += 1;
                    break;
                }
                b'\\' => {
                    let e = *self.b.get(self.i + 1)?;
                    self.i += 2;
                    let simple = match e {
                        b'"' => Some(b'"'),
                        b'\\' => Some(b'\\'),
                        b'/' => Some(b'/'),
                        b'b' => Some(8),
                        b'f' => Some(12),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => None,
                        _ => return None,
                    };
                    if let Some(s) = simple {
                        out.push(s);
                        continue;
                    }
                    let hi = self.hex4(self.i)?;
                    self.i += 4;
                    let mut ch = char::from_u32(hi);
                    if (0xD800..0xE000).contains(&hi) {
                        ch = None;
                        if (0xD800..0xDC00).contains(&hi)
                            && self.b.get(self.i) == Some(&b'\\')
                            && self.b.get(self.i + 1) == Some(&b'u')
                        {
                            if let Some(lo) = self.hex4(self.i + 2) {
                                if (0xDC00..0xE000).contains(&lo) {
                                    let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                    ch = char::from_u32(cp);
                                    self.i += 6;
                                }
                            }
                        }
                    }
                    let ch = ch.unwrap_or('\u{FFFD}');
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c if c < 0x20 => return None,
                _ => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        // Bytes were copied whole or split only at ASCII, so this is UTF-8.
        Some(
            String::from_utf8(out)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        )
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Option<()> {
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.') && self.digits() == 0 {
            return None;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// Read `"key" :` inside an object (whitespace before the key skipped).
    fn object_key(&mut self) -> Option<()> {
        self.skip_ws();
        self.string()?;
        self.skip_ws();
        if self.eat(b':') {
            Some(())
        } else {
            None
        }
    }

    /// Skip one complete JSON value of any kind, without recursion.
    fn skip_value(&mut self) -> Option<()> {
        let mut stack: Vec<u8> = Vec::new();
        'value: loop {
            self.skip_ws();
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                b'{' => {
                    self.i += 1;
                    self.skip_ws();
                    if !self.eat(b'}') {
                        stack.push(b'}');
                        self.object_key()?;
                        continue 'value;
                    }
                }
                b'[' => {
                    self.i += 1;
                    self.skip_ws();
                    if !self.eat(b']') {
                        stack.push(b']');
                        continue 'value;
                    }
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // A value is complete: close containers or move to the next element.
            loop {
                let Some(&close) = stack.last() else {
                    return Some(());
                };
                self.skip_ws();
                if self.eat(b',') {
                    if close == b'}' {
                        self.object_key()?;
                    }
                    continue 'value;
                }
                if self.eat(close) {
                    stack.pop();
                    continue;
                }
                return None;
            }
        }
    }
}

/// Interpret `rest` as the JSON (exec) form of an instruction.
pub(crate) fn parse_json_args(rest: &str) -> JsonArgs {
    let rest = rest.trim_start_matches(super::words::is_space);
    if !rest.starts_with('[') {
        return JsonArgs::NotJson;
    }
    let mut r = Reader {
        b: rest.as_bytes(),
        i: 1,
    };
    let mut strings = Vec::new();
    let mut all_strings = true;
    r.skip_ws();
    if !r.eat(b']') {
        loop {
            r.skip_ws();
            if r.peek() == Some(b'"') {
                match r.string() {
                    Some(s) => strings.push(s),
                    None => return JsonArgs::NotJson,
                }
            } else {
                all_strings = false;
                if r.skip_value().is_none() {
                    return JsonArgs::NotJson;
                }
            }
            r.skip_ws();
            if r.eat(b',') {
                continue;
            }
            if r.eat(b']') {
                break;
            }
            return JsonArgs::NotJson;
        }
    }
    r.skip_ws();
    if r.i != r.b.len() {
        return JsonArgs::NotJson;
    }
    if all_strings {
        JsonArgs::Strings(strings)
    } else {
        JsonArgs::NotStrings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> JsonArgs {
        JsonArgs::Strings(v.iter().map(|x| x.to_string()).collect())
    }

    #[test]
    fn arrays() {
        assert_eq!(parse_json_args("[]"), s(&[]));
        assert_eq!(parse_json_args(" [ \"a\" , \"b\" ] "), s(&["a", "b"]));
        assert_eq!(parse_json_args("[\"\\u00e9\\ud83d\\ude00\"]"), s(&["é😀"]));
        assert_eq!(parse_json_args("[\"\\ud800x\"]"), s(&["\u{FFFD}x"]));
        assert_eq!(parse_json_args("[\"a\", [\"b\"]]"), JsonArgs::NotStrings);
        assert_eq!(
            parse_json_args("[1, {\"a\": [null, true, -1.5e3]}]"),
            JsonArgs::NotStrings
        );
        assert_eq!(parse_json_args("[01]"), JsonArgs::NotJson);
        assert_eq!(parse_json_args("['a']"), JsonArgs::NotJson);
        assert_eq!(parse_json_args("[\"a\"] x"), JsonArgs::NotJson);
        assert_eq!(parse_json_args("[\"a\""), JsonArgs::NotJson);
        assert_eq!(parse_json_args("[\"a\tb\"]"), JsonArgs::NotJson);
        assert_eq!(parse_json_args("x"), JsonArgs::NotJson);
        let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_json_args(&deep), JsonArgs::NotStrings);
        let open = "[".repeat(100_000);
        assert_eq!(parse_json_args(&open), JsonArgs::NotJson);
    }
}
