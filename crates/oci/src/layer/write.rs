//! Writing a layer from a directory tree, streaming: one pass produces the
//! compressed blob with its digest and size, and the diffID (sha256 of the
//! uncompressed tar).
//!
//! Output is deterministic: entries are sorted by name within each directory
//! (depth first), PAX records and xattrs are sorted, user and group names are
//! empty, whiteouts carry fixed metadata, and with
//! [`WriteOptions::source_date_epoch`] every mtime is clamped to it. The same
//! tree therefore always gives the same bytes and digests.

use super::{xattr, PAX_XATTR_PREFIX, WHITEOUT_OPAQUE, WHITEOUT_PREFIX};
use crate::descriptor::Descriptor;
use crate::digest::{Digest, DigestWriter};
use crate::media_types::{self as mt, Compression};
use flate2::write::GzEncoder;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use tar::{EntryType, Header};

/// Errors from writing a layer.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Reading the source tree failed.
    #[error("{op} {path}: {source}")]
    Source {
        /// What was being done.
        op: &'static str,
        /// The source path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("writing layer output: {0}")]
    Output(#[source] io::Error),
    /// A file shrank while it was being archived.
    #[error("{0} changed while the layer was being written")]
    FileChanged(PathBuf),
    /// The source uses a feature that cannot be represented correctly.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The source path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An entry of [`WriteOptions::extra_whiteouts`] is not a usable path.
    #[error("invalid whiteout path {0:?}: must name something below the root without `..`")]
    InvalidWhiteout(PathBuf),
}

type Result<T, E = WriteError> = std::result::Result<T, E>;

fn src_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Source {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How the source directory is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceMode {
    /// Every file under the directory is in the layer.
    #[default]
    Full,
    /// The directory is an overlayfs upper directory: character devices 0/0
    /// become `.wh.<name>` whiteouts and opaque directories get a
    /// `.wh..wh..opq` marker. Upper directories written with `redirect_dir`
    /// or `metacopy` enabled are refused.
    OverlayUpper,
}

/// Options of [`write_layer`].
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// How to read the source.
    pub mode: SourceMode,
    /// Clamp every mtime to this many seconds since the epoch (reproducible
    /// builds); whiteouts get this mtime too (else 0).
    pub source_date_epoch: Option<u64>,
    /// [`Compression::Gzip`] (default), [`Compression::Zstd`] or
    /// [`Compression::None`].
    pub compression: Compression,
    /// Compression level: gzip 0–9 (default 1, fast), zstd 1–22 (values
    /// outside the range are clamped; see [`Compression::default_level`]).
    pub compression_level: u32,
    /// Paths (relative to the layer root) deleted relative to the lower
    /// layers, written as `.wh.<name>` entries, e.g. by a copy-based differ.
    /// A whiteout whose path also exists in the source is dropped: the new
    /// content replaces the old.
    pub extra_whiteouts: Vec<PathBuf>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            mode: SourceMode::Full,
            source_date_epoch: None,
            compression: Compression::Gzip,
            compression_level: 1,
            extra_whiteouts: Vec::new(),
        }
    }
}

/// What [`write_layer`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerOutput {
    /// Digest of the bytes written (compressed).
    pub digest: Digest,
    /// Number of bytes written (compressed).
    pub size: u64,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// The OCI layer media type matching the compression.
    pub media_type: &'static str,
    /// Number of tar entries (not counting PAX headers).
    pub entries: u64,
    /// Things skipped (sockets), for the caller to report.
    pub warnings: Vec<String>,
}

impl LayerOutput {
    /// A descriptor for the written blob.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(self.media_type, self.digest.clone(), self.size)
    }
}

/// The compressor stage between the tar stream and the caller's writer.
enum Sink<W: Write> {
    Gzip(Box<GzEncoder<DigestWriter<W>>>),
    Zstd(Box<zstd::stream::write::Encoder<'static, DigestWriter<W>>>),
    Plain(W),
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Gzip(g) => g.write(buf),
            Sink::Zstd(z) => z.write(buf),
            Sink::Plain(w) => w.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sink::Gzip(g) => g.write_all(buf),
            Sink::Zstd(z) => z.write_all(buf),
            Sink::Plain(w) => w.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Gzip(g) => g.flush(),
            Sink::Zstd(z) => z.flush(),
            Sink::Plain(w) => w.flush(),
        }
    }
}

/// Whiteouts requested by the caller, as a tree of path components.
#[derive(Debug, Default)]
struct WhNode {
    deleted: bool,
    children: BTreeMap<OsString, WhNode>,
}

impl WhNode {
    fn build(paths: &[PathBuf]) -> Result<WhNode> {
        let mut root = WhNode::default();
        for p in paths {
            let mut node = &mut root;
            let mut any = false;
            for c in p.components() {
                match c {
                    Component::RootDir | Component::CurDir => {}
                    Component::Normal(n) => {
                        node = node.children.entry(n.to_os_string()).or_default();
                        any = true;
                    }
                    Component::ParentDir | Component::Prefix(_) => {
                        return Err(WriteError::InvalidWhiteout(p.clone()))
                    }
                }
            }
            if !any {
                return Err(WriteError::InvalidWhiteout(p.clone()));
            }
            node.deleted = true;
        }
        Ok(root)
    }
}

const BLOCK: usize = 512;
const COPY_BUF: usize = 256 * 1024;

struct Writer<'o, T: Write> {
    out: T,
    opts: &'o WriteOptions,
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    warnings: Vec<String>,
    buf: Vec<u8>,
}

/// One child of a directory, classified, with the name it sorts by.
enum Kid {
    Fs {
        name: OsString,
        meta: Metadata,
        whiteout: bool,
    },
    Whiteout,
    Virtual(OsString),
}

/// Write the tree under `src` as a layer to `out`; returns what was written
/// and `out` (not flushed beyond what the compressor wrote).
pub fn write_layer<W: Write>(src: &Path, out: W, opts: &WriteOptions) -> Result<(LayerOutput, W)> {
    let meta = fs::symlink_metadata(src).map_err(src_err("stat", src))?;
    if !meta.is_dir() {
        return Err(WriteError::Source {
            op: "read directory",
            path: src.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    let wh = WhNode::build(&opts.extra_whiteouts)?;
    let sink = match opts.compression {
        Compression::Gzip => Sink::Gzip(Box::new(GzEncoder::new(
            DigestWriter::new(out),
            flate2::Compression::new(opts.compression_level.min(9)),
        ))),
        Compression::None => Sink::Plain(out),
        Compression::Zstd => Sink::Zstd(Box::new(
            zstd_encoder(DigestWriter::new(out), opts.compression_level)
                .map_err(WriteError::Output)?,
        )),
    };
    let mut w = Writer {
        out: DigestWriter::new(sink),
        opts,
        links: HashMap::new(),
        entries: 0,
        warnings: Vec::new(),
        buf: vec![0u8; COPY_BUF],
    };
    w.walk_dir(Some(src), &[], Some(&wh))?;
    // End of archive: two zero blocks.
    w.out
        .write_all(&[0u8; 2 * BLOCK])
        .map_err(WriteError::Output)?;
    let Writer {
        out,
        entries,
        warnings,
        ..
    } = w;
    let (diff_id, uncompressed_size, sink) = out.finish();
    let (digest, size, out, media_type) = match sink {
        Sink::Gzip(g) => {
            let dw = g.finish().map_err(WriteError::Output)?;
            let (d, n, out) = dw.finish();
            (d, n, out, mt::OCI_LAYER_TAR_GZIP)
        }
        Sink::Zstd(z) => {
            let dw = z.finish().map_err(WriteError::Output)?;
            let (d, n, out) = dw.finish();
            (d, n, out, mt::OCI_LAYER_TAR_ZSTD)
        }
        Sink::Plain(out) => (diff_id.clone(), uncompressed_size, out, mt::OCI_LAYER_TAR),
    };
    Ok((
        LayerOutput {
            digest,
            size,
            diff_id,
            uncompressed_size,
            media_type,
            entries,
            warnings,
        },
        out,
    ))
}

/// A single-threaded zstd encoder (deterministic output for a given level)
/// that writes the content size-less frame with a checksum, as BuildKit does.
pub(crate) fn zstd_encoder<W: Write>(
    out: W,
    level: u32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let level = level.clamp(1, 22) as i32;
    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
    enc.include_checksum(true)?;
    Ok(enc)
}

fn join_name(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + name.len() + 1);
    if !parent.is_empty() {
        v.extend_from_slice(parent);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    // "<len> <key>=<value>\n", where len counts the whole record.
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Put `name` into the ustar name/prefix fields; false when it does not fit.
fn set_ustar_name(h: &mut Header, name: &[u8]) -> bool {
    let u = h.as_ustar_mut().expect("ustar header");
    u.name = [0; 100];
    u.prefix = [0; 155];
    if name.len() <= 100 {
        u.name[..name.len()].copy_from_slice(name);
        return true;
    }
    // Split at a '/' so that prefix <= 155 and the rest <= 100 (and non-empty).
    let min_split = name.len().saturating_sub(101);
    for i in (min_split..name.len().min(156)).rev() {
        if name[i] == b'/' {
            let (p, n) = (&name[..i], &name[i + 1..]);
            if !n.is_empty() && n.len() <= 100 && p.len() <= 155 {
                u.prefix[..p.len()].copy_from_slice(p);
                u.name[..n.len()].copy_from_slice(n);
                return true;
            }
        }
    }
    false
}

fn truncated(name: &[u8], max: usize) -> &[u8] {
    &name[..name.len().min(max)]
}

impl<T: Write> Writer<'_, T> {
    fn clamp(&self, mtime: i64) -> u64 {
        let m = mtime.max(0) as u64;
        match self.opts.source_date_epoch {
            Some(e) => m.min(e),
            None => m,
        }
    }

    /// Sorted, classified children of a directory (`host` may be absent for
    /// a directory that exists only as the parent of requested whiteouts).
    fn kids(&self, host: Option<&Path>, wh: Option<&WhNode>) -> Result<Vec<(Vec<u8>, Kid)>> {
        let mut kids: Vec<(Vec<u8>, Kid)> = Vec::new();
        let mut present: Vec<OsString> = Vec::new();
        if let Some(dir) = host {
            let rd = fs::read_dir(dir).map_err(src_err("read directory", dir))?;
            for ent in rd {
                let ent = ent.map_err(src_err("read directory", dir))?;
                let name = ent.file_name();
                let path = dir.join(&name);
                let meta = fs::symlink_metadata(&path).map_err(src_err("stat", &path))?;
                let whiteout = self.opts.mode == SourceMode::OverlayUpper
                    && is_overlay_whiteout(&path, &meta)?;
                let key = if whiteout {
                    join_prefix(WHITEOUT_PREFIX, &name)
                } else {
                    name.as_bytes().to_vec()
                };
                present.push(name.clone());
                kids.push((
                    key,
                    Kid::Fs {
                        name,
                        meta,
                        whiteout,
                    },
                ));
            }
        }
        if let Some(node) = wh {
            for (name, child) in &node.children {
                if present.contains(name) {
                    continue;
                }
                if child.deleted {
                    kids.push((join_prefix(WHITEOUT_PREFIX, name), Kid::Whiteout));
                } else if !child.children.is_empty() {
                    kids.push((name.as_bytes().to_vec(), Kid::Virtual(name.clone())));
                }
            }
        }
        kids.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(kids)
    }

    fn walk_dir(&mut self, host: Option<&Path>, rel: &[u8], wh: Option<&WhNode>) -> Result<()> {
        for (key, kid) in self.kids(host, wh)? {
            let tar_name = join_name(rel, &key);
            match kid {
                Kid::Whiteout => self.write_whiteout(&tar_name)?,
                Kid::Virtual(name) => {
                    let sub = wh.and_then(|n| n.children.get(&name));
                    self.walk_dir(None, &tar_name, sub)?;
                }
                Kid::Fs {
                    name,
                    meta,
                    whiteout,
                } => {
                    if whiteout {
                        self.write_whiteout(&tar_name)?;
                        continue;
                    }
                    let path = host.expect("fs kid has a host dir").join(&name);
                    let sub = wh.and_then(|n| n.children.get(&name));
                    self.write_entry(&path, &tar_name, &meta, sub)?;
                }
            }
        }
        Ok(())
    }

    fn write_whiteout(&mut self, name: &[u8]) -> Result<()> {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_size(0);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.opts.source_date_epoch.unwrap_or(0));
        self.emit(h, name, None, &BTreeMap::new())?;
        self.entries += 1;
        Ok(())
    }

    fn xattrs(&self, path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let names = match xattr::list(path) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => return Ok(out),
            Err(e) => return Err(src_err("list xattrs of", path)(e)),
        };
        for n in names {
            let b = n.as_bytes();
            if b == b"security.selinux" || is_overlay_xattr(b) || std::str::from_utf8(b).is_err() {
                continue;
            }
            if let Some(v) = xattr::get(path, &n).map_err(src_err("read xattr of", path))? {
                out.insert(b.to_vec(), v);
            }
        }
        Ok(out)
    }

    fn overlay_checks(&self, path: &Path, meta: &Metadata) -> Result<bool> {
        if self.opts.mode != SourceMode::OverlayUpper {
            return Ok(false);
        }
        for prefix in ["trusted.overlay.", "user.overlay."] {
            if meta.is_file() || meta.is_dir() {
                let mc = format!("{prefix}metacopy");
                if xattr::get(path, OsStr::new(&mc))
                    .map_err(src_err("read xattr of", path))?
                    .is_some()
                {
                    return Err(WriteError::Unsupported {
                        path: path.to_path_buf(),
                        reason: "overlayfs metacopy entry; mount the overlay with metacopy=off"
                            .into(),
                    });
                }
            }
            if meta.is_dir() {
                let rd = format!("{prefix}redirect");
                if xattr::get(path, OsStr::new(&rd))
                    .map_err(src_err("read xattr of", path))?
                    .is_some()
                {
                    return Err(WriteError::Unsupported {
                        path: path.to_path_buf(),
                        reason:
                            "overlayfs redirected directory; mount the overlay with redirect_dir=off"
                                .into(),
                    });
                }
                let op = format!("{prefix}opaque");
                if xattr::get(path, OsStr::new(&op))
                    .map_err(src_err("read xattr of", path))?
                    .as_deref()
                    == Some(b"y")
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn write_entry(
        &mut self,
        path: &Path,
        name: &[u8],
        meta: &Metadata,
        wh: Option<&WhNode>,
    ) -> Result<()> {
        let ft = meta.file_type();
        if ft.is_socket() {
            self.warnings.push(format!(
                "skipped socket {} (sockets cannot be stored in a layer)",
                path.display()
            ));
            return Ok(());
        }
        let opaque = self.overlay_checks(path, meta)?;
        let mut h = Header::new_ustar();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(u64::from(meta.uid()));
        h.set_gid(u64::from(meta.gid()));
        h.set_mtime(self.clamp(meta.mtime()));
        h.set_size(0);

        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                h.set_entry_type(EntryType::Link);
                self.emit(h, name, Some(&first), &BTreeMap::new())?;
                self.entries += 1;
                return Ok(());
            }
            self.links.insert(key, name.to_vec());
        }
        let xattrs = self.xattrs(path)?;

        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            let mut dname = name.to_vec();
            dname.push(b'/');
            self.emit(h, &dname, None, &xattrs)?;
            self.entries += 1;
            if opaque {
                let marker = join_name(name, WHITEOUT_OPAQUE.as_bytes());
                self.write_whiteout(&marker)?;
            }
            return self.walk_dir(Some(path), name, wh);
        }
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(src_err("read link", path))?;
            h.set_entry_type(EntryType::Symlink);
            self.emit(h, name, Some(target.as_os_str().as_bytes()), &xattrs)?;
            self.entries += 1;
            return Ok(());
        }
        if ft.is_file() {
            let size = meta.len();
            h.set_entry_type(EntryType::Regular);
            h.set_size(size);
            let mut f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(src_err("open", path))?;
            self.emit(h, name, None, &xattrs)?;
            self.copy_exact(&mut f, size, path)?;
            self.entries += 1;
            return Ok(());
        }
        let rdev = meta.rdev();
        let (ty, dev) = if ft.is_char_device() {
            (EntryType::Char, true)
        } else if ft.is_block_device() {
            (EntryType::Block, true)
        } else if ft.is_fifo() {
            (EntryType::Fifo, false)
        } else {
            return Err(WriteError::Unsupported {
                path: path.to_path_buf(),
                reason: "unknown file type".into(),
            });
        };
        h.set_entry_type(ty);
        if dev {
            let (maj, min) = (libc::major(rdev), libc::minor(rdev));
            h.set_device_major(maj).map_err(WriteError::Output)?;
            h.set_device_minor(min).map_err(WriteError::Output)?;
        }
        self.emit(h, name, None, &xattrs)?;
        self.entries += 1;
        Ok(())
    }

    /// Write (PAX header +) header for `name`, with link target and xattrs.
    fn emit(
        &mut self,
        mut h: Header,
        name: &[u8],
        link: Option<&[u8]>,
        xattrs: &BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<()> {
        let mut pax: Vec<u8> = Vec::new();
        let mut records: BTreeMap<Vec<u8>, &[u8]> = BTreeMap::new();
        if !set_ustar_name(&mut h, name) {
            set_ustar_name(&mut h, truncated(name, 100));
            records.insert(b"path".to_vec(), name);
        }
        if let Some(l) = link {
            if l.len() > 100 {
                records.insert(b"linkpath".to_vec(), l);
                h.set_link_name_literal(truncated(l, 100))
                    .map_err(WriteError::Output)?;
            } else {
                h.set_link_name_literal(l).map_err(WriteError::Output)?;
            }
        }
        for (k, v) in xattrs {
            let mut key = PAX_XATTR_PREFIX.as_bytes().to_vec();
            key.extend_from_slice(k);
            records.insert(key, v);
        }
        for (k, v) in &records {
            pax_record(&mut pax, k, v);
        }
        if !pax.is_empty() {
            let mut ph = Header::new_ustar();
            ph.set_entry_type(EntryType::XHeader);
            let mut pname = b"PaxHeaders.0/".to_vec();
            let base = name.rsplit(|b| *b == b'/').find(|s| !s.is_empty());
            pname.extend_from_slice(truncated(base.unwrap_or(b"x"), 80));
            set_ustar_name(&mut ph, &pname);
            ph.set_mode(0o644);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mtime(0);
            ph.set_size(pax.len() as u64);
            ph.set_cksum();
            self.out
                .write_all(ph.as_bytes())
                .map_err(WriteError::Output)?;
            self.out.write_all(&pax).map_err(WriteError::Output)?;
            self.pad(pax.len() as u64)?;
        }
        h.set_cksum();
        self.out.write_all(h.as_bytes()).map_err(WriteError::Output)
    }

    fn pad(&mut self, len: u64) -> Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out
                .write_all(&[0u8; BLOCK][..BLOCK - rem])
                .map_err(WriteError::Output)?;
        }
        Ok(())
    }

    fn copy_exact(&mut self, f: &mut File, size: u64, path: &Path) -> Result<()> {
        let mut left = size;
        while left > 0 {
            let want = (self.buf.len() as u64).min(left) as usize;
            let n = match f.read(&mut self.buf[..want]) {
                Ok(0) => return Err(WriteError::FileChanged(path.to_path_buf())),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(src_err("read", path)(e)),
            };
            self.out
                .write_all(&self.buf[..n])
                .map_err(WriteError::Output)?;
            left -= n as u64;
        }
        self.pad(size)
    }
}

fn join_prefix(prefix: &str, name: &OsStr) -> Vec<u8> {
    let mut v = prefix.as_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v
}

/// True for an overlayfs whiteout: a 0/0 character device, or (newer
/// kernels) an empty file carrying an `overlay.whiteout` xattr.
fn is_overlay_whiteout(path: &Path, meta: &Metadata) -> Result<bool> {
    let ft = meta.file_type();
    if ft.is_char_device() && meta.rdev() == 0 {
        return Ok(true);
    }
    if ft.is_file() && meta.len() == 0 {
        for n in ["trusted.overlay.whiteout", "user.overlay.whiteout"] {
            if xattr::get(path, OsStr::new(n))
                .map_err(src_err("read xattr of", path))?
                .is_some()
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths() {
        let mut v = Vec::new();
        pax_record(&mut v, b"path", b"a");
        assert_eq!(v, b"9 path=a\n");
        let mut v = Vec::new();
        let val = vec![b'x'; 95]; // 4+95+3 = 102 -> "105 " crosses to 3 digits
        pax_record(&mut v, b"path", &val);
        let s = String::from_utf8(v.clone()).unwrap();
        let n: usize = s.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(n, v.len());
    }

    #[test]
    fn ustar_split() {
        let mut h = Header::new_ustar();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        assert!(set_ustar_name(&mut h, long.as_bytes()));
        assert_eq!(h.path_bytes().as_ref(), long.as_bytes());
        let too_long = "x".repeat(120);
        assert!(!set_ustar_name(&mut h, too_long.as_bytes()));
    }

    #[test]
    fn whiteout_tree_rejects_dotdot() {
        assert!(WhNode::build(&[PathBuf::from("a/../b")]).is_err());
        assert!(WhNode::build(&[PathBuf::from("/")]).is_err());
        let t = WhNode::build(&[PathBuf::from("/a/b"), PathBuf::from("c")]).unwrap();
        assert!(t.children[OsStr::new("a")].children[OsStr::new("b")].deleted);
        assert!(t.children[OsStr::new("c")].deleted);
    }
}
