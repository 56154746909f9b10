//! [`BusyboxRootfs`]: a minimal root filesystem made from Debian's
//! `busybox-static` for amd64 or arm64.
//!
//! The host's own architecture uses the installed `/bin/busybox` when it is
//! statically linked. Another architecture's package is fetched with
//! `apt-get download busybox-static:<arch>` into a cache directory and
//! unpacked with `dpkg-deb -x`. That needs the architecture known to dpkg;
//! [`ensure_foreign_arch`] runs, only when it is missing (as root):
//!
//! ```sh
//! dpkg --add-architecture arm64 && apt-get update
//! ```
//!
//! `scripts/setup.sh` does the same so that tests need not.

use crate::{io_err, run, Result, TestbedError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Applets linked into `bin/` (all from busybox).
pub const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "ls",
    "cat",
    "echo",
    "uname",
    "mkdir",
    "id",
    "env",
    "sleep",
    "true",
    "false",
    "cp",
    "mv",
    "rm",
    "ln",
    "chmod",
    "chown",
    "touch",
    "grep",
    "sed",
    "awk",
    "head",
    "tail",
    "wc",
    "pwd",
    "test",
    "[",
    "printf",
    "sort",
    "uniq",
    "tr",
    "cut",
    "date",
    "hostname",
    "whoami",
    "find",
    "xargs",
    "tar",
    "gzip",
    "gunzip",
    "stat",
    "readlink",
    "basename",
    "dirname",
    "which",
    "ps",
    "kill",
    "du",
    "df",
    "expr",
    "seq",
    "tee",
    "md5sum",
    "sha256sum",
    "rmdir",
    "mktemp",
    "realpath",
    "nproc",
    "arch",
    "vi",
    "wget",
    "less",
    "diff",
];

/// The Debian architecture name of this machine (`amd64`, `arm64`).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "arm" => "armhf",
        other => other,
    }
}

/// Where downloaded packages are kept: `$XBUILD_TESTBED_CACHE`, else
/// `/var/cache/xbuild-testbed` when writable, else
/// `$CARGO_TARGET_DIR/xbuild-testbed-cache` (or `target/...`).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XBUILD_TESTBED_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let system = PathBuf::from("/var/cache/xbuild-testbed");
    if std::fs::create_dir_all(&system).is_ok() && writable(&system) {
        return system;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("..")
                .join("target")
        });
    target.join("xbuild-testbed-cache")
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// An exclusive `flock` on a file, released on drop.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock> {
        use std::os::unix::io::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(format!("open {}", path.display())))?;
        // SAFETY: a valid fd owned by `f`.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(TestbedError::Io(
                format!("lock {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a valid fd owned by self.0.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Make dpkg/apt know `arch` (for `apt-get download pkg:arch`): when it is
/// neither the native nor a foreign architecture yet, run
/// `dpkg --add-architecture ARCH && apt-get update` (needs root).
pub fn ensure_foreign_arch(arch: &str) -> Result<()> {
    let native = String::from_utf8_lossy(&run(Command::new("dpkg").arg("--print-architecture"))?)
        .trim()
        .to_string();
    if native == arch {
        return Ok(());
    }
    let foreign = String::from_utf8_lossy(&run(
        Command::new("dpkg").arg("--print-foreign-architectures")
    )?)
    .to_string();
    if foreign.split_whitespace().any(|a| a == arch) {
        return Ok(());
    }
    run(Command::new("dpkg").args(["--add-architecture", arch]))?;
    run(Command::new("apt-get").args(["update", "-q"]))?;
    Ok(())
}

/// Whether `path` is an ELF executable without an interpreter (static).
fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false;
    }
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64at(32), u16at(54), u16at(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        // PT_INTERP = 3
        o + 4 > b.len() || u32at(o) != 3
    })
}

/// A static busybox binary for Debian architecture `arch` (`amd64`,
/// `arm64`): the installed one for the host's architecture, else one
/// downloaded and unpacked into [`cache_dir`].
pub fn busybox_binary(arch: &str) -> Result<PathBuf> {
    if arch == host_arch() {
        for p in ["/bin/busybox", "/usr/bin/busybox"] {
            if is_static_elf(Path::new(p)) {
                return Ok(PathBuf::from(p));
            }
        }
    }
    let cache = cache_dir().join(format!("busybox-static-{arch}"));
    std::fs::create_dir_all(&cache).map_err(io_err(format!("create {}", cache.display())))?;
    let _lock = FileLock::acquire(&cache.join(".lock"))?;
    let root = cache.join("root");
    for cand in ["bin/busybox", "usr/bin/busybox"] {
        let p = root.join(cand);
        if p.is_file() {
            return Ok(p);
        }
    }
    let deb = find_deb(&cache);
    let deb = match deb {
        Some(d) => d,
        None => {
            ensure_foreign_arch(arch)?;
            run(Command::new("apt-get")
                .args(["download", "-q", &format!("busybox-static:{arch}")])
                .current_dir(&cache))?;
            find_deb(&cache).ok_or_else(|| TestbedError::Command {
                cmd: format!("apt-get download busybox-static:{arch}"),
                detail: "no .deb appeared".into(),
            })?
        }
    };
    let tmp = cache.join("root.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    std::fs::rename(&tmp, &root).map_err(io_err("move unpacked busybox into place"))?;
    for cand in ["bin/busybox", "usr/bin/busybox"] {
        let p = root.join(cand);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(TestbedError::Command {
        cmd: format!("dpkg-deb -x {}", deb.display()),
        detail: "package has no busybox binary".into(),
    })
}

fn find_deb(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "deb")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("busybox-static_"))
        })
}

/// A root filesystem in a temp dir: `bin/busybox` with applet symlinks,
/// `usr/bin/env`, `etc/passwd`, `etc/group`, `tmp` (1777), `root`, and
/// empty `proc`, `sys`, `dev`. Removed on drop.
#[derive(Debug)]
pub struct BusyboxRootfs {
    dir: tempfile::TempDir,
    arch: String,
}

impl BusyboxRootfs {
    /// Build one for Debian architecture `arch` (`amd64`, `arm64`).
    pub fn build(arch: &str) -> Result<BusyboxRootfs> {
        let bin = busybox_binary(arch)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("busybox-rootfs-{arch}-"))
            .tempdir()
            .map_err(io_err("create temp dir"))?;
        populate(dir.path(), &bin)?;
        Ok(BusyboxRootfs {
            dir,
            arch: arch.to_string(),
        })
    }

    /// Like [`BusyboxRootfs::build`], printing `SKIPPED` and returning
    /// `None` when the package cannot be had (no dpkg/apt, not root for a
    /// foreign architecture, no package mirror).
    pub fn build_or_skip(arch: &str) -> Option<BusyboxRootfs> {
        match BusyboxRootfs::build(arch) {
            Ok(r) => Some(r),
            Err(e) => {
                crate::skip(&format!("busybox-static for {arch} unavailable: {e}"));
                None
            }
        }
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The Debian architecture.
    pub fn arch(&self) -> &str {
        &self.arch
    }
}

/// The Dockerfile of the test bed's base image: one `FROM scratch` image
/// per target architecture, its root filesystem copied from
/// `rootfs-$TARGETARCH/` in the build context.
pub const BASE_DOCKERFILE: &str =
    "FROM scratch\nARG TARGETARCH\nCOPY rootfs-${TARGETARCH}/ /\nCMD [\"/bin/sh\"]\n";

/// Write a build context for the busybox base image into `dir`: a
/// `Dockerfile` ([`BASE_DOCKERFILE`]) and one `rootfs-<arch>/` per Debian
/// architecture in `arches`. Building it with
/// `xbuild build --platform linux/amd64,linux/arm64 -t REF --push DIR`
/// publishes the multi-platform base image tests and the demo build on.
pub fn write_base_context(dir: &Path, arches: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    for arch in arches {
        let bin = busybox_binary(arch)?;
        let root = dir.join(format!("rootfs-{arch}"));
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(io_err(format!("remove {}", root.display())))?;
        }
        populate(&root, &bin)?;
    }
    std::fs::write(dir.join("Dockerfile"), BASE_DOCKERFILE)
        .map_err(io_err("write base Dockerfile"))?;
    Ok(())
}

fn populate(root: &Path, busybox: &Path) -> Result<()> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let mk = |p: &str| {
        let d = root.join(p);
        std::fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))
    };
    for d in [
        "bin", "etc", "tmp", "root", "proc", "sys", "dev", "usr/bin", "var/tmp",
    ] {
        mk(d)?;
    }
    for d in ["tmp", "var/tmp"] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o1777))
            .map_err(io_err("chmod tmp"))?;
    }
    std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("chmod root"))?;
    let dst = root.join("bin/busybox");
    std::fs::copy(busybox, &dst).map_err(io_err(format!("copy {}", busybox.display())))?;
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod busybox"))?;
    for a in APPLETS {
        symlink("busybox", root.join("bin").join(a)).map_err(io_err(format!("link bin/{a}")))?;
    }
    symlink("/bin/busybox", root.join("usr/bin/env")).map_err(io_err("link usr/bin/env"))?;
    let write =
        |p: &str, s: &str| std::fs::write(root.join(p), s).map_err(io_err(format!("write {p}")));
    write(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    write("etc/group", "root:x:0:\nnogroup:x:65534:\n")?;
    write("etc/hostname", "xbuild\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_busybox_is_static() {
        if host_arch() != "amd64" || !Path::new("/bin/busybox").exists() {
            crate::skip("no /bin/busybox on an amd64 host");
            return;
        }
        assert!(is_static_elf(Path::new("/bin/busybox")));
        assert!(!is_static_elf(Path::new("/bin/ls")) || !Path::new("/bin/ls").exists());
    }

    #[test]
    fn host_rootfs_runs() {
        let Some(fs) = BusyboxRootfs::build_or_skip(host_arch()) else {
            return;
        };
        let root = fs.path();
        assert!(root
            .join("bin/sh")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::read_to_string(root.join("etc/passwd"))
            .unwrap()
            .starts_with("root:x:0:0:"));
        let out = Command::new(root.join("bin/busybox"))
            .args(["echo", "hi"])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"hi\n");
    }

    #[test]
    fn arm64_rootfs_has_aarch64_busybox() {
        if crate::require_cmd("apt-get").is_none() || crate::require_cmd("dpkg-deb").is_none() {
            return;
        }
        let Some(fs) = BusyboxRootfs::build_or_skip("arm64") else {
            return;
        };
        let b = std::fs::read(fs.path().join("bin/busybox")).unwrap();
        assert_eq!(&b[..4], b"\x7fELF");
        // e_machine 183 = EM_AARCH64
        assert_eq!(u16::from_le_bytes([b[18], b[19]]), 183);
        assert!(is_static_elf(&fs.path().join("bin/busybox")));
        assert_eq!(fs.arch(), "arm64");
    }
}
