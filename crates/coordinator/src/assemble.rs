//! Phase 4: the image the build produced — one platform's manifest, or an
//! index over the platforms in the requested order — and its Docker
//! media-type variant when an output asks for one; with its attestations
//! (buildx-layout entries in the index, or OCI 1.1 referrer artifacts).

use crate::attest::{self, AttestError, StatementsFor};
use crate::report::PlatformResult;
use crate::rewrite::RewriteError;
use xbuild_attest::layout::AttestationBlob;
use xbuild_oci::{BlobStore, Descriptor};

/// What an [`AssembleHook`] fails with: any error, shown as it is.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the image could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// A platform manifest could not be rewritten (compression, annotations).
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
    /// A hook failed.
    #[error(transparent)]
    Hook(HookError),
    /// The attestations could not be made.
    #[error(transparent)]
    Attest(#[from] AttestError),
    /// The annotations cannot apply to this result.
    #[error(transparent)]
    Annotation(#[from] xbuild_oci::annotation::AnnotationError),
    /// The index or the Docker-typed manifests could not be written.
    #[error(transparent)]
    Image(#[from] xbuild_engine::image::ImageError),
    /// The annotated index could not be encoded.
    #[error("encoding the index")]
    EncodeIndex(#[source] xbuild_oci::manifest::ManifestError),
    /// The content store failed (the error names the blob).
    #[error(transparent)]
    Store(#[from] xbuild_oci::store::StoreError),
}

/// Changes the platform manifests before the index is written (annotations,
/// attestation manifests). Hooks run in order; each gets the manifests as
/// the previous one left them.
pub trait AssembleHook: Send + Sync {
    /// Rewrite `manifests` (write any new blob into `store`).
    fn manifests(
        &self,
        store: &BlobStore,
        manifests: &mut Vec<Descriptor>,
    ) -> Result<(), HookError>;
}

/// How to assemble.
#[derive(Default)]
pub struct AssembleOptions<'a> {
    /// Whether one platform was requested: then the result is its
    /// manifest, not an index over one manifest.
    pub single_platform: bool,
    /// Also write the Docker media-type variant (`oci-mediatypes=false`).
    pub docker_media_types: bool,
    /// Hooks over the OCI manifests.
    pub hooks: Vec<&'a dyn AssembleHook>,
    /// Layer compression and manifest annotations, applied to each
    /// platform manifest before the hooks.
    pub rewrite: crate::rewrite::Rewrite,
    /// Attestations to attach, if any.
    pub attestations: Option<Attach<'a>>,
}

/// A referrer artifact to push: `(artifact manifest, subject)`.
pub type Referrer = (Descriptor, Descriptor);

/// The attestations of a build and where they go.
pub struct Attach<'a> {
    /// As OCI 1.1 referrers (`attest-layout=referrers`) instead of
    /// attestation manifests in the index (buildx's layout).
    pub referrers: bool,
    /// The statements of a platform manifest (subjects naming it).
    pub statements: &'a StatementsFor<'a>,
}

/// The assembled image.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// The OCI result: a manifest or an index.
    pub oci: Descriptor,
    /// The OCI platform manifests, in the requested order.
    pub oci_manifests: Vec<Descriptor>,
    /// The Docker-typed result and its manifests, when asked for.
    pub docker: Option<(Descriptor, Vec<Descriptor>)>,
    /// Referrer artifacts to push with the OCI result: `(artifact
    /// manifest, subject)`.
    pub oci_referrers: Vec<Referrer>,
    /// The same for the Docker-typed result.
    pub docker_referrers: Vec<Referrer>,
    /// Each OCI platform manifest's statements, for local exports.
    pub statements: Vec<(Descriptor, Vec<AttestationBlob>)>,
}

impl Assembled {
    /// The image the user asked for: the Docker-typed one when an output
    /// asked for Docker media types.
    pub fn result(&self) -> &Descriptor {
        self.docker.as_ref().map_or(&self.oci, |(top, _)| top)
    }

    /// The referrer artifacts to push with an output's result.
    pub fn referrers_for_output(&self, oci_mediatypes: bool) -> &[Referrer] {
        match (&self.docker, oci_mediatypes) {
            (Some(_), false) => &self.docker_referrers,
            _ => &self.oci_referrers,
        }
    }

    /// The top descriptor and manifests (platform images, then buildx
    /// attestation manifests) for an output.
    pub fn for_output(&self, oci_mediatypes: bool) -> (&Descriptor, &[Descriptor]) {
        match (&self.docker, oci_mediatypes) {
            (Some((top, m)), false) => (top, m.as_slice()),
            _ => (&self.oci, self.oci_manifests.as_slice()),
        }
    }
}

/// Assemble `done` (the built platforms, in the requested order) in `store`.
pub fn assemble(
    store: &BlobStore,
    done: &[PlatformResult],
    opts: &AssembleOptions<'_>,
) -> Result<Assembled, AssembleError> {
    let mut manifests: Vec<Descriptor> = done
        .iter()
        .map(|d| opts.rewrite.apply(store, &d.manifest))
        .collect::<Result<_, _>>()?;
    for h in &opts.hooks {
        h.manifests(store, &mut manifests)
            .map_err(AssembleError::Hook)?;
    }
    let mut statements = Vec::new();
    // Attestation manifests go after the platforms, as buildx orders them;
    // referrer artifacts are pushed beside the image instead.
    let attach = |platforms: &[Descriptor],
                  docker: bool|
     -> Result<(Vec<Descriptor>, Vec<Referrer>), AttestError> {
        match &opts.attestations {
            None => Ok((Vec::new(), Vec::new())),
            Some(a) if a.referrers => Ok((
                Vec::new(),
                attest::referrer_artifacts(store, platforms, a.statements)?,
            )),
            Some(a) => Ok((
                attest::buildx_entries(store, platforms, docker, a.statements)?,
                Vec::new(),
            )),
        }
    };
    if let Some(a) = &opts.attestations {
        for m in &manifests {
            let b = (a.statements)(m)?;
            if !b.is_empty() {
                statements.push((m.clone(), b));
            }
        }
    }
    let (entries, oci_referrers) = attach(&manifests, false)?;
    // One platform without attestation manifests is its manifest alone;
    // with them it is an index, as buildx makes it.
    let single = manifests.len() == 1 && opts.single_platform && entries.is_empty();
    let platforms = manifests.clone();
    manifests.extend(entries);
    let applied = opts.rewrite.annotations.for_platform(None);
    let oci = if single {
        // BuildKit refuses index annotations when it writes no index.
        opts.rewrite.annotations.check_single_platform()?;
        manifests[0].clone()
    } else if applied.index.is_empty() {
        xbuild_engine::image::write_index(store, &manifests)?
    } else {
        let mut index = xbuild_oci::ImageIndex::new_oci(manifests.clone());
        index.annotations = applied.index.clone();
        let enc = index.encode().map_err(AssembleError::EncodeIndex)?;
        store.put_bytes(&enc.bytes)?;
        enc.descriptor
    };
    let mut docker_referrers = Vec::new();
    let docker = if opts.docker_media_types {
        let mut docker = xbuild_engine::image::to_docker_manifests(store, &platforms)?;
        let (entries, refs) = attach(&docker, true)?;
        docker_referrers = refs;
        docker.extend(entries);
        let top = if single {
            docker[0].clone()
        } else {
            // A Docker manifest list has no annotations.
            xbuild_engine::image::write_docker_index(store, &docker)?
        };
        Some((top, docker))
    } else {
        None
    };
    Ok(Assembled {
        oci,
        oci_manifests: manifests,
        docker,
        oci_referrers,
        docker_referrers,
        statements,
    })
}
