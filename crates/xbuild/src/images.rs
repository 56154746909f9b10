//! The local image store: tags are [`BlobStore`] references named by the
//! fully-qualified image reference (`docker.io/library/app:latest`), each
//! pointing at a manifest or an index in the store. This module implements
//! `xbuild images | history | rmi | image prune | save | load` and the
//! garbage collection that follows a removal.

use crate::cli::SaveFormat;
use crate::paths;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use xbuild_oci::archive::{self, read_manifest, select_platform};
use xbuild_oci::gc::{self, GcStats};
use xbuild_oci::manifest::Manifest;
use xbuild_oci::{BlobStore, Descriptor, Digest, ImageConfig, ImageManifest, Platform, Reference};

/// Parse and normalize an image name (`app` → `docker.io/library/app:latest`).
pub fn parse_ref(name: &str) -> Result<Reference> {
    Reference::parse(name).map_err(|e| anyhow!("{e}"))
}

/// A descriptor for a manifest or index already in the store, with the media
/// type read from the document itself.
pub fn describe(store: &BlobStore, digest: &Digest) -> Result<Descriptor> {
    let bytes = store
        .read_to_vec(digest)
        .with_context(|| format!("reading image {digest}"))?;
    let m = Manifest::parse(&bytes, None).with_context(|| format!("parsing image {digest}"))?;
    Ok(Descriptor::new(
        m.media_type(),
        digest.clone(),
        bytes.len() as u64,
    ))
}

pub use xbuild_coordinator::export::{tag, write_dest};

/// One tagged image of the store.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// The tag.
    pub reference: Reference,
    /// The manifest or index it points at.
    pub target: Digest,
    /// Config digest (manifest) or index digest: what IMAGE ID shows.
    pub id: Digest,
    /// Latest `created` of the image's configs.
    pub created: Option<i64>,
    /// Platforms.
    pub platforms: Vec<String>,
    /// Sum of the (compressed) layer sizes, each layer counted once.
    pub size: u64,
}

/// The store's tags, as [`ImageInfo`]; references that are not image tags
/// are left out, and images whose documents are missing are reported with
/// what is known.
pub fn list_images(store: &BlobStore) -> Result<Vec<ImageInfo>> {
    let mut out = Vec::new();
    for (name, target) in store.list_refs()? {
        let Ok(reference) = Reference::parse(&name) else {
            continue;
        };
        if reference.to_string() != name || reference.tag().is_none() {
            continue;
        }
        let mut info = ImageInfo {
            reference,
            target: target.clone(),
            id: target.clone(),
            created: None,
            platforms: Vec::new(),
            size: 0,
        };
        let mut layers = BTreeMap::new();
        let doc = store.read_to_vec(&target).ok();
        match doc.as_deref().map(|b| Manifest::parse(b, None)) {
            Some(Ok(Manifest::Image(m))) => {
                info.id = m.config.digest.clone();
                add_manifest(store, &m, &mut info, &mut layers);
            }
            Some(Ok(Manifest::Index(idx))) => {
                for child in &idx.manifests {
                    let Some(p) = child.platform() else { continue };
                    if p.os() == "unknown" {
                        continue;
                    }
                    info.platforms.push(p.to_string());
                    if let Ok(Manifest::Image(m)) = read_manifest(store, child) {
                        let before = info.platforms.len();
                        add_manifest(store, &m, &mut info, &mut layers);
                        info.platforms.truncate(before);
                    }
                }
            }
            _ => {}
        }
        info.size = layers.values().sum();
        out.push(info);
    }
    Ok(out)
}

fn add_manifest(
    store: &BlobStore,
    m: &ImageManifest,
    info: &mut ImageInfo,
    layers: &mut BTreeMap<Digest, u64>,
) {
    for l in &m.layers {
        layers.insert(l.digest.clone(), l.size);
    }
    if let Ok(bytes) = store.read_to_vec(&m.config.digest) {
        if let Ok(c) = ImageConfig::from_slice(&bytes) {
            info.platforms.push(c.platform().to_string());
            let t = c.created.as_deref().and_then(parse_rfc3339);
            info.created = info.created.max(t);
        }
    }
}

/// Find the tag `image` names: a reference, or an image ID (prefix of at
/// least 4 hex digits, with or without `sha256:`) matching exactly one image.
pub fn find_image(store: &BlobStore, image: &str) -> Result<(String, Digest)> {
    if let Ok(r) = Reference::parse(image) {
        if let Some(d) = store.get_ref(&r.to_string())? {
            return Ok((r.to_string(), d));
        }
    }
    let ids = match_ids(store, image)?;
    match ids.len() {
        0 => bail!("No such image: {image}"),
        1 => Ok(ids.into_iter().next().expect("one")),
        _ => bail!(
            "image ID {image} matches several tags ({}); name one of them",
            ids.iter()
                .map(|(n, _)| familiar(n))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Tags whose image ID starts with `id` (a hex prefix of 4+ digits).
fn match_ids(store: &BlobStore, id: &str) -> Result<Vec<(String, Digest)>> {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    if hex.len() < 4 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Ok(Vec::new());
    }
    Ok(list_images(store)?
        .into_iter()
        .filter(|i| i.id.hex().starts_with(hex) || i.target.hex().starts_with(hex))
        .map(|i| (i.reference.to_string(), i.target))
        .collect())
}

fn familiar(name: &str) -> String {
    Reference::parse(name)
        .map(|r| r.familiar())
        .unwrap_or_else(|_| name.to_string())
}

/// Repository and tag columns as Docker prints them.
fn repo_and_tag(r: &Reference) -> (String, String) {
    let fam = r.without_digest().familiar();
    let tag = r.tag().unwrap_or("<none>").to_string();
    let repo = fam
        .strip_suffix(&format!(":{tag}"))
        .unwrap_or(&fam)
        .to_string();
    (repo, tag)
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

/// Seconds since the epoch of an RFC 3339 time (`2024-01-02T03:04:05.123Z`,
/// `...+02:00`).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        b'+' | b'-' if i + 6 == b.len() && b[i + 3] == b':' => {
            let o = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if b[i] == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Days from the civil date (proleptic Gregorian).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + se - offset)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Docker's human duration: `Less than a second`, `2 minutes`, `About an hour`, ...
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match () {
        _ if s < 1 => "Less than a second".into(),
        _ if s == 1 => "1 second".into(),
        _ if s < 60 => format!("{s} seconds"),
        _ if m == 1 => "About a minute".into(),
        _ if m < 60 => format!("{m} minutes"),
        _ if h == 1 => "About an hour".into(),
        _ if h < 48 => format!("{h} hours"),
        _ if h < 24 * 7 * 2 => format!("{d} days"),
        _ if h < 24 * 30 * 2 => format!("{} weeks", d / 7),
        _ if h < 24 * 365 * 2 => format!("{} months", d / 30),
        _ => format!("{} years", d / 365),
    }
}

/// `2 minutes ago`, or `N/A` when unknown.
pub fn human_ago(t: Option<i64>) -> String {
    match t {
        Some(t) => format!("{} ago", human_duration(now() - t)),
        None => "N/A".into(),
    }
}

/// Docker's human size: decimal units, four significant digits (`7.05MB`, `0B`).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    let digits = if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    let mut s = format!("{v:.digits$}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    format!("{s}{}", UNITS[u])
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn print_table(rows: &[Vec<String>]) -> io::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = io::stdout().lock();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                let pad = widths[i] - c.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// `xbuild images`.
pub fn cmd_images(repository: Option<&str>, quiet: bool, no_trunc: bool) -> Result<()> {
    let store = paths::open_store()?;
    let mut images = list_images(&store)?;
    if let Some(filter) = repository {
        let with_tag = filter
            .rsplit_once(':')
            .is_some_and(|(_, t)| !t.contains('/'));
        let want = parse_ref(filter)?;
        images.retain(|i| {
            i.reference.name() == want.name() && (!with_tag || i.reference.tag() == want.tag())
        });
    }
    images.sort_by(|a, b| {
        b.created
            .cmp(&a.created)
            .then_with(|| a.reference.cmp(&b.reference))
    });
    let id = |d: &Digest| {
        if no_trunc {
            d.to_string()
        } else {
            d.short().to_string()
        }
    };
    if quiet {
        let mut seen = BTreeSet::new();
        for i in &images {
            if seen.insert(i.id.clone()) {
                println!("{}", id(&i.id));
            }
        }
        return Ok(());
    }
    let mut rows = vec![vec![
        "REPOSITORY".to_string(),
        "TAG".into(),
        "IMAGE ID".into(),
        "CREATED".into(),
        "PLATFORMS".into(),
        "SIZE".into(),
    ]];
    for i in &images {
        let (repo, tag) = repo_and_tag(&i.reference);
        let platforms = if i.platforms.is_empty() {
            "<unknown>".to_string()
        } else {
            i.platforms.join(",")
        };
        rows.push(vec![
            repo,
            tag,
            id(&i.id),
            human_ago(i.created),
            platforms,
            human_size(i.size),
        ]);
    }
    print_table(&rows)?;
    Ok(())
}

fn platform_arg(platform: Option<&str>) -> Result<Platform> {
    match platform {
        Some(p) => Platform::parse(p).map_err(|e| anyhow!("{e}")),
        None => Ok(Platform::host_linux()),
    }
}

/// `xbuild history`.
pub fn cmd_history(image: &str, platform: Option<&str>, no_trunc: bool, quiet: bool) -> Result<()> {
    let store = paths::open_store()?;
    let (name, target) = find_image(&store, image)?;
    let root = describe(&store, &target)?;
    let want = platform_arg(platform)?;
    let chosen = match read_manifest(&store, &root)? {
        Manifest::Image(_) => root,
        Manifest::Index(_) => select_platform(&store, &root, Some(&want))
            .with_context(|| format!("image {}", familiar(&name)))?,
    };
    let Manifest::Image(m) = read_manifest(&store, &chosen)? else {
        bail!("{} is not an image manifest", chosen.digest);
    };
    let config = ImageConfig::from_slice(&store.read_to_vec(&m.config.digest)?)
        .with_context(|| format!("parsing config {}", m.config.digest))?;
    let id = if no_trunc {
        m.config.digest.to_string()
    } else {
        m.config.digest.short().to_string()
    };
    if quiet {
        println!("{id}");
        return Ok(());
    }
    // (created, created_by, size, comment), base first.
    let mut entries: Vec<(Option<i64>, String, String, String)> = Vec::new();
    let mut layers = m.layers.iter();
    if config.history.is_empty() {
        for l in layers.by_ref() {
            entries.push((None, String::new(), human_size(l.size), String::new()));
        }
    } else {
        for h in &config.history {
            let size = if h.empty_layer {
                "0B".to_string()
            } else {
                layers
                    .next()
                    .map_or("?".to_string(), |l| human_size(l.size))
            };
            entries.push((
                h.created.as_deref().and_then(parse_rfc3339),
                h.created_by.clone().unwrap_or_default(),
                size,
                h.comment.clone().unwrap_or_default(),
            ));
        }
    }
    let mut rows = vec![vec![
        "IMAGE".to_string(),
        "CREATED".into(),
        "CREATED BY".into(),
        "SIZE".into(),
        "COMMENT".into(),
    ]];
    for (i, (created, by, size, comment)) in entries.iter().rev().enumerate() {
        let by = by.replace(['\n', '\t'], " ");
        rows.push(vec![
            if i == 0 {
                id.clone()
            } else {
                "<missing>".into()
            },
            human_ago(*created),
            if no_trunc { by } else { truncate(&by, 45) },
            size.clone(),
            comment.clone(),
        ]);
    }
    print_table(&rows)?;
    Ok(())
}

/// Digests of blobs the build cache under `root` still uses: every
/// `sha256:<64 hex>` string in a `*.json` file under `cache/` (symlinks not
/// followed). Conservative: anything that looks like a digest keeps the blob.
pub fn cache_roots(root: &Path) -> Result<Vec<Digest>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(paths::cache_dir(root), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for ent in rd {
            let ent = ent.with_context(|| format!("reading {}", dir.display()))?;
            let ft = ent.file_type()?;
            let p = ent.path();
            if ft.is_dir() && depth < 64 {
                stack.push((p, depth + 1));
            } else if ft.is_file() && p.extension().is_some_and(|e| e == "json") {
                let bytes = match fs::read(&p) {
                    Ok(b) => b,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
                };
                scan_digests(&bytes, &mut out);
            }
        }
    }
    Ok(out.into_iter().collect())
}

fn scan_digests(bytes: &[u8], out: &mut BTreeSet<Digest>) {
    const P: &[u8] = b"sha256:";
    let hex = |b: &u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
    let mut i = 0;
    while i + P.len() + 64 <= bytes.len() {
        if &bytes[i..i + P.len()] == P {
            let h = &bytes[i + P.len()..i + P.len() + 64];
            let next_ok = bytes.get(i + P.len() + 64).is_none_or(|b| !hex(b));
            if h.iter().all(hex) && next_ok {
                if let Ok(d) = Digest::parse(&format!("sha256:{}", String::from_utf8_lossy(h))) {
                    out.insert(d);
                }
                i += P.len() + 64;
                continue;
            }
        }
        i += 1;
    }
}

/// Collect the store's garbage: roots are every tag (taken by the collector
/// under the lock) and the build cache's records.
pub fn collect_garbage(store: &BlobStore) -> Result<GcStats> {
    let root = paths::xbuild_root()?;
    let lock = store.exclusive_lock()?;
    let roots = cache_roots(&root)?;
    Ok(gc::gc_locked(store, &lock, &roots)?)
}

/// `xbuild rmi`.
pub fn cmd_rmi(images: &[String]) -> Result<()> {
    let store = paths::open_store()?;
    let mut errors = Vec::new();
    let mut untagged = Vec::new();
    for image in images {
        match find_image(&store, image) {
            Ok((name, target)) => {
                store.delete_ref(&name)?;
                println!("Untagged: {}", familiar(&name));
                untagged.push(target);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !untagged.is_empty() {
        collect_garbage(&store)?;
        let mut seen = BTreeSet::new();
        for t in untagged {
            if !store.exists(&t) && seen.insert(t.clone()) {
                println!("Deleted: {t}");
            }
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\nerror: "));
    }
    Ok(())
}

fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    io::stderr().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}

/// `xbuild image prune`.
pub fn cmd_prune(all: bool, force: bool) -> Result<()> {
    if !force {
        let q = if all {
            "WARNING! This will remove all images (every tag) and the content no build cache uses.\nAre you sure you want to continue?"
        } else {
            "WARNING! This will remove all dangling images.\nAre you sure you want to continue?"
        };
        if !confirm(q)? {
            return Ok(());
        }
    }
    let store = paths::open_store()?;
    let mut removed = Vec::new();
    for (name, target) in store.list_refs()? {
        let Ok(r) = Reference::parse(&name) else {
            continue;
        };
        if r.to_string() != name {
            continue;
        }
        let broken = describe(&store, &target)
            .and_then(|d| Ok(archive::collect_blobs(&store, &d)?))
            .is_err();
        if all || broken {
            store.delete_ref(&name)?;
            removed.push(r.familiar());
        }
    }
    let stats = collect_garbage(&store)?;
    if !removed.is_empty() || stats.blobs_removed > 0 {
        println!("Deleted Images:");
        for n in &removed {
            println!("untagged: {n}");
        }
        for d in &stats.removed {
            println!("deleted: {d}");
        }
        println!();
    }
    println!("Total reclaimed space: {}", human_size(stats.bytes_removed));
    Ok(())
}

/// `xbuild save`.
pub fn cmd_save(
    output: &Path,
    format: SaveFormat,
    platform: Option<&str>,
    images: &[String],
) -> Result<()> {
    let store = paths::open_store()?;
    let want = platform_arg(platform)?;
    // The shared lock keeps a concurrent GC from deleting what is being saved.
    let _lock = store.shared_lock()?;
    let mut list: Vec<(Descriptor, Vec<String>)> = Vec::new();
    for image in images {
        let (name, target) = find_image(&store, image)?;
        let mut d = describe(&store, &target)?;
        if format == SaveFormat::Docker {
            let m = read_manifest(&store, &d)?;
            if matches!(m, Manifest::Index(_)) {
                d = select_platform(&store, &d, Some(&want))
                    .with_context(|| format!("saving {} as a docker archive (use --platform, or --format oci to keep every platform)", familiar(&name)))?;
            }
        }
        match list.iter_mut().find(|(x, _)| x.digest == d.digest) {
            Some((_, names)) => names.push(name),
            None => list.push((d, vec![name])),
        }
    }
    write_dest(output, |w| {
        match format {
            SaveFormat::Docker => archive::write_docker_archive(&store, &list, w)?,
            SaveFormat::Oci => archive::write_oci_archive_multi(&store, &list, w)?,
        };
        Ok(())
    })?;
    Ok(())
}

/// `xbuild load`.
pub fn cmd_load(input: &Path, quiet: bool) -> Result<()> {
    let store = paths::open_store()?;
    let reader: Box<dyn io::Read> = if input.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(fs::File::open(input).with_context(|| format!("opening {}", input.display()))?)
    };
    let lock = store.shared_lock()?;
    let images = archive::read_archive(reader, &store)
        .with_context(|| format!("loading {}", input.display()))?;
    let mut untagged = 0;
    for (d, names) in &images {
        if names.is_empty() {
            untagged += 1;
            println!("Loaded image ID: {}", d.digest);
            continue;
        }
        for n in names {
            let r = parse_ref(n).with_context(|| format!("image name {n:?} in the archive"))?;
            tag(&store, d, &[r.to_string()])?;
            if quiet {
                println!("{}", r.familiar());
            } else {
                println!("Loaded image: {}", r.familiar());
            }
        }
    }
    drop(lock);
    if untagged > 0 {
        eprintln!("warning: {untagged} image(s) in the archive have no name; they are removed by the next garbage collection unless tagged");
    }
    if images.is_empty() {
        bail!("the archive holds no image");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-01-02T03:04:05Z"), Some(1704164645));
        assert_eq!(
            parse_rfc3339("2024-01-02T03:04:05.999999999Z"),
            Some(1704164645)
        );
        assert_eq!(parse_rfc3339("2024-01-02T05:04:05+02:00"), Some(1704164645));
        assert_eq!(parse_rfc3339("2024-01-02"), None);
        assert_eq!(parse_rfc3339("2024-13-02T03:04:05Z"), None);
    }

    #[test]
    fn humans() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1234), "1.234kB");
        assert_eq!(human_size(7_050_000), "7.05MB");
        assert_eq!(human_size(123_456_789), "123.5MB");
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(150), "2 minutes");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }

    #[test]
    fn digest_scan() {
        let h = "a".repeat(64);
        let text = format!(r#"{{"x":"sha256:{h}","y":"sha256:{h}0","z":"sha256:abc"}}"#);
        let mut out = BTreeSet::new();
        scan_digests(text.as_bytes(), &mut out);
        assert_eq!(out.len(), 1);
    }
}
