//! SLSA provenance for one platform's image, as an in-toto Statement.
//!
//! The coordinator fills a [`BuildRecord`] with what it knows about the
//! build of one platform; [`statement`] turns it into the predicate BuildKit
//! would write for the same build:
//!
//! - `mode=min` keeps the build type, the config source (the Dockerfile's
//!   path and digest, or the git URL and commit of a git context), the
//!   request's frontend and non-build-arg options, the local sources, the
//!   resolved dependencies, the builder id, the worker and platforms, and
//!   the run metadata. Build args and labels are dropped and the request is
//!   then marked incomplete, as BuildKit does; secrets and ssh ids are
//!   dropped.
//! - `mode=max` adds the build args and labels, the ids of the secrets and
//!   ssh forwards, the build steps (`buildConfig`) and the Dockerfile itself
//!   (`buildkit_metadata.source`).
//!
//! Secret values and ssh key material are not part of any type here.

use crate::intoto::{Statement, Subject};
use crate::purl;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::time::SystemTime;
use xbuild_oci::{Digest, Platform, Reference};

/// Predicate type of SLSA provenance v1.
pub const PREDICATE_SLSA_V1: &str = "https://slsa.dev/provenance/v1";
/// Predicate type of SLSA provenance v0.2.
pub const PREDICATE_SLSA_V02: &str = "https://slsa.dev/provenance/v0.2";
/// `buildType` of a v1 predicate: BuildKit's definitions, which this one follows.
pub const BUILD_TYPE_V1: &str =
    "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md";
/// `buildType` of a v0.2 predicate.
pub const BUILD_TYPE_V02: &str = "https://mobyproject.org/buildkit@v1";
/// The frontend name recorded for Dockerfile builds.
pub const FRONTEND_DOCKERFILE: &str = "dockerfile.v0";

/// How much the provenance records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Only what identifies the build and its inputs (the default).
    #[default]
    Min,
    /// Also build args, secret/ssh ids, the build steps and the Dockerfile.
    Max,
}

/// Which SLSA provenance version to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlsaVersion {
    /// `https://slsa.dev/provenance/v1` (the default).
    #[default]
    V1,
    /// `https://slsa.dev/provenance/v0.2`.
    V02,
}

impl SlsaVersion {
    /// The predicate type URI.
    pub fn predicate_type(self) -> &'static str {
        match self {
            SlsaVersion::V1 => PREDICATE_SLSA_V1,
            SlsaVersion::V02 => PREDICATE_SLSA_V02,
        }
    }
}

/// A secret used by the build, by id only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretId {
    /// The id given with `--secret id=…`.
    pub id: String,
    /// Whether the build tolerates its absence.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// An ssh forward used by the build, by id only (never key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshId {
    /// The id given with `--ssh ID=…` (`default` when unnamed).
    pub id: String,
    /// Whether the build tolerates its absence.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Where a platform was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Worker {
    /// Natively on the coordinator's machine.
    Local,
    /// On the coordinator's machine through QEMU user emulation.
    Qemu,
    /// On a remote node.
    Node {
        /// The node's name (`xbuild node ls`).
        name: String,
    },
}

impl Worker {
    fn slug(&self) -> String {
        match self {
            Worker::Local => "local".into(),
            Worker::Qemu => "qemu".into(),
            Worker::Node { name } => format!("node:{}", purl::encode(name)),
        }
    }
}

/// The build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    /// A local directory (not tracked: dependencies are then incomplete).
    Local,
    /// A git repository at a commit.
    Git {
        /// The repository URL as given (credentials are removed on output).
        url: String,
        /// The full commit hash (sha1, or sha256 for sha256 repositories).
        commit: String,
    },
    /// A remote tarball.
    Http {
        /// The URL (credentials are removed on output).
        url: String,
        /// The digest of what was downloaded.
        digest: Digest,
    },
}

/// An input the build resolved to an immutable digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Material {
    /// An image (`FROM`, `COPY --from=image`, `RUN --mount=from=image`).
    Image {
        /// The reference as written (after build-arg expansion).
        reference: Reference,
        /// The platform that was resolved.
        platform: Option<Platform>,
        /// The digest it resolved to (unknown when it was not resolved by
        /// digest, e.g. a local-only image).
        digest: Option<Digest>,
        /// True when it came from a local store rather than a registry.
        local: bool,
    },
    /// A git repository (`ADD git@…`, a git context).
    Git {
        /// Repository URL.
        url: String,
        /// Commit hash.
        commit: String,
    },
    /// A remote file (`ADD https://…`).
    Http {
        /// URL.
        url: String,
        /// Digest of the content.
        digest: Digest,
    },
}

/// One step of the build graph, for `mode=max`.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildStep {
    /// `step0`, `step1`, … (inputs refer to these ids as `stepN:OUTPUT`).
    pub id: String,
    /// The operation, as the plan serializes it (never a secret value: the
    /// plan knows secrets by id).
    pub op: serde_json::Value,
    /// Inputs, as `stepN:0`.
    pub inputs: Vec<String>,
    /// Dockerfile line ranges (1-based, inclusive) the step comes from.
    pub lines: Vec<(u32, u32)>,
}

/// Everything the provenance of one platform's image says.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildRecord {
    /// The frontend (`dockerfile.v0`).
    pub frontend: String,
    /// The Dockerfile's path relative to the context (`filename`).
    pub dockerfile_path: String,
    /// The Dockerfile's bytes; its digest goes into the config source, the
    /// text itself only into `mode=max`.
    pub dockerfile: Vec<u8>,
    /// The context.
    pub context: ContextSource,
    /// `--build-arg` values, by name.
    pub build_args: BTreeMap<String, String>,
    /// `--label` values, by name.
    pub labels: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// Other frontend options, keyed as BuildKit keys them (`add-hosts`,
    /// `no-cache`, …); host-specific ones are dropped on output.
    pub other_args: BTreeMap<String, String>,
    /// Secrets by id.
    pub secrets: Vec<SecretId>,
    /// ssh forwards by id.
    pub ssh: Vec<SshId>,
    /// Resolved inputs.
    pub materials: Vec<Material>,
    /// The build graph, for `mode=max`.
    pub steps: Vec<BuildStep>,
    /// The platform of the image.
    pub platform: Platform,
    /// The platform of the machine that coordinated the build.
    pub builder_platform: Platform,
    /// Where this platform was built.
    pub worker: Worker,
    /// Shared by all platforms of one build invocation.
    pub invocation_id: String,
    /// When the build started.
    pub started_on: SystemTime,
    /// When the build finished.
    pub finished_on: SystemTime,
    /// True when some RUN step had network access (the build is then not
    /// hermetic).
    pub network_used: bool,
    /// Unverified VCS hints (`source`, `revision`) for local contexts.
    pub vcs: BTreeMap<String, String>,
}

impl BuildRecord {
    /// A record for a Dockerfile build of `platform` with empty inputs; the
    /// caller fills the rest.
    pub fn new(platform: Platform, dockerfile_path: &str, dockerfile: Vec<u8>) -> Self {
        let now = SystemTime::now();
        BuildRecord {
            frontend: FRONTEND_DOCKERFILE.to_string(),
            dockerfile_path: dockerfile_path.to_string(),
            dockerfile,
            context: ContextSource::Local,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            target: None,
            other_args: BTreeMap::new(),
            secrets: Vec::new(),
            ssh: Vec::new(),
            materials: Vec::new(),
            steps: Vec::new(),
            builder_platform: Platform::host_linux(),
            platform,
            worker: Worker::Local,
            invocation_id: String::new(),
            started_on: now,
            finished_on: now,
            network_used: false,
            vcs: BTreeMap::new(),
        }
    }
}

/// Options that shape the predicate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PredicateOptions {
    /// `mode=min|max`.
    pub mode: Mode,
    /// `version=v1|v0.2`.
    pub version: SlsaVersion,
    /// `builder-id=…`; when unset, `urn:xbuild:<worker>`.
    pub builder_id: Option<String>,
}

/// A digest set (`{"sha256": "<hex>"}`).
pub type DigestSet = BTreeMap<String, String>;

fn digest_set(d: &Digest) -> DigestSet {
    let mut m = DigestSet::new();
    m.insert(d.algorithm().as_str().into(), d.hex().into());
    m
}

fn commit_set(commit: &str) -> DigestSet {
    let mut m = DigestSet::new();
    let alg = if commit.len() == 64 { "sha256" } else { "sha1" };
    m.insert(alg.into(), commit.to_string());
    m
}

/// Remove `user:password@` from a URL so credentials never reach an
/// attestation.
pub fn redact_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A resolved dependency (v1) / material (v0.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    /// A purl or URL.
    pub uri: String,
    /// Digests of the resource.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: DigestSet,
}

/// `externalParameters.configSource` (v1).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfigSource {
    /// Remote context URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Digest of the context (git commit) or, for local contexts, of the
    /// Dockerfile.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: DigestSet,
    /// The Dockerfile path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A local source, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalName {
    /// `context` or `dockerfile`.
    pub name: String,
}

/// `externalParameters.request`: what was asked of the frontend.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Request {
    /// Frontend name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub frontend: String,
    /// Frontend options (`build-arg:NAME`, `label:NAME`, `target`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// Secret ids (`mode=max`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretId>,
    /// ssh ids (`mode=max`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<SshId>,
    /// Local sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locals: Vec<LocalName>,
}

/// One step of `buildConfig.llbDefinition`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepJson {
    /// `stepN`.
    pub id: String,
    /// The operation.
    pub op: serde_json::Value,
    /// Inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
}

/// `buildConfig` (`mode=max`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildConfig {
    /// The steps.
    #[serde(rename = "llbDefinition")]
    pub llb_definition: Vec<StepJson>,
}

/// `internalParameters` (v1) / `invocation.environment` (v0.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InternalParameters {
    /// The steps (`mode=max`, v1 only: v0.2 has a top-level `buildConfig`).
    #[serde(
        rename = "buildConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub build_config: Option<BuildConfig>,
    /// The coordinator's platform.
    #[serde(rename = "builderPlatform")]
    pub builder_platform: String,
    /// The image's platform.
    #[serde(rename = "targetPlatform")]
    pub target_platform: String,
    /// Where the image was built.
    pub worker: Worker,
}

/// A 1-based line position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Line number.
    pub line: u32,
}

/// A range of lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// First line.
    pub start: Position,
    /// Last line.
    pub end: Position,
}

/// Where one step comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Line ranges.
    pub ranges: Vec<Range>,
}

/// The locations of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locations {
    /// Locations.
    pub locations: Vec<Location>,
}

/// A source file of the build definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// File name (`Dockerfile`).
    pub filename: String,
    /// `Dockerfile`.
    pub language: String,
    /// The file's bytes, base64 (as Go encodes `[]byte`).
    pub data: String,
}

/// `buildkit_metadata.source` (`mode=max`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Step id to its Dockerfile locations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locations: BTreeMap<String, Locations>,
    /// The source files.
    pub infos: Vec<SourceInfo>,
}

/// BuildKit's extension metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BuildKitMetadata {
    /// Unverified VCS hints.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vcs: BTreeMap<String, String>,
    /// The Dockerfile and step locations (`mode=max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// Whether parts of the provenance are complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completeness {
    /// All request parameters are recorded.
    pub request: bool,
    /// All dependencies are recorded (false for local contexts).
    #[serde(rename = "resolvedDependencies")]
    pub resolved_dependencies: bool,
}

/// `runDetails.metadata` (v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMetadata {
    /// Shared by all platforms of one invocation.
    #[serde(rename = "invocationId")]
    pub invocation_id: String,
    /// RFC 3339.
    #[serde(rename = "startedOn")]
    pub started_on: String,
    /// RFC 3339.
    #[serde(rename = "finishedOn")]
    pub finished_on: String,
    /// BuildKit's extension.
    pub buildkit_metadata: BuildKitMetadata,
    /// True when no step had network access and all inputs are tracked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub buildkit_hermetic: bool,
    /// Completeness.
    pub buildkit_completeness: Completeness,
}

/// `runDetails.builder`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    /// The builder id.
    pub id: String,
}

/// `externalParameters` (v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalParameters {
    /// The config source.
    #[serde(rename = "configSource")]
    pub config_source: ConfigSource,
    /// The request.
    pub request: Request,
}

/// `buildDefinition` (v1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildDefinition {
    /// [`BUILD_TYPE_V1`].
    #[serde(rename = "buildType")]
    pub build_type: String,
    /// External parameters.
    #[serde(rename = "externalParameters")]
    pub external_parameters: ExternalParameters,
    /// Internal parameters.
    #[serde(rename = "internalParameters")]
    pub internal_parameters: InternalParameters,
    /// Resolved dependencies.
    #[serde(
        rename = "resolvedDependencies",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// `runDetails` (v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetails {
    /// The builder.
    pub builder: Builder,
    /// Run metadata.
    pub metadata: RunMetadata,
}

/// The SLSA v1 predicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredicateV1 {
    /// Build definition.
    #[serde(rename = "buildDefinition")]
    pub build_definition: BuildDefinition,
    /// Run details.
    #[serde(rename = "runDetails")]
    pub run_details: RunDetails,
}

/// `invocation.configSource` (v0.2).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfigSourceV02 {
    /// Remote context URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: DigestSet,
    /// The Dockerfile path.
    #[serde(
        rename = "entryPoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entry_point: Option<String>,
}

/// `invocation.environment` (v0.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentV02 {
    /// The coordinator's platform.
    pub platform: String,
    /// The image's platform.
    #[serde(rename = "targetPlatform")]
    pub target_platform: String,
    /// Where the image was built.
    pub worker: Worker,
}

/// `invocation` (v0.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationV02 {
    /// Config source.
    #[serde(rename = "configSource")]
    pub config_source: ConfigSourceV02,
    /// The request.
    pub parameters: Request,
    /// Platforms and worker.
    pub environment: EnvironmentV02,
}

/// `metadata.completeness` (v0.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletenessV02 {
    /// All parameters recorded.
    pub parameters: bool,
    /// Environment recorded.
    pub environment: bool,
    /// All materials recorded.
    pub materials: bool,
}

/// `metadata` (v0.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataV02 {
    /// Invocation id.
    #[serde(rename = "buildInvocationID")]
    pub build_invocation_id: String,
    /// RFC 3339.
    #[serde(rename = "buildStartedOn")]
    pub build_started_on: String,
    /// RFC 3339.
    #[serde(rename = "buildFinishedOn")]
    pub build_finished_on: String,
    /// Completeness.
    pub completeness: CompletenessV02,
    /// Reproducibility claim (never made).
    pub reproducible: bool,
    /// BuildKit's extension.
    #[serde(rename = "https://mobyproject.org/buildkit@v1#metadata")]
    pub buildkit_metadata: BuildKitMetadata,
    /// Hermeticity.
    #[serde(
        rename = "https://mobyproject.org/buildkit@v1#hermetic",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub hermetic: bool,
}

/// The SLSA v0.2 predicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredicateV02 {
    /// The builder.
    pub builder: Builder,
    /// [`BUILD_TYPE_V02`].
    #[serde(rename = "buildType")]
    pub build_type: String,
    /// Materials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub materials: Vec<ResourceDescriptor>,
    /// Invocation.
    pub invocation: InvocationV02,
    /// The steps (`mode=max`).
    #[serde(
        rename = "buildConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub build_config: Option<BuildConfig>,
    /// Metadata.
    pub metadata: MetadataV02,
}

/// A provenance predicate of either version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Predicate {
    /// SLSA v1.
    V1(Box<PredicateV1>),
    /// SLSA v0.2.
    V02(Box<PredicateV02>),
}

/// Frontend options that describe the host, not the build (BuildKit drops
/// the same ones).
const HOST_SPECIFIC_ARGS: &[&str] = &[
    "cgroup-parent",
    "image-resolve-mode",
    "platform",
    "cache-imports",
];

fn materials(record: &BuildRecord) -> Vec<ResourceDescriptor> {
    let mut out = Vec::new();
    for m in &record.materials {
        let rd = match m {
            Material::Image {
                reference,
                platform,
                digest,
                local,
            } => ResourceDescriptor {
                uri: if *local {
                    purl::oci_image(reference, platform.as_ref())
                } else {
                    purl::docker_image(reference, platform.as_ref())
                },
                digest: digest.as_ref().map(digest_set).unwrap_or_default(),
            },
            Material::Git { url, commit } => ResourceDescriptor {
                uri: redact_credentials(url),
                digest: commit_set(commit),
            },
            Material::Http { url, digest } => ResourceDescriptor {
                uri: redact_credentials(url),
                digest: digest_set(digest),
            },
        };
        if !out.contains(&rd) {
            out.push(rd);
        }
    }
    // The context is a dependency too when it is remote.
    let ctx = match &record.context {
        ContextSource::Local => None,
        ContextSource::Git { url, commit } => Some(ResourceDescriptor {
            uri: redact_credentials(url),
            digest: commit_set(commit),
        }),
        ContextSource::Http { url, digest } => Some(ResourceDescriptor {
            uri: redact_credentials(url),
            digest: digest_set(digest),
        }),
    };
    if let Some(c) = ctx {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

fn config_source(record: &BuildRecord) -> ConfigSource {
    match &record.context {
        ContextSource::Local => {
            let mut digest = DigestSet::new();
            digest.insert(
                "sha256".into(),
                hex::encode(Sha256::digest(&record.dockerfile)),
            );
            ConfigSource {
                uri: None,
                digest,
                path: Some(record.dockerfile_path.clone()),
            }
        }
        ContextSource::Git { url, commit } => ConfigSource {
            uri: Some(redact_credentials(url)),
            digest: commit_set(commit),
            path: Some(record.dockerfile_path.clone()),
        },
        ContextSource::Http { url, digest } => ConfigSource {
            uri: Some(redact_credentials(url)),
            digest: digest_set(digest),
            path: Some(record.dockerfile_path.clone()),
        },
    }
}

/// The request, and whether it is complete, for `mode`.
fn request(record: &BuildRecord, mode: Mode) -> (Request, bool) {
    let mut args = BTreeMap::new();
    let mut complete = !record.frontend.is_empty();
    for (k, v) in &record.other_args {
        if HOST_SPECIFIC_ARGS.contains(&k.as_str()) || k.starts_with("attest:") {
            continue;
        }
        args.insert(k.clone(), v.clone());
    }
    if let Some(t) = &record.target {
        args.insert("target".into(), t.clone());
    }
    let user_args = record
        .build_args
        .iter()
        .map(|(k, v)| (format!("build-arg:{k}"), v))
        .chain(record.labels.iter().map(|(k, v)| (format!("label:{k}"), v)));
    for (k, v) in user_args {
        match mode {
            Mode::Max => {
                args.insert(k, v.clone());
            }
            Mode::Min => complete = false,
        }
    }
    let locals = match record.context {
        ContextSource::Local => vec![
            LocalName {
                name: "context".into(),
            },
            LocalName {
                name: "dockerfile".into(),
            },
        ],
        _ => Vec::new(),
    };
    let (secrets, ssh) = match mode {
        Mode::Max => (record.secrets.clone(), record.ssh.clone()),
        Mode::Min => (Vec::new(), Vec::new()),
    };
    (
        Request {
            frontend: record.frontend.clone(),
            args,
            secrets,
            ssh,
            locals,
        },
        complete,
    )
}

fn build_config(record: &BuildRecord) -> Option<BuildConfig> {
    if record.steps.is_empty() {
        return None;
    }
    Some(BuildConfig {
        llb_definition: record
            .steps
            .iter()
            .map(|s| StepJson {
                id: s.id.clone(),
                op: s.op.clone(),
                inputs: s.inputs.clone(),
            })
            .collect(),
    })
}

fn source(record: &BuildRecord) -> Source {
    let mut locations = BTreeMap::new();
    for s in &record.steps {
        if s.lines.is_empty() {
            continue;
        }
        let ranges = s
            .lines
            .iter()
            .map(|&(a, b)| Range {
                start: Position { line: a },
                end: Position { line: b },
            })
            .collect();
        locations.insert(
            s.id.clone(),
            Locations {
                locations: vec![Location { ranges }],
            },
        );
    }
    Source {
        locations,
        infos: vec![SourceInfo {
            filename: record.dockerfile_path.clone(),
            language: "Dockerfile".into(),
            data: base64::engine::general_purpose::STANDARD.encode(&record.dockerfile),
        }],
    }
}

/// The provenance predicate for `record`.
pub fn predicate(record: &BuildRecord, opts: &PredicateOptions) -> Predicate {
    let (request, request_complete) = request(record, opts.mode);
    let deps = materials(record);
    let deps_complete = !matches!(record.context, ContextSource::Local);
    let max = opts.mode == Mode::Max;
    let builder = Builder {
        id: opts
            .builder_id
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("urn:xbuild:{}", record.worker.slug())),
    };
    let env = InternalParameters {
        build_config: None,
        builder_platform: record.builder_platform.to_string(),
        target_platform: record.platform.to_string(),
        worker: record.worker.clone(),
    };
    let bk_meta = BuildKitMetadata {
        vcs: record
            .vcs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| {
                let v = if k == "source" {
                    redact_credentials(v)
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect(),
        source: max.then(|| source(record)),
    };
    let hermetic = deps_complete && !record.network_used;
    let started = crate::time::rfc3339(record.started_on);
    let finished = crate::time::rfc3339(record.finished_on);
    let config = if max { build_config(record) } else { None };
    let cs = config_source(record);
    match opts.version {
        SlsaVersion::V1 => Predicate::V1(Box::new(PredicateV1 {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE_V1.into(),
                external_parameters: ExternalParameters {
                    config_source: cs,
                    request,
                },
                internal_parameters: InternalParameters {
                    build_config: config,
                    ..env
                },
                resolved_dependencies: deps,
            },
            run_details: RunDetails {
                builder,
                metadata: RunMetadata {
                    invocation_id: record.invocation_id.clone(),
                    started_on: started,
                    finished_on: finished,
                    buildkit_metadata: bk_meta,
                    buildkit_hermetic: hermetic,
                    buildkit_completeness: Completeness {
                        request: request_complete,
                        resolved_dependencies: deps_complete,
                    },
                },
            },
        })),
        SlsaVersion::V02 => Predicate::V02(Box::new(PredicateV02 {
            builder,
            build_type: BUILD_TYPE_V02.into(),
            materials: deps,
            invocation: InvocationV02 {
                config_source: ConfigSourceV02 {
                    uri: cs.uri,
                    digest: cs.digest,
                    entry_point: cs.path,
                },
                parameters: request,
                environment: EnvironmentV02 {
                    platform: env.builder_platform,
                    target_platform: env.target_platform,
                    worker: env.worker,
                },
            },
            build_config: config,
            metadata: MetadataV02 {
                build_invocation_id: record.invocation_id.clone(),
                build_started_on: started,
                build_finished_on: finished,
                completeness: CompletenessV02 {
                    parameters: request_complete,
                    environment: true,
                    materials: deps_complete,
                },
                reproducible: false,
                buildkit_metadata: bk_meta,
                hermetic,
            },
        })),
    }
}

/// The subjects of one platform's image: one per tag, named by its
/// `pkg:docker` purl with the platform, or a single `_` when untagged.
pub fn image_subjects(tags: &[Reference], platform: &Platform, digest: &Digest) -> Vec<Subject> {
    if tags.is_empty() {
        return vec![Subject::new("_", digest)];
    }
    let mut out: Vec<Subject> = Vec::new();
    for t in tags {
        let name = purl::docker_image(&t.without_digest(), Some(platform));
        if !out.iter().any(|s| s.name == name) {
            out.push(Subject::new(name, digest));
        }
    }
    out
}

/// The in-toto Statement for one platform's image.
pub fn statement(
    record: &BuildRecord,
    subjects: Vec<Subject>,
    opts: &PredicateOptions,
) -> Statement<Predicate> {
    Statement::new(
        subjects,
        opts.version.predicate_type(),
        predicate(record, opts),
    )
}

#[cfg(test)]
#[path = "provenance_tests.rs"]
mod tests;
