//! binfmt_misc: which foreign architectures this machine can run through QEMU
//! user emulation, and registering or removing QEMU handlers.
//!
//! Handlers are matched the way the kernel does: a handler of type `M`
//! matches a file when `file[offset + i] & mask[i] == magic[i] & mask[i]`
//! for every byte of its magic. [`can_run`] builds representative ELF headers
//! (`ET_EXEC` and `ET_DYN`) for the platform's architecture and checks them
//! against the registered, enabled handlers.
//!
//! Only handlers with the `F` (fix binary) flag count: the kernel opens their
//! interpreter when they are registered, so they work inside a sandbox whose
//! root filesystem has no QEMU binary. [`register_qemu`] registers with `F`.

use std::io;
use std::path::{Path, PathBuf};

/// Where binfmt_misc is mounted.
pub const BINFMT_MISC_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Errors of this module; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    /// A binfmt_misc file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Writing a registration (or a removal) was refused.
    #[error("write {path}: {source}")]
    Write {
        /// The file (`register` or a handler).
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// binfmt_misc could not be mounted.
    #[error("mount binfmt_misc on {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A handler file does not have the expected format.
    #[error("{path}: malformed binfmt_misc entry: {reason}")]
    Parse {
        /// The handler file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The architecture is not one QEMU values are known for.
    #[error(
        "unknown architecture {arch:?} (known: amd64, arm64, arm, 386, ppc64le, s390x, riscv64)"
    )]
    UnknownArch {
        /// The architecture asked for.
        arch: String,
    },
    /// A registration the kernel would reject.
    #[error("invalid binfmt_misc registration {name:?}: {reason}")]
    Invalid {
        /// The handler name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// A registered handler, as `/proc/sys/fs/binfmt_misc/NAME` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    /// The handler's name (its file name).
    pub name: String,
    /// Whether it is enabled.
    pub enabled: bool,
    /// The interpreter the kernel runs.
    pub interpreter: PathBuf,
    /// Flags (`F`, `P`, `C`, `O`), as the kernel prints them.
    pub flags: String,
    /// Offset of the magic in the file.
    pub offset: usize,
    /// Magic bytes (empty for extension handlers).
    pub magic: Vec<u8>,
    /// Mask bytes; empty means all `0xff`.
    pub mask: Vec<u8>,
    /// File name extension, for type `E` handlers.
    pub extension: Option<String>,
}

impl Handler {
    /// Whether this (magic) handler matches a file starting with `data`.
    pub fn matches(&self, data: &[u8]) -> bool {
        if self.extension.is_some() || self.magic.is_empty() {
            return false;
        }
        let Some(window) = data.get(self.offset..self.offset + self.magic.len()) else {
            return false;
        };
        window
            .iter()
            .zip(&self.magic)
            .enumerate()
            .all(|(i, (d, m))| {
                let mask = self.mask.get(i).copied().unwrap_or(0xff);
                d & mask == m & mask
            })
    }

    /// Whether the handler has the `F` (fix binary) flag.
    pub fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }
}

/// Whether binaries of an architecture can run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// The CPU runs them.
    Native,
    /// A binfmt_misc handler (named) runs them through an emulator.
    Emulated {
        /// The handler's name.
        handler: String,
    },
    /// Neither.
    Missing,
}

/// QEMU's binfmt_misc values for one architecture (from `qemu-binfmt-conf.sh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QemuArch {
    /// The OCI architecture (`GOARCH`).
    pub arch: &'static str,
    /// QEMU's name for it (`qemu-<name>`).
    pub qemu: &'static str,
    /// ELF class: 1 for 32-bit, 2 for 64-bit.
    pub class: u8,
    /// ELF data encoding: 1 for little-endian, 2 for big-endian.
    pub data: u8,
    /// ELF `e_machine`.
    pub machine: u16,
    /// binfmt_misc magic (the first 20 bytes of the ELF header).
    pub magic: [u8; 20],
    /// binfmt_misc mask.
    pub mask: [u8; 20],
}

const MASK_X86: [u8; 20] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xfe, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xfe, 0xff, 0xff, 0xff,
];
const MASK_LE: [u8; 20] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xfe, 0xff, 0xff, 0xff,
];
const MASK_PPC64LE: [u8; 20] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xfe, 0xff, 0xff, 0x00,
];
const MASK_BE: [u8; 20] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xfe, 0xff, 0xff,
];

/// `\x7fELF`, class, data, version 1, then zeroes up to `e_type` = 2
/// (`ET_EXEC`; the masks also accept 3, `ET_DYN`) and `e_machine`.
const fn qemu_magic(class: u8, data: u8, machine: u16) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0] = 0x7f;
    m[1] = b'E';
    m[2] = b'L';
    m[3] = b'F';
    m[4] = class;
    m[5] = data;
    m[6] = 1;
    let mach = if data == 1 {
        machine.to_le_bytes()
    } else {
        machine.to_be_bytes()
    };
    if data == 1 {
        m[16] = 2;
    } else {
        m[17] = 2;
    }
    m[18] = mach[0];
    m[19] = mach[1];
    m
}

const fn qemu_arch_entry(
    arch: &'static str,
    qemu: &'static str,
    class: u8,
    data: u8,
    machine: u16,
    mask: [u8; 20],
) -> QemuArch {
    QemuArch {
        arch,
        qemu,
        class,
        data,
        machine,
        magic: qemu_magic(class, data, machine),
        mask,
    }
}

/// The architectures xbuild knows QEMU values for.
pub const QEMU_ARCHES: &[QemuArch] = &[
    qemu_arch_entry("amd64", "x86_64", 2, 1, 0x3e, MASK_X86),
    qemu_arch_entry("386", "i386", 1, 1, 0x03, MASK_X86),
    qemu_arch_entry("arm64", "aarch64", 2, 1, 0xb7, MASK_LE),
    qemu_arch_entry("arm", "arm", 1, 1, 0x28, MASK_LE),
    qemu_arch_entry("ppc64le", "ppc64le", 2, 1, 0x15, MASK_PPC64LE),
    qemu_arch_entry("s390x", "s390x", 2, 2, 0x16, MASK_BE),
    qemu_arch_entry("riscv64", "riscv64", 2, 1, 0xf3, MASK_LE),
];

/// Looks up an architecture by its OCI name (`arm64`), with an optional
/// `os/` prefix or `/variant` suffix (`linux/arm/v7`), or by its kernel or
/// QEMU name (`aarch64`, `x86_64`).
pub fn qemu_arch(platform_arch: &str) -> Option<&'static QemuArch> {
    let arch = platform_arch
        .strip_prefix("linux/")
        .unwrap_or(platform_arch);
    let arch = arch.split('/').next().unwrap_or(arch);
    let arch = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" => "386",
        "armhf" | "armel" => "arm",
        other => other,
    };
    QEMU_ARCHES.iter().find(|a| a.arch == arch)
}

/// The architectures this machine's CPU runs (for an amd64 host, also 386).
pub fn native_arches() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["amd64", "386"]
    } else if cfg!(target_arch = "aarch64") {
        &["arm64"]
    } else if cfg!(target_arch = "x86") {
        &["386"]
    } else if cfg!(target_arch = "arm") {
        &["arm"]
    } else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
        &["ppc64le"]
    } else if cfg!(target_arch = "s390x") {
        &["s390x"]
    } else if cfg!(target_arch = "riscv64") {
        &["riscv64"]
    } else {
        &[]
    }
}

/// A minimal 64-byte ELF header of type `e_type` (2 = `ET_EXEC`,
/// 3 = `ET_DYN`) for an architecture.
pub fn elf_header(arch: &QemuArch, e_type: u16) -> [u8; 64] {
    let mut h = [0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = arch.class;
    h[5] = arch.data;
    h[6] = 1;
    let (t, m, v) = if arch.data == 1 {
        (
            e_type.to_le_bytes(),
            arch.machine.to_le_bytes(),
            1u32.to_le_bytes(),
        )
    } else {
        (
            e_type.to_be_bytes(),
            arch.machine.to_be_bytes(),
            1u32.to_be_bytes(),
        )
    };
    h[16..18].copy_from_slice(&t);
    h[18..20].copy_from_slice(&m);
    h[20..24].copy_from_slice(&v);
    h
}

/// Whether `platform_arch` runs natively or through one of `handlers`
/// (enabled, with the `F` flag, matching both executables and PIEs).
pub fn support_with(platform_arch: &str, handlers: &[Handler]) -> Support {
    let Some(arch) = qemu_arch(platform_arch) else {
        return Support::Missing;
    };
    if native_arches().contains(&arch.arch) {
        return Support::Native;
    }
    let exec = elf_header(arch, 2);
    let dyn_ = elf_header(arch, 3);
    handlers
        .iter()
        .find(|h| h.enabled && h.fix_binary() && h.matches(&exec) && h.matches(&dyn_))
        .map_or(Support::Missing, |h| Support::Emulated {
            handler: h.name.clone(),
        })
}

/// Whether binaries of `platform_arch` (`arm64`, `linux/arm/v7`, ...) can
/// run here. An unreadable or globally disabled binfmt_misc counts as no
/// handlers.
pub fn can_run(platform_arch: &str) -> Support {
    let dir = Path::new(BINFMT_MISC_DIR);
    let enabled = std::fs::read_to_string(dir.join("status"))
        .map(|s| s.trim() == "enabled")
        .unwrap_or(false);
    let handlers = if enabled {
        list_in(dir).unwrap_or_default()
    } else {
        Vec::new()
    };
    support_with(platform_arch, &handlers)
}

/// Mounts binfmt_misc on [`BINFMT_MISC_DIR`] unless it is mounted already.
/// Returns whether it mounted it.
#[cfg(target_os = "linux")]
pub fn ensure_mounted() -> Result<bool, BinfmtError> {
    let dir = Path::new(BINFMT_MISC_DIR);
    if dir.join("register").exists() {
        return Ok(false);
    }
    use nix::mount::MsFlags;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(
        Some("binfmt_misc"),
        dir,
        Some("binfmt_misc"),
        flags,
        None::<&str>,
    )
    .map_err(|e| BinfmtError::Mount {
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    Ok(true)
}

/// Unmounts binfmt_misc from [`BINFMT_MISC_DIR`] (to undo
/// [`ensure_mounted`]; registered handlers stay in the kernel).
#[cfg(target_os = "linux")]
pub fn unmount() -> Result<(), BinfmtError> {
    let dir = Path::new(BINFMT_MISC_DIR);
    nix::mount::umount(dir).map_err(|e| BinfmtError::Mount {
        path: dir.to_path_buf(),
        source: e.into(),
    })
}

/// The handlers registered in [`BINFMT_MISC_DIR`].
pub fn list() -> Result<Vec<Handler>, BinfmtError> {
    list_in(Path::new(BINFMT_MISC_DIR))
}

/// The handlers registered in a binfmt_misc directory, sorted by name.
pub fn list_in(dir: &Path) -> Result<Vec<Handler>, BinfmtError> {
    let read_err = |path: &Path, source| BinfmtError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| read_err(dir, e))? {
        let entry = entry.map_err(|e| read_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "register" || name == "status" {
            continue;
        }
        let path = entry.path();
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push(
                parse_handler(&name, &text)
                    .map_err(|reason| BinfmtError::Parse { path, reason })?,
            ),
            // Removed while we were listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(&path, e)),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Parses the text of a handler file (`enabled`, `interpreter ...`,
/// `flags: ...`, `offset N`, `magic HEX`, `mask HEX` or `extension .EXT`).
pub fn parse_handler(name: &str, text: &str) -> Result<Handler, String> {
    let mut h = Handler {
        name: name.to_string(),
        enabled: false,
        interpreter: PathBuf::new(),
        flags: String::new(),
        offset: 0,
        magic: Vec::new(),
        mask: Vec::new(),
        extension: None,
    };
    let mut state_seen = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "enabled" | "disabled" => {
                h.enabled = key == "enabled";
                state_seen = true;
            }
            "interpreter" => h.interpreter = PathBuf::from(value),
            "flags:" => h.flags = value.to_string(),
            "offset" => h.offset = value.parse().map_err(|_| format!("bad offset {value:?}"))?,
            "magic" => h.magic = hex(value)?,
            "mask" => h.mask = hex(value)?,
            "extension" => h.extension = Some(value.to_string()),
            _ => {}
        }
    }
    if !state_seen {
        return Err("no enabled/disabled line".to_string());
    }
    if h.extension.is_none() && h.magic.is_empty() {
        return Err("neither magic nor extension".to_string());
    }
    Ok(h)
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return Err(format!("bad hex {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad hex {s:?}")))
        .collect()
}

/// A magic-type handler to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The handler name (its file name in binfmt_misc).
    pub name: String,
    /// Offset of the magic in the file.
    pub offset: usize,
    /// Magic bytes.
    pub magic: Vec<u8>,
    /// Mask bytes, as long as the magic, or empty for all `0xff`.
    pub mask: Vec<u8>,
    /// The interpreter.
    pub interpreter: PathBuf,
    /// Flags (`F`, `P`, `C`, `O`).
    pub flags: String,
}

impl Registration {
    /// The line to write to `register`: `:name:M:offset:magic:mask:interpreter:flags`,
    /// every magic and mask byte escaped as `\xHH`.
    pub fn line(&self) -> Result<String, BinfmtError> {
        let invalid = |reason: &str| BinfmtError::Invalid {
            name: self.name.clone(),
            reason: reason.to_string(),
        };
        let n = &self.name;
        if n.is_empty() || n == "." || n == ".." || n == "register" || n == "status" {
            return Err(invalid("reserved or empty name"));
        }
        if n.contains(['/', ':', '\n']) {
            return Err(invalid("the name contains '/', ':' or a newline"));
        }
        if self.magic.is_empty() || (!self.mask.is_empty() && self.mask.len() != self.magic.len()) {
            return Err(invalid("empty magic, or a mask of another length"));
        }
        let interp = self
            .interpreter
            .to_str()
            .ok_or_else(|| invalid("non-UTF-8 interpreter"))?;
        if !self.interpreter.is_absolute() || interp.contains([':', '\n']) {
            return Err(invalid(
                "the interpreter must be absolute, without ':' or newline",
            ));
        }
        if !self.flags.chars().all(|c| "FPCO".contains(c)) {
            return Err(invalid("flags other than F, P, C, O"));
        }
        let esc = |b: &[u8]| b.iter().map(|b| format!("\\x{b:02x}")).collect::<String>();
        Ok(format!(
            ":{}:M:{}:{}:{}:{}:{}",
            n,
            self.offset,
            esc(&self.magic),
            esc(&self.mask),
            interp,
            self.flags
        ))
    }
}

/// Registers a handler by writing to `register` in [`BINFMT_MISC_DIR`].
pub fn register(reg: &Registration) -> Result<(), BinfmtError> {
    let line = reg.line()?;
    write_file(&Path::new(BINFMT_MISC_DIR).join("register"), &line)
}

/// Registers QEMU for `arch` as `qemu-<qemu name>` with the standard magic
/// and mask and the `F` flag (the interpreter is opened now, so it works in
/// any root filesystem). An interpreter named `*-binfmt-P` (Debian's
/// wrappers in `/usr/libexec/qemu-binfmt/`) also gets `P`: it expects the
/// original `argv[0]` as an extra argument and hands it to the program, so
/// busybox-style multi-call binaries see the name they were run by.
/// Returns the handler name.
pub fn register_qemu(arch: &str, interpreter: &Path) -> Result<String, BinfmtError> {
    let a = qemu_arch(arch).ok_or_else(|| BinfmtError::UnknownArch {
        arch: arch.to_string(),
    })?;
    let reg = Registration {
        name: format!("qemu-{}", a.qemu),
        offset: 0,
        magic: a.magic.to_vec(),
        mask: a.mask.to_vec(),
        interpreter: interpreter.to_path_buf(),
        flags: qemu_flags(interpreter).to_string(),
    };
    register(&reg)?;
    Ok(reg.name)
}

/// The binfmt_misc flags for a QEMU interpreter: `PF` for Debian's
/// `*-binfmt-P` wrappers (they take the preserved `argv[0]`), else `F`.
pub fn qemu_flags(interpreter: &Path) -> &'static str {
    let preserve = interpreter
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with("-binfmt-P"));
    if preserve {
        "PF"
    } else {
        "F"
    }
}

/// Finds a static QEMU user emulator for `arch` on this machine, in order:
/// Debian's `/usr/libexec/qemu-binfmt/<qemu>-binfmt-P`, then
/// `qemu-<qemu>-static` and `qemu-<qemu>` on `PATH`. Static binaries are
/// required: with the `F` flag the kernel opens the interpreter on the host,
/// but it then runs inside the build's root filesystem, which has no host
/// libraries.
pub fn find_qemu(arch: &str) -> Option<PathBuf> {
    let a = qemu_arch(arch)?;
    let debian = Path::new("/usr/libexec/qemu-binfmt").join(format!("{}-binfmt-P", a.qemu));
    if debian.exists() {
        return Some(debian);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for name in [
        format!("qemu-{}-static", a.qemu),
        format!("qemu-{}", a.qemu),
    ] {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join(&name);
            if cand.is_file() && is_static(&cand) {
                return Some(cand);
            }
        }
    }
    None
}

/// Whether `path` is an ELF file without a `PT_INTERP` program header.
fn is_static(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let off = phoff + i * phentsize;
        // PT_INTERP = 3
        off + 4 > data.len()
            || u32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]) != 3
    })
}

/// Removes a handler (writes `-1` to its file).
pub fn unregister(name: &str) -> Result<(), BinfmtError> {
    if name.is_empty() || name.contains('/') || name == "register" || name == "status" {
        return Err(BinfmtError::Invalid {
            name: name.to_string(),
            reason: "not a handler name".to_string(),
        });
    }
    write_file(&Path::new(BINFMT_MISC_DIR).join(name), "-1")
}

fn write_file(path: &Path, text: &str) -> Result<(), BinfmtError> {
    use std::io::Write;
    // One write(2): binfmt_misc parses each write on its own.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| BinfmtError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    f.write_all(text.as_bytes())
        .map_err(|source| BinfmtError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text the kernel prints for Debian's qemu-user-static aarch64 handler.
    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n\
        flags: POCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\n\
        mask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn handler(arch: &str) -> Handler {
        let a = qemu_arch(arch).unwrap();
        Handler {
            name: format!("qemu-{}", a.qemu),
            enabled: true,
            interpreter: PathBuf::from("/usr/bin/qemu"),
            flags: "F".to_string(),
            offset: 0,
            magic: a.magic.to_vec(),
            mask: a.mask.to_vec(),
            extension: None,
        }
    }

    #[test]
    fn magic_values_match_qemu_binfmt_conf() {
        // Spot checks against the literal strings of qemu-binfmt-conf.sh.
        let a = qemu_arch("arm64").unwrap();
        assert_eq!(
            a.magic,
            *b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
        );
        let s = qemu_arch("s390x").unwrap();
        assert_eq!(
            s.magic,
            *b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x16"
        );
        let parsed = parse_handler("qemu-aarch64", AARCH64).unwrap();
        assert_eq!(parsed.magic, a.magic.to_vec());
        assert_eq!(parsed.mask, a.mask.to_vec());
        assert!(parsed.enabled && parsed.fix_binary());
        assert_eq!(qemu_arch("linux/arm/v7").unwrap().qemu, "arm");
        assert_eq!(qemu_arch("x86_64").unwrap().arch, "amd64");
        assert!(qemu_arch("mips").is_none());
    }

    #[test]
    fn elf_headers_match_only_their_handler() {
        for a in QEMU_ARCHES {
            for e_type in [2, 3] {
                let header = elf_header(a, e_type);
                for b in QEMU_ARCHES {
                    let h = handler(b.arch);
                    assert_eq!(
                        h.matches(&header),
                        a.arch == b.arch,
                        "{} vs {}",
                        a.arch,
                        b.arch
                    );
                }
            }
            // A relocatable object (ET_REL = 1) is not run by QEMU handlers.
            assert!(!handler(a.arch).matches(&elf_header(a, 1)));
            // Truncated files never match.
            assert!(!handler(a.arch).matches(&elf_header(a, 2)[..19]));
        }
    }

    #[test]
    fn support_needs_enabled_fix_binary_handlers() {
        let foreign = if native_arches().contains(&"arm64") {
            "amd64"
        } else {
            "arm64"
        };
        assert_eq!(support_with(native_arches()[0], &[]), Support::Native);
        assert_eq!(support_with(foreign, &[]), Support::Missing);
        let mut h = handler(foreign);
        assert_eq!(
            support_with(foreign, std::slice::from_ref(&h)),
            Support::Emulated {
                handler: h.name.clone()
            }
        );
        h.flags = "P".to_string();
        assert_eq!(
            support_with(foreign, std::slice::from_ref(&h)),
            Support::Missing
        );
        h.flags = "F".to_string();
        h.enabled = false;
        assert_eq!(support_with(foreign, &[h]), Support::Missing);
        assert_eq!(support_with("mips64", &[]), Support::Missing);
    }

    #[test]
    fn registration_line() {
        let reg = Registration {
            name: "qemu-riscv64".to_string(),
            offset: 0,
            magic: vec![0x7f, b'E'],
            mask: vec![0xff, 0xfe],
            interpreter: PathBuf::from("/usr/bin/qemu-riscv64-static"),
            flags: "F".to_string(),
        };
        assert_eq!(
            reg.line().unwrap(),
            ":qemu-riscv64:M:0:\\x7f\\x45:\\xff\\xfe:/usr/bin/qemu-riscv64-static:F"
        );
        let bad = Registration {
            name: "a/b".to_string(),
            ..reg.clone()
        };
        assert!(bad.line().is_err());
        let bad = Registration {
            flags: "X".to_string(),
            ..reg
        };
        assert!(bad.line().is_err());
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(parse_handler("x", "interpreter /x\n").is_err());
        assert!(parse_handler("x", "enabled\nmagic 7g\n").is_err());
        let ext = parse_handler("x", "enabled\ninterpreter /x\nflags: \nextension .exe\n").unwrap();
        assert_eq!(ext.extension.as_deref(), Some(".exe"));
        assert!(!ext.matches(b"MZ"));
    }
}
