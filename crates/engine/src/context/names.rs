//! File names as `String`s, byte for byte.
//!
//! Linux file names are bytes; BuildKit (Go strings are bytes) copies a
//! context file named `caf\xe9.txt` (Latin-1) as it is. The engine keeps
//! paths in `String`s (they are sorted, matched against `.dockerignore` and
//! COPY patterns, hashed into cache keys and sent to build nodes in JSON),
//! so names are *escaped* where they are read from disk and *decoded*
//! wherever a path touches the filesystem again:
//!
//! - a byte that is not part of valid UTF-8 (always `0x80..=0xFF`) becomes
//!   the private-use character `U+F700 + byte` (`U+F780..=U+F7FF`);
//! - so that the mapping stays one-to-one, a real character of that range
//!   in a valid name is written as the escapes of its own UTF-8 bytes
//!   (`U+F780` is `EF 9E 80`, written `U+F7EF U+F79E U+F780`);
//! - everything else (all of ASCII, `/` included, and every other valid
//!   character) is kept as it is, so valid names other than that range are
//!   unchanged and patterns match them as before. An escape is one
//!   character, as Go's `filepath.Match` takes an invalid byte for one rune.
//!
//! [`decode`] maps `U+F780..=U+F7FF` back to bytes and leaves other
//! characters as their UTF-8, so `decode(encode(b)) == b` for every byte
//! string. Text from the Dockerfile (sources, destinations) enters the same
//! domain through [`escape_str`], which changes only characters of the
//! escape range. [`lossy`] is for people: names shown in progress and
//! errors never carry raw bytes to the terminal.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The escape of byte `b` is `char::from_u32(ESCAPE_BASE + b)`.
const ESCAPE_BASE: u32 = 0xF700;
/// First and last characters that stand for a byte.
const FIRST: char = '\u{F780}';
const LAST: char = '\u{F7FF}';

fn is_escape(c: char) -> bool {
    (FIRST..=LAST).contains(&c)
}

fn push_byte(out: &mut String, b: u8) {
    debug_assert!(b >= 0x80, "only non-ASCII bytes are escaped");
    out.push(char::from_u32(ESCAPE_BASE + u32::from(b)).expect("U+F780..=U+F7FF are chars"));
}

fn push_valid(out: &mut String, s: &str) {
    for c in s.chars() {
        if is_escape(c) {
            let mut buf = [0u8; 4];
            for &b in c.encode_utf8(&mut buf).as_bytes() {
                push_byte(out, b);
            }
        } else {
            out.push(c);
        }
    }
}

/// The `String` form of the file-name bytes `bytes` (see the module docs).
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push_valid(&mut out, s);
                return out;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                push_valid(
                    &mut out,
                    std::str::from_utf8(valid).expect("valid up to here"),
                );
                let bad = e.error_len().unwrap_or(after.len());
                for &b in &after[..bad] {
                    push_byte(&mut out, b);
                }
                rest = &after[bad..];
            }
        }
    }
}

/// [`encode`] of an OS string (a file name or a link target).
pub fn encode_os(s: &OsStr) -> String {
    encode(s.as_bytes())
}

/// Text (from the Dockerfile, a flag) in the escaped domain: only
/// characters of the escape range change. Borrowed when none is present.
pub fn escape_str(s: &str) -> Cow<'_, str> {
    if s.chars().any(is_escape) {
        Cow::Owned(encode(s.as_bytes()))
    } else {
        Cow::Borrowed(s)
    }
}

/// The bytes an escaped string stands for. Borrowed when it holds no escape.
pub fn decode(s: &str) -> Cow<'_, [u8]> {
    if !s.chars().any(is_escape) {
        return Cow::Borrowed(s.as_bytes());
    }
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        if is_escape(c) {
            out.push((u32::from(c) - ESCAPE_BASE) as u8);
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    Cow::Owned(out)
}

/// [`decode`] as an OS string.
pub fn to_os(s: &str) -> OsString {
    OsString::from_vec(decode(s).into_owned())
}

/// [`decode`] as a relative path (to join to a host directory).
pub fn to_path(s: &str) -> PathBuf {
    PathBuf::from(to_os(s))
}

/// `dir` joined with the escaped relative path `rel` (`dir` itself for "").
pub fn join(dir: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(to_path(rel))
    }
}

/// A name for people: the decoded bytes with invalid UTF-8 shown as U+FFFD
/// (never raw bytes, never the private-use escapes).
pub fn lossy(s: &str) -> String {
    String::from_utf8_lossy(&decode(s)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn round_trip(b: &[u8]) -> String {
        let s = encode(b);
        assert_eq!(decode(&s).as_ref(), b, "decode(encode({b:?}))");
        // The escaped form is canonical: encoding the decoded text again
        // through the Dockerfile path gives the same string.
        assert_eq!(encode(&decode(&s)), s);
        s
    }

    #[test]
    fn random_byte_strings_round_trip() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Mostly high bytes and pieces of the escape range's UTF-8, so
        // that valid, invalid and escape-range sequences mix.
        let palette: &[u8] = &[
            b'a', b'/', b'.', 0x80, 0xbf, 0xc3, 0xa9, 0xe9, 0xef, 0x9e, 0x9f, 0xf0, 0x9f, 0x98,
            0x80, 0xff, 0xfe, 0xed, 0xa0,
        ];
        for _ in 0..20_000 {
            let n = (rng.next() % 12) as usize;
            let b: Vec<u8> = (0..n)
                .map(|_| {
                    let r = rng.next();
                    if r.is_multiple_of(3) {
                        (r >> 8) as u8
                    } else {
                        palette[(r >> 8) as usize % palette.len()]
                    }
                })
                .collect();
            round_trip(&b);
        }
    }

    #[test]
    fn every_single_and_double_byte_string_round_trips() {
        for a in 0..=255u8 {
            round_trip(&[a]);
            for b in 0..=255u8 {
                round_trip(&[a, b]);
            }
        }
    }

    #[test]
    fn valid_utf8_is_unchanged_except_the_escape_range() {
        for s in [
            "",
            "a.txt",
            "dir/sub/file",
            "café",
            "日本語/ファイル",
            "😀 x",
            "\u{F6FF}\u{F800}",
        ] {
            assert_eq!(encode(s.as_bytes()), s);
            assert!(matches!(escape_str(s), Cow::Borrowed(_)));
            assert!(matches!(decode(s), Cow::Borrowed(_)));
        }
        // Every character of the range is escaped as its three UTF-8 bytes.
        for cp in 0xF780u32..=0xF7FF {
            let c = char::from_u32(cp).unwrap();
            let s = c.to_string();
            let e = encode(s.as_bytes());
            assert_eq!(e.chars().count(), 3, "{cp:x}");
            assert_ne!(e, s);
            assert_eq!(escape_str(&s), e);
            assert_eq!(decode(&e).as_ref(), s.as_bytes());
        }
    }

    #[test]
    fn latin1_names() {
        let s = round_trip(b"caf\xe9.txt");
        assert_eq!(s, "caf\u{F7E9}.txt");
        assert_eq!(lossy(&s), "caf\u{FFFD}.txt");
        assert_eq!(to_os(&s).as_bytes(), b"caf\xe9.txt");
        assert_eq!(
            join(Path::new("/ctx"), &s).as_os_str().as_bytes(),
            b"/ctx/caf\xe9.txt"
        );
        assert_eq!(join(Path::new("/ctx"), ""), Path::new("/ctx"));
        // Slashes are never escaped: components stay components.
        let p = round_trip(b"d\xff/x\xfe");
        assert_eq!(p.split('/').count(), 2);
        // A truncated sequence at the end and an overlong one.
        round_trip(b"ab\xe2\x82");
        round_trip(b"\xc0\xaf");
        // Surrogates encoded in UTF-8 are invalid: escaped byte by byte.
        assert_eq!(encode(b"\xed\xa0\x80").chars().count(), 3);
    }

    #[test]
    fn lossy_never_shows_raw_bytes_or_escapes() {
        let s = encode(b"x\x80\xff\xe9y");
        let l = lossy(&s);
        assert!(!l.chars().any(is_escape), "{l:?}");
        assert!(l.starts_with('x') && l.ends_with('y'));
    }
}
