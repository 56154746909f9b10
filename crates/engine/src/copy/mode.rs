//! `--chmod`: octal (`755`, `0644`) or symbolic (`u+x,g-w,o=r`, `a=rX`).

use super::CopyError;

/// A parsed `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// Sets the mode (permission and special bits) exactly.
    Octal(u32),
    /// `chmod(1)` clauses applied to each entry's mode in turn.
    Symbolic(Vec<Clause>),
}

/// One symbolic clause: who, then operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    who: u32,
    ops: Vec<(char, Perm)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Perm {
    /// Letters among `rwxXst`.
    Bits(String),
    /// Copy from `u`, `g` or `o`.
    From(char),
}

const U: u32 = 0o4700;
const G: u32 = 0o2070;
const O: u32 = 0o1007;

impl Chmod {
    /// Parses an octal or symbolic mode.
    pub fn parse(spec: &str) -> Result<Chmod, CopyError> {
        let bad = || CopyError::Chmod {
            spec: spec.to_string(),
        };
        let s = spec.trim();
        if s.is_empty() {
            return Err(bad());
        }
        if s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            let m = u32::from_str_radix(s, 8).map_err(|_| bad())?;
            if m > 0o7777 {
                return Err(bad());
            }
            return Ok(Chmod::Octal(m));
        }
        let mut clauses = Vec::new();
        for part in s.split(',') {
            let mut chars = part.chars().peekable();
            let mut who = 0;
            while let Some(&c) = chars.peek() {
                who |= match c {
                    'u' => U,
                    'g' => G,
                    'o' => O,
                    'a' => U | G | O,
                    _ => break,
                };
                chars.next();
            }
            if who == 0 {
                who = U | G | O;
            }
            let mut ops = Vec::new();
            while let Some(op) = chars.next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad());
                }
                let perm = match chars.peek() {
                    Some(&c @ ('u' | 'g' | 'o')) => {
                        chars.next();
                        Perm::From(c)
                    }
                    _ => {
                        let mut bits = String::new();
                        while let Some(&c) = chars.peek() {
                            if !"rwxXst".contains(c) {
                                break;
                            }
                            bits.push(c);
                            chars.next();
                        }
                        Perm::Bits(bits)
                    }
                };
                ops.push((op, perm));
            }
            if ops.is_empty() {
                return Err(bad());
            }
            clauses.push(Clause { who, ops });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The new mode of an entry whose current mode is `mode`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let mut mode = mode & 0o7777;
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(clauses) => {
                for c in clauses {
                    for (op, perm) in &c.ops {
                        let bits = match perm {
                            Perm::Bits(letters) => {
                                let mut b = 0;
                                for l in letters.chars() {
                                    b |= match l {
                                        'r' => 0o444,
                                        'w' => 0o222,
                                        'x' => 0o111,
                                        'X' if is_dir || mode & 0o111 != 0 => 0o111,
                                        's' => 0o6000,
                                        't' => 0o1000,
                                        _ => 0,
                                    };
                                }
                                b
                            }
                            Perm::From(w) => {
                                let v = match w {
                                    'u' => (mode >> 6) & 7,
                                    'g' => (mode >> 3) & 7,
                                    _ => mode & 7,
                                };
                                v * 0o111
                            }
                        } & c.who;
                        match op {
                            '+' => mode |= bits,
                            '-' => mode &= !bits,
                            _ => mode = (mode & !c.who) | bits,
                        }
                    }
                }
                mode
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_and_symbolic() {
        assert_eq!(Chmod::parse("755").unwrap().apply(0o600, false), 0o755);
        assert_eq!(Chmod::parse("0640").unwrap().apply(0o4777, false), 0o640);
        assert_eq!(Chmod::parse("u+x").unwrap().apply(0o644, false), 0o744);
        assert_eq!(Chmod::parse("go-w").unwrap().apply(0o666, false), 0o644);
        assert_eq!(Chmod::parse("a=rX").unwrap().apply(0o700, true), 0o555);
        assert_eq!(Chmod::parse("a=rX").unwrap().apply(0o600, false), 0o444);
        assert_eq!(
            Chmod::parse("u=rwx,g=u,o=").unwrap().apply(0o000, false),
            0o770
        );
        assert_eq!(Chmod::parse("+x").unwrap().apply(0o644, false), 0o755);
        assert_eq!(Chmod::parse("u+s").unwrap().apply(0o755, false), 0o4755);
        assert!(Chmod::parse("888").is_err());
        assert!(Chmod::parse("u").is_err());
        assert!(Chmod::parse("u*x").is_err());
        assert!(Chmod::parse("").is_err());
    }
}
