//! `xbuild binfmt status` and `xbuild binfmt install`: which platforms this
//! machine can run, and registering QEMU user emulators for the rest.

use anyhow::{anyhow, bail, Context, Result};
use xbuild_oci::Platform;
use xbuild_sandbox::binfmt::{self, Support, BINFMT_MISC_DIR};

/// The platforms `status` reports and `install` registers by default.
pub(crate) const KNOWN: &[&str] = &[
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/386",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
];

fn mounted() -> bool {
    std::path::Path::new(BINFMT_MISC_DIR)
        .join("register")
        .exists()
}

fn handler(name: &str) -> Option<binfmt::Handler> {
    binfmt::list().ok()?.into_iter().find(|h| h.name == name)
}

/// `xbuild binfmt status`.
pub fn cmd_status() -> Result<()> {
    if !mounted() {
        println!(
            "binfmt_misc is not mounted at {BINFMT_MISC_DIR}: only native platforms run \
             (`xbuild binfmt install` mounts it and registers QEMU)"
        );
    }
    println!(
        "{:<15} {:<9} {:<15} INTERPRETER",
        "PLATFORM", "STATUS", "HANDLER"
    );
    for p in KNOWN {
        let platform = Platform::parse(p).map_err(|e| anyhow!("{p}: {e}"))?;
        let arch = platform.architecture();
        match binfmt::can_run(arch) {
            Support::Native => println!("{p:<15} {:<9} {:<15} -", "native", "-"),
            Support::Emulated { handler: name } => {
                let detail = handler(&name).map_or_else(String::new, |h| {
                    format!("{} (flags {})", h.interpreter.display(), h.flags)
                });
                println!("{p:<15} {:<9} {name:<15} {detail}", "emulated");
            }
            Support::Missing => {
                let hint = match binfmt::find_qemu(arch) {
                    Some(q) => format!(
                        "available: {} (run `xbuild binfmt install {p}`)",
                        q.display()
                    ),
                    None => "no emulator installed (apt-get install qemu-user-static)".into(),
                };
                println!("{p:<15} {:<9} {:<15} {hint}", "missing", "-");
            }
        }
    }
    Ok(())
}

/// `xbuild binfmt install [PLATFORM...]`.
pub fn cmd_install(platforms: &[String]) -> Result<()> {
    let explicit = !platforms.is_empty();
    let wanted: Vec<Platform> = if explicit {
        let mut v = Vec::new();
        for p in platforms {
            v.extend(Platform::parse_list(p).map_err(|e| anyhow!("--platform {p:?}: {e}"))?);
        }
        v
    } else {
        KNOWN
            .iter()
            .filter_map(|p| Platform::parse(p).ok())
            .filter(|p| binfmt::find_qemu(p.architecture()).is_some())
            .collect()
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("registering binfmt_misc handlers needs root: run `sudo xbuild binfmt install`");
    }
    if binfmt::ensure_mounted().context("mounting binfmt_misc")? {
        println!("mounted binfmt_misc on {BINFMT_MISC_DIR}");
    }
    let mut failed = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in &wanted {
        let arch = p.architecture();
        let Some(q) = binfmt::qemu_arch(arch) else {
            failed.push(format!(
                "{p}: QEMU values for this architecture are not known"
            ));
            continue;
        };
        if !seen.insert(q.qemu) {
            continue;
        }
        match binfmt::can_run(arch) {
            Support::Native => {
                println!("{p}: native, nothing to register");
                continue;
            }
            Support::Emulated { handler } => {
                println!("{p}: already emulated by handler {handler}");
                continue;
            }
            Support::Missing => {}
        }
        let Some(interp) = binfmt::find_qemu(arch) else {
            failed.push(format!(
                "{p}: no static QEMU emulator found (looked for \
                 /usr/libexec/qemu-binfmt/{q}-binfmt-P and qemu-{q}-static on PATH); \
                 install Debian's qemu-user-static",
                q = q.qemu
            ));
            continue;
        };
        // A stale or disabled handler of the same name (for example one
        // registered without the F flag) is replaced.
        let name = format!("qemu-{}", q.qemu);
        if handler(&name).is_some() {
            binfmt::unregister(&name).with_context(|| format!("removing the old {name}"))?;
        }
        match binfmt::register_qemu(arch, &interp) {
            Ok(name) => println!(
                "{p}: registered {name} -> {} (flags {})",
                interp.display(),
                binfmt::qemu_flags(&interp)
            ),
            // Another process may have registered it meanwhile.
            Err(_) if matches!(binfmt::can_run(arch), Support::Emulated { .. }) => {
                println!("{p}: registered meanwhile by another process");
            }
            Err(e) => failed.push(format!("{p}: {e}")),
        }
    }
    if explicit && wanted.is_empty() {
        bail!("no platform given");
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}
