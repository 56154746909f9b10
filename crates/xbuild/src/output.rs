//! Build outputs (`-o/--output`, `--push`), as `docker buildx build` spells
//! them, and exporting a build result to them.
//!
//! ```text
//! type=image[,name=REF[,REF...]][,push=true][,oci-mediatypes=false]
//! type=registry[,name=...]          same as type=image,push=true
//! type=oci,dest=FILE|-[,name=...]   OCI image layout tar
//! type=docker,dest=FILE|-[,name=...] docker load archive (one platform)
//! type=local,dest=DIR               the root filesystem (DIR/linux_amd64/... for several platforms)
//! type=tar,dest=FILE|-              the same as a tar
//! DIR                               shorthand for type=local,dest=DIR
//! -                                 shorthand for type=tar,dest=-
//! ```

#![allow(dead_code)] // Wired into `build` by the coordinator.

use crate::images::{tag, write_dest};
use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use xbuild_oci::archive::{self, read_manifest};
use xbuild_oci::layer::{apply_layer, merge_tree, ApplyOptions};
use xbuild_oci::manifest::Manifest;
use xbuild_oci::{BlobStore, Descriptor, Platform};

/// One parsed `--output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// Keep the image in the local store under its names, and push it when asked.
    Image {
        /// Push to the registry the names point at.
        push: bool,
        /// Names given with `name=` (in addition to `-t`).
        names: Vec<String>,
        /// Use OCI media types (default) or Docker's.
        oci_mediatypes: bool,
    },
    /// An OCI image-layout tar.
    Oci {
        /// File, or `-` for standard output.
        dest: PathBuf,
        /// Names given with `name=`.
        names: Vec<String>,
    },
    /// A `docker load` archive.
    Docker {
        /// File, or `-` for standard output.
        dest: PathBuf,
        /// Names given with `name=`.
        names: Vec<String>,
    },
    /// The root filesystem in a directory.
    Local {
        /// The directory.
        dest: PathBuf,
    },
    /// The root filesystem as a tar.
    Tar {
        /// File, or `-` for standard output.
        dest: PathBuf,
    },
}

impl std::fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputSpec::Image { push, names, .. } => {
                write!(f, "type=image")?;
                if !names.is_empty() {
                    write!(f, ",name={}", names.join(","))?;
                }
                if *push {
                    write!(f, ",push=true")?;
                }
                Ok(())
            }
            OutputSpec::Oci { dest, .. } => write!(f, "type=oci,dest={}", dest.display()),
            OutputSpec::Docker { dest, .. } => write!(f, "type=docker,dest={}", dest.display()),
            OutputSpec::Local { dest } => write!(f, "type=local,dest={}", dest.display()),
            OutputSpec::Tar { dest } => write!(f, "type=tar,dest={}", dest.display()),
        }
    }
}

/// Split `a=b,"c=d,e",f` on commas outside double quotes, dropping the quotes.
fn split_csv(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        bail!("invalid output {s:?}: unterminated quote");
    }
    out.push(cur);
    Ok(out)
}

fn parse_bool(spec: &str, key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => bail!("invalid output {spec:?}: {key} must be true or false, not {v:?}"),
    }
}

/// Parse one `--output` value.
pub fn parse_output(s: &str) -> Result<OutputSpec> {
    let s = s.trim();
    if s.is_empty() {
        bail!("empty --output; expected e.g. type=oci,dest=image.tar");
    }
    if s == "-" {
        return Ok(OutputSpec::Tar { dest: "-".into() });
    }
    if !s.contains('=') {
        return Ok(OutputSpec::Local { dest: s.into() });
    }
    let mut kind = None;
    let mut dest = None;
    let mut names = Vec::new();
    let mut push = None;
    let mut oci_mediatypes = None;
    for field in split_csv(s)? {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid output {s:?}: {field:?} is not KEY=VALUE"))?;
        match k.trim() {
            "type" => kind = Some(v.to_string()),
            "dest" => dest = Some(PathBuf::from(v)),
            "name" | "names" => names.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
            ),
            "push" => push = Some(parse_bool(s, k, v)?),
            "oci-mediatypes" => oci_mediatypes = Some(parse_bool(s, k, v)?),
            other => bail!(
                "invalid output {s:?}: unknown key {other:?} (xbuild knows type, dest, name, push, oci-mediatypes)"
            ),
        }
    }
    let kind = kind.ok_or_else(|| {
        anyhow!("invalid output {s:?}: missing type= (image, registry, oci, docker, local, tar)")
    })?;
    let only_image = |what: &str, set: bool| -> Result<()> {
        if set {
            bail!("invalid output {s:?}: {what} applies to type=image only");
        }
        Ok(())
    };
    let need_dest = |dest: Option<PathBuf>, what: &str| -> Result<PathBuf> {
        match dest {
            Some(d) if !d.as_os_str().is_empty() => Ok(d),
            _ => bail!("invalid output {s:?}: type={kind} needs dest={what}"),
        }
    };
    match kind.as_str() {
        "image" | "registry" => {
            if dest.is_some() {
                bail!("invalid output {s:?}: type={kind} takes no dest (use name=REF)");
            }
            Ok(OutputSpec::Image {
                push: push.unwrap_or(false) || kind == "registry",
                names,
                oci_mediatypes: oci_mediatypes.unwrap_or(true),
            })
        }
        "oci" | "docker" => {
            only_image("push", push.is_some())?;
            only_image("oci-mediatypes", oci_mediatypes.is_some())?;
            let dest = need_dest(dest, "FILE (xbuild has no daemon to load into; use type=image to keep the image in the local store)")?;
            Ok(if kind == "oci" {
                OutputSpec::Oci { dest, names }
            } else {
                OutputSpec::Docker { dest, names }
            })
        }
        "local" | "tar" => {
            only_image("push", push.is_some())?;
            only_image("oci-mediatypes", oci_mediatypes.is_some())?;
            if !names.is_empty() {
                bail!("invalid output {s:?}: type={kind} takes no name");
            }
            if kind == "local" {
                let dest = need_dest(dest, "DIR")?;
                if dest.as_os_str() == "-" {
                    bail!("invalid output {s:?}: type=local needs a directory; use type=tar,dest=- for standard output");
                }
                Ok(OutputSpec::Local { dest })
            } else {
                Ok(OutputSpec::Tar {
                    dest: need_dest(dest, "FILE")?,
                })
            }
        }
        other => bail!(
            "invalid output {s:?}: unknown type {other:?} (image, registry, oci, docker, local, tar)"
        ),
    }
}

/// All outputs of a build: each `--output`, with `--push` meaning
/// `type=image,push=true` (merged into an image output if there is one).
/// Without any, the image is kept in the local store (`type=image`).
pub fn outputs_from_args(outputs: &[String], push: bool) -> Result<Vec<OutputSpec>> {
    let mut specs = outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<Vec<_>>>()?;
    if push {
        match specs
            .iter_mut()
            .find(|s| matches!(s, OutputSpec::Image { .. }))
        {
            Some(OutputSpec::Image { push, .. }) => *push = true,
            _ => specs.push(OutputSpec::Image {
                push: true,
                names: Vec::new(),
                oci_mediatypes: true,
            }),
        }
    }
    if specs.is_empty() {
        specs.push(OutputSpec::Image {
            push: false,
            names: Vec::new(),
            oci_mediatypes: true,
        });
    }
    Ok(specs)
}

/// Export a build `result` (a manifest or an index in `store`) to `spec`.
/// `names` are the `-t` tags (joined with the spec's own `name=`).
///
/// `type=image` tags the result in the local store; pushing
/// (`push=true`) is left to the caller, which owns the registry client.
pub fn export(
    store: &BlobStore,
    result: &Descriptor,
    spec: &OutputSpec,
    names: &[String],
) -> Result<()> {
    let all = |extra: &[String]| -> Vec<String> {
        let mut v = names.to_vec();
        for n in extra {
            if !v.contains(n) {
                v.push(n.clone());
            }
        }
        v
    };
    // No GC may delete the result while it is being exported.
    let _lock = store.shared_lock()?;
    match spec {
        OutputSpec::Image { names: extra, .. } => {
            tag(store, result, &all(extra))?;
        }
        OutputSpec::Oci { dest, names: extra } => {
            let names = all(extra);
            write_dest(dest, |w| {
                archive::write_oci_archive(store, result, &names, w)?;
                Ok(())
            })
            .with_context(|| format!("exporting OCI archive to {}", dest.display()))?;
        }
        OutputSpec::Docker { dest, names: extra } => {
            let names = all(extra);
            let single = archive::select_platform(store, result, None)
                .context("type=docker holds one platform: build one, or use type=oci")?;
            write_dest(dest, |w| {
                archive::write_docker_archive(store, &[(single, names)], w)?;
                Ok(())
            })
            .with_context(|| format!("exporting docker archive to {}", dest.display()))?;
        }
        OutputSpec::Local { dest } => export_local(store, result, dest)?,
        OutputSpec::Tar { dest } => {
            let tmp = tempfile::tempdir().context("creating a temporary directory")?;
            export_fs(store, result, tmp.path(), true)?;
            write_dest(dest, |w| {
                let mut b = tar::Builder::new(w);
                b.follow_symlinks(false);
                b.append_dir_all(".", tmp.path())?;
                b.into_inner()?.flush()?;
                Ok(())
            })
            .with_context(|| format!("exporting the filesystem to {}", dest.display()))?;
        }
    }
    Ok(())
}

/// The single-platform manifests of `result` with their platforms.
fn platform_manifests(
    store: &BlobStore,
    result: &Descriptor,
) -> Result<Vec<(Option<Platform>, Descriptor)>> {
    Ok(match read_manifest(store, result)? {
        Manifest::Image(_) => vec![(None, result.clone())],
        Manifest::Index(idx) => idx
            .manifests
            .iter()
            .filter_map(|d| {
                let p = d.platform()?;
                (p.os() != "unknown").then(|| (Some(p), d.clone()))
            })
            .collect(),
    })
}

/// Apply the layers of `result` into `dest`; an index with several
/// platforms gets one subdirectory per platform (`linux_amd64`), as buildx does.
///
/// Like BuildKit, this merges into what is there: the image's files are
/// added and overwrite files of the same path; files already in `dest` are
/// never removed (the layers are unpacked into a staging directory, where
/// their whiteouts apply, and the result is moved in), and device nodes are
/// never created (skipped with a warning).
pub fn export_local(store: &BlobStore, result: &Descriptor, dest: &Path) -> Result<()> {
    export_fs(store, result, dest, false)
}

/// [`export_local`], creating device nodes when `devices` (for `type=tar`,
/// whose staging directory is private).
fn export_fs(store: &BlobStore, result: &Descriptor, dest: &Path, devices: bool) -> Result<()> {
    let manifests = platform_manifests(store, result)?;
    if manifests.is_empty() {
        bail!("{} has no image for any platform", result.digest);
    }
    let multi = manifests.len() > 1;
    for (platform, d) in manifests {
        let dir = match (&platform, multi) {
            (Some(p), true) => dest.join(p.to_string().replace('/', "_")),
            _ => dest.to_path_buf(),
        };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let Manifest::Image(m) = read_manifest(store, &d)? else {
            bail!(
                "{} is a nested index; not supported by type=local",
                d.digest
            );
        };
        // Beside the destination (same filesystem: entries are renamed in).
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        let staging = tempfile::Builder::new()
            .prefix(".xbuild-export-")
            .tempdir_in(parent.unwrap_or(Path::new(".")))
            .or_else(|_| tempfile::tempdir())
            .context("creating a staging directory")?;
        let opts = ApplyOptions {
            devices,
            ..ApplyOptions::default()
        };
        for l in &m.layers {
            // Checked as it is read: a corrupt layer fails the export (the
            // blob is named and quarantined) instead of being unpacked.
            let mut f = store.open_verified(&l.digest, Some(l.size))?;
            let applied = apply_layer(std::io::BufReader::new(&mut f), staging.path(), &opts);
            f.finish()?;
            let stats = applied
                .with_context(|| format!("applying layer {} to {}", l.digest, dir.display()))?;
            for w in stats.warnings {
                eprintln!(
                    "WARNING: {}: {}",
                    dir.display(),
                    crate::progress::sanitize_terminal(&w)
                );
            }
        }
        merge_tree(staging.path(), &dir)
            .with_context(|| format!("exporting the filesystem to {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_outputs() {
        assert_eq!(
            parse_output("type=oci,dest=out.tar").unwrap(),
            OutputSpec::Oci {
                dest: "out.tar".into(),
                names: vec![]
            }
        );
        assert_eq!(
            parse_output("type=image,\"name=a:1,b:2\",push=true").unwrap(),
            OutputSpec::Image {
                push: true,
                names: vec!["a:1".into(), "b:2".into()],
                oci_mediatypes: true
            }
        );
        assert_eq!(
            parse_output("type=registry,oci-mediatypes=false").unwrap(),
            OutputSpec::Image {
                push: true,
                names: vec![],
                oci_mediatypes: false
            }
        );
        assert_eq!(
            parse_output("out").unwrap(),
            OutputSpec::Local { dest: "out".into() }
        );
        assert_eq!(
            parse_output("-").unwrap(),
            OutputSpec::Tar { dest: "-".into() }
        );
        for (bad, needle) in [
            ("type=docker", "needs dest"),
            ("type=local", "needs dest=DIR"),
            ("type=oci,dest=x,push=true", "type=image only"),
            ("type=zip,dest=x", "unknown type"),
            ("type=oci,dest=x,foo=1", "unknown key \"foo\""),
            ("dest=x", "missing type"),
            ("type=image,push=maybe", "true or false"),
            ("type=image,dest=x", "takes no dest"),
        ] {
            let e = parse_output(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    fn image(store: &BlobStore, platform: &str, content: &str) -> Descriptor {
        use xbuild_oci::layer::{write_layer, WriteOptions};
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("etc")).unwrap();
        fs::write(src.path().join("etc/which"), content).unwrap();
        let w = store.writer(xbuild_oci::digest::Algorithm::Sha256).unwrap();
        let (out, w) = write_layer(src.path(), w, &WriteOptions::default()).unwrap();
        w.commit(Some(&out.digest)).unwrap();
        let p = Platform::parse(platform).unwrap();
        let mut c = xbuild_oci::ImageConfig::for_platform(&p);
        c.rootfs.diff_ids = vec![out.diff_id.clone()];
        let ce = c.encode().unwrap();
        store.put_bytes(&ce.bytes).unwrap();
        let me = xbuild_oci::ImageManifest::new_oci(ce.descriptor, vec![out.descriptor()])
            .encode()
            .unwrap();
        store.put_bytes(&me.bytes).unwrap();
        me.descriptor.with_platform(&p)
    }

    #[test]
    fn export_kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path().join("content")).unwrap();
        let amd = image(&store, "linux/amd64", "amd");
        let arm = image(&store, "linux/arm/v7", "arm");
        let ie = xbuild_oci::ImageIndex::new_oci(vec![amd.clone(), arm])
            .encode()
            .unwrap();
        store.put_bytes(&ie.bytes).unwrap();
        let idx = ie.descriptor;
        let names = ["app:1".to_string()];
        // local: one platform straight into DIR, several in subdirectories.
        let one = tmp.path().join("one");
        export(
            &store,
            &amd,
            &parse_output(one.to_str().unwrap()).unwrap(),
            &names,
        )
        .unwrap();
        assert_eq!(fs::read_to_string(one.join("etc/which")).unwrap(), "amd");
        let many = tmp.path().join("many");
        let spec = parse_output(&format!("type=local,dest={}", many.display())).unwrap();
        export(&store, &idx, &spec, &names).unwrap();
        assert_eq!(
            fs::read_to_string(many.join("linux_amd64/etc/which")).unwrap(),
            "amd"
        );
        assert_eq!(
            fs::read_to_string(many.join("linux_arm_v7/etc/which")).unwrap(),
            "arm"
        );
        // tar
        let t = tmp.path().join("fs.tar");
        export(
            &store,
            &amd,
            &parse_output(&format!("type=tar,dest={}", t.display())).unwrap(),
            &names,
        )
        .unwrap();
        let mut ar = tar::Archive::new(fs::File::open(&t).unwrap());
        let found = ar.entries().unwrap().any(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .ends_with("etc/which")
        });
        assert!(found);
        // oci keeps the index; docker refuses it, naming the platforms.
        let o = tmp.path().join("o.tar");
        export(
            &store,
            &idx,
            &parse_output(&format!("type=oci,dest={}", o.display())).unwrap(),
            &names,
        )
        .unwrap();
        let back = BlobStore::open(tmp.path().join("back")).unwrap();
        let got = archive::read_archive(fs::File::open(&o).unwrap(), &back).unwrap();
        assert_eq!(got[0].0.digest, idx.digest);
        assert_eq!(got[0].1, ["docker.io/library/app:1"]);
        let d = tmp.path().join("d.tar");
        let spec = parse_output(&format!("type=docker,dest={}", d.display())).unwrap();
        let e = format!("{:#}", export(&store, &idx, &spec, &names).unwrap_err());
        assert!(
            e.contains("linux/arm/v7") && e.contains("linux/amd64"),
            "{e}"
        );
        assert!(!d.exists());
        export(&store, &amd, &spec, &names).unwrap();
        assert!(d.exists());
        // image: tagged in the store.
        export(
            &store,
            &idx,
            &parse_output("type=image,name=other:2").unwrap(),
            &names,
        )
        .unwrap();
        assert_eq!(
            store.get_ref("docker.io/library/app:1").unwrap(),
            Some(idx.digest.clone())
        );
        assert_eq!(
            store.get_ref("docker.io/library/other:2").unwrap(),
            Some(idx.digest)
        );
    }

    #[test]
    fn push_flag() {
        let v = outputs_from_args(&[], true).unwrap();
        assert!(matches!(v[..], [OutputSpec::Image { push: true, .. }]));
        let v = outputs_from_args(&["type=image,name=x".into()], true).unwrap();
        assert_eq!(v.len(), 1);
        assert!(matches!(&v[0], OutputSpec::Image { push: true, names, .. } if names == &["x"]));
        let v = outputs_from_args(&["type=oci,dest=f".into()], true).unwrap();
        assert_eq!(v.len(), 2);
        let v = outputs_from_args(&[], false).unwrap();
        assert!(matches!(v[..], [OutputSpec::Image { push: false, .. }]));
    }
}
