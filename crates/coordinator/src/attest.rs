//! Attestations of a build (`--attest`, `--provenance`, `--sbom`): the SLSA
//! provenance of each platform's image (from its build graph and the
//! request) and its SBOM (from the image's layers), stored as buildx-layout
//! attestation manifests in the index, as OCI 1.1 referrers, or as files
//! beside a local export. The formats themselves are `xbuild-attest`'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use xbuild_attest::bundle;
use xbuild_attest::layout::AttestationBlob;
use xbuild_attest::provenance::{
    BuildRecord, BuildStep, ContextSource, Material, PredicateOptions, SecretId, SshId, Worker,
};
use xbuild_attest::sbom::{self, spdx::DocumentOptions, ScanOptions, SpdxDocument};
use xbuild_attest::Subject;
use xbuild_dockerfile::instructions::MountType;
use xbuild_oci::manifest::Manifest;
use xbuild_oci::{BlobStore, Descriptor, Digest, Reference};
use xbuild_plan::graph::{Base, BuildGraph, FileSource, Network, Op};

/// Why attestations could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The content store failed (the error names the blob).
    #[error(transparent)]
    Store(#[from] xbuild_oci::store::StoreError),
    /// A stored manifest cannot be read.
    #[error(transparent)]
    Manifest(#[from] xbuild_oci::manifest::ManifestError),
    /// The SBOM's subject is an index, not an image manifest.
    #[error("{digest} is not an image manifest")]
    NotImage {
        /// The manifest.
        digest: Digest,
    },
    /// A file or directory could not be created or written.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done (`creating`, `writing`).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Scanning the layers for packages failed.
    #[error(transparent)]
    Scan(#[from] sbom::ScanError),
    /// A statement could not be made.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// An attestation manifest could not be made.
    #[error(transparent)]
    Layout(#[from] xbuild_attest::layout::LayoutError),
    /// A platform's image could not be scanned for its SBOM.
    #[error("scanning the {platform} image for its SBOM")]
    Sbom {
        /// The platform.
        platform: xbuild_oci::Platform,
        /// Why.
        #[source]
        source: Box<AttestError>,
    },
}

/// `map_err` for a failed file operation on `path`.
fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AttestError {
    let path = path.to_path_buf();
    move |source| AttestError::Io { op, path, source }
}

type Result<T, E = AttestError> = std::result::Result<T, E>;

/// The worker of a platform from its progress name (`local`, `qemu`, `node NAME`).
pub fn worker_of(name: &str) -> Worker {
    match name.strip_prefix("node ") {
        Some(n) => Worker::Node {
            name: n.trim().to_string(),
        },
        None if name == "qemu" => Worker::Qemu,
        None => Worker::Local,
    }
}

/// What the request says, the same for every platform.
pub struct RequestFacts<'a> {
    /// The Dockerfile's path as given (`Dockerfile`, `docker/Dockerfile.prod`).
    pub dockerfile_path: &'a str,
    /// Its text.
    pub dockerfile: &'a str,
    /// `--build-arg`s.
    pub build_args: &'a BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<&'a str>,
    /// The context (local unless a git context was given).
    pub context: ContextSource,
    /// Shared by all platforms of the build.
    pub invocation_id: &'a str,
    /// When the build started.
    pub started: SystemTime,
    /// When it finished.
    pub finished: SystemTime,
}

/// The repository xbuild names the images of named contexts in.
const CONTEXT_REPO: &str = "docker.io/xbuild-context/";

/// `NAME@DIGEST` for the synthetic reference of a named context's image.
fn local_context_image(reference: &Reference) -> Option<Reference> {
    let name = reference.name();
    let short = name.strip_prefix(CONTEXT_REPO)?;
    let text = match reference.digest() {
        Some(d) => format!("{short}@{d}"),
        None => short.to_string(),
    };
    Reference::parse(&text).ok()
}

/// The provenance record of one platform's build.
pub fn record_for(graph: &BuildGraph, facts: &RequestFacts<'_>, worker: &str) -> BuildRecord {
    let mut r = BuildRecord::new(
        graph.platform.clone(),
        facts.dockerfile_path,
        facts.dockerfile.as_bytes().to_vec(),
    );
    r.builder_platform = graph.build_platform.clone();
    r.build_args = facts.build_args.clone();
    // `--label`s are frontend options (`label:NAME`) of the request.
    r.labels = graph.labels.clone();
    r.target = facts.target.map(str::to_string);
    r.context = facts.context.clone();
    r.invocation_id = facts.invocation_id.to_string();
    r.started_on = facts.started;
    r.finished_on = facts.finished;
    r.worker = worker_of(worker);
    for img in graph.images() {
        let Ok(reference) = Reference::parse(&img.reference) else {
            continue;
        };
        let digest = img
            .digest
            .as_deref()
            .and_then(|d| Digest::parse(d).ok())
            .or_else(|| reference.digest().cloned());
        // A named context's image (an OCI layout, a directory) has a
        // synthetic `xbuild-context/NAME` reference: it is recorded as the
        // local OCI image NAME (`pkg:oci/NAME`), as BuildKit records an
        // oci-layout source.
        let (reference, local) = match local_context_image(&reference) {
            Some(r) => (r, true),
            None => (reference, false),
        };
        r.materials.push(Material::Image {
            reference,
            platform: Some(img.platform.clone()),
            digest,
            local,
        });
    }
    // Steps: one per instruction, numbered across stages; a stage's first
    // step takes its base stage's last step (or its FROM) as input.
    let mut last_of_stage: Vec<Option<String>> = vec![None; graph.stages.len()];
    let mut n = 0usize;
    let mut next_id = || {
        let id = format!("step{n}");
        n += 1;
        id
    };
    for (si, st) in graph.stages.iter().enumerate() {
        let from_id = next_id();
        let base_input = match &st.base {
            Base::Stage(b) => last_of_stage.get(*b).cloned().flatten(),
            _ => None,
        };
        r.steps.push(BuildStep {
            id: from_id.clone(),
            op: serde_json::json!({ "source": match &st.base {
                Base::Scratch => serde_json::json!({"scratch": true}),
                Base::Image(i) => serde_json::json!({"image": i.reference, "platform": i.platform.to_string(), "digest": i.digest}),
                Base::Stage(_) => serde_json::json!({"stage": st.from_text}),
            }}),
            inputs: base_input.into_iter().map(|i| format!("{i}:0")).collect(),
            lines: vec![(st.location.start_line as u32, st.location.end_line as u32)],
        });
        let mut prev = from_id;
        for step in &st.steps {
            let id = next_id();
            let mut inputs = vec![format!("{prev}:0")];
            let mut from_stage = |fs: &FileSource| {
                if let FileSource::Stage(i) = fs {
                    if let Some(Some(l)) = last_of_stage.get(*i) {
                        inputs.push(format!("{l}:0"));
                    }
                }
            };
            match &step.op {
                Op::Copy(c) => from_stage(&c.from),
                Op::Exec(e) => {
                    for m in &e.mounts {
                        if let Some(f) = &m.from {
                            from_stage(f);
                        }
                        match m.kind {
                            MountType::Secret => {
                                let id = m.id.clone().unwrap_or_default();
                                if !id.is_empty() && !r.secrets.iter().any(|s| s.id == id) {
                                    r.secrets.push(SecretId {
                                        id,
                                        optional: !m.required,
                                    });
                                }
                            }
                            MountType::Ssh => {
                                let id = m.id.clone().unwrap_or_else(|| "default".into());
                                if !r.ssh.iter().any(|s| s.id == id) {
                                    r.ssh.push(SshId {
                                        id,
                                        optional: !m.required,
                                    });
                                }
                            }
                            _ => {}
                        }
                    }
                    if e.network != Network::None {
                        r.network_used = true;
                    }
                }
                Op::Config(_) => {}
            }
            r.steps.push(BuildStep {
                id: id.clone(),
                op: serde_json::to_value(&step.op).unwrap_or(serde_json::Value::Null),
                inputs,
                lines: vec![(
                    step.location.start_line as u32,
                    step.location.end_line as u32,
                )],
            });
            prev = id;
        }
        last_of_stage[si] = Some(prev);
    }
    r
}

/// The SBOM of the image whose manifest is `manifest` in `store`, scanned
/// from its layers unpacked under `work`.
pub fn sbom_for(
    store: &BlobStore,
    manifest: &Descriptor,
    name: &str,
    created: SystemTime,
    generator: Option<&str>,
    work: &Path,
    extra: &ScanOptions,
) -> Result<SpdxDocument> {
    let bytes = store.read_to_vec(&manifest.digest)?;
    let Manifest::Image(m) = Manifest::parse(&bytes, Some(&manifest.media_type))? else {
        return Err(AttestError::NotImage {
            digest: manifest.digest.clone(),
        });
    };
    let dir = tempfile::Builder::new()
        .prefix("sbom-")
        .tempdir_in(work)
        .map_err(io_err("creating a scan directory in", work))?;
    let mut files = Vec::new();
    for l in &m.layers {
        files.push(store.open_blob(&l.digest)?);
    }
    let scan = sbom::scan_layers(files, dir.path(), extra)?;
    Ok(SpdxDocument::build(
        &scan,
        &DocumentOptions {
            name: name.to_string(),
            created,
            tool: format!("xbuild-{}", env!("CARGO_PKG_VERSION")),
            generator: generator.map(str::to_string),
        },
    ))
}

/// The statement blobs of one platform's image.
pub fn blobs_for(
    record: Option<&BuildRecord>,
    provenance: Option<&PredicateOptions>,
    sbom: Option<&SpdxDocument>,
    subjects: Vec<Subject>,
) -> Result<Vec<AttestationBlob>> {
    let mut out = Vec::new();
    if let (Some(r), Some(p)) = (record, provenance) {
        out.push(bundle::provenance_blob(r, subjects.clone(), p)?);
    }
    if let Some(d) = sbom {
        out.push(bundle::sbom_blob(d, subjects)?);
    }
    Ok(out)
}

/// Statement blobs for a platform manifest as stored (OCI or Docker typed):
/// the subjects must name that exact manifest.
pub type StatementsFor<'a> = dyn Fn(&Descriptor) -> Result<Vec<AttestationBlob>> + Send + Sync + 'a;

/// Write the buildx-layout attestation manifest of each of `manifests`
/// into `store`; answers the index entries to append.
pub fn buildx_entries(
    store: &BlobStore,
    manifests: &[Descriptor],
    docker_types: bool,
    statements: &StatementsFor<'_>,
) -> Result<Vec<Descriptor>> {
    let mut out = Vec::new();
    for m in manifests {
        let blobs = statements(m)?;
        if blobs.is_empty() {
            continue;
        }
        let a = xbuild_attest::layout::buildx_attestation(m, blobs, docker_types)?;
        for (_, bytes) in a.blobs() {
            store.put_bytes(bytes)?;
        }
        store.put_bytes(&a.manifest.bytes)?;
        out.push(a.index_entry);
    }
    Ok(out)
}

/// The referrer artifacts of `manifests`, written into `store`:
/// `(artifact manifest, subject)` pairs to push.
pub fn referrer_artifacts(
    store: &BlobStore,
    manifests: &[Descriptor],
    statements: &StatementsFor<'_>,
) -> Result<Vec<(Descriptor, Descriptor)>> {
    let mut out = Vec::new();
    for m in manifests {
        let blobs = statements(m)?;
        if blobs.is_empty() {
            continue;
        }
        let a = xbuild_attest::layout::referrer_artifact(m, blobs)?;
        for (_, bytes) in a.blobs() {
            store.put_bytes(bytes)?;
        }
        store.put_bytes(&a.manifest.bytes)?;
        out.push((a.referrer_descriptor, m.clone()));
    }
    Ok(out)
}

/// Write each platform's statements beside its filesystem in a local
/// export: `provenance.json`, `sbom.spdx.json` (in `dest/linux_amd64/…`
/// when the filesystems are split per platform: several platforms, or
/// `platform-split=true`). Several platforms in one directory
/// (`platform-split=false`) name the files after their platform, as
/// BuildKit: `provenance.linux_amd64.json`.
pub fn write_local(
    dest: &Path,
    split: Option<bool>,
    statements: &[(Descriptor, Vec<AttestationBlob>)],
) -> Result<()> {
    let many = statements.len() > 1;
    let split = split.unwrap_or(many);
    for (m, blobs) in statements {
        let dir = match (m.platform(), split) {
            (Some(p), true) => dest.join(p.to_string().replace('/', "_")),
            _ => dest.to_path_buf(),
        };
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        for b in blobs {
            let name = bundle::local_file_name(b);
            let name = match (m.platform(), many && !split) {
                (Some(p), true) => platform_file_name(name, &p.to_string().replace('/', "_")),
                _ => name.to_string(),
            };
            let f = dir.join(name);
            std::fs::write(&f, &b.bytes).map_err(io_err("writing", &f))?;
        }
    }
    Ok(())
}

/// `provenance.json` → `provenance.linux_amd64.json` (the platform before
/// the last extension).
fn platform_file_name(name: &str, platform: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{platform}.{ext}"),
        None => format!("{name}.{platform}"),
    }
}

/// Unverified VCS hints for a local context that is a git checkout, as
/// buildx sends them (`vcs:source`, `vcs:revision`): the `origin` remote
/// (credentials removed on output) and the checked-out commit. Nothing when
/// `BUILDX_GIT_INFO` is false, git is missing, or the directory is not in a
/// repository.
pub fn git_hints(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if std::env::var("BUILDX_GIT_INFO")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "0" | "false"))
        .unwrap_or(false)
    {
        return out;
    }
    let git = |args: &[&str]| -> Option<String> {
        let o = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let s = String::from_utf8(o.stdout).ok()?.trim().to_string();
        (o.status.success() && !s.is_empty()).then_some(s)
    };
    if let Some(rev) = git(&["rev-parse", "HEAD"]) {
        out.insert("revision".to_string(), rev);
        if let Some(url) = git(&["remote", "get-url", "origin"]) {
            out.insert("source".to_string(), url);
        }
    }
    out
}

/// Everything needed to write the statements of a finished build.
pub struct Prepared {
    provenance: Option<PredicateOptions>,
    /// Per platform: the built manifest's digest, the platform, its record.
    records: Vec<(Digest, xbuild_oci::Platform, BuildRecord)>,
    /// Per platform (`linux/amd64`): its SBOM.
    sboms: BTreeMap<String, SpdxDocument>,
    /// The names the image is pushed or stored under.
    names: Vec<Reference>,
}

/// When the build ran, for the provenance.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Start of the build.
    pub started: SystemTime,
    /// End of the solve.
    pub finished: SystemTime,
}

/// A BuildKit-style invocation id: 25 lowercase base-36 characters.
pub fn invocation_id(seed: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut out = String::new();
    let mut state = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut state);
    while out.len() < 25 {
        out.len().hash(&mut state);
        let mut x = state.finish();
        for _ in 0..8 {
            if out.len() == 25 {
                break;
            }
            let d = (x % 36) as u32;
            out.push(char::from_digit(d, 36).unwrap_or('0'));
            x /= 36;
        }
    }
    out
}

impl Prepared {
    /// Gather the records and scan the SBOMs of `done` (built from
    /// `graphs`, in the same platform order) for `req`, or `None` when no
    /// attestation was asked for. SBOM scans unpack each image's layers
    /// under `work`.
    pub fn prepare(
        req: &crate::BuildRequest,
        graphs: &[BuildGraph],
        done: &[crate::PlatformResult],
        store: &BlobStore,
        work: &Path,
        timing: &Timing,
    ) -> Result<Option<Prepared>> {
        let attest = &req.attest;
        if attest.provenance.is_none() && attest.sbom.is_none() {
            return Ok(None);
        }
        let mut names: Vec<Reference> = Vec::new();
        let mut all: Vec<String> = req.tags.clone();
        for o in &req.outputs {
            if let crate::OutputSpec::Image { names: n, .. } = o {
                all.extend(n.iter().cloned());
            }
        }
        for n in all {
            if let Ok(r) = Reference::parse(&n) {
                if !names.contains(&r) {
                    names.push(r);
                }
            }
        }
        // Reproducible builds get reproducible provenance: the times are
        // SOURCE_DATE_EPOCH and the invocation id derives from the inputs.
        let (started, finished, seed) = match req.source_date_epoch {
            Some(e) => {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.max(0) as u64);
                let mut seed = req.dockerfile.text.clone().into_bytes();
                seed.extend(format!("{:?}{:?}", req.plan.build_args, req.platforms).bytes());
                (t, t, seed)
            }
            None => {
                let nanos = timing
                    .started
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                (
                    timing.started,
                    timing.finished,
                    format!("{nanos}-{}", std::process::id()).into_bytes(),
                )
            }
        };
        let invocation = invocation_id(&seed);
        let build_args = req.plan.build_args.clone();
        let dockerfile_path = req
            .dockerfile_in_context
            .clone()
            .unwrap_or_else(|| req.dockerfile.display.clone());
        let facts = RequestFacts {
            dockerfile_path: &dockerfile_path,
            dockerfile: &req.dockerfile.text,
            build_args: &build_args,
            target: req.plan.target.as_deref(),
            context: ContextSource::Local,
            invocation_id: &invocation,
            started,
            finished,
        };
        let mut records = Vec::new();
        let mut sboms = BTreeMap::new();
        let vcs = match (&attest.provenance, &req.context_dir) {
            (Some(_), Some(dir)) => git_hints(dir),
            _ => BTreeMap::new(),
        };
        // BUILDKIT_SBOM_SCAN_CONTEXT: the build context is scanned too.
        let target_stage = graphs
            .first()
            .and_then(|g| g.stages.get(g.target))
            .and_then(|s| s.name.clone());
        let mut extra = ScanOptions::default();
        if let (Some(v), Some(dir)) = (
            build_args.get("BUILDKIT_SBOM_SCAN_CONTEXT"),
            req.context_dir.as_ref(),
        ) {
            if xbuild_attest::options::scan_enabled_for_stage(target_stage.as_deref(), v) {
                extra.extra_roots.push(sbom::ExtraRoot {
                    name: "context".into(),
                    dir: dir.clone(),
                });
            }
        }
        std::fs::create_dir_all(work).map_err(io_err("creating", work))?;
        for d in done {
            let graph = graphs.iter().find(|g| g.platform == d.platform);
            if let (Some(g), Some(_)) = (graph, &attest.provenance) {
                let mut r = record_for(g, &facts, &d.worker);
                r.vcs = vcs.clone();
                records.push((d.manifest.digest.clone(), d.platform.clone(), r));
            }
            if let Some(s) = &attest.sbom {
                let name = match names.first() {
                    Some(n) => format!("{} ({})", n.familiar(), d.platform),
                    None => format!("image ({})", d.platform),
                };
                let doc = sbom_for(
                    store,
                    &d.manifest,
                    &name,
                    started,
                    s.generator.as_deref(),
                    work,
                    &extra,
                )
                .map_err(|e| AttestError::Sbom {
                    platform: d.platform.clone(),
                    source: Box::new(e),
                })?;
                sboms.insert(d.platform.to_string(), doc);
            }
        }
        Ok(Some(Prepared {
            provenance: attest.provenance.clone(),
            records,
            sboms,
            names,
        }))
    }

    /// The statements about the platform manifest `m` (OCI or Docker typed:
    /// the subjects name `m`'s digest).
    pub fn statements(&self, m: &Descriptor) -> Result<Vec<AttestationBlob>> {
        let rec = self
            .records
            .iter()
            .find(|(d, _, _)| *d == m.digest)
            .or_else(|| {
                let p = m.platform()?;
                self.records.iter().find(|(_, rp, _)| *rp == p)
            });
        let platform = m
            .platform()
            .or_else(|| rec.map(|(_, p, _)| p.clone()))
            .or_else(|| {
                (self.sboms.len() == 1)
                    .then(|| self.sboms.keys().next()?.parse().ok())
                    .flatten()
            });
        let Some(platform) = platform else {
            return Ok(Vec::new());
        };
        let subjects = xbuild_attest::provenance::image_subjects(&self.names, &platform, &m.digest);
        blobs_for(
            rec.map(|(_, _, r)| r),
            self.provenance.as_ref(),
            self.sboms.get(&platform.to_string()),
            subjects,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn named_context_images_are_local_oci_images() {
        let d = "sha256:8a79c31054320fa7be8c8540e3034defc97f92f71c430ce9305fd2c44e739957";
        let r = Reference::parse(&format!("xbuild-context/foo@{d}")).unwrap();
        let local = local_context_image(&r).unwrap();
        assert_eq!(local.name(), "docker.io/library/foo");
        assert_eq!(local.digest().map(|x| x.to_string()), Some(d.to_string()));
        let pulled = Reference::parse("docker.io/library/busybox:latest").unwrap();
        assert!(local_context_image(&pulled).is_none());
    }

    #[test]
    fn workers_by_name() {
        assert_eq!(worker_of("local"), Worker::Local);
        assert_eq!(worker_of("qemu"), Worker::Qemu);
        assert_eq!(
            worker_of("node arm1"),
            Worker::Node {
                name: "arm1".into()
            }
        );
    }

    #[test]
    fn git_checkout_hints() {
        let t = tempfile::tempdir().unwrap();
        assert!(git_hints(t.path()).is_empty());
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(t.path())
                .args(args)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.com")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.com")
                .output()
        };
        if git(&["init", "-q"])
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!("skipped: git is not installed");
            return;
        }
        std::fs::write(t.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        git(&["add", "Dockerfile"]).unwrap();
        git(&["commit", "-qm", "x"]).unwrap();
        git(&["remote", "add", "origin", "https://git.example.com/app.git"]).unwrap();
        let head = String::from_utf8(git(&["rev-parse", "HEAD"]).unwrap().stdout).unwrap();
        let h = git_hints(t.path());
        assert_eq!(h["revision"], head.trim());
        assert_eq!(h["source"], "https://git.example.com/app.git");
    }
}
