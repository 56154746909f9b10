//! The [`Digest`] newtype (`sha256:<64 hex>` or `sha512:<128 hex>`) and
//! [`DigestWriter`], a writer that hashes and counts what passes through it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256, Sha512};
use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

/// Errors from parsing a digest string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("invalid digest {0:?}: expected algorithm:hex, e.g. sha256:<64 hex digits>")]
    Malformed(String),
    /// The algorithm is not sha256 or sha512.
    #[error("unsupported digest algorithm {algorithm:?} in {input:?}")]
    UnsupportedAlgorithm {
        /// The algorithm part.
        algorithm: String,
        /// The whole input.
        input: String,
    },
    /// The hex part has the wrong length or is not lowercase hex.
    #[error("invalid digest {input:?}: {algorithm} needs {expected} lowercase hex digits")]
    BadHex {
        /// The algorithm part.
        algorithm: Algorithm,
        /// Number of hex digits the algorithm needs.
        expected: usize,
        /// The whole input.
        input: String,
    },
}

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the default everywhere.
    Sha256,
    /// SHA-512, allowed by the OCI spec.
    Sha512,
}

impl Algorithm {
    /// `sha256` or `sha512`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex encoding.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated content digest, stored as its string form `algorithm:hex`.
///
/// The hex part is always lowercase hex of the algorithm's exact length, so
/// [`Digest::hex`] is safe to use as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    s: String,
    algorithm: Algorithm,
}

impl Digest {
    /// Parse and validate `sha256:<64 hex>` or `sha512:<128 hex>`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_string()))?;
        let algorithm = Algorithm::parse(alg).ok_or_else(|| DigestError::UnsupportedAlgorithm {
            algorithm: alg.to_string(),
            input: s.to_string(),
        })?;
        if hex.len() != algorithm.hex_len()
            || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::BadHex {
                algorithm,
                expected: algorithm.hex_len(),
                input: s.to_string(),
            });
        }
        Ok(Digest {
            s: s.to_string(),
            algorithm,
        })
    }

    /// Build a digest from an algorithm and raw hash bytes.
    fn from_raw(algorithm: Algorithm, raw: &[u8]) -> Self {
        Digest {
            s: format!("{}:{}", algorithm.as_str(), hex::encode(raw)),
            algorithm,
        }
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Digest::from_raw(Algorithm::Sha256, &Sha256::digest(bytes))
    }

    /// The sha512 digest of `bytes`.
    pub fn sha512_of(bytes: &[u8]) -> Self {
        Digest::from_raw(Algorithm::Sha512, &Sha512::digest(bytes))
    }

    /// The digest of `bytes` with the given algorithm.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Self {
        match algorithm {
            Algorithm::Sha256 => Digest::sha256_of(bytes),
            Algorithm::Sha512 => Digest::sha512_of(bytes),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.s[self.algorithm.as_str().len() + 1..]
    }

    /// The full `algorithm:hex` string.
    pub fn as_str(&self) -> &str {
        &self.s
    }

    /// The first 12 hex digits, as `docker images` shows image ids.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.s)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.s
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.s)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher for one [`Algorithm`].
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::from_raw(Algorithm::Sha256, &h.finalize()),
            Hasher::Sha512(h) => Digest::from_raw(Algorithm::Sha512, &h.finalize()),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hasher::Sha256(_) => f.write_str("Hasher(sha256)"),
            Hasher::Sha512(_) => f.write_str("Hasher(sha512)"),
        }
    }
}

/// A writer that hashes and counts every byte written through it to `W`.
#[derive(Debug)]
pub struct DigestWriter<W: Write> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> DigestWriter<W> {
    /// Wrap `inner`, hashing with sha256.
    pub fn new(inner: W) -> Self {
        DigestWriter::with_algorithm(inner, Algorithm::Sha256)
    }

    /// Wrap `inner`, hashing with `algorithm`.
    pub fn with_algorithm(inner: W, algorithm: Algorithm) -> Self {
        DigestWriter {
            inner,
            hasher: Hasher::new(algorithm),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.count
    }

    /// The wrapped writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The wrapped writer, mutably. Bytes written to it directly are not hashed.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The digest and size of everything written, and the wrapped writer.
    /// Does not flush `W`.
    pub fn finish(self) -> (Digest, u64, W) {
        (self.hasher.finish(), self.count, self.inner)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC256: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const ABC512: &str = "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

    #[test]
    fn vectors() {
        assert_eq!(Digest::sha256_of(b"").as_str(), EMPTY256);
        assert_eq!(Digest::sha256_of(b"abc").as_str(), ABC256);
        assert_eq!(Digest::sha512_of(b"abc").as_str(), ABC512);
        let d = Digest::parse(ABC256).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex(), &ABC256[7..]);
        assert_eq!(d.short(), "ba7816bf8f01");
        assert_eq!(
            Digest::parse(ABC512).unwrap().algorithm(),
            Algorithm::Sha512
        );
    }

    #[test]
    fn rejects_bad() {
        assert!(matches!(
            Digest::parse("abc"),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            Digest::parse("md5:d41d8cd98f00b204e9800998ecf8427e"),
            Err(DigestError::UnsupportedAlgorithm { .. })
        ));
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse(&ABC256.to_uppercase().replace("SHA256", "sha256")).is_err());
        assert!(Digest::parse(&format!("{ABC256}0")).is_err());
        assert!(Digest::parse(&ABC256.replace('a', "/")).is_err());
        assert!(Digest::parse(
            "sha256:../../../../../../../../../../../../../../../../../../../../etc"
        )
        .is_err());
    }

    #[test]
    fn serde_and_fromstr() {
        let d: Digest = ABC256.parse().unwrap();
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(j, format!("\"{ABC256}\""));
        let back: Digest = serde_json::from_str(&j).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"sha256:xyz\"").is_err());
        assert_eq!(d.to_string(), ABC256);
    }

    #[test]
    fn writer_hashes_and_counts() {
        let mut w = DigestWriter::new(Vec::new());
        w.write_all(b"a").unwrap();
        w.write_all(b"bc").unwrap();
        let (d, n, inner) = w.finish();
        assert_eq!(d.as_str(), ABC256);
        assert_eq!(n, 3);
        assert_eq!(inner, b"abc");
        let mut w = DigestWriter::with_algorithm(io::sink(), Algorithm::Sha512);
        w.write_all(b"abc").unwrap();
        assert_eq!(w.finish().0.as_str(), ABC512);
    }
}
