//! Where xbuild keeps its state and reads its configuration.
//!
//! - state: `$XBUILD_ROOT`, else `/var/lib/xbuild` when running as root, else
//!   `$XDG_DATA_HOME/xbuild` (`~/.local/share/xbuild`);
//! - the content store (blobs and image tags): `$XBUILD_ROOT/content`;
//! - the build cache: `$XBUILD_ROOT/cache`;
//! - configuration: `$XBUILD_CONFIG`, else `$XDG_CONFIG_HOME/xbuild/config.yaml`
//!   (`~/.config/xbuild/config.yaml`).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use xbuild_oci::BlobStore;

/// The state directory when running as root and `XBUILD_ROOT` is unset.
pub const SYSTEM_ROOT: &str = "/var/lib/xbuild";

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> Result<PathBuf> {
    match env_path("HOME") {
        Some(h) if h.is_absolute() => Ok(h),
        _ => bail!("cannot find a home directory: HOME is unset; set XBUILD_ROOT"),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `$XBUILD_ROOT` or its default.
pub fn xbuild_root() -> Result<PathBuf> {
    if let Some(p) = env_path("XBUILD_ROOT") {
        return Ok(p);
    }
    if is_root() {
        return Ok(PathBuf::from(SYSTEM_ROOT));
    }
    let data = match env_path("XDG_DATA_HOME") {
        Some(p) if p.is_absolute() => p,
        _ => home()?.join(".local").join("share"),
    };
    Ok(data.join("xbuild"))
}

/// The content store's directory under `root`.
pub fn content_dir(root: &std::path::Path) -> PathBuf {
    root.join("content")
}

/// The build cache's directory under `root`.
pub fn cache_dir(root: &std::path::Path) -> PathBuf {
    root.join("cache")
}

/// The configuration file: `$XBUILD_CONFIG` or its default (which may not exist).
pub fn config_file() -> Result<PathBuf> {
    if let Some(p) = env_path("XBUILD_CONFIG") {
        return Ok(p);
    }
    let dir = match env_path("XDG_CONFIG_HOME") {
        Some(p) if p.is_absolute() => p,
        _ => home()?.join(".config"),
    };
    Ok(dir.join("xbuild").join("config.yaml"))
}

/// Creates the state directory when missing, private to its owner (0700:
/// it holds build contexts, layers and cache records).
pub fn ensure_root(root: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if root.is_dir() {
        return Ok(());
    }
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", root.display())),
    }
}

/// At the start of a command: finishes removals and removes scratch
/// directories, mounts and secrets tmpfs of killed processes under the
/// state directory (live builds' ones are locked and kept). Best effort.
pub fn cleanup_state() {
    let Ok(root) = xbuild_root() else {
        return;
    };
    if root.is_dir() {
        xbuild_engine::housekeeping::cleanup_leftovers(&root);
    }
}

/// Open (creating if needed) the content store under `$XBUILD_ROOT`.
pub fn open_store() -> Result<BlobStore> {
    let root = xbuild_root()?;
    ensure_root(&root)?;
    let dir = content_dir(&root);
    BlobStore::open(&dir).with_context(|| format!("opening the image store at {}", dir.display()))
}
