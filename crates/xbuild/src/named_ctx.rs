//! `--build-context NAME=VALUE`, usable as `FROM NAME`, `COPY --from=NAME`
//! and `RUN --mount=from=NAME`:
//!
//! - `docker-image://REF`: the image REF stands for NAME;
//! - `oci-layout://PATH[:TAG][@DIGEST]`: the image of an OCI layout
//!   directory (its blobs go into the local store);
//! - a directory, or an `https://` / git URL fetched like a build context:
//!   its files become a one-layer image (one manifest per platform the
//!   build needs) in the local store.
//!
//! Each becomes an image alias for planning (`PlanOptions::image_aliases`),
//! pinned by digest, so the rest of the build treats it as any image. The
//! images are made here, on the coordinator: a platform built on an SSH
//! node needs `docker-image://` contexts (the node pulls them itself).

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xbuild_oci::layer::{write_layer, WriteOptions};
use xbuild_oci::manifest::{ImageIndex, ImageManifest, Manifest};
use xbuild_oci::media_types as mt;
use xbuild_oci::{BlobStore, Descriptor, Digest, ImageConfig, Platform, Reference};

/// Keeps fetched named contexts alive for the build.
#[derive(Default)]
pub struct Named {
    /// NAME → image reference.
    pub aliases: BTreeMap<String, String>,
    _fetched: Vec<crate::remote_ctx::Fetched>,
}

/// The repository synthetic images are named in (never pushed).
const REPO: &str = "xbuild-context";

fn alias(name: &str, digest: &Digest) -> Result<String> {
    let clean: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let r = format!("{REPO}/{}@{digest}", clean.trim_matches('-'));
    r.parse::<Reference>()
        .map_err(|e| anyhow!("naming the context image {r:?}: {e}"))?;
    Ok(r)
}

/// A one-layer image of `dir` for each of `platforms` (an index when more
/// than one), stored in `store`; returns the top descriptor.
pub fn image_of_dir(store: &BlobStore, dir: &Path, platforms: &[Platform]) -> Result<Descriptor> {
    let w = store.writer(xbuild_oci::digest::Algorithm::Sha256)?;
    let (layer, w) = write_layer(dir, w, &WriteOptions::default())
        .with_context(|| format!("reading the build context {}", dir.display()))?;
    w.commit(Some(&layer.digest))?;
    let mut manifests = Vec::new();
    for p in platforms {
        let mut c = ImageConfig::for_platform(p);
        c.rootfs.diff_ids = vec![layer.diff_id.clone()];
        let ce = c.encode().map_err(|e| anyhow!("encoding a config: {e}"))?;
        store.put_bytes(&ce.bytes)?;
        let me = ImageManifest::new_oci(ce.descriptor, vec![layer.descriptor()])
            .encode()
            .map_err(|e| anyhow!("encoding a manifest: {e}"))?;
        store.put_bytes(&me.bytes)?;
        manifests.push(me.descriptor.with_platform(p));
    }
    if manifests.len() == 1 {
        return Ok(manifests.remove(0));
    }
    let enc = ImageIndex::new_oci(manifests)
        .encode()
        .map_err(|e| anyhow!("encoding an index: {e}"))?;
    store.put_bytes(&enc.bytes)?;
    Ok(enc.descriptor)
}

/// Ingest the image an OCI layout names (`PATH[:TAG][@DIGEST]`); returns
/// its digest.
pub fn image_of_layout(store: &BlobStore, spec: &str) -> Result<Digest> {
    let (rest, digest) = match spec.rsplit_once('@') {
        Some((p, d)) => (
            p,
            Some(Digest::parse(d).map_err(|e| anyhow!("oci-layout://{spec}: {e}"))?),
        ),
        None => (spec, None),
    };
    // A `:TAG` after the last path component.
    let (path, tag) = match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !p.is_empty() => (p, Some(t)),
        _ => (rest, None),
    };
    let dir = PathBuf::from(path);
    let index_bytes = std::fs::read(dir.join("index.json"))
        .with_context(|| format!("oci-layout://{spec}: reading {}/index.json", dir.display()))?;
    let index = ImageIndex::from_slice(&index_bytes)
        .map_err(|e| anyhow!("oci-layout://{spec}: index.json: {e}"))?;
    let chosen = match (&digest, tag) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => index
            .manifests
            .iter()
            .find(|m| {
                m.annotations
                    .get("org.opencontainers.image.ref.name")
                    .is_some_and(|n| n == t)
            })
            .map(|m| m.digest.clone())
            .ok_or_else(|| anyhow!("oci-layout://{spec}: no image tagged {t:?}"))?,
        (None, None) => match index.manifests.as_slice() {
            [one] => one.digest.clone(),
            [] => bail!("oci-layout://{spec}: the layout holds no image"),
            _ => bail!("oci-layout://{spec}: the layout holds several images; add :TAG or @DIGEST"),
        },
    };
    // Every blob the chosen image reaches, verified by digest on the way in.
    let blob = |d: &Digest| dir.join("blobs").join(d.algorithm().as_str()).join(d.hex());
    let mut todo = vec![chosen.clone()];
    while let Some(d) = todo.pop() {
        let f = std::fs::File::open(blob(&d))
            .with_context(|| format!("oci-layout://{spec}: blob {d} is missing"))?;
        store.ingest(f, Some(&d), None)?;
        let bytes = store.read_to_vec(&d)?;
        if let Ok(m) = Manifest::parse(&bytes, None) {
            match m {
                Manifest::Index(i) => todo.extend(i.manifests.into_iter().map(|x| x.digest)),
                Manifest::Image(m) => {
                    todo.push(m.config.digest.clone());
                    for l in m.layers {
                        if mt::is_layer(&l.media_type) {
                            let f = std::fs::File::open(blob(&l.digest)).with_context(|| {
                                format!("oci-layout://{spec}: blob {} is missing", l.digest)
                            })?;
                            store.ingest(f, Some(&l.digest), Some(l.size))?;
                        }
                    }
                }
            }
        }
    }
    Ok(chosen)
}

/// Turn every `--build-context` into an image alias.
pub fn materialize(raw: &[String], platforms: &[Platform], quiet: bool) -> Result<Named> {
    let mut out = Named::default();
    if raw.is_empty() {
        return Ok(out);
    }
    let store = crate::paths::open_store()?;
    let mut wanted: Vec<Platform> = platforms.to_vec();
    let host = Platform::host_linux();
    if !wanted.contains(&host) {
        wanted.push(host);
    }
    for c in raw {
        let (name, value) = c
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid --build-context {c:?}: expected NAME=VALUE"))?;
        if name.is_empty() {
            bail!("invalid --build-context {c:?}: the name is empty");
        }
        if out.aliases.contains_key(name) {
            bail!("--build-context {name} is given twice");
        }
        let reference = if let Some(r) = value.strip_prefix("docker-image://") {
            r.parse::<Reference>()
                .map_err(|e| anyhow!("invalid --build-context {c:?}: {e}"))?;
            r.to_string()
        } else if let Some(spec) = value.strip_prefix("oci-layout://") {
            let d = image_of_layout(&store, spec)?;
            alias(name, &d)?
        } else {
            let dir = match crate::remote_ctx::fetch(value, false, quiet)
                .with_context(|| format!("--build-context {name}"))?
            {
                Some((dir, guard)) => {
                    out._fetched.push(guard);
                    dir
                }
                None => {
                    let p = PathBuf::from(value);
                    if !p.is_dir() {
                        bail!(
                            "--build-context {name}={value}: not a directory, docker-image://, \
                             oci-layout:// or URL"
                        );
                    }
                    p
                }
            };
            // The directory's own `.dockerignore` applies to it, as to
            // the main context (BuildKit testNamedLocalContext).
            let filtered = filtered_view(&dir)
                .with_context(|| format!("--build-context {name}: applying .dockerignore"))?;
            let src = filtered.as_ref().map_or(dir.as_path(), |t| t.path());
            let top = image_of_dir(&store, src, &wanted)?;
            alias(name, &top.digest)?
        };
        out.aliases.insert(name.to_string(), reference);
    }
    Ok(out)
}

/// When `dir` has a `.dockerignore`, a temporary copy of `dir` without the
/// paths it excludes (hard links where possible, so metadata is kept);
/// `None` when there is nothing to exclude.
fn filtered_view(dir: &Path) -> Result<Option<tempfile::TempDir>> {
    let Ok(text) = std::fs::read_to_string(dir.join(".dockerignore")) else {
        return Ok(None);
    };
    let rules = xbuild_dockerfile::ignore::read_ignore_file(&text);
    let matcher = xbuild_dockerfile::ignore::PatternMatcher::new(&rules)
        .map_err(|e| anyhow!("{}/.dockerignore: {e}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("xbuild-named-ctx-")
        .tempdir()?;
    copy_unignored(dir, tmp.path(), "", &matcher)?;
    std::fs::set_permissions(tmp.path(), std::fs::metadata(dir)?.permissions())?;
    Ok(Some(tmp))
}

fn copy_unignored(
    src: &Path,
    dst: &Path,
    rel: &str,
    matcher: &xbuild_dockerfile::ignore::PatternMatcher,
) -> Result<()> {
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name.to_str() else {
            continue;
        };
        let path = if rel.is_empty() {
            n.to_string()
        } else {
            format!("{rel}/{n}")
        };
        let ignored = matcher
            .matches_or_parent_matches(&path)
            .map_err(|e| anyhow!(".dockerignore: {e}"))?;
        let (from, to) = (entry.path(), dst.join(&name));
        let ft = entry.file_type()?;
        if ft.is_dir() {
            // An excluded directory may still hold re-included (`!`) paths.
            if ignored && !matcher.exclusions() {
                continue;
            }
            std::fs::create_dir(&to)?;
            copy_unignored(&from, &to, &path, matcher)?;
            std::fs::set_permissions(&to, std::fs::metadata(&from)?.permissions())?;
        } else if ignored {
            continue;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if std::fs::hard_link(&from, &to).is_err() {
            // Another file system: a copy with the same owner and mtime.
            use std::os::unix::fs::MetadataExt;
            std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
            let meta = std::fs::metadata(&from)?;
            let _ = std::os::unix::fs::chown(&to, Some(meta.uid()), Some(meta.gid()));
            std::fs::File::options()
                .write(true)
                .open(&to)?
                .set_modified(meta.modified()?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_images_and_layouts() {
        let t = tempfile::tempdir().unwrap();
        let store = BlobStore::open(t.path().join("content")).unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), "x").unwrap();
        let amd = Platform::parse("linux/amd64").unwrap();
        let arm = Platform::parse("linux/arm64").unwrap();
        let one = image_of_dir(&store, &src, std::slice::from_ref(&amd)).unwrap();
        assert_eq!(one.platform(), Some(amd.clone()));
        let two = image_of_dir(&store, &src, &[amd.clone(), arm]).unwrap();
        assert!(mt::is_index(&two.media_type));
        let a = alias("My_Ctx", &two.digest).unwrap();
        assert!(a.starts_with("xbuild-context/my-ctx@sha256:"), "{a}");

        // An OCI layout holding the image, read back by tag and by digest.
        let layout = t.path().join("layout");
        let w = std::fs::File::create(t.path().join("l.tar")).unwrap();
        xbuild_oci::archive::write_oci_archive(&store, &one, &["app:v1".to_string()], w).unwrap();
        std::fs::create_dir_all(&layout).unwrap();
        tar::Archive::new(std::fs::File::open(t.path().join("l.tar")).unwrap())
            .unpack(&layout)
            .unwrap();
        let other = BlobStore::open(t.path().join("other")).unwrap();
        let by_digest =
            image_of_layout(&other, &format!("{}@{}", layout.display(), one.digest)).unwrap();
        assert_eq!(by_digest, one.digest);
        assert!(other.exists(&one.digest));
        let only = image_of_layout(&other, &layout.display().to_string()).unwrap();
        assert_eq!(only, one.digest);
        assert!(image_of_layout(&other, &format!("{}:nope", layout.display())).is_err());
        assert!(image_of_layout(&other, "/nonexistent").is_err());
    }
}
