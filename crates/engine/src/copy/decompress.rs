//! Compression formats ADD recognises in local archives, as Docker does:
//! gzip, bzip2 and xz (detected by magic bytes, never by file name).
//!
//! gzip is decoded by the layer applier itself; bzip2 is decoded as a
//! stream; xz (whose pure-Rust decoder writes into a sink rather than
//! offering a reader) is decoded into a file in a scratch directory first.

use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use super::{dest, CopyError};

/// A local file's compression, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// Not compressed (or not a format ADD decodes).
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// bzip2 (`BZh`).
    Bzip2,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
}

/// Reads the magic bytes of `host`.
pub(crate) fn sniff(host: &Path) -> Result<Compression, CopyError> {
    let mut f = fs::File::open(host).map_err(dest::io_at("open", host))?;
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(dest::io_at("read", host)(e)),
        }
    }
    let head = &head[..n];
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else {
        Compression::None
    })
}

/// A sink that keeps the first `limit` bytes, then refuses more (which
/// stops a decoder early once enough has been seen).
struct Prefix {
    buf: Vec<u8>,
    limit: usize,
}

impl Write for Prefix {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.limit - self.buf.len();
        if room == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "prefix full"));
        }
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The first `limit` decompressed bytes of `host` (fewer if it is shorter
/// or corrupt; a corrupt stream is simply "not an archive").
pub(crate) fn decoded_prefix(
    host: &Path,
    kind: Compression,
    limit: usize,
) -> Result<Vec<u8>, CopyError> {
    let f = fs::File::open(host).map_err(dest::io_at("open", host))?;
    let mut out = Prefix {
        buf: Vec::with_capacity(limit),
        limit,
    };
    match kind {
        Compression::None => {
            let _ = io::copy(&mut f.take(limit as u64), &mut out);
        }
        Compression::Gzip => {
            let _ = io::copy(
                &mut flate2::read::MultiGzDecoder::new(f).take(limit as u64),
                &mut out,
            );
        }
        Compression::Bzip2 => {
            let _ = io::copy(
                &mut bzip2::read::MultiBzDecoder::new(f).take(limit as u64),
                &mut out,
            );
        }
        Compression::Xz => {
            let _ = lzma_rs::xz_decompress(&mut BufReader::new(f), &mut out);
        }
    }
    Ok(out.buf)
}

/// Opens `host` as a stream the layer applier can read: plain tar or gzip
/// (which it decodes itself). xz is decoded into `scratch` first.
pub(crate) fn open_for_apply(
    host: &Path,
    kind: Compression,
    scratch: &Path,
) -> Result<Box<dyn Read>, CopyError> {
    let f = fs::File::open(host).map_err(dest::io_at("open", host))?;
    Ok(match kind {
        Compression::None | Compression::Gzip => Box::new(f),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(f)),
        Compression::Xz => {
            let path = scratch.join("decoded.tar");
            let mut out =
                io::BufWriter::new(fs::File::create(&path).map_err(dest::io_at("create", &path))?);
            lzma_rs::xz_decompress(&mut BufReader::new(f), &mut out).map_err(|e| {
                dest::io_at("decompress xz", host)(io::Error::new(
                    io::ErrorKind::InvalidData,
                    e.to_string(),
                ))
            })?;
            out.flush().map_err(dest::io_at("write", &path))?;
            drop(out);
            Box::new(fs::File::open(&path).map_err(dest::io_at("open", &path))?)
        }
    })
}
