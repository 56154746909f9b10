//! Build outputs (`-o/--output`, `--push`), as `docker buildx build` spells
//! them, and exporting a build result to them.
//!
//! ```text
//! type=image[,name=REF[,REF...]][,push=true][,oci-mediatypes=false]
//!           [,push-by-digest=true][,name-canonical=true][,store=false]
//!           [,compression=gzip|zstd|uncompressed][,compression-level=N]
//!           [,force-compression=true][,unpack=BOOL][,annotation[-TYPE].K=V]
//!           [,attest-layout=buildx|referrers][,oci-artifact=true]
//! type=registry[,name=...]          same as type=image,push=true
//! type=docker (no dest)             load: into the local image store (and a
//!                                   local docker or podman, by the caller)
//! type=cacheonly                    nothing (only the cache export runs)
//! type=oci,dest=FILE|-[,name=...]   OCI image layout tar
//! type=docker,dest=FILE|-[,name=...] docker load archive (one platform)
//! type=local,dest=DIR[,platform-split=BOOL]  the root filesystem (DIR/linux_amd64/... for several platforms, or as platform-split says)
//! type=tar,dest=FILE|-[,platform-split=BOOL]  the same as a tar
//! DIR                               shorthand for type=local,dest=DIR
//! -                                 shorthand for type=tar,dest=-
//! ```

use crate::assemble::Assembled;
use crate::attest::AttestError;
use std::fs;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use xbuild_engine::events::{Event, EventSink, Transfer};
use xbuild_oci::archive::{self, read_manifest, ArchiveError};
use xbuild_oci::layer::{apply_layer, merge_tree, ApplyError, ApplyOptions, MergeError};
use xbuild_oci::manifest::Manifest;
use xbuild_oci::reference::{Reference, ReferenceError};
use xbuild_oci::store::StoreError;
use xbuild_oci::{BlobStore, Descriptor, Digest, Platform};
use xbuild_registry::{Progress, Registry, RegistryError};

/// An `--output` value that cannot be parsed.
#[derive(Debug, thiserror::Error)]
pub enum OutputSpecError {
    /// `--output ""`.
    #[error("empty --output; expected e.g. type=oci,dest=image.tar")]
    Empty,
    /// A malformed or unknown field, or fields that do not go together.
    #[error("invalid output {spec:?}: {reason}")]
    Invalid {
        /// The `--output` value.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `annotation.*` field is malformed.
    #[error("invalid output {spec:?}")]
    Annotation {
        /// The `--output` value.
        spec: String,
        /// Why.
        #[source]
        source: xbuild_oci::annotation::AnnotationError,
    },
}

fn invalid(spec: &str, reason: impl Into<String>) -> OutputSpecError {
    OutputSpecError::Invalid {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

/// Why an output could not be written or pushed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// An image name (`-t`, `name=`) is not a reference.
    #[error("invalid name {name:?}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: ReferenceError,
    },
    /// A tag name is not a reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A tag name carries a digest.
    #[error("cannot tag {name:?}: a tag name must not contain a digest")]
    TagWithDigest {
        /// The name.
        name: String,
    },
    /// The store's reference could not be written.
    #[error("tagging {name}")]
    Tag {
        /// The name (familiar form).
        name: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// One manifest of an index could not be pushed by digest.
    #[error("pushing {digest} to {repository}")]
    PushManifest {
        /// The manifest.
        digest: Digest,
        /// The repository.
        repository: String,
        /// Why.
        #[source]
        source: Box<RegistryError>,
    },
    /// The index could not be pushed by digest.
    #[error("pushing the index to {repository}")]
    PushIndexTo {
        /// The repository.
        repository: String,
        /// Why.
        #[source]
        source: Box<RegistryError>,
    },
    /// A platform's image of an index could not be pushed.
    #[error("pushing the {platform} image")]
    PushPlatform {
        /// The platform (or the manifest's digest when it has none).
        platform: String,
        /// Why (names the reference).
        #[source]
        source: Box<RegistryError>,
    },
    /// The index could not be pushed.
    #[error("pushing the index")]
    PushIndex(#[source] Box<RegistryError>),
    /// The single-platform image could not be pushed.
    #[error("pushing")]
    PushImage(#[source] Box<RegistryError>),
    /// Attestations could not be pushed as referrers.
    #[error("pushing the attestations of {subject} to {reference} as referrers")]
    PushReferrers {
        /// The platform manifest they are about.
        subject: Digest,
        /// Where.
        reference: String,
        /// Why.
        #[source]
        source: Box<RegistryError>,
    },
    /// An output failed.
    #[error("writing output {output}")]
    Output {
        /// The output (`type=oci,dest=out.tar`).
        output: String,
        /// Why.
        #[source]
        source: Box<ExportError>,
    },
    /// Writing an archive or a filesystem to its destination failed.
    #[error("exporting {what} to {}", dest.display())]
    Exporting {
        /// `OCI archive`, `docker archive`, `the filesystem`.
        what: &'static str,
        /// The destination.
        dest: PathBuf,
        /// Why.
        #[source]
        source: Box<ExportError>,
    },
    /// `type=docker,dest=` got several platforms.
    #[error("type=docker holds one platform: build one, or use type=oci")]
    DockerOnePlatform(#[source] ArchiveError),
    /// The attestation files of a local export could not be written.
    #[error("writing attestations to {}", dir.display())]
    Attestations {
        /// The export's directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: AttestError,
    },
    /// Reading the result or writing an archive failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The content store failed (the error names the blob).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file or directory could not be created or written.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done (`creating`, `opening`, `writing`).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing an archive's bytes failed (the enclosing error names the
    /// destination).
    #[error(transparent)]
    Write(#[from] io::Error),
    /// A temporary or staging directory could not be created.
    #[error("creating a {what} directory")]
    TempDir {
        /// `temporary`, `staging`.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `-o -` with standard output a terminal.
    #[error("refusing to write an archive to a terminal; use -o FILE or redirect")]
    Terminal,
    /// The destination has no file name.
    #[error("{} is not a file name", path.display())]
    NotAFileName {
        /// The destination.
        path: PathBuf,
    },
    /// The result names no platform image.
    #[error("{digest} has no image for any platform")]
    NoPlatform {
        /// The result.
        digest: Digest,
    },
    /// The result is an index of indexes.
    #[error("{digest} is a nested index; not supported by type=local")]
    NestedIndex {
        /// The inner index.
        digest: Digest,
    },
    /// A layer could not be unpacked.
    #[error("applying layer {digest} to {}", dir.display())]
    ApplyLayer {
        /// The layer.
        digest: Digest,
        /// The export directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: ApplyError,
    },
    /// The unpacked layers could not be moved into the destination.
    #[error("exporting the filesystem to {}", dir.display())]
    Merge {
        /// The destination.
        dir: PathBuf,
        /// Why.
        #[source]
        source: MergeError,
    },
}

/// `map_err` for a failed file operation on `path`.
fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExportError {
    let path = path.to_path_buf();
    move |source| ExportError::Io { op, path, source }
}

type Result<T, E = ExportError> = std::result::Result<T, E>;

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
        /// The rest of buildx's image exporter options.
        opts: ImageOpts,
    },
    /// `--load` / `type=docker` without `dest`: tag in the local store and
    /// hand to a local container engine (the caller's business).
    Load {
        /// Names given with `name=`.
        names: Vec<String>,
    },
    /// `type=cacheonly`: export nothing.
    CacheOnly,
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
        /// `platform-split`: one subdirectory per platform (`linux_amd64`);
        /// by default only when several platforms are exported.
        split: Option<bool>,
    },
    /// The root filesystem as a tar.
    Tar {
        /// File, or `-` for standard output.
        dest: PathBuf,
        /// `platform-split`, as for [`OutputSpec::Local`].
        split: Option<bool>,
    },
}

/// Options of `type=image` beyond push, names and media types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOpts {
    /// `push-by-digest=true`: push without any tag.
    pub push_by_digest: bool,
    /// `name-canonical=true`: report names as `name@digest`.
    pub name_canonical: bool,
    /// `store=false`: do not tag the image in the local store.
    pub store: bool,
    /// `compression=`, `compression-level=`, `force-compression=`.
    pub layers: Option<xbuild_oci::compress::LayerPolicy>,
    /// `annotation[-TYPE][[PLATFORM]].K=V`.
    pub annotations: xbuild_oci::annotation::Annotations,
    /// Push attestations as OCI 1.1 referrers of the platform manifests
    /// (`attest-layout=referrers`, or BuildKit's `oci-artifact=true`)
    /// instead of attestation manifests in the index.
    pub attest_referrers: bool,
}

impl Default for ImageOpts {
    fn default() -> Self {
        ImageOpts {
            push_by_digest: false,
            name_canonical: false,
            store: true,
            layers: None,
            annotations: Default::default(),
            attest_referrers: false,
        }
    }
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
            OutputSpec::Local { dest, .. } => write!(f, "type=local,dest={}", dest.display()),
            OutputSpec::Tar { dest, .. } => write!(f, "type=tar,dest={}", dest.display()),
            OutputSpec::Load { .. } => write!(f, "type=docker"),
            OutputSpec::CacheOnly => write!(f, "type=cacheonly"),
        }
    }
}

/// A plain `type=image` output.
pub fn image_output(push: bool) -> OutputSpec {
    OutputSpec::Image {
        push,
        names: Vec::new(),
        oci_mediatypes: true,
        opts: ImageOpts::default(),
    }
}

/// Split `a=b,"c=d,e",f` on commas outside double quotes, dropping the quotes.
fn split_csv(s: &str) -> Result<Vec<String>, OutputSpecError> {
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
        return Err(invalid(s, "unterminated quote"));
    }
    out.push(cur);
    Ok(out)
}

fn parse_bool(spec: &str, key: &str, v: &str) -> Result<bool, OutputSpecError> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(invalid(
            spec,
            format!("{key} must be true or false, not {v:?}"),
        )),
    }
}

/// Parse one `--output` value.
pub fn parse_output(s: &str) -> Result<OutputSpec, OutputSpecError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(OutputSpecError::Empty);
    }
    if s == "-" {
        return Ok(OutputSpec::Tar {
            dest: "-".into(),
            split: None,
        });
    }
    if !s.contains('=') {
        return Ok(OutputSpec::Local {
            dest: s.into(),
            split: None,
        });
    }
    let mut kind = None;
    let mut dest = None;
    let mut names = Vec::new();
    let mut push = None;
    let mut oci_mediatypes = None;
    let mut opts = ImageOpts::default();
    let mut image_only: Vec<String> = Vec::new();
    let (mut compression, mut level, mut force) = (None, None, false);
    let mut split = None;
    for field in split_csv(s)? {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| invalid(s, format!("{field:?} is not KEY=VALUE")))?;
        let k = k.trim();
        if opts
            .annotations
            .add_attr(k, v)
            .map_err(|source| OutputSpecError::Annotation {
                spec: s.to_string(),
                source,
            })?
        {
            image_only.push(k.to_string());
            continue;
        }
        match k {
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
            "push-by-digest" => opts.push_by_digest = parse_bool(s, k, v)?,
            "name-canonical" => opts.name_canonical = parse_bool(s, k, v)?,
            "store" => opts.store = parse_bool(s, k, v)?,
            // Unpacking into a snapshotter has no meaning without a daemon;
            // the value is checked and the image is stored either way.
            "unpack" => {
                parse_bool(s, k, v)?;
            }
            "compression" => {
                compression = Some(
                    xbuild_oci::media_types::Compression::parse(v).map_err(|e| invalid(s, e))?,
                )
            }
            "compression-level" => {
                level = Some(v.parse::<u32>().map_err(|_| {
                    invalid(s, format!("compression-level must be a number, not {v:?}"))
                })?)
            }
            "force-compression" => force = parse_bool(s, k, v)?,
            "oci-artifact" => opts.attest_referrers = parse_bool(s, k, v)?,
            "platform-split" => split = Some(parse_bool(s, k, v)?),
            "attest-layout" => {
                opts.attest_referrers = match v {
                    "referrers" => true,
                    "buildx" | "index" => false,
                    _ => {
                        return Err(invalid(
                            s,
                            format!("attest-layout must be buildx or referrers, not {v:?}"),
                        ))
                    }
                }
            }
            other => {
                return Err(invalid(
                    s,
                    format!(
                        "unknown key {other:?} (xbuild knows type, dest, name, push, \
                 oci-mediatypes, push-by-digest, name-canonical, store, unpack, compression, \
                 compression-level, force-compression, annotation.*, attest-layout, oci-artifact, \
                 platform-split)"
                    ),
                ))
            }
        }
        if !matches!(k, "type" | "dest" | "name" | "names" | "platform-split") {
            image_only.push(k.to_string());
        }
    }
    if compression.is_some() || level.is_some() || force {
        let c = compression.unwrap_or(xbuild_oci::media_types::Compression::Gzip);
        let level = match level {
            Some(l) => c.check_level(l).map_err(|e| invalid(s, e))?,
            None => c.default_level(),
        };
        opts.layers = Some(xbuild_oci::compress::LayerPolicy {
            compression: c,
            level,
            force,
        });
        if c == xbuild_oci::media_types::Compression::Zstd && oci_mediatypes == Some(false) {
            return Err(invalid(s, "zstd layers need oci-mediatypes=true"));
        }
    }
    let kind = kind.ok_or_else(|| {
        invalid(
            s,
            "missing type= (image, registry, oci, docker, local, tar)",
        )
    })?;
    if split.is_some() && !matches!(kind.as_str(), "local" | "tar") {
        return Err(invalid(
            s,
            "platform-split applies to type=local and type=tar only",
        ));
    }
    let only_image = |allowed: &[&str]| -> Result<(), OutputSpecError> {
        match image_only.iter().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(invalid(s, format!("{k} applies to type=image only"))),
            None => Ok(()),
        }
    };
    let need_dest = |dest: Option<PathBuf>, what: &str| -> Result<PathBuf, OutputSpecError> {
        match dest {
            Some(d) if !d.as_os_str().is_empty() => Ok(d),
            _ => Err(invalid(s, format!("type={kind} needs dest={what}"))),
        }
    };
    match kind.as_str() {
        "image" | "registry" => {
            if dest.is_some() {
                return Err(invalid(
                    s,
                    format!("type={kind} takes no dest (use name=REF)"),
                ));
            }
            Ok(OutputSpec::Image {
                push: push.unwrap_or(false) || kind == "registry",
                names,
                oci_mediatypes: oci_mediatypes.unwrap_or(true),
                opts,
            })
        }
        "docker" if dest.is_none() => {
            only_image(&[])?;
            Ok(OutputSpec::Load { names })
        }
        "oci" | "docker" => {
            only_image(&[])?;
            let dest = need_dest(dest, "FILE")?;
            Ok(if kind == "oci" {
                OutputSpec::Oci { dest, names }
            } else {
                OutputSpec::Docker { dest, names }
            })
        }
        "cacheonly" => {
            only_image(&[])?;
            Ok(OutputSpec::CacheOnly)
        }
        "local" | "tar" => {
            only_image(&[])?;
            if !names.is_empty() {
                return Err(invalid(s, format!("type={kind} takes no name")));
            }
            if kind == "local" {
                let dest = need_dest(dest, "DIR")?;
                if dest.as_os_str() == "-" {
                    return Err(invalid(
                        s,
                        "type=local needs a directory; use type=tar,dest=- for standard output",
                    ));
                }
                Ok(OutputSpec::Local { dest, split })
            } else {
                Ok(OutputSpec::Tar {
                    dest: need_dest(dest, "FILE")?,
                    split,
                })
            }
        }
        "gha" => Err(invalid(s, "type=gha is a cache backend, not an output")),
        other => Err(invalid(
            s,
            format!("unknown type {other:?} (image, registry, oci, docker, local, tar, cacheonly)"),
        )),
    }
}

/// All outputs of a build: each `--output`, with `--push` meaning
/// `type=image,push=true` (merged into an image output if there is one) and
/// `--load` meaning `type=docker` (unless one is given). Without any, the
/// image is kept in the local store (`type=image`).
pub fn outputs_from_args(
    outputs: &[String],
    push: bool,
    load: bool,
) -> Result<Vec<OutputSpec>, OutputSpecError> {
    let mut specs = outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<Vec<_>, _>>()?;
    if push {
        match specs
            .iter_mut()
            .find(|s| matches!(s, OutputSpec::Image { .. }))
        {
            Some(OutputSpec::Image { push, .. }) => *push = true,
            _ => specs.push(image_output(true)),
        }
    }
    if load
        && !specs
            .iter()
            .any(|s| matches!(s, OutputSpec::Load { .. } | OutputSpec::Docker { .. }))
    {
        specs.push(OutputSpec::Load { names: Vec::new() });
    }
    if specs.is_empty() {
        specs.push(image_output(false));
    }
    Ok(specs)
}

/// What the export phase did.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    /// Pushed images, `name@digest`.
    pub pushed: Vec<String>,
    /// The names the image was exported under (`name@digest` with
    /// `name-canonical=true`), for the metadata file's `image.name`.
    pub names: Vec<String>,
    /// `--load`: the image and its names, for the caller to hand to a
    /// local container engine.
    pub load: Option<(Descriptor, Vec<String>)>,
}

/// The image options of the first `type=image` output (compression and
/// annotations are applied once, when the image is assembled).
pub fn image_opts(outputs: &[OutputSpec]) -> ImageOpts {
    outputs
        .iter()
        .find_map(|o| match o {
            OutputSpec::Image { opts, .. } => Some(opts.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Phase 5: write every output of `outputs` (tags in the store, archives,
/// filesystem trees) and push the `push=true` ones under `tags` and their
/// own names. Push progress goes to `events`.
pub async fn export(
    store: &BlobStore,
    registry: &Registry,
    assembled: &Assembled,
    outputs: &[OutputSpec],
    tags: &[String],
    events: &dyn EventSink,
) -> Result<Exported> {
    let mut out = Exported::default();
    let add_name = |out: &mut Exported, n: String| {
        if !out.names.contains(&n) {
            out.names.push(n);
        }
    };
    for spec in outputs {
        let oci = !matches!(
            spec,
            OutputSpec::Image {
                oci_mediatypes: false,
                ..
            }
        );
        let (top, manifests) = assembled.for_output(oci);
        match spec {
            OutputSpec::Image {
                push: do_push,
                names,
                opts,
                ..
            } => {
                let mut all = tags.to_vec();
                all.extend(names.iter().cloned());
                for name in all {
                    let r: Reference = name.parse().map_err(|source| ExportError::InvalidName {
                        name: name.clone(),
                        source,
                    })?;
                    // Without a tag (push-by-digest) the name is the repository.
                    let plain = if opts.push_by_digest {
                        r.name()
                    } else {
                        r.to_string()
                    };
                    let shown = if opts.name_canonical {
                        format!("{}@{}", r.name(), top.digest)
                    } else {
                        plain
                    };
                    add_name(&mut out, shown);
                    if *do_push {
                        if opts.push_by_digest {
                            push_by_digest(registry, &r, store, top, manifests, events).await?;
                            out.pushed.push(format!("{}@{}", r.name(), top.digest));
                        } else {
                            push(registry, &r, store, top, manifests, events).await?;
                            out.pushed.push(format!("{}@{}", r.familiar(), top.digest));
                        }
                        push_referrers(registry, &r, store, assembled.referrers_for_output(oci))
                            .await?;
                    }
                }
            }
            OutputSpec::Load { names } => {
                let mut all = tags.to_vec();
                for n in names {
                    if !all.contains(n) {
                        all.push(n.clone());
                    }
                }
                for n in &all {
                    if let Ok(r) = n.parse::<Reference>() {
                        add_name(&mut out, r.to_string());
                    }
                }
                out.load = Some((top.clone(), all));
            }
            _ => {}
        }
        // Tags go into the local store only once every push of this output
        // succeeded: a failed push leaves `xbuild images` as it was.
        let warnings = export_output(store, top, spec, tags).map_err(|e| ExportError::Output {
            output: spec.to_string(),
            source: Box::new(e),
        })?;
        for message in warnings {
            events.emit(Event::Warning { message });
        }
        if let OutputSpec::Local { dest, split } = spec {
            crate::attest::write_local(dest, *split, &assembled.statements).map_err(|source| {
                ExportError::Attestations {
                    dir: dest.clone(),
                    source,
                }
            })?;
        }
    }
    Ok(out)
}

/// Push progress of the blobs of `label` as byte events.
fn push_progress(events: &dyn EventSink, label: String) -> impl Fn(Progress) + '_ {
    move |p: Progress| {
        events.emit(Event::Bytes {
            id: None,
            kind: Transfer::Push,
            label: format!("{label} {}", p.digest.short()),
            current: p.current,
            total: Some(p.total),
        });
    }
}

/// Push `top` to `r`'s repository by digest only: every blob and manifest,
/// and no tag (`push-by-digest=true`).
pub async fn push_by_digest(
    registry: &Registry,
    r: &Reference,
    store: &BlobStore,
    top: &Descriptor,
    manifests: &[Descriptor],
    events: &dyn EventSink,
) -> Result<()> {
    let progress = push_progress(events, r.name());
    let is_index = manifests.len() > 1 || top.digest != manifests[0].digest;
    let by_digest = r.with_digest(top.digest.clone());
    for d in manifests {
        registry
            .push_image_untagged(&by_digest, store, d, &progress)
            .await
            .map_err(|source| ExportError::PushManifest {
                digest: d.digest.clone(),
                repository: r.name(),
                source: Box::new(source),
            })?;
    }
    if is_index {
        let bytes = store.read_to_vec(&top.digest)?;
        registry
            .push_manifest_bytes(&by_digest, &bytes, &top.media_type)
            .await
            .map_err(|source| ExportError::PushIndexTo {
                repository: r.name(),
                source: Box::new(source),
            })?;
    }
    Ok(())
}

/// Push each referrer artifact (attestations in the referrers layout) to
/// `r`'s repository so that its subject's referrers list it.
async fn push_referrers(
    registry: &Registry,
    r: &Reference,
    store: &BlobStore,
    referrers: &[(Descriptor, Descriptor)],
) -> Result<()> {
    for (artifact, subject) in referrers {
        registry
            .push_referrer(r, store, artifact, &subject.digest, &|_| {})
            .await
            .map_err(|source| ExportError::PushReferrers {
                subject: subject.digest.clone(),
                reference: r.familiar(),
                source: Box::new(source),
            })?;
    }
    Ok(())
}

/// Push `top` (a manifest, or an index over `manifests`) to `r`.
pub async fn push(
    registry: &Registry,
    r: &Reference,
    store: &BlobStore,
    top: &Descriptor,
    manifests: &[Descriptor],
    events: &dyn EventSink,
) -> Result<()> {
    let progress = push_progress(events, r.familiar());
    let is_index = manifests.len() > 1 || top.digest != manifests[0].digest;
    if is_index {
        for d in manifests {
            let p = d
                .platform()
                .map_or_else(|| d.digest.to_string(), |p| p.to_string());
            registry
                .push_image_untagged(r, store, d, &progress)
                .await
                .map_err(|source| ExportError::PushPlatform {
                    platform: p,
                    source: Box::new(source),
                })?;
        }
        registry
            .push_index(r, store, top, &progress)
            .await
            .map_err(|e| ExportError::PushIndex(Box::new(e)))?;
    } else {
        registry
            .push_image(r, store, top, &progress)
            .await
            .map_err(|e| ExportError::PushImage(Box::new(e)))?;
    }
    Ok(())
}

/// Point each of `names` at `target` (a manifest or an index) in the
/// store's references. Answers the normalized references.
pub fn tag(store: &BlobStore, target: &Descriptor, names: &[String]) -> Result<Vec<Reference>> {
    let mut out = Vec::new();
    for n in names {
        let r = Reference::parse(n)?;
        if r.digest().is_some() {
            return Err(ExportError::TagWithDigest { name: n.clone() });
        }
        store
            .set_ref(&r.to_string(), &target.digest)
            .map_err(|source| ExportError::Tag {
                name: r.familiar(),
                source,
            })?;
        out.push(r);
    }
    Ok(out)
}

/// `map_err` for a failure writing `what` to `dest`.
fn exporting(what: &'static str, dest: &Path) -> impl FnOnce(ExportError) -> ExportError {
    let dest = dest.to_path_buf();
    move |e| ExportError::Exporting {
        what,
        dest,
        source: Box::new(e),
    }
}

/// Removes `.NAME.xbuild-PID.tmp` files in `dir` whose writer (PID) is
/// gone: what a `save` or export killed with SIGKILL left beside its
/// destination.
fn remove_dead_temp_files(dir: &Path, name: &str) {
    let prefix = format!(".{name}.xbuild-");
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let f = e.file_name();
        let Some(pid) = f
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".tmp"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Write to `dest` through a temp file renamed into place (or to stdout for `-`).
pub fn write_dest(dest: &Path, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    if dest.as_os_str() == "-" {
        let stdout = io::stdout();
        if stdout.is_terminal() {
            return Err(ExportError::Terminal);
        }
        let mut w = io::BufWriter::new(stdout.lock());
        f(&mut w)?;
        w.flush().map_err(io_err("writing", dest))?;
        return Ok(());
    }
    // A destination that exists and is not a regular file (a FIFO, a
    // character device such as /dev/null, a terminal) is written in place:
    // renaming a temp file over it would replace the device itself.
    if let Ok(meta) = fs::metadata(dest) {
        if !meta.is_file() && !meta.is_dir() {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(dest)
                .map_err(io_err("opening", dest))?;
            let mut w = io::BufWriter::with_capacity(256 * 1024, file);
            f(&mut w)?;
            w.flush().map_err(io_err("writing", dest))?;
            return Ok(());
        }
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest.file_name().ok_or_else(|| ExportError::NotAFileName {
        path: dest.to_path_buf(),
    })?;
    remove_dead_temp_files(&dir, &name.to_string_lossy());
    let tmp = dir.join(format!(
        ".{}.xbuild-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let file = fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
        let mut w = io::BufWriter::with_capacity(256 * 1024, file);
        f(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(io_err("writing", &tmp))?;
        file.sync_all().map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, dest).map_err(io_err("writing", dest))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Export a build `result` (a manifest or an index in `store`) to `spec`.
/// `names` are the `-t` tags (joined with the spec's own `name=`).
///
/// `type=image` tags the result in the local store; pushing
/// (`push=true`) is left to the caller, which owns the registry client.
pub fn export_output(
    store: &BlobStore,
    result: &Descriptor,
    spec: &OutputSpec,
    names: &[String],
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
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
        OutputSpec::Image {
            names: extra, opts, ..
        } => {
            // Names without a tag (push-by-digest) are not store tags.
            if opts.store && !opts.push_by_digest {
                tag(store, result, &all(extra))?;
            }
        }
        OutputSpec::Load { names: extra } => {
            tag(store, result, &all(extra))?;
        }
        OutputSpec::CacheOnly => {}
        OutputSpec::Oci { dest, names: extra } => {
            let names = all(extra);
            write_dest(dest, |w| {
                archive::write_oci_archive(store, result, &names, w)?;
                Ok(())
            })
            .map_err(exporting("OCI archive", dest))?;
        }
        OutputSpec::Docker { dest, names: extra } => {
            let names = all(extra);
            let single = archive::select_platform(store, result, None)
                .map_err(ExportError::DockerOnePlatform)?;
            write_dest(dest, |w| {
                archive::write_docker_archive(store, &[(single, names)], w)?;
                Ok(())
            })
            .map_err(exporting("docker archive", dest))?;
        }
        OutputSpec::Local { dest, split } => {
            warnings = export_fs(store, result, dest, false, *split)?
        }
        OutputSpec::Tar { dest, split } => {
            let tmp = tempfile::tempdir().map_err(|source| ExportError::TempDir {
                what: "temporary",
                source,
            })?;
            warnings = export_fs(store, result, tmp.path(), true, *split)?;
            write_dest(dest, |w| {
                let mut b = tar::Builder::new(w);
                b.follow_symlinks(false);
                b.append_dir_all(".", tmp.path())?;
                b.into_inner()?.flush()?;
                Ok(())
            })
            .map_err(exporting("the filesystem", dest))?;
        }
    }
    Ok(warnings)
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
/// never created (skipped; the warnings are returned).
pub fn export_local(store: &BlobStore, result: &Descriptor, dest: &Path) -> Result<Vec<String>> {
    export_fs(store, result, dest, false, None)
}

/// [`export_local`], creating device nodes when `devices` (for `type=tar`,
/// whose staging directory is private).
fn export_fs(
    store: &BlobStore,
    result: &Descriptor,
    dest: &Path,
    devices: bool,
    split: Option<bool>,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let manifests = platform_manifests(store, result)?;
    if manifests.is_empty() {
        return Err(ExportError::NoPlatform {
            digest: result.digest.clone(),
        });
    }
    let multi = split.unwrap_or(manifests.len() > 1);
    for (platform, d) in manifests {
        let dir = match (&platform, multi) {
            (Some(p), true) => dest.join(p.to_string().replace('/', "_")),
            _ => dest.to_path_buf(),
        };
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let Manifest::Image(m) = read_manifest(store, &d)? else {
            return Err(ExportError::NestedIndex {
                digest: d.digest.clone(),
            });
        };
        // Beside the destination (same filesystem: entries are renamed in).
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        let staging = tempfile::Builder::new()
            .prefix(".xbuild-export-")
            .tempdir_in(parent.unwrap_or(Path::new(".")))
            .or_else(|_| tempfile::tempdir())
            .map_err(|source| ExportError::TempDir {
                what: "staging",
                source,
            })?;
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
            let stats = applied.map_err(|source| ExportError::ApplyLayer {
                digest: l.digest.clone(),
                dir: dir.clone(),
                source,
            })?;
            warnings.extend(
                stats
                    .warnings
                    .into_iter()
                    .map(|w| format!("{}: {w}", dir.display())),
            );
        }
        merge_tree(staging.path(), &dir).map_err(|source| ExportError::Merge {
            dir: dir.clone(),
            source,
        })?;
    }
    Ok(warnings)
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
                oci_mediatypes: true,
                opts: ImageOpts::default(),
            }
        );
        assert_eq!(
            parse_output("type=registry,oci-mediatypes=false").unwrap(),
            OutputSpec::Image {
                push: true,
                names: vec![],
                oci_mediatypes: false,
                opts: ImageOpts::default(),
            }
        );
        for spec in [
            "type=image,push=true,attest-layout=referrers",
            "type=registry,oci-artifact=true",
        ] {
            assert!(matches!(
                parse_output(spec).unwrap(),
                OutputSpec::Image { opts, .. } if opts.attest_referrers
            ));
        }
        assert_eq!(
            parse_output("out").unwrap(),
            OutputSpec::Local {
                dest: "out".into(),
                split: None
            }
        );
        assert_eq!(
            parse_output("-").unwrap(),
            OutputSpec::Tar {
                dest: "-".into(),
                split: None
            }
        );
        assert_eq!(
            parse_output("type=docker").unwrap(),
            OutputSpec::Load { names: vec![] }
        );
        assert_eq!(
            parse_output("type=cacheonly").unwrap(),
            OutputSpec::CacheOnly
        );
        assert_eq!(
            parse_output("type=local,dest=d,platform-split=false").unwrap(),
            OutputSpec::Local {
                dest: "d".into(),
                split: Some(false)
            }
        );
        assert_eq!(
            parse_output("type=tar,dest=t,platform-split=true").unwrap(),
            OutputSpec::Tar {
                dest: "t".into(),
                split: Some(true)
            }
        );
        let OutputSpec::Image {
            push, names, opts, ..
        } = parse_output(
            "type=image,\"name=r/app\",push-by-digest=true,name-canonical=true,push=true,\
             compression=zstd,compression-level=9,force-compression=true,unpack=false,\
             store=false,annotation-index.k=v,annotation.m=1",
        )
        .unwrap()
        else {
            panic!("image output expected")
        };
        assert!(push && opts.push_by_digest && opts.name_canonical && !opts.store);
        assert_eq!(names, ["r/app"]);
        let l = opts.layers.unwrap();
        assert_eq!(l.compression, xbuild_oci::media_types::Compression::Zstd);
        assert_eq!((l.level, l.force), (9, true));
        let a = opts.annotations.for_platform(None);
        assert_eq!(a.index["k"], "v");
        assert_eq!(a.manifest["m"], "1");
        for (bad, needle) in [
            ("type=image,compression=lz4", "unknown compression"),
            (
                "type=image,compression=gzip,compression-level=12",
                "out of range",
            ),
            (
                "type=image,compression=zstd,oci-mediatypes=false",
                "need oci-mediatypes",
            ),
            ("type=oci,dest=x,compression=zstd", "type=image only"),
            ("type=local,dest=x,annotation.k=v", "type=image only"),
            ("type=local", "needs dest=DIR"),
            ("type=oci,dest=x,push=true", "type=image only"),
            ("type=zip,dest=x", "unknown type"),
            ("type=oci,dest=x,foo=1", "unknown key \"foo\""),
            ("dest=x", "missing type"),
            ("type=image,push=maybe", "true or false"),
            ("type=image,dest=x", "takes no dest"),
            ("type=image,attest-layout=side", "buildx or referrers"),
            (
                "type=oci,dest=x,platform-split=true",
                "type=local and type=tar only",
            ),
            ("type=local,dest=x,platform-split=maybe", "platform-split"),
            ("type=oci,dest=x,attest-layout=referrers", "type=image only"),
        ] {
            let e = crate::error_chain(&parse_output(bad).unwrap_err());
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
        export_output(
            &store,
            &amd,
            &parse_output(one.to_str().unwrap()).unwrap(),
            &names,
        )
        .unwrap();
        assert_eq!(fs::read_to_string(one.join("etc/which")).unwrap(), "amd");
        let many = tmp.path().join("many");
        let spec = parse_output(&format!("type=local,dest={}", many.display())).unwrap();
        export_output(&store, &idx, &spec, &names).unwrap();
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
        export_output(
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
        export_output(
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
        let e = crate::error_chain(&export_output(&store, &idx, &spec, &names).unwrap_err());
        assert!(
            e.contains("linux/arm/v7") && e.contains("linux/amd64"),
            "{e}"
        );
        assert!(!d.exists());
        export_output(&store, &amd, &spec, &names).unwrap();
        assert!(d.exists());
        // image: tagged in the store.
        export_output(
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
    fn errors_name_the_output_and_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path().join("content")).unwrap();
        let amd = image(&store, "linux/amd64", "amd");
        let file = tmp.path().join("file");
        fs::write(&file, "not a directory").unwrap();
        // An archive whose directory is a file.
        let dest = file.join("out.tar");
        let spec = parse_output(&format!("type=oci,dest={}", dest.display())).unwrap();
        let e = export_output(&store, &amd, &spec, &[]).unwrap_err();
        assert!(
            matches!(&e, ExportError::Exporting { what: "OCI archive", dest: d, .. } if *d == dest),
            "{e:?}"
        );
        let text = crate::error_chain(&e);
        assert!(
            text.starts_with(&format!(
                "exporting OCI archive to {}: creating ",
                dest.display()
            )),
            "{text}"
        );
        // A local export onto a file.
        let e = export_output(
            &store,
            &amd,
            &OutputSpec::Local {
                dest: file.clone(),
                split: None,
            },
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(&e, ExportError::Io { op: "creating", path, .. } if *path == file),
            "{e:?}"
        );
        // A tag with a digest, and a name that is no reference.
        let e = tag(&store, &amd, &[format!("app@{}", amd.digest)]).unwrap_err();
        assert!(matches!(e, ExportError::TagWithDigest { .. }), "{e:?}");
        assert!(e.to_string().contains("must not contain a digest"));
        assert!(matches!(
            tag(&store, &amd, &["Not A Name".to_string()]).unwrap_err(),
            ExportError::Reference(_)
        ));
        // Parsing: the spec is named, the cause kept.
        let e = parse_output("type=image,annotation-bogus.k=v").unwrap_err();
        assert!(
            matches!(&e, OutputSpecError::Annotation { spec, .. } if spec == "type=image,annotation-bogus.k=v"),
            "{e:?}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn push_flag() {
        let v = outputs_from_args(&[], true, false).unwrap();
        assert!(matches!(v[..], [OutputSpec::Image { push: true, .. }]));
        let v = outputs_from_args(&["type=image,name=x".into()], true, false).unwrap();
        assert_eq!(v.len(), 1);
        assert!(matches!(&v[0], OutputSpec::Image { push: true, names, .. } if names == &["x"]));
        let v = outputs_from_args(&["type=oci,dest=f".into()], true, false).unwrap();
        assert_eq!(v.len(), 2);
        let v = outputs_from_args(&[], false, false).unwrap();
        assert!(matches!(v[..], [OutputSpec::Image { push: false, .. }]));
        let v = outputs_from_args(&[], false, true).unwrap();
        assert!(matches!(v[..], [OutputSpec::Load { .. }]));
        let v = outputs_from_args(&["type=docker,dest=f".into()], false, true).unwrap();
        assert_eq!(v.len(), 1);
    }
}
