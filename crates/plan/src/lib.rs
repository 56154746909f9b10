//! Build plans: a parsed Dockerfile turned into one [`BuildGraph`] per target
//! platform. ARG scoping, ENV/ARG precedence, `--build-arg` overrides, the
//! automatic platform args, stage selection with `--target` and stage
//! dependencies all happen here; the result is plain data that the engine
//! solves without knowing the Dockerfile.
//!
//! The crate does no I/O: base-image configs (needed because a base image's
//! `ENV` and `WORKDIR` affect expansion) come through [`ImageResolver`].
#![warn(missing_docs)]

mod arg_specs;
pub mod check;
mod convert;
pub mod graph;
pub mod lint;
mod words;

pub use convert::{plan, plan_source, targets, targets_of_source, StageInfo};
pub use graph::*;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use xbuild_dockerfile::instructions::InstructionError;
use xbuild_dockerfile::ParseError;
use xbuild_oci::Platform;

/// The default `PATH` Docker gives Linux containers without one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Build args that RUN steps see without an ARG declaration and that are
/// kept out of cache keys and history, as Docker does.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Inputs of planning besides the Dockerfile.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Dockerfile name used in messages (`Dockerfile`, `docker/app.Dockerfile`).
    pub file: String,
    /// `--target`: the stage to build (default: the last one).
    pub target: Option<String>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// The platform of the planning machine (`BUILDPLATFORM`).
    pub build_platform: Platform,
    /// `--network`: the network of `RUN` steps that do not choose one.
    pub network: Network,
    /// `--allow`: entitlements granted to the build.
    pub allow: Entitlements,
    /// `--build-context NAME=docker-image://REF`: image names (as written in
    /// `FROM`, `COPY --from`, `RUN --mount=from`) replaced by another image.
    pub image_aliases: BTreeMap<String, String>,
    /// `--add-host HOST:IP`: extra `/etc/hosts` lines of every RUN step.
    pub extra_hosts: Vec<(String, String)>,
    /// `--shm-size`: `/dev/shm` of every RUN step, in bytes.
    pub shm_size: Option<u64>,
    /// `--ulimit`: resource limits of every RUN step (see [`Ulimit::parse_all`]).
    pub ulimits: Vec<Ulimit>,
}

impl PlanOptions {
    /// Options for `file` with no target and no build args, planned on this machine.
    pub fn new(file: &str) -> Self {
        PlanOptions {
            file: file.to_string(),
            target: None,
            build_args: BTreeMap::new(),
            build_platform: Platform::host_linux(),
            network: Network::Default,
            allow: Entitlements::default(),
            image_aliases: BTreeMap::new(),
            extra_hosts: Vec::new(),
            shm_size: None,
            ulimits: Vec::new(),
        }
    }
}

/// The parts of a base image's config that affect planning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseConfig {
    /// `Env` (`KEY=value`).
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`.
    pub user: String,
    /// `Shell`.
    pub shell: Vec<String>,
    /// `OnBuild` triggers, run at the start of a stage built on this image.
    pub onbuild: Vec<String>,
}

/// A base image as the resolver found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedImage {
    /// Manifest digest for the platform, when known.
    pub digest: Option<String>,
    /// Config parts that matter for planning.
    pub config: BaseConfig,
}

/// Looks up base images while planning (registry, local store, or nothing).
pub trait ImageResolver {
    /// Resolve `reference` for `platform`. The error text is shown to the user.
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String>;
}

/// A resolver that knows nothing: every image has an empty config and no
/// digest. Used by `--call outline|targets|check`, which must work offline.
#[derive(Debug, Default, Clone, Copy)]
pub struct OfflineResolver;

impl ImageResolver for OfflineResolver {
    fn resolve(&mut self, _reference: &str, _platform: &Platform) -> Result<ResolvedImage, String> {
        Ok(ResolvedImage::default())
    }
}

/// Errors from planning. Each one that concerns a line names it.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The Dockerfile does not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// An instruction is malformed.
    #[error(transparent)]
    Instruction(#[from] InstructionError),
    /// A problem found while converting an instruction.
    #[error("{location}: {instruction}: {message}")]
    At {
        /// Where.
        location: Location,
        /// Upper-case keyword.
        instruction: String,
        /// What.
        message: String,
    },
    /// No FROM at all.
    #[error("{file}:{line}: dockerfile contains no stages to build (no FROM instruction)")]
    NoStage {
        /// Dockerfile name.
        file: String,
        /// The last line read (where a FROM was still missing).
        line: usize,
    },
    /// `--target` names no stage.
    #[error(
        "target stage {target:?} could not be found{}",
        target_hint(target, available)
    )]
    TargetNotFound {
        /// The requested target.
        target: String,
        /// Named stages.
        available: Vec<String>,
    },
    /// Stages depend on each other in a loop.
    #[error("{location}: circular dependency between build stages: {}", chain.join(" -> "))]
    Cycle {
        /// Where the loop closes.
        location: Location,
        /// Stage names along the loop.
        chain: Vec<String>,
    },
    /// A base image could not be resolved.
    #[error("{location}: FROM {reference} ({platform}): {message}")]
    Resolve {
        /// The FROM (or COPY --from) line.
        location: Location,
        /// The image reference.
        reference: String,
        /// Its platform (`linux/arm64`).
        platform: String,
        /// The resolver's message.
        message: String,
    },
}

/// The automatic platform args for a build.
pub fn platform_args(build: &Platform, target: &Platform) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (prefix, p) in [("BUILD", build), ("TARGET", target)] {
        m.insert(format!("{prefix}PLATFORM"), p.to_string());
        m.insert(format!("{prefix}OS"), p.os().to_string());
        m.insert(format!("{prefix}ARCH"), p.architecture().to_string());
        m.insert(format!("{prefix}VARIANT"), p.variant_or_empty().to_string());
    }
    m
}

/// BuildKit's "(did you mean X?)" for a misspelt `--target`, else the
/// list of stage names.
fn target_hint(target: &str, available: &[String]) -> String {
    match xbuild_dockerfile::suggest::suggest(target, available, false) {
        Some(m) => format!(" (did you mean {m}?)"),
        None if available.is_empty() => " (no stage has a name)".to_string(),
        None => format!(" (stages: {})", available.join(", ")),
    }
}

#[cfg(test)]
mod target_hint_tests {
    use super::*;

    #[test]
    fn misspelt_target_gets_buildkit_hint() {
        // testTargetMistype.
        let e = PlanError::TargetNotFound {
            target: "bulid".into(),
            available: vec!["build".into()],
        };
        assert_eq!(
            e.to_string(),
            "target stage \"bulid\" could not be found (did you mean build?)"
        );
        let e = PlanError::TargetNotFound {
            target: "zzz".into(),
            available: vec!["build".into(), "test".into()],
        };
        assert!(e.to_string().ends_with("(stages: build, test)"));
    }
}
