//! Masks secret values in the output of a RUN step before it becomes a log
//! event (and so before any progress display, rawjson stream or log file).
//!
//! BuildKit shows step output as is, so `RUN --mount=type=secret,id=t cat
//! /run/secrets/t` prints the secret. xbuild replaces each occurrence of a
//! secret value mounted into the step with `****`, as CI systems do with
//! masked variables. The value is matched as given and without a trailing
//! newline (a file secret usually ends with one; `echo $SECRET` output does
//! not). Values shorter than [`MIN_LEN`] bytes are not masked: masking every
//! `1` or `ab` would make logs unreadable and hide nothing real.
//!
//! Output arrives in arbitrary chunks, so a value split across two chunks
//! is still found: the tail that could begin a value is held back until the
//! next chunk (or [`Redactor::finish`]).

/// The text that replaces a secret value.
pub const MASK: &[u8] = b"****";
/// Shortest value that is masked.
pub const MIN_LEN: usize = 4;

/// Streaming masker for one output stream.
#[derive(Default)]
pub struct Redactor {
    needles: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("values", &self.needles.len())
            .finish()
    }
}

impl Redactor {
    /// A masker for `values` (the secrets of one step).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Redactor {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        for v in values {
            let trimmed = v
                .strip_suffix(b"\n")
                .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
                .unwrap_or(v);
            // The trimmed value also covers the full one, and keeps the
            // newline that ends a `cat` of the secret file in the output.
            if trimmed.len() >= MIN_LEN && !needles.iter().any(|x| x == trimmed) {
                needles.push(trimmed.to_vec());
            }
        }
        // Longest first, so a value that contains another is masked whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Redactor {
            needles,
            pending: Vec::new(),
        }
    }

    /// Whether there is anything to mask.
    pub fn is_active(&self) -> bool {
        !self.needles.is_empty()
    }

    fn mask_pending(&mut self) {
        let mut out = Vec::with_capacity(self.pending.len());
        let mut i = 0;
        'scan: while i < self.pending.len() {
            for n in &self.needles {
                if self.pending[i..].starts_with(n) {
                    out.extend_from_slice(MASK);
                    i += n.len();
                    continue 'scan;
                }
            }
            out.push(self.pending[i]);
            i += 1;
        }
        self.pending = out;
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of
    /// some value (it may complete in the next chunk).
    fn held_back(&self) -> usize {
        let max = self.needles.iter().map(Vec::len).max().unwrap_or(0);
        let p = &self.pending;
        (1..max.min(p.len() + 1))
            .rev()
            .find(|&k| {
                self.needles
                    .iter()
                    .any(|n| n.len() > k && n.starts_with(&p[p.len() - k..]))
            })
            .unwrap_or(0)
    }

    /// Feeds a chunk; returns what can be shown now, masked.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.needles.is_empty() {
            return data.to_vec();
        }
        self.pending.extend_from_slice(data);
        self.mask_pending();
        let keep = self.held_back();
        let tail = self.pending.split_off(self.pending.len() - keep);
        std::mem::replace(&mut self.pending, tail)
    }

    /// The rest, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        self.mask_pending();
        std::mem::take(&mut self.pending)
    }
}

impl Drop for Redactor {
    fn drop(&mut self) {
        for n in self.needles.iter_mut() {
            n.iter_mut().for_each(|b| *b = 0);
        }
        self.pending.iter_mut().for_each(|b| *b = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(values: &[&[u8]], chunks: &[&[u8]]) -> Vec<u8> {
        let mut r = Redactor::new(values.iter().copied());
        let mut out = Vec::new();
        for c in chunks {
            out.extend(r.push(c));
        }
        out.extend(r.finish());
        out
    }

    #[test]
    fn masks_whole_values_and_values_without_their_newline() {
        assert_eq!(
            run(&[b"hunter22\n"], &[b"pw=hunter22 ok\n"]),
            b"pw=**** ok\n"
        );
        assert_eq!(run(&[b"hunter22\n"], &[b"hunter22\nx"]), b"****\nx");
        assert_eq!(run(&[b"abc"], &[b"abc"]), b"abc", "too short to mask");
    }

    #[test]
    fn masks_values_split_across_chunks_in_every_way() {
        let text = b"a-s3cr3t-value-b s3cr3t-value";
        for cut1 in 0..text.len() {
            for cut2 in cut1..text.len() {
                let out = run(
                    &[b"s3cr3t-value"],
                    &[&text[..cut1], &text[cut1..cut2], &text[cut2..]],
                );
                assert_eq!(out, b"a-****-b ****", "cuts {cut1} {cut2}");
            }
        }
    }

    #[test]
    fn passes_text_through_without_values() {
        assert_eq!(run(&[], &[b"abc", b"def"]), b"abcdef");
        assert_eq!(run(&[b"zzzzzz"], &[b"zzz", b"zz"]), b"zzzzz");
    }
}
