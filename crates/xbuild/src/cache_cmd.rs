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
