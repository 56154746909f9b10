//! What a build is asked to do: plain data, no flags, no terminal.

use crate::cache_io::CacheSpec;
use crate::export::OutputSpec;
use std::collections::BTreeMap;
use std::path::PathBuf;
use xbuild_engine::Secrets;
use xbuild_oci::Platform;
use xbuild_plan::PlanOptions;
use xbuild_registry::Registry;

/// The Dockerfile to build, as read from disk or standard input.
#[derive(Debug, Clone)]
pub struct DockerfileSource {
    /// Name used in messages (the path as the user would write it).
    pub display: String,
    /// Its text.
    pub text: String,
}

/// One build, as plain data.
#[derive(Clone)]
pub struct BuildRequest {
    /// The Dockerfile.
    pub dockerfile: DockerfileSource,
    /// The Dockerfile's path relative to the context, when it lies inside it.
    pub dockerfile_in_context: Option<String>,
    /// Target, build args, file name for messages, build platform.
    pub plan: PlanOptions,
    /// The build context directory (`None` for a Dockerfile on stdin).
    pub context_dir: Option<PathBuf>,
    /// Target platforms, in the order the index lists them.
    pub platforms: Vec<Platform>,
    /// `-t` names.
    pub tags: Vec<String>,
    /// Secret values (never logged).
    pub secrets: Secrets,
    /// Outputs.
    pub outputs: Vec<OutputSpec>,
    /// `--cache-from`.
    pub cache_from: Vec<CacheSpec>,
    /// `--cache-to`.
    pub cache_to: Vec<CacheSpec>,
    /// `--node PLATFORM=NODE` pins.
    pub node_pins: Vec<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--no-cache-filter`.
    pub no_cache_filter: Vec<String>,
    /// `--pull`: resolve base images in the registry even when stored.
    pub pull: bool,
    /// `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: Option<i64>,
    /// `--label KEY=VALUE`: labels of the final image.
    pub labels: BTreeMap<String, String>,
    /// Attestations to attach (`--attest`, `--provenance`, `--sbom`, after
    /// buildx's defaults).
    pub attest: xbuild_attest::options::Resolved,
}

impl std::fmt::Debug for BuildRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildRequest")
            .field("dockerfile", &self.dockerfile.display)
            .field("context_dir", &self.context_dir)
            .field("platforms", &self.platforms)
            .field("tags", &self.tags)
            .field("secrets", &self.secrets.ids().collect::<Vec<_>>())
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

/// Where the build runs: the state directory and the registry client.
#[derive(Clone)]
pub struct Session {
    /// `$XBUILD_ROOT`.
    pub root: PathBuf,
    /// Registry client (auth, insecure registries, proxies).
    pub registry: Registry,
}

impl Session {
    /// Open the engine over the state directory, naming the worker.
    pub fn open_engine(
        &self,
        worker: &str,
    ) -> Result<xbuild_engine::Engine, crate::resolve::ResolveError> {
        crate::resolve::open_engine(self.root.clone(), worker)
    }
}

/// The build context could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the build context {}", dir.display())]
pub struct ScanContextError {
    /// The context directory.
    pub dir: PathBuf,
    /// Why.
    #[source]
    pub source: xbuild_engine::context::ContextError,
}

/// The build context of `req` scanned and hashed once (shared by every
/// platform), with checksums remembered between builds under the
/// session's root. `None` for a Dockerfile read from standard input.
pub fn scan_context(
    req: &BuildRequest,
    session: &Session,
) -> Result<Option<xbuild_engine::context::ContextIndex>, ScanContextError> {
    use xbuild_engine::context::{self, HashCache, ScanOptions};
    let Some(dir) = &req.context_dir else {
        return Ok(None);
    };
    let mut cache = HashCache::for_context(&session.root, dir).ok();
    let idx = context::scan(
        dir,
        req.dockerfile_in_context.as_deref(),
        &ScanOptions::default(),
        cache.as_mut(),
    )
    .map_err(|source| ScanContextError {
        dir: dir.clone(),
        source,
    })?;
    if let Some(c) = cache.as_mut() {
        let _ = c.save();
    }
    Ok(Some(idx))
}
