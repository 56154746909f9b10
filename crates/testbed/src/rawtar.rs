//! A byte-level tar writer for hostile archives: it writes whatever name,
//! link name and type it is given (`../x`, `/abs`, device nodes, links
//! pointing anywhere), which well-behaved tar libraries refuse to do. Used
//! by the path-safety tests and as a seed for the tar-apply fuzz target.

/// The type of one raw tar entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawKind {
    /// A regular file.
    File,
    /// A hard link (`link` is the target).
    HardLink,
    /// A symbolic link (`link` is the target).
    Symlink,
    /// A character device (major, minor).
    CharDevice(u32, u32),
    /// A block device (major, minor).
    BlockDevice(u32, u32),
    /// A FIFO.
    Fifo,
    /// A directory.
    Dir,
}

/// One entry of a [`RawTar`].
#[derive(Debug, Clone)]
pub struct RawEntry {
    /// The name, written as is (at most 100 bytes, or a PAX header is used).
    pub name: String,
    /// What it is.
    pub kind: RawKind,
    /// Link target for links.
    pub link: String,
    /// Contents for files.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// An uncompressed tar built entry by entry, with no sanitising at all.
#[derive(Debug, Default, Clone)]
pub struct RawTar {
    out: Vec<u8>,
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    field[..width].copy_from_slice(&s.as_bytes()[s.len() - width..]);
    field[width] = 0;
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

impl RawTar {
    /// An empty archive.
    pub fn new() -> RawTar {
        RawTar::default()
    }

    fn header(
        &mut self,
        name: &[u8],
        typeflag: u8,
        link: &[u8],
        size: u64,
        mode: u32,
        dev: (u32, u32),
    ) {
        let mut h = [0u8; 512];
        h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 1_700_000_000);
        h[156] = typeflag;
        h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        octal(&mut h[329..337], u64::from(dev.0));
        octal(&mut h[337..345], u64::from(dev.1));
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.out.extend_from_slice(&h);
    }

    fn pax(&mut self, key: &str, value: &str) {
        let body_len = key.len() + value.len() + 3;
        // The record length counts its own digits.
        let mut len = body_len + body_len.to_string().len();
        if len.to_string().len() != body_len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        let record = format!("{len} {key}={value}\n");
        self.header(
            b"././@PaxHeader",
            b'x',
            b"",
            record.len() as u64,
            0o644,
            (0, 0),
        );
        self.out.extend_from_slice(record.as_bytes());
        pad(&mut self.out);
    }

    /// Appends `e` exactly as described.
    pub fn push(&mut self, e: &RawEntry) -> &mut RawTar {
        if e.name.len() > 100 {
            self.pax("path", &e.name);
        }
        if e.link.len() > 100 {
            self.pax("linkpath", &e.link);
        }
        let (flag, dev) = match e.kind {
            RawKind::File => (b'0', (0, 0)),
            RawKind::HardLink => (b'1', (0, 0)),
            RawKind::Symlink => (b'2', (0, 0)),
            RawKind::CharDevice(a, b) => (b'3', (a, b)),
            RawKind::BlockDevice(a, b) => (b'4', (a, b)),
            RawKind::Dir => (b'5', (0, 0)),
            RawKind::Fifo => (b'6', (0, 0)),
        };
        let size = if e.kind == RawKind::File {
            e.data.len() as u64
        } else {
            0
        };
        self.header(
            e.name.as_bytes(),
            flag,
            e.link.as_bytes(),
            size,
            e.mode,
            dev,
        );
        if e.kind == RawKind::File {
            self.out.extend_from_slice(&e.data);
            pad(&mut self.out);
        }
        self
    }

    /// Appends a regular file.
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut RawTar {
        self.push(&RawEntry {
            name: name.into(),
            kind: RawKind::File,
            link: String::new(),
            data: data.to_vec(),
            mode: 0o644,
        })
    }

    /// Appends a symbolic link `name -> target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut RawTar {
        self.push(&RawEntry {
            name: name.into(),
            kind: RawKind::Symlink,
            link: target.into(),
            data: Vec::new(),
            mode: 0o777,
        })
    }

    /// Appends a hard link `name` to `target`.
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut RawTar {
        self.push(&RawEntry {
            name: name.into(),
            kind: RawKind::HardLink,
            link: target.into(),
            data: Vec::new(),
            mode: 0o644,
        })
    }

    /// Appends a directory.
    pub fn dir(&mut self, name: &str) -> &mut RawTar {
        self.push(&RawEntry {
            name: name.into(),
            kind: RawKind::Dir,
            link: String::new(),
            data: Vec::new(),
            mode: 0o755,
        })
    }

    /// Appends a device node, FIFO or any other entry kind without data.
    pub fn node(&mut self, name: &str, kind: RawKind) -> &mut RawTar {
        self.push(&RawEntry {
            name: name.into(),
            kind,
            link: String::new(),
            data: Vec::new(),
            mode: 0o666,
        })
    }

    /// The archive bytes, with the two zero blocks that end it.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.out.clone();
        out.resize(out.len() + 1024, 0);
        out
    }
}

/// A hostile layer: entries that try to leave the extraction root in every
/// way a tar can that Docker still applies (with names cleaned and links
/// resolved inside the root): `../` names, absolute names, symlinks to
/// `outside_dir` then written through, a symlink to `outside_file` replaced
/// by a file, device nodes and FIFOs with escaping names. `tag` makes the names unique; the archive also holds
/// `inside-<tag>` at its root, the one marker a correct apply must produce
/// at the image root.
pub fn hostile_layer(tag: &str, outside_dir: &str, outside_file: &str) -> Vec<u8> {
    let mut t = RawTar::new();
    t.file(&format!("inside-{tag}"), b"inside\n");
    for depth in 1..=12 {
        let name = format!("{}esc{depth}-{tag}", "../".repeat(depth));
        t.file(&name, b"escaped by ../\n");
    }
    t.file(&format!("./../../dotesc-{tag}"), b"escaped by ./../\n");
    t.file(&format!("/abs-{tag}"), b"absolute name\n");
    t.file(
        &format!("/../../../absdot-{tag}"),
        b"absolute name with ..\n",
    );
    // A symlink to a directory outside, then a file written through it.
    t.symlink("evil-dir", outside_dir);
    t.file(
        &format!("evil-dir/through-{tag}"),
        b"written through a symlink\n",
    );
    t.symlink("evil-up", &"../".repeat(16));
    let rel_outside = outside_dir.trim_start_matches('/');
    t.file(
        &format!("evil-up/{rel_outside}/through-up-{tag}"),
        b"written through a ../ symlink\n",
    );
    // A symlink to a file outside, then the link's name written as a file.
    t.symlink("evil-file", outside_file);
    t.file("evil-file", b"overwritten through a symlink\n");
    // Device nodes and FIFOs, inside and with escaping names.
    t.node(&format!("dev-null-{tag}"), RawKind::CharDevice(1, 3));
    t.node(&format!("../../devesc-{tag}"), RawKind::CharDevice(1, 3));
    t.node(&format!("/blkesc-{tag}"), RawKind::BlockDevice(7, 0));
    t.node(&format!("../fifoesc-{tag}"), RawKind::Fifo);
    t.finish()
}

/// Hard links whose targets lie outside the root (absolute, `../`, and
/// through a symlink that points outside), each then written to. A safe
/// applier refuses them (the target is not in the root) or links inside
/// the root; it never links to, or writes, `outside_file`.
pub fn hostile_hardlinks(tag: &str, outside_dir: &str, outside_file: &str) -> Vec<u8> {
    let mut t = RawTar::new();
    t.file(&format!("inside-{tag}"), b"inside\n");
    t.symlink("evil-dir", outside_dir);
    let base = outside_file.rsplit('/').next().unwrap_or("");
    t.hardlink(&format!("hard-via-link-{tag}"), &format!("evil-dir/{base}"));
    t.hardlink(
        &format!("hard-rel-{tag}"),
        &format!(
            "{}{}",
            "../".repeat(16),
            outside_file.trim_start_matches('/')
        ),
    );
    t.hardlink(&format!("hard-abs-{tag}"), outside_file);
    t.file(
        &format!("hard-abs-{tag}"),
        b"overwritten through a hard link\n",
    );
    t.finish()
}
