//! Image archives: OCI image-layout tarballs and `docker save` tarballs,
//! written and read in a streaming way (a layer is never held in memory).
//!
//! - [`write_oci_archive`] writes an OCI image layout (`oci-layout`,
//!   `index.json`, `blobs/<alg>/<hex>`) holding a manifest or a whole index and
//!   every blob it reaches.
//! - [`write_docker_archive`] writes what `docker save` (Docker 25 and later)
//!   writes: the same OCI layout plus Docker's `manifest.json` and
//!   `repositories`, one platform per image. Layers are stored as they are in
//!   the store (gzip), which `docker load`, `podman load` and skopeo accept.
//! - [`read_archive`] reads either (also the pre-25 docker layout with
//!   `<id>/layer.tar`, and gzip-compressed archives), ingests every blob into
//!   the store with digest verification and answers the images it held.
//!
//! Written archives are deterministic: entries sorted by path, fixed mtime,
//! owner and mode, so the same image always gives the same bytes.

use crate::config::{ConfigError, ImageConfig};
use crate::descriptor::Descriptor;
use crate::digest::{Digest, DigestWriter};
use crate::manifest::{ImageIndex, ImageManifest, Manifest, ManifestError};
use crate::media_types as mt;
use crate::platform::Platform;
use crate::reference::Reference;
use crate::store::{BlobStore, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read, Write};

/// Annotation holding the tag of an image in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation holding the full image name (containerd, Docker 25+).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// Metadata files (`index.json`, `manifest.json`, ...) larger than this are refused.
pub const METADATA_LIMIT: u64 = 16 * 1024 * 1024;
/// Indexes nested deeper than this are refused.
const MAX_DEPTH: usize = 8;

/// Errors from writing or reading archives.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The blob store failed (includes digest and size mismatches).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest or index could not be parsed or encoded.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An image config could not be parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Writing the archive failed.
    #[error("writing archive: {0}")]
    Write(#[source] io::Error),
    /// Reading the archive failed (not a tar, truncated, ...).
    #[error("reading archive: {0}")]
    Read(#[source] io::Error),
    /// A JSON metadata file of the archive is malformed.
    #[error("invalid {file} in archive: {source}")]
    Json {
        /// The file.
        file: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// An entry name is absolute, has `..`, or a link points outside the archive.
    #[error("refusing archive entry {0:?}: unsafe path")]
    UnsafePath(String),
    /// An entry of a kind archives never hold (device, fifo, ...).
    #[error("refusing archive entry {name:?}: unsupported entry type {kind}")]
    UnsupportedEntry {
        /// The entry name.
        name: String,
        /// The tar type flag.
        kind: String,
    },
    /// A metadata file is too large.
    #[error("archive file {0} is larger than {METADATA_LIMIT} bytes")]
    TooLarge(String),
    /// Neither `index.json` nor `manifest.json` was found.
    #[error("not an image archive: it has neither index.json (OCI layout) nor manifest.json (docker save)")]
    Unrecognized,
    /// A file the archive's metadata names is not in it.
    #[error("archive is incomplete: {0} is referenced but missing")]
    MissingFile(String),
    /// A blob the image needs is neither in the archive nor in the store.
    #[error("blob {digest} ({what}) is missing")]
    MissingBlob {
        /// The blob.
        digest: Digest,
        /// What it is (manifest, config, layer ...).
        what: String,
    },
    /// A descriptor's size disagrees with the blob.
    #[error("blob {digest} has {actual} bytes but its descriptor says {expected}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// Size from the descriptor.
        expected: u64,
        /// Size in the store.
        actual: u64,
    },
    /// An index was given where one platform is needed.
    #[error("{digest} is a multi-platform index ({}); choose one platform", platforms.join(", "))]
    MultiPlatform {
        /// The index.
        digest: Digest,
        /// Its platforms.
        platforms: Vec<String>,
    },
    /// The requested platform is not in the index.
    #[error("platform {wanted} not found in {digest} (available: {})", available.join(", "))]
    PlatformNotFound {
        /// The index.
        digest: Digest,
        /// The platform asked for.
        wanted: String,
        /// What the index has.
        available: Vec<String>,
    },
    /// Something about the image is inconsistent.
    #[error("invalid image: {0}")]
    Invalid(String),
    /// A name given for the archive is not a valid reference.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// Walking images
// ---------------------------------------------------------------------------

fn check_size(store: &BlobStore, d: &Descriptor, what: &str) -> Result<u64> {
    let size = match store.size_of(&d.digest) {
        Ok(s) => s,
        Err(StoreError::NotFound(_)) => {
            return Err(ArchiveError::MissingBlob {
                digest: d.digest.clone(),
                what: what.to_string(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    if size != d.size {
        // The stored blob is damaged (the descriptor was made from the
        // right content): quarantine it and say so.
        if let Err(e) = store.open_verified(&d.digest, Some(d.size)) {
            return Err(e.into());
        }
        return Err(ArchiveError::SizeMismatch {
            digest: d.digest.clone(),
            expected: d.size,
            actual: size,
        });
    }
    Ok(size)
}

/// Read and parse the manifest or index `d` describes, checking its size.
pub fn read_manifest(store: &BlobStore, d: &Descriptor) -> Result<Manifest> {
    check_size(store, d, "manifest")?;
    let bytes = store.read_to_vec(&d.digest)?;
    let ct = (mt::is_manifest(&d.media_type) || mt::is_index(&d.media_type))
        .then_some(d.media_type.as_str());
    Ok(Manifest::parse(&bytes, ct)?)
}

/// Every blob reachable from `root` (a manifest or an index), with its size,
/// sorted by digest. Fails when a blob is missing; missing non-distributable
/// layers are skipped, since archives and registries do not carry them.
pub fn collect_blobs(store: &BlobStore, root: &Descriptor) -> Result<BTreeMap<Digest, u64>> {
    let mut out = BTreeMap::new();
    walk(store, root, &mut out, 0)?;
    Ok(out)
}

fn walk(
    store: &BlobStore,
    d: &Descriptor,
    out: &mut BTreeMap<Digest, u64>,
    depth: usize,
) -> Result<()> {
    if out.contains_key(&d.digest) {
        return Ok(());
    }
    if depth > MAX_DEPTH {
        return Err(ArchiveError::Invalid(format!(
            "indexes nested more than {MAX_DEPTH} deep at {}",
            d.digest
        )));
    }
    let is_doc = mt::is_manifest(&d.media_type) || mt::is_index(&d.media_type);
    if !is_doc {
        // An index entry of an unknown kind (artifact): carry it if present.
        if let Ok(size) = check_size(store, d, &d.media_type) {
            out.insert(d.digest.clone(), size);
        }
        return Ok(());
    }
    let m = read_manifest(store, d)?;
    out.insert(d.digest.clone(), d.size);
    match m {
        Manifest::Index(idx) => {
            for child in &idx.manifests {
                walk(store, child, out, depth + 1)?;
            }
        }
        Manifest::Image(man) => {
            let size = check_size(store, &man.config, "config")?;
            out.insert(man.config.digest.clone(), size);
            for l in &man.layers {
                match check_size(store, l, "layer") {
                    Ok(size) => {
                        out.insert(l.digest.clone(), size);
                    }
                    Err(ArchiveError::MissingBlob { .. })
                        if mt::is_nondistributable(&l.media_type) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// The platforms an index lists (entries without a platform and
/// `unknown/unknown` attestation entries left out), as strings.
pub fn index_platforms(idx: &ImageIndex) -> Vec<String> {
    idx.manifests
        .iter()
        .filter_map(Descriptor::platform)
        .filter(|p| p.os() != "unknown")
        .map(|p| p.to_string())
        .collect()
}

/// Resolve `d` to a single-platform manifest descriptor: a manifest is
/// answered as is; for an index, `platform` picks the entry, and without one
/// an index with exactly one platform answers it and others are an error
/// naming the platforms.
pub fn select_platform(
    store: &BlobStore,
    d: &Descriptor,
    platform: Option<&Platform>,
) -> Result<Descriptor> {
    let mut cur = d.clone();
    for _ in 0..MAX_DEPTH {
        let idx = match read_manifest(store, &cur)? {
            Manifest::Image(_) => return Ok(cur),
            Manifest::Index(idx) => idx,
        };
        let candidates: Vec<&Descriptor> = idx
            .manifests
            .iter()
            .filter(|m| m.platform().is_some_and(|p| p.os() != "unknown"))
            .collect();
        let next = match platform {
            Some(p) => {
                idx.find_platform(p)
                    .cloned()
                    .ok_or_else(|| ArchiveError::PlatformNotFound {
                        digest: cur.digest.clone(),
                        wanted: p.to_string(),
                        available: index_platforms(&idx),
                    })?
            }
            None if candidates.len() == 1 => candidates[0].clone(),
            None => {
                return Err(ArchiveError::MultiPlatform {
                    digest: cur.digest.clone(),
                    platforms: index_platforms(&idx),
                })
            }
        };
        cur = next;
    }
    Err(ArchiveError::Invalid(format!(
        "indexes nested more than {MAX_DEPTH} deep at {}",
        d.digest
    )))
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// What goes into one tar entry.
enum Source {
    Dir,
    Bytes(Vec<u8>),
    Blob(Digest, u64),
}

/// A reader that fails unless exactly `left` bytes come out of `inner`, so
/// that a blob changing under us can never produce a corrupt tar.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob shorter than its recorded size",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm(), d.hex())
}

/// Write `entries` as a deterministic tar: sorted by path, mtime 0, owner
/// 0:0 with no names, mode 0644 (files) / 0755 (directories).
fn write_tar<W: Write>(store: &BlobStore, entries: BTreeMap<String, Source>, out: W) -> Result<W> {
    let mut b = tar::Builder::new(out);
    for (path, src) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match src {
            Source::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, &path, io::empty())
                    .map_err(ArchiveError::Write)?;
            }
            Source::Bytes(bytes) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, &path, &bytes[..])
                    .map_err(ArchiveError::Write)?;
            }
            Source::Blob(d, size) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(size);
                // Checked while it is copied: a corrupt blob fails the
                // export, naming the blob, and is quarantined.
                let f = store.open_verified(&d, Some(size))?;
                let r = Exact {
                    inner: BufReader::with_capacity(256 * 1024, f),
                    left: size,
                };
                b.append_data(&mut h, &path, r)
                    .map_err(ArchiveError::Write)?;
            }
        }
    }
    b.into_inner().map_err(ArchiveError::Write)
}

fn parse_name(name: &str) -> Result<Reference> {
    Reference::parse(name).map_err(|e| ArchiveError::InvalidName {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// The `index.json` entries for one image: one per name (annotated with the
/// full name and the tag, as Docker and containerd write them), or a bare
/// one when it has no names.
fn index_entries(d: &Descriptor, names: &[String]) -> Result<Vec<Descriptor>> {
    let mut base = d.clone();
    base.annotations.clear();
    if names.is_empty() {
        return Ok(vec![base]);
    }
    let mut out = Vec::new();
    for n in names {
        let r = parse_name(n)?;
        let mut e = base.clone();
        e.annotations
            .insert(ANNOTATION_IMAGE_NAME.to_string(), r.to_string());
        if let Some(t) = r.tag() {
            e.annotations
                .insert(ANNOTATION_REF_NAME.to_string(), t.to_string());
        }
        out.push(e);
    }
    Ok(out)
}

fn layout_entries(
    store: &BlobStore,
    images: &[(Descriptor, Vec<String>)],
) -> Result<BTreeMap<String, Source>> {
    let mut blobs = BTreeMap::new();
    let mut index = Vec::new();
    for (d, names) in images {
        for (digest, size) in collect_blobs(store, d)? {
            blobs.insert(digest, size);
        }
        index.extend(index_entries(d, names)?);
    }
    let mut entries = BTreeMap::new();
    entries.insert("blobs/".to_string(), Source::Dir);
    for (digest, size) in blobs {
        entries
            .entry(format!("blobs/{}/", digest.algorithm()))
            .or_insert(Source::Dir);
        entries.insert(blob_path(&digest), Source::Blob(digest, size));
    }
    entries.insert(
        "oci-layout".to_string(),
        Source::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
    );
    let idx = ImageIndex::new_oci(index).encode()?;
    entries.insert("index.json".to_string(), Source::Bytes(idx.bytes));
    Ok(entries)
}

/// Write an OCI image-layout tar holding `root` (a single-platform manifest
/// or a whole index) and every blob it reaches. Each of `names` (image
/// references such as `app:1.0`, normalized here) becomes one `index.json`
/// entry annotated with [`ANNOTATION_IMAGE_NAME`] (the full name) and
/// [`ANNOTATION_REF_NAME`] (the tag). Answers `out`.
pub fn write_oci_archive<W: Write>(
    store: &BlobStore,
    root: &Descriptor,
    names: &[String],
    out: W,
) -> Result<W> {
    write_oci_archive_multi(store, &[(root.clone(), names.to_vec())], out)
}

/// Like [`write_oci_archive`], for several images in one layout.
pub fn write_oci_archive_multi<W: Write>(
    store: &BlobStore,
    images: &[(Descriptor, Vec<String>)],
    out: W,
) -> Result<W> {
    let entries = layout_entries(store, images)?;
    write_tar(store, entries, out)
}

/// One entry of Docker's `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default, deserialize_with = "null_default")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers", default, deserialize_with = "null_default")]
    layers: Vec<String>,
}

fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Write a `docker load` / `podman load` archive of `images`, each a
/// single-platform manifest with its repo tags (`app:1.0`; normalized to
/// Docker's short form here). The layout is what `docker save` writes since
/// Docker 25: `manifest.json` and `repositories` for older readers next to
/// an OCI layout, all blobs under `blobs/sha256/`. An index is refused with an
/// error naming its platforms; resolve it with [`select_platform`] first.
pub fn write_docker_archive<W: Write>(
    store: &BlobStore,
    images: &[(Descriptor, Vec<String>)],
    out: W,
) -> Result<W> {
    let mut docker = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (d, names) in images {
        let man = match read_manifest(store, d)? {
            Manifest::Image(m) => m,
            Manifest::Index(idx) => {
                return Err(ArchiveError::MultiPlatform {
                    digest: d.digest.clone(),
                    platforms: index_platforms(&idx),
                })
            }
        };
        let mut tags = Vec::new();
        for n in names {
            let r = parse_name(n)?;
            let Some(tag) = r.tag() else {
                return Err(ArchiveError::InvalidName {
                    name: n.clone(),
                    reason: "a docker archive needs a tag, not only a digest".into(),
                });
            };
            let r = r.without_digest();
            let fam = r.familiar();
            let repo = fam
                .strip_suffix(&format!(":{tag}"))
                .unwrap_or(&fam)
                .to_string();
            if let Some(top) = man.layers.last() {
                repositories
                    .entry(repo)
                    .or_default()
                    .insert(tag.to_string(), top.digest.hex().to_string());
            }
            tags.push(fam);
        }
        docker.push(DockerEntry {
            config: blob_path(&man.config.digest),
            repo_tags: tags,
            layers: man.layers.iter().map(|l| blob_path(&l.digest)).collect(),
        });
    }
    let mut entries = layout_entries(store, images)?;
    let mj = serde_json::to_vec(&docker).map_err(|e| ArchiveError::Invalid(e.to_string()))?;
    entries.insert("manifest.json".to_string(), Source::Bytes(mj));
    if !repositories.is_empty() {
        let rj =
            serde_json::to_vec(&repositories).map_err(|e| ArchiveError::Invalid(e.to_string()))?;
        entries.insert("repositories".to_string(), Source::Bytes(rj));
    }
    write_tar(store, entries, out)
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Normalize an entry name: `./` and empty components dropped; absolute
/// names and `..` refused.
fn clean_path(raw: &str) -> Result<String> {
    if raw.starts_with('/') {
        return Err(ArchiveError::UnsafePath(raw.to_string()));
    }
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(ArchiveError::UnsafePath(raw.to_string())),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// Resolve a symlink target relative to the link's directory, refusing
/// anything that leaves the archive.
fn join_link(link: &str, target: &str) -> Result<String> {
    if target.starts_with('/') {
        return Err(ArchiveError::UnsafePath(format!("{link} -> {target}")));
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ArchiveError::UnsafePath(format!("{link} -> {target}")));
                }
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn blob_name(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

const METADATA_FILES: &[&str] = &["index.json", "manifest.json", "oci-layout", "repositories"];

/// What the scan of an archive found.
#[derive(Default)]
struct Scan {
    /// Regular files ingested into the store.
    files: BTreeMap<String, (Digest, u64)>,
    /// Small metadata files kept in memory.
    meta: BTreeMap<String, Vec<u8>>,
    /// Links: path -> target path (archive-relative).
    links: BTreeMap<String, String>,
}

impl Scan {
    fn resolve(&self, path: &str) -> Result<(Digest, u64)> {
        let mut p = clean_path(path)?;
        for _ in 0..32 {
            if let Some(f) = self.files.get(&p) {
                return Ok(f.clone());
            }
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        Err(ArchiveError::MissingFile(path.to_string()))
    }
}

fn scan<R: Read>(reader: R, store: &BlobStore) -> Result<Scan> {
    let mut br = BufReader::with_capacity(256 * 1024, reader);
    let head = br.fill_buf().map_err(ArchiveError::Read)?;
    let input: Box<dyn Read + '_> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(br))
    } else {
        Box::new(br)
    };
    let mut ar = tar::Archive::new(input);
    let mut s = Scan::default();
    for entry in ar.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let raw = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|e| ArchiveError::UnsafePath(String::from_utf8_lossy(e.as_bytes()).into()))?;
        let path = clean_path(&raw)?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let resolved = if kind == tar::EntryType::Link {
                    clean_path(&target)?
                } else {
                    join_link(&path, &target)?
                };
                s.links.insert(path, resolved);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                if METADATA_FILES.contains(&path.as_str()) {
                    if size > METADATA_LIMIT {
                        return Err(ArchiveError::TooLarge(path));
                    }
                    let mut v = Vec::with_capacity(size as usize);
                    (&mut entry)
                        .take(METADATA_LIMIT + 1)
                        .read_to_end(&mut v)
                        .map_err(ArchiveError::Read)?;
                    s.meta.insert(path, v);
                } else {
                    let expected = blob_name(&path);
                    let got = store.ingest(&mut entry, expected.as_ref(), Some(size))?;
                    s.files.insert(path, got);
                }
            }
            other => {
                return Err(ArchiveError::UnsupportedEntry {
                    name: raw,
                    kind: format!("{other:?}"),
                })
            }
        }
    }
    Ok(s)
}

fn parse_json<T: serde::de::DeserializeOwned>(file: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| ArchiveError::Json {
        file: file.to_string(),
        source,
    })
}

/// Read an image archive (OCI layout or docker save; plain or gzip tar),
/// ingest every blob into `store` (verifying each `blobs/<alg>/<hex>` against
/// its name) and answer the images it holds with their names.
///
/// For an OCI layout the images are the `index.json` entries, named by
/// [`ANNOTATION_IMAGE_NAME`] or else [`ANNOTATION_REF_NAME`] as written.
/// For a docker archive they are the `manifest.json` entries, named by their
/// `RepoTags`; when the archive also carries the image's original manifest
/// (Docker 25+, xbuild) that manifest is answered, otherwise an OCI manifest
/// is built for the layers as stored and each layer's diffID is checked
/// against the config.
///
/// Callers that tag the answered images should hold
/// [`BlobStore::shared_lock`] around this call and the tagging, so that a
/// concurrent garbage collection cannot remove the fresh blobs in between.
pub fn read_archive<R: Read>(
    reader: R,
    store: &BlobStore,
) -> Result<Vec<(Descriptor, Vec<String>)>> {
    let s = scan(reader, store)?;
    let index: Option<ImageIndex> = match s.meta.get("index.json") {
        Some(b) => Some(parse_json("index.json", b)?),
        None => None,
    };
    if let Some(mj) = s.meta.get("manifest.json") {
        let entries: Vec<DockerEntry> = parse_json("manifest.json", mj)?;
        let known = index
            .as_ref()
            .map(|i| known_manifests(store, i))
            .unwrap_or_default();
        let mut out = Vec::new();
        for e in &entries {
            let d = docker_image(store, &s, e, &known)?;
            out.push((d, e.repo_tags.clone()));
        }
        return Ok(out);
    }
    let Some(index) = index else {
        return Err(ArchiveError::Unrecognized);
    };
    // One image per distinct descriptor, names merged in order.
    let mut out: Vec<(Descriptor, Vec<String>)> = Vec::new();
    for e in &index.manifests {
        collect_blobs(store, e)?;
        let name = e
            .annotations
            .get(ANNOTATION_IMAGE_NAME)
            .or_else(|| e.annotations.get(ANNOTATION_REF_NAME))
            .cloned();
        let mut d = e.clone();
        d.annotations.clear();
        match out.iter_mut().find(|(x, _)| x.digest == d.digest) {
            Some((_, names)) => names.extend(name),
            None => out.push((d, name.into_iter().collect())),
        }
    }
    Ok(out)
}

/// The single-platform manifests an `index.json` reaches and that are
/// complete in the store, keyed by (config digest, layer digests).
fn known_manifests(
    store: &BlobStore,
    index: &ImageIndex,
) -> BTreeMap<(Digest, Vec<Digest>), Descriptor> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(Descriptor, usize)> =
        index.manifests.iter().map(|d| (d.clone(), 0)).collect();
    let mut seen = BTreeSet::new();
    while let Some((d, depth)) = stack.pop() {
        if depth > MAX_DEPTH || !seen.insert(d.digest.clone()) {
            continue;
        }
        match read_manifest(store, &d) {
            Ok(Manifest::Image(m)) => {
                if collect_blobs(store, &d).is_ok() {
                    let key = (
                        m.config.digest.clone(),
                        m.layers.iter().map(|l| l.digest.clone()).collect(),
                    );
                    let mut d = d.clone();
                    d.annotations.clear();
                    out.insert(key, d);
                }
            }
            Ok(Manifest::Index(i)) => {
                stack.extend(i.manifests.into_iter().map(|c| (c, depth + 1)));
            }
            Err(_) => {}
        }
    }
    out
}

fn sniff(store: &BlobStore, d: &Digest) -> Result<mt::Compression> {
    let mut f = store.open_blob(d)?;
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        let k = f.read(&mut head[n..]).map_err(ArchiveError::Read)?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(if head[..n].starts_with(&[0x1f, 0x8b]) {
        mt::Compression::Gzip
    } else if head[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        mt::Compression::Zstd
    } else {
        mt::Compression::None
    })
}

/// The diffID of a gzip layer in the store (sha256 of the decompressed stream).
fn gzip_diff_id(store: &BlobStore, d: &Digest) -> Result<Digest> {
    let f = store.open_blob(d)?;
    let mut dec = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(256 * 1024, f));
    let mut w = DigestWriter::new(io::sink());
    io::copy(&mut dec, &mut w).map_err(ArchiveError::Read)?;
    Ok(w.finish().0)
}

fn docker_image(
    store: &BlobStore,
    s: &Scan,
    e: &DockerEntry,
    known: &BTreeMap<(Digest, Vec<Digest>), Descriptor>,
) -> Result<Descriptor> {
    let (cdigest, csize) = s.resolve(&e.config)?;
    let config = ImageConfig::from_slice(&store.read_to_vec(&cdigest)?)?;
    let platform = config.platform();
    if config.rootfs.diff_ids.len() != e.layers.len() {
        return Err(ArchiveError::Invalid(format!(
            "config {cdigest} lists {} diffIDs but manifest.json lists {} layers",
            config.rootfs.diff_ids.len(),
            e.layers.len()
        )));
    }
    let mut layers = Vec::new();
    for p in &e.layers {
        layers.push(s.resolve(p)?);
    }
    let key = (
        cdigest.clone(),
        layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
    );
    if let Some(d) = known.get(&key) {
        let mut d = d.clone();
        d.platform.get_or_insert_with(|| (&platform).into());
        return Ok(d);
    }
    let mut descs = Vec::new();
    for ((d, size), diff_id) in layers.iter().zip(&config.rootfs.diff_ids) {
        let comp = sniff(store, d)?;
        let (media_type, actual) = match comp {
            mt::Compression::None => (mt::OCI_LAYER_TAR, Some(d.clone())),
            mt::Compression::Gzip => (mt::OCI_LAYER_TAR_GZIP, Some(gzip_diff_id(store, d)?)),
            mt::Compression::Zstd => (
                mt::OCI_LAYER_TAR_ZSTD,
                Some(
                    crate::compress::diff_id(store, d, mt::Compression::Zstd)
                        .map_err(|e| ArchiveError::Invalid(e.to_string()))?,
                ),
            ),
        };
        if let Some(a) = actual {
            if &a != diff_id {
                return Err(ArchiveError::Invalid(format!(
                    "layer {d} has diffID {a} but the config says {diff_id}"
                )));
            }
        }
        descs.push(Descriptor::new(media_type, d.clone(), *size));
    }
    let cdesc = Descriptor::new(mt::OCI_CONFIG, cdigest, csize);
    let enc = ImageManifest::new_oci(cdesc, descs).encode()?;
    store.put_bytes(&enc.bytes)?;
    Ok(enc.descriptor.with_platform(&platform))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(clean_path("./blobs//sha256/x").unwrap(), "blobs/sha256/x");
        assert!(clean_path("../x").is_err());
        assert!(clean_path("a/../../x").is_err());
        assert!(clean_path("/etc/passwd").is_err());
        assert_eq!(
            join_link("a/b/layer.tar", "../c/layer.tar").unwrap(),
            "a/c/layer.tar"
        );
        assert!(join_link("a/layer.tar", "../../x").is_err());
        assert!(join_link("a/layer.tar", "/x").is_err());
        assert!(blob_name("blobs/sha256/abc").is_none());
        let d = Digest::sha256_of(b"x");
        assert_eq!(blob_name(&blob_path(&d)), Some(d));
    }
}
