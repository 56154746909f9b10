//! Base images for planning and solving: resolved in the registry (or the
//! local store) before planning, pulled when a step needs them.
//!
//! Planning runs twice: once offline to learn which base images the target
//! needs (stages the target does not need are never resolved), then again
//! with those images resolved (digest pinned, config known), so `ENV` and
//! `WORKDIR` of a base affect expansion as in BuildKit.

use crate::request::DockerfileSource;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use xbuild_engine::events::{Event, EventSink, Transfer};
use xbuild_engine::{Engine, ImageSource, PulledImage};
use xbuild_oci::config::ImageConfig;
use xbuild_oci::manifest::{ImageIndex, ImageManifest};
use xbuild_oci::reference::Reference;
use xbuild_oci::store::BlobStore;
use xbuild_oci::{Descriptor, Platform};
use xbuild_plan::{BaseConfig, BuildGraph, ImageRef, ImageResolver, PlanOptions, ResolvedImage};
use xbuild_registry::{Progress, Registry};

/// Why base images could not be planned with, or the engine not opened.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The path of this binary (the sandbox init) is unknown.
    #[error("locating the xbuild binary for the sandbox init")]
    Exe(#[source] std::io::Error),
    /// The state directory could not be opened.
    #[error("opening the xbuild state directory {}", root.display())]
    OpenEngine {
        /// `$XBUILD_ROOT`.
        root: PathBuf,
        /// Why.
        #[source]
        source: Box<xbuild_engine::EngineError>,
    },
    /// Planning failed (it names the Dockerfile line).
    #[error(transparent)]
    Plan(#[from] xbuild_plan::PlanError),
}

/// Pulls base images: from the local store when the pinned manifest is
/// already there, else from the registry (blobs already present are skipped).
pub struct RegistrySource {
    /// The registry client.
    pub registry: Registry,
}

fn pulled_from_store(
    store: &BlobStore,
    digest: &xbuild_oci::digest::Digest,
) -> Result<PulledImage, String> {
    let m = xbuild_engine::image::read_manifest(store, digest).map_err(|e| e.to_string())?;
    if m.layers.iter().any(|l| !store.exists(&l.digest)) {
        return Err("layers missing locally".into());
    }
    let config =
        xbuild_engine::image::read_config(store, &m.config.digest).map_err(|e| e.to_string())?;
    let bytes = store.read_to_vec(digest).map_err(|e| e.to_string())?;
    let desc = Descriptor::of_bytes(m.effective_media_type().to_string(), &bytes);
    Ok(PulledImage {
        manifest: desc,
        image: m,
        config,
    })
}

impl ImageSource for RegistrySource {
    fn pull<'a>(
        &'a self,
        image: &'a ImageRef,
        store: &'a BlobStore,
        events: &'a dyn EventSink,
    ) -> Pin<Box<dyn Future<Output = Result<PulledImage, String>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(d) = &image.digest {
                if let Ok(digest) = d.parse() {
                    if let Ok(p) = pulled_from_store(store, &digest) {
                        return Ok(p);
                    }
                }
            }
            let mut r: Reference = image
                .reference
                .parse()
                .map_err(|e| format!("invalid image reference {:?}: {e}", image.reference))?;
            // Named by platform first (two platforms pull the same tag) and
            // by the reference as written, not its pinned digest.
            let label = format!("{} {}", image.platform, r.familiar());
            if let Some(d) = &image.digest {
                if let Ok(digest) = d.parse() {
                    r = r.with_digest(digest);
                }
            }
            let progress_fn = move |p: Progress| {
                events.emit(Event::Bytes {
                    id: None,
                    kind: Transfer::Pull,
                    label: format!("{label} {}", p.digest.short()),
                    current: p.current,
                    total: Some(p.total),
                });
            };
            let progress: &(dyn Fn(Progress) + Send + Sync) = &progress_fn;
            let pulled = self
                .registry
                .pull(&r, &image.platform, store, progress)
                .await
                .map_err(|e| without_reference(e.to_string(), &r, &image.reference))?;
            Ok(PulledImage {
                manifest: pulled.descriptor,
                image: pulled.manifest,
                config: pulled.config,
            })
        })
    }

    /// Base layers found missing or corrupt (and quarantined) during the
    /// build are downloaded again from the repository they came from.
    fn fetch_blobs<'a>(
        &'a self,
        blobs: &'a [Descriptor],
        store: &'a BlobStore,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            for b in blobs {
                self.registry
                    .refetch(b, store, &xbuild_registry::no_progress)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }
}

/// A registry error's text without its leading `REFERENCE: `: the callers'
/// messages (`Dockerfile:1: FROM REF (linux/amd64): ...`) name the
/// reference already, and it is printed once.
fn without_reference(message: String, r: &Reference, written: &str) -> String {
    let names = [r.to_string(), r.familiar(), written.to_string()];
    for n in names {
        if let Some(rest) = message.strip_prefix(&format!("{n}: ")) {
            return rest.to_string();
        }
    }
    message
}

/// Records which images planning asks for, answering with empty configs.
#[derive(Default)]
struct Recorder(Vec<(String, Platform)>);

impl ImageResolver for Recorder {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        let key = (reference.to_string(), platform.clone());
        if !self.0.contains(&key) {
            self.0.push(key);
        }
        Ok(ResolvedImage::default())
    }
}

/// Answers from images resolved so far and records the others.
struct KnownOrRecord<'a> {
    known: &'a HashMap<(String, Platform), Result<ResolvedImage, String>>,
    missing: &'a mut Recorder,
}

impl ImageResolver for KnownOrRecord<'_> {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        match self.known.get(&(reference.to_string(), platform.clone())) {
            Some(r) => r.clone(),
            None => self.missing.resolve(reference, platform),
        }
    }
}

/// Answers from images resolved up front.
struct Resolved(HashMap<(String, Platform), Result<ResolvedImage, String>>);

impl ImageResolver for Resolved {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        self.0
            .get(&(reference.to_string(), platform.clone()))
            .cloned()
            .unwrap_or_else(|| Err("image was not resolved before planning".into()))
    }
}

fn base_config(c: &ImageConfig) -> BaseConfig {
    BaseConfig {
        env: c.config.env.clone(),
        working_dir: c.config.working_dir.clone(),
        user: c.config.user.clone(),
        shell: c.config.shell.clone(),
        onbuild: c.config.on_build.clone(),
    }
}

/// Find a tagged image in the local store for `platform`.
pub fn local_image(
    store: &BlobStore,
    r: &Reference,
    platform: &Platform,
) -> Option<(xbuild_oci::digest::Digest, ImageConfig)> {
    let digest = match r.digest() {
        Some(d) => d.clone(),
        None => store.get_ref(&r.to_string()).ok().flatten()?,
    };
    let bytes = store.read_to_vec(&digest).ok()?;
    let manifest_digest = match ImageManifest::from_slice(&bytes) {
        Ok(_) => digest,
        Err(_) => {
            let idx = ImageIndex::from_slice(&bytes).ok()?;
            idx.find_platform(platform)?.digest.clone()
        }
    };
    let m = xbuild_engine::image::read_manifest(store, &manifest_digest).ok()?;
    let config = xbuild_engine::image::read_config(store, &m.config.digest).ok()?;
    if config.platform().architecture() != platform.architecture() {
        return None;
    }
    Some((manifest_digest, config))
}

/// Resolve every image planning needs: local store first (unless `pull`), then the registry.
pub async fn resolve_images(
    registry: &Registry,
    store: &BlobStore,
    wanted: &[(String, Platform)],
    pull: bool,
) -> HashMap<(String, Platform), Result<ResolvedImage, String>> {
    let mut out = HashMap::new();
    let futs = wanted.iter().map(|(reference, platform)| async move {
        let r: Reference = match reference.parse() {
            Ok(r) => r,
            Err(e) => {
                return (
                    (reference.clone(), platform.clone()),
                    Err(format!("invalid image reference: {e}")),
                )
            }
        };
        if !pull {
            if let Some((digest, config)) = local_image(store, &r, platform) {
                return (
                    (reference.clone(), platform.clone()),
                    Ok(ResolvedImage {
                        digest: Some(digest.to_string()),
                        config: base_config(&config),
                    }),
                );
            }
        }
        let res = match registry.resolve(&r, platform).await {
            Ok(res) => Ok(ResolvedImage {
                digest: Some(res.manifest_digest.to_string()),
                config: base_config(&res.config),
            }),
            Err(e) => Err(without_reference(e.to_string(), &r, reference)),
        };
        ((reference.clone(), platform.clone()), res)
    });
    for (k, v) in futures_util::future::join_all(futs).await {
        out.insert(k, v);
    }
    out
}

/// Plan every platform with base images resolved.
pub async fn plan_resolved(
    df: &DockerfileSource,
    opts: &PlanOptions,
    platforms: &[Platform],
    registry: &Registry,
    store: &BlobStore,
    pull: bool,
) -> Result<Vec<BuildGraph>, ResolveError> {
    let mut rec = Recorder::default();
    for p in platforms {
        xbuild_plan::plan_source(&df.text, p, opts, &mut rec)?;
    }
    let mut known = resolve_images(registry, store, &rec.0, pull).await;
    // ONBUILD triggers of a base image can name images the Dockerfile never
    // does (`ONBUILD COPY --from=other-image`); they only show once that
    // base is resolved, so plan again until no new image turns up.
    for _ in 0..8 {
        let mut more = Recorder::default();
        for p in platforms {
            let mut r = KnownOrRecord {
                known: &known,
                missing: &mut more,
            };
            // Errors show in the final planning below.
            let _ = xbuild_plan::plan_source(&df.text, p, opts, &mut r);
        }
        if more.0.is_empty() {
            break;
        }
        known.extend(resolve_images(registry, store, &more.0, pull).await);
    }
    let mut resolved = Resolved(known);
    let mut graphs = Vec::new();
    for p in platforms {
        graphs.push(xbuild_plan::plan_source(&df.text, p, opts, &mut resolved)?);
    }
    Ok(graphs)
}

/// Where the sandbox init lives: this very binary, behind a hidden argument.
pub fn init_program() -> Result<(PathBuf, Vec<String>), ResolveError> {
    let exe = std::env::current_exe().map_err(ResolveError::Exe)?;
    Ok((exe, vec![crate::SANDBOX_INIT_ARG.to_string()]))
}

/// The worker name for a platform built on this machine.
pub fn local_worker(platform: &Platform) -> &'static str {
    if platform.same_arch(&Platform::host_linux()) {
        "local"
    } else {
        "qemu"
    }
}

/// Open the engine over the state directory, naming the worker.
pub fn open_engine(root: PathBuf, worker: &str) -> Result<Engine, ResolveError> {
    let (program, args) = init_program()?;
    let cfg = xbuild_engine::EngineConfig {
        root: root.clone(),
        init_program: program,
        init_args: args,
        worker: worker.to_string(),
        snapshotter: None,
    };
    Engine::open(cfg).map_err(|e| ResolveError::OpenEngine {
        root,
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onbuild_images_of_a_resolved_base_are_found_in_a_second_round() {
        // testOnBuildNewDeps: the base's ONBUILD names another image.
        let amd64 = Platform::parse("linux/amd64").unwrap();
        let src = "FROM base.example/onbuild:1 AS b\nRUN true\n";
        let opts = PlanOptions {
            file: "Dockerfile".into(),
            target: None,
            build_args: Default::default(),
            build_platform: amd64.clone(),
            network: Default::default(),
            allow: Default::default(),
            image_aliases: Default::default(),
            extra_hosts: Vec::new(),
            shm_size: None,
            ulimits: Vec::new(),
        };
        let mut rec = Recorder::default();
        xbuild_plan::plan_source(src, &amd64, &opts, &mut rec).unwrap();
        assert_eq!(rec.0.len(), 1);
        let mut known = HashMap::new();
        known.insert(
            rec.0[0].clone(),
            Ok(ResolvedImage {
                digest: None,
                config: BaseConfig {
                    onbuild: vec!["COPY --from=other.example/tool:2 /t /t".into()],
                    ..BaseConfig::default()
                },
            }),
        );
        let mut more = Recorder::default();
        let mut r = KnownOrRecord {
            known: &known,
            missing: &mut more,
        };
        let _ = xbuild_plan::plan_source(src, &amd64, &opts, &mut r);
        assert_eq!(more.0, vec![("other.example/tool:2".to_string(), amd64)]);
    }
}
