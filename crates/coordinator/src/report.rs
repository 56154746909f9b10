//! Phase 6: what the build reports — the metadata file's JSON and the
//! summary's data. Rendering them is the caller's business.

use crate::assemble::Assembled;
use serde_json::Value;
use std::time::Duration;
use xbuild_oci::reference::Reference;
use xbuild_oci::{Descriptor, Platform};

/// One platform's finished build.
#[derive(Debug, Clone)]
pub struct PlatformResult {
    /// Target platform.
    pub platform: Platform,
    /// Where it ran.
    pub worker: String,
    /// Manifest in the local store.
    pub manifest: Descriptor,
    /// Steps (FROM not counted).
    pub steps: usize,
    /// Cached steps.
    pub cached: usize,
    /// Wall time.
    pub duration: Duration,
    /// Bytes sent to a remote worker (`None` when built here).
    pub bytes_sent: Option<u64>,
}

/// The work several targets shared (the start of a build-platform stage),
/// solved once for all of them.
#[derive(Debug, Clone)]
pub struct SharedResult {
    /// The platform that executed it.
    pub platform: Platform,
    /// The targets it served, in request order.
    pub served: Vec<Platform>,
    /// The stages it covers (display names).
    pub stages: Vec<String>,
    /// Where it ran.
    pub worker: String,
    /// Steps (FROM not counted).
    pub steps: usize,
    /// Cached steps.
    pub cached: usize,
    /// Wall time.
    pub duration: Duration,
}

/// The outcome of a build.
#[derive(Debug, Clone)]
pub struct Report {
    /// The image the user asked for.
    pub result: Descriptor,
    /// Every platform, in the requested order.
    pub platforms: Vec<PlatformResult>,
    /// `-t` names, normalized.
    pub names: Vec<String>,
    /// What was pushed (`name@digest`).
    pub pushed: Vec<String>,
    /// The shared work, shown once (set with [`Report::with_shared`]).
    pub shared: Option<SharedResult>,
}

/// Gather the report of a finished build.
pub fn report(
    assembled: &Assembled,
    platforms: Vec<PlatformResult>,
    tags: &[String],
    pushed: Vec<String>,
) -> Report {
    Report {
        result: assembled.result().clone(),
        platforms,
        names: tags
            .iter()
            .filter_map(|t| t.parse::<Reference>().ok())
            .map(|r| r.to_string())
            .collect(),
        pushed,
        shared: None,
    }
}

impl Report {
    /// The report with the shared work of the solve (`Solved::shared`).
    pub fn with_shared(mut self, shared: Option<SharedResult>) -> Self {
        self.shared = shared;
        self
    }

    /// The `--metadata-file` document (BuildKit's keys plus xbuild's
    /// per-platform data).
    pub fn metadata(&self) -> Value {
        let platforms: serde_json::Map<String, Value> = self
            .platforms
            .iter()
            .map(|d| {
                (
                    d.platform.to_string(),
                    serde_json::json!({
                        "digest": d.manifest.digest.to_string(),
                        "worker": d.worker,
                        "steps": d.steps,
                        "cached": d.cached,
                        "duration_seconds": d.duration.as_secs_f64(),
                        "bytes_sent_to_worker": d.bytes_sent,
                    }),
                )
            })
            .collect();
        let mut doc = serde_json::json!({
            "containerimage.digest": self.result.digest.to_string(),
            "containerimage.descriptor": self.result,
            "image.name": self.names.join(","),
            "xbuild.platforms": platforms,
        });
        if let Some(s) = &self.shared {
            doc["xbuild.shared"] = serde_json::json!({
                "platform": s.platform.to_string(),
                "shared_by": s.served.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "stages": s.stages,
                "worker": s.worker,
                "steps": s.steps,
                "cached": s.cached,
                "duration_seconds": s.duration.as_secs_f64(),
            });
        }
        doc
    }
}
