//! Shared helpers of the engine's integration tests: a busybox base image
//! in a fresh store, a resolver over that store, and a solve wrapper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use xbuild_engine::context::{self, ContextIndex, ScanOptions};
use xbuild_engine::events::{Event, VecSink};
use xbuild_engine::source::resolve_in_store;
use xbuild_engine::{
    Engine, EngineConfig, EngineError, Secrets, Snapshotter, SolveRequest, SolveResult,
    StoreSource, VertexIds,
};
use xbuild_oci::layer::{write_layer, WriteOptions};
use xbuild_oci::manifest::ImageManifest;
use xbuild_oci::{BlobStore, ImageConfig, Platform};
use xbuild_plan::{BaseConfig, BuildGraph, ImageRef, ImageResolver, PlanOptions, ResolvedImage};
use xbuild_testbed::BusyboxRootfs;

/// The tag the base image is stored under.
pub const BASE: &str = "busybox:test";

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn native() -> Platform {
    Platform::host_linux()
}

pub fn engine(root: &Path) -> Engine {
    engine_with(root, None)
}

/// An engine with the given snapshotter (`None`: the environment / probe).
pub fn engine_with(root: &Path, snapshotter: Option<Snapshotter>) -> Engine {
    Engine::open(EngineConfig {
        root: root.to_path_buf(),
        init_program: PathBuf::from(env!("CARGO_BIN_EXE_xbuild-engine-init")),
        init_args: Vec::new(),
        worker: "local".into(),
        snapshotter,
    })
    .unwrap()
}

/// Stores a busybox image for Debian architecture `arch` (with a user `app`
/// 1000:1000) in `store`, tagged `tag`. `None` when busybox is unavailable.
pub fn make_base(store: &BlobStore, arch: &str, platform: &Platform, tag: &str) -> Option<()> {
    let rootfs = BusyboxRootfs::build_or_skip(arch)?;
    let r = rootfs.path();
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    std::fs::write(
        r.join("etc/passwd"),
        format!("{passwd}app:x:1000:1000:app:/home/app:/bin/sh\n"),
    )
    .unwrap();
    let group = std::fs::read_to_string(r.join("etc/group")).unwrap();
    std::fs::write(r.join("etc/group"), format!("{group}app:x:1000:\n")).unwrap();
    std::fs::create_dir_all(r.join("home/app")).unwrap();
    std::os::unix::fs::chown(r.join("home/app"), Some(1000), Some(1000)).unwrap();
    let mut w = store.writer(xbuild_oci::digest::Algorithm::Sha256).unwrap();
    let (out, _) = write_layer(
        r,
        &mut w,
        &WriteOptions {
            source_date_epoch: Some(1_600_000_000),
            ..Default::default()
        },
    )
    .unwrap();
    w.commit(Some(&out.digest)).unwrap();
    let mut config = ImageConfig::for_platform(platform);
    config.rootfs.kind = "layers".into();
    config.rootfs.diff_ids = vec![out.diff_id.clone()];
    config.config.env = vec![format!("PATH={}", xbuild_plan::DEFAULT_PATH)];
    config.config.cmd = Some(vec!["sh".into()]);
    let enc = config.encode().unwrap();
    store.put_bytes(&enc.bytes).unwrap();
    let m = ImageManifest::new_oci(enc.descriptor, vec![out.descriptor()]);
    let me = m.encode().unwrap();
    store.put_bytes(&me.bytes).unwrap();
    store.set_ref(tag, &me.descriptor.digest).unwrap();
    Some(())
}

/// Resolves base images from the store, as the coordinator does from a registry.
pub struct StoreResolver<'a>(pub &'a BlobStore);

impl ImageResolver for StoreResolver<'_> {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        let img = resolve_in_store(
            &ImageRef {
                reference: reference.to_string(),
                platform: platform.clone(),
                digest: None,
            },
            self.0,
        )?;
        let c = &img.config.config;
        Ok(ResolvedImage {
            digest: Some(img.manifest.digest.to_string()),
            config: BaseConfig {
                env: c.env.clone(),
                working_dir: c.working_dir.clone(),
                user: c.user.clone(),
                shell: c.shell.clone(),
                onbuild: c.on_build.clone(),
            },
        })
    }
}

pub fn plan(store: &BlobStore, src: &str, platform: &Platform) -> BuildGraph {
    plan_with(store, src, platform, BTreeMap::new())
}

pub fn plan_with(
    store: &BlobStore,
    src: &str,
    platform: &Platform,
    build_args: BTreeMap<String, String>,
) -> BuildGraph {
    let mut opts = PlanOptions::new("Dockerfile");
    opts.build_args = build_args;
    xbuild_plan::plan_source(src, platform, &opts, &mut StoreResolver(store)).unwrap()
}

pub fn scan(dir: &Path) -> ContextIndex {
    context::scan(dir, Some("Dockerfile"), &ScanOptions::default(), None).unwrap()
}

/// Options of one test solve.
#[derive(Default)]
pub struct Opts<'a> {
    pub no_cache: bool,
    pub no_cache_filter: Vec<String>,
    pub secrets: Option<&'a Secrets>,
    pub sde: Option<i64>,
}

pub async fn solve(
    engine: &Engine,
    graph: &BuildGraph,
    ctx: Option<&Path>,
    opts: Opts<'_>,
) -> (Result<SolveResult, EngineError>, Vec<Event>) {
    let index = ctx.map(scan);
    let sink = VecSink::default();
    let ids = VertexIds::new();
    let empty = Secrets::new();
    let r = engine
        .solve(SolveRequest {
            graph,
            context_dir: ctx,
            context: index.as_ref(),
            source: &StoreSource,
            events: &sink,
            ids: &ids,
            no_cache: opts.no_cache,
            no_cache_filter: &opts.no_cache_filter,
            secrets: opts.secrets.unwrap_or(&empty),
            source_date_epoch: opts.sde,
            presolved: &[],
        })
        .await;
    (r, sink.events())
}

/// Number of `Cached` and `Miss` events, and the miss reasons by vertex name.
pub fn cache_stats(events: &[Event]) -> (usize, usize, Vec<(String, String)>) {
    let mut names = BTreeMap::new();
    let (mut hits, mut misses, mut reasons) = (0, 0, Vec::new());
    for e in events {
        match e {
            Event::Started { id, name, .. } => {
                names.insert(*id, name.clone());
            }
            Event::Cached { .. } => hits += 1,
            Event::Miss { id, reason, .. } => {
                misses += 1;
                reasons.push((names.get(id).cloned().unwrap_or_default(), reason.clone()));
            }
            _ => {}
        }
    }
    (hits, misses, reasons)
}

/// All log output of a build.
pub fn logs(events: &[Event]) -> String {
    let mut s = Vec::new();
    for e in events {
        if let Event::Log { data, .. } = e {
            s.extend_from_slice(data);
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

/// Every blob of the store, decompressed when gzip.
pub fn all_blob_bytes(store: &BlobStore) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (d, _) in store.list().unwrap() {
        let raw = std::fs::read(store.path_of(&d)).unwrap();
        if raw.starts_with(&[0x1f, 0x8b]) {
            let mut dec = Vec::new();
            flate2::read::MultiGzDecoder::new(raw.as_slice())
                .read_to_end(&mut dec)
                .unwrap();
            out.push(dec);
        } else {
            out.push(raw);
        }
    }
    out
}
