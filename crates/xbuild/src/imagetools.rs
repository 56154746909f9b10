//! `xbuild imagetools inspect` and `xbuild imagetools create`: read and
//! assemble indexes directly in a registry, without pulling layers.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use xbuild_oci::manifest::{ImageIndex, Manifest};
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

/// The field a `--format` template prints: `{{json .Field}}` or `{{.Field}}`.
fn template_field(format: &str) -> Result<(bool, &str)> {
    let t = format.trim();
    let inner = t
        .strip_prefix("{{")
        .and_then(|x| x.strip_suffix("}}"))
        .map(str::trim)
        .ok_or_else(|| anyhow!("unsupported --format {format:?}: expected {{{{json .Field}}}}"))?;
    let (json, field) = match inner.strip_prefix("json ") {
        Some(f) => (true, f.trim()),
        None => (false, inner),
    };
    let field = field.strip_prefix('.').ok_or_else(|| {
        anyhow!("unsupported --format {format:?}: expected a field like .Provenance")
    })?;
    Ok((json, field))
}

/// `xbuild imagetools inspect REF --format TEMPLATE`.
async fn inspect_format(reg: &Registry, r: &Reference, format: &str) -> Result<()> {
    let (json, field) = template_field(format)?;
    let value = match field {
        "Provenance" | "SBOM" => {
            let (prov, sbom) = crate::attestations_cmd::template_values(reg, r).await?;
            if field == "SBOM" {
                sbom
            } else {
                prov
            }
        }
        "Manifest" => {
            let (bytes, _, _) = reg.fetch_manifest(r).await?;
            serde_json::from_slice(&bytes).context("the manifest is not JSON")?
        }
        "Name" => serde_json::Value::String(r.familiar()),
        other => bail!(
            "unsupported --format field .{other} (xbuild knows .Name, .Manifest, .Provenance, .SBOM)"
        ),
    };
    match (&value, json) {
        (serde_json::Value::String(s), false) => println!("{s}"),
        _ => println!("{}", serde_json::to_string(&value)?),
    }
    Ok(())
}

/// `xbuild imagetools inspect REF [--raw] [--format TEMPLATE]`.
pub fn cmd_inspect(reference: &str, raw: bool, format: Option<&str>) -> Result<()> {
    let r = parse_ref(reference)?;
    let reg = registry()?;
    runtime()?.block_on(async {
        if let Some(f) = format {
            return inspect_format(&reg, &r, f).await;
        }
        let (bytes, media_type, digest) = reg
            .fetch_manifest(&r)
            .await
            .with_context(|| format!("inspecting {}", r.familiar()))?;
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

/// `xbuild imagetools create -t REF... SRC...`.
pub fn cmd_create(tags: &[String], sources: &[String], dry_run: bool) -> Result<()> {
    let targets: Vec<Reference> = tags.iter().map(|t| parse_ref(t)).collect::<Result<_>>()?;
    let srcs: Vec<Reference> = sources
        .iter()
        .map(|s| parse_ref(s))
        .collect::<Result<_>>()?;
    let reg = registry()?;
    runtime()?.block_on(async {
        // Every platform manifest the sources name, with the source it
        // comes from (a platform given twice is refused).
        let mut entries: Vec<(Reference, Descriptor)> = Vec::new();
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut all_docker = true;
        for src in &srcs {
            let (bytes, media_type, digest) = reg
                .fetch_manifest(src)
                .await
                .with_context(|| format!("reading source {}", src.familiar()))?;
            let items: Vec<Descriptor> = match parse(&bytes, &media_type, src)? {
                Manifest::Index(idx) => {
                    all_docker &= media_type == mt::DOCKER_MANIFEST_LIST;
                    idx.manifests
                }
                Manifest::Image(m) => {
                    all_docker &= media_type == mt::DOCKER_MANIFEST;
                    let cfg = reg.fetch_blob(src, &m.config).await?;
                    let cfg = ImageConfig::from_slice(&cfg).map_err(|e| {
                        anyhow!("{}: image config is unreadable: {e}", src.familiar())
                    })?;
                    let p: Platform = cfg.platform();
                    vec![
                        Descriptor::new(media_type.clone(), digest.clone(), bytes.len() as u64)
                            .with_platform(&p),
                    ]
                }
            };
            for d in items {
                if let Some(p) = d.platform() {
                    if let Some(other) = seen.insert(p.to_string(), src.familiar()) {
                        bail!(
                            "{p} is given twice: by {other} and by {}; \
                             name each platform once",
                            src.familiar()
                        );
                    }
                }
                entries.push((src.clone(), d));
            }
        }
        if entries.is_empty() {
            bail!("the sources name no image");
        }
        let descs: Vec<Descriptor> = entries.iter().map(|(_, d)| d.clone()).collect();
        let index = if all_docker {
            ImageIndex::new_docker(descs)
        } else {
            ImageIndex::new_oci(descs)
        };
        let enc = index
            .encode()
            .map_err(|e| anyhow!("encoding the index: {e}"))?;
        if dry_run {
            println!("{}", String::from_utf8_lossy(&enc.bytes));
            return Ok(());
        }
        for t in &targets {
            // Children first (mounted or copied, never pulled locally), then
            // the index by digest, then the tag: a tag never points at an
            // index whose manifests are missing.
            for (src, d) in &entries {
                reg.copy_manifest(&src.with_digest(d.digest.clone()), t)
                    .await
                    .with_context(|| {
                        format!(
                            "copying {}@{} into {}",
                            src.familiar(),
                            d.digest,
                            t.familiar()
                        )
                    })?;
            }
            reg.push_manifest_bytes(t, &enc.bytes, &enc.descriptor.media_type)
                .await
                .with_context(|| format!("pushing the index to {}", t.familiar()))?;
            reg.tag_manifest(t, &enc.bytes, &enc.descriptor.media_type)
                .await
                .with_context(|| format!("tagging the index as {}", t.familiar()))?;
            eprintln!("pushed {}@{}", t.familiar(), enc.descriptor.digest);
        }
        println!("{}", enc.descriptor.digest);
        Ok(())
    })
}
