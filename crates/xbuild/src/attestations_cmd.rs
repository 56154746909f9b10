//! `xbuild attestations ls|get REF`: the provenance and SBOM attestations of
//! an image in a registry, in either layout (buildx's attestation manifests
//! in the index, or OCI 1.1 referrers of each platform manifest), and the
//! `.Provenance` / `.SBOM` values of `imagetools inspect --format`.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use xbuild_attest::inspect;
use xbuild_attest::layout;
use xbuild_oci::manifest::Manifest;
use xbuild_oci::{Descriptor, Digest, ImageManifest, Platform, Reference};
use xbuild_registry::Registry;

/// One attestation manifest of one platform image.
#[derive(Debug, Clone)]
pub struct Found {
    /// The platform of the image it describes.
    pub platform: Platform,
    /// The platform manifest's digest.
    pub subject: Digest,
    /// `index` (buildx layout) or `referrers`.
    pub layout: &'static str,
    /// The attestation manifest's digest.
    pub manifest: Digest,
    /// Its in-toto layers: predicate type and descriptor.
    pub statements: Vec<(String, Descriptor)>,
}

/// The platform images of `r` and every attestation manifest found for them.
pub async fn find(reg: &Registry, r: &Reference) -> Result<Vec<Found>> {
    let (bytes, media_type, digest) = reg
        .fetch_manifest(r)
        .await
        .with_context(|| format!("fetching {}", r.familiar()))?;
    let doc = Manifest::parse(&bytes, Some(&media_type))
        .map_err(|e| anyhow!("{}: not an image manifest or index: {e}", r.familiar()))?;
    type Entries = (Vec<(Platform, Digest)>, Vec<(Digest, Descriptor)>);
    let (platforms, in_index): Entries = match doc {
        Manifest::Index(idx) => (
            layout::platform_entries(&idx)
                .into_iter()
                .filter_map(|d| Some((d.platform()?, d.digest.clone())))
                .collect(),
            layout::attestation_entries(&idx)
                .into_iter()
                .map(|(t, d)| (t, d.clone()))
                .collect(),
        ),
        Manifest::Image(m) => {
            // A single-platform image: its platform is in its config.
            let cfg = reg
                .fetch_blob(r, &m.config)
                .await
                .with_context(|| format!("fetching the config of {}", r.familiar()))?;
            let platform = xbuild_oci::ImageConfig::from_slice(&cfg)
                .map(|c| c.platform())
                .unwrap_or_else(|_| Platform::host_linux());
            (vec![(platform, digest)], Vec::new())
        }
    };
    let mut out = Vec::new();
    for (platform, subject) in &platforms {
        let mut manifests: Vec<(&'static str, Digest)> = in_index
            .iter()
            .filter(|(t, _)| t == subject)
            .map(|(_, d)| ("index", d.digest.clone()))
            .collect();
        let refs = reg
            .referrers(r, subject)
            .await
            .with_context(|| format!("listing the referrers of {subject}"))?;
        manifests.extend(
            refs.manifests
                .iter()
                .map(|d| ("referrers", d.digest.clone())),
        );
        for (layout_name, m) in manifests {
            let mr = r.with_digest(m.clone());
            let (mb, mt, _) = reg.fetch_manifest(&mr).await?;
            let Ok(Manifest::Image(im)) = Manifest::parse(&mb, Some(&mt)) else {
                continue;
            };
            let statements = statements_of(&im);
            if statements.is_empty() {
                continue;
            }
            out.push(Found {
                platform: platform.clone(),
                subject: subject.clone(),
                layout: layout_name,
                manifest: m,
                statements,
            });
        }
    }
    Ok(out)
}

fn statements_of(m: &ImageManifest) -> Vec<(String, Descriptor)> {
    inspect::statement_layers(m)
        .into_iter()
        .map(|(t, d)| (t.to_string(), d.clone()))
        .collect()
}

/// Fetch the statements of `found`, by platform: `(predicate type, bytes)`.
pub async fn fetch_statements(
    reg: &Registry,
    r: &Reference,
    found: &[Found],
) -> Result<BTreeMap<String, Vec<(String, Vec<u8>)>>> {
    let mut out: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for f in found {
        for (ty, d) in &f.statements {
            let bytes = reg
                .fetch_blob(r, d)
                .await
                .with_context(|| format!("fetching attestation {}", d.digest))?;
            out.entry(f.platform.to_string())
                .or_default()
                .push((ty.clone(), bytes));
        }
    }
    Ok(out)
}

/// The `.Provenance` and `.SBOM` template values of `imagetools inspect`.
pub async fn template_values(
    reg: &Registry,
    r: &Reference,
) -> Result<(serde_json::Value, serde_json::Value)> {
    let found = find(reg, r).await?;
    let by_platform = fetch_statements(reg, r, &found).await?;
    let mut prov = BTreeMap::new();
    let mut sbom = BTreeMap::new();
    for (p, sts) in &by_platform {
        if let Some(v) = inspect::provenance_view(sts)? {
            prov.insert(p.clone(), v);
        }
        if let Some(v) = inspect::sbom_view(sts)? {
            sbom.insert(p.clone(), v);
        }
    }
    Ok((
        inspect::per_platform_view(prov),
        inspect::per_platform_view(sbom),
    ))
}

fn short_type(t: &str) -> &str {
    if t.starts_with(inspect::PREDICATE_SLSA_PREFIX) {
        "provenance"
    } else if t == xbuild_attest::intoto::PREDICATE_SPDX {
        "sbom"
    } else {
        t
    }
}

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

/// `xbuild attestations ls REF`.
pub fn cmd_ls(reference: &str) -> Result<()> {
    let r = parse_ref(reference)?;
    let reg = registry()?;
    runtime()?.block_on(ls(&reg, &r))
}

/// `xbuild attestations get REF [--platform P] [--type T]`.
pub fn cmd_get(reference: &str, platform: Option<&str>, ty: Option<&str>) -> Result<()> {
    let r = parse_ref(reference)?;
    let platform = platform
        .map(|p| Platform::parse(p).map_err(|e| anyhow!("invalid --platform {p:?}: {e}")))
        .transpose()?;
    let reg = registry()?;
    runtime()?.block_on(get(&reg, &r, platform.as_ref(), ty))
}

/// `xbuild attestations ls REF`.
async fn ls(reg: &Registry, r: &Reference) -> Result<()> {
    let found = find(reg, r).await?;
    println!(
        "{:<14} {:<11} {:<10} {:<20} {:<72} PREDICATE",
        "PLATFORM", "TYPE", "LAYOUT", "SUBJECT", "MANIFEST"
    );
    for f in &found {
        for (t, _) in &f.statements {
            println!(
                "{:<14} {:<11} {:<10} {:<20} {:<72} {}",
                f.platform.to_string(),
                short_type(t),
                f.layout,
                f.subject.short(),
                f.manifest.to_string(),
                t
            );
        }
    }
    Ok(())
}

/// `xbuild attestations get REF [--platform P] [--type provenance|sbom]`:
/// the statement(s), as JSON on stdout.
async fn get(
    reg: &Registry,
    r: &Reference,
    platform: Option<&Platform>,
    ty: Option<&str>,
) -> Result<()> {
    let found = find(reg, r).await?;
    let mut printed = 0;
    for f in &found {
        if platform.is_some_and(|p| *p != f.platform) {
            continue;
        }
        for (t, d) in &f.statements {
            if ty.is_some_and(|want| want != short_type(t) && want != t) {
                continue;
            }
            let bytes = reg.fetch_blob(r, d).await?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("attestation {} is not JSON", d.digest))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            printed += 1;
        }
    }
    if printed == 0 {
        bail!("{} has no matching attestation", r.familiar());
    }
    Ok(())
}
