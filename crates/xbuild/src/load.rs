//! `--load` (and `-o type=docker` without `dest`): xbuild has no daemon, so
//! the image always goes into xbuild's own image store (`xbuild images`),
//! and then into a local container engine when one is there:
//!
//! - `XBUILD_LOAD=docker` or `XBUILD_LOAD=podman`: that engine, and the
//!   build fails when it cannot take the image;
//! - `XBUILD_LOAD=none`: the store only;
//! - unset (`auto`): the first of `docker`, `podman` on `PATH` whose engine
//!   answers; when none does, the store only, and a note says why.
//!
//! The image goes in as a `docker save` archive of the host's platform (or
//! the first one built), streamed to `docker load` / `podman load`.

use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::process::{Command, Stdio};
use xbuild_oci::archive::{read_manifest, select_platform, write_docker_archive};
use xbuild_oci::manifest::Manifest;
use xbuild_oci::{BlobStore, Descriptor, Platform};

/// A container engine `--load` can hand the image to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `docker load`.
    Docker,
    /// `podman load`.
    Podman,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

/// What `XBUILD_LOAD` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The first engine that answers, if any.
    Auto,
    /// Only xbuild's store.
    None,
    /// This engine, or fail.
    Exactly(Engine),
}

/// Read `XBUILD_LOAD`.
pub fn want_from_env() -> Result<Want> {
    parse_want(std::env::var("XBUILD_LOAD").ok().as_deref())
}

fn parse_want(v: Option<&str>) -> Result<Want> {
    match v {
        None | Some("") | Some("auto") => Ok(Want::Auto),
        Some("none") => Ok(Want::None),
        Some("docker") => Ok(Want::Exactly(Engine::Docker)),
        Some("podman") => Ok(Want::Exactly(Engine::Podman)),
        Some(other) => bail!("XBUILD_LOAD={other:?}: expected docker, podman, none or auto"),
    }
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// Whether the engine's service answers (`docker version` reaches the
/// daemon; `podman info` works without one).
fn answers(e: Engine) -> Result<(), String> {
    let mut c = Command::new(e.name());
    match e {
        Engine::Docker => c.args(["version", "--format", "{{.Server.Version}}"]),
        Engine::Podman => c.args(["info", "--format", "{{.Version.Version}}"]),
    };
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("{} could not be run: {err}", e.name()))?;
    if out.status.success() {
        Ok(())
    } else {
        let msg = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{} is on PATH but does not answer: {}",
            e.name(),
            msg.lines().last().unwrap_or("").trim()
        ))
    }
}

/// Stream the image as a docker archive into `ENGINE load`.
fn load_into(e: Engine, store: &BlobStore, image: &Descriptor, names: &[String]) -> Result<()> {
    let single = match read_manifest(store, image)? {
        Manifest::Index(_) => select_platform(store, image, Some(&Platform::host_linux()))
            .or_else(|_| select_platform(store, image, None))
            .context("choosing the platform to load")?,
        Manifest::Image(_) => image.clone(),
    };
    let mut child = Command::new(e.name())
        .arg("load")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} load", e.name()))?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    let list = vec![(single, names.to_vec())];
    let written = match write_docker_archive(store, &list, &mut stdin) {
        Ok(_) => stdin.flush().map_err(anyhow::Error::from),
        Err(err) => Err(anyhow!("writing the archive to {} load: {err}", e.name())),
    };
    drop(stdin);
    let out = child.wait_with_output()?;
    written?;
    if !out.status.success() {
        bail!(
            "{} load failed: {}",
            e.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Hand the image (already in xbuild's store under `names`) to a container
/// engine as `want` says. Returns the sentence to show the user.
pub fn load(want: Want, store: &BlobStore, image: &Descriptor, names: &[String]) -> Result<String> {
    let shown = if names.is_empty() {
        image.digest.to_string()
    } else {
        names.join(", ")
    };
    let stored = format!("loaded {shown} into xbuild's image store");
    match want {
        Want::None => Ok(stored),
        Want::Exactly(e) => {
            if !on_path(e.name()) {
                bail!("--load into {} was asked for (XBUILD_LOAD), but {} is not on PATH; the image is in xbuild's image store", e.name(), e.name());
            }
            answers(e).map_err(|m| anyhow!("--load into {}: {m}", e.name()))?;
            load_into(e, store, image, names)?;
            Ok(format!("{stored} and into {}", e.name()))
        }
        Want::Auto => {
            let mut notes = Vec::new();
            for e in [Engine::Docker, Engine::Podman] {
                if !on_path(e.name()) {
                    continue;
                }
                match answers(e) {
                    Ok(()) => {
                        load_into(e, store, image, names)?;
                        return Ok(format!("{stored} and into {}", e.name()));
                    }
                    Err(m) => notes.push(m),
                }
            }
            if notes.is_empty() {
                Ok(format!("{stored} (no docker or podman on PATH)"))
            } else {
                Ok(format!("{stored} only ({})", notes.join("; ")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn want_parsing() {
        assert_eq!(parse_want(None).unwrap(), Want::Auto);
        assert_eq!(parse_want(Some("auto")).unwrap(), Want::Auto);
        assert_eq!(parse_want(Some("none")).unwrap(), Want::None);
        assert_eq!(
            parse_want(Some("podman")).unwrap(),
            Want::Exactly(Engine::Podman)
        );
        assert!(parse_want(Some("containerd")).is_err());
    }
}
