//! `xbuild imagetools inspect` and `xbuild imagetools create`: read and
//! assemble indexes directly in a registry, without pulling layers.

pub mod format;
pub mod merge;

use anyhow::{anyhow, bail, Context, Result};
use xbuild_oci::manifest::{ImageManifest, Manifest};
use xbuild_oci::media_types as mt;
use xbuild_oci::{Descriptor, ImageConfig, Platform, Reference};
use xbuild_registry::Registry;

fn registry() -> Result<Registry> {
    let root = crate::paths::xbuild_root()?;
    crate::config::registry(Some(&root))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn parse_ref(s: &str) -> Result<Reference> {
    s.parse::<Reference>()
        .map_err(|e| anyhow!("invalid reference {s:?}: {e}"))
}

fn parse(bytes: &[u8], media_type: &str, r: &Reference) -> Result<Manifest> {
    Manifest::parse(bytes, Some(media_type))
        .map_err(|e| anyhow!("{}: not an image manifest or index: {e}", r.familiar()))
}

/// The fields of an image config that buildx's `.Image` shows (the OCI
/// image spec's `Image` type).
const IMAGE_FIELDS: &[&str] = &[
    "created",
    "author",
    "architecture",
    "os",
    "os.version",
    "os.features",
    "variant",
    "config",
    "rootfs",
    "history",
];

async fn image_config_value(
    reg: &Registry,
    r: &Reference,
    m: &ImageManifest,
) -> Result<serde_json::Value> {
    let bytes = reg.fetch_blob(r, &m.config).await?;
    let full: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: image config is not JSON", r.familiar()))?;
    let mut out = serde_json::Map::new();
    if let serde_json::Value::Object(o) = full {
        for k in IMAGE_FIELDS {
            if let Some(v) = o.get(*k) {
                out.insert((*k).to_string(), v.clone());
            }
        }
    }
    Ok(serde_json::Value::Object(out))
}

/// The `{Name, Manifest, Image}` document buildx's templates see.
async fn template_data(
    reg: &Registry,
    name: &str,
    r: &Reference,
    bytes: &[u8],
    media_type: &str,
    digest: &xbuild_oci::Digest,
    wants_attestations: bool,
) -> Result<serde_json::Value> {
    use serde_json::{json, Value};
    let (manifest, image) = match parse(bytes, media_type, r)? {
        Manifest::Index(idx) => {
            let mut m = json!({
                "schemaVersion": idx.schema_version,
                "mediaType": idx.effective_media_type(),
                "digest": digest.to_string(),
                "size": bytes.len(),
                "manifests": serde_json::to_value(&idx.manifests)?,
            });
            if !idx.annotations.is_empty() {
                m["annotations"] = serde_json::to_value(&idx.annotations)?;
            }
            let mut images = serde_json::Map::new();
            for d in &idx.manifests {
                let Some(p) = d.platform() else { continue };
                if p.os() == "unknown" || !mt::is_manifest(&d.media_type) {
                    continue;
                }
                let child = r.with_digest(d.digest.clone());
                let (cb, cmt, _) = reg.fetch_manifest(&child).await?;
                if let Manifest::Image(im) = parse(&cb, &cmt, &child)? {
                    images.insert(p.to_string(), image_config_value(reg, &child, &im).await?);
                }
            }
            let image = if images.len() == 1 {
                images
                    .into_iter()
                    .next()
                    .map(|(_, v)| v)
                    .unwrap_or(Value::Null)
            } else {
                Value::Object(images)
            };
            (m, image)
        }
        Manifest::Image(im) => (
            json!({"mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()}),
            image_config_value(reg, r, &im).await?,
        ),
    };
    let mut data = json!({"name": name, "manifest": manifest, "image": image});
    if wants_attestations {
        // buildx's `.Provenance` / `.SBOM` (methods there, so not in `{{json .}}`).
        let (prov, sbom) = crate::attestations_cmd::template_values(reg, r).await?;
        data["Provenance"] = prov;
        data["SBOM"] = sbom;
    }
    Ok(data)
}

/// `xbuild imagetools inspect REF [--raw] [--format TEMPLATE]`.
pub fn cmd_inspect(reference: &str, raw: bool, format: Option<&str>) -> Result<()> {
    let r = parse_ref(reference)?;
    let template = match format {
        Some(f) if !raw => Some(format::Template::parse(f)?),
        Some(_) => bail!("--raw and --format cannot be used together"),
        None => None,
    };
    let reg = registry()?;
    runtime()?.block_on(async {
        let (bytes, media_type, digest) = reg
            .fetch_manifest(&r)
            .await
            .with_context(|| format!("inspecting {}", r.familiar()))?;
        if let Some(t) = template.filter(|t| !t.is_whole_manifest()) {
            let attest = format.is_some_and(|f| f.contains("Provenance") || f.contains("SBOM"));
            let data =
                template_data(&reg, reference, &r, &bytes, &media_type, &digest, attest).await?;
            let mut out = t.render(&data)?;
            if !out.ends_with('\n') {
                out.push('\n');
            }
            print!("{out}");
            return Ok(());
        }
        if raw {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            if !bytes.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
            return Ok(());
        }
        println!("{:<10} {}", "Name:", r.familiar());
        println!("{:<10} {media_type}", "MediaType:");
        println!("{:<10} {digest}", "Digest:");
        match parse(&bytes, &media_type, &r)? {
            Manifest::Index(idx) => {
                println!();
                println!("Manifests:");
                for (i, m) in idx.manifests.iter().enumerate() {
                    if i > 0 {
                        println!();
                    }
                    println!(
                        "  {:<10} {}",
                        "Name:",
                        r.with_digest(m.digest.clone()).familiar()
                    );
                    println!("  {:<10} {}", "MediaType:", m.media_type);
                    match m.platform() {
                        Some(p) => println!("  {:<10} {p}", "Platform:"),
                        None => {
                            println!("  {:<10} (none: an attestation or artifact)", "Platform:")
                        }
                    }
                    for (k, v) in &m.annotations {
                        println!("  {:<10} {k}={v}", "Annotation:");
                    }
                }
            }
            Manifest::Image(m) => {
                let cfg_bytes = reg.fetch_blob(&r, &m.config).await?;
                let platform = ImageConfig::from_slice(&cfg_bytes)
                    .map(|c| c.platform().to_string())
                    .unwrap_or_else(|_| "(config unreadable)".into());
                println!("{:<10} {platform}", "Platform:");
                println!("{:<10} {}", "Config:", m.config.digest);
                println!("Layers:");
                for l in &m.layers {
                    println!("  {} {:>10}  {}", l.digest, l.size, l.media_type);
                }
            }
        }
        Ok(())
    })
}

/// Options of `xbuild imagetools create`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// `-t`: where to push.
    pub tags: Vec<String>,
    /// Source references, digests or descriptors.
    pub sources: Vec<String>,
    /// `-f`: files holding a source each (a descriptor as JSON).
    pub files: Vec<std::path::PathBuf>,
    /// `--append`: the first tag's current content is a source too.
    pub append: bool,
    /// `--annotation`.
    pub annotations: Vec<String>,
    /// `--platform`: keep only these platforms.
    pub platforms: Vec<String>,
    /// `--dry-run`: print the result, push nothing.
    pub dry_run: bool,
    /// `--metadata-file`.
    pub metadata_file: Option<std::path::PathBuf>,
}

/// `xbuild imagetools create [-t REF]... [-f FILE]... [SRC]...`.
pub fn cmd_create(o: &CreateOptions) -> Result<()> {
    if o.sources.is_empty() && o.files.is_empty() {
        bail!("no sources specified");
    }
    if !o.dry_run && o.tags.is_empty() {
        bail!("can't push with no tags specified, please set --tag or --dry-run");
    }
    let targets: Vec<Reference> = o.tags.iter().map(|t| parse_ref(t)).collect::<Result<_>>()?;
    // buildx's order: the appended tag, then file sources, then arguments.
    let mut args: Vec<String> = Vec::new();
    if o.append {
        let first = o
            .tags
            .first()
            .ok_or_else(|| anyhow!("--append needs a --tag whose current content is kept"))?;
        args.push(first.clone());
    }
    for f in &o.files {
        let s = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        args.push(s);
    }
    args.extend(o.sources.iter().cloned());
    let specs = args
        .iter()
        .map(|a| merge::parse_source(a))
        .collect::<Result<Vec<_>>>()?;
    let locations = merge::locate(&specs, &targets)?;
    let mut ann = xbuild_oci::annotation::Annotations::new();
    for a in &o.annotations {
        ann.add_flag(a).context("failed to parse annotations")?;
    }
    let platforms: Vec<Platform> = o
        .platforms
        .iter()
        .flat_map(|p| p.split(','))
        .filter(|p| !p.trim().is_empty())
        .map(|p| Platform::parse(p).map_err(|e| anyhow!("invalid platform {p:?}: {e}")))
        .collect::<Result<_>>()?;
    let reg = registry()?;
    runtime()?.block_on(async {
        let mut resolved = Vec::new();
        for (spec, loc) in specs.iter().zip(&locations) {
            let (bytes, media_type, digest) = reg
                .fetch_manifest(loc)
                .await
                .with_context(|| format!("reading source {}", loc.familiar()))?;
            let fetched = Descriptor::new(media_type.clone(), digest.clone(), bytes.len() as u64);
            let mut desc = match spec {
                merge::SourceSpec::Desc(given) => merge::merge_desc(&fetched, given)?,
                _ => fetched,
            };
            if mt::is_manifest(&desc.media_type) && desc.platform.is_none() {
                if let Manifest::Image(m) = parse(&bytes, &desc.media_type, loc)? {
                    let cfg = reg.fetch_blob(loc, &m.config).await?;
                    let cfg = ImageConfig::from_slice(&cfg).map_err(|e| {
                        anyhow!("{}: image config is unreadable: {e}", loc.familiar())
                    })?;
                    desc = desc.with_platform(&cfg.platform());
                }
            }
            resolved.push(merge::Resolved {
                origin: loc.clone(),
                desc,
                bytes,
            });
        }
        let combined = merge::combine(&resolved, &ann, &platforms)?;
        for w in &combined.warnings {
            eprintln!("WARNING: {w}");
        }
        if o.dry_run {
            println!("{}", String::from_utf8_lossy(&combined.bytes));
            return Ok(());
        }
        for t in &targets {
            // Children first (mounted or copied, never pulled locally), then
            // the index by digest, then the tag: a tag never points at an
            // index whose manifests are missing.
            for (d, i) in &combined.children {
                let src = &resolved[*i].origin;
                reg.copy_manifest(&src.with_digest(d.digest.clone()), t)
                    .await
                    .with_context(|| {
                        format!("copying {}@{} into {}", src.name(), d.digest, t.familiar())
                    })?;
            }
            let mtype = &combined.descriptor.media_type;
            reg.push_manifest_bytes(t, &combined.bytes, mtype)
                .await
                .with_context(|| format!("pushing the index to {}", t.familiar()))?;
            reg.tag_manifest(t, &combined.bytes, mtype)
                .await
                .with_context(|| format!("tagging the index as {}", t.familiar()))?;
            eprintln!("pushed {}@{}", t.familiar(), combined.descriptor.digest);
        }
        if let Some(path) = &o.metadata_file {
            let mut names: Vec<String> = targets.iter().map(|t| t.name()).collect();
            names.sort();
            names.dedup();
            let meta = serde_json::json!({
                "containerimage.descriptor": combined.descriptor,
                "image.name": names.join(","),
            });
            std::fs::write(path, serde_json::to_vec_pretty(&meta)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        println!("{}", combined.descriptor.digest);
        Ok(())
    })
}
