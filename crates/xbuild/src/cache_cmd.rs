//! `xbuild cache du` and `xbuild cache prune`.

use anyhow::{anyhow, bail, Context, Result};
use std::time::Duration;
use xbuild_engine::housekeeping::{self, PruneOptions};

use crate::paths;
use crate::progress::human_bytes;

/// `xbuild cache du`.
pub fn cmd_du() -> Result<()> {
    let root = paths::xbuild_root()?;
    let store = paths::open_store()?;
    let rows = housekeeping::usage(&root, &store)
        .with_context(|| format!("reading the build cache in {}", root.display()))?;
    println!(
        "{:<15} {:<13} {:>8} {:>10}",
        "PLATFORM", "KIND", "ENTRIES", "SIZE"
    );
    let mut total = 0;
    for r in &rows {
        total += r.bytes;
        println!(
            "{:<15} {:<13} {:>8} {:>10}",
            r.platform,
            r.kind.to_string(),
            r.entries,
            human_bytes(r.bytes)
        );
    }
    println!(
        "{:<15} {:<13} {:>8} {:>10}",
        "total",
        "",
        "",
        human_bytes(total)
    );
    Ok(())
}

fn parse_filters(filters: &[String]) -> Result<Option<Duration>> {
    let mut until = None;
    for f in filters {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid filter {f:?}: expected KEY=VALUE (until=24h)"))?;
        match k {
            "until" => {
                let ns = xbuild_dockerfile::instructions::parse_duration(v)
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| {
                        anyhow!("invalid filter {f:?}: {v:?} is not a duration like 24h or 90m")
                    })?;
                until = Some(Duration::from_nanos(ns as u64));
            }
            other => bail!("invalid filter {f:?}: unknown key {other:?} (xbuild knows until)"),
        }
    }
    Ok(until)
}

/// `xbuild cache prune [--all] [--keep-storage SIZE] [--filter until=D]`.
pub fn cmd_prune(all: bool, keep_storage: Option<&str>, filters: &[String]) -> Result<()> {
    let until = parse_filters(filters)?;
    let keep_storage = keep_storage
        .map(|s| {
            xbuild_dockerfile::instructions::parse_size(s)
                .ok_or_else(|| anyhow!("invalid --keep-storage {s:?}: expected a size like 10GB"))
        })
        .transpose()?;
    let root = paths::xbuild_root()?;
    let store = paths::open_store()?;
    // Directories (cache mounts, snapshots); blobs are counted by the GC.
    let dirs = |store| -> Result<u64> {
        Ok(housekeeping::usage(&root, store)?
            .iter()
            .filter(|r| r.kind != housekeeping::Kind::Records)
            .map(|r| r.bytes)
            .sum())
    };
    let before = dirs(&store)?;
    let lock = housekeeping::lock_exclusive(&root, || {
        eprintln!("waiting for running builds to finish before pruning...");
    })?;
    let report = housekeeping::prune(
        &root,
        &store,
        &PruneOptions {
            all,
            until,
            keep_storage,
        },
        &lock,
    )?;
    let gc = crate::images::collect_garbage(&store)?;
    drop(lock);
    let after = dirs(&store)?;
    println!(
        "Deleted {} cache records, {} cache mounts, {} snapshots, {} blobs",
        report.records, report.cache_mounts, report.snapshots, gc.blobs_removed
    );
    println!(
        "Total reclaimed space: {}",
        human_bytes(before.saturating_sub(after) + gc.bytes_removed)
    );
    Ok(())
}

/// `xbuild cache check [--repair]`: verifies blobs, snapshots and records;
/// with `--repair`, downloads quarantined blobs again from the registries
/// they were pulled from or pushed to. Fails when damage remains.
pub fn cmd_check(repair: bool) -> Result<()> {
    let root = paths::xbuild_root()?;
    let store = paths::open_store()?;
    let lock = housekeeping::lock_exclusive(&root, || {
        eprintln!("waiting for running builds to finish before checking...");
    })?;
    let report = housekeeping::check(&root, &store, &lock)
        .with_context(|| format!("checking the state in {}", root.display()))?;
    drop(lock);
    println!(
        "Checked {} blobs: {} corrupt (quarantined under {})",
        report.blobs,
        report.corrupt.len(),
        store.root().join("quarantine").display()
    );
    for (d, _) in &report.corrupt {
        println!("  corrupt: {d}");
    }
    println!(
        "Removed {} incomplete snapshots, {} damaged cache records",
        report.snapshots_removed, report.records_removed
    );
    // Everything quarantined (now or by an earlier read) and still missing.
    let missing = store.quarantined();
    let mut left = missing.len();
    if repair && !missing.is_empty() {
        let sizes = descriptor_sizes(&store);
        let registry = crate::config::registry(Some(&root))?;
        let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        for d in &missing {
            let Some(size) = sizes.get(d) else {
                println!("  not repaired: {d}: no manifest in the store describes it");
                continue;
            };
            let desc = xbuild_oci::Descriptor::new(
                xbuild_oci::media_types::OCI_LAYER_TAR_GZIP.to_string(),
                d.clone(),
                *size,
            );
            match rt.block_on(registry.refetch(&desc, &store, &xbuild_registry::no_progress)) {
                Ok(true) => {
                    println!("  repaired: {d}");
                    left -= 1;
                }
                Ok(false) => println!("  not repaired: {d}: no registry is known to hold it"),
                Err(e) => println!("  not repaired: {d}: {e}"),
            }
        }
    }
    if left > 0 {
        for d in missing.iter().filter(|_| !repair) {
            if !report.corrupt.iter().any(|(c, _)| c == d) {
                println!("  quarantined earlier: {d}");
            }
        }
        bail!(
            "{left} corrupt blob(s) remain quarantined{}",
            if repair {
                ""
            } else {
                "; `xbuild cache check --repair` fetches them again where possible"
            }
        );
    }
    Ok(())
}

/// The size every descriptor in the store's manifests gives its blob.
fn descriptor_sizes(
    store: &xbuild_oci::BlobStore,
) -> std::collections::HashMap<xbuild_oci::Digest, u64> {
    let mut out = std::collections::HashMap::new();
    for (d, size) in store.list().unwrap_or_default() {
        if size > xbuild_registry::MAX_MANIFEST_SIZE {
            continue;
        }
        let Ok(bytes) = store.read_to_vec(&d) else {
            continue;
        };
        match xbuild_oci::manifest::Manifest::parse(&bytes, None) {
            Ok(xbuild_oci::manifest::Manifest::Image(m)) => {
                for l in std::iter::once(&m.config).chain(&m.layers) {
                    out.insert(l.digest.clone(), l.size);
                }
            }
            Ok(xbuild_oci::manifest::Manifest::Index(i)) => {
                for m in &i.manifests {
                    out.insert(m.digest.clone(), m.size);
                }
            }
            Err(_) => {}
        }
    }
    out
}
