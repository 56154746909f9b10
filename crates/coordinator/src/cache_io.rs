//! `--cache-to` / `--cache-from`: build cache export and import.
//!
//! The exported cache is one OCI image index over platforms, so a
//! multi-platform build never loses a platform's cache. Each platform is an
//! image manifest whose config is the records blob (the platform's cache
//! records and the context listings they name, as JSON; no secret and no
//! build-arg value is in it) and whose layers are the records' layer blobs.
//! The registry form is that index under a tag; the local form is an OCI
//! layout directory (`oci-layout`, `index.json`, `blobs/sha256/`).
//! Exporting merges with what the destination already holds for other
//! platforms.
//!
//! `mode=min` (the default) exports the steps of the target stage;
//! `mode=max` every stage's. `compression=gzip|zstd|uncompressed` (with
//! `compression-level=`) writes the exported layers in that compression;
//! without it they go out as stored. A record names its layer by the
//! exported blob, and keeps its diffID (the uncompressed tar), so it stays
//! valid whatever the compression. Every exported layer was built by a
//! step (base images are not in the cache), so `force-compression=true`
//! changes nothing here; it is accepted as buildx accepts it. Import writes the records, then fetches only
//! the layer blobs of the steps that will hit and are missing locally.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use xbuild_engine::cache::CacheRecord;
use xbuild_engine::context::ContextIndex;
use xbuild_engine::events::{Event, EventSink, NullSink, Transfer};
use xbuild_engine::explain::ExplainStep;
use xbuild_engine::{Engine, ImageSource, Secrets, SolveRequest, VertexIds};
use xbuild_oci::compress::{recompress, LayerPolicy};
use xbuild_oci::manifest::{ImageIndex, ImageManifest};
use xbuild_oci::media_types::{layer_compression, Compression};
use xbuild_oci::reference::Reference;
use xbuild_oci::{BlobStore, Descriptor, Digest, Platform};
use xbuild_plan::BuildGraph;
use xbuild_registry::{Progress, Registry, RegistryError};

/// A `--cache-to` / `--cache-from` value that cannot be parsed.
#[derive(Debug, thiserror::Error)]
pub enum CacheSpecError {
    /// A malformed or unknown field, or fields that do not go together.
    #[error("invalid {flag} {spec:?}: {reason}")]
    Invalid {
        /// `--cache-to` or `--cache-from`.
        flag: &'static str,
        /// The value.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `ref=` is not an image reference.
    #[error("invalid {flag} {spec:?}: ref {reference:?}")]
    Reference {
        /// `--cache-to` or `--cache-from`.
        flag: &'static str,
        /// The value.
        spec: String,
        /// The reference as written.
        reference: String,
        /// Why.
        #[source]
        source: Box<xbuild_oci::reference::ReferenceError>,
    },
    /// `type=gha`, which needs a GitHub Actions cache client.
    #[error(
        "{flag} type=gha is not supported: xbuild has no GitHub Actions cache client; \
         use type=registry,ref=REGISTRY/REPO:buildcache (for example on ghcr.io), \
         or type=local with actions/cache"
    )]
    Gha {
        /// `--cache-to` or `--cache-from`.
        flag: &'static str,
    },
}

/// Why the build cache could not be exported or imported.
#[derive(Debug, thiserror::Error)]
pub enum CacheIoError {
    /// Exporting to one `--cache-to` destination failed.
    #[error("exporting the build cache to {spec}")]
    Export {
        /// The destination (`registry REF`, `local DIR`).
        spec: String,
        /// Why.
        #[source]
        source: Box<CacheIoError>,
    },
    /// The steps' cache keys could not be computed.
    #[error(transparent)]
    Keys(Box<xbuild_engine::EngineError>),
    /// The local build cache failed.
    #[error(transparent)]
    Cache(#[from] xbuild_engine::cache::CacheError),
    /// The content store failed (the error names the blob).
    #[error(transparent)]
    Store(#[from] xbuild_oci::store::StoreError),
    /// A manifest or index could not be read or encoded.
    #[error(transparent)]
    Manifest(#[from] xbuild_oci::manifest::ManifestError),
    /// The registry failed (the error names the reference).
    #[error(transparent)]
    Registry(Box<RegistryError>),
    /// A file or directory of a local cache could not be read or written.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done (`creating`, `reading`, `writing`, `opening`).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The records blob could not be encoded.
    #[error("encoding the records blob of {platform}")]
    EncodeRecords {
        /// The platform.
        platform: Platform,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An imported records blob is not valid JSON of the expected shape.
    #[error("reading the records blob {digest}")]
    Records {
        /// The blob.
        digest: Digest,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An imported records blob names an invalid platform.
    #[error("records blob platform {platform:?}")]
    RecordsPlatform {
        /// The platform as written.
        platform: String,
        /// Why.
        #[source]
        source: xbuild_oci::platform::PlatformError,
    },
    /// A records blob lists another platform than the index says.
    #[error("records of {listed} listed for {platform}")]
    WrongPlatform {
        /// The records blob's platform.
        listed: String,
        /// The index entry's platform.
        platform: Platform,
    },
    /// A fetched blob does not hash to its digest.
    #[error("{what} {digest} does not match its digest")]
    DigestMismatch {
        /// `manifest` or `records blob`.
        what: &'static str,
        /// The digest it was fetched by.
        digest: Digest,
    },
    /// The manifest is not an xbuild cache.
    #[error("{digest} is not an xbuild cache (config type {config_type})")]
    NotACache {
        /// The manifest.
        digest: Digest,
        /// Its config's media type.
        config_type: String,
    },
    /// A cache layer could not be recompressed.
    #[error("compressing cache layer {digest}")]
    Compress {
        /// The layer.
        digest: Digest,
        /// Why.
        #[source]
        source: xbuild_oci::compress::CompressError,
    },
    /// A recompressed cache layer's diffID is not its record's.
    #[error("cache layer {digest} does not match its record's diffID {want} (it holds {got})")]
    DiffIdMismatch {
        /// The layer.
        digest: Digest,
        /// The record's diffID.
        want: Digest,
        /// The layer's.
        got: Digest,
    },
}

impl From<RegistryError> for CacheIoError {
    fn from(e: RegistryError) -> Self {
        CacheIoError::Registry(Box::new(e))
    }
}

/// `map_err` for a failed file operation on `path`.
fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CacheIoError {
    let path = path.to_path_buf();
    move |source| CacheIoError::Io { op, path, source }
}

type Result<T, E = CacheIoError> = std::result::Result<T, E>;

/// Listing entries a records blob carries at most (it is read into memory
/// on import); past it, misses name the source instead of the paths.
const MAX_LISTING_ENTRIES: usize = 50_000;

/// Media type of the records blob (the manifest's config).
pub const RECORDS_MEDIA_TYPE: &str = "application/vnd.xbuild.cache.records.v1+json";
/// Artifact type of the per-platform manifests and of the index.
pub const CACHE_ARTIFACT_TYPE: &str = "application/vnd.xbuild.cache.v1";

/// Where a cache goes or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSpec {
    /// `type=registry,ref=REF`.
    Registry {
        /// The reference (a tag).
        reference: Reference,
        /// `mode=max`.
        max: bool,
        /// `image-manifest=true`: a single-platform cache is tagged as an
        /// image manifest rather than as an index over one manifest.
        image_manifest: bool,
        /// `ignore-error=true`: a failed export is a warning.
        ignore_error: bool,
        /// `compression=`, `compression-level=`: the exported layers'
        /// compression (`None`: as stored).
        layers: Option<LayerPolicy>,
    },
    /// `type=local,dest=DIR` / `type=local,src=DIR`.
    Local {
        /// The OCI layout directory.
        dir: PathBuf,
        /// `mode=max`.
        max: bool,
        /// `ignore-error=true`: a failed export is a warning.
        ignore_error: bool,
        /// `compression=`, `compression-level=`: the exported layers'
        /// compression (`None`: as stored).
        layers: Option<LayerPolicy>,
    },
}

impl std::fmt::Display for CacheSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheSpec::Registry { reference, .. } => write!(f, "registry {}", reference.familiar()),
            CacheSpec::Local { dir, .. } => write!(f, "local {}", dir.display()),
        }
    }
}

/// Parse one `--cache-to` (`to = true`) or `--cache-from` spec.
pub fn parse_spec(raw: &str, to: bool) -> Result<CacheSpec, CacheSpecError> {
    let flag = if to { "--cache-to" } else { "--cache-from" };
    let invalid = |reason: String| CacheSpecError::Invalid {
        flag,
        spec: raw.to_string(),
        reason,
    };
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for (i, part) in raw.split(',').enumerate() {
        match part.split_once('=') {
            Some((k, v)) => {
                fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
            // `--cache-from user/app:cache`, as buildx accepts.
            None if i == 0 && !part.is_empty() => {
                fields.insert("type".into(), "registry".into());
                fields.insert("ref".into(), part.trim().to_string());
            }
            None => return Err(invalid("expected key=value fields".into())),
        }
    }
    let max = match fields.get("mode").map(String::as_str) {
        None | Some("min") => false,
        Some("max") => true,
        Some(other) => return Err(invalid(format!("mode must be min or max, not {other:?}"))),
    };
    for k in fields.keys() {
        if !matches!(
            k.as_str(),
            "type"
                | "ref"
                | "mode"
                | "dest"
                | "src"
                | "oci-mediatypes"
                | "ignore-error"
                | "image-manifest"
                | "compression"
                | "compression-level"
                | "force-compression"
        ) {
            return Err(invalid(format!("unknown field {k:?}")));
        }
    }
    let flag_bool = |k: &str| -> Result<bool, CacheSpecError> {
        match fields.get(k).map(String::as_str) {
            None => Ok(false),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(invalid(format!("{k} must be true or false, not {v:?}"))),
        }
    };
    let ignore_error = flag_bool("ignore-error")?;
    let image_manifest = flag_bool("image-manifest")?;
    // The cache is always written with OCI media types, and its layers are
    // the step layers as stored; the values are checked, as buildx does.
    if fields.get("oci-mediatypes").map(String::as_str) == Some("false") && image_manifest {
        return Err(invalid(
            "image-manifest=true needs oci-mediatypes=true".into(),
        ));
    }
    flag_bool("oci-mediatypes")?;
    let force = flag_bool("force-compression")?;
    let compression = fields
        .get("compression")
        .map(|c| Compression::parse(c).map_err(invalid))
        .transpose()?;
    let level = fields
        .get("compression-level")
        .map(|l| {
            l.parse::<u32>()
                .map_err(|_| invalid(format!("compression-level must be a number, not {l:?}")))
        })
        .transpose()?;
    let layers = if compression.is_some() || level.is_some() || force {
        // buildx's default cache compression is gzip.
        let c = compression.unwrap_or(Compression::Gzip);
        let level = match level {
            Some(l) => c.check_level(l).map_err(invalid)?,
            None => c.default_level(),
        };
        Some(LayerPolicy {
            compression: c,
            level,
            force,
        })
    } else {
        None
    };
    match fields.get("type").map(String::as_str) {
        Some("gha") => Err(CacheSpecError::Gha { flag }),
        Some("registry") => {
            let r = fields
                .get("ref")
                .ok_or_else(|| invalid("type=registry needs ref=REF".into()))?;
            let reference: Reference = r.parse().map_err(|e| CacheSpecError::Reference {
                flag,
                spec: raw.to_string(),
                reference: r.clone(),
                source: Box::new(e),
            })?;
            Ok(CacheSpec::Registry {
                reference,
                max,
                image_manifest,
                ignore_error,
                layers,
            })
        }
        Some("local") => {
            let key = if to { "dest" } else { "src" };
            let dir = fields
                .get(key)
                .ok_or_else(|| invalid(format!("type=local needs {key}=DIR")))?;
            Ok(CacheSpec::Local {
                dir: PathBuf::from(dir),
                max,
                ignore_error,
                layers,
            })
        }
        Some(t) => Err(invalid(format!(
            "unsupported type {t:?} (registry or local)"
        ))),
        None => Err(invalid("give type=registry or type=local".into())),
    }
}

/// Parse every `--cache-to` and `--cache-from`.
pub fn parse_args(
    to: &[String],
    from: &[String],
) -> Result<(Vec<CacheSpec>, Vec<CacheSpec>), CacheSpecError> {
    let to = to
        .iter()
        .map(|s| parse_spec(s, true))
        .collect::<Result<_, _>>()?;
    let from = from
        .iter()
        .map(|s| parse_spec(s, false))
        .collect::<Result<_, _>>()?;
    Ok((to, from))
}

/// What the records blob holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RecordsBlob {
    version: u32,
    platform: String,
    records: Vec<CacheRecord>,
    #[serde(default)]
    listings: BTreeMap<String, Vec<(String, String)>>,
}

/// The inputs every key computation needs (as a build's).
pub struct KeyInputs<'a> {
    /// The build context.
    pub context_dir: Option<&'a Path>,
    /// Its index.
    pub index: Option<&'a ContextIndex>,
    /// Where images come from.
    pub source: &'a dyn ImageSource,
}

/// Every step's key for `g`, with the local cache's verdict.
async fn keys_of(engine: &Engine, g: &BuildGraph, inp: &KeyInputs<'_>) -> Result<Vec<ExplainStep>> {
    let secrets = Secrets::default();
    let ids = VertexIds::new();
    let req = SolveRequest {
        graph: g,
        context_dir: inp.context_dir,
        context: inp.index,
        source: inp.source,
        events: &NullSink,
        ids: &ids,
        no_cache: false,
        no_cache_filter: &[],
        secrets: &secrets,
        source_date_epoch: None,
        presolved: &[],
    };
    engine
        .explain(req)
        .await
        .map_err(|e| CacheIoError::Keys(Box::new(e)))
}

fn transfer(events: &dyn EventSink, kind: Transfer, label: String) -> impl Fn(Progress) + '_ {
    move |p: Progress| {
        events.emit(Event::Bytes {
            id: None,
            kind,
            label: format!("{label} {}", p.digest.short()),
            current: p.current,
            total: Some(p.total),
        })
    }
}

/// One platform's exported manifest, written into the local store.
fn platform_manifest(
    engine: &Engine,
    platform: &Platform,
    steps: &[ExplainStep],
    target: &str,
    max: bool,
    policy: Option<&LayerPolicy>,
) -> Result<(Descriptor, Vec<Descriptor>)> {
    let cache = engine.cache();
    let store = engine.store();
    let mut blob = RecordsBlob {
        version: 1,
        platform: platform.to_string(),
        ..Default::default()
    };
    let mut layers: Vec<Descriptor> = Vec::new();
    let mut seen = HashSet::new();
    let mut listed = 0;
    for s in steps {
        if s.index == 1 || (!max && s.stage != target) || !seen.insert(s.key.clone()) {
            continue;
        }
        // Filed under the platform that executed the step.
        let Some(mut rec) = cache.get(&s.executes_on, &s.key, store) else {
            continue;
        };
        if let (Some(l), Some(p)) = (&rec.layer, policy) {
            rec.layer = Some(compressed(store, l, rec.diff_id.as_ref(), p)?);
        }
        if let Some(l) = &rec.layer {
            if !layers.iter().any(|x| x.digest == l.digest) {
                layers.push(l.clone());
            }
        }
        for src in rec.trace.iter().flat_map(|t| &t.sources) {
            if let Some(d) = &src.listing {
                if blob.listings.contains_key(d.as_str()) {
                    continue;
                }
                if let Some(l) = cache.get_listing(d) {
                    if listed + l.len() <= MAX_LISTING_ENTRIES {
                        listed += l.len();
                        blob.listings.insert(d.to_string(), l);
                    }
                }
            }
        }
        blob.records.push(rec);
    }
    let bytes = serde_json::to_vec(&blob).map_err(|source| CacheIoError::EncodeRecords {
        platform: platform.clone(),
        source,
    })?;
    let config = Descriptor::new(
        RECORDS_MEDIA_TYPE,
        store.put_bytes(&bytes)?,
        bytes.len() as u64,
    );
    let mut m = ImageManifest::new_oci(config, layers.clone());
    m.artifact_type = Some(CACHE_ARTIFACT_TYPE.to_string());
    let enc = m.encode()?;
    store.put_bytes(&enc.bytes)?;
    Ok((enc.descriptor.with_platform(platform), layers))
}

/// The layer `l` (diffID `diff_id`) in the policy's compression: itself
/// when it already is, else a recompressed blob (written to `store`) whose
/// diffID is checked against the record's.
fn compressed(
    store: &BlobStore,
    l: &Descriptor,
    diff_id: Option<&Digest>,
    policy: &LayerPolicy,
) -> Result<Descriptor> {
    if layer_compression(&l.media_type) == Some(policy.compression) {
        return Ok(l.clone());
    }
    let r = recompress(store, l, policy.compression, policy.level, true).map_err(|source| {
        CacheIoError::Compress {
            digest: l.digest.clone(),
            source,
        }
    })?;
    if let Some(want) = diff_id {
        if *want != r.diff_id {
            return Err(CacheIoError::DiffIdMismatch {
                digest: l.digest.clone(),
                want: want.clone(),
                got: r.diff_id,
            });
        }
    }
    Ok(r.descriptor)
}

/// Export this build's cache to every `--cache-to` destination.
pub async fn export_cache(
    engine: &Engine,
    registry: &Registry,
    specs: &[CacheSpec],
    graphs: &[BuildGraph],
    inp: &KeyInputs<'_>,
    events: &dyn EventSink,
) -> Result<()> {
    if specs.is_empty() {
        return Ok(());
    }
    let mut keyed = Vec::new();
    for g in graphs {
        keyed.push((g, keys_of(engine, g, inp).await?));
    }
    for spec in specs {
        let (max, policy) = match spec {
            CacheSpec::Registry { max, layers, .. } | CacheSpec::Local { max, layers, .. } => {
                (*max, layers.as_ref())
            }
        };
        let mut manifests = Vec::new();
        let mut skipped = false;
        for (g, steps) in &keyed {
            let target = g.stages[g.target].display_name();
            let m = platform_manifest(engine, &g.platform, steps, &target, max, policy);
            match m {
                Ok(m) => manifests.push(m),
                Err(e) if spec_ignores_errors(spec) => {
                    events.emit(Event::Warning {
                        message: format!(
                            "exporting the build cache to {spec} failed (ignored): {}",
                            crate::error_chain(&e)
                        ),
                    });
                    skipped = true;
                    break;
                }
                Err(e) => return Err(export_failed(spec, e)),
            }
        }
        if skipped {
            continue;
        }
        let (r, ignore_error) = match spec {
            CacheSpec::Registry {
                reference,
                image_manifest,
                ignore_error,
                ..
            } => (
                export_registry(
                    engine.store(),
                    registry,
                    reference,
                    &manifests,
                    *image_manifest,
                    events,
                )
                .await,
                *ignore_error,
            ),
            CacheSpec::Local {
                dir, ignore_error, ..
            } => (export_local(engine.store(), dir, &manifests), *ignore_error),
        };
        match r {
            Ok(()) => {}
            Err(e) if ignore_error => events.emit(Event::Warning {
                message: format!(
                    "exporting the build cache to {spec} failed (ignored): {}",
                    crate::error_chain(&e)
                ),
            }),
            Err(e) => return Err(export_failed(spec, e)),
        }
    }
    Ok(())
}

fn export_failed(spec: &CacheSpec, e: CacheIoError) -> CacheIoError {
    CacheIoError::Export {
        spec: spec.to_string(),
        source: Box::new(e),
    }
}

fn spec_ignores_errors(spec: &CacheSpec) -> bool {
    match spec {
        CacheSpec::Registry { ignore_error, .. } | CacheSpec::Local { ignore_error, .. } => {
            *ignore_error
        }
    }
}

/// The new index: this build's platforms, plus the other platforms of `old`.
fn merged_index(
    old: Option<ImageIndex>,
    manifests: &[(Descriptor, Vec<Descriptor>)],
) -> ImageIndex {
    let mut all: Vec<Descriptor> = manifests.iter().map(|(d, _)| d.clone()).collect();
    if let Some(old) = old {
        for d in old.manifests {
            let p = d.platform();
            if p.is_some() && !all.iter().any(|n| n.platform() == p) {
                all.push(d);
            }
        }
    }
    all.sort_by_key(|d| d.platform().map(|p| p.to_string()).unwrap_or_default());
    let mut idx = ImageIndex::new_oci(all);
    idx.artifact_type = Some(CACHE_ARTIFACT_TYPE.to_string());
    idx
}

async fn export_registry(
    store: &BlobStore,
    registry: &Registry,
    r: &Reference,
    manifests: &[(Descriptor, Vec<Descriptor>)],
    image_manifest: bool,
    events: &dyn EventSink,
) -> Result<()> {
    let progress = transfer(events, Transfer::Push, format!("cache {}", r.familiar()));
    if image_manifest && manifests.len() == 1 {
        // One platform: the tag names the cache manifest itself.
        registry
            .push_image(r, store, &manifests[0].0, &progress)
            .await?;
        return Ok(());
    }
    for (m, _) in manifests {
        registry.push_image_untagged(r, store, m, &progress).await?;
    }
    let old = match registry.fetch_manifest(r).await {
        Ok((bytes, _, _)) => ImageIndex::from_slice(&bytes)
            .ok()
            .filter(|i| i.artifact_type.as_deref() == Some(CACHE_ARTIFACT_TYPE)),
        Err(_) => None,
    };
    let enc = merged_index(old, manifests).encode()?;
    store.put_bytes(&enc.bytes)?;
    registry
        .push_index(r, store, &enc.descriptor, &progress)
        .await?;
    Ok(())
}

fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join(d.algorithm().as_str()).join(d.hex())
}

fn copy_blob(store: &BlobStore, dir: &Path, d: &Digest) -> Result<()> {
    let dest = blob_path(dir, d);
    if dest.exists() {
        return Ok(());
    }
    let parent = dest.parent().expect("blob paths have a parent");
    std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    let tmp = parent.join(format!(".tmp-{}-{}", std::process::id(), d.hex()));
    std::fs::copy(store.path_of(d), &tmp).map_err(io_err("writing", &tmp))?;
    std::fs::rename(&tmp, &dest).map_err(io_err("writing", &dest))?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io_err("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("writing", path))
}

fn export_local(
    store: &BlobStore,
    dir: &Path,
    manifests: &[(Descriptor, Vec<Descriptor>)],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    for (m, layers) in manifests {
        for l in layers {
            copy_blob(store, dir, &l.digest)?;
        }
        let bytes = store.read_to_vec(&m.digest)?;
        let man = ImageManifest::from_slice(&bytes)?;
        copy_blob(store, dir, &man.config.digest)?;
        copy_blob(store, dir, &m.digest)?;
    }
    let old = std::fs::read(dir.join("index.json"))
        .ok()
        .and_then(|b| ImageIndex::from_slice(&b).ok());
    let idx = merged_index(old, manifests);
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    write_atomic(&dir.join("index.json"), &idx.encode()?.bytes)?;
    Ok(())
}

/// Where an imported record's blobs are.
#[derive(Clone)]
enum Origin {
    Registry(Reference),
    Local(PathBuf),
}

async fn read_manifest_of(
    registry: &Registry,
    spec: &CacheSpec,
    platform: &Platform,
) -> Result<Option<(RecordsBlob, Origin)>> {
    let (index, origin) = match spec {
        CacheSpec::Registry { reference, .. } => {
            let (bytes, media_type, digest) = registry.fetch_manifest(reference).await?;
            let index = if xbuild_oci::media_types::is_manifest(&media_type) {
                // image-manifest=true: the tag is one platform's manifest,
                // whose records blob says which platform.
                let m = ImageManifest::from_slice(&bytes)?;
                let c = registry.fetch_blob(reference, &m.config).await?;
                let blob: RecordsBlob =
                    serde_json::from_slice(&c).map_err(|source| CacheIoError::Records {
                        digest: m.config.digest.clone(),
                        source,
                    })?;
                let p = Platform::parse(&blob.platform).map_err(|source| {
                    CacheIoError::RecordsPlatform {
                        platform: blob.platform.clone(),
                        source,
                    }
                })?;
                let d = Descriptor::new(media_type, digest, bytes.len() as u64).with_platform(&p);
                ImageIndex::new_oci(vec![d])
            } else {
                ImageIndex::from_slice(&bytes)?
            };
            (index, Origin::Registry(reference.clone()))
        }
        CacheSpec::Local { dir, .. } => {
            let p = dir.join("index.json");
            let bytes = std::fs::read(&p).map_err(io_err("reading", &p))?;
            (ImageIndex::from_slice(&bytes)?, Origin::Local(dir.clone()))
        }
    };
    let Some(desc) = index.find_platform(platform).cloned() else {
        return Ok(None);
    };
    let m_bytes = match &origin {
        Origin::Registry(r) => {
            registry
                .fetch_manifest(&r.with_digest(desc.digest.clone()))
                .await?
                .0
        }
        Origin::Local(dir) => {
            let p = blob_path(dir, &desc.digest);
            std::fs::read(&p).map_err(io_err("reading", &p))?
        }
    };
    if Digest::sha256_of(&m_bytes) != desc.digest {
        return Err(CacheIoError::DigestMismatch {
            what: "manifest",
            digest: desc.digest.clone(),
        });
    }
    let m = ImageManifest::from_slice(&m_bytes)?;
    if m.config.media_type != RECORDS_MEDIA_TYPE {
        return Err(CacheIoError::NotACache {
            digest: desc.digest.clone(),
            config_type: m.config.media_type.clone(),
        });
    }
    let c_bytes = match &origin {
        Origin::Registry(r) => registry.fetch_blob(r, &m.config).await?,
        Origin::Local(dir) => {
            let p = blob_path(dir, &m.config.digest);
            std::fs::read(&p).map_err(io_err("reading", &p))?
        }
    };
    if Digest::sha256_of(&c_bytes) != m.config.digest {
        return Err(CacheIoError::DigestMismatch {
            what: "records blob",
            digest: m.config.digest.clone(),
        });
    }
    let blob: RecordsBlob =
        serde_json::from_slice(&c_bytes).map_err(|source| CacheIoError::Records {
            digest: m.config.digest.clone(),
            source,
        })?;
    if blob.platform != platform.to_string() {
        return Err(CacheIoError::WrongPlatform {
            listed: blob.platform,
            platform: platform.clone(),
        });
    }
    Ok(Some((blob, origin)))
}

async fn fetch_layer(
    store: &BlobStore,
    registry: &Registry,
    origin: &Origin,
    layer: &Descriptor,
    events: &dyn EventSink,
) -> Result<()> {
    match origin {
        Origin::Registry(r) => {
            let progress = transfer(events, Transfer::Pull, format!("cache {}", r.familiar()));
            registry.pull_blob(r, layer, store, &progress).await?;
        }
        Origin::Local(dir) => {
            let p = blob_path(dir, &layer.digest);
            let f = std::fs::File::open(&p).map_err(io_err("opening", &p))?;
            store.ingest(f, Some(&layer.digest), Some(layer.size))?;
        }
    }
    Ok(())
}

/// Import every `--cache-from` source for the platforms of `graphs`. A
/// source that cannot be read is a warning, as in buildx. Returns the
/// number of records imported and of layer blobs fetched.
pub async fn import_cache(
    engine: &Engine,
    registry: &Registry,
    specs: &[CacheSpec],
    graphs: &[BuildGraph],
    inp: &KeyInputs<'_>,
    events: &dyn EventSink,
) -> Result<(usize, usize)> {
    let (mut imported, mut fetched) = (0, 0);
    if specs.is_empty() {
        return Ok((0, 0));
    }
    let cache = engine.cache();
    let store = engine.store();
    for g in graphs {
        let p = &g.platform;
        let exec_platforms = g.execution_platforms();
        // Records first (all of them: small), remembering where each came from.
        let mut origin_of: HashMap<Digest, (CacheRecord, Origin)> = HashMap::new();
        for spec in specs {
            match read_manifest_of(registry, spec, p).await {
                Ok(Some((blob, origin))) => {
                    for (d, l) in &blob.listings {
                        if Digest::parse(d).is_ok() {
                            cache.put_listing(l)?;
                        }
                    }
                    for rec in blob.records {
                        // A target's records include those of the stages it
                        // runs on the build platform, filed under that one.
                        let Some(on) = exec_platforms
                            .iter()
                            .find(|e| rec.platform == e.to_string())
                        else {
                            continue;
                        };
                        if cache.get_raw(on, &rec.key).is_none() {
                            cache.put(on, &rec)?;
                            cache.index(on, &rec)?;
                            imported += 1;
                        }
                        origin_of
                            .entry(rec.key.clone())
                            .or_insert((rec, origin.clone()));
                    }
                }
                Ok(None) => events.emit(Event::Warning {
                    message: format!("cache import from {spec}: no cache for {p}"),
                }),
                Err(e) => events.emit(Event::Warning {
                    message: format!(
                        "cache import from {spec} failed: {}",
                        crate::error_chain(&e)
                    ),
                }),
            }
        }
        // Then only the layers of the steps that will hit: in each stage,
        // the steps up to the first one no record covers.
        let steps = keys_of(engine, g, inp).await?;
        let mut stage_open = true;
        for s in &steps {
            if s.index == 1 {
                stage_open = true;
                continue;
            }
            if !stage_open {
                continue;
            }
            if cache.get(&s.executes_on, &s.key, store).is_some() {
                continue;
            }
            let Some((rec, origin)) = origin_of.get(&s.key) else {
                stage_open = false;
                continue;
            };
            if let Some(l) = &rec.layer {
                if !store.exists(&l.digest) {
                    // A layer that cannot be fetched or does not match its
                    // digest (a corrupt cache source) is a cache miss with
                    // a warning, as in buildx: the step is built instead.
                    match fetch_layer(store, registry, origin, l, events).await {
                        Ok(()) => fetched += 1,
                        Err(e) => {
                            events.emit(Event::Warning {
                                message: format!(
                                    "cache layer {} is unusable ({}); building the step instead",
                                    l.digest,
                                    crate::error_chain(&e)
                                ),
                            });
                            stage_open = false;
                        }
                    }
                }
            }
        }
    }
    Ok((imported, fetched))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_spec_and_the_path() {
        let e = parse_spec("type=registry,ref=Not A Ref", true).unwrap_err();
        assert!(
            matches!(&e, CacheSpecError::Reference { flag: "--cache-to", reference, .. } if reference == "Not A Ref"),
            "{e:?}"
        );
        let text = crate::error_chain(&e);
        assert!(
            text.starts_with(
                "invalid --cache-to \"type=registry,ref=Not A Ref\": ref \"Not A Ref\": "
            ),
            "{text}"
        );
        assert!(matches!(
            parse_spec("type=gha", false).unwrap_err(),
            CacheSpecError::Gha {
                flag: "--cache-from"
            }
        ));
        // A local cache directory that is a file.
        let t = tempfile::tempdir().unwrap();
        let store = BlobStore::open(t.path().join("content")).unwrap();
        let file = t.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = export_local(&store, &file, &[]).unwrap_err();
        assert!(
            matches!(&e, CacheIoError::Io { op: "creating", path, .. } if *path == file),
            "{e:?}"
        );
        let wrapped = export_failed(
            &CacheSpec::Local {
                dir: file.clone(),
                max: false,
                ignore_error: false,
                layers: None,
            },
            e,
        );
        let text = crate::error_chain(&wrapped);
        assert!(
            text.starts_with(&format!(
                "exporting the build cache to local {}: creating {}: ",
                file.display(),
                file.display()
            )),
            "{text}"
        );
    }

    #[test]
    fn specs_parse_like_buildx() {
        let s = parse_spec("type=registry,ref=localhost:5000/app:cache,mode=max", true).unwrap();
        assert!(matches!(s, CacheSpec::Registry { max: true, .. }));
        let s = parse_spec("localhost:5000/app:cache", false).unwrap();
        assert!(matches!(s, CacheSpec::Registry { max: false, .. }));
        let s = parse_spec("type=local,dest=/tmp/c", true).unwrap();
        assert_eq!(
            s,
            CacheSpec::Local {
                dir: "/tmp/c".into(),
                max: false,
                ignore_error: false,
                layers: None,
            }
        );
        let s = parse_spec(
            "type=registry,ref=r/a:c,mode=max,image-manifest=true,oci-mediatypes=true,\
             compression=zstd,ignore-error=true",
            true,
        )
        .unwrap();
        assert!(matches!(
            s,
            CacheSpec::Registry {
                image_manifest: true,
                ignore_error: true,
                max: true,
                ..
            }
        ));
        let e = parse_spec("type=gha,mode=max", true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not supported") && e.contains("type=registry"),
            "{e}"
        );
        assert!(parse_spec("type=registry,ref=r/a:c,ignore-error=maybe", true).is_err());
        assert!(parse_spec("type=registry,ref=r/a:c,compression=lz4", true).is_err());
        let s = parse_spec("type=local,src=/tmp/c", false).unwrap();
        assert!(matches!(s, CacheSpec::Local { .. }));
        for bad in [
            "type=local,src=/x",
            "type=registry",
            "type=s3,ref=x",
            "type=registry,ref=a/b:c,mode=all",
            "type=registry,ref=a/b:c,color=red",
        ] {
            assert!(parse_spec(bad, true).is_err(), "{bad}");
        }
        assert!(parse_spec("type=local,dest=/x", false).is_err());
    }

    fn policy_of(spec: &str) -> Option<LayerPolicy> {
        match parse_spec(spec, true).unwrap() {
            CacheSpec::Registry { layers, .. } | CacheSpec::Local { layers, .. } => layers,
        }
    }

    #[test]
    fn compression_options_become_the_layer_policy() {
        assert_eq!(policy_of("type=registry,ref=r/a:c"), None);
        assert_eq!(
            policy_of("type=registry,ref=r/a:c,compression=zstd"),
            Some(LayerPolicy {
                compression: Compression::Zstd,
                level: 3,
                force: false,
            })
        );
        assert_eq!(
            policy_of(
                "type=local,dest=/x,compression=gzip,compression-level=9,force-compression=true"
            ),
            Some(LayerPolicy {
                compression: Compression::Gzip,
                level: 9,
                force: true,
            })
        );
        assert_eq!(
            policy_of("type=registry,ref=r/a:c,compression=uncompressed"),
            Some(LayerPolicy {
                compression: Compression::None,
                level: 0,
                force: false,
            })
        );
        // A level alone is gzip's, as buildx's default compression.
        assert_eq!(
            policy_of("type=registry,ref=r/a:c,compression-level=5")
                .unwrap()
                .compression,
            Compression::Gzip
        );
        for bad in [
            "type=registry,ref=r/a:c,compression=zstd,compression-level=23",
            "type=registry,ref=r/a:c,compression=gzip,compression-level=10",
            "type=registry,ref=r/a:c,compression-level=fast",
        ] {
            let e = parse_spec(bad, true).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_recompressed_cache_layer_keeps_its_diff_id() {
        use xbuild_oci::layer::{write_layer, WriteOptions};
        let t = tempfile::tempdir().unwrap();
        let store = BlobStore::open(t.path()).unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), b"cached data").unwrap();
        let w = store.writer(xbuild_oci::digest::Algorithm::Sha256).unwrap();
        let (out, w) = write_layer(src.path(), w, &WriteOptions::default()).unwrap();
        w.commit(Some(&out.digest)).unwrap();
        let gz = out.descriptor();
        let zstd = LayerPolicy {
            compression: Compression::Zstd,
            level: 3,
            force: false,
        };
        let z = compressed(&store, &gz, Some(&out.diff_id), &zstd).unwrap();
        assert_eq!(z.media_type, xbuild_oci::media_types::OCI_LAYER_TAR_ZSTD);
        assert_ne!(z.digest, gz.digest);
        assert!(store.verify(&z.digest).unwrap());
        assert_eq!(
            xbuild_oci::compress::diff_id(&store, &z.digest, Compression::Zstd).unwrap(),
            out.diff_id
        );
        // Already in the asked compression: the same blob.
        assert_eq!(
            compressed(&store, &z, Some(&out.diff_id), &zstd).unwrap(),
            z
        );
        // A record whose diffID the blob does not hold is an error.
        let wrong = Digest::sha256_of(b"not the tar");
        let e = compressed(
            &store,
            &gz,
            Some(&wrong),
            &LayerPolicy {
                compression: Compression::None,
                level: 0,
                force: false,
            },
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("does not match its record's diffID"),
            "{e:#}"
        );
    }
}
